"""Pixels without data: masks, NaN and inf.

Survey images have pixels that hold no measurement: outside the coverage of a coadd (often
NaN), chip gaps, bad columns, saturated cores. probcat reads such a pixel as *no data*:

- a pixel is masked when it is NaN or infinite in the image, or set in the mask the user
  gives (``mask=``: True or nonzero masks; ``(H, W)`` for every band or
  ``(bands, H, W)``; ``--mask FILE`` on the command line);
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
  measurements that need the whole source.

A source that sits inside a masked region is not detected, and what a mask leaves of a
source under it can read as a source of its own, for SEP as for probcat: on 300 simulated
98-px LSST-i scenes (test galaxies), a 10-px wide masked strip took the false detections
within 6 px of its edges from 31 to 207 (SEP, given the same mask: 11 to 171); recall of
the sources outside it went from 0.791 to 0.783 (SEP 0.463 to 0.464). A bright star with a
masked (saturated) core of 1-2 px radius is still detected once; with 3 px it was missed in
7 of 20 trials. ``docs/method.md``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from probcat.errors import ProbcatIOError, ProbcatValueError

__all__ = [
    "masked_pixels",
    "fill_masked",
    "aperture_fraction",
    "read_mask",
    "said_once",
    "MASK_RADIUS",
]

MASK_RADIUS = 5.0  # px: the aperture of mask_fraction (the detection SNR's, eq. 12)
FILL_SEED = 20261203  # the fixed seed of the sky-like fill: the same image, the same catalog


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
    given = None
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype.kind not in "biuf":
            raise ProbcatValueError(f"mask must be a boolean or numeric array, got {m.dtype}")
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3 or m.shape[-2:] != image.shape[-2:] or m.shape[0] not in (1, len(image)):
            raise ProbcatValueError(
                f"mask of shape {np.shape(mask)} does not match the image's "
                f"{image.shape[-2:]} ((H, W), or (bands, H, W) with {len(image)} band(s))"
            )
        given = np.broadcast_to(m != 0, image.shape)  # NaN in a float mask masks too
    n_nan = int((bad & ~given).any(0).sum()) if given is not None else int(bad.any(0).sum())
    if given is not None:
        bad = bad | given
    if not bad.any():
        return None
    full = np.flatnonzero(bad.reshape(len(bad), -1).all(1))
    if len(full):
        raise ProbcatValueError(
            f"every pixel of band {int(full[0])} is masked (NaN, inf or the mask): no data"
        )
    if warn and n_nan:
        warnings.warn(
            f"{n_nan} pixel(s) are NaN or inf (or beyond float32's range): read as masked, "
            "no data (the catalog's mask_fraction column; mask=, --mask to give a mask)",
            stacklevel=3,
        )
    return bad


def fill_masked(image, bad: np.ndarray) -> np.ndarray:
    """A float64 copy of ``image`` ``(bands, H, W)`` whose ``bad`` pixels hold sky-like
    noise: per band, the smooth sky of the other pixels (``sep.Background`` with the mask,
    :func:`probcat.background.sky`) plus Gaussian noise of their spread about it (1.4826
    MAD), from :data:`FILL_SEED`; what the sky and noise estimates of
    :mod:`probcat.background` then read as blank sky."""
    from probcat.background import sky

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
        out[k][b] = back[b] + rms * rng.standard_normal(int(b.sum()))
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


def read_mask(path) -> np.ndarray:
    """The mask of a FITS file: its first image HDU, ``(H, W)`` or ``(bands, H, W)``;
    nonzero pixels are masked. For a bit-plane mask (e.g. an LSST ``MASK`` plane) select
    the bits that mean no data first (``NO_DATA``, ``BAD``, ``SAT``...): any set bit
    masks."""
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise ProbcatIOError(f"{path}: mask file not found")
    try:
        with fits.open(path, memmap=False) as hdul:
            data = next((h.data for h in hdul if h.is_image and h.data is not None), None)
            if data is None:
                raise ProbcatValueError(f"{path}: no image data in any HDU of the mask")
            data = np.asarray(data)
    except OSError as e:
        raise ProbcatIOError(f"{path}: not a readable FITS mask ({e})") from e
    if data.ndim not in (2, 3) or data.dtype.kind not in "biuf":
        raise ProbcatValueError(f"{path}: a mask must be a 2-D or 3-D numeric image")
    return data != 0


@contextlib.contextmanager
def said_once():
    """Within: no second warning that NaN or inf pixels are read as masked (an image read
    again, e.g. for deblending after detection, which said it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".* read as masked")
        yield
