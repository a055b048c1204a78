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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm

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
    that holds the fraction ``levels[i]`` of validation centroids (both axes pooled)."""

    levels: tuple[float, ...]
    k: tuple[float, ...]
    n: int
    source: str = ""

    def factor(self, level: float) -> float:
        lv = np.asarray(self.levels)
        if not lv[0] <= level <= lv[-1]:
            raise ProbcatValueError(
                f"calibrated centroid intervals exist for levels {lv[0]}-{lv[-1]}, got {level}"
            )
        return float(np.interp(level, lv, self.k))

    def quantile(self, u: np.ndarray) -> np.ndarray:
        """The calibrated distribution of ``|error| / sd`` at probabilities ``u`` in
        ``[0, 1)``: linear between the fitted levels (0 at 0), a normal tail scaled to the
        last level beyond it. ``sign * quantile(U)`` draws standardised errors."""
        u = np.asarray(u, float)
        lv, k = np.asarray(self.levels), np.asarray(self.k)
        core = np.interp(u, np.r_[0.0, lv], np.r_[0.0, k])
        tail = k[-1] * norm.ppf((1 + u) / 2) / norm.ppf((1 + lv[-1]) / 2)
        return np.where(u <= lv[-1], core, tail)

    def cdf(self, k: np.ndarray) -> np.ndarray:
        """``P(|error| / sd <= k)``: the inverse of :meth:`quantile` (linear between the
        fitted levels, the normal tail beyond the last)."""
        k = np.asarray(k, float)
        lv, kk = np.asarray(self.levels), np.asarray(self.k)
        core = np.interp(k, np.r_[0.0, kk], np.r_[0.0, lv])
        tail = 2.0 * norm.cdf(k * norm.ppf((1 + lv[-1]) / 2) / kk[-1]) - 1.0
        return np.where(k <= kk[-1], core, tail)

    def to_dict(self) -> dict:
        return {"levels": list(self.levels), "k": list(self.k), "n": self.n, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> CentroidCalibration:
        return cls(tuple(d["levels"]), tuple(d["k"]), int(d["n"]), d.get("source", ""))


def mix_centroid_calibrations(
    a: CentroidCalibration, b: CentroidCalibration, w: float, source: str = ""
) -> CentroidCalibration:
    """The calibration of the mixture ``(1 - w) a + w b`` of the two distributions of
    ``|error| / sd`` (each as :meth:`CentroidCalibration.quantile` extends it), at ``a``'s
    levels: ``k`` solves ``(1 - w) F_a(k) + w F_b(k) = level``. ``w`` 0 gives ``a``, 1 gives
    ``b`` (at ``a``'s levels)."""
    if not 0.0 <= w <= 1.0:
        raise ProbcatValueError(f"mixture weight must lie in [0, 1], got {w}")
    hi = max(a.k[-1], b.k[-1])
    # both CDFs are linear between their knots (exact there) and a normal tail beyond:
    # the knots of both, and a fine geometric grid over the tails
    tail = np.geomspace(min(a.k[-1], b.k[-1]), 10.0 * hi, 400)
    grid = np.unique(np.concatenate([[0.0], a.k, b.k, tail]))
    cdf = (1.0 - w) * a.cdf(grid) + w * b.cdf(grid)
    k = np.interp(np.asarray(a.levels), cdf, grid)
    return CentroidCalibration(a.levels, tuple(float(v) for v in k), a.n + b.n, source)


def centroid_interval(
    cat: FullCatalog, level: float, calibration: CentroidCalibration | dict | None = None
) -> dict[str, np.ndarray]:
    """Central ``level`` intervals of each source's centroid: ``x_lo, x_hi, y_lo, y_hi``
    (pixels). ``calibration``: by default the one recorded in the catalogue's metadata by
    the weights that made it; Gaussian (``k = z``) when there is none."""
    if not 0.0 < level < 1.0:
        raise ProbcatValueError(f"level must lie in (0, 1), got {level}")
    if calibration is None:
        calibration = cat.meta.get("centroid_calibration")
    if isinstance(calibration, dict):
        calibration = CentroidCalibration.from_dict(calibration)
    k = calibration.factor(level) if calibration is not None else float(norm.ppf(0.5 + level / 2))
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
    errors ``|true - x| / x_sd`` of the MAP detections matched within 2 px, both axes."""
    from tqdm.auto import tqdm

    if n_scenes < 1:
        raise ProbcatValueError(f"n_scenes must be >= 1, got {n_scenes}")
    z = []
    bar = tqdm(total=n_scenes, desc="centroid calibration", disable=not progress)
    for scene, est, _ in map_catalogs_of_scenes(net, sim, noise_sigma, n_scenes, rng, batch):
        truth = scene.catalog
        i, j = match(np.stack([truth["x"], truth["y"]], 1), np.stack([est["x"], est["y"]], 1))
        for t, e, s in (("x", "x", "x_sd"), ("y", "y", "y_sd")):
            z.append(np.abs(np.asarray(truth[t])[i] - est[e][j]) / est[s][j])
        bar.update()
    bar.close()
    return calibration_from_errors(np.concatenate(z) if z else np.zeros(0), source)


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


def calibration_from_errors(z, source: str = "") -> CentroidCalibration:
    """:class:`CentroidCalibration` from standardised errors ``|true - mean| / sd``."""
    z = np.asarray(z, float).ravel()
    z = z[np.isfinite(z)]
    if len(z) < 100:
        raise TooFewMatches(f"only {len(z)} matched coordinates: too few to calibrate")
    k = np.quantile(z, LEVELS)
    return CentroidCalibration(LEVELS, tuple(float(v) for v in k), int(len(z)), source)
