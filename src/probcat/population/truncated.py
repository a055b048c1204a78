"""The truncated simulation model (paper 001 eqs. 5-7): simulations targeted at one
observation ``x_o`` whose detected sources are held in place.

Given ``theta`` and the observation's ``N_det`` detections: detected source ``i`` is drawn
from its population prior truncated to its region ``R_i`` (the +-1 degree box) and to
``F >= F_th`` (positions from the truncated normals of the spatial model, fluxes from the
log-normal truncated at the threshold); the other ``N - N_det`` sources are drawn from the
population model and kept only when the sensitivity function says they would not be
detected (accepted with probability ``1 - S(F, s | theta)``: the sensitivity depends on the
population, since crowding hides sources), so that the targeted maps hold the
same detections. ``theta`` with ``N < N_det`` cannot produce the observation: the prior is
truncated to ``N >= N_det``.

Optionally the prior of ``theta`` is also truncated to a box (``bounds``): the region where
an earlier round's posterior of the target has mass, as truncated marginal neural ratio
estimation (TMNRE) narrows it round by round. The prior keeps its shape inside the box.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from probcat.population.detection import REGION_DEG, Detections
from probcat.population.simulator import (
    L_SIGMA_DEG,
    PRIOR_HIGH,
    PRIOR_LOW,
    Sources,
    render,
    sample_sources,
    trunc_lognormal,
    trunc_normal,
)

__all__ = ["TruncatedSimulator", "region_positions"]


def region_positions(rng: np.random.Generator, l0, b0, h):
    """Positions ``(l, b)`` of detected sources in their regions ``R_i`` (the +-1 degree
    boxes around ``l0, b0``), from the spatial model's normals truncated to them (``h``:
    each source's latitude scale)."""
    l = trunc_normal(rng, np.full(len(l0), L_SIGMA_DEG), l0 - REGION_DEG, l0 + REGION_DEG)
    return l, trunc_normal(rng, h, b0 - REGION_DEG, b0 + REGION_DEG)


class TruncatedSimulator:
    """Targeted maps for the detections ``det`` of an observation.

    Args:
        det: the observation's detections (positions and the detection threshold).
        sensitivity: ``S(flux, l, b, theta) -> P(detected)`` for arrays, ``theta`` ``(n, 3)``
            the population of each source's map (the r2 network's).
        bounds: ``(3, 2)`` lower and upper bounds of ``N, sigma, h``: the prior of
            ``theta`` truncated to that box as well (None: the whole prior box).
    """

    def __init__(self, det: Detections, sensitivity: Callable, bounds=None):
        self.det = det
        self.sensitivity = sensitivity
        self.f_th = 10.0**det.threshold_log10
        self.n_det = len(det)
        if self.n_det > PRIOR_HIGH[0]:
            raise ValueError(f"{self.n_det} detections: more than the prior allows")
        box = np.stack([PRIOR_LOW, PRIOR_HIGH], 1)
        if bounds is not None:
            b = np.asarray(bounds, float)
            box = np.stack([np.maximum(b[:, 0], PRIOR_LOW), np.minimum(b[:, 1], PRIOR_HIGH)], 1)
        # the integers N of the prior inside the box, at least N_det
        self.n_range = (max(int(np.ceil(box[0, 0])), self.n_det), int(np.floor(box[0, 1])))
        if self.n_range[0] > self.n_range[1] or not (box[1:, 0] < box[1:, 1]).all():
            raise ValueError(f"the truncation box {box.tolist()} holds no allowed theta")
        self.bounds = box

    def sample_theta(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``theta`` from the prior truncated to ``N >= N_det`` (and to the box)."""
        theta = np.empty((n, 3))
        theta[:, 0] = rng.integers(self.n_range[0], self.n_range[1] + 1, n)
        theta[:, 1:] = rng.uniform(self.bounds[1:, 0], self.bounds[1:, 1], (n, 2))
        return theta

    def log_prior(self, theta) -> np.ndarray:
        """``(n,)``: 0 where ``theta`` ``(n, 3)`` lies in the truncated prior's support
        (``N >= N_det`` and inside the box), ``-inf`` elsewhere (up to a constant, the
        log prior relative to the untruncated one)."""
        t = np.atleast_2d(np.asarray(theta, float))
        n = t[:, 0]
        inside = (n >= self.n_det) & (n >= self.n_range[0] - 0.5) & (n <= self.n_range[1] + 0.5)
        inside &= ((t[:, 1:] >= self.bounds[1:, 0]) & (t[:, 1:] <= self.bounds[1:, 1])).all(1)
        return np.where(inside, 0.0, -np.inf)

    def sources(self, rng: np.random.Generator, theta: np.ndarray) -> Sources:
        """Detected sources in their regions and sub-threshold ones, for each ``theta``,
        ordered by map with each map's ``N_det`` detected sources first."""
        theta = np.atleast_2d(theta)
        b_maps = len(theta)
        parts = []
        if self.n_det:
            idx = np.repeat(np.arange(b_maps), self.n_det)
            sigma, h = theta[idx, 1], theta[idx, 2]
            l0, b0 = np.tile(self.det.l, b_maps), np.tile(self.det.b, b_maps)
            l, b = region_positions(rng, l0, b0, h)
            parts.append(Sources(idx, trunc_lognormal(rng, sigma, self.f_th), l, b))
        need = theta[:, 0].astype(np.int64) - self.n_det
        parts.append(self._undetected(rng, theta, need))
        out = Sources.concat(parts)  # by map, each map's detected sources first
        return out.select(np.argsort(out.map, kind="stable"))

    def _undetected(self, rng, theta, need: np.ndarray) -> Sources:
        """``need[i]`` sources of population ``theta[i]`` that would not be detected."""
        kept: list[Sources] = []
        have = np.zeros(len(theta), np.int64)
        for _ in range(50):
            short = need - have
            if not (short > 0).any():
                break
            ask = np.where(short > 0, 2 * short + 8, 0)
            cand = sample_sources(rng, theta, ask)
            p_det = self.sensitivity(cand.flux, cand.l, cand.b, theta[cand.map])
            cand = cand.select(rng.random(len(cand)) >= p_det)
            # keep the first `short` accepted candidates of each map
            order = np.argsort(cand.map, kind="stable")
            cand = cand.select(order)
            first = np.searchsorted(cand.map, np.arange(len(theta)))
            rank = np.arange(len(cand)) - first[cand.map]
            cand = cand.select(rank < np.maximum(short, 0)[cand.map])
            have += np.bincount(cand.map, minlength=len(theta))
            kept.append(cand)
        if (have < need).any():
            raise RuntimeError("could not draw enough undetected sources (sensitivity ~1?)")
        if not kept:
            return Sources(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))
        return Sources.concat(kept)

    def simulate(self, rng: np.random.Generator, n: int, theta: np.ndarray | None = None):
        """``n`` targeted maps: ``theta`` (from the truncated prior unless given), maps and
        sources."""
        theta = self.sample_theta(rng, n) if theta is None else np.atleast_2d(theta)
        src = self.sources(rng, theta)
        return theta, render(rng, src, len(theta)), src
