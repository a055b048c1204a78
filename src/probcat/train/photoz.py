"""The photo-z mixture density network as a training task (paper 002 section 3).

Training objects are the gold galaxies (i < 25.3, the paper's redshift-head sample) of
``blend`` scenes (galaxies at 160 arcmin^-2 and stars, so neighbours and blends are as
in real data) drawn from the training-split DC2 banks, at every depth listed in
``data.years`` (one network for all of them: inputs are in noise-sigma units per band).
Each object's stamp is cut around its true centroid moved by a Gaussian jitter of
``data.jitter_px`` (a detection's centroid error) and rounded to the nearest pixel, as at
inference. Scenes are expensive in six bands (~40 ms), so the task renders a pool of
``data.train_objects`` stamps once and draws batches from it with the eight dihedral
symmetries (which change neither colours nor redshift). Validation: a fixed pool from the
validation-split banks; loss is the truncated-mixture NLL (:func:`~probcat.nets.photoz.
mixture_nll`), plus, with ``model.colour_aux`` > 0, that weight times the mean squared error
of an auxiliary regression of the galaxy's noise-free colours and i magnitude
(:func:`colour_targets`) from extra outputs of the same network.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from probcat.config import load_yaml
from probcat.errors import ProbcatValueError
from probcat.infer.deblend import crop_nearest
from probcat.masking import band_masks
from probcat.nets.photoz import (
    COMPONENTS,
    HEAD,
    STAMP_Z,
    SYMMETRIES,
    PhotozNet,
    dihedral,
    mixture_nll,
)
from probcat.runtime import check_memory, choose_device
from probcat.simulate.datasets import Simulation, SimulationConfig
from probcat.simulate.prior import MAG_GOLD
from probcat.survey import Survey
from probcat.train.loop import (
    LoopSettings,
    Phase,
    check_run_config,
    fit,
    load_init,
    model_device,
    run_directory,
)

# the stamp pools are built as lists of crops, stacked and joined: three float32 copies
POOL_COPIES = 3

__all__ = [
    "PhotozData",
    "PhotozModel",
    "PhotozPhase",
    "PhotozCalibration",
    "PhotozTrainConfig",
    "PhotozTask",
    "load_photoz_config",
    "train_photoz",
    "gold_stamps",
    "colour_targets",
    "detected_gold",
    "band_masks",
]


@dataclass(frozen=True)
class PhotozData:
    bands: str = "ugrizy"
    years: tuple[float, ...] = (10.0, 5.0)
    population: str = "dc2"
    bank_size: int = 20000
    val_bank_size: int = 4000
    catalog_seed: int = 0
    scene_size: int = 98
    train_objects: int = 30000
    val_objects: int = 2000
    jitter_px: float = 0.3
    batch_size: int = 256
    val_to_train: float = 0.0  # share of the DC2 validation third trained on (test: untouched)
    keep_gold: bool = False  # banks keep every gold galaxy (faint ones subsampled, weighted)
    # per-band seeing: ``seeing_patterns`` banks, each band's PSF FWHM times a factor drawn
    # uniformly in ``seeing_range`` (:func:`seeing_patterns`); ``seeing_fraction`` of the
    # stamps come from their scenes; ``seeing_bank_size`` galaxies each (0: ``bank_size``)
    seeing_patterns: int = 0
    seeing_range: tuple[float, float] = (0.8, 1.3)
    seeing_fraction: float = 0.5
    seeing_bank_size: int = 0
    # bands without data: ``mask_fraction`` of the training stamps get one to three bands
    # masked (set to 0, as inference reads pixels without data) over a whole band, a
    # half-plane, a strip or a disc (:func:`band_masks`); 0: none (validation stays clean)
    mask_fraction: float = 0.0
    # True: the training pool keeps each stamp's noiseless light and every batch draws the
    # scene's white noise afresh (the recipe's Gaussian noise of one sigma per band, so in
    # noise-sigma units a standard normal), instead of one noise realisation per stamp seen
    # again and again (~85 times in the shipped schedule); validation stamps keep theirs
    fresh_noise: bool = False


@dataclass(frozen=True)
class PhotozModel:
    stamp: int = STAMP_Z
    channels: int = 32
    components: int = COMPONENTS
    apertures: tuple[float, ...] = ()  # Gaussian aperture widths (px) read as photometry
    head: tuple[int, ...] = HEAD  # hidden layer widths of the MLP before the mixture
    # > 0: the network also regresses the galaxy's noise-free colours of adjacent bands and
    # i magnitude (standardised; colour_targets) from extra outputs, and the loss adds this
    # weight times their mean squared error; inference reads the mixture only. 0: none
    colour_aux: float = 0.0


@dataclass(frozen=True)
class PhotozPhase:
    name: str = "main"
    steps: int = 6000
    lr: float = 1e-3
    warmup: int = 200


@dataclass(frozen=True)
class PhotozCalibration:
    """After training: one factor on the mixture widths, fitted on validation scenes at
    the positions ``detector`` finds (so the PDFs carry detection's centroid errors and
    blends as at inference); ``scenes`` per depth, 0 to skip."""

    detector: str = "detection_lsst_i"
    scenes: int = 300


@dataclass(frozen=True)
class PhotozTrainConfig:
    data: PhotozData = field(default_factory=PhotozData)
    model: PhotozModel = field(default_factory=PhotozModel)
    phases: tuple[PhotozPhase, ...] = (PhotozPhase(),)
    calibration: PhotozCalibration = field(default_factory=PhotozCalibration)
    seed: int = 0
    val_every: int = 500
    checkpoint_every: int = 250
    threads: int = 2
    members: int = 1  # > 1: a deep ensemble of nets trained with seeds seed, seed + 1, ...
    symmetries: int = 1  # orientations of each stamp pooled at inference (1, 2, 4 or 8)
    # photo-z weights (registered name or file) the nets start from: member k from the
    # ensemble's k-th net (same architecture); None: from scratch
    init: str | None = None

    def __post_init__(self):
        d, m = self.data, self.model
        if not d.years:
            raise ProbcatValueError("data.years: at least one depth is needed")
        if "i" not in d.bands:
            raise ProbcatValueError("data.bands must include i (the gold cut is i < 25.3)")
        if not all(a > 0 and math.isfinite(a) for a in m.apertures):
            raise ProbcatValueError(f"model.apertures must be positive widths, got {m.apertures}")
        if not m.head or min(m.head) < 1:
            raise ProbcatValueError(f"model.head must be positive layer widths, got {m.head}")
        if not 0.0 <= m.colour_aux < math.inf:
            raise ProbcatValueError(f"model.colour_aux must be a weight >= 0, got {m.colour_aux}")
        if m.stamp % 2 == 0:
            raise ProbcatValueError(f"model.stamp must be odd, got {m.stamp}")
        if self.symmetries not in SYMMETRIES:
            raise ProbcatValueError(
                f"symmetries must be one of {SYMMETRIES}, got {self.symmetries}"
            )
        if self.calibration.scenes < 0:
            raise ProbcatValueError(
                f"calibration.scenes must be >= 0, got {self.calibration.scenes}"
            )
        if not 0.0 <= d.val_to_train < 1.0:
            raise ProbcatValueError(f"data.val_to_train must lie in [0, 1), got {d.val_to_train}")
        if not (d.jitter_px >= 0 and math.isfinite(d.jitter_px)):
            raise ProbcatValueError(f"data.jitter_px must be >= 0, got {d.jitter_px}")
        lo, hi = d.seeing_range
        if not (0 < lo <= hi < 10 and math.isfinite(hi)):
            raise ProbcatValueError(
                "data.seeing_range must be two factors 0 < low <= high < 10, got "
                f"{list(d.seeing_range)}"
            )
        if not 0.0 <= d.seeing_fraction <= 1.0:
            raise ProbcatValueError(
                f"data.seeing_fraction must lie in [0, 1], got {d.seeing_fraction}"
            )
        if not 0.0 <= d.mask_fraction <= 1.0:
            raise ProbcatValueError(f"data.mask_fraction must lie in [0, 1], got {d.mask_fraction}")
        if d.seeing_patterns < 0 or d.seeing_bank_size < 0:
            raise ProbcatValueError("data.seeing_patterns and data.seeing_bank_size must be >= 0")
        counts = {
            "data.bank_size": d.bank_size,
            "data.val_bank_size": d.val_bank_size,
            "data.scene_size": d.scene_size,
            "data.train_objects": d.train_objects,
            "data.val_objects": d.val_objects,
            "data.batch_size": d.batch_size,
            "model.stamp": m.stamp,
            "model.channels": m.channels,
            "model.components": m.components,
            "val_every": self.val_every,
            "checkpoint_every": self.checkpoint_every,
            "members": self.members,
        }
        # member k trains with seed + k
        seeds = {"seed": self.seed, "data.catalog_seed": d.catalog_seed}
        if isinstance(self.members, int) and self.members > 1:
            seeds["seed + members - 1"] = self.seed + self.members - 1
        for y in d.years:
            check_run_config(d.bands, y, self.phases, counts, self.threads, seeds)

    def survey(self) -> Survey:
        """The survey of the first depth (every depth shares bands and pixels)."""
        return Survey.lsst(bands=self.data.bands, years=self.data.years[0])

    def net(self) -> PhotozNet:
        """A fresh network of ``model``'s architecture for ``data.bands``."""
        m = self.model
        return PhotozNet(
            len(self.data.bands),
            m.stamp,
            m.channels,
            m.components,
            apertures=m.apertures,
            head=m.head,
            aux=len(self.data.bands) if m.colour_aux > 0 else 0,
        )

    def settings(self) -> LoopSettings:
        return LoopSettings(self.seed, self.val_every, self.checkpoint_every, self.threads)

    def simulation(
        self, split: str, years: float, cache_dir=None, progress=True, pattern=None
    ) -> Simulation:
        """Scenes of :meth:`simulation_config`; ``pattern``: the index of one of
        :func:`seeing_patterns` (their seeing and bank size), None for the survey's own."""
        if pattern is None:
            return Simulation(self.simulation_config(split, years), cache_dir=cache_dir,
                              progress=progress)  # fmt: skip
        d = self.data
        size = d.seeing_bank_size or d.bank_size
        cfg = self.simulation_config(split, years, size if split == "train" else
                                     min(size, d.val_bank_size))  # fmt: skip
        scale = seeing_patterns(d)[pattern]
        return Simulation(cfg, cache_dir=cache_dir, progress=progress, psf_scale=scale)

    def simulation_config(self, split: str, years: float, bank_size=None) -> SimulationConfig:
        """Scenes of ``split`` at depth ``years``: the training banks, or the validation ones
        (which lose the rows ``data.val_to_train`` gives to training); ``bank_size`` (default
        ``data.bank_size`` or ``data.val_bank_size``) galaxies."""
        d = self.data
        if bank_size is None:
            bank_size = d.bank_size if split == "train" else d.val_bank_size
        return SimulationConfig(
            recipe="blend",
            n=1,
            bands=d.bands,
            population=d.population,
            split=split,
            years=years,
            bank_size=bank_size,
            catalog_seed=d.catalog_seed,
            size=d.scene_size,
            val_to_train=d.val_to_train,
            keep_gold=d.keep_gold,
        )


def seeing_patterns(data: PhotozData) -> np.ndarray:
    """``(data.seeing_patterns, bands)`` factors on each band's PSF FWHM, uniform in
    ``data.seeing_range``, independent between bands (coadds of each band are made of other
    visits, so their seeing differs); fixed by ``data.catalog_seed``."""
    rng = np.random.default_rng([data.catalog_seed, 404])
    lo, hi = data.seeing_range
    return rng.uniform(lo, hi, (data.seeing_patterns, len(data.bands)))


def load_photoz_config(path, steps: int | None = None) -> PhotozTrainConfig:
    """Read a YAML config (strict); ``steps`` overrides the first phase's."""
    cfg = load_yaml(PhotozTrainConfig, path)
    if steps is not None:
        cfg = replace(cfg, phases=(replace(cfg.phases[0], steps=steps), *cfg.phases[1:]))
    return cfg


def gold_stamps(
    sim: Simulation,
    rng: np.random.Generator,
    n: int,
    *,
    stamp: int,
    jitter_px: float,
    noiseless: bool = False,
) -> dict[str, np.ndarray]:
    """``n`` stamps ``(n, bands, stamp, stamp)`` in noise-sigma units around the gold
    galaxies of fresh scenes of ``sim``, with their redshift, i magnitude and magnitudes in
    every band (``"mags"``, ``(n, bands)``, noise-free, from the catalog). ``noiseless``:
    the stamps of the scenes' noiseless images, plus ``"inside"`` ``(n, stamp, stamp)``,
    True where a stamp lies on its scene (where noise belongs; outside, crops are zero);
    the random stream is the same either way."""
    sigma = sim.survey.noise_sigma.astype(np.float32)[:, None, None]
    i_band = sim.survey.band_names.index("i")
    xs, zs, mags, inside = [], [], [], []
    while len(zs) < n:
        scene = sim.sim.sample(rng, truth=False, keep_noiseless=noiseless)
        cat = scene.catalog
        gold = np.flatnonzero(cat["galaxy"] & (cat["mag"][:, i_band] < MAG_GOLD))
        image = (scene.noiseless if noiseless else scene.image) / sigma
        ones = np.ones((1, *image.shape[1:]), np.float32)
        for k in gold:
            x = cat["x"][k] + jitter_px * rng.standard_normal()
            y = cat["y"][k] + jitter_px * rng.standard_normal()
            xs.append(crop_nearest(image, x, y, stamp))
            zs.append(cat["redshift"][k])
            mags.append(cat["mag"][k])
            if noiseless:
                inside.append(crop_nearest(ones, x, y, stamp)[0] > 0)
    out = {
        "x": np.stack(xs[:n]).astype(np.float32),
        "z": np.asarray(zs[:n], np.float32),
        "mags": np.asarray(mags[:n], np.float32),
    }
    out["mag_i"] = out["mags"][:, i_band].copy()
    if noiseless:
        out["inside"] = np.stack(inside[:n])
    return out


def colour_targets(mags: np.ndarray, bands: str) -> np.ndarray:
    """The auxiliary regression targets of magnitudes ``(n, len(bands))``: the colours of
    adjacent bands (``u - g``, ``g - r``, ...) then the i magnitude, ``(n, len(bands))``."""
    mags = np.asarray(mags, np.float32)
    return np.concatenate([mags[:, :-1] - mags[:, 1:], mags[:, [bands.index("i")]]], 1)


def detected_gold(sim: Simulation, det, n_scenes: int, rng, *, stamp: int) -> dict:
    """Stamps at ``det``'s MAP positions of the gold galaxies (matched within 2 px, detected
    as galaxies) of ``n_scenes`` fresh scenes of ``sim``, with their true redshifts."""
    from probcat.metrics.detection import match

    sigma = sim.survey.noise_sigma.astype(np.float32)
    names = sim.survey.band_names
    planes = [names.index(b) for b in det.bands]
    i_band = names.index("i")
    xs, zs = [], []
    for _ in range(n_scenes):
        scene = sim.sim.sample(rng, truth=False)
        t = scene.catalog
        c = det.catalog(scene.image[planes], noise_sigma=sigma[planes])
        ti, dj = match(np.stack([t["x"], t["y"]], 1), np.stack([c["x"], c["y"]], 1), 2.0)
        ok = np.asarray(t["galaxy"], bool)[ti] & (np.asarray(t["mag"])[ti, i_band] < MAG_GOLD)
        ok &= np.asarray(c["galaxy"], bool)[dj]
        image = scene.image / sigma[:, None, None]
        for a, b in zip(ti[ok], dj[ok]):
            xs.append(crop_nearest(image, c["x"][b], c["y"][b], stamp))
            zs.append(t["redshift"][a])
    k = len(zs)
    return {
        "x": np.stack(xs).astype(np.float32)
        if k
        else np.zeros((0, len(names), stamp, stamp), np.float32),
        "z": np.asarray(zs, np.float32),
    }


def _shares(n: int, k: int) -> list[int]:
    """``n`` split into ``k`` near-equal whole parts."""
    return [n // k + (1 if j < n % k else 0) for j in range(k)]


def _pool(cfg: PhotozTrainConfig, split: str, n: int, seed, cache_dir, progress, noiseless=False):
    """``n`` stamps, an equal share per depth; of each share, ``data.seeing_fraction``
    from the seeing patterns' scenes (an equal part each) when there are any; ``noiseless``:
    see :func:`gold_stamps`."""
    d = cfg.data
    parts = []
    for j, (y, m) in enumerate(zip(d.years, _shares(n, len(d.years)))):
        other = round(m * d.seeing_fraction) if d.seeing_patterns else 0
        counts = {None: m - other}
        counts.update(zip(range(d.seeing_patterns), _shares(other, d.seeing_patterns or 1)))
        for pattern, c in counts.items():
            if c == 0:
                continue
            sim = cfg.simulation(split, y, cache_dir, progress, pattern)
            key = [*seed, j] if pattern is None else [*seed, j, 1000 + pattern]
            parts.append(gold_stamps(sim, np.random.default_rng(key), c, stamp=cfg.model.stamp,
                                     jitter_px=d.jitter_px, noiseless=noiseless))  # fmt: skip
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def dihedral_batch(x: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """Apply symmetry ``variant[i]`` (0-7, :func:`~probcat.nets.photoz.dihedral`: the
    orientations inference pools) to stamp ``i``."""
    out = np.empty_like(x)
    for v in range(8):
        sel = variant == v
        if sel.any():
            out[sel] = dihedral(torch.from_numpy(x[sel]), v).numpy()
    return out


class PhotozTask:
    """A stamp pool, the truncated-mixture NLL and point/PIT validation metrics."""

    kind = "photoz"

    def __init__(self, cfg: PhotozTrainConfig, cache_dir=None, progress=True, member=0):
        self.cfg, self.member = cfg, member  # member: which net of ``cfg.init`` to start from
        d = cfg.data
        self.pool = _pool(cfg, "train", d.train_objects, (cfg.seed, 7), cache_dir, progress,
                          noiseless=d.fresh_noise)  # fmt: skip
        self.val = _pool(cfg, "val", d.val_objects, (cfg.seed, 99), cache_dir, progress)
        if cfg.model.colour_aux > 0:  # standardised with the training pool's moments
            t = colour_targets(self.pool["mags"], d.bands)
            mean, sd = t.mean(0), t.std(0) + 1e-6
            self.pool["aux"] = (t - mean) / sd
            self.val["aux"] = (colour_targets(self.val["mags"], d.bands) - mean) / sd
        if d.mask_fraction > 0:  # the validation stamps once more, each with bands masked
            masks = band_masks(np.random.default_rng([cfg.seed, 98]), self.val["x"].shape, 1.0)
            self.val_masked = np.where(masks, np.float32(0.0), self.val["x"])

    def build_model(self) -> PhotozNet:
        net = self.cfg.net()
        if self.cfg.init is not None:
            net.encoder.load_state_dict(init_encoder(self.cfg, self.member))
        return net

    def phases(self) -> list[Phase]:
        return [Phase(p.name, p.steps, p.lr, p.warmup) for p in self.cfg.phases]

    def batch(self, rng):
        idx = rng.integers(0, len(self.pool["z"]), self.cfg.data.batch_size)
        x = self.pool["x"][idx]
        if self.cfg.data.fresh_noise:  # no draws without it: old runs resume as they were
            noise = rng.standard_normal(x.shape, dtype=np.float32)
            x = x + noise * self.pool["inside"][idx][:, None]
        x = dihedral_batch(x, rng.integers(0, 8, len(idx)))
        if self.cfg.data.mask_fraction > 0:  # no draws without it: old runs resume as they were
            x[band_masks(rng, x.shape, self.cfg.data.mask_fraction)] = 0.0
        out = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self.pool["z"][idx])
        if "aux" in self.pool:
            out += (torch.from_numpy(self.pool["aux"][idx]),)
        return out

    def loss(self, model, batch, phase, gen):
        if len(batch) == 2:
            x, z = batch
            return {"total": mixture_nll(*model(x), z).mean()}
        x, z, t = batch
        w, mu, sd, a = model.forward_aux(x)
        nll, mse = mixture_nll(w, mu, sd, z).mean(), (a - t).square().mean()
        return {"total": nll + self.cfg.model.colour_aux * mse, "nll": nll, "aux_mse": mse}

    @torch.no_grad()
    def validate(self, model):
        from probcat.redshift.metrics import all_metrics
        from probcat.redshift.pdf import truncated_pdf

        dev = model_device(model)
        x, z = torch.from_numpy(self.val["x"]), torch.from_numpy(self.val["z"])
        outs = [model(x[i : i + 512].to(dev)) for i in range(0, len(x), 512)]
        w, mu, sd = (torch.cat([o[j] for o in outs]).cpu() for j in range(3))
        nll = float(mixture_nll(w, mu, sd, z).mean())
        m = all_metrics(truncated_pdf(w.numpy(), mu.numpy(), sd.numpy()), z.numpy())
        keep = ("bias", "sigma_iqr", "outlier_frac", "ks", "pit_coverage_68", "pit_coverage_95")
        out = {"total": nll, **{k: m[k] for k in keep}}
        if "aux" in self.val:
            a = torch.cat([model.forward_aux(x[i : i + 512].to(dev))[3].cpu()
                           for i in range(0, len(x), 512)])  # fmt: skip
            out["aux_mse"] = float((a - torch.from_numpy(self.val["aux"])).square().mean())
        if self.cfg.data.mask_fraction > 0:
            xm = torch.from_numpy(self.val_masked)
            outs = [model(xm[i : i + 512].to(dev)) for i in range(0, len(xm), 512)]
            wm, mum, sdm = (torch.cat([o[j] for o in outs]).cpu() for j in range(3))
            out["nll_masked"] = float(mixture_nll(wm, mum, sdm, z).mean())
        return out

    def finish(self, model, progress):
        model.symmetries = self.cfg.symmetries  # trained in one orientation at a time
        return fit_width_calibration(model, self.cfg, progress)

    def weights(self, model):
        return _weights(model, self.cfg)

    def describe_data(self):
        d, c = self.cfg.data, self.cfg
        out = {
            "train": f"{d.train_objects} gold-galaxy stamps (i < {MAG_GOLD}) from recipe blend "
            f"({d.scene_size} px), {d.population} banks, split=train, catalog_seed="
            f"{d.catalog_seed}, {d.bank_size} galaxies, depths {list(d.years)} yr, seed "
            f"[{c.seed}, 7]; batches with dihedral symmetries"
            + ("; noiseless stamps, fresh white noise each batch" if d.fresh_noise else ""),
            "validation": f"{d.val_objects} stamps, split=val, {d.val_bank_size} galaxies "
            f"(seed [{c.seed}, 99])",
        }
        if d.seeing_patterns:
            out["seeing"] = (
                f"{d.seeing_fraction:g} of the stamps (train and validation) from "
                f"{d.seeing_patterns} bank{'s' if d.seeing_patterns > 1 else ''} of "
                f"{d.seeing_bank_size or d.bank_size} galaxies "
                "whose bands' PSF FWHM are the survey's times these factors: "
                f"{np.round(seeing_patterns(d), 3).tolist()}"
            )
        if d.mask_fraction:
            out["masks"] = (
                f"{d.mask_fraction:g} of the training stamps with one to three bands masked "
                "(set to 0; whole band, half-plane, strip or disc: band_masks); validation "
                f"clean, and once more with every stamp masked (seed [{c.seed}, 98])"
            )
        if c.init is not None:
            out["init"] = {"weights": c.init, "sha256": load_init(c.init, "photoz").sha256,
                           "net": self.member}  # fmt: skip
        return out


def init_encoder(cfg: PhotozTrainConfig, member: int) -> dict:
    """The state of the net of ``cfg.init`` that member ``member`` starts from: its
    ensemble's net of that index, or its single net for every member."""
    net = load_init(cfg.init, "photoz").model
    if net.members != 1 and not 0 <= member < net.members:
        raise ProbcatValueError(
            f"init: {cfg.init} holds {net.members} nets, none for member {member}"
        )
    want, have = cfg.net().architecture, net.architecture  # an aux head starts afresh
    if have != want:
        raise ProbcatValueError(
            f"init: {cfg.init} does not fit the network of this config's model ({have})"
        )
    return (net.encoders[member] if net.members != 1 else net.encoder).state_dict()


def _weights(model: PhotozNet, cfg: PhotozTrainConfig) -> dict:
    """What a photo-z weights file holds besides the config and the fits."""
    return {
        "kind": PhotozTask.kind,
        "hparams": model.hparams,
        "state_dict": model.state_dict(),
        "survey": cfg.survey().to_dict(),
        "years": list(cfg.data.years),
    }


def calibration_detector(cfg: PhotozTrainConfig):
    """The detector of ``cfg.calibration``; a clear error for weights of another kind."""
    from probcat.api import load

    try:
        return load(cfg.calibration.detector, threads=cfg.threads, kind="detection")
    except ProbcatValueError as e:
        raise ProbcatValueError(f"calibration.detector: {e}") from None


@torch.no_grad()
def fit_width_calibration(model: PhotozNet, cfg: PhotozTrainConfig, progress=True) -> dict:
    """Fit ``model.sd_scale`` (one factor on every mixture width) on ``cfg.calibration``'s
    validation scenes at the positions its detector finds; the record for the manifest
    (``{}`` when ``calibration.scenes`` is 0)."""
    c = cfg.calibration
    if c.scenes == 0:
        return {}
    from probcat.nets.photoz import fit_sd_scale

    det = calibration_detector(cfg)
    model.eval()
    xs, zs = [], []
    for j, years in enumerate(cfg.data.years):
        sim = cfg.simulation("val", years, progress=progress)
        got = detected_gold(
            sim, det, c.scenes, np.random.default_rng([cfg.seed, 123, j]), stamp=cfg.model.stamp
        )
        xs.append(got["x"])
        zs.append(got["z"])
    x, z = np.concatenate(xs), np.concatenate(zs)
    model.sd_scale.fill_(1.0)
    outs = [model(torch.from_numpy(x[i : i + 512])) for i in range(0, len(x), 512)]
    w, m, sd = (torch.cat([o[j] for o in outs]).double().numpy() for j in range(3))
    scale = fit_sd_scale(w, m, sd, z)
    model.sd_scale.fill_(scale)
    return {
        "width_calibration": {
            "sd_scale": scale,
            "n": int(len(z)),
            "source": f"{c.scenes} validation scenes per depth (seed [{cfg.seed}, 123, "
            f"depth index]), {c.detector} MAP detections classified galaxy, matched within "
            "2 px to gold galaxies",
        }
    }


def _config_dict(cfg: PhotozTrainConfig) -> dict:
    """The config as runs record it; ``members`` and ``symmetries`` of 1, ``init`` None,
    ``data.mask_fraction`` 0, ``data.fresh_noise`` off, the ``data.seeing_*`` settings
    without seeing patterns, the default ``model.head`` and ``model.colour_aux`` 0 are left
    out (as runs recorded them before those settings, so they resume)."""
    from probcat.config import to_dict

    d = to_dict(cfg)
    for key, unset in (("members", 1), ("symmetries", 1), ("init", None)):
        if d.get(key) == unset:
            del d[key]
    for key in ("mask_fraction", "fresh_noise"):
        if not getattr(cfg.data, key):
            del d["data"][key]
    if not cfg.data.seeing_patterns:
        for key in ("seeing_patterns", "seeing_range", "seeing_fraction", "seeing_bank_size"):
            del d["data"][key]
    if tuple(cfg.model.head) == HEAD:
        del d["model"]["head"]
    if not cfg.model.colour_aux:
        del d["model"]["colour_aux"]
    return d


def train_photoz(
    cfg: PhotozTrainConfig,
    out: str | Path,
    *,
    cache_dir=None,
    progress: bool = True,
    command: str | None = None,
    stop_after: int | None = None,
    member: int | None = None,
    device=None,
) -> dict | None:
    """Train (or resume) and write ``photoz.pt`` and ``manifest.json`` into ``out``.

    With ``cfg.members > 1``: member ``k`` (seed ``cfg.seed + k``; its own training stamps)
    trains into ``out/member_<k>`` as a single net, each resumable; then the ensemble is
    assembled, its width calibration fitted, and written into ``out``. ``member``: train
    only that member (e.g. members in parallel on several machines) and return its
    manifest; a later call without it assembles. ``device``: where the steps run (default
    a GPU when present)."""
    choose_device(device)  # a device there is not: an error before the banks are built
    d, stamp = cfg.data, cfg.model.stamp
    check_memory(
        (d.train_objects + d.val_objects) * len(d.bands) * stamp**2 * 4 * POOL_COPIES,
        f"a stamp pool of {d.train_objects:,} training and {d.val_objects:,} validation "
        f"galaxies ({len(d.bands)} bands, {stamp} px)",
        "use fewer data.train_objects",
    )  # before the banks are built
    if cfg.calibration.scenes:  # before hours of training, not after
        calibration_detector(cfg)
    if cfg.init is not None:
        for k in range(cfg.members) if member is None else [member]:
            init_encoder(cfg, k)
    out = run_directory(out)

    def one(c: PhotozTrainConfig, run: Path, k: int = 0):
        task = PhotozTask(c, cache_dir=cache_dir, progress=progress, member=k)
        return fit(task, run, config=_config_dict(c), settings=c.settings(),
                   progress=progress, command=command, stop_after=stop_after,
                   device=device)  # fmt: skip

    if cfg.members == 1:
        return one(cfg, out)
    if member is not None and not 0 <= member < cfg.members:
        raise ProbcatValueError(f"member must lie in [0, {cfg.members}), got {member}")
    manifests = []
    for k in range(cfg.members) if member is None else [member]:
        sub = replace(cfg, members=1, symmetries=1, seed=cfg.seed + k)
        done = _finished(out / f"member_{k}", sub) or one(sub, out / f"member_{k}", k)
        if done is None:
            return None  # stopped early
        manifests.append(done)
    if member is not None:
        return manifests[0]
    return _assemble(cfg, out, manifests, progress, command)


def _finished(run: Path, cfg: PhotozTrainConfig) -> dict | None:
    """The manifest of a finished single-net run of ``cfg`` in ``run``, else None."""
    path = run / "manifest.json"
    if not (path.exists() and (run / "photoz.pt").exists()):
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("config") == _config_dict(cfg) else None


def _assemble(cfg: PhotozTrainConfig, out: Path, manifests: list[dict], progress, command):
    """The ensemble of the finished members, width-calibrated, written into ``out``."""
    from probcat.train.loop import write_run
    from probcat.weights import FORMAT, load

    nets = [load(out / f"member_{k}" / "photoz.pt", kind="photoz").model
            for k in range(cfg.members)]  # fmt: skip
    model = PhotozNet.ensemble(nets, cfg.symmetries)
    fits = fit_width_calibration(model, cfg, progress)
    config = _config_dict(cfg)
    weights = {**_weights(model, cfg), "format": FORMAT, "config": config, **fits}
    members = [
        {
            "seed": cfg.seed + k,
            "sha256": m["sha256"],
            "steps": m.get("steps"),
            "training_s": m.get("training_s"),
            "final_val": m.get("final_val"),
        }
        for k, m in enumerate(manifests)
    ]
    manifest = {
        "kind": PhotozTask.kind,
        "weights": "photoz.pt",
        "config": config,
        "data": {"members": [m.get("data") for m in manifests]},
        "training_s": round(sum(m["training_s"] or 0 for m in members), 1),
        "steps": sum(m["steps"] or 0 for m in members),
        "members": members,
        **fits,
    }
    return write_run(out, "photoz", weights, manifest, command)
