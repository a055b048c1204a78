"""The point-source population model of "Detection is truncation" (paper 001, Table 1 and
Appendix A), vectorised over batches of maps.

Population parameters ``theta = (N, sigma, h)``: the number of sources ``N ~ U{10..500}``,
the flux parameter ``sigma ~ U(1, 3)`` and the spatial parameter ``h ~ U(1, 20)``
(degrees). Each source has a flux ``F ~ logNormal(1, sigma)`` (``ln F ~ N(1, sigma)``) and a
position ``(l, b) ~ (N(0, 20), N(0, h))`` in degrees. The map spans [-40, 40] degrees on both
axes in 128 x 128 pixels (0.625 deg); sources outside it are lost.

Instrument, as in the authors' public code: the fluxes are binned into pixels (``mu``), the
mean map is ``gaussian_filter(mu, 1.5) * 4`` (a Gaussian PSF of 1.5 px) and the observed map
is ``poisson(mean * 100) / 100``. One deliberate difference: the filter's edges are
``mode="constant"`` (light that leaves the map is lost) instead of scipy's default
``"reflect"``, which would fold a source near an edge back onto the map as a mirror image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import log_ndtr, ndtr, ndtri, ndtri_exp

__all__ = [
    "PRIOR_LOW",
    "PRIOR_HIGH",
    "PARAM_NAMES",
    "MAP_SIZE",
    "EXTENT_DEG",
    "PIXEL_DEG",
    "PSF_SIGMA_PX",
    "Sources",
    "sample_prior",
    "sample_sources",
    "render",
    "simulate",
    "deg_to_pix",
    "pix_to_deg",
    "normalise_theta",
    "trunc_normal",
    "trunc_lognormal",
]

PARAM_NAMES = ("N", "sigma", "h")
PRIOR_LOW = np.array([10.0, 1.0, 1.0])
PRIOR_HIGH = np.array([500.0, 3.0, 20.0])
MAP_SIZE = 128
EXTENT_DEG = 40.0  # the map spans [-40, 40] degrees
PIXEL_DEG = 2 * EXTENT_DEG / MAP_SIZE
PSF_SIGMA_PX = 1.5
MEAN_SCALE = 4.0  # mean map = gaussian_filter(mu, 1.5) * 4
COUNTS = 100.0  # map = poisson(mean * 100) / 100
_CHUNK = 64  # maps rendered at a time
L_SIGMA_DEG = 20.0
FLUX_MU = 1.0  # ln F ~ N(1, sigma)


def sample_prior(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` draws of ``theta = (N, sigma, h)`` from Table 1's priors, ``(n, 3)``; ``N``
    integer-valued."""
    theta = rng.uniform(PRIOR_LOW, PRIOR_HIGH, (n, 3))
    theta[:, 0] = rng.integers(int(PRIOR_LOW[0]), int(PRIOR_HIGH[0]) + 1, n)
    return theta


def normalise_theta(theta) -> np.ndarray:
    """``theta`` mapped to [-1, 1] per parameter (network inputs)."""
    return 2 * (np.asarray(theta) - PRIOR_LOW) / (PRIOR_HIGH - PRIOR_LOW) - 1


def deg_to_pix(l, b):
    """Pixel coordinates ``(x, y)`` (centres at integers) of positions in degrees."""
    return (np.asarray(l) + EXTENT_DEG) / PIXEL_DEG - 0.5, (
        np.asarray(b) + EXTENT_DEG
    ) / PIXEL_DEG - 0.5


def pix_to_deg(x, y):
    """Positions in degrees of pixel coordinates ``(x, y)``."""
    return (np.asarray(x) + 0.5) * PIXEL_DEG - EXTENT_DEG, (
        np.asarray(y) + 0.5
    ) * PIXEL_DEG - EXTENT_DEG


@dataclass
class Sources:
    """Sources of a batch of maps, flat: ``map`` (index of the map), ``flux``, ``l``, ``b``
    (degrees), and ``detected`` (filled by detection matching; else False)."""

    map: np.ndarray
    flux: np.ndarray
    l: np.ndarray
    b: np.ndarray
    detected: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.flux)

    def select(self, keep: np.ndarray) -> Sources:
        det = None if self.detected is None else self.detected[keep]
        return Sources(self.map[keep], self.flux[keep], self.l[keep], self.b[keep], det)

    @staticmethod
    def concat(parts: list[Sources]) -> Sources:
        det = [p.detected for p in parts]
        return Sources(
            np.concatenate([p.map for p in parts]),
            np.concatenate([p.flux for p in parts]),
            np.concatenate([p.l for p in parts]),
            np.concatenate([p.b for p in parts]),
            None if any(d is None for d in det) else np.concatenate(det),
        )


def sample_sources(rng: np.random.Generator, theta: np.ndarray, counts=None) -> Sources:
    """Sources of each map ``i`` drawn from the population ``theta[i]``; ``counts[i]`` of them
    (default ``N``)."""
    theta = np.atleast_2d(theta)
    n = theta[:, 0].astype(np.int64) if counts is None else np.asarray(counts, np.int64)
    idx = np.repeat(np.arange(len(theta)), n)
    sigma, h = theta[idx, 1], theta[idx, 2]
    flux = np.exp(FLUX_MU + sigma * rng.standard_normal(len(idx)))
    l = L_SIGMA_DEG * rng.standard_normal(len(idx))
    b = h * rng.standard_normal(len(idx))
    return Sources(idx, flux, l, b)


def trunc_normal(rng, sd, lo, hi):
    """Draws of ``N(0, sd)`` truncated to ``[lo, hi]`` (arrays), by inverting the CDF in
    log space on the side of zero where it is accurate, so that intervals far in a tail
    (a region at ``b = 15`` for ``h = 1``) still get draws inside them."""
    a, c = np.asarray(lo / sd, float), np.asarray(hi / sd, float)
    flip = a > 0  # upper tail: draw -x in [-c, -a]
    a, c = np.where(flip, -c, a), np.where(flip, -a, c)
    log_a, log_c = log_ndtr(a), log_ndtr(c)
    u = rng.random(np.shape(a))
    log_u = log_c + np.log(np.exp(log_a - log_c) + u * -np.expm1(log_a - log_c))
    z = np.clip(ndtri_exp(log_u), a, c)
    return sd * np.where(flip, -z, z)


def trunc_lognormal(rng, sigma, f_min):
    """Fluxes ``logNormal(1, sigma)`` truncated to ``F >= f_min``."""
    a = ndtr((np.log(f_min) - FLUX_MU) / sigma)
    u = a + (1 - a) * rng.random(np.shape(sigma))
    return np.exp(FLUX_MU + sigma * ndtri(np.clip(u, 1e-12, 1 - 1e-12)))


def flux_map(sources: Sources, n_maps: int) -> np.ndarray:
    """``mu``: the fluxes binned into pixels, ``(n_maps, 128, 128)`` float32."""
    x, y = deg_to_pix(sources.l, sources.b)
    ix, iy = np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64)
    inside = (ix >= 0) & (ix < MAP_SIZE) & (iy >= 0) & (iy < MAP_SIZE)
    flat = (sources.map[inside] * MAP_SIZE + iy[inside]) * MAP_SIZE + ix[inside]
    mu = np.bincount(flat, weights=sources.flux[inside], minlength=n_maps * MAP_SIZE**2)
    return mu.reshape(n_maps, MAP_SIZE, MAP_SIZE).astype(np.float32)


def render(rng: np.random.Generator, sources: Sources, n_maps: int, noise: bool = True):
    """Observed maps ``(n_maps, 128, 128)`` float32 (the mean maps if not ``noise``), in
    chunks of maps that stay in the CPU's caches."""
    out = np.zeros((n_maps, MAP_SIZE, MAP_SIZE), np.float32)
    order = np.argsort(sources.map, kind="stable")
    starts = np.searchsorted(sources.map[order], np.arange(0, n_maps + _CHUNK, _CHUNK))
    for k, m0 in enumerate(range(0, n_maps, _CHUNK)):
        m1 = min(m0 + _CHUNK, n_maps)
        sel = order[starts[k] : starts[k + 1]]
        part = sources.select(sel)
        part.map = part.map - m0
        mu = flux_map(part, m1 - m0)
        mean = gaussian_filter(mu, (0, PSF_SIGMA_PX, PSF_SIGMA_PX), mode="constant")
        mean *= MEAN_SCALE
        if not noise:
            out[m0:m1] = mean
            continue
        lit = mean > 0  # Poisson draws only where there is light (zero elsewhere)
        out[m0:m1][lit] = rng.poisson(mean[lit].astype(np.float64) * COUNTS) / COUNTS
    return out


def simulate(rng: np.random.Generator, n: int, theta: np.ndarray | None = None):
    """``n`` maps of the full model: ``theta`` ``(n, 3)`` (drawn from the prior unless
    given), the maps ``(n, 128, 128)`` and their sources."""
    theta = sample_prior(rng, n) if theta is None else np.atleast_2d(theta)
    sources = sample_sources(rng, theta)
    return theta, render(rng, sources, len(theta)), sources
