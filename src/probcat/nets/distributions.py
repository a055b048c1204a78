"""The normal distribution truncated to the unit interval: the variational family of a
source's location inside its tile (one per axis, in tile units).

Paper 000 (eq. 4) uses a logit-normal/normal location and footnote 10 counts a sample that
falls outside its tile as a non-detection. Near a tile edge that wastes up to half of the
mass and forces a wide, inward-shifted fit (forward KL is mass-covering). Truncating to
``[0, 1]`` keeps the density normalised inside the tile, so a source 0.05 px from an edge
gets a narrow posterior there and every sample stays in its tile.

``mu`` and ``sd`` are the parameters of the underlying normal (``mu`` in (0, 1)).
"""

from __future__ import annotations

import math

import torch
from torch.special import ndtr, ndtri

__all__ = ["trunc_log_prob", "trunc_sample", "trunc_moments", "trunc_interval"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_EPS = 1e-6


def _bounds(mu: torch.Tensor, sd: torch.Tensor):
    a, b = (0.0 - mu) / sd, (1.0 - mu) / sd
    # with mu in (0, 1), a <= 0 <= b: Phi(b) - Phi(a) >= ~0.05 even for the widest sd
    z = (ndtr(b) - ndtr(a)).clamp_min(1e-12)
    return a, b, z


def trunc_log_prob(x: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """Log density at ``x`` in [0, 1] (elementwise)."""
    _, _, z = _bounds(mu, sd)
    u = (x - mu) / sd
    return -0.5 * u**2 - torch.log(sd) - _LOG_SQRT_2PI - torch.log(z)


def trunc_sample(mu: torch.Tensor, sd: torch.Tensor, generator=None, u=None) -> torch.Tensor:
    """One draw per element by inverting the CDF (always inside [0, 1)), from ``u`` (uniform
    numbers of ``mu``'s shape) where given, else from ``generator``."""
    a, b, _ = _bounds(mu, sd)
    lo, hi = ndtr(a), ndtr(b)
    if u is None:
        gdev = generator.device if generator is not None else mu.device
        u = torch.rand(mu.shape, generator=generator, device=gdev)
    u = lo + (hi - lo) * u.to(mu.device)
    x = mu + sd * ndtri(u.clamp(_EPS, 1 - _EPS))
    return x.clamp(0.0, 1.0 - _EPS)


def trunc_moments(mu: torch.Tensor, sd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the truncated distribution."""
    a, b, z = _bounds(mu, sd)
    pa = torch.exp(-0.5 * a**2 - _LOG_SQRT_2PI)
    pb = torch.exp(-0.5 * b**2 - _LOG_SQRT_2PI)
    r = (pa - pb) / z
    var = sd**2 * (1 + (a * pa - b * pb) / z - r**2)
    mean = (mu + sd * r).clamp(0.0, 1.0)
    return mean, var.clamp_min(1e-12).sqrt()


def trunc_interval(
    mu: torch.Tensor, sd: torch.Tensor, level: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Central interval holding ``level`` of the truncated distribution's mass."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    a, b, z = _bounds(mu, sd)
    lo = ndtr(a)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=mu.dtype, device=mu.device)
    u_lo, u_hi = lo + q[0] * z, lo + q[1] * z
    x_lo = mu + sd * ndtri(u_lo.clamp(_EPS, 1 - _EPS))
    x_hi = mu + sd * ndtri(u_hi.clamp(_EPS, 1 - _EPS))
    return x_lo.clamp(0.0, 1.0), x_hi.clamp(0.0, 1.0)
