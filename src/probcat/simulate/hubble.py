"""Galaxies with real shapes: the Hubble eXtreme Deep Field, as a test population.

The only real galaxy images that install from a package registry here are a colour JPEG of
the Hubble eXtreme Deep Field (XDF; NASA/ESA, public domain) that scikit-image ships as
``skimage/data/hubble_deep_field.jpg`` (1000 x 872 pixels; its pixel scale is not used,
since every stamp is scaled to the prior's sizes). probcat reads
that file where scikit-image is installed (``pip install -e ".[hubble]"``; it does not
import scikit-image and copies nothing into its own package) and cuts every galaxy out of
it (:func:`extract_stamps`):

* the sRGB transfer curve is undone and the three channels summed;
* SEP subtracts the background and finds the objects (3 sigma, at least 30 pixels,
  ``deblend_cont`` 0.05);
* objects touching the border, or with more than 5% of their pixels saturated in a channel
  (the stars and the brightest cores), are left out;
* each stamp is the object's own segment grown by two pixels, other objects' pixels
  zeroed, negative pixels clipped, scaled to unit flux.

Population ``"hdf"`` (:func:`hdf_galaxies`) draws magnitudes and sizes as the built-in
priors do (``probcat.simulate.prior``) and gives each galaxy one of these stamps, matched by
size rank (a large galaxy of the prior gets one of the large, well-resolved XDF galaxies,
so that the stamps are stretched little), turned by a random angle ``beta`` and mirrored
when ``flip`` is 1, and scaled to the prior's half-light radius (``disk_hlr``, about the
light-weighted centroid). The stamps are split in disjoint thirds for training, validation
and test, like every population's galaxies.

What is real and what is not: the shapes are those of real galaxies at HST resolution
(clumps, asymmetries, chains, tidal features, mergers, discs, spheroids), which no
parametric family draws. The light profiles are approximate: the JPEG's colour stretch is
not published, so the cores of bright galaxies are flattened and faint outskirts are
clipped at the detection isophote, and the smallest objects carry JPEG noise. It is a test of
detection on shapes made apart from probcat's prior, not a model of galaxy light.
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from probcat.errors import ProbcatValueError

__all__ = [
    "HDF_VERSION",
    "hdf_path",
    "extract_stamps",
    "hdf_stamps",
    "hdf_galaxies",
    "hdf_profile",
]

HDF_VERSION = "hdf v1"
_FILE = ("data", "hubble_deep_field.jpg")
SAT_LEVEL = 250  # of 255: a channel this bright is saturated by the stretch
MIN_AREA = 30
DETECT_SIGMA = 3.0
DEBLEND_CONT = 0.05
GROW = 2
MAX_SATURATED = 0.05


def hdf_path() -> Path:
    """The XDF JPEG that scikit-image ships (scikit-image is not imported)."""
    spec = importlib.util.find_spec("skimage")
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locs:
        path = Path(loc).joinpath(*_FILE)
        if path.is_file():
            return path
    raise ProbcatValueError(
        "population 'hdf' reads the Hubble Deep Field image that scikit-image ships: "
        'pip install -e ".[hubble]"'
    )


def _linear(rgb: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] to linear intensity."""
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _half_light_radius(stamp: np.ndarray) -> float:
    """Radius (pixels) about the light-weighted centroid holding half the flux of a
    non-negative stamp, interpolated between pixel-centre radii."""
    yy, xx = np.mgrid[: stamp.shape[0], : stamp.shape[1]]
    w = stamp / stamp.sum()
    cx, cy = float((w * xx).sum()), float((w * yy).sum())
    r = np.hypot(xx - cx, yy - cy).ravel()
    order = np.argsort(r, kind="stable")
    cum = np.cumsum(w.ravel()[order])
    return float(np.interp(0.5, cum, r[order]))


def extract_stamps(rgb: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Galaxy stamps of an 8-bit colour image ``(H, W, 3)`` (module docstring): a list of
    unit-flux float64 arrays and their half-light radii in pixels, in the order SEP finds
    the objects."""
    import sep
    from scipy.ndimage import binary_dilation, find_objects

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ProbcatValueError(f"expected an (H, W, 3) colour image, got shape {rgb.shape}")
    lum = np.ascontiguousarray(_linear(rgb.astype(np.float64) / 255.0).sum(-1))
    saturated = (rgb >= SAT_LEVEL).any(-1)
    bkg = sep.Background(lum)
    data = np.ascontiguousarray(lum - bkg.back())
    objs, seg = sep.extract(
        data,
        DETECT_SIGMA,
        err=bkg.globalrms,
        minarea=MIN_AREA,
        deblend_cont=DEBLEND_CONT,
        segmentation_map=True,
    )
    h, w = data.shape
    stamps, radii = [], []
    for i, box in enumerate(find_objects(seg)):
        if box is None:
            continue
        ys, xs = box
        if ys.start == 0 or xs.start == 0 or ys.stop == h or xs.stop == w:
            continue
        y0, y1 = max(ys.start - GROW - 1, 0), min(ys.stop + GROW + 1, h)
        x0, x1 = max(xs.start - GROW - 1, 0), min(xs.stop + GROW + 1, w)
        cut = seg[y0:y1, x0:x1]
        own = cut == i + 1
        if saturated[y0:y1, x0:x1][own].mean() > MAX_SATURATED:
            continue
        sub = data[y0:y1, x0:x1].copy()
        keep = binary_dilation(own, iterations=GROW)
        sub[~keep | ((cut > 0) & ~own)] = 0.0
        sub = np.clip(sub, 0.0, None)
        if sub.sum() <= 0:
            continue
        sub /= sub.sum()
        stamps.append(sub)
        radii.append(_half_light_radius(sub))
    return stamps, np.asarray(radii, float)


@lru_cache(maxsize=1)
def hdf_stamps() -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The XDF galaxy stamps and their half-light radii (pixels), read once per process."""
    from PIL import Image

    path = hdf_path()
    try:
        rgb = np.asarray(Image.open(path).convert("RGB"))
    except OSError as exc:
        raise ProbcatValueError(f"{path}: not a readable image ({exc})") from None
    stamps, radii = extract_stamps(rgb)
    return tuple(stamps), radii


def _split_stamps(n_stamps: int, split: str) -> np.ndarray:
    """Indices of the stamps of one split: disjoint thirds of a fixed permutation."""
    from probcat.simulate.prior import SPLITS

    if split not in SPLITS:
        raise ProbcatValueError(f"split must be one of {SPLITS}, got {split!r}")
    perm = np.random.default_rng(20260).permutation(n_stamps)
    return np.sort(np.array_split(perm, len(SPLITS))[SPLITS.index(split)])


def hdf_galaxies(n: int, *, split: str = "test", seed: int = 0, bands=("i",), stamps=None):
    """Population ``"hdf"`` (module docstring): ``n`` galaxies, each with an XDF stamp
    (column ``hdf_index``; ``stamps``: ``(stamps, radii)`` to use instead of the XDF's).

    Columns as the bulge + disk population's (``bulge_frac`` 0; ``disk_hlr`` is the
    whole galaxy's half-light radius, ``beta`` its rotation) plus ``hdf_index`` and
    ``flip``."""
    from astropy.table import Table

    from probcat.simulate.prior import _SPLIT_ID_STRIDE, SPLITS, _morphology, sample_galaxy_mags

    stamps, radii = hdf_stamps() if stamps is None else stamps
    pool = _split_stamps(len(stamps), split)
    if not len(pool):
        raise ProbcatValueError(f"no Hubble Deep Field stamps in split {split!r}")
    k = SPLITS.index(split)
    rng = np.random.default_rng([seed, k, 4099])
    mag_i = sample_galaxy_mags(rng, n)
    shape = _morphology(rng, mag_i)
    # size rank -> stamp size rank, with a little jitter: large galaxies get large stamps
    hlr = shape["disk_hlr"]
    q = (np.argsort(np.argsort(hlr, kind="stable"), kind="stable") + 0.5) / max(n, 1)
    q = np.clip(q + 0.05 * rng.standard_normal(n), 0.0, 1.0 - 1e-9)
    by_size = pool[np.argsort(radii[pool], kind="stable")]
    t = Table()
    t["id"] = np.arange(n, dtype=np.int64) + k * _SPLIT_ID_STRIDE
    for b in bands:
        t[f"mag_{b}"] = mag_i
    t["disk_hlr"] = hlr
    t["bulge_hlr"] = hlr
    t["disk_q"] = np.ones(n)
    t["bulge_q"] = np.ones(n)
    t["beta"] = rng.uniform(0.0, 2 * math.pi, n)
    t["bulge_frac"] = np.zeros(n)
    t["redshift"] = np.full(n, np.nan)
    t["hdf_index"] = by_size[(q * len(by_size)).astype(int)].astype(np.int64)
    t["flip"] = rng.integers(0, 2, n).astype(np.int16)
    t.meta["POPKIND"] = "hdf"
    return t


def _native(stamp: np.ndarray):
    """A stamp as a unit-flux GalSim profile centred on its light, and its half-light
    radius (stamp pixels, about the centroid, pixel response included)."""
    import galsim

    from probcat.simulate.render import GSPARAMS

    img = galsim.ImageD(np.ascontiguousarray(stamp), scale=1.0)
    prof = galsim.InterpolatedImage(img, flux=1.0, gsparams=GSPARAMS)
    prof = prof.shift(-prof.centroid)
    size = 4 * max(stamp.shape) + 8
    hlr = prof.calculateHLR(size=size, scale=0.25, centroid=galsim.PositionD(0, 0))
    return prof, float(hlr)


@lru_cache(maxsize=4096)
def _native_hdf(i: int):
    return _native(hdf_stamps()[0][i])


def hdf_profile(row, stamps=None):
    """Unit-flux GalSim profile of one ``"hdf"`` row, centred on its light-weighted
    centroid, with half-light radius ``disk_hlr`` (arcsec)."""
    import galsim

    i = int(row["hdf_index"])
    prof, hlr = _native_hdf(i) if stamps is None else _native(stamps[0][i])
    if int(row["flip"]):
        prof = prof.transform(-1.0, 0.0, 0.0, 1.0)
    prof = prof.dilate(float(row["disk_hlr"]) / hlr)
    return prof.rotate(float(row["beta"]) * galsim.radians)
