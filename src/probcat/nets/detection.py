"""The detection/classification encoder: a :class:`~probcat.nets.backbone.Backbone`, the
checkerboard detection heads (:mod:`probcat.nets.heads`) and the stamp networks
(:mod:`probcat.nets.stamps`).

**Classification** conditions on the source's location (true location in training, the
decided location at inference). With ``classifier="stamp"`` (the shipped weights) a small
network looks at a 15x15-px stamp of the image centred on that location, plus the tile's
conditioned features: the paper's re-centred classifier input (section 3.3), run only on
the tiles that hold a source. ``classifier="tile"`` (a head on the tile features alone)
is a cheaper variant.

**Location refiner** (``loc_refine``): after a tile decides it holds a source, a small
network reads a stamp centred on the drawn position and returns a normal posterior for the
position, which may leave the tile.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from probcat.nets.backbone import Backbone, for_inference
from probcat.nets.heads import (
    N_GROUPS,
    CheckerboardHead,
    TileOutput,
    decided_proximity,
    tile_groups,
)
from probcat.nets.stamps import (
    STAMP_SIZE,
    LocationRefiner,
    StampClassifier,
    seeing_matched_grid,
)
from probcat.tiles import cut_stamps

__all__ = [
    "DetectionNet",
    "TileOutput",
    "tile_groups",
    "decided_proximity",
    "for_inference",
    "N_GROUPS",
    "STAMP_SIZE",
    "CLASSIFIERS",
]

CLASSIFIERS = ("tile", "stamp")


def _stamp_batch(image: torch.Tensor) -> int:
    """Stamps per forward pass of the stamp networks. On a CPU, batches of 256 keep the
    activations in cache: per source, 256 runs 1.6x faster than 4096 (measured on 2
    cores), so that whole-image inference scales linearly with the number of sources.
    A GPU takes bigger batches."""
    return 4096 if image.is_cuda else 256


class DetectionNet(nn.Module):
    """Image ``(B, bands, H, W)`` in units of the noise sigma -> tile features -> heads.

    ``H`` and ``W`` must be multiples of ``tile_size`` (inference pads).

    Args:
        n_bands, tile_size, stem_channels, channels, n_blocks, stem: the backbone's
            (:class:`~probcat.nets.backbone.Backbone`).
        classifier: ``"stamp"`` (a network on a stamp centred on each source) or ``"tile"``
            (a head on the tile features).
        proximity: also condition on how close the decided sources of the 8 neighbouring
            tiles are to this tile (see :func:`~probcat.nets.heads.decided_proximity`).
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
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        self.backbone = Backbone(n_bands, tile_size, stem_channels, channels, n_blocks, stem)
        self.classifier = classifier
        self.n_bands, self.tile_size = n_bands, tile_size
        self.hparams = {
            **self.backbone.hparams,
            "classifier": classifier,
            "proximity": proximity,
        }
        if loc_refine:
            self.hparams["loc_refine"] = True
        self.loc_refine = loc_refine
        self.proximity = proximity
        # CentroidCalibration of the catalogue's intervals, set by the weights loader
        self.centroid_calibration = None
        # and the one fitted on galaxies unlike the prior's (with a ShapesCalibration), mixed
        # with it per image by probcat.infer.reliability.annotate
        self.real_shapes_centroid_calibration = None
        # radius (px) within which claims of neighbouring tiles are one source when decoding
        # (probcat.infer.merge), set by the weights loader; 0: no merging
        self.merge_px = 0.0
        # post-hoc detection-probability calibration and feature density of real
        # detections (probcat.infer.reliability), set by the weights loader
        self.prob_calibration = None
        self.feature_density = None
        # ((factor, calibration), ...): probability calibrations fitted under PSFs ``factor``
        # times as wide as the survey's (probcat.infer.reliability.seeing_calibration)
        self.seeing_calibrations = ()
        # ((factor, calibration), ...): probability calibrations fitted at other depths, where
        # the noise as a flux is ``factor`` times the survey's (above 1: shallower images)
        self.depth_calibrations = ()
        # split veto of close pairs in MAP catalogues (probcat.infer.pairs), set by the loader
        self.pair_rule = None
        # how many times wider the image's PSF is than the survey's: the stamp classifier
        # reads stamps resampled to the survey's seeing (see :meth:`stamps`); set for one
        # image's decoding by :func:`probcat.infer.detect.at_seeing`
        self.seeing_scale = 1.0
        # the image's noise as a flux over the survey's (None: unknown, read as the survey's
        # depth); set for one image by :func:`probcat.infer.detect.at_depth`
        self.noise_scale = None
        self.detection_head = CheckerboardHead(channels, tile_size, proximity)
        if classifier == "tile":
            self.type_head = nn.Sequential(
                nn.Conv2d(channels + 2, channels, 1), nn.SiLU(), nn.Conv2d(channels, 1, 1)
            )
        else:
            self.stamp_head = StampClassifier(n_bands, channels)
        if loc_refine:
            self.refiner = LocationRefiner(n_bands)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the input region that can influence one tile's backbone features."""
        return self.backbone.receptive_field

    @property
    def feature_halo(self) -> int:
        """Tiles of context each side that one tile's backbone features depend on."""
        return self.backbone.feature_halo

    @staticmethod
    def normalise(image: torch.Tensor) -> torch.Tensor:
        return Backbone.normalise(image)

    def features(self, image: torch.Tensor, valid: bool = False) -> torch.Tensor:
        """Backbone features (see :meth:`Backbone.forward`)."""
        return self.backbone(image, valid=valid)

    def trunk(self, feats, decided=None, n=None, locs=None, parity=None) -> torch.Tensor:
        """Conditioned tile features (see :meth:`CheckerboardHead.trunk`)."""
        return self.detection_head.trunk(feats, decided, n, locs, parity)

    def detection_params(self, h: torch.Tensor):
        """``(count_logit, loc_mean, loc_logvar)`` from conditioned features."""
        return self.detection_head.detection_params(h)

    def stamps(
        self, image, b, ty, tx, locs, scale: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``STAMP_SIZE``-px stamps around sources (see :func:`probcat.tiles.cut_stamps`).
        With ``scale`` != 1 (the image's PSF that many times as wide as the survey's), each
        stamp is resampled (bilinear) onto pixels ``scale`` px apart around the source's
        pixel (:func:`~probcat.nets.stamps.seeing_matched_grid`), times ``scale``, with its
        offsets in those pixels. The factor, chosen on validation scenes between 0 (the
        noise level kept) and 2 (a source's surface brightness kept), gave the best star
        F1 above the survey's seeing (0.88 at 1.25x and 0.84 at 1.5x, against 0.87 and 0.80
        for 2) and 0.89 at 0.8x (0.90 for 0)."""
        if scale == 1.0:
            return cut_stamps(image, b, ty, tx, locs, self.tile_size, STAMP_SIZE)
        cut, grid = seeing_matched_grid(scale)
        st, off = cut_stamps(image, b, ty, tx, locs, self.tile_size, cut)
        grid = grid.to(st.device, st.dtype).expand(len(st), -1, -1, -1)
        out = F.grid_sample(st, grid, mode="bilinear", align_corners=True)
        return out * scale, off / scale

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
        logits, n = [], _stamp_batch(image)
        for i in range(0, len(b), n):  # bounded memory on whole images
            j = slice(i, i + n)
            st, off = self.stamps(image, b[j], ty[j], tx[j], locs[j], self.seeing_scale)
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
        means, logvars, n = [], [], _stamp_batch(image)
        for i in range(0, len(b), n):  # bounded memory on whole images
            j = slice(i, i + n)
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


# state-dict keys of weights written before the backbone and heads became modules
_V1_PREFIXES = {
    "stem.": "backbone.stem.",
    "to_tiles.": "backbone.to_tiles.",
    "blocks.": "backbone.blocks.",
    "cond_in.": "detection_head.cond_in.",
    "cond_mix.": "detection_head.cond_mix.",
    "det_head.": "detection_head.det_head.",
}


def upgrade_state_dict(state: dict) -> dict:
    """A detection state dict of the first weights format (flat module names) with the
    current names; a current one unchanged."""
    out = {}
    for k, v in state.items():
        new = next((n + k[len(o) :] for o, n in _V1_PREFIXES.items() if k.startswith(o)), k)
        out[new] = v
    return out
