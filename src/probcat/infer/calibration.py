"""Calibrated centroid intervals.

The network's location posterior (a normal truncated to the tile) has the right width on
average but lighter tails than the errors it makes: on held-out blend scenes its 68%
intervals cover 67% of the true centroids and its 95% intervals about 88%. Two causes,
measured on the v3 weights: a tenth of the matched detections sit in the tile next to the
true source's (the neighbour claimed a source near their shared edge, and a tile's
truncated interval cannot reach across the edge), and the errors of blended sources are
heavier-tailed than a normal.

The catalogue therefore reports, for each source, the interval ``x ± k(level) · x_sd``
(``x, x_sd`` the posterior mean and standard deviation), with ``k`` the empirical
quantiles of ``|x_true - x| / x_sd`` on validation scenes (validation-split galaxies, a
scene seed of its own): a post-hoc recalibration of the interval's shape that leaves the
centre and the per-source scale to the network. It is fitted by
:func:`fit_centroid_calibration` at the end of training and shipped inside the weights
file; :func:`centroid_interval` applies it (a Gaussian ``k`` for weights without one).

Galaxies unlike the prior's (real ones: asymmetric light, clumps) are placed less
exactly than the training galaxies, and most of all when bright, where the error is set by
the shape rather than the noise: with the training galaxies' calibration, the shipped
weights' 68% / 95% intervals cover about 62% / 93% of the centroids of Hubble Deep Field
galaxies (validation scenes).
Weights that carry a probability calibration for such galaxies
(:class:`~probcat.infer.reliability.ShapesCalibration`) carry a centroid calibration fitted
on the same population too (``net.real_shapes_centroid_calibration``); an image's catalogue
then gets the two mixed (:func:`mix_centroid_calibrations`) by the image's
``real_shapes_probability``, as its probabilities are, and the image's posterior catalogue
samples draw their positions from that mixture
(:func:`probcat.infer.detect.sample_catalogs`, ``centroid_calibration=``).

One ``k`` for every source leaves the intervals right on average but wrong at both ends of
brightness: the network's position sd has a floor near 0.15 px that bright sources' errors
go far below (median error 0.03 px above SNR 100), while faint ones err more widely than
it says. With the v7.7 weights and one ``k``, on the test scenes of
``benchmarks/detection.py``, 68% intervals covered 62% of sources of true SNR 3-10 and 94%
above 100. Calibrations are therefore fitted in bins of the detection's SNR
(``detection_snr``, :func:`probcat.metrics.detection.aperture_snr`, measured on the image, so
known for every detection): ``snr`` holds the bins' median SNR and ``k_by_snr`` each bin's
``k``; a source's ``k`` is interpolated in log SNR between them (constant beyond the
outermost). ``k`` stays the pooled table (what weights without SNR bins use, and what a
catalogue without a ``detection_snr`` column gets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtr, ndtri  # scipy.stats.norm.cdf / ppf, without its overhead

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.metrics.detection import match

__all__ = [
    "CentroidCalibration",
    "fit_centroid_calibration",
    "calibration_from_errors",
    "map_catalogs_of_scenes",
    "centroid_interval",
    "mix_centroid_calibrations",
    "TooFewMatches",
    "LEVELS",
]

LEVELS = tuple(sorted({*np.round(np.arange(0.05, 1.0, 0.05), 2).tolist(), 0.6827, 0.9545, 0.99}))


class TooFewMatches(ProbcatValueError):
    """Too few matched detections to fit a calibration."""


@dataclass(frozen=True)
class CentroidCalibration:
    """``k[i]``: the half-width, in posterior standard deviations, of the central interval
    that holds the fraction ``levels[i]`` of validation centroids (both axes pooled).
    ``snr`` (increasing) and ``k_by_snr`` (one ``k`` table per entry of ``snr``): the same
    fitted in bins of the detection's SNR, ``snr`` the bins' median; empty for a
    calibration without bins. Methods given ``snr`` (one value per source) use the binned
    tables, interpolated in log SNR; without it, the pooled ``k``."""

    levels: tuple[float, ...]
    k: tuple[float, ...]
    n: int
    source: str = ""
    snr: tuple[float, ...] = ()
    k_by_snr: tuple[tuple[float, ...], ...] = ()

    @property
    def binned(self) -> bool:
        return len(self.snr) > 0

    def _weights(self, snr) -> np.ndarray:
        """``(N, n_bins)`` weights of the bins' tables for sources of detection SNR ``snr``:
        linear in log SNR between neighbouring bins' medians, all on the end bin beyond."""
        c = np.log(np.maximum(np.asarray(self.snr, float), SNR_FLOOR))
        v = np.log(np.maximum(np.nan_to_num(np.asarray(snr, float).ravel(), nan=0.0), SNR_FLOOR))
        v = np.clip(v, c[0], c[-1])
        w = np.zeros((len(v), len(c)))
        if len(c) == 1:
            w[:, 0] = 1.0
            return w
        j = np.clip(np.searchsorted(c, v, side="right") - 1, 0, len(c) - 2)
        t = (v - c[j]) / (c[j + 1] - c[j])
        rows = np.arange(len(v))
        w[rows, j] = 1.0 - t
        w[rows, j + 1] = t
        return w

    def at(self, snr: float) -> CentroidCalibration:
        """The pooled calibration of a source of detection SNR ``snr`` (this one for a
        calibration without bins)."""
        if not self.binned:
            return self
        k = self._weights([snr])[0] @ np.asarray(self.k_by_snr, float)
        return CentroidCalibration(self.levels, tuple(float(v) for v in k), self.n, self.source)

    def factor(self, level: float, snr=None):
        """The interval half-width ``k`` (in sd) at ``level``: a float (pooled), or, given
        ``snr``, an array with one ``k`` per source."""
        lv = np.asarray(self.levels)
        if not lv[0] <= level <= lv[-1]:
            raise ProbcatValueError(
                f"calibrated centroid intervals exist for levels {lv[0]}-{lv[-1]}, got {level}"
            )
        if snr is None or not self.binned:
            k = float(np.interp(level, lv, self.k))
            return k if snr is None else np.full(np.asarray(snr).size, k)
        per_bin = np.array([np.interp(level, lv, kb) for kb in self.k_by_snr])
        return self._weights(snr) @ per_bin

    def quantile(self, u: np.ndarray, snr=None) -> np.ndarray:
        """The calibrated distribution of ``|error| / sd`` at probabilities ``u`` in
        ``[0, 1)``: linear between the fitted levels (0 at 0), a normal tail scaled to the
        last level beyond it. ``sign * quantile(U)`` draws standardised errors. ``snr``
        (the shape of ``u``): each source's own distribution, the bins' quantile functions
        mixed with the weights of :meth:`factor`."""
        u = np.asarray(u, float)
        if snr is None or not self.binned:
            return _quantile(u, self.levels, self.k)
        w = self._weights(snr).reshape(*u.shape, len(self.snr))
        return sum(w[..., b] * _quantile(u, self.levels, kb) for b, kb in enumerate(self.k_by_snr))

    def cdf(self, k: np.ndarray) -> np.ndarray:
        """``P(|error| / sd <= k)`` of the pooled table: the inverse of :meth:`quantile`
        (linear between the fitted levels, the normal tail beyond the last)."""
        k = np.asarray(k, float)
        lv, kk = np.asarray(self.levels), np.asarray(self.k)
        core = np.interp(k, np.r_[0.0, kk], np.r_[0.0, lv])
        tail = 2.0 * ndtr(k * ndtri((1 + lv[-1]) / 2) / kk[-1]) - 1.0
        return np.where(k <= kk[-1], core, tail)

    def to_dict(self) -> dict:
        d = {"levels": list(self.levels), "k": list(self.k), "n": self.n, "source": self.source}
        if self.binned:
            d |= {"snr": list(self.snr), "k_by_snr": [list(kb) for kb in self.k_by_snr]}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CentroidCalibration:
        return cls(
            tuple(d["levels"]),
            tuple(d["k"]),
            int(d["n"]),
            d.get("source", ""),
            tuple(d.get("snr", ())),
            tuple(tuple(kb) for kb in d.get("k_by_snr", ())),
        )


SNR_FLOOR = 1.0  # detection SNRs below it (noise-dominated apertures) count as 1
SNR_BINS = 12  # bins of detection SNR (equal in log SNR) in a fitted calibration ...
MIN_PER_BIN = 600  # ... with at least this many standardised errors (both axes) in each


def _quantile(u: np.ndarray, levels, k) -> np.ndarray:
    lv, k = np.asarray(levels), np.asarray(k)
    core = np.interp(u, np.r_[0.0, lv], np.r_[0.0, k])
    tail = k[-1] * ndtri((1 + u) / 2) / ndtri((1 + lv[-1]) / 2)
    return np.where(u <= lv[-1], core, tail)


def mix_centroid_calibrations(
    a: CentroidCalibration, b: CentroidCalibration, w: float, source: str = ""
) -> CentroidCalibration:
    """The calibration of the mixture ``(1 - w) a + w b`` of the two distributions of
    ``|error| / sd`` (each as :meth:`CentroidCalibration.quantile` extends it), at ``a``'s
    levels: ``k`` solves ``(1 - w) F_a(k) + w F_b(k) = level``. ``w`` 0 gives ``a``, 1 gives
    ``b`` (at ``a``'s levels). Binned by detection SNR when either is: at the SNR of each
    of its bins (``a``'s where ``a`` has them), both calibrations' tables at that SNR
    (:meth:`CentroidCalibration.at`) mixed."""
    if not 0.0 <= w <= 1.0:
        raise ProbcatValueError(f"mixture weight must lie in [0, 1], got {w}")
    pooled = _mix_tables(a, b, w)
    snr = a.snr if a.binned else b.snr
    by_snr = tuple(_mix_tables(a.at(s), b.at(s), w, a.levels) for s in snr)
    return CentroidCalibration(a.levels, pooled, a.n + b.n, source, tuple(snr), by_snr)


def _mix_tables(a: CentroidCalibration, b: CentroidCalibration, w: float, levels=None) -> tuple:
    """``k`` at ``levels`` (``a``'s) of the mixture of the pooled tables of ``a`` and ``b``."""
    hi = max(a.k[-1], b.k[-1])
    # both CDFs are linear between their knots (exact there) and a normal tail beyond:
    # the knots of both, and a fine geometric grid over the tails
    tail = np.geomspace(min(a.k[-1], b.k[-1]), 10.0 * hi, 400)
    grid = np.unique(np.concatenate([[0.0], a.k, b.k, tail]))
    cdf = (1.0 - w) * a.cdf(grid) + w * b.cdf(grid)
    k = np.interp(np.asarray(a.levels if levels is None else levels), cdf, grid)
    return tuple(float(v) for v in k)


def centroid_interval(
    cat: FullCatalog, level: float, calibration: CentroidCalibration | dict | None = None
) -> dict[str, np.ndarray]:
    """Central ``level`` intervals of each source's centroid: ``x_lo, x_hi, y_lo, y_hi``
    (pixels). ``calibration``: by default the one recorded in the catalogue's metadata by
    the weights that made it; Gaussian (``k = z``) when there is none. A calibration in
    bins of detection SNR gives each source the ``k`` of its ``detection_snr`` column (the
    pooled ``k`` to a catalogue without one)."""
    if not 0.0 < level < 1.0:
        raise ProbcatValueError(f"level must lie in (0, 1), got {level}")
    if calibration is None:
        calibration = cat.meta.get("centroid_calibration")
    if isinstance(calibration, dict):
        calibration = CentroidCalibration.from_dict(calibration)
    snr = np.asarray(cat["detection_snr"], float) if "detection_snr" in cat else None
    k = calibration.factor(level, snr) if calibration is not None else float(ndtri(0.5 + level / 2))
    x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    xs, ys = np.asarray(cat["x_sd"], float), np.asarray(cat["y_sd"], float)
    return {"x_lo": x - k * xs, "x_hi": x + k * xs, "y_lo": y - k * ys, "y_hi": y + k * ys}


@torch.no_grad()
def fit_centroid_calibration(
    net,
    sim,
    noise_sigma,
    *,
    n_scenes: int = 512,
    rng=None,
    batch: int = 32,
    source: str = "",
    progress: bool = False,
) -> CentroidCalibration:
    """Fit :class:`CentroidCalibration` on ``n_scenes`` scenes of ``sim`` (a
    :class:`~probcat.simulate.scene.SceneSimulator` on validation galaxies): standardised
    errors ``|true - x| / x_sd`` of the MAP detections matched within 2 px, both axes, in
    bins of their detection SNR where the catalogues carry it (weights with a location
    refiner)."""
    from tqdm.auto import tqdm

    if n_scenes < 1:
        raise ProbcatValueError(f"n_scenes must be >= 1, got {n_scenes}")
    z, snr = [], []
    bar = tqdm(total=n_scenes, desc="centroid calibration", disable=not progress)
    for scene, est, _ in map_catalogs_of_scenes(net, sim, noise_sigma, n_scenes, rng, batch):
        truth = scene.catalog
        i, j = match(np.stack([truth["x"], truth["y"]], 1), np.stack([est["x"], est["y"]], 1))
        for t, e, s in (("x", "x", "x_sd"), ("y", "y", "y_sd")):
            z.append(np.abs(np.asarray(truth[t])[i] - est[e][j]) / est[s][j])
            if "detection_snr" in est:
                snr.append(np.asarray(est["detection_snr"], float)[j])
        bar.update()
    bar.close()
    cat_ = lambda v: np.concatenate(v) if v else np.zeros(0)  # noqa: E731
    return calibration_from_errors(cat_(z), source, snr=cat_(snr) if snr else None)


@torch.no_grad()
def map_catalogs_of_scenes(net, sim, noise_sigma, n_scenes: int, rng=None, batch: int = 32):
    """``(scene, MAP catalogue, tile features (C, nty, ntx))`` of ``n_scenes`` fresh scenes
    of ``sim``, decoded ``batch`` at a time (the raw network: no metadata, no reliability
    columns)."""
    from probcat.infer.detect import batch_tile_features, catalog_from_decisions, decode, tile_image

    rng = np.random.default_rng(rng)
    net.eval()
    for start in range(0, n_scenes, batch):
        scenes = [sim.sample(rng) for _ in range(min(batch, n_scenes - start))]
        imgs = np.stack([s.image for s in scenes])
        feats = batch_tile_features(net, imgs, noise_sigma)
        dec = decode(net, feats, image=tile_image(net, imgs, noise_sigma))
        for b, scene in enumerate(scenes):
            est = catalog_from_decisions(
                dec, b, dec.marginal, imgs.shape[-2:], net.tile_size, sim.survey.band_names, {}
            )
            yield scene, est, feats[b]


def calibration_from_errors(z, source: str = "", snr=None) -> CentroidCalibration:
    """:class:`CentroidCalibration` from standardised errors ``|true - mean| / sd``; with
    ``snr`` (each error's detection SNR), binned too (:func:`_snr_bins`; no bins when
    there are too few errors for two)."""
    z = np.asarray(z, float).ravel()
    ok = np.isfinite(z)
    z = z[ok]
    if len(z) < 100:
        raise TooFewMatches(f"only {len(z)} matched coordinates: too few to calibrate")
    k = np.quantile(z, LEVELS)
    centres, by_snr = [], []
    if snr is not None:
        snr = np.maximum(np.nan_to_num(np.asarray(snr, float).ravel()[ok], nan=0.0), 0.0)
        parts = _snr_bins(snr)
        if len(parts) >= 2:
            centres = [float(np.median(snr[p])) for p in parts]
            by_snr = [tuple(float(v) for v in np.quantile(z[p], LEVELS)) for p in parts]
    return CentroidCalibration(
        LEVELS, tuple(float(v) for v in k), int(len(z)), source, tuple(centres), tuple(by_snr)
    )


def _snr_bins(snr: np.ndarray) -> list[np.ndarray]:
    """Indices of ``snr`` in bins of equal width in log SNR (``SNR_BINS`` of them from the
    0.5th to the 99.5th percentile; the errors shrink steadily with SNR, so bright sources
    get bins of their own rather than the last of equal-count bins), each merged with the
    next until it holds ``MIN_PER_BIN`` (the last with the one before)."""
    v = np.log(np.maximum(snr, SNR_FLOOR))
    lo, hi = np.quantile(v, [0.005, 0.995])
    if not hi > lo:
        return [np.arange(len(v))]
    which = np.clip(((v - lo) / (hi - lo) * SNR_BINS).astype(int), 0, SNR_BINS - 1)
    parts: list[np.ndarray] = []
    pending = np.zeros(0, int)
    for b in range(SNR_BINS):
        pending = np.concatenate([pending, np.flatnonzero(which == b)])
        if len(pending) >= MIN_PER_BIN:
            parts.append(pending)
            pending = np.zeros(0, int)
    if len(pending):
        if parts:
            parts[-1] = np.concatenate([parts[-1], pending])
        else:
            parts.append(pending)
    # disjoint ranges of log SNR, every bin but the first above the floor: the medians
    # increase strictly, as the interpolation needs
    return parts
