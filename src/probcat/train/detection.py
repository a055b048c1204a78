"""The detection/classification encoder as a training task (:mod:`probcat.train.loop`).

Every step draws a new batch of ``blend``-like scenes from the training-split source bank
(galaxies disjoint from validation and test), tiles their catalogs, and minimises eq. 10 of
paper 000 under checkerboard conditioning (:func:`checkerboard_loss`): on features computed
once per image, the loss is taken in every decoding state, i.e. every tile's marginal and
each tile group given the catalog of the groups decoded before it; the classifier sees true
locations, as in paper 000 section 3.3.

Phases (``phases`` in the config), each with its steps and learning-rate restart:

- ``train: all, cond_locs: "true"``: the decided groups are conditioned on the true catalog;
- ``train: all, cond_locs: sampled``: on locations drawn from the network's own marginal
  posterior, the state that decoding actually puts the later groups in;
- ``train: refiner``: the location refiner alone (``model.loc_refine``), the rest frozen.

After training, the merge radius and the centroid-interval calibration are fitted on
validation scenes (``probcat train calibrate RUN`` refits them).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from probcat.config import from_dict, load_yaml, to_dict
from probcat.errors import ProbcatValueError, warn_user
from probcat.infer.detect import SEEING_RANGE
from probcat.masking import band_masks
from probcat.nets.detection import N_GROUPS, DetectionNet, TileOutput, tile_groups
from probcat.runtime import check_memory, choose_device
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.scene import SceneConfig, SceneSimulator, SeeingMixture
from probcat.survey import Survey
from probcat.tiles import TileCatalog
from probcat.train.loop import (
    LoopSettings,
    Phase,
    check_run_config,
    fit,
    run_directory,
    to_device,
    write_run,
)
from probcat.train.losses import favi_detection_loss

# a training step on the CPU holds about 1.2 kB per pixel of its batch (activations and
# their gradients, at the shipped network's width; measured at 100 and 300 px): 1.5 kB
STEP_BYTES_PER_PIXEL = 1500

__all__ = [
    "DetectionTrainConfig",
    "DetectionData",
    "DetectionModel",
    "DetectionPhase",
    "DetectionFits",
    "DetectionTask",
    "train_detection",
    "load_config",
    "calibrate_run",
    "checkerboard_loss",
    "refiner_loss",
]


@dataclass(frozen=True)
class DetectionData:
    """Training scenes: survey, source banks (train and val splits) and scene layout."""

    bands: str = "i"
    years: float = 10.0
    population: str = "parametric"
    bank_size: int = 20000
    val_bank_size: int = 4000
    catalog_seed: int = 0
    image_size: int = 100
    margin: int = 8
    batch_size: int = 32
    val_scenes: int = 256
    psf_scales: tuple[float, ...] = (1.0,)  # factors on the PSF FWHM, one drawn per scene
    # None: a Kolmogorov atmosphere; a number: a Moffat one of that index, the same FWHM
    # (probcat.survey.Survey.with_psf_beta), for a survey whose PSF has broader wings
    psf_beta: float | None = None
    # the fraction of scenes with the correlated noise of a coadd instead of white noise
    # (probcat.simulate.scene.SceneConfig: visits and resampling kernels drawn per scene)
    coadd_fraction: float = 0.0
    coadd_visits: int = 16
    coadd_kernels: tuple[str, ...] = ("lanczos3", "bilinear")
    # bands without data: this fraction of the training scenes get one to three bands
    # masked (probcat.masking.band_masks: each the whole scene, a half-plane, a strip
    # or a disc), their pixels 0 in noise units as inference reads pixels without data;
    # the truth unchanged (what the other bands show); four bands or more
    mask_fraction: float = 0.0


@dataclass(frozen=True)
class DetectionModel:
    """The network (:class:`~probcat.nets.detection.DetectionNet`)."""

    tile_size: int = 5
    stem: Literal["conv", "patchify"] = "conv"
    stem_channels: int = 12
    channels: int = 64
    n_blocks: int = 2
    classifier: Literal["stamp", "tile"] = "stamp"
    proximity: bool = True
    loc_refine: bool = False


@dataclass(frozen=True)
class DetectionPhase:
    """One phase: ``train`` all parameters or the location ``refiner`` alone; the decided
    groups conditioned on ``"true"`` or ``sampled`` locations."""

    name: str = "main"
    steps: int = 8000
    lr: float = 2e-3
    warmup: int = 200
    train: Literal["all", "refiner"] = "all"
    cond_locs: Literal["true", "sampled"] = "true"


@dataclass(frozen=True)
class DetectionFits:
    """Fits after training, on validation scenes."""

    merge_scenes: int = 256
    # the centroid-interval calibration, in bins of detection SNR (the brightest bins need
    # this many scenes to hold enough sources)
    calibration_scenes: int = 2048
    # the detection-probability calibration and the ood_score density: each split of the
    # map (neighbour zone x edge zone x ood_score bin) needs its own detections
    reliability_scenes: int = 2048
    # of those, the fraction drawn with every source inside the image (an isolated scene);
    # the rest have the training layout, with sources beyond the edges (a survey cutout)
    reliability_inside_fraction: float = 0.5
    sky_scenes: int = 32  # 256-px sky-free scenes for the sky offset (probcat.background)
    # the split veto of close pairs (probcat.infer.pairs), fitted before the probability
    # calibration and in the same two layouts; 0: none
    pair_scenes: int = 1024
    # the galaxies of every fit's validation scenes (same bank size and seed); None: the
    # training population (data.population)
    population: str | None = None
    # PSF FWHM factors (not 1) under which the probability calibration is fitted again, on
    # seeing_scenes validation scenes each (the same layouts), for images of other seeing
    # (probcat.infer.reliability.seeing_calibration); (): none
    seeing_factors: tuple[float, ...] = ()
    seeing_scenes: int = 1024
    # depths (years of the survey; not data.years) at which the probability calibration is
    # fitted again, on depth_scenes validation scenes each (the same layouts), for images
    # whose depth is known and differs (probcat.infer.reliability.calibration_for); (): none
    depth_years: tuple[float, ...] = ()
    depth_scenes: int = 1024
    # a second probability calibration, fitted on real_shapes_scenes validation scenes of
    # this population (e.g. "hdf", real galaxies), for images whose galaxies look unlike
    # the prior's: each image's detections get both maps, weighted by the share of its
    # galaxies of the second kind that their ood_score values say, from a prior of mean
    # real_shapes_prior (below 0.75; probcat.infer.reliability.ShapesCalibration); None:
    # the one map
    real_shapes_population: str | None = None
    real_shapes_scenes: int = 1024
    real_shapes_prior: float = 0.1
    # the noise of every fit's validation scenes (probcat.simulate.scene.SceneConfig): the
    # fraction of coadd scenes and their resampling kernels; None: the training data's (for
    # weights meant for coadds, trained on a mix: calibrated on coadds of the pipelines' kernel)
    coadd_fraction: float | None = None
    coadd_kernels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DetectionTrainConfig:
    """Settings of one training run (stored in the checkpoint, weights and manifest).

    ``init``: a registered weights name or a weights file whose network the run starts
    from (same architecture; its sha256 goes into the manifest); None starts from scratch.
    """

    data: DetectionData = field(default_factory=DetectionData)
    model: DetectionModel = field(default_factory=DetectionModel)
    phases: tuple[DetectionPhase, ...] = (DetectionPhase(),)
    fits: DetectionFits = field(default_factory=DetectionFits)
    init: str | None = None
    seed: int = 0
    val_every: int = 500
    checkpoint_every: int = 250
    threads: int = 2

    def __post_init__(self):
        d, m = self.data, self.model
        if m.tile_size < 1 or d.image_size % m.tile_size:
            raise ProbcatValueError(
                f"data.image_size {d.image_size} must be a multiple of model.tile_size "
                f"{m.tile_size}"
            )
        for i, p in enumerate(self.phases):
            if p.train == "refiner" and not m.loc_refine:
                raise ProbcatValueError(
                    f"phases[{i}].train: 'refiner' trains the location refiner: set "
                    "model.loc_refine: true"
                )
        counts = {
            "data.bank_size": d.bank_size,
            "data.val_bank_size": d.val_bank_size,
            "data.batch_size": d.batch_size,
            "data.val_scenes": d.val_scenes,
            "model.channels": m.channels,
            "model.stem_channels": m.stem_channels,
            "val_every": self.val_every,
            "checkpoint_every": self.checkpoint_every,
            "data.image_size": d.image_size,
            "fits.merge_scenes": self.fits.merge_scenes,
            "fits.calibration_scenes": self.fits.calibration_scenes,
            "fits.reliability_scenes": self.fits.reliability_scenes,
            "fits.sky_scenes": self.fits.sky_scenes,
        }
        if d.margin < 0 or m.n_blocks < 0:
            raise ProbcatValueError(
                f"data.margin and model.n_blocks must be >= 0, got {d.margin} and {m.n_blocks}"
            )
        seeds = {"seed": self.seed, "data.catalog_seed": d.catalog_seed}
        check_run_config(d.bands, d.years, self.phases, counts, self.threads, seeds)
        if 1.0 not in d.psf_scales or not all(0 < v < 10 for v in d.psf_scales):
            raise ProbcatValueError(
                "data.psf_scales must hold 1.0 and positive factors below 10, got "
                f"{list(d.psf_scales)}"
            )
        if d.psf_beta is not None:
            try:
                self.survey()
            except ProbcatValueError as e:
                raise ProbcatValueError(f"data.psf_beta: {e}") from None
        if not 0.0 <= d.mask_fraction <= 1.0 or (d.mask_fraction and len(d.bands) < 4):
            raise ProbcatValueError(
                "data.mask_fraction must lie in [0, 1], and be 0 with fewer than four bands "
                f"(one to three are masked), got {d.mask_fraction} with {len(d.bands)}"
            )
        if not 0.0 <= self.fits.reliability_inside_fraction <= 1.0:
            raise ProbcatValueError(
                "fits.reliability_inside_fraction must be in [0, 1], got "
                f"{self.fits.reliability_inside_fraction}"
            )
        if self.fits.population is not None and not str(self.fits.population).strip():
            raise ProbcatValueError("fits.population must name a population, or be left out")
        lo, hi = SEEING_RANGE
        f = self.fits.seeing_factors
        if any(not lo <= v <= hi or v == 1.0 for v in f) or len(set(f)) < len(f):
            raise ProbcatValueError(
                f"fits.seeing_factors must be distinct PSF width ratios in [{lo:g}, {hi:g}] "
                f"other than 1, got {list(f)}"
            )
        if self.fits.seeing_scenes < 1:
            raise ProbcatValueError(
                f"fits.seeing_scenes must be 1 or more, got {self.fits.seeing_scenes}"
            )
        y = self.fits.depth_years
        if (
            any(not (0.05 <= v <= 100.0) or v == d.years for v in y)
            or len(set(y)) < len(y)
            or self.fits.depth_scenes < 1
        ):
            raise ProbcatValueError(
                "fits.depth_years must be distinct depths in years in [0.05, 100] other than "
                f"data.years ({d.years:g}), and fits.depth_scenes 1 or more, got {list(y)} and "
                f"{self.fits.depth_scenes}"
            )
        if isinstance(self.fits.pair_scenes, bool) or self.fits.pair_scenes < 0:
            raise ProbcatValueError(
                f"fits.pair_scenes must be 0 (no pair rule) or more, got {self.fits.pair_scenes}"
            )
        pop = self.fits.real_shapes_population
        if pop is not None and not str(pop).strip():
            raise ProbcatValueError(
                "fits.real_shapes_population must name a population, or be left out"
            )
        from probcat.infer.reliability import MAX_SHARE_PRIOR

        prior, scenes = self.fits.real_shapes_prior, self.fits.real_shapes_scenes
        if not 0.0 < prior < MAX_SHARE_PRIOR or scenes < 1:
            raise ProbcatValueError(
                f"fits.real_shapes_prior must be in (0, {MAX_SHARE_PRIOR}) and "
                f"fits.real_shapes_scenes 1 or more, got {prior} and {scenes}"
            )
        f = self.fits
        for where, frac, kernels in (
            ("data", d.coadd_fraction, d.coadd_kernels),
            ("fits", f.coadd_fraction, f.coadd_kernels),
        ):
            try:  # the scenes' own checks, before any training rather than after it
                SceneConfig(
                    8,
                    8,
                    coadd_fraction=d.coadd_fraction if frac is None else frac,
                    coadd_visits=d.coadd_visits,
                    coadd_kernels=d.coadd_kernels if kernels is None else kernels,
                )
            except ProbcatValueError as e:
                raise ProbcatValueError(f"{where}: {e}") from None

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def survey(self) -> Survey:
        survey = Survey.lsst(bands=self.data.bands, years=self.data.years)
        return survey.with_psf_beta(self.data.psf_beta)

    def net(self) -> DetectionNet:
        m = self.model
        return DetectionNet(
            n_bands=len(self.data.bands),
            tile_size=m.tile_size,
            stem_channels=m.stem_channels,
            channels=m.channels,
            n_blocks=m.n_blocks,
            stem=m.stem,
            classifier=m.classifier,
            proximity=m.proximity,
            loc_refine=m.loc_refine,
        )

    def settings(self) -> LoopSettings:
        return LoopSettings(self.seed, self.val_every, self.checkpoint_every, self.threads)


def load_config(path: str | Path | None, steps: int | None = None) -> DetectionTrainConfig:
    """Read a YAML config (strict: unknown keys, wrong types and choices are errors);
    ``steps`` overrides the first phase's."""
    cfg = load_yaml(DetectionTrainConfig, path)
    if steps is not None:
        first = replace(cfg.phases[0], steps=steps)
        cfg = replace(cfg, phases=(first, *cfg.phases[1:]))
    return cfg


def _simulator(
    cfg: DetectionTrainConfig,
    split: str,
    cache_dir,
    progress,
    population: str | None = None,
    psf_scales: tuple[float, ...] | None = None,
    fits: bool = False,
) -> SceneSimulator:
    """Scenes of the training layout on the ``split`` ("train" or "val") source bank of
    ``population`` (default ``data.population``); with several ``psf_scales`` (default
    ``data.psf_scales``), a :class:`SeeingMixture` of one bank per PSF width. ``fits``: the
    scenes of the fits after training, with the noise ``cfg.fits`` sets, if any."""
    d = cfg.data
    coadd, kernels = _coadd_noise(cfg, fits)
    n = d.bank_size if split == "train" else d.val_bank_size
    bank_cfg = BankConfig(
        population=population or d.population,
        split=split,
        n_galaxies=n,
        catalog_seed=d.catalog_seed,
    )
    layout = SceneConfig(
        d.image_size,
        d.image_size,
        margin=d.margin,
        coadd_fraction=coadd,
        coadd_visits=d.coadd_visits,
        coadd_kernels=kernels,
    )
    survey = cfg.survey()
    sims = [
        SceneSimulator(
            SourceBank.load_or_build(
                survey.with_psf_scale(scale),  # x 1.0: the survey itself
                bank_cfg,
                cache_dir=cache_dir,
                progress=progress,
            ),
            layout,
        )
        for scale in psf_scales or d.psf_scales
    ]
    return sims[0] if len(sims) == 1 else SeeingMixture(sims, psf_scales or d.psf_scales)


class DetectionTask:
    """Fresh training batches, a fixed validation set, the loss of each phase and the fits
    after training (:class:`probcat.train.loop.Task`)."""

    kind = "detection"

    def __init__(self, cfg: DetectionTrainConfig, cache_dir=None, progress=True):
        self.cfg = cfg
        self.progress = progress
        self.sigma = cfg.survey().noise_sigma.astype(np.float32)[:, None, None]
        self.train_sim = _simulator(cfg, "train", cache_dir, progress)
        self.val_sim = _simulator(cfg, "val", cache_dir, progress)
        # the second calibration is fitted after training: its galaxies (population hdf
        # needs scikit-image) must be at hand before training starts, not after it
        if cfg.fits.real_shapes_population is not None:
            _simulator(cfg, "val", cache_dir, progress, cfg.fits.real_shapes_population)
        self.cache_dir = cache_dir
        rng = np.random.default_rng([cfg.seed, 99])
        self.val = self._tensors(*self.val_sim.sample_batch(rng, cfg.data.val_scenes))
        if cfg.data.mask_fraction > 0:  # the validation scenes once more, each with bands masked
            masks = band_masks(np.random.default_rng([cfg.seed, 98]), self.val[0].shape, 1.0)
            self.val_masked = self.val[0].masked_fill(torch.from_numpy(masks), 0.0)

    def _tensors(self, imgs, cats, rng=None):
        x = imgs / self.sigma
        if rng is not None and self.cfg.data.mask_fraction > 0:  # no draws without masks
            x[band_masks(rng, x.shape, self.cfg.data.mask_fraction)] = 0.0
        return torch.from_numpy(x), TileCatalog.from_full(cats, self.cfg.model.tile_size)

    def build_model(self) -> DetectionNet:
        net = self.cfg.net()
        if self.cfg.init is not None:
            from probcat.weights import read_weights

            w = init_weights(self.cfg)  # checks the sha256; the loaded model is fused for
            try:  # inference, so the file's own (training-form) state is loaded
                net.load_state_dict(read_weights(w.path)["state_dict"])
            except RuntimeError:
                raise ProbcatValueError(
                    f"init: {self.cfg.init} does not fit the network of this config's model"
                ) from None
        return net

    def phases(self) -> list[Phase]:
        return [
            Phase(
                p.name,
                p.steps,
                p.lr,
                p.warmup,
                trainable=("refiner.",) if p.train == "refiner" else (),
                eval_mode=p.train == "refiner",
            )
            for p in self.cfg.phases
        ]

    def batch(self, rng):
        return self._tensors(*self.train_sim.sample_batch(rng, self.cfg.data.batch_size), rng)

    def loss(self, model, batch, phase, gen):
        x, truth = batch
        p = self.cfg.phases[phase]
        if p.train == "refiner":
            return refiner_loss(model, x, truth, gen)
        return checkerboard_loss(model, x, truth, gen, cond_locs=p.cond_locs)

    def validate(self, model):
        out = validate(model, *self.val)
        if self.cfg.data.mask_fraction > 0:
            out["total_masked"] = validate(model, self.val_masked, self.val[1])["total"]
        return out

    def finish(self, model, progress):
        sim = self.val_sim
        f = self.cfg.fits
        if f.population is not None or f.coadd_fraction is not None or f.coadd_kernels:
            sim = _simulator(self.cfg, "val", self.cache_dir, progress, f.population, fits=True)
        merge, calibration = _fit_decoding(model, self.cfg, sim, progress)
        return {
            "centroid_calibration": calibration,
            "merge": merge,
            **_fit_reliability(model, self.cfg, sim, progress),
            **_fit_shapes(model, self.cfg, self.cache_dir, progress),
            "seeing_calibrations": _fit_seeing(model, self.cfg, self.cache_dir, progress),
            "depth_calibrations": (depth := _fit_depth(model, self.cfg, self.cache_dir, progress)),
            "sky_offset": fit_sky_offsets(self.cfg, sim.bank, _factors(depth)),
        }

    @staticmethod
    def manifest_fits(fits: dict) -> dict:
        """The fits as the manifest records them: the feature density by its size only, the
        seeing and depth calibrations by factor, size and source."""
        return {
            **fits,
            "feature_density": _density_summary(fits.get("feature_density")),
            "seeing_calibrations": _seeing_summary(fits.get("seeing_calibrations")),
            "depth_calibrations": _seeing_summary(fits.get("depth_calibrations")),
        }

    def weights(self, model):
        return {
            "kind": self.kind,
            "hparams": model.hparams,
            "state_dict": model.state_dict(),
            "survey": self.cfg.survey().to_dict(),
        }

    def describe_data(self):
        return describe_data(self.cfg)


def init_weights(cfg: DetectionTrainConfig):
    """The detection weights ``cfg.init`` starts from (sha256 checked); errors say ``init``."""
    from probcat.train.loop import load_init

    return load_init(cfg.init, "detection")


def describe_data(cfg: DetectionTrainConfig) -> dict:
    """The manifest's account of a run's data: prior, banks, scene seeds, starting weights."""
    from probcat.simulate.prior import prior_version

    d = cfg.data
    init = {}
    if cfg.init is not None:
        init = {"init": {"weights": cfg.init, "sha256": init_weights(cfg).sha256}}
    return {
        **init,
        "prior": prior_version(d.population),
        "train": f"{d.population} bank, split=train, catalog_seed={d.catalog_seed}, "
        f"{d.bank_size} galaxies, fresh {d.image_size}-px scenes from seed {cfg.seed}",
        "validation": f"split=val, {d.val_bank_size} galaxies, {d.val_scenes} scenes "
        f"(seed [{cfg.seed}, 99])",
        **(
            {"fits": f"validation scenes of population {cfg.fits.population}"}
            if cfg.fits.population is not None
            else {}
        ),
        "seeing": "the survey's PSF"
        if d.psf_scales == (1.0,)
        else f"atmospheric PSF FWHM x {list(d.psf_scales)}, one bank each, drawn per scene "
        "(training, validation and the fits after training)",
        **(
            {"psf_profile": f"Moffat atmosphere, beta {d.psf_beta:g}, the survey's FWHM"}
            if d.psf_beta is not None
            else {}
        ),
        **(
            {
                "noise": f"the correlated noise of a coadd in {d.coadd_fraction:g} of the "
                f"scenes (1-{d.coadd_visits} visits resampled by {', '.join(d.coadd_kernels)}), "
                "white noise in the rest"
            }
            if d.coadd_fraction
            else {}
        ),
        **(
            {
                "masks": f"{d.mask_fraction:g} of the training scenes with one to three bands "
                "masked (set to 0; whole scene, half-plane, strip or disc: band_masks), the "
                f"truth unchanged; validation clean, and once more with every scene masked "
                f"(seed [{cfg.seed}, 98])"
            }
            if d.mask_fraction
            else {}
        ),
        **(
            {"fits_noise": _fits_noise(cfg)}
            if cfg.fits.coadd_fraction is not None or cfg.fits.coadd_kernels
            else {}
        ),
    }


def _coadd_noise(cfg: DetectionTrainConfig, fits: bool) -> tuple[float, tuple[str, ...]]:
    """The share of coadd-noise scenes and their kernels: the training data's, or with
    ``fits`` those ``cfg.fits`` sets for the fits after training (each where it is set)."""
    d, f = cfg.data, cfg.fits
    frac = d.coadd_fraction if not fits or f.coadd_fraction is None else f.coadd_fraction
    kernels = d.coadd_kernels if not fits or f.coadd_kernels is None else f.coadd_kernels
    return frac, kernels


def _fits_noise(cfg: DetectionTrainConfig) -> str:
    """The manifest's account of the noise of the fits after training, where ``fits`` sets
    its own."""
    d = cfg.data
    frac, kernels = _coadd_noise(cfg, fits=True)
    share = "every scene" if frac == 1 else f"{frac:g} of the scenes"
    return (
        f"the fits after training: the correlated noise of a coadd in {share} "
        f"(1-{d.coadd_visits} visits resampled by {', '.join(kernels)})"
        + (", white noise in the rest" if frac < 1 else "")
    )


def train_detection(
    cfg: DetectionTrainConfig,
    out: str | Path,
    *,
    cache_dir=None,
    progress: bool = True,
    command: str | None = None,
    stop_after: int | None = None,
    device=None,
) -> dict | None:
    """Train (or resume) and write ``detection.pt`` and ``manifest.json`` into ``out``;
    ``device``: where the steps run (default a GPU when present)."""
    if choose_device(device).type == "cpu":  # (a device there is not: an error here)
        d = cfg.data
        check_memory(
            d.batch_size * d.image_size**2 * STEP_BYTES_PER_PIXEL,
            f"a training batch of {d.batch_size} scenes of {d.image_size}x{d.image_size} px",
            "use a smaller data.image_size or data.batch_size",
        )  # before the banks are built
    if cfg.init is not None:  # wrong or missing weights: an error before the banks are built
        init_weights(cfg)
    run_directory(out)
    task = DetectionTask(cfg, cache_dir=cache_dir, progress=progress)
    config = to_dict(cfg)
    if not cfg.data.mask_fraction:  # as runs recorded it before masks, so they resume
        del config["data"]["mask_fraction"]
    return fit(
        task,
        out,
        config=config,
        settings=cfg.settings(),
        progress=progress,
        command=command,
        stop_after=stop_after,
        device=device,
    )


def checkerboard_loss(
    net: DetectionNet,
    x: torch.Tensor,
    truth: TileCatalog,
    gen: torch.Generator | None = None,
    cond_locs: str = "true",
) -> dict[str, torch.Tensor]:
    """Eq. 10 under checkerboard conditioning, in every decoding state of every image, on
    the backbone features computed once: the marginal of every tile (nothing decided), and
    for ``g = 1, 2, 3`` the tiles of group ``g`` given the catalog of groups ``< g``, which
    is exactly the state in which :func:`probcat.infer.detect.decode` decides them. Each
    source is classified from the features of the pass that decides its tile.

    ``cond_locs="sampled"``: the decided groups are conditioned on the true counts but on
    locations drawn from the network's own marginal location posterior (detached), which
    is what :func:`~probcat.infer.detect.decode` feeds the later groups. Trained on exact
    true locations, the conditional reads a decided source drawn 0.5 px away from the light
    as a sign of a second source and makes doubles at tile edges.
    """
    if cond_locs not in ("true", "sampled"):
        raise ProbcatValueError(f"cond_locs must be 'true' or 'sampled', got {cond_locs!r}")
    feats = net.features(x)
    b, _, nty, ntx = feats.shape
    groups = tile_groups(nty, ntx, feats.device)[None].expand(b, -1, -1)
    total, h_type, cond = None, None, truth.locs
    for g in range(N_GROUPS):
        decided = groups < g
        h = net.trunk(feats, decided, truth.n_sources, cond)
        out = TileOutput(*net.detection_params(h), torch.zeros(b, nty, ntx, device=x.device))
        if g == 0 and cond_locs == "sampled":
            with torch.no_grad():
                cond = out.sample_locs(gen)
        mask = torch.ones_like(decided) if g == 0 else groups == g
        parts = favi_detection_loss(out, truth, mask=mask, type_term=False)
        total = parts if total is None else {k: total[k] + v for k, v in parts.items()}
        mine = (groups == g)[:, None]
        h_type = h if h_type is None else torch.where(mine, h, h_type)
    logits = net.classify(h_type, truth.locs, x, mask=truth.n_sources > 0)
    out = TileOutput(out.count_logit, out.loc_mean, out.loc_logvar, logits)
    type_part = favi_detection_loss(out, truth, mask=torch.zeros_like(groups))["type"]
    total["type"] = type_part
    total["total"] = total["total"] + type_part
    return total


REFINE_JITTER = 0.5  # px


def _refine_loss(net: DetectionNet, x, truth: TileCatalog, drawn, gen):
    """Normal NLL of the true positions under the refiner, from stamps centred on the
    (jittered by ``REFINE_JITTER`` px, so that proposals a neighbouring tile would make are
    covered too) proposals ``drawn`` of the tiles holding a source, summed and averaged
    over images."""
    b, ty, tx = torch.nonzero(truth.n_sources > 0, as_tuple=True)
    if len(b) == 0:
        return x.new_zeros(())
    jitter = torch.randn(len(b), 2, generator=gen).to(x.device) * (REFINE_JITTER / net.tile_size)
    mean, logvar = net.refine_at(b, ty, tx, drawn[b, ty, tx] + jitter, x)
    target = truth.locs[b, ty, tx]
    nll = 0.5 * ((target - mean) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))
    return nll.sum() / x.shape[0]


def refiner_loss(
    net: DetectionNet, x: torch.Tensor, truth: TileCatalog, gen=None
) -> dict[str, torch.Tensor]:
    """The location refiner's loss (:func:`_refine_loss`, proposals drawn from the tiles'
    marginal posterior) on the frozen rest of the network (run it in eval mode)."""
    with torch.no_grad():
        out = TileOutput(*net.detection_params(net.trunk(net.features(x))), None)
        drawn = out.sample_locs(gen)
    nll = _refine_loss(net, x, truth, drawn, gen)
    return {"refine": nll, "total": nll}


@torch.no_grad()
def validate(net: DetectionNet, x: torch.Tensor, truth: TileCatalog) -> dict[str, float]:
    """Marginal (nothing decided) loss parts on the validation set; with a location refiner,
    its loss too."""
    parts = {k: 0.0 for k in ("total", "count", "loc", "type")}
    n_img = x.shape[0]
    for i in range(0, n_img, 64):  # on the network's device, 64 images at a time
        sub = to_device(truth.subset(slice(i, i + 64)), net.device)
        xi = x[i : i + 64].to(net.device)
        w = sub.batch_size / n_img
        out = net.heads(net.features(xi), type_locs=sub.locs, image=xi, type_mask=sub.n_sources > 0)
        for k, v in favi_detection_loss(out, sub).items():
            parts[k] += float(v) * w
        if net.loc_refine:
            gen = torch.Generator().manual_seed(i)
            parts["refine"] = (
                parts.get("refine", 0.0) + float(refiner_loss(net, xi, sub, gen)["refine"]) * w
            )
    return parts


def calibrate_run(
    out: str | Path,
    *,
    n_scenes: int | None = None,
    reliability_scenes: int | None = None,
    inside_fraction: float | None = None,
    cache_dir=None,
    progress=True,
    reliability_only: bool = False,
    population: str | None = None,
    seeing_only: bool = False,
    seeing_factors: tuple[float, ...] | None = None,
    depth_only: bool = False,
    depth_years: tuple[float, ...] | None = None,
    shapes_only: bool = False,
    real_shapes_population: str | None = None,
    centroid_only: bool = False,
) -> dict:
    """Refit the merge rule (weights with a location refiner), the centroid-interval
    calibration, the pair rule, the detection-probability calibration and the feature
    density of the run in ``out`` (training fits them as its last steps) and record them in
    its ``detection.pt`` and ``manifest.json``. ``reliability_only``: only the pair rule,
    the probability calibration and the feature density, decoding with the run's recorded
    merge radius (the network's decisions and positions stay exactly as they were; the pair
    rule then drops some of them from the MAP catalogues). ``n_scenes`` and
    ``reliability_scenes``: validation scenes of the centroid and of the probability
    calibration (default: the run's ``fits``; ``n_scenes`` unused with ``reliability_only``),
    ``inside_fraction``: the share of the latter with every source inside the image
    (``fits.reliability_inside_fraction``; a run whose config predates it gets the
    default); ``population``: the galaxies of those scenes (``fits.population``; default:
    the run's, which is its training population unless set; with ``reliability_only`` the
    merge radius, centroid intervals and sky offset keep the scenes they were fitted on);
    the ones used go into the recorded config. The probability calibrations at other
    seeing (``fits.seeing_factors``, or ``seeing_factors`` given) are refitted after the
    probability calibration; ``seeing_only``: only they, with the run's merge radius, pair
    rule, probability calibration and feature density as recorded; the same for the
    calibrations at other depths (``fits.depth_years`` or ``depth_years``; ``depth_only``).
    The second calibration for galaxies unlike the prior's (``fits.real_shapes_population``,
    or ``real_shapes_population`` given) is refitted after the probability calibration;
    ``shapes_only``: only it, with everything else as recorded. ``centroid_only``: only the
    centroid-interval calibrations (the training population's and, where the run has one,
    that of galaxies unlike the prior's), decoding with the recorded merge radius; the
    detections, their probabilities and everything else stay as recorded."""
    from probcat.weights import read_weights

    out = Path(out)
    weights = read_weights(out / "detection.pt")
    cfg = from_dict(DetectionTrainConfig, weights["config"])
    fits = {
        "reliability_scenes": reliability_scenes,
        "reliability_inside_fraction": inside_fraction,
        "population": population,
        "seeing_factors": None if seeing_factors is None else tuple(seeing_factors),
        "depth_years": None if depth_years is None else tuple(depth_years),
        "real_shapes_population": real_shapes_population,
    }
    if not (reliability_only or seeing_only or depth_only):  # the centroid calibration too
        fits["calibration_scenes"] = n_scenes
    cfg = replace(cfg, fits=replace(cfg.fits, **{k: v for k, v in fits.items() if v is not None}))
    net = DetectionNet(**weights["hparams"])
    net.load_state_dict(weights["state_dict"])
    net.eval()
    manifest = json.loads((out / "manifest.json").read_text())
    for only, what, fit_them in (
        (seeing_only, "seeing", _fit_seeing),
        (depth_only, "depth", _fit_depth),
    ):
        if only:  # the calibrations at other seeing (or depths) alone
            _set_fits(net, weights)
            key = f"{what}_calibrations"
            weights[key] = fit_them(net, cfg, cache_dir, progress)
            weights["config"]["fits"] = manifest["config"]["fits"] = to_dict(cfg.fits)
            manifest[key] = _seeing_summary(weights[key])
            if what == "depth":  # the sky offsets at those depths with them
                sim = _simulator(cfg, "val", cache_dir, progress, cfg.fits.population, fits=True)
                depths = _factors(weights[key])
                weights["sky_offset"] = manifest["sky_offset"] = fit_sky_offsets(
                    cfg, sim.bank, depths
                )
            return write_run(out, "detection", weights, manifest, refit=f"{what}_calibration")
    if centroid_only:
        _set_fits(net, weights)
        sim = _simulator(cfg, "val", cache_dir, progress, cfg.fits.population, fits=True)
        cal = _fit_calibration(net, cfg, sim, progress)
        weights["centroid_calibration"] = manifest["centroid_calibration"] = cal
        real_pop = cfg.fits.real_shapes_population
        if real_pop is not None and weights.get("real_shapes_centroid_calibration"):
            real = _simulator(cfg, "val", cache_dir, progress, real_pop, fits=True)
            centroid = _fit_shapes_centroid(net, cfg, real, progress)
            if centroid is not None:
                weights["real_shapes_centroid_calibration"] = centroid
                manifest["real_shapes_centroid_calibration"] = centroid
        weights["config"]["fits"] = manifest["config"]["fits"] = to_dict(cfg.fits)
        return write_run(out, "detection", weights, manifest, refit="centroid_calibration")
    if shapes_only:
        _set_fits(net, weights)
        shapes = _fit_shapes(net, cfg, cache_dir, progress)
        if not shapes:
            raise ProbcatValueError(
                "no population of other galaxies to fit a second calibration on: give "
                "--real-shapes-population (e.g. hdf) or set fits.real_shapes_population"
            )
        weights.update(shapes)
        manifest["prob_calibration"] = shapes["prob_calibration"]
        centroid = shapes.get("real_shapes_centroid_calibration")
        if centroid is not None:
            manifest["real_shapes_centroid_calibration"] = centroid
        weights["config"]["fits"] = manifest["config"]["fits"] = to_dict(cfg.fits)
        return write_run(out, "detection", weights, manifest, refit="shapes_calibration")
    sim = _simulator(cfg, "val", cache_dir, progress, cfg.fits.population, fits=True)
    if reliability_only:
        if weights.get("merge"):
            net.merge_px = float(weights["merge"]["radius_px"])
    else:
        merge, cal = _fit_decoding(net, cfg, sim, progress)
        weights["centroid_calibration"] = manifest["centroid_calibration"] = cal
        weights["merge"] = manifest["merge"] = merge
    rel = _fit_reliability(net, cfg, sim, progress)
    rel.update(_fit_shapes(net, cfg, cache_dir, progress))
    rel["seeing_calibrations"] = _fit_seeing(net, cfg, cache_dir, progress)
    manifest["seeing_calibrations"] = _seeing_summary(rel["seeing_calibrations"])
    rel["depth_calibrations"] = _fit_depth(net, cfg, cache_dir, progress)
    manifest["depth_calibrations"] = _seeing_summary(rel["depth_calibrations"])
    weights["config"]["fits"] = manifest["config"]["fits"] = to_dict(cfg.fits)
    manifest["data"] = describe_data(cfg)
    weights.update(rel)
    manifest["pair_rule"] = rel["pair_rule"]
    manifest["prob_calibration"] = rel["prob_calibration"]
    if "real_shapes_centroid_calibration" in rel:
        manifest["real_shapes_centroid_calibration"] = rel["real_shapes_centroid_calibration"]
    manifest["feature_density"] = _density_summary(rel["feature_density"])
    if not reliability_only:
        depths = _factors(rel["depth_calibrations"])
        weights["sky_offset"] = manifest["sky_offset"] = fit_sky_offsets(cfg, sim.bank, depths)
    return write_run(out, "detection", weights, manifest, refit="recalibration")


def _set_fits(net: DetectionNet, weights: dict) -> None:
    """The decoding and reliability fits recorded in a run's ``weights``, set on ``net``."""
    from probcat.infer.pairs import PairRule
    from probcat.infer.reliability import FeatureDensity, calibration_from_dict

    if weights.get("merge"):
        net.merge_px = float(weights["merge"]["radius_px"])
    if weights.get("pair_rule"):
        net.pair_rule = PairRule.from_dict(weights["pair_rule"])
    if weights.get("prob_calibration"):
        net.prob_calibration = calibration_from_dict(weights["prob_calibration"])
    if weights.get("feature_density"):
        net.feature_density = FeatureDensity.from_dict(weights["feature_density"])


SKY_SIZE = 256


def fit_sky_offset(
    cfg: DetectionTrainConfig, bank: SourceBank, n_scenes=None, noise: float = 1.0
) -> dict:
    """How far the faint galaxies of the prior lift the sky estimate of
    :mod:`probcat.background` (per band, noise sigma): :func:`probcat.background.sky_offset`
    on ``n_scenes`` (default ``cfg.fits.sky_scenes``) fresh sky-free scenes of
    :data:`SKY_SIZE` px from ``bank`` (validation galaxies, a seed of their own); ``noise``:
    scenes whose noise (as a flux) is that many times the survey's, a shallower image, in
    whose noise sigma the same faint light is less (and less of it masked)."""
    from probcat.background import sky_offset

    n = n_scenes or cfg.fits.sky_scenes
    seed = [cfg.seed, 31] + ([] if noise == 1.0 else [round(noise * 100)])
    sim = SceneSimulator(bank, SceneConfig(SKY_SIZE, SKY_SIZE, margin=cfg.data.margin))
    rng = np.random.default_rng(seed)
    sigma = cfg.survey().noise_sigma.astype(np.float64)[:, None, None]

    per_band = sky_offset(sim.sample_at_noise(rng, noise).image / (sigma * noise) for _ in range(n))
    where = "" if noise == 1.0 else f", noise as a flux {noise:.4g} times the survey's"
    return {
        "per_band": [round(float(v), 5) for v in per_band],
        "n_scenes": int(n),
        "source": f"{n} sky-free validation scenes ({SKY_SIZE} px, split=val, seed {seed}"
        f"{where}): mean masked sky estimate, noise sigma",
    }


def record_sky_offset(weights_path, manifest_path, *, n_scenes=None, cache_dir=None, progress=True):
    """Fit :func:`fit_sky_offset` for the detection weights file ``weights_path`` (at the
    survey's depth, and as ``depths`` at each depth its probability calibration has a refit
    for) and record it in the manifest at ``manifest_path`` (atomically; the weights file is
    not touched, so its sha256 stays). Returns the record."""
    from probcat.train.loop import record_in_manifest
    from probcat.weights import read_weights, seeing_calibrations_from

    w = read_weights(weights_path)
    cfg = from_dict(DetectionTrainConfig, w["config"])
    sim = _simulator(cfg, "val", cache_dir, progress, cfg.fits.population, fits=True)
    depths = [g for g, _ in seeing_calibrations_from(w, weights_path, "depth_calibrations")]
    rec = fit_sky_offsets(cfg, sim.bank, depths, n_scenes)
    record_in_manifest(manifest_path, "sky_offset", rec)
    return rec


def fit_sky_offsets(cfg: DetectionTrainConfig, bank: SourceBank, depths=(), n_scenes=None):
    """:func:`fit_sky_offset` at the survey's depth and, as ``depths``, at each of the
    noise factors ``depths`` (those the probabilities are calibrated at: the depths an
    image is read at)."""
    rec = fit_sky_offset(cfg, bank, n_scenes)
    if depths:
        rec["depths"] = [
            {"noise_factor": float(g), **fit_sky_offset(cfg, bank, n_scenes, noise=float(g))}
            for g in depths
        ]
    return rec


def _factors(calibrations) -> list[float]:
    """The factors of fitted seeing or depth calibrations (``[{"factor", ...}, ...]``)."""
    return [float(e["factor"]) for e in calibrations or ()]


DENSITY_SIZE = 500  # px: the validation fields of the density calibration


def record_density_calibration(
    name: str,
    manifest_path,
    *,
    factors=None,
    n_fields: int = 60,
    cache_dir=None,
    progress: bool = True,
    command: str = "",
) -> dict:
    """Fit the density calibrations (:mod:`probcat.infer.density`) of the registered
    detection weights ``name`` and record them in the manifest at ``manifest_path``
    (atomically; the weights file, and so its sha256, stays as it is): ``n_fields``
    validation fields of :data:`DENSITY_SIZE` px (split ``val``, the weights' population,
    every source inside) per density factor, read by the product's detector at the
    survey's seeing and depth (``density_calibration``), and the same under each seeing
    and at each depth the weights' probability calibration has a refit for
    (``density_calibrations``: fields under that PSF, read at that seeing; fields with the
    noise of that depth, read with the survey's zeropoints). Returns the records."""
    from probcat.api import load
    from probcat.provenance import provenance
    from probcat.train.loop import record_in_manifest

    det = load(name, kind="detection")
    det.density_calibration = None  # the product's catalogues before any density map
    cfg = from_dict(DetectionTrainConfig, det.manifest["config"])
    conditions = [(1.0, 1.0)]
    conditions += [(float(f), 1.0) for f, _ in getattr(det.net, "seeing_calibrations", ())]
    conditions += [(1.0, float(g)) for g, _ in getattr(det.net, "depth_calibrations", ())]
    recs = []
    for seeing, noise in conditions:
        cal = _fit_density(det, cfg, seeing, noise, factors, n_fields, cache_dir, progress)
        recs.append(cal.to_dict())
        if progress:
            print(f"{name}: density calibration at seeing x{seeing:g}, noise x{noise:.3g}",
                  flush=True)  # fmt: skip
    main = {**recs[0], **provenance(command)}  # the command, versions and git commit
    record_in_manifest(manifest_path, "density_calibration", main)
    record_in_manifest(manifest_path, "density_calibrations", recs[1:])
    return {"density_calibration": main, "density_calibrations": recs[1:]}


def _fit_density(det, cfg, seeing: float, noise: float, factors, n_fields, cache_dir, progress):
    """One density calibration of ``det`` (:func:`record_density_calibration`): on fields
    under a PSF ``seeing`` times the survey's, read at that seeing, or with noise (as a
    flux) ``noise`` times the survey's, read with the survey's zeropoints."""
    from probcat.infer.density import FACTORS, fit_density_calibration
    from probcat.simulate.prior import GALAXY_DENSITY, STAR_DENSITY

    survey = cfg.survey()
    pop = cfg.fits.population or cfg.data.population
    bank = _simulator(
        cfg, "val", cache_dir, progress, cfg.fits.population, (seeing,), fits=True
    ).bank
    sigma = survey.noise_sigma * noise
    zps = [b.flux_to_mag(1.0) for b in survey.bands]  # noise as a flux: noise x the survey's
    # the fields have no sky: read as they are (a crowded field's faint light read as a
    # sky would be taken off at the prior's density, not at the field's, which the
    # product's sky at the image's density does: probcat.infer.density.sky_shift)
    read = {"background": "none"} | ({"seeing": seeing} if seeing != 1.0 else {})
    if noise != 1.0:
        read["zeropoint"] = zps
    seed = [cfg.seed, 41]
    extra = [] if (seeing, noise) == (1.0, 1.0) else [round(seeing * 100), round(noise * 100)]
    sims = {}

    # the noise of the fits after training: a coadd's for weights meant for coadds
    frac, kernels = _coadd_noise(cfg, fits=True)
    if frac and noise != 1.0:
        raise ProbcatValueError("density calibrations at other depths need white-noise fits")

    def sample(f, i):
        if f not in sims:
            layout = SceneConfig(
                DENSITY_SIZE, DENSITY_SIZE, GALAXY_DENSITY * f, STAR_DENSITY * f,
                coadd_fraction=frac, coadd_visits=cfg.data.coadd_visits, coadd_kernels=kernels,
            )  # fmt: skip
            sims[f] = SceneSimulator(bank, layout)
        return sims[f].sample_at_noise(
            np.random.default_rng([*seed, round(f * 1000), i, *extra]), noise
        )

    def detect(image):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the survey's own fields
            return det.catalog(image, noise_sigma=sigma, **read)

    where = "" if not frac else ", " + _fits_noise(cfg).removeprefix("the fits after training: ")
    if seeing != 1.0:
        where += f", under a PSF {seeing:g} times the survey's FWHM"
    if noise != 1.0:
        where += f", noise as a flux {noise:.3g} times the survey's"
    cal = fit_density_calibration(
        detect, sample, factors=FACTORS if factors is None else factors,
        n_fields=n_fields, progress=progress,
        source=f"{n_fields} validation fields per factor ({DENSITY_SIZE} px, split=val, population "
        f"{pop}, every source inside{where}, seed [{seed[0]}, {seed[1]}, 1000 x factor, i"
        f"{''.join(f', {v}' for v in extra)}]), the product's MAP catalogues, detections "
        "matched within 2 px",
    )  # fmt: skip
    return replace(cal, seeing_factor=seeing, noise_factor=noise)


def _fit_decoding(net, cfg: DetectionTrainConfig, sim, progress):
    """The fits that follow training, in order: the merge radius (set on ``net``), then the
    centroid calibration of the catalogues decoded with it."""
    merge = _fit_merge(net, cfg, sim, progress)
    return merge, _fit_calibration(net, cfg, sim, progress)


def _fit_merge(net, cfg: DetectionTrainConfig, sim: SceneSimulator, progress):
    """The radius within which decoding merges claims of neighbouring tiles
    (:mod:`probcat.infer.merge`), fitted on fresh scenes of ``sim`` (validation galaxies, a
    seed of its own) and set on ``net``; None (no merging) without a location refiner."""
    from probcat.infer.merge import fit_merge_radius

    if not cfg.model.loc_refine:
        return None
    seed, n = [cfg.seed, 23], cfg.fits.merge_scenes
    rule = fit_merge_radius(
        net,
        sim,
        cfg.survey().noise_sigma,
        n_scenes=n,
        rng=np.random.default_rng(seed),
        seed=cfg.seed,
        source=f"{n} validation scenes ({cfg.data.image_size} px, split=val, seed {seed}): "
        "MAP catalogues and 4 posterior samples each at every radius",
        progress=progress,
    )
    net.merge_px = rule.radius_px
    return rule.to_dict()


def _density_summary(density: dict | None) -> dict | None:
    return None if density is None else {k: density[k] for k in ("n", "source")}


def _inside_fraction(cfg: DetectionTrainConfig) -> float:
    """The share of the reliability fits' scenes drawn with every source inside the image
    (0 for a layout without a margin: every scene is already inside)."""
    return cfg.fits.reliability_inside_fraction if cfg.data.margin > 0 else 0.0


def _inside_note(n: int, frac: float) -> str:
    """How many of ``n`` scenes are isolated, for a fit's ``source``."""
    k = round(n * frac)
    return f", {k} of them with every source inside the image" if k else ""


def _seeing_summary(entries: list | None) -> list:
    """Seeing or depth calibrations as the manifest records them: factor (and depth in
    years), size and source."""
    return [
        {
            "factor": e["factor"],
            **({"years": e["years"]} if "years" in e else {}),
            "n": e["calibration"]["n"],
            "source": e["calibration"]["source"],
        }
        for e in entries or ()
    ]


def _fit_shapes(net, cfg: DetectionTrainConfig, cache_dir, progress) -> dict:
    """``{"prob_calibration": ..., "real_shapes_centroid_calibration": ...}``: ``net``'s
    probability calibration with a second map for galaxies unlike the prior's, fitted on
    ``fits.real_shapes_scenes`` fresh validation scenes of ``fits.real_shapes_population``
    (a seed of their own; the layouts of the reliability fits;
    :func:`~probcat.infer.reliability.fit_shapes_calibration`), and the centroid-interval
    calibration of that population (``fits.calibration_scenes`` scenes of the training
    layout, a seed of their own), both set on ``net``; ``{}`` (nothing changed) without
    such a population or a calibration."""
    from probcat.infer.reliability import fit_shapes_calibration

    f = cfg.fits
    if f.real_shapes_population is None or net.prob_calibration is None:
        return {}
    real = _simulator(cfg, "val", cache_dir, progress, f.real_shapes_population, fits=True)
    prior = _simulator(cfg, "val", cache_dir, progress, f.population, fits=True)
    n, frac, seed = f.real_shapes_scenes, _inside_fraction(cfg), [cfg.seed, 43]
    cal = fit_shapes_calibration(
        net,
        real,
        prior,
        cfg.survey().noise_sigma,
        n_scenes=n,
        rng=np.random.default_rng(seed),
        inside_fraction=frac,
        prior=f.real_shapes_prior,
        population=f.real_shapes_population,
        source=f"{n} validation scenes of {f.real_shapes_population} ({cfg.data.image_size} px, "
        f"split=val, seed {seed}{_inside_note(n, frac)}), MAP detections matched within "
        f"2 px, ood_score of the weights' density; evidence against {max(n // 2, 1)} "
        f"validation scenes of {f.population or cfg.data.population}",
    )
    net.prob_calibration = cal
    out = {"prob_calibration": cal.to_dict()}
    centroid = _fit_shapes_centroid(net, cfg, real, progress)
    if centroid is not None:
        out["real_shapes_centroid_calibration"] = centroid
    return out


def _fit_shapes_centroid(net, cfg: DetectionTrainConfig, real: SceneSimulator, progress):
    """The centroid-interval calibration of ``fits.real_shapes_population`` (scenes of
    ``real``, a seed of its own), set on ``net``; None where too few sources match."""
    from probcat.infer.calibration import CentroidCalibration

    pop = cfg.fits.real_shapes_population
    centroid = _fit_calibration(net, cfg, real, progress, seed_tag=47, population=pop)
    if centroid is not None:
        net.real_shapes_centroid_calibration = CentroidCalibration.from_dict(centroid)
    return centroid


def _fit_seeing(net, cfg: DetectionTrainConfig, cache_dir, progress) -> list:
    """The probability calibration refitted under each PSF FWHM factor of
    ``fits.seeing_factors`` (:func:`~probcat.infer.reliability.fit_seeing_calibration`), on
    ``fits.seeing_scenes`` fresh scenes (a seed of their own) of validation galaxies
    rendered under that PSF, in the layouts of the reliability fits, with ``net``'s pair
    rule, merge radius and feature density as set: ``[{"factor", "calibration"}, ...]``.
    Sets ``net.seeing_calibrations``. None fitted when ``net`` has no calibration to refit,
    or (with a warning) where the scenes hold too few detections."""
    cases = (
        (
            float(factor),
            lambda f=factor: _simulator(
                cfg, "val", cache_dir, progress, cfg.fits.population, (f,), fits=True
            ),  # fmt: skip
            cfg.survey().noise_sigma,
            [cfg.seed, 41, round(factor * 100)],
            f"under a PSF {factor:g} times the survey's FWHM",
            {},
        )
        for factor in cfg.fits.seeing_factors
    )
    return _refit_calibrations(net, cfg, "seeing_calibrations", cfg.fits.seeing_scenes, cases)


def _fit_depth(net, cfg: DetectionTrainConfig, cache_dir, progress) -> list:
    """The probability calibration refitted at each depth of ``fits.depth_years`` (years of
    the survey, at its seeing), on ``fits.depth_scenes`` fresh scenes (a seed of their own)
    of validation galaxies rendered at that depth, in the layouts of the reliability fits,
    with ``net``'s pair rule, merge radius and feature density as set: ``[{"factor",
    "years", "calibration"}, ...]``, ``factor`` the noise as a flux over the training
    depth's (:func:`~probcat.api.noise_over_survey`). Sets ``net.depth_calibrations``. None
    fitted when ``net`` has no calibration to refit, or (with a warning) where the scenes
    hold too few detections."""
    from probcat.api import noise_over_survey

    def case(years: float):
        at = replace(  # the scenes of that depth (its own config names no other depths)
            cfg, data=replace(cfg.data, years=float(years)), fits=replace(cfg.fits, depth_years=())
        )
        survey = at.survey()
        # its noise through its own zeropoints (the magnitude of 1 e- at its exposure)
        zps = {"zeropoint": [b.flux_to_mag(1.0) for b in survey.bands]}
        factor = float(np.exp(np.mean(np.log(noise_over_survey(cfg.survey(), survey.noise_sigma,
                                                               zps)))))  # fmt: skip
        return (
            factor,
            lambda: _simulator(
                at, "val", cache_dir, progress, cfg.fits.population, (1.0,), fits=True
            ),  # fmt: skip
            survey.noise_sigma,
            [cfg.seed, 43, round(years * 100)],
            f"at {years:g} years' depth (noise as a flux {factor:.3g} times the training's)",
            {"years": float(years)},
        )

    cases = (case(y) for y in cfg.fits.depth_years)
    return _refit_calibrations(net, cfg, "depth_calibrations", cfg.fits.depth_scenes, cases)


def _refit_calibrations(net, cfg: DetectionTrainConfig, attr: str, n: int, cases) -> list:
    """The seeing or depth calibrations (``attr`` of ``net``, set here): for each of
    ``cases`` (``(factor, make_sim, noise_sigma, seed, where, extra)``, drawn only when
    ``net`` has a calibration to refit), the probability calibration refitted on ``n``
    fresh scenes of ``make_sim()``; ``[{"factor", **extra, "calibration"}, ...]``, with a
    warning and no entry where the scenes hold too few detections."""
    from probcat.infer.reliability import fit_seeing_calibration

    setattr(net, attr, ())
    if net.prob_calibration is None:
        return []
    frac = _inside_fraction(cfg)
    out = []
    for factor, make_sim, noise_sigma, seed, where, extra in cases:
        try:
            cal = fit_seeing_calibration(
                net,
                make_sim(),
                noise_sigma,
                n_scenes=n,
                rng=np.random.default_rng(seed),
                inside_fraction=frac,
                source=f"{n} validation scenes ({cfg.data.image_size} px, split=val, seed "
                f"{seed}{_inside_note(n, frac)}) {where}, MAP detections matched within 2 px, "
                "ood_score of the weights' density",
            )
        except ProbcatValueError as e:
            warn_user(f"no calibration {where}: {e}")
            continue
        out.append({"factor": factor, **extra, "calibration": cal.to_dict()})
        setattr(net, attr, (*getattr(net, attr), (factor, cal)))
    return out


def _fit_reliability(net, cfg: DetectionTrainConfig, sim: SceneSimulator, progress) -> dict:
    """The split veto of close pairs (:mod:`probcat.infer.pairs`, set on ``net``), then the
    detection-probability calibration and the feature density of real detections
    (:mod:`probcat.infer.reliability`) of the vetoed catalogues, on fresh validation scenes
    (each a seed of its own); None, with a warning, when an undertrained net detects too
    little."""
    from probcat.infer.pairs import fit_pair_rule
    from probcat.infer.reliability import fit_reliability

    frac = _inside_fraction(cfg)

    pair = None
    net.pair_rule = None
    if cfg.fits.pair_scenes:
        seed, n = [cfg.seed, 37], cfg.fits.pair_scenes
        try:
            net.pair_rule = fit_pair_rule(
                net,
                sim,
                cfg.survey().noise_sigma,
                n_scenes=n,
                rng=seed,
                source=f"{n} validation scenes ({cfg.data.image_size} px, split=val, seed "
                f"{seed}{_inside_note(n, frac)}), MAP detections with a neighbour, matched "
                "within 2 px",
                inside_fraction=frac,
            )
            pair = net.pair_rule.to_dict()
        except ProbcatValueError as e:
            warn_user(f"no pair rule: {e}")
    seed, n = [cfg.seed, 29], cfg.fits.reliability_scenes
    try:
        cal, dens = fit_reliability(
            net,
            sim,
            cfg.survey().noise_sigma,
            n_scenes=n,
            rng=np.random.default_rng(seed),
            source=f"{n} validation scenes ({cfg.data.image_size} px, split=val, seed {seed}"
            f"{_inside_note(n, frac)}), MAP detections matched within 2 px",
            inside_fraction=frac,
        )
    except ProbcatValueError as e:
        warn_user(f"no probability calibration: {e}")
        return {"pair_rule": pair, "prob_calibration": None, "feature_density": None}
    net.prob_calibration, net.feature_density = cal, dens
    return {"pair_rule": pair, "prob_calibration": cal.to_dict(), "feature_density": dens.to_dict()}


def _fit_calibration(
    net, cfg: DetectionTrainConfig, sim: SceneSimulator, progress, *, seed_tag=17, population=""
):
    """The centroid-interval calibration (:mod:`probcat.infer.calibration`) of ``net`` on
    fresh scenes of ``sim`` (validation galaxies, the training scene layout; a seed of its
    own, ``[cfg.seed, seed_tag]``; ``population``: named in its source when not the
    training one); None, with a warning, when an undertrained net matches too few sources."""
    from probcat.infer.calibration import TooFewMatches, fit_centroid_calibration

    seed, n = [cfg.seed, seed_tag], cfg.fits.calibration_scenes
    of = f" of {population}" if population else ""
    try:
        return fit_centroid_calibration(
            net,
            sim,
            cfg.survey().noise_sigma,
            n_scenes=n,
            rng=np.random.default_rng(seed),
            source=f"{n} validation scenes{of} ({cfg.data.image_size} px, split=val, "
            f"seed {seed}), MAP detections matched within 2 px",
            progress=progress,
        ).to_dict()
    except TooFewMatches as e:  # intervals stay Gaussian
        warn_user(f"no centroid calibration: {e}")
        return None
