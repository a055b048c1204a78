"""Detection heads on backbone tile features: checkerboard-conditional count and location.

The tiles are split into four groups by the parity of their row and column. Group ``g`` is
decoded conditioned on the decisions (count and location) already taken in groups ``< g``,
which enter as extra channels of a small tile-resolution network that also sees the
neighbouring tiles. The joint distribution over tiles is then ``prod_g Q(Z_g | Z_<g, x)``
instead of paper 000's fully factorised eq. 1, so a source near a tile edge is claimed by
one tile instead of being split between two (paper 000 section 4.5, Fig. 8). With nothing
decided, the heads give each tile's marginal ``Q(n_t | x)``: the paper's detection
probability.

Locations follow a normal truncated to the tile (:mod:`probcat.nets.distributions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from probcat.nets.distributions import (
    trunc_interval,
    trunc_log_prob,
    trunc_moments,
    trunc_sample,
)

__all__ = [
    "CheckerboardHead",
    "TileOutput",
    "tile_groups",
    "decided_proximity",
    "N_GROUPS",
    "PROXIMITY_SCALES",
]

N_GROUPS = 4
PROXIMITY_SCALES = (0.5, 1.5)  # px


def tile_groups(nty: int, ntx: int, device=None) -> torch.Tensor:
    """Checkerboard group ``(ty % 2) * 2 + (tx % 2)`` of every tile, ``(nty, ntx)`` long."""
    ty = torch.arange(nty, device=device)[:, None] % 2
    tx = torch.arange(ntx, device=device)[None, :] % 2
    return ty * 2 + tx


def decided_proximity(
    nd: torch.Tensor, locs: torch.Tensor, tile_size: int, scales=PROXIMITY_SCALES
) -> torch.Tensor:
    """For every tile, ``max_k exp(-d_k^2 / 2 s^2)`` over the decided sources ``k`` of its 8
    neighbours, ``d_k`` the distance in px from source ``k`` to the tile's square: ~1 when a
    neighbour's source sits on this tile's edge or corner. ``nd`` ``(B, nty, ntx)`` (1 where a
    decided tile holds a source), ``locs`` ``(B, nty, ntx, 2)``; returns
    ``(B, len(scales), nty, ntx)``."""
    _, nty, ntx = nd.shape
    pn = nn.functional.pad(nd, (1, 1, 1, 1))
    pl = nn.functional.pad(locs.permute(0, 3, 1, 2), (1, 1, 1, 1))
    nearest = None  # the smallest d^2 over the neighbours holding a source (inf: none)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx == dy == 0:
                continue
            win = (slice(None), slice(1 + dy, 1 + dy + nty), slice(1 + dx, 1 + dx + ntx))
            lx = pl[:, 0][win] + dx  # neighbour's source relative to this tile, tile units
            ly = pl[:, 1][win] + dy
            ex = (-lx).clamp_min(0) + (lx - 1).clamp_min(0)
            ey = (-ly).clamp_min(0) + (ly - 1).clamp_min(0)
            d2 = ((ex**2 + ey**2) * tile_size**2).masked_fill(pn[win] == 0, math.inf)
            nearest = d2 if nearest is None else torch.minimum(nearest, d2)
    # the max over neighbours of exp(-d^2 / 2 s^2) is that of the nearest one
    return torch.stack([torch.exp(-nearest / (2 * s**2)) for s in scales], 1)


@dataclass
class TileOutput:
    """Variational parameters per tile, each ``(B, nty, ntx)`` or ``(B, nty, ntx, 2)``.

    ``loc_mean`` (in (0, 1), tile units) and ``loc_logvar`` (log variance, tile units^2) are
    the parameters of the normal that, truncated to the tile, is the location posterior:
    its mean and standard deviation are :attr:`loc_post_mean` and :attr:`loc_post_sd`.
    ``galaxy_logit`` is NaN where no classification was made (stamp classifier).
    """

    count_logit: torch.Tensor
    loc_mean: torch.Tensor
    loc_logvar: torch.Tensor
    galaxy_logit: torch.Tensor

    @property
    def prob(self) -> torch.Tensor:
        return torch.sigmoid(self.count_logit)

    @property
    def galaxy_prob(self) -> torch.Tensor:
        return torch.sigmoid(self.galaxy_logit)

    @property
    def loc_sd(self) -> torch.Tensor:
        """Standard deviation of the underlying (untruncated) normal."""
        return torch.exp(0.5 * self.loc_logvar)

    @property
    def loc_post_mean(self) -> torch.Tensor:
        """Posterior mean location in the tile (truncated normal)."""
        return trunc_moments(self.loc_mean, self.loc_sd)[0]

    @property
    def loc_post_sd(self) -> torch.Tensor:
        """Posterior standard deviation of the location (truncated normal), tile units."""
        return trunc_moments(self.loc_mean, self.loc_sd)[1]

    def loc_log_prob(self, locs: torch.Tensor) -> torch.Tensor:
        """Log density of ``locs`` ``(..., 2)`` in the tile, summed over the two axes."""
        return trunc_log_prob(locs, self.loc_mean, self.loc_sd).sum(-1)

    def sample_locs(self, generator=None, u=None) -> torch.Tensor:
        """One location draw per tile, inside the tile (from the uniform numbers ``u`` where
        given, of ``loc_mean``'s shape)."""
        return trunc_sample(self.loc_mean, self.loc_sd, generator, u)

    def loc_interval(self, level: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Central posterior interval of each coordinate, tile units."""
        return trunc_interval(self.loc_mean, self.loc_sd, level)

    def at(self, index) -> TileOutput:
        """The fields of the tiles picked by ``index`` (e.g. ``(k, ty, tx)``), so that derived
        quantities are computed for those tiles only."""
        return TileOutput(
            self.count_logit[index],
            self.loc_mean[index],
            self.loc_logvar[index],
            self.galaxy_logit[index],
        )

    def where(self, mask: torch.Tensor, other: TileOutput) -> TileOutput:
        """Fields from ``self`` where ``mask`` ``(B, nty, ntx)``, else from ``other``."""

        def pick(a, b):
            m = mask if a.dim() == mask.dim() else mask[..., None]
            return torch.where(m, a, b)

        return TileOutput(
            pick(self.count_logit, other.count_logit),
            pick(self.loc_mean, other.loc_mean),
            pick(self.loc_logvar, other.loc_logvar),
            pick(self.galaxy_logit, other.galaxy_logit),
        )


class CheckerboardHead(nn.Module):
    """Count and location of each tile from backbone features ``(B, C, nty, ntx)`` given the
    decisions taken so far (a 3x3 convolution of the decision channels added to the
    features keeps this cheap; ``proximity`` adds :func:`decided_proximity` channels and a
    deeper mixer, without which diagonal neighbours barely inform each other)."""

    def __init__(self, channels: int, tile_size: int, proximity: bool = False):
        super().__init__()
        self.tile_size, self.proximity = tile_size, proximity
        self.cond_in = nn.Conv2d(4 + len(PROXIMITY_SCALES) * proximity, channels, 3, padding=1)
        mix = [nn.SiLU(), nn.Conv2d(channels, channels, 1), nn.SiLU()]
        if proximity:
            mix += [nn.Conv2d(channels, channels, 1), nn.SiLU()]
        self.cond_mix = nn.Sequential(*mix)
        self.det_head = nn.Conv2d(channels, 5, 1)

    def trunk(
        self,
        feats: torch.Tensor,
        decided: torch.Tensor | None = None,
        n: torch.Tensor | None = None,
        locs: torch.Tensor | None = None,
        parity: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Tile features conditioned on the decisions taken so far; with ``parity=(py, px)``
        only those of the tiles ``[py::2, px::2]`` (the same values: the conditioning's 3x3
        convolution is evaluated there alone, and everything after it is per tile).

        Args:
            feats: backbone features ``(B, C, nty, ntx)``.
            decided: ``(B, nty, ntx)`` bool, tiles whose count/location are given.
            n, locs: their counts ``(B, nty, ntx)`` and locations ``(B, nty, ntx, 2)``
                (ignored where not decided).
        """
        if decided is None or not decided.any():  # nothing decided: the convolution of zeros
            bias = self.cond_in.bias[None, :, None, None]
            f = feats if parity is None else feats[:, :, parity[0] :: 2, parity[1] :: 2]
            return self.cond_mix(f + bias)
        d = decided.float()
        nd = n.float() * d
        parts = [d[:, None], nd[:, None], (locs * nd[..., None]).permute(0, 3, 1, 2)]
        if self.proximity:
            parts.append(decided_proximity(nd, locs, self.tile_size))
        cond = torch.cat(parts, 1)
        if parity is None:
            return self.cond_mix(feats + self.cond_in(cond))
        py, px = parity
        c = nn.functional.pad(cond, (1, 1, 1, 1))[:, :, py:, px:]
        c = nn.functional.conv2d(c, self.cond_in.weight, self.cond_in.bias, stride=2)
        return self.cond_mix(feats[:, :, py::2, px::2] + c)

    def detection_params(self, h: torch.Tensor):
        """``(count_logit, loc_mean, loc_logvar)`` from conditioned features."""
        det = self.det_head(h).permute(0, 2, 3, 1)
        return det[..., 0], torch.sigmoid(det[..., 1:3]), det[..., 3:5].clamp(-12.0, 4.0)
