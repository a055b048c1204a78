"""Networks on small stamps centred on a source: the star/galaxy classifier and the
location refiner. Stamps are cut by :func:`probcat.tiles.cut_stamps`."""

from __future__ import annotations

import math

import torch
from torch import nn

from probcat.nets.backbone import asinh

__all__ = [
    "STAMP_SIZE",
    "REFINE_SD0",
    "StampClassifier",
    "LocationRefiner",
    "stamp_views",
    "seeing_matched_grid",
]

STAMP_SIZE = 15
REFINE_SD0 = 0.5  # px, the refiner's initial standard deviation


def stamp_views(stamps: torch.Tensor) -> torch.Tensor:
    """Two views of stamp pixels (noise-sigma units): compressed brightness, and the profile
    normalised by the stamp's central peak (its shape whatever the flux: what separates
    stars from galaxies)."""
    c = stamps.shape[-1] // 2
    peak = stamps[:, :, c - 1 : c + 2, c - 1 : c + 2].amax((2, 3), keepdim=True)
    views = torch.cat([asinh(stamps / 3.0), stamps / peak.clamp_min(3.0)], 1)
    return views.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions


def seeing_matched_grid(scale: float, size: int = STAMP_SIZE) -> tuple[int, torch.Tensor]:
    """Where a ``size``-px stamp of an image whose PSF is ``scale`` times as wide as the
    weights' survey PSF takes its pixels so that the PSF spans as many of them as in
    training: ``(cut, grid)``, the side of the (odd) stamp to cut around the source's pixel
    and the ``(1, size, size, 2)`` sampling grid of :func:`torch.nn.functional.grid_sample`
    (``align_corners=True``) on it, ``scale`` px apart and centred on that pixel. A star's
    image then has the training PSF's width in stamp pixels; a galaxy looks as it would
    with its sizes divided by ``scale`` under the survey's seeing: still resolved."""
    cut = math.ceil(size * max(scale, 1.0)) + 2
    cut += 1 - cut % 2
    at = (torch.arange(size, dtype=torch.float32) - size // 2) * scale + cut // 2
    g = at / (cut - 1) * 2 - 1
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    return cut, torch.stack([gx, gy], -1)[None]


def _stamp_conv(n_bands: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2 * n_bands, width, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.SiLU(),
    )


def _flat_width(width: int) -> int:
    side = (STAMP_SIZE + 1) // 2
    return 2 * width * side * side


class LocationRefiner(nn.Module):
    """Normal posterior of a source's position from a stamp centred on the pixel nearest a
    proposed position (the tile head's), and the proposal's offset from that pixel.

    The tile heads localise a source about 3x worse when it sits across a tile edge than
    inside the tile (``benchmarks/edge_localization.py``); centred on the source, the stamp
    sees the same profile wherever the tile grid falls. The output starts as the proposal
    itself (last layer at zero), with a standard deviation of ``REFINE_SD0`` px."""

    def __init__(self, n_bands: int, width: int = 16):
        super().__init__()
        self.conv = _stamp_conv(n_bands, width)
        self.mlp = nn.Sequential(nn.Linear(_flat_width(width) + 2, 64), nn.SiLU())
        self.out = nn.Linear(64, 4)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, stamps, offsets) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (px from the stamp's centre pixel) and log variance (px^2), each ``(N, 2)``."""
        o = self.out(self.mlp(torch.cat([self.conv(stamp_views(stamps)).flatten(1), offsets], 1)))
        return offsets + o[:, :2], (o[:, 2:] + 2 * math.log(REFINE_SD0)).clamp(-10.0, 4.0)


class StampClassifier(nn.Module):
    """Galaxy logit from a stamp centred on the source (pixels at full resolution), its
    sub-pixel offset, and the tile's conditioned features (blend context)."""

    def __init__(self, n_bands: int, channels: int, width: int = 16):
        super().__init__()
        self.conv = _stamp_conv(n_bands, width)
        self.mlp = nn.Sequential(
            nn.Linear(_flat_width(width) + channels + 2, 64), nn.SiLU(), nn.Linear(64, 1)
        )

    def forward(self, stamps, tile_feats, offsets):
        z = self.conv(stamp_views(stamps)).flatten(1)
        return self.mlp(torch.cat([z, tile_feats, offsets], 1))[:, 0]
