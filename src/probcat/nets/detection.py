"""Fully convolutional detection/classification encoder with tile-resolution heads.

Paper 000's encoders see a 53-px padded tile around every 5-px tile. Here one backbone runs
over the whole image (DESIGN.md principle 3): a light stem (full-resolution convolutions
then space-to-depth, or space-to-depth of the raw pixels: ``stem="patchify"``) down to tile
resolution, and residual 3x3 convolutions on the tile grid, so each pixel is processed once.
:attr:`DetectionNet.receptive_field` is >= 53 px.

**Conditional (checkerboard) heads.** The tiles are split into four groups by the parity
of their row and column. Group ``g`` is decoded conditioned on the decisions (count and
location) already taken in groups ``< g``, which enter as extra channels of a small
tile-resolution network that also sees the neighbouring tiles. The joint distribution
over tiles is then ``prod_g Q(Z_g | Z_<g, x)`` instead of paper 000's fully factorised eq. 1,
so a source near a tile edge is claimed by one tile instead of being split between two
(paper 000 section 4.5, Fig. 8). With nothing decided, the heads give each tile's marginal
``Q(n_t | x)``: the paper's detection probability.

**Locations** follow a normal truncated to the tile (:mod:`probcat.nets.distributions`):
``loc_mean``/``loc_logvar`` parametrise the underlying normal; a sample never leaves its
tile and a source at a tile edge gets a narrow posterior there.

**Classification** conditions on the source's location (true location in training, the
decided location at inference). With ``classifier="stamp"`` (the shipped weights) a small
network looks at a 15x15-px stamp of the image centred on that location, plus the tile's
conditioned features: the paper's re-centred classifier input (section 3.3), run only on
the tiles that hold a source. ``classifier="tile"`` (a head on the tile features alone)
is kept for older weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from probcat.nets.distributions import (
    trunc_interval,
    trunc_log_prob,
    trunc_moments,
    trunc_sample,
)

__all__ = [
    "DetectionNet",
    "TileOutput",
    "tile_groups",
    "decided_proximity",
    "N_GROUPS",
    "STAMP_SIZE",
]

N_GROUPS = 4
STAMP_SIZE = 15
REFINE_SD0 = 0.5  # px, the refiner's initial standard deviation
PROXIMITY_SCALES = (0.5, 1.5)  # px


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


def for_inference(net: nn.Module) -> nn.Module:
    """``net`` in eval mode for CPU-fast inference, in place: each batch norm folded into the
    convolution before it (same outputs, one pass less over the feature maps), in-place
    activations and channels-last convolution weights. Not trainable afterwards."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net.eval()
    for m in net.modules():
        if isinstance(m, nn.SiLU):  # every SiLU acts on a fresh tensor: in place is safe
            m.inplace = True
    for seq in list(net.modules()):
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                    seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                    seq[i + 1] = nn.Identity()
    return net.to(memory_format=torch.channels_last)


def tile_groups(nty: int, ntx: int, device=None) -> torch.Tensor:
    """Checkerboard group ``(ty % 2) * 2 + (tx % 2)`` of every tile, ``(nty, ntx)`` long."""
    ty = torch.arange(nty, device=device)[:, None] % 2
    tx = torch.arange(ntx, device=device)[None, :] % 2
    return ty * 2 + tx


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

    def sample_locs(self, generator=None) -> torch.Tensor:
        """One location draw per tile, inside the tile."""
        return trunc_sample(self.loc_mean, self.loc_sd, generator)

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


class _Res(nn.Module):
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


def _asinh(x: torch.Tensor) -> torch.Tensor:
    """``asinh(x)``; for a float32 CPU tensor outside autograd, numpy's vectorised arcsinh
    (about 9x faster than torch's on this project's 2-core CPU; the same to 1 ulp)."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad:
        return torch.from_numpy(np.arcsinh(x.numpy()))
    return torch.asinh(x)


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
    if isinstance(module, _Res):
        c = _reach(module.body)
        core = x[..., c : x.shape[-2] - c, c : x.shape[-1] - c]
        return module.act(core + _unpadded(module.body, x))
    return module(x)  # pointwise layers and PixelUnshuffle


def _stamp_views(stamps: torch.Tensor) -> torch.Tensor:
    """Two views of stamp pixels (noise-sigma units): compressed brightness, and the profile
    normalised by the stamp's central peak (its shape whatever the flux: what separates
    stars from galaxies)."""
    c = stamps.shape[-1] // 2
    peak = stamps[:, :, c - 1 : c + 2, c - 1 : c + 2].amax((2, 3), keepdim=True)
    views = torch.cat([_asinh(stamps / 3.0), stamps / peak.clamp_min(3.0)], 1)
    return views.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions


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


class _LocationRefiner(nn.Module):
    """Normal posterior of a source's position from a stamp centred on the pixel nearest a
    proposed position (the tile head's), and the proposal's offset from that pixel.

    The tile heads localise a source about 3x worse when it sits across a tile edge than
    inside the tile (``benchmarks/edge_localization.py``); centred on the source, the stamp
    sees the same profile wherever the tile grid falls. The output starts as the proposal
    itself (last layer at zero), with a standard deviation of ``REFINE_SD0`` px."""

    def __init__(self, n_bands: int, width: int = 16):
        super().__init__()
        self.conv = _stamp_conv(n_bands, width)
        side = (STAMP_SIZE + 1) // 2
        self.mlp = nn.Sequential(nn.Linear(2 * width * side * side + 2, 64), nn.SiLU())
        self.out = nn.Linear(64, 4)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, stamps, offsets) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (px from the stamp's centre pixel) and log variance (px^2), each ``(N, 2)``."""
        o = self.out(self.mlp(torch.cat([self.conv(_stamp_views(stamps)).flatten(1), offsets], 1)))
        return offsets + o[:, :2], (o[:, 2:] + 2 * math.log(REFINE_SD0)).clamp(-10.0, 4.0)


class _StampClassifier(nn.Module):
    """Galaxy logit from a stamp centred on the source (pixels at full resolution), its
    sub-pixel offset, and the tile's conditioned features (blend context)."""

    def __init__(self, n_bands: int, channels: int, width: int = 16):
        super().__init__()
        self.conv = _stamp_conv(n_bands, width)
        side = (STAMP_SIZE + 1) // 2
        self.mlp = nn.Sequential(
            nn.Linear(2 * width * side * side + channels + 2, 64), nn.SiLU(), nn.Linear(64, 1)
        )

    def forward(self, stamps, tile_feats, offsets):
        z = self.conv(_stamp_views(stamps)).flatten(1)
        return self.mlp(torch.cat([z, tile_feats, offsets], 1))[:, 0]


class DetectionNet(nn.Module):
    """Image ``(B, bands, H, W)`` in units of the noise sigma -> tile features -> heads.

    ``H`` and ``W`` must be multiples of ``tile_size`` (inference pads).

    Args:
        n_bands: input bands.
        tile_size: tile side in pixels (5).
        stem_channels: channels at full resolution (``stem="conv"``; it dominates CPU cost).
        channels: channels on the tile grid.
        n_blocks: residual blocks on the tile grid (dilations 1, 2, 1, 2, ...).
        stem: ``"conv"`` (5x5 and 3x3 convolutions at full resolution, then space-to-depth)
            or ``"patchify"`` (space-to-depth of the raw pixels, then a 3x3 convolution on
            the tile grid: about 10x cheaper per pixel).
        classifier: ``"stamp"`` (a network on a stamp centred on each source) or ``"tile"``
            (a head on the tile features).
        proximity: also condition on how close the decided sources of the 8 neighbouring
            tiles are to this tile (see :func:`decided_proximity`), through a deeper
            conditional head. Without it, diagonal neighbours barely inform each other.
        loc_refine: refine each decided source's position from a stamp centred on it
            (:meth:`refine_at`); the refined position may leave its tile.
    """

    def __init__(
        self,
        n_bands: int = 1,
        tile_size: int = 5,
        stem_channels: int = 12,
        channels: int = 64,
        n_blocks: int = 2,
        stem: str = "conv",
        classifier: str = "tile",
        proximity: bool = False,
        loc_refine: bool = False,
    ):
        super().__init__()
        if stem not in ("conv", "patchify"):
            raise ValueError(f"stem must be 'conv' or 'patchify', got {stem!r}")
        if classifier not in ("tile", "stamp"):
            raise ValueError(f"classifier must be 'tile' or 'stamp', got {classifier!r}")
        self.classifier = classifier
        self.n_bands, self.tile_size = n_bands, tile_size
        self.hparams = {
            "n_bands": n_bands,
            "tile_size": tile_size,
            "stem_channels": stem_channels,
            "channels": channels,
            "n_blocks": n_blocks,
            "stem": stem,
            "classifier": classifier,
            "proximity": proximity,
        }
        if loc_refine:  # absent from older weights' hparams
            self.hparams["loc_refine"] = True
        self.loc_refine = loc_refine
        self.proximity = proximity
        # CentroidCalibration of the catalogue's intervals, set by the weights loader
        self.centroid_calibration = None
        # radius (px) within which claims of neighbouring tiles are one source when decoding
        # (probcat.infer.merge), set by the weights loader; 0: no merging
        self.merge_px = 0.0
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
            *[_Res(channels, dilation=1 + (k % 2)) for k in range(n_blocks)]
        )
        # conditional head: features + (decided, n, loc_x, loc_y) of decided tiles
        # (a 3x3 conv of the 4 decision channels added to the features keeps this cheap)
        self.cond_in = nn.Conv2d(4 + len(PROXIMITY_SCALES) * proximity, channels, 3, padding=1)
        mix = [nn.SiLU(), nn.Conv2d(channels, channels, 1), nn.SiLU()]
        if proximity:
            mix += [nn.Conv2d(channels, channels, 1), nn.SiLU()]
        self.cond_mix = nn.Sequential(*mix)
        self.det_head = nn.Conv2d(channels, 5, 1)
        if classifier == "tile":
            self.type_head = nn.Sequential(
                nn.Conv2d(channels + 2, channels, 1), nn.SiLU(), nn.Conv2d(channels, 1, 1)
            )
        else:
            self.stamp_head = _StampClassifier(n_bands, channels)
        if loc_refine:  # registered last: older optimiser states stay a prefix
            self.refiner = _LocationRefiner(n_bands)
        n = len(self.blocks)
        self._rf = stem_rf + sum(4 * (1 + (k % 2)) * tile_size for k in range(n))

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the input region that can influence one tile's backbone features."""
        return self._rf

    @staticmethod
    def normalise(image: torch.Tensor) -> torch.Tensor:
        """Compress the dynamic range of an image in noise-sigma units."""
        return _asinh(image / 3.0)

    def features(self, image: torch.Tensor, valid: bool = False) -> torch.Tensor:
        """Backbone features ``(B, C, H/t, W/t)``.

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

    @property
    def _stem_halo(self) -> int:
        """The full-resolution stem's reach, rounded up to tiles."""
        return math.ceil(_reach(self.stem) / self.tile_size)

    @property
    def feature_halo(self) -> int:
        """Tiles of context each side that one tile's backbone features depend on (the
        tile-grid convolutions' reach plus the stem's, rounded up to tiles): what
        :meth:`features` with ``valid=True`` trims."""
        return self._stem_halo + _reach(self.to_tiles) + _reach(self.blocks)

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

    def stamps(
        self, image: torch.Tensor, b: torch.Tensor, ty: torch.Tensor, tx: torch.Tensor, locs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``STAMP_SIZE``-px stamps ``(N, bands, S, S)`` of ``image`` (noise-sigma units,
        ``(B, bands, H, W)``) centred on the pixel nearest each source at ``locs`` ``(N, 2)``
        (tile units, relative to tile ``(b, ty, tx)``'s origin), and the sources' offsets
        from those pixels."""
        t, r = self.tile_size, STAMP_SIZE // 2
        _, _, h, w = image.shape
        x = (tx.to(locs.dtype) + locs[:, 0]) * t - 0.5
        y = (ty.to(locs.dtype) + locs[:, 1]) * t - 0.5
        cx = torch.round(x).long().clamp(0, w - 1)
        cy = torch.round(y).long().clamp(0, h - 1)
        padded = nn.functional.pad(image, (r, r, r, r))
        ar = torch.arange(STAMP_SIZE, device=image.device)
        rows = (cy[:, None] + ar)[:, :, None]
        cols = (cx[:, None] + ar)[:, None, :]
        st = padded[b[:, None, None], :, rows, cols]  # (N, S, S, bands)
        return st.permute(0, 3, 1, 2), torch.stack([x - cx, y - cy], 1)

    def classify(
        self,
        h: torch.Tensor,
        locs: torch.Tensor,
        image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Galaxy logit ``(B, nty, ntx)`` of a source at ``locs`` (tile units) in each tile.

        The stamp classifier needs the ``image`` (noise-sigma units, tile-padded) and runs
        only on the tiles of ``mask`` (default all); other tiles get NaN.
        """
        if self.classifier == "tile" and mask is None:
            return self.type_head(torch.cat([h, locs.permute(0, 3, 1, 2) - 0.5], 1))[:, 0]
        if mask is None:
            mask = torch.ones(locs.shape[:-1], dtype=torch.bool, device=locs.device)
        b, ty, tx = torch.nonzero(mask, as_tuple=True)
        out = torch.full(mask.shape, float("nan"), dtype=h.dtype, device=h.device)
        if len(b) == 0:
            return out
        logits = self.classify_at(h[b, :, ty, tx], b, ty, tx, locs[b, ty, tx], image)
        return out.index_put((b, ty, tx), logits)

    def classify_at(
        self,
        h: torch.Tensor,
        b: torch.Tensor,
        ty: torch.Tensor,
        tx: torch.Tensor,
        locs: torch.Tensor,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Galaxy logits ``(N,)`` of sources at ``locs`` ``(N, 2)`` in tiles ``(b, ty, tx)``
        whose conditioned features are ``h`` ``(N, C)``."""
        if self.classifier == "tile":
            x = torch.cat([h, locs - 0.5], 1)[:, :, None, None]
            return self.type_head(x)[:, 0, 0, 0]
        if image is None:
            raise ValueError("the stamp classifier needs the image")
        logits = []
        for i in range(0, len(b), 4096):  # bounds the memory of whole-image classification
            j = slice(i, i + 4096)
            st, off = self.stamps(image, b[j], ty[j], tx[j], locs[j])
            logits.append(self.stamp_head(st, h[j], off))
        return torch.cat(logits)

    def refine_at(
        self,
        b: torch.Tensor,
        ty: torch.Tensor,
        tx: torch.Tensor,
        locs: torch.Tensor,
        image: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refined position posterior of sources proposed at ``locs`` ``(N, 2)`` (tile units)
        in tiles ``(b, ty, tx)`` of ``image`` (noise-sigma units, tile-padded): a normal per
        axis with mean ``(N, 2)`` and log variance ``(N, 2)``, both in tile units relative
        to the tile's origin (the mean may lie outside the tile)."""
        t = self.tile_size
        means, logvars = [], []
        for i in range(0, len(b), 4096):  # bounds the memory of whole-image inference
            j = slice(i, i + 4096)
            st, off = self.stamps(image, b[j], ty[j], tx[j], locs[j])
            mean, logvar = self.refiner(st, off)
            # the stamp's centre pixel (proposal - offset) + mean, px -> tile units
            means.append(locs[j] + (mean - off) / t)
            logvars.append(logvar - 2 * math.log(t))
        return torch.cat(means), torch.cat(logvars)

    def heads(
        self,
        feats: torch.Tensor,
        decided: torch.Tensor | None = None,
        n: torch.Tensor | None = None,
        locs: torch.Tensor | None = None,
        type_locs: torch.Tensor | None = None,
        classify: bool = True,
        image: torch.Tensor | None = None,
        type_mask: torch.Tensor | None = None,
    ) -> TileOutput:
        """Tile outputs given features and the decisions taken so far (see :meth:`trunk`);
        classification at ``type_locs`` (default: the posterior mean) on the tiles of
        ``type_mask`` (see :meth:`classify`), skipped if not ``classify`` (NaN)."""
        h = self.trunk(feats, decided, n, locs)
        count_logit, loc_mean, loc_logvar = self.detection_params(h)
        out = TileOutput(count_logit, loc_mean, loc_logvar, torch.zeros_like(count_logit))
        if classify:
            at = out.loc_post_mean.detach() if type_locs is None else type_locs
            out.galaxy_logit = self.classify(h, at, image, type_mask)
        else:
            out.galaxy_logit = torch.full_like(count_logit, float("nan"))
        return out

    def forward(self, image: torch.Tensor) -> TileOutput:
        """Marginal tile outputs (nothing decided), every tile classified."""
        return self.heads(self.features(image), image=image)
