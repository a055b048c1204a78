"""Fully convolutional detection/classification encoder with tile-resolution heads.

Paper 000's encoders see a 53-px padded tile around every 5-px tile. Here one backbone runs
over the whole image (DESIGN.md principle 3): a light full-resolution stem, a
space-to-depth step to tile resolution, and residual 3x3 convolutions on the tile grid,
so each pixel is processed once. The receptive field (:attr:`DetectionNet.receptive_field`)
is at least 53 px for the default depth.

Per tile the heads give the variational parameters of eqs. 2-4: the Bernoulli logit of
``n_t``, the mean (in tile units, in (0, 1)) and log-variance of the centroid, and the
galaxy/star Bernoulli logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DetectionNet", "TileOutput"]


@dataclass
class TileOutput:
    """Variational parameters per tile, each ``(B, nty, ntx)`` or ``(B, nty, ntx, 2)``."""

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
        return torch.exp(0.5 * self.loc_logvar)


class _Res(nn.Module):
    def __init__(self, ch: int, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(ch),
            nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(ch))
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(x + self.body(x))


class DetectionNet(nn.Module):
    """Image ``(B, bands, H, W)`` in units of the noise sigma -> :class:`TileOutput`.

    ``H`` and ``W`` must be multiples of ``tile_size`` (inference pads).

    Args:
        n_bands: input bands.
        tile_size: tile side in pixels (5).
        stem_channels: channels at full resolution (kept small: it dominates CPU cost).
        channels: channels on the tile grid.
        n_blocks: residual blocks on the tile grid; each widens the receptive field.
    """

    def __init__(self, n_bands: int = 1, tile_size: int = 5, stem_channels: int = 16,
                 channels: int = 96, n_blocks: int = 3):
        super().__init__()
        self.n_bands, self.tile_size = n_bands, tile_size
        self.stem = nn.Sequential(
            nn.Conv2d(n_bands, stem_channels, 5, padding=2), nn.SiLU(),
            nn.Conv2d(stem_channels, stem_channels, 3, padding=1), nn.SiLU())
        self.to_tiles = nn.Sequential(
            nn.PixelUnshuffle(tile_size),
            nn.Conv2d(stem_channels * tile_size**2, channels, 1), nn.BatchNorm2d(channels),
            nn.SiLU())
        self.blocks = nn.Sequential(*[_Res(channels, dilation=1 + (k % 2)) for k in range(n_blocks)])
        self.head = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.SiLU(),
                                  nn.Conv2d(channels, 6, 1))
        self._rf = self._receptive_field(n_blocks)

    def _receptive_field(self, n_blocks: int) -> int:
        t = self.tile_size
        rf = 5 + 2  # stem: 5x5 then 3x3
        rf += t - 1  # space-to-depth block
        for k in range(n_blocks):
            rf += 2 * 2 * (1 + (k % 2)) * t  # two 3x3 convs, dilation d, on the tile grid
        return rf

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the input region that can influence one tile's output."""
        return self._rf

    @staticmethod
    def normalise(image: torch.Tensor) -> torch.Tensor:
        """Compress the dynamic range of an image in noise-sigma units."""
        return torch.asinh(image / 3.0)

    def forward(self, image: torch.Tensor) -> TileOutput:
        x = self.normalise(image)
        x = self.blocks(self.to_tiles(self.stem(x)))
        h = self.head(x).permute(0, 2, 3, 1)  # (B, nty, ntx, 6)
        return TileOutput(
            count_logit=h[..., 0],
            loc_mean=torch.sigmoid(h[..., 1:3]),
            loc_logvar=h[..., 3:5].clamp(-12.0, 4.0),
            galaxy_logit=h[..., 5],
        )
