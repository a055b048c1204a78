"""Pixels without data: masks, NaN and inf.

Survey images have pixels that hold no measurement: outside the coverage of a coadd (often
NaN), chip gaps, bad columns, saturated cores. probcat reads such a pixel as *no data*:

- a pixel is masked when it is NaN or infinite in the image, or set in the mask the user
  gives (``mask=``: True or nonzero masks; ``(H, W)`` for every band or
  ``(bands, H, W)``; ``--mask FILE`` on the command line), or, in an LSST (afw) image
  file with ``IMAGE``, ``MASK`` and ``VARIANCE`` HDUs, set in one of its mask planes that
  mean no data (:data:`NO_DATA_PLANES`, by the ``MP_<NAME>`` bit keywords of the ``MASK``
  header: :func:`plane_mask`) or without a positive finite variance;
- before the sky and the noise are measured (:mod:`probcat.background`), masked pixels are
  filled with sky-like noise (:func:`fill_masked`): each band's smooth sky, measured on its
  data pixels alone, plus Gaussian noise of their robust spread about it, from a fixed
  seed. The sky and noise estimates then read the masked pixels as blank sky;
- after the sky is subtracted they are set to exactly 0 in noise units, the value of the
  zero padding the network sees beyond an image's edges: no light and no noise. The
  aperture SNR (:func:`probcat.metrics.detection.aperture_snr`) does not count them;
- every catalog row gets ``mask_fraction`` (:func:`aperture_fraction`): the fraction of
  the pixels within 5 px of its position that are masked in any band. A source whose light
  is cut by a mask is detected from what is left, as at an image edge, and its position,
  flux and classification read only the data pixels; cut on ``mask_fraction`` for
  measurements that need the whole source;
- an image with pixels without data in some of its bands but not all is read by weights
  trained with bands masked where the weights have such a companion
  (:data:`probcat.api.MASKED_DETECTOR`: ``detection_lsst_ugrizy_masked``; photo-z's
  :data:`probcat.redshift.estimator.MASKED_WEIGHTS`, per object): read as no light, a
  masked band loses faint sources and turns stars into galaxies (:func:`band_masks` draws
  the training's masks).

A source that sits inside a masked region is not detected, and what a mask leaves of a
source under it can read as a source of its own, for SEP as for probcat: on 300 simulated
98-px LSST-i scenes (test galaxies), a 10-px wide masked strip took the false detections
within 6 px of its edges from 22 to 182 (SEP, given the same mask: 7 to 150); recall of
the sources outside it went from 0.775 to 0.773 (SEP 0.472 to 0.476;
``benchmarks/missing_data.py``). A bright star with a
masked (saturated) core of 1-2 px radius is still detected once; with 3 px it was missed in
7 of 20 trials. ``docs/method.md``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from probcat.errors import ProbcatIOError, ProbcatValueError, warn_user

__all__ = [
    "masked_pixels",
    "fill_masked",
    "aperture_fraction",
    "read_mask",
    "plane_mask",
    "combined_mask",
    "said_once",
    "MASK_RADIUS",
    "MASK_SHAPES",
    "band_masks",
    "NO_DATA_PLANES",
]

MASK_RADIUS = 5.0  # px: the aperture of mask_fraction (the detection SNR's, eq. 12)
FILL_SEED = 20261203  # the fixed seed of the sky-like fill: the same image, the same catalog
# the LSST (afw) mask planes read as no data by default: no input (NO_DATA) and bad detector
# pixels (BAD). Saturated (SAT) and cosmic-ray (CR) pixels are interpolated over by the
# pipelines (INTRP) and read as data unless asked: a bright star whose saturated core is
# masked can be missed (a 3-px core: 7 of 20 trials), while its interpolated core is found
NO_DATA_PLANES = ("NO_DATA", "BAD")
PLANE_PREFIX = "MP_"  # afw's header keywords of the mask planes: MP_<NAME> = bit number


def masked_pixels(image, mask=None, *, warn: bool = True) -> np.ndarray | None:
    """``(bands, H, W)`` bool: the pixels of ``image`` (``(bands, H, W)`` or ``(H, W)``)
    without data: NaN or inf, or set in ``mask`` (``(H, W)`` for every band or
    ``(bands, H, W)``; True or nonzero masks). None when none is (and for an image that is
    not a numeric array of 2 or 3 dimensions, which the image check then refuses).
    ``warn``: say how many NaN or inf pixels outside ``mask`` were read as masked."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.dtype.kind not in "fiu":
        if mask is not None:
            raise ProbcatValueError("a mask needs an image of shape (bands, H, W) or (H, W)")
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        bad = ~np.isfinite(image) if image.dtype.kind == "f" else np.zeros(image.shape, bool)
    given = None if mask is None else _given_mask(mask, image.shape)
    n_nan = int((bad & ~given).any(0).sum()) if given is not None else int(bad.any(0).sum())
    if given is not None:
        bad = bad | given
    if not bad.any():
        return None
    full = np.flatnonzero(bad.reshape(len(bad), -1).all(1))
    if len(full):
        raise ProbcatValueError(
            f"every pixel of band {int(full[0])} is masked (NaN, inf, the mask, a weight map's "
            "weights of 0 or less, or the file's MASK or VARIANCE planes): no data"
        )
    if warn and n_nan:
        warn_user(
            f"{n_nan} pixel(s) are NaN or inf (or beyond float32's range): read as masked, "
            "no data (the catalog's mask_fraction column; mask=, --mask to give a mask)",
        )
    return bad


def _given_mask(mask, shape: tuple[int, int, int]) -> np.ndarray:
    """A mask given as ``(H, W)`` or ``(bands, H, W)`` (True or nonzero masks), checked
    against an image of ``shape`` ``(bands, H, W)`` and broadcast to it (read-only)."""
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise ProbcatValueError(f"mask must be a boolean or numeric array, got {m.dtype}")
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[-2:] != tuple(shape[-2:]) or m.shape[0] not in (1, shape[0]):
        raise ProbcatValueError(
            f"mask of shape {np.shape(mask)} does not match the image's "
            f"{tuple(shape[-2:])} ((H, W), or (bands, H, W) with {shape[0]} band(s))"
        )
    return np.broadcast_to(m != 0, shape)  # NaN in a float mask masks too


def combined_mask(file_mask: np.ndarray | None, mask, shape: tuple[int, int, int]):
    """The pixels masked by an image file (``file_mask``, ``(bands, H, W)`` bool, e.g. the
    no-data planes of an LSST ``MASK`` HDU) or by the user's ``mask`` (``(H, W)`` or
    ``(bands, H, W)``), for an image of ``shape``; ``mask`` when the file masks none."""
    if file_mask is None:
        return mask
    if mask is None:
        return file_mask
    return file_mask | _given_mask(mask, shape)


def plane_mask(data, header, planes=None, *, where: str = ""):
    """``(H, W)`` bool: the pixels of an LSST (afw) bit-plane mask ``data`` set in any of
    ``planes``, whose bits the ``MASK`` header's ``MP_<NAME>`` keywords give. None when the
    header has no ``MP_`` keyword (then the bits mean nothing known). ``planes=None``:
    those of :data:`NO_DATA_PLANES` the header defines (a file need not have them all);
    named planes must all be in the header."""
    strict = planes is not None
    planes = NO_DATA_PLANES if planes is None else tuple(planes)
    bits = {}
    for key, value in header.items():
        if key.startswith(PLANE_PREFIX) and isinstance(value, (int, np.integer)):
            bits[key[len(PLANE_PREFIX) :].upper()] = int(value)
    if not bits:
        return None
    data = np.asarray(data)
    if data.dtype.kind not in "iu":
        raise ProbcatValueError(f"{where}the MASK HDU is not an integer bit mask ({data.dtype})")
    missing = [p for p in planes if p.upper() not in bits]
    if strict and missing:
        raise ProbcatValueError(
            f"{where}mask plane(s) {', '.join(missing)} not in the MASK header (it has "
            f"{', '.join(sorted(bits))})"
        )
    select = 0
    for p in planes:
        b = bits.get(p.upper())
        if b is not None and 0 <= b < 8 * data.dtype.itemsize:
            select |= 1 << b
    # as unsigned 64-bit words: a signed mask's sign bit is a plane like any other
    return (data.astype(np.uint64) & np.uint64(select)) != 0


def fill_masked(image, bad: np.ndarray) -> np.ndarray:
    """A float64 copy of ``image`` ``(bands, H, W)`` whose ``bad`` pixels hold sky-like
    noise: per band, the smooth sky of the other pixels (``sep.Background`` with the mask,
    :func:`probcat.background.sky`) plus Gaussian noise of their pixel noise, sources
    masked (:func:`probcat.background.data_noise`), from :data:`FILL_SEED`; what the sky
    and noise estimates of :mod:`probcat.background` then read as blank sky of the data's
    noise."""
    from probcat.background import data_noise, sky

    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(image, dtype=np.float64, copy=True)
    if out.ndim == 2:
        out = out[None]
    rng = np.random.default_rng(FILL_SEED)
    for k in range(len(out)):
        b = bad[k]
        if not b.any():
            continue
        back, rms = sky(out[k], mask=b)
        noise = data_noise(out[k], back, rms, b)
        out[k][b] = back[b] + noise * rng.standard_normal(int(b.sum()))
    return out


def aperture_fraction(masked: np.ndarray | None, x, y, radius: float = MASK_RADIUS) -> np.ndarray:
    """Per position ``(x, y)`` (pixels), the fraction of the pixels of its aperture (the
    detection SNR's, :func:`probcat.metrics.detection.aperture_pixels`) that are set in
    ``masked`` ``(H, W)``; zeros when ``masked`` is None."""
    import torch

    from probcat.metrics.detection import APERTURE_CHUNK, aperture_pixels

    x = torch.from_numpy(np.asarray(x, np.float64).ravel())
    y = torch.from_numpy(np.asarray(y, np.float64).ravel())
    if masked is None or len(x) == 0:
        return np.zeros(len(x))
    m = torch.from_numpy(np.asarray(masked, bool))
    out = []
    for a in range(0, len(x), APERTURE_CHUNK):  # bounded memory
        sl = slice(a, a + APERTURE_CHUNK)
        xx, yy, inside = aperture_pixels(x[sl], y[sl], radius, m.shape)
        n = inside.sum((1, 2))
        hit = (m[yy, xx] & inside).sum((1, 2))
        out.append(torch.where(n > 0, hit / n.clamp_min(1), 1.0))
    return torch.cat(out).double().numpy()


def read_mask(path, planes=None, hdu=None) -> np.ndarray:
    """The mask of a FITS file, ``(H, W)`` or ``(bands, H, W)``: in a file with a ``MASK``
    HDU whose header names its bit planes (``MP_<NAME>``: an LSST image or mask file), the
    pixels set in any of ``planes`` (:func:`plane_mask`; None: :data:`NO_DATA_PLANES`, those
    the file has; named planes must all be in the file); else its first image HDU, where
    any nonzero pixel is masked. ``hdu``: the image's HDU (one CCD of a mosaic file), read
    from a mask file that has several images too."""
    from astropy.io import fits

    from probcat.io import UNREADABLE, image_hdu

    path = Path(path)
    if not path.is_file():
        raise ProbcatIOError(f"{path}: mask file not found")
    try:
        with fits.open(path, memmap=False) as hdul:
            if "MASK" in hdul and hdul["MASK"].is_image and hdul["MASK"].data is not None:
                h = hdul["MASK"]
                bits = plane_mask(h.data, h.header, planes, where=f"{path}: ")
                if bits is not None:
                    return bits
            idx = image_hdu(path, hdul, hdu, "mask ", companion=True)
            data = np.asarray(hdul[idx].data)
    except UNREADABLE as e:
        raise ProbcatIOError(f"{path}: not a readable FITS mask ({e})") from e
    if data.ndim not in (2, 3) or data.dtype.kind not in "biuf":
        raise ProbcatValueError(f"{path}: a mask must be a 2-D or 3-D numeric image")
    return data != 0


@contextlib.contextmanager
def said_once():
    """Within: no second warning of those reading an image gives (NaN or inf pixels read as
    masked, ADU without a gain, a pixel scale or a noise unlike the survey's, a noise read
    as measured, a band other than the weights', a sky left in, correlated noise), for an
    image read again, e.g. for deblending after detection, which said them."""
    with warnings.catch_warnings():
        for message in SAID_WHEN_READ:
            warnings.filterwarnings("ignore", message=message)
        yield


# the warnings of reading an image (probcat.api.read_input), as said_once's filters
SAID_WHEN_READ = (
    r".* read as masked",
    r"BUNIT is ADU but there is no GAIN",
    r"the image's pixel scale is",
    r".* differs from the measured pixel noise",
    r"the image states no noise",
    r"the image is of band",
    r"image median is .* probcat expects background-subtracted",
    r"the noise of neighbouring pixels is correlated",
)


MASK_SHAPES = ("band", "half-plane", "strip", "disc")  # band_masks draws these
MASK_SCALE = 33  # px: the side band_masks' lengths are given for (photo-z stamps)


def band_masks(rng: np.random.Generator, shape, fraction: float, shapes=MASK_SHAPES) -> np.ndarray:
    """Boolean ``shape`` ``(n, bands, S, S)``: pixels without data, as real coadds have
    them in some bands and not others. Each stamp, with probability ``fraction``, gets one
    to three bands (probabilities 0.6 / 0.3 / 0.1) masked, each with a shape of its own
    (:data:`MASK_SHAPES`, equally likely): the whole stamp (a band with no coverage there),
    a half-plane through a point within 8 px of the centre (a chip or coadd edge), a strip
    2-8 px wide across the stamp within 10 px of the centre (a chip gap, bad columns), or a
    disc of radius 3-15 px centred within 16 px of the centre (a bright star's mask); those
    lengths for 33-px stamps, scaled with the stamp's side. ``shapes``: those drawn from."""
    n, bands, size = shape[0], shape[1], shape[-1]
    out = np.zeros((n, bands, size, size), bool)
    f = size / MASK_SCALE
    c = (np.arange(size, dtype=np.float64) - size // 2) / f  # in 33-px stamp pixels
    yy, xx = np.meshgrid(c, c, indexing="ij")
    for i in np.flatnonzero(rng.random(n) < fraction):
        k = min(bands, 1 + int(rng.choice(3, p=[0.6, 0.3, 0.1])))
        for b in rng.choice(bands, k, replace=False):
            kind = shapes[int(rng.integers(len(shapes)))]
            if kind == "band":
                out[i, b] = True
            elif kind == "half-plane":
                t = rng.uniform(0, 2 * np.pi)
                x0, y0 = rng.uniform(-8, 8, 2)
                out[i, b] = (xx - x0) * np.cos(t) + (yy - y0) * np.sin(t) > 0
            elif kind == "strip":
                u = xx if rng.random() < 0.5 else yy
                lo = rng.uniform(-10, 10)
                out[i, b] = (u >= lo) & (u < lo + rng.uniform(2, 8))
            else:
                x0, y0 = rng.uniform(-16, 16, 2)
                out[i, b] = (xx - x0) ** 2 + (yy - y0) ** 2 < rng.uniform(3, 15) ** 2
    return out
