"""The fully convolutional feature extractor shared by probcat's encoders.

Paper 000's encoders see a 53-px padded tile around every 5-px tile. Here one backbone runs
over the whole image (so each pixel is processed once): a light stem down to tile
resolution, then residual 3x3 convolutions on the tile grid. Its output is one feature
vector per tile; heads (detection, classification, later deblending and photo-z) read
those features. Any number of bands.

Stems: ``"conv"`` (5x5 and 3x3 convolutions at full resolution, then space-to-depth) or
``"patchify"`` (space-to-depth of the raw pixels, then a 3x3 convolution on the tile grid:
about 10x cheaper per pixel on a CPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["Backbone", "for_inference", "asinh", "STEMS"]

STEMS = ("conv", "patchify")


def asinh(x: torch.Tensor) -> torch.Tensor:
    """``asinh(x)``; for a float32 CPU tensor outside autograd, numpy's vectorised arcsinh
    (about 9x faster than torch's on a 2-core CPU; the same to 1 ulp)."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad:
        return torch.from_numpy(np.arcsinh(x.numpy()))
    return torch.asinh(x)


class ResBlock(nn.Module):
    """Two 3x3 convolutions (batch norm, SiLU) with a skip connection."""

    def __init__(self, ch: int, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(ch),
        )
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(x + self.body(x))


def _reach(module: nn.Module) -> int:
    """Pixels one output of ``module`` (convolutions with 'same' padding, pointwise layers
    and residual blocks) reaches on each side."""
    return sum(m.padding[0] for m in module.modules() if isinstance(m, nn.Conv2d))


def _unpadded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with every convolution unpadded (each loses its padding on each side;
    residual inputs are trimmed to match), for the modules of the tile grid."""
    if isinstance(module, nn.Conv2d):
        w, b = module.weight, module.bias
        return nn.functional.conv2d(x, w, b, module.stride, 0, module.dilation, module.groups)
    if isinstance(module, nn.Sequential):
        for m in module:
            x = _unpadded(m, x)
        return x
    if isinstance(module, ResBlock):
        c = _reach(module.body)
        core = x[..., c : x.shape[-2] - c, c : x.shape[-1] - c]
        return module.act(core + _unpadded(module.body, x))
    return module(x)  # pointwise layers and PixelUnshuffle


class Backbone(nn.Module):
    """Image ``(B, bands, H, W)`` in units of the noise sigma -> tile features
    ``(B, channels, H/t, W/t)``; ``H`` and ``W`` multiples of ``tile_size``.

    Args:
        n_bands: input bands.
        tile_size: tile side in pixels.
        stem_channels: channels at full resolution (``stem="conv"`` only).
        channels: channels on the tile grid.
        n_blocks: residual blocks on the tile grid (dilations 1, 2, 1, 2, ...).
        stem: ``"conv"`` or ``"patchify"`` (see the module docstring).
    """

    def __init__(
        self,
        n_bands: int = 1,
        tile_size: int = 5,
        stem_channels: int = 12,
        channels: int = 64,
        n_blocks: int = 2,
        stem: str = "conv",
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        self.n_bands, self.tile_size, self.channels = n_bands, tile_size, channels
        self.hparams = {
            "n_bands": n_bands,
            "tile_size": tile_size,
            "stem_channels": stem_channels,
            "channels": channels,
            "n_blocks": n_blocks,
            "stem": stem,
        }
        if stem == "conv":
            self.stem = nn.Sequential(
                nn.Conv2d(n_bands, stem_channels, 5, padding=2),
                nn.SiLU(),
                nn.Conv2d(stem_channels, stem_channels, 3, padding=1),
                nn.SiLU(),
            )
            self.to_tiles = nn.Sequential(
                nn.PixelUnshuffle(tile_size),
                nn.Conv2d(stem_channels * tile_size**2, channels, 1),
                nn.BatchNorm2d(channels),
                nn.SiLU(),
            )
            stem_rf = 5 + 2 + (tile_size - 1)
        else:
            self.stem = nn.Identity()
            self.to_tiles = nn.Sequential(
                nn.PixelUnshuffle(tile_size),
                nn.Conv2d(n_bands * tile_size**2, channels, 1),
                nn.BatchNorm2d(channels),
                nn.SiLU(),
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.BatchNorm2d(channels),
                nn.SiLU(),
            )
            stem_rf = 3 * tile_size
        self.blocks = nn.Sequential(
            *[ResBlock(channels, dilation=1 + (k % 2)) for k in range(n_blocks)]
        )
        self._rf = stem_rf + sum(4 * (1 + (k % 2)) * tile_size for k in range(n_blocks))

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the input region that can influence one tile's features."""
        return self._rf

    @property
    def _stem_halo(self) -> int:
        """The full-resolution stem's reach, rounded up to tiles."""
        return math.ceil(_reach(self.stem) / self.tile_size)

    @property
    def feature_halo(self) -> int:
        """Tiles of context each side that one tile's features depend on (the tile-grid
        convolutions' reach plus the stem's, rounded up to tiles): what ``valid=True`` trims."""
        return self._stem_halo + _reach(self.to_tiles) + _reach(self.blocks)

    @staticmethod
    def normalise(image: torch.Tensor) -> torch.Tensor:
        """Compress the dynamic range of an image in noise-sigma units."""
        return asinh(image / 3.0)

    def forward(self, image: torch.Tensor, valid: bool = False) -> torch.Tensor:
        """Tile features ``(B, C, H/t, W/t)``.

        ``valid``: the tile-grid convolutions run unpadded, so the output loses
        :attr:`feature_halo` tiles on each side, ``(B, C, H/t - 2 halo, W/t - 2 halo)``; those
        tiles' features equal the padded computation's, as they depend on no padding (the
        image carries that much context, e.g. a halo of blank sky), at less cost.
        """
        x = self.stem(self.normalise(image))  # padded: its reach is rounded up to tiles
        if not valid:
            return self.blocks(self.to_tiles(x))
        f = _unpadded(self.blocks, _unpadded(self.to_tiles, x))
        s = self._stem_halo
        return f[..., s : f.shape[-2] - s, s : f.shape[-1] - s]


def for_inference(net: nn.Module) -> nn.Module:
    """``net`` in eval mode for fast inference, in place: each batch norm folded into the
    convolution before it (same outputs, one pass less over the feature maps), in-place
    activations and channels-last convolution weights. Not trainable afterwards. For
    probcat's networks (detection, galaxy model, photo-z), whose every SiLU and LeakyReLU
    acts on a fresh layer output."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net.eval()
    for m in net.modules():
        if isinstance(m, (nn.SiLU, nn.LeakyReLU)):  # on fresh tensors: in place is safe
            m.inplace = True
    for seq in list(net.modules()):
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                    seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                    seq[i + 1] = nn.Identity()
    return net.to(memory_format=torch.channels_last)
