"""The galaxy autoencoder and the deblending encoder as training tasks (paper 000 §3.4).

``stage: autoencoder`` trains encoder and decoder on isolated, exactly centred galaxies
(recipe ``single``, 53 px). ``stage: deblender`` trains a new encoder on blended scenes
(recipe ``tiles``): a 49-px crop centred, within a pixel, on the true centroid of the
central galaxy goes through the encoder and the autoencoder's frozen decoder, and the
reconstruction is compared with the same galaxy redrawn alone and exactly centred. The
deblender's convolutions start from the autoencoder's encoder.

Every batch is fresh (new scenes from the training-split banks), and the loss is eq. 11
of paper 000 in noise-sigma units. The target is the noiseless image rather than the
noisy one: for Gaussian noise the two losses differ by a constant in expectation (the
same minimiser), and the noiseless target has lower-variance gradients. The validation
set reports eq. 11 against the noisy images too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from probcat.config import load_yaml
from probcat.errors import ProbcatValueError
from probcat.infer.deblend import crop_nearest
from probcat.nets.deblend import CROP, STAMP, GalaxyModel, eq11_loss
from probcat.runtime import choose_device
from probcat.simulate.datasets import Simulation, SimulationConfig
from probcat.survey import Survey
from probcat.train.loop import (
    LoopSettings,
    Phase,
    check_run_config,
    fit_config,
    model_device,
    run_directory,
)

__all__ = [
    "DeblendTrainConfig",
    "DeblendData",
    "DeblendModel",
    "DeblendPhase",
    "DeblendFluxError",
    "DeblendTask",
    "train_deblend",
    "load_deblend_config",
    "crop_centered",
    "fit_flux_error",
    "record_flux_error",
]


@dataclass(frozen=True)
class DeblendData:
    """Training images: survey and the training/validation source banks."""

    bands: str = "i"
    years: float = 10.0
    population: str = "parametric"
    bank_size: int = 20000
    val_bank_size: int = 4000
    catalog_seed: int = 0
    batch_size: int = 128
    val_images: int = 512


@dataclass(frozen=True)
class DeblendModel:
    """The encoder/decoder (:class:`~probcat.nets.deblend.GalaxyModel`)."""

    latent: int = 8
    channels: int = 32


@dataclass(frozen=True)
class DeblendPhase:
    name: str = "main"
    steps: int = 6000
    lr: float = 1e-3
    warmup: int = 200


@dataclass(frozen=True)
class DeblendFluxError:
    """The flux-error fit after a deblender's training (:func:`fit_flux_error`): ``scenes``
    ``central`` validation scenes (0: none) of a ``bank_size``-galaxy validation bank,
    ``samples`` posterior catalog samples of ``detector`` each, seed ``seed``."""

    detector: str = "detection_lsst_i"
    scenes: int = 300
    samples: int = 50
    seed: int = 17
    bank_size: int = 20000


@dataclass(frozen=True)
class DeblendTrainConfig:
    """One run: ``stage`` autoencoder or deblender; the deblender names the autoencoder
    weights (registered name or path) whose decoder it uses, and after training fits its
    flux-error scale (``flux_error``)."""

    stage: Literal["autoencoder", "deblender"] = "autoencoder"
    autoencoder: str = "autoencoder_lsst_i"
    data: DeblendData = field(default_factory=DeblendData)
    model: DeblendModel = field(default_factory=DeblendModel)
    flux_error: DeblendFluxError = field(default_factory=DeblendFluxError)
    phases: tuple[DeblendPhase, ...] = (DeblendPhase(),)
    seed: int = 0
    val_every: int = 500
    checkpoint_every: int = 250
    threads: int = 2

    def __post_init__(self):
        d = self.data
        if self.model.channels % 2:
            raise ProbcatValueError(f"model.channels must be even, got {self.model.channels}")
        counts = {
            "data.bank_size": d.bank_size,
            "data.val_bank_size": d.val_bank_size,
            "data.batch_size": d.batch_size,
            "data.val_images": d.val_images,
            "model.latent": self.model.latent,
            "model.channels": self.model.channels,
            "val_every": self.val_every,
            "checkpoint_every": self.checkpoint_every,
        }
        fe = self.flux_error
        if fe.scenes:
            counts.update({"flux_error.samples": fe.samples, "flux_error.bank_size": fe.bank_size})
        if fe.scenes < 0:
            raise ProbcatValueError(f"flux_error.scenes must be >= 0, got {fe.scenes}")
        seeds = {"seed": self.seed, "data.catalog_seed": d.catalog_seed, "flux_error.seed": fe.seed}
        check_run_config(d.bands, d.years, self.phases, counts, self.threads, seeds)

    def survey(self) -> Survey:
        return Survey.lsst(bands=self.data.bands, years=self.data.years)

    def settings(self) -> LoopSettings:
        return LoopSettings(self.seed, self.val_every, self.checkpoint_every, self.threads)

    def simulation(self, split: str, cache_dir=None, progress=True) -> Simulation:
        d = self.data
        recipe = "single" if self.stage == "autoencoder" else "tiles"
        cfg = SimulationConfig(
            recipe=recipe,
            n=1,
            bands=d.bands,
            population=d.population,
            split=split,
            years=d.years,
            bank_size=d.bank_size if split == "train" else d.val_bank_size,
            catalog_seed=d.catalog_seed,
        )
        return Simulation(cfg, cache_dir=cache_dir, progress=progress)


def load_deblend_config(path, steps: int | None = None) -> DeblendTrainConfig:
    """Read a YAML config (strict); ``steps`` overrides the first phase's."""
    cfg = load_yaml(DeblendTrainConfig, path)
    if steps is not None:
        cfg = replace(cfg, phases=(replace(cfg.phases[0], steps=steps), *cfg.phases[1:]))
    return cfg


def crop_centered(image: np.ndarray, x: float, y: float, size: int) -> np.ndarray:
    """``(bands, size, size)`` crop of ``image`` centred on the pixel nearest ``(x, y)``
    (pixel centres at integers), zero outside the image."""
    return crop_nearest(image, x, y, size)


def check_inputs(cfg: DeblendTrainConfig):
    """The weights a deblender run of ``cfg`` reads, checked before any bank is built or
    step taken: the flux-error fit's detector, and the autoencoder (its kind and bands),
    which is returned (None for the autoencoder stage)."""
    if cfg.stage == "deblender" and cfg.flux_error.scenes:
        from probcat.api import load as load_model

        load_model(cfg.flux_error.detector, kind="detection")
    if cfg.stage != "deblender":
        return None
    from probcat.weights import load

    ae = load(cfg.autoencoder, kind="autoencoder")
    if ae.model.hparams["bands"] != len(cfg.data.bands):
        raise ProbcatValueError(
            f"{cfg.autoencoder}: autoencoder for {ae.model.hparams['bands']} bands, "
            f"config has {len(cfg.data.bands)}"
        )
    return ae


class DeblendTask:
    """Fresh batches, a fixed validation set and eq. 11 (:class:`probcat.train.loop.Task`)."""

    def __init__(self, cfg: DeblendTrainConfig, cache_dir=None, progress=True):
        self.cfg = cfg
        self.kind = cfg.stage
        self.cache_dir = cache_dir
        ae = check_inputs(cfg)  # before the banks are built
        self.sigma = cfg.survey().noise_sigma.astype(np.float32)[:, None, None]
        self.train_sim = cfg.simulation("train", cache_dir, progress)
        val_sim = cfg.simulation("val", cache_dir, progress)
        rng = np.random.default_rng([cfg.seed, 99])
        self.val = self._batch(val_sim, rng, cfg.data.val_images, noisy_target=True)
        self.decoder_state = None
        self.encoder_init = None
        if ae is not None:
            self.autoencoder = {"name": cfg.autoencoder, "sha256": ae.sha256}
            self.ae_hparams = ae.model.hparams
            self.decoder_state = ae.model.decoder.state_dict()
            self.encoder_init = {
                k: v for k, v in ae.model.encoder.state_dict().items() if k.startswith("convs.")
            }

    def _batch(self, sim: Simulation, rng, n: int, noisy_target: bool = False):
        xs, ts, noisy = [], [], []
        for _ in range(n):
            scene, extras = sim.draw(rng, targets=True)
            if self.cfg.stage == "autoencoder":
                xs.append(scene.image)
                ts.append(scene.noiseless)
                noisy.append(scene.image)
            else:
                cat = scene.catalog
                xs.append(crop_centered(scene.image, cat["x"][0], cat["y"][0], CROP))
                ts.append(extras["centered_noiseless"])
                noisy.append(extras["centered"])
        x = torch.from_numpy(np.stack(xs) / self.sigma)
        t = torch.from_numpy(np.stack(ts) / self.sigma)
        if noisy_target:
            return x, t, torch.from_numpy(np.stack(noisy) / self.sigma)
        return x, t

    def build_model(self) -> GalaxyModel:
        m, nb = self.cfg.model, len(self.cfg.data.bands)
        if self.cfg.stage == "autoencoder":
            return GalaxyModel(STAMP, STAMP, nb, m.latent, m.channels)
        h = self.ae_hparams
        model = GalaxyModel(CROP, h["out_size"], nb, h["latent"], h["channels"])
        model.decoder.load_state_dict(self.decoder_state)
        model.encoder.load_state_dict(self.encoder_init, strict=False)
        return model

    def phases(self) -> list[Phase]:
        train = ("encoder.",) if self.cfg.stage == "deblender" else ()
        return [Phase(p.name, p.steps, p.lr, p.warmup, trainable=train) for p in self.cfg.phases]

    def batch(self, rng):
        return self._batch(self.train_sim, rng, self.cfg.data.batch_size)

    def loss(self, model, batch, phase, gen):
        x, t = batch
        return {"total": eq11_loss(model(x), t)}

    def validate(self, model):
        x, t, noisy = self.val
        dev = model_device(model)
        recon = torch.cat([model(x[i : i + 256].to(dev)).cpu() for i in range(0, len(x), 256)])
        flux_t = t.flatten(1).sum(1)
        rel = ((recon.flatten(1).sum(1) - flux_t) / flux_t).abs()
        return {
            "total": float(eq11_loss(recon, t)),
            "eq11_noisy": float(eq11_loss(recon, noisy)),
            "chi2_per_pixel": float(((recon - t) ** 2).mean()),
            "flux_median_abs_rel": float(rel.median()),
        }

    def finish(self, model, progress):
        """A deblender's autoencoder record and its flux-error fit (``flux_error``)."""
        if self.cfg.stage != "deblender":
            return {}
        out = {"autoencoder": self.autoencoder}
        fe = self.cfg.flux_error
        if fe.scenes:
            from probcat.api import Deblender

            deb = Deblender(model, self.cfg.survey(), threads=self.cfg.threads)
            out["flux_error"] = fit_flux_error(
                deb, fe.detector, n_scenes=fe.scenes, n_samples=fe.samples, seed=fe.seed,
                bank_size=fe.bank_size, cache_dir=self.cache_dir, progress=progress,
            )  # fmt: skip
        return out

    def weights(self, model):
        return {
            "kind": self.kind,
            "hparams": model.hparams,
            "state_dict": model.state_dict(),
            "survey": self.cfg.survey().to_dict(),
        }

    def describe_data(self):
        d, c = self.cfg.data, self.cfg
        recipe = "single" if c.stage == "autoencoder" else "tiles"
        return {
            "train": f"recipe {recipe}: {d.population} banks, split=train, "
            f"catalog_seed={d.catalog_seed}, {d.bank_size} galaxies, fresh images from seed "
            f"{c.seed}",
            "validation": f"split=val, {d.val_bank_size} galaxies, {d.val_images} images "
            f"(seed [{c.seed}, 99])",
        }


def train_deblend(
    cfg: DeblendTrainConfig,
    out: str | Path,
    *,
    cache_dir=None,
    progress: bool = True,
    command: str | None = None,
    stop_after: int | None = None,
    device=None,
) -> dict | None:
    """Train (or resume) and write ``<stage>.pt`` and ``manifest.json`` into ``out``;
    ``device``: where the steps run (default a GPU when present)."""
    choose_device(device)  # a device there is not: an error before the banks are built
    check_inputs(cfg)
    run_directory(out)
    task = DeblendTask(cfg, cache_dir=cache_dir, progress=progress)
    return fit_config(
        task, cfg, out, progress=progress, command=command, stop_after=stop_after, device=device
    )


def fit_flux_error(
    deblender,
    detector,
    *,
    n_scenes: int = 300,
    n_samples: int = 50,
    seed: int = 17,
    bank_size: int = 20000,
    cache_dir=None,
    progress: bool = True,
) -> dict:
    """The flux-error model's ``scale`` (:func:`probcat.measure.flux_sd`) of ``deblender``
    (a :class:`~probcat.api.Deblender`, or its registered name or weights file) with
    ``detector``'s posterior catalog samples, one for each way of handing the sources
    their light (:data:`probcat.infer.deblend.METHODS`): on ``n_scenes`` ``central``
    validation scenes (validation galaxies of a ``bank_size`` bank, seed ``seed``; the
    deblender's bands and depth), the central galaxy's flux in each of ``n_samples`` samples
    and its neighbours' light in the aperture; the scale under which the noiseless aperture
    flux has the highest mean log posterior density
    (:func:`probcat.measure.fit_contamination_scale`). Returns the manifest record:
    ``scales`` per method, ``scale``, the ``subtract`` one (what older readers use), and the
    ``detector``."""
    import warnings

    from tqdm.auto import tqdm

    from probcat.api import Deblender, load
    from probcat.infer.deblend import METHODS, REFINE_PASSES, sample_fluxes
    from probcat.measure import (
        APERTURE_RADIUS,
        aperture_sums,
        fit_contamination_scale,
        flux_posterior,
    )

    det = load(detector, kind="detection")
    deb = deblender if isinstance(deblender, Deblender) else load(deblender, kind="deblender")
    sim = Simulation(
        SimulationConfig(
            recipe="central", n=n_scenes, seed=seed, split="val", bank_size=bank_size,
            bands="".join(deb.survey.band_names), years=deb.survey.depth_years,
        ),
        cache_dir=cache_dir,
        progress=False,
    )  # fmt: skip
    sigma = deb.survey.noise_sigma.astype(np.float32)
    noise_sd = float(sigma[0]) * np.sqrt(np.pi * APERTURE_RADIUS**2)
    vals = {m: [] for m in METHODS}
    contam = {m: [] for m in METHODS}
    truth = []
    for i in tqdm(range(n_scenes), desc="flux-error scenes", disable=not progress):
        scene, _ = sim.scene(i)
        cat = scene.catalog
        tx, ty = float(cat["x"][0]), float(cat["y"][0])
        central = sim.csim.compose(cat.select([0]))[0]
        truth.append(float(aperture_sums(central, tx, ty)[0][0]))
        with warnings.catch_warnings():  # a bright central galaxy: its light is not noise
            warnings.simplefilter("ignore")
            res = det.detect(scene.image, samples=n_samples, seed=i)
        gal = [{"x": s["x"], "y": s["y"], "galaxy": np.ones(len(s), bool)} for s in res.samples]
        v, c = sample_fluxes(
            deb.net, scene.image, sigma, gal, [tx], [ty], method=METHODS, contamination=True
        )
        for m in METHODS:
            vals[m].append(v[m][0, :, 0])
            contam[m].append(c[m][0, :, 0])
    truth = np.array(truth)
    scales, cover = {}, {}
    for m in METHODS:
        v, c = np.array(vals[m]), np.array(contam[m])
        scales[m] = fit_contamination_scale(v, truth, noise_sd, c)
        cover[m] = {}
        for name, a in (("with", scales[m]), ("without", 0.0)):
            post = flux_posterior(v, noise_sd, c, a)
            ok = np.isfinite(post["q16"])
            cover[m][name] = [
                float(np.mean((truth[ok] >= post[lo][ok]) & (truth[ok] <= post[hi][ok])))
                for lo, hi in (("q16", "q84"), ("q025", "q975"))
            ]
    return {
        "scale": scales["subtract"],
        "scales": scales,
        "n": int(np.isfinite(np.array(vals["subtract"])).any(1).sum()),
        "validation_coverage_68_95": {m: cover[m]["with"] for m in METHODS},
        "validation_coverage_68_95_without": {m: cover[m]["without"] for m in METHODS},
        "source": f"{n_scenes} central validation scenes (split=val, seed {seed}, "
        f"{bank_size}-galaxy bank), "
        f"{n_samples} posterior samples of {detector} each, deblended with refinement "
        f"passes: {REFINE_PASSES}, amplitudes fitted; noiseless aperture flux of the central "
        "galaxy; highest mean log posterior density, for each method",
        "refine_passes": REFINE_PASSES,
        "amplitudes_fitted": True,
        "detector": str(detector),
    }


def record_flux_error(
    deblender: str, manifest_path, detector: str, command: str | None = None, **kwargs
) -> dict:
    """:func:`fit_flux_error` recorded in the manifest at ``manifest_path`` (atomically; the
    weights file is untouched), with the ``command`` that ran it and the git commit.
    Returns the record."""
    from probcat.provenance import git_commit
    from probcat.train.loop import record_in_manifest

    rec = fit_flux_error(deblender, detector, **kwargs)
    rec.update(command=command, git_commit=git_commit())
    record_in_manifest(manifest_path, "flux_error", rec)
    return rec
