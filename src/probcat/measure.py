"""Measurements on source images (paper 000 section 4.4): adaptive-moments size
``T = |det M|^(1/4)`` and distortion ``e1, e2`` with ``galsim.hsm``, the flux posterior of
the deblended aperture fluxes (5-px radius, :func:`probcat.infer.deblend.aperture_fluxes`),
and the seeing check on the stellar locus.

Positions are in the stamp's pixel coordinates (pixel centres at integers, ``(0, 0)`` the
first pixel), as everywhere in probcat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "DEFAULT_METHOD",
    "adaptive_moments",
    "aperture_sums",
    "flux_posterior",
    "flux_sd",
    "fit_contamination_scale",
    "mixture_quantiles",
    "measure_seeing",
    "seeing_ratio",
    "stellar_locus",
    "SeeingMeasurement",
    "APERTURE_RADIUS",
    "SEEING_FACTOR",
    "SEEING_COMPACT_MAX",
]

APERTURE_RADIUS = 5.0  # px, paper 000 section 4.1
# how Deblender.measure, probcat.deblend and `probcat detect --deblend` hand each source its
# light (probcat.infer.deblend.METHODS); the paper's "subtract" stays the low-level default
DEFAULT_METHOD = "conserve"


def aperture_sums(
    plane: np.ndarray, x, y, radius: float = APERTURE_RADIUS, err: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The sums of ``plane`` ``(H, W)`` in circles of ``radius`` px about ``(x[i], y[i])``
    (pixel centres at integers) and their errors for independent pixel noise ``err`` (zeros
    when None): SEP's ``sum_circle`` with each pixel weighted by its exact overlap with the
    circle. SEP's default (5 x 5 subpixels) is off by up to 0.4% for a galaxy, by how the
    circle falls on the pixel grid (0.1% rms for a 0.6" exponential disc under LSST's
    seeing), more than such a flux's pixel noise when it is bright."""
    import sep

    x = np.atleast_1d(np.asarray(x, np.float64))
    y = np.atleast_1d(np.asarray(y, np.float64))
    if x.size == 0:
        return np.zeros(0), np.zeros(0)
    plane = np.ascontiguousarray(plane, dtype=np.float64)
    flux, ferr, _ = sep.sum_circle(plane, x, y, radius, err=err, subpix=0)
    return np.asarray(flux, np.float64), np.asarray(ferr, np.float64)


def adaptive_moments(stamps: np.ndarray, x, y, band: int = 0) -> dict[str, np.ndarray]:
    """Adaptive moments (``galsim.hsm.FindAdaptiveMom``) of band ``band`` of each stamp,
    started at ``(x[i], y[i])``: ``T`` (pixels), ``e1``, ``e2`` (distortion) and ``ok``;
    NaN where the moments do not converge."""
    import galsim

    n = len(stamps)
    x = np.broadcast_to(np.asarray(x, float), (n,))
    y = np.broadcast_to(np.asarray(y, float), (n,))
    out = {k: np.full(n, np.nan) for k in ("T", "e1", "e2")}
    ok = np.zeros(n, bool)
    for i in range(n):
        img = galsim.Image(np.ascontiguousarray(stamps[i, band], dtype=np.float64), xmin=0, ymin=0)
        res = galsim.hsm.FindAdaptiveMom(
            img, guess_centroid=galsim.PositionD(x[i], y[i]), strict=False
        )
        if res.moments_status != 0 or not math.isfinite(res.moments_sigma):
            continue
        out["T"][i] = res.moments_sigma
        out["e1"][i] = res.observed_shape.e1
        out["e2"][i] = res.observed_shape.e2
        ok[i] = True
    out["ok"] = ok
    return out


def mixture_quantiles(means: np.ndarray, sd, qs) -> np.ndarray:
    """Quantiles ``qs`` of the equal-weight mixture of normals ``N(means[s], sd[s]^2)``
    (``sd`` one number or one per component; bisection on the mixture CDF; a point mass per
    sample when every ``sd`` is 0)."""
    from scipy.special import ndtr

    means = np.asarray(means, float)
    sd = np.broadcast_to(np.asarray(sd, float), means.shape)
    qs = np.atleast_1d(np.asarray(qs, float))
    if np.all(sd <= 0):
        return np.quantile(means, qs)
    sd = np.maximum(sd, 1e-12 * max(float(sd.max()), 1e-300))
    lo = np.full(len(qs), (means - 10 * sd).min())
    hi = np.full(len(qs), (means + 10 * sd).max())
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        cdf = ndtr((mid[:, None] - means[None]) / sd[None]).mean(1)
        below = cdf < qs
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def flux_sd(noise_sd, contamination=None, scale: float = 0.0) -> np.ndarray:
    """The flux-error model: pixel noise in the aperture plus a share ``scale`` of the
    neighbours' light in it (their models are only so good), in quadrature:
    ``sqrt(noise_sd^2 + (scale * contamination)^2)``."""
    noise_sd = np.asarray(noise_sd, float)
    if contamination is None or not scale:
        return noise_sd
    c = np.nan_to_num(np.maximum(np.asarray(contamination, float), 0.0))
    return np.sqrt(noise_sd**2 + (scale * c) ** 2)


POSTERIOR_QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)


def flux_posterior(
    values: np.ndarray, noise_sd, contamination=None, scale: float = 0.0
) -> dict[str, np.ndarray]:
    """Summary of per-source flux posteriors from posterior catalog samples.

    ``values`` ``(sources, samples)``: the source's aperture flux in each sample (NaN where
    the sample does not hold it). The posterior is the equal mixture, over the samples
    that hold the source, of ``N(value, sd^2)``: the detection uncertainty (which sources
    exist, where) from the samples; ``sd`` the pixel noise in the aperture ``noise_sd``
    (per source; 0 keeps the detection part alone, as paper 000 does) and, with
    ``contamination`` (the neighbours' light in the aperture, like ``values``) and
    ``scale``, the deblending error of :func:`flux_sd`.
    Returns ``mean``, ``sd``, ``q025, q16, q50, q84, q975`` and ``p_match`` (the fraction of
    samples holding the source)."""
    values = np.atleast_2d(np.asarray(values, float))
    noise_sd = np.broadcast_to(np.asarray(noise_sd, float), (len(values),))
    sds = np.broadcast_to(noise_sd[:, None], values.shape)
    if contamination is not None and scale:
        sds = flux_sd(sds, np.atleast_2d(contamination), scale)
    n = len(values)
    out = {k: np.full(n, np.nan) for k in ("mean", "sd", "q025", "q16", "q50", "q84", "q975")}
    out["p_match"] = np.isfinite(values).mean(1) if values.shape[1] else np.zeros(n)
    for i in range(n):
        ok = np.isfinite(values[i])
        v, s = values[i][ok], sds[i][ok]
        if len(v) == 0:
            continue
        out["mean"][i] = v.mean()
        out["sd"][i] = math.sqrt(v.var() + float(np.mean(s**2)))
        qs = mixture_quantiles(v, s, POSTERIOR_QUANTILES)
        for k, q in zip(("q025", "q16", "q50", "q84", "q975"), qs):
            out[k][i] = q
    return out


def fit_contamination_scale(values, truth, noise_sd, contamination, scales=None) -> float:
    """The ``scale`` of :func:`flux_sd` (from a grid, 0 included) under which the true
    fluxes ``truth`` (per source) have the highest mean log density in their flux
    posteriors (:func:`flux_posterior`): a one-parameter calibration on validation data.
    ``values``, ``contamination``: ``(sources, samples)``; ``noise_sd`` per source."""
    from scipy.special import logsumexp

    values = np.atleast_2d(np.asarray(values, float))
    contamination = np.atleast_2d(np.asarray(contamination, float))
    truth = np.asarray(truth, float)
    noise = np.broadcast_to(np.asarray(noise_sd, float), (len(values),))[:, None]
    keep = np.isfinite(values).any(1) & np.isfinite(truth)
    values, contamination = values[keep], contamination[keep]
    truth, noise = truth[keep], noise[keep]
    if not len(values):
        return 0.0
    scales = np.r_[0.0, np.geomspace(0.01, 1.0, 41)] if scales is None else np.asarray(scales)
    ok = np.isfinite(values)
    best, best_ll = 0.0, -np.inf
    for a in scales:
        sd = flux_sd(np.broadcast_to(noise, values.shape), contamination, float(a))
        z = (truth[:, None] - values) / sd
        logp = np.where(ok, -0.5 * z**2 - np.log(sd) - 0.5 * math.log(2 * math.pi), -np.inf)
        ll = float(np.mean(logsumexp(logp, axis=1) - np.log(ok.sum(1))))
        if ll > best_ll:
            best, best_ll = float(a), ll
    return best


# The seeing check (:func:`seeing_ratio`): sources bright and alone enough for adaptive
# moments, and the share of them the most compact ones (the stars) are assumed to make up.
SEEING_PEAK = 20.0  # peak pixel, noise sigma
SEEING_ISOLATION = 8.0  # px to the nearest other detection
SEEING_EDGE = 10  # px to the image edge
SEEING_STAMP = 15  # px
SEEING_MIN_SOURCES = 10
SEEING_MAX_SOURCES = 300  # the brightest ones: bounds the cost on large images
SEEING_QUANTILE = 0.10  # the "most compact sources" of the warning without a stellar locus
SEEING_FACTOR = 1.2  # a ratio beyond this factor either way is reported
# Without a stellar locus, the most compact sources are galaxies, whose 10% size quantile
# does not tell the seeing: on star-free validation fields of 300-1000 px (bulge + disk and
# the five families) it was 1.27-1.69 times the PSF's at the survey's seeing, 1.08-1.51
# under a PSF 0.8 times as wide, 1.50-1.86 under 1.25 times (and 2.18-2.21 on 1000-px
# test-split fields under 1.6 times). Only beyond this range (or narrower than the PSF by
# SEEING_FACTOR) is it a sign of another seeing, worth a warning.
SEEING_COMPACT_MAX = 1.8
# The stellar locus (:func:`stellar_locus`): stars are alike in size and shape, galaxies
# are not. Windows on the size ratio and on each ellipticity component, and how many
# sources (at least, and as a share of the measured ones) make a locus.
SEEING_LOCUS_SIZE = 0.03
SEEING_LOCUS_SHAPE = 0.05
SEEING_LOCUS_MIN = 4
SEEING_LOCUS_FRACTION = 0.08
# and it must hold this share of the sources within SEEING_LOCUS_SPAN times both windows:
# stars are a spike, not a crowded stretch of the galaxies' sizes and shapes
SEEING_LOCUS_SPAN = 4.0
SEEING_LOCUS_CONTRAST = 0.6


@lru_cache(maxsize=32)
def _psf_moments_sigma(band) -> float:
    """Adaptive-moments sigma (px) of a band's PSF drawn on its pixels."""
    import galsim

    img = band.psf().drawImage(nx=31, ny=31, scale=band.pixel_scale)
    return float(galsim.hsm.FindAdaptiveMom(img).moments_sigma)


@dataclass(frozen=True)
class SeeingMeasurement:
    """What :func:`measure_seeing` found: ``ratio`` (the image's PSF width over the band's,
    from the stellar locus; None when there is none or too few sources), ``n`` (bright,
    isolated sources measured), ``locus`` (sources in the stellar locus) and ``compact``
    (the :data:`SEEING_QUANTILE` quantile of all their sizes over the PSF's: what the
    most compact sources look like, stars or not; None with too few sources)."""

    ratio: float | None
    n: int
    locus: int = 0
    compact: float | None = None


def stellar_locus(sizes, e1, e2) -> np.ndarray | None:
    """The members (a boolean mask) of the stellar locus among sources of adaptive-moments
    size ``sizes`` and ellipticity ``e1, e2``, or None when there is none.

    Stars share the PSF's size and shape; galaxies, even the most compact, differ in both.
    A source's neighbours are those within :data:`SEEING_LOCUS_SIZE` of its size (as a
    ratio) and :data:`SEEING_LOCUS_SHAPE` of its ellipticity (each component); the locus
    is the most populous such group centred on a source of the compact half that holds at
    least :data:`SEEING_LOCUS_MIN` sources and :data:`SEEING_LOCUS_FRACTION` of them, and
    :data:`SEEING_LOCUS_CONTRAST` of those within :data:`SEEING_LOCUS_SPAN` times both
    windows (a spike, not a crowded stretch of the galaxies). On simulated LSST-i fields
    (bulge + disk and five-family galaxies, PSF 0.8-1.6 times the survey's FWHM, 48
    fields of 500 x 500 px and 24 of 1000 x 1000 px, 20-210 such sources each) it found
    the locus, within 3% of the true PSF width, in 46 and 24 of them with the prior's
    stars (about 30% of those sources), and none in any of them without stars, where a
    window on the size alone found one in every field; nor among 100 round galaxies of
    similar sizes (``tests/test_seeing.py``), which the windows alone took for stars."""
    s = np.asarray(sizes, float)
    e1, e2 = np.asarray(e1, float), np.asarray(e2, float)
    if len(s) == 0:
        return None
    size = np.abs(s[None, :] / s[:, None] - 1)  # [i, j]: source j about source i
    shape = np.maximum(np.abs(e1[:, None] - e1[None, :]), np.abs(e2[:, None] - e2[None, :]))
    near = (size < SEEING_LOCUS_SIZE) & (shape < SEEING_LOCUS_SHAPE)
    k = SEEING_LOCUS_SPAN
    around = (size < k * SEEING_LOCUS_SIZE) & (shape < k * SEEING_LOCUS_SHAPE)
    count = near.sum(1)
    need = max(SEEING_LOCUS_MIN, math.ceil(SEEING_LOCUS_FRACTION * len(s)))
    spike = count >= SEEING_LOCUS_CONTRAST * around.sum(1)
    cand = np.flatnonzero((count >= need) & spike & (s <= np.median(s)))
    if len(cand) == 0:
        return None
    return near[cand[np.argmax(count[cand])]]


def measure_seeing(image_sigma: np.ndarray, x, y, band) -> SeeingMeasurement:
    """How much wider the image's PSF is than ``band``'s (the weights' survey band), from
    the detections at ``x, y`` of the plane ``image_sigma`` ``(H, W)`` (noise-sigma units)
    that peak above :data:`SEEING_PEAK`, lie at least :data:`SEEING_ISOLATION` px from
    any other detection and :data:`SEEING_EDGE` px from the edge (at most the
    :data:`SEEING_MAX_SOURCES` brightest): the median adaptive-moments size of their
    stellar locus (:func:`stellar_locus`) over the PSF's. No ratio with fewer than
    :data:`SEEING_MIN_SOURCES` such sources, or without a locus (a field without enough
    bright stars: its most compact galaxies are not the PSF). It does not rely on the
    star/galaxy classifier, which calls stars galaxies under seeing much wider than it was
    trained on."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    idx = seeing_sources(image_sigma, x, y)
    if len(idx) < SEEING_MIN_SOURCES:
        return SeeingMeasurement(None, len(idx))
    m = source_moments(image_sigma, x[idx], y[idx])
    ok = m["ok"]
    n = int(ok.sum())
    if n < SEEING_MIN_SOURCES:
        return SeeingMeasurement(None, n)
    psf = _psf_moments_sigma(band)
    sizes = m["T"][ok] / psf
    compact = float(np.quantile(sizes, SEEING_QUANTILE))
    members = stellar_locus(sizes, m["e1"][ok], m["e2"][ok])
    if members is None:
        return SeeingMeasurement(None, n, 0, compact)
    return SeeingMeasurement(float(np.median(sizes[members])), n, int(members.sum()), compact)


def seeing_ratio(image_sigma: np.ndarray, x, y, band) -> tuple[float | None, int]:
    """``(ratio, n)`` of :func:`measure_seeing`."""
    got = measure_seeing(image_sigma, x, y, band)
    return got.ratio, got.n


def seeing_band(band_names) -> int:
    """The band the seeing is measured in (or against): i when there is one, else the first."""
    names = list(band_names)
    return names.index("i") if "i" in names else 0


def unmasked_positions(catalog) -> tuple[np.ndarray, np.ndarray]:
    """``x, y`` of the catalog's objects that no mask touches (``mask_fraction`` 0; all of
    them without that column): the ones to measure the seeing on."""
    x, y = np.asarray(catalog["x"], float), np.asarray(catalog["y"], float)
    if "mask_fraction" in catalog.colnames:
        whole = np.asarray(catalog["mask_fraction"]) == 0
        x, y = x[whole], y[whole]
    return x, y


def peaks_at(image: np.ndarray, x, y) -> np.ndarray:
    """The values of ``image`` ``(H, W)`` at the pixels nearest ``x, y`` (clipped to it)."""
    h, w = image.shape
    cx = np.clip(np.floor(np.asarray(x, float) + 0.5).astype(int), 0, w - 1)
    cy = np.clip(np.floor(np.asarray(y, float) + 0.5).astype(int), 0, h - 1)
    return image[cy, cx]


def seeing_sources(image_sigma: np.ndarray, x, y) -> np.ndarray:
    """Indices of the objects at ``x, y`` fit to measure the seeing on in ``image_sigma``
    ``(H, W)`` (noise-sigma units): peak above :data:`SEEING_PEAK`, at least
    :data:`SEEING_ISOLATION` px from any other object and :data:`SEEING_EDGE` px from the
    edge; the :data:`SEEING_MAX_SOURCES` brightest, brightest first."""
    from scipy.spatial import cKDTree

    x, y = np.asarray(x, float), np.asarray(y, float)
    h, w = image_sigma.shape
    if len(x) < 2:  # no neighbours to measure isolation against
        return np.zeros(0, int)
    xy = np.stack([x, y], 1)
    near = cKDTree(xy).query(xy, k=2)[0][:, 1]
    peak = peaks_at(image_sigma, x, y)
    e = SEEING_EDGE
    keep = (peak > SEEING_PEAK) & (near >= SEEING_ISOLATION)
    keep &= (x >= e) & (y >= e) & (x <= w - 1 - e) & (y <= h - 1 - e)
    idx = np.flatnonzero(keep)
    return idx[np.argsort(-peak[idx])][:SEEING_MAX_SOURCES]


def source_moments(image_sigma: np.ndarray, x, y) -> dict[str, np.ndarray]:
    """Adaptive moments (:func:`adaptive_moments`: ``T``, ``e1``, ``e2``, ``ok``) of the
    sources at ``x, y`` of ``image_sigma`` ``(H, W)``, on :data:`SEEING_STAMP`-px stamps."""
    from probcat.infer.deblend import crop_at

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0:
        return {"T": np.zeros(0), "e1": np.zeros(0), "e2": np.zeros(0), "ok": np.zeros(0, bool)}
    cx, cy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    half = SEEING_STAMP // 2
    stamps = np.stack(
        [crop_at(image_sigma[None], cx[i], cy[i], SEEING_STAMP) for i in range(len(x))]
    )
    return adaptive_moments(stamps, half + x - cx, half + y - cy)


def source_sizes(image_sigma: np.ndarray, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-moments sizes ``T`` of the sources at ``x, y`` of ``image_sigma`` ``(H, W)``
    (:data:`SEEING_STAMP`-px stamps) and whether each measurement converged."""
    m = source_moments(image_sigma, x, y)
    return np.asarray(m["T"], float), np.asarray(m["ok"], bool)
