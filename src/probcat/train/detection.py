"""Training the detection/classification encoder by FAVI on fresh composed scenes.

Every step draws a new batch of ``blend``-like scenes from the training-split source bank
(galaxies disjoint from validation and test), tiles their catalogs, and minimises eq. 10 of
paper 000. Checkerboard training (:func:`checkerboard_loss`): on features computed once per
image, the loss is taken in every decoding state, i.e. every tile's marginal and each tile
group given the true catalog of the groups decoded before it; the classifier always sees
true locations, as in paper 000 section 3.3.

An optional second phase of ``finetune_steps`` (warm restart of the learning rate at
``finetune_lr``) can condition the decided groups on locations drawn from the network's own
marginal posterior instead of the true ones (``finetune_cond_locs="sampled"``), the state
that sampling and MAP decoding actually put the later groups in.

A location refiner (``loc_refine``) is trained either jointly in that fine-tuning phase, or,
with ``refine_steps > 0``, alone in a third phase on the frozen network (warm restart at
``refine_lr``): the first two phases are then those of the same config without it, so a
finished run resumes into a config that adds the refiner.

Checkpoints are written atomically every ``checkpoint_every`` steps and a rerun with the
same output directory resumes from the last one; a first-phase checkpoint also resumes into
a config that adds a fine-tuning phase (the first phase is the same computation).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from probcat.catalog import TileCatalog, atomic_write
from probcat.errors import ProbcatValueError
from probcat.nets.detection import N_GROUPS, DetectionNet, TileOutput, tile_groups
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.scene import SceneConfig, SceneSimulator
from probcat.survey import Survey
from probcat.train.losses import favi_detection_loss

__all__ = ["DetectionTrainConfig", "train_detection", "load_config", "calibrate_run"]


@dataclass(frozen=True)
class DetectionTrainConfig:
    """Settings of one training run (stored in the checkpoint and the manifest)."""

    bands: str = "i"
    years: float = 10.0
    population: str = "parametric"
    bank_size: int = 20000
    val_bank_size: int = 4000
    catalog_seed: int = 0
    image_size: int = 100
    margin: int = 8
    batch_size: int = 32
    steps: int = 8000
    lr: float = 2e-3
    warmup: int = 200
    seed: int = 0
    val_scenes: int = 256
    val_every: int = 500
    checkpoint_every: int = 250
    threads: int = 2
    stem_channels: int = 12
    channels: int = 64
    n_blocks: int = 2
    stem: str = "conv"
    classifier: str = "stamp"
    proximity: bool = True
    checkerboard: str = "all"
    cond_locs: str = "true"
    finetune_steps: int = 0
    finetune_lr: float = 5e-4
    finetune_cond_locs: str = "sampled"
    loc_refine: bool = False
    refiner_lr_scale: float = 4.0
    refine_steps: int = 0
    refine_lr: float = 2e-3
    calibration_scenes: int = 512
    merge_scenes: int = 256
    tile_size: int = 5

    def __post_init__(self):
        if self.image_size % self.tile_size:
            raise ProbcatValueError(f"image_size must be a multiple of tile_size {self.tile_size}")
        for name in ("cond_locs", "finetune_cond_locs"):
            if getattr(self, name) not in ("true", "sampled"):
                raise ProbcatValueError(
                    f"{name} must be 'true' or 'sampled', got {getattr(self, name)!r}"
                )
        for name in ("finetune_steps", "refine_steps"):
            if getattr(self, name) < 0:
                raise ProbcatValueError(f"{name} must be >= 0")
        if self.refine_steps and not self.loc_refine:
            raise ProbcatValueError("refine_steps train the location refiner: set loc_refine")
        if self.joint_refiner and (self.finetune_steps == 0 or self.checkerboard != "all"):
            raise ProbcatValueError(
                "loc_refine is trained in the fine-tuning phase of checkerboard 'all': "
                "set finetune_steps > 0, or refine_steps > 0 to train it alone afterwards"
            )
        for name in ("batch_size", "steps", "bank_size", "val_scenes", "threads"):
            if getattr(self, name) < 1:
                raise ProbcatValueError(f"{name} must be >= 1")

    @property
    def joint_refiner(self) -> bool:
        """The location refiner is trained jointly in the fine-tuning phase."""
        return self.loc_refine and self.refine_steps == 0

    @property
    def total_steps(self) -> int:
        return self.steps + self.finetune_steps + self.refine_steps

    def survey(self) -> Survey:
        return Survey.lsst(bands=self.bands, years=self.years)

    def net(self) -> DetectionNet:
        return DetectionNet(
            n_bands=len(self.bands),
            tile_size=self.tile_size,
            stem_channels=self.stem_channels,
            channels=self.channels,
            n_blocks=self.n_blocks,
            stem=self.stem,
            classifier=self.classifier,
            proximity=self.proximity,
            loc_refine=self.loc_refine,
        )


def load_config(path: str | Path | None, **overrides) -> DetectionTrainConfig:
    """Read a YAML config; unknown keys are an error (they would be silently ignored)."""
    import yaml

    data = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ProbcatValueError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ProbcatValueError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(data, dict):
            raise ProbcatValueError(f"{path}: expected a mapping of settings")
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(DetectionTrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProbcatValueError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
    return DetectionTrainConfig(**data)


def _simulator(cfg: DetectionTrainConfig, split: str, cache_dir, progress) -> SceneSimulator:
    """Scenes of the training layout on the ``split`` ("train" or "val") source bank."""
    n = cfg.bank_size if split == "train" else cfg.val_bank_size
    bank = SourceBank.load_or_build(
        cfg.survey(),
        BankConfig(
            population=cfg.population, split=split, n_galaxies=n, catalog_seed=cfg.catalog_seed
        ),
        cache_dir=cache_dir,
        progress=progress,
    )
    return SceneSimulator(bank, SceneConfig(cfg.image_size, cfg.image_size, margin=cfg.margin))


class _Data:
    """Fresh training batches and a fixed validation set."""

    def __init__(self, cfg: DetectionTrainConfig, cache_dir=None, progress=True):
        survey = cfg.survey()
        self.sigma = survey.noise_sigma.astype(np.float32)[:, None, None]
        self.train = _simulator(cfg, "train", cache_dir, progress)
        self.val_sim = _simulator(cfg, "val", cache_dir, progress)
        rng = np.random.default_rng([cfg.seed, 99])
        imgs, cats = self.val_sim.sample_batch(rng, cfg.val_scenes)
        self.val = (torch.from_numpy(imgs / self.sigma), TileCatalog.from_full(cats, cfg.tile_size))
        self.tile_size = cfg.tile_size

    def batch(self, rng, n):
        imgs, cats = self.train.sample_batch(rng, n)
        return torch.from_numpy(imgs / self.sigma), TileCatalog.from_full(cats, self.tile_size)


def checkerboard_loss(
    net: DetectionNet,
    x: torch.Tensor,
    truth: TileCatalog,
    gen: torch.Generator | None = None,
    states: str = "all",
    cond_locs: str = "true",
    refine: bool = False,
) -> dict[str, torch.Tensor]:
    """Eq. 10 under checkerboard conditioning.

    ``states="all"``: every decoding state of every image, on the backbone features computed
    once: the marginal of every tile (nothing decided), and for ``g = 1, 2, 3`` the tiles of
    group ``g`` given the true catalog of groups ``< g``, which is exactly the state in
    which :func:`probcat.infer.detect.decode` decides them. Each source is classified from
    the features of the pass that decides its tile. ``states="random"`` (older weights): a
    random number of groups decided per image, loss on all undecided tiles.

    ``cond_locs="sampled"`` (``states="all"`` only): the decided groups are conditioned on
    the true counts but on locations drawn from the network's own marginal location
    posterior (detached), which is what :func:`~probcat.infer.detect.decode` feeds the later
    groups. Trained on exact true locations, the conditional reads a decided source drawn
    0.5 px away from the light as a sign of a second source and makes doubles at tile edges.

    ``refine`` (``loc_refine`` networks, the fine-tuning phase): adds the loss of the
    location refiner (:meth:`~probcat.nets.detection.DetectionNet.refine_at`), the normal
    negative log-likelihood of each true position given a stamp centred on a proposal drawn
    from its tile's marginal location posterior (jittered by ``REFINE_JITTER`` px, so that
    proposals a neighbouring tile would make are covered too); with ``cond_locs="sampled"``
    the decided groups are then conditioned on the refined means, as decoding does.
    """
    if states == "all":
        return _all_states_loss(
            net, x, truth, gen, sampled_locs=cond_locs == "sampled", refine=refine
        )
    if states != "random":
        raise ProbcatValueError(f"checkerboard states must be 'all' or 'random', got {states!r}")
    feats = net.features(x)
    b, _, nty, ntx = feats.shape
    m = torch.randint(0, N_GROUPS, (b, 1, 1), generator=gen)
    decided = tile_groups(nty, ntx)[None] < m
    out = net.heads(
        feats,
        decided,
        truth.n_sources,
        truth.locs,
        type_locs=truth.locs,
        image=x,
        type_mask=truth.n_sources > 0,
    )
    return favi_detection_loss(out, truth, mask=~decided)


def _all_states_loss(
    net: DetectionNet,
    x: torch.Tensor,
    truth: TileCatalog,
    gen=None,
    sampled_locs=False,
    refine=False,
):
    feats = net.features(x)
    b, _, nty, ntx = feats.shape
    groups = tile_groups(nty, ntx, feats.device)[None].expand(b, -1, -1)
    total, h_type, cond = None, None, truth.locs
    for g in range(N_GROUPS):
        decided = groups < g
        h = net.trunk(feats, decided, truth.n_sources, cond)
        out = TileOutput(*net.detection_params(h), torch.zeros(b, nty, ntx))
        if g == 0 and (sampled_locs or refine):
            with torch.no_grad():
                drawn = out.sample_locs(gen)
            if refine:
                refine_nll, drawn = _refine_loss(net, x, truth, drawn, gen)
            if sampled_locs:
                cond = drawn
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
    if refine:
        total["refine"] = refine_nll
        total["total"] = total["total"] + refine_nll
    return total


REFINE_JITTER = 0.5  # px


def _refine_loss(net: DetectionNet, x, truth: TileCatalog, drawn, gen):
    """Normal NLL of the true positions under the refiner, from stamps centred on the
    (jittered) proposals ``drawn`` of the tiles holding a source, summed and averaged over
    images; and ``drawn`` with those tiles' locations replaced by the refined means
    (detached): the later groups are conditioned on the refiner's best position, not on a
    draw of its width, so that a source decided next to a tile stays decisive for it."""
    b, ty, tx = torch.nonzero(truth.n_sources > 0, as_tuple=True)
    if len(b) == 0:
        return x.new_zeros(()), drawn
    jitter = torch.randn(len(b), 2, generator=gen) * (REFINE_JITTER / net.tile_size)
    mean, logvar = net.refine_at(b, ty, tx, drawn[b, ty, tx] + jitter, x)
    target = truth.locs[b, ty, tx]
    nll = 0.5 * ((target - mean) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))
    refined = drawn.index_put((b, ty, tx), mean.detach())
    return nll.sum() / x.shape[0], refined


def refiner_loss(
    net: DetectionNet, x: torch.Tensor, truth: TileCatalog, gen=None
) -> dict[str, torch.Tensor]:
    """The location refiner's loss alone (:func:`_refine_loss`, proposals drawn from the
    tiles' marginal posterior) on the frozen rest of the network (run it in eval mode)."""
    with torch.no_grad():
        out = TileOutput(*net.detection_params(net.trunk(net.features(x))), None)
        drawn = out.sample_locs(gen)
    nll, _ = _refine_loss(net, x, truth, drawn, gen)
    return {"refine": nll, "total": nll}


@torch.no_grad()
def validate(net: DetectionNet, x: torch.Tensor, truth: TileCatalog) -> dict[str, float]:
    """Marginal (nothing decided) loss parts and detection accuracy on the validation set."""
    net.eval()
    parts = {k: 0.0 for k in ("total", "count", "loc", "type")}
    n_img = x.shape[0]
    for i in range(0, n_img, 64):
        sub = TileCatalog(
            truth.n_sources[i : i + 64],
            truth.locs[i : i + 64],
            {k: v[i : i + 64] for k, v in truth.params.items()},
            truth.tile_size,
            truth.image_shape,
        )
        xi = x[i : i + 64]
        out = net.heads(net.features(xi), type_locs=sub.locs, image=xi, type_mask=sub.n_sources > 0)
        for k, v in favi_detection_loss(out, sub).items():
            parts[k] += float(v) * sub.n_sources.shape[0] / n_img
        if net.loc_refine:
            gen = torch.Generator().manual_seed(i)
            nll = float(refiner_loss(net, xi, sub, gen)["refine"])
            parts["refine"] = parts.get("refine", 0.0) + nll * sub.n_sources.shape[0] / n_img
    net.train()
    return parts


# settings of the refiner-only third phase: a checkpoint of the first two phases resumes
# into a config that adds or changes them
REFINE_KEYS = ("loc_refine", "refiner_lr_scale", "refine_steps", "refine_lr")
# settings of the later phases: a first-phase checkpoint resumes into them
FINETUNE_KEYS = ("finetune_steps", "finetune_lr", "finetune_cond_locs", *REFINE_KEYS)


def _restart(lr: float, k: int, n: int) -> float:
    """Warm restart at ``lr``, step ``k`` of ``n``: linear warm-up, cosine decay."""
    warm = min(100, n)
    if k < warm:
        return lr * (k + 1) / warm
    p = (k - warm) / max(n - warm, 1)
    return lr * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def _lr(cfg: DetectionTrainConfig, step: int) -> float:
    if step >= cfg.steps + cfg.finetune_steps and cfg.refine_steps:  # third phase
        return _restart(cfg.refine_lr, step - cfg.steps - cfg.finetune_steps, cfg.refine_steps)
    if step >= cfg.steps:  # second phase
        return _restart(cfg.finetune_lr, step - cfg.steps, cfg.finetune_steps)
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def _compatible(saved: dict, cfg: DetectionTrainConfig, step: int) -> bool:
    """Can a checkpoint written with config ``saved`` at ``step`` resume under ``cfg``?
    Settings added since it was written take their defaults; a first-phase checkpoint
    resumes into a config that only adds or changes the later phases, and a checkpoint of
    the first two phases (no refiner trained in them) into one that only adds or changes a
    refiner-only third phase."""
    now = asdict(cfg)
    saved = {**asdict(DetectionTrainConfig()), **saved}
    free: tuple[str, ...] = ()
    if step <= cfg.steps:
        free = FINETUNE_KEYS
    elif step <= cfg.steps + cfg.finetune_steps and cfg.refine_steps:
        joint_before = saved["loc_refine"] and not saved["refine_steps"]
        free = () if joint_before else REFINE_KEYS
    return all(saved[k] == now[k] for k in now if k not in free)


def _save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def train_detection(
    cfg: DetectionTrainConfig,
    out: str | Path,
    *,
    cache_dir=None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train (or resume) and write ``detection.pt`` and ``manifest.json`` into ``out``."""
    from tqdm.auto import tqdm

    from probcat.provenance import provenance

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = _Data(cfg, cache_dir=cache_dir, progress=progress)
    net = cfg.net()
    # the location refiner (fine-tuning phase) gets a parameter group of its own, so that
    # a first-phase checkpoint without it resumes into a config that adds it
    new = {k for k in dict(net.named_parameters()) if k.startswith("refiner.")}
    opt = torch.optim.Adam([p for k, p in net.named_parameters() if k not in new], lr=cfg.lr)
    extra = {"params": [p for k, p in net.named_parameters() if k in new]}
    rng = np.random.default_rng([cfg.seed, 1])
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history, elapsed = 0, [], 0.0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if not _compatible(state["config"], cfg, state["step"]):
            raise ProbcatValueError(f"{ckpt}: checkpoint of a different config; use another --out")
        missing, unexpected = net.load_state_dict(state["model"], strict=False)
        if unexpected or set(missing) - new:
            raise ProbcatValueError(
                f"{ckpt}: checkpoint does not fit the network; use another --out"
            )
        if new and len(state["optimizer"]["param_groups"]) == 2:
            opt.add_param_group(extra)
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_rng"])
        step, history, elapsed = state["step"], state["history"], state["elapsed"]
    if new and len(opt.param_groups) == 1:
        opt.add_param_group(extra)
    net.train()
    total = cfg.total_steps
    bar = tqdm(total=total, initial=step, desc="training detection", disable=not progress)
    t0 = time.perf_counter() - elapsed
    running = None
    while step < total:
        third = step >= cfg.steps + cfg.finetune_steps
        for k, g in enumerate(opt.param_groups):  # group 1: the new location refiner
            scale = cfg.refiner_lr_scale if k == 1 and not third else 1.0
            g["lr"] = _lr(cfg, step) * scale
        x, truth = data.batch(rng, cfg.batch_size)
        if third:  # the refiner alone, the rest frozen
            net.eval()
            loss = refiner_loss(net, x, truth, gen)
        else:
            cond_locs = cfg.cond_locs if step < cfg.steps else cfg.finetune_cond_locs
            loss = checkerboard_loss(
                net,
                x,
                truth,
                gen,
                states=cfg.checkerboard,
                cond_locs=cond_locs,
                refine=cfg.joint_refiner and step >= cfg.steps,
            )
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        step += 1
        value = float(loss["total"].detach())
        new_phase = step in (cfg.steps + 1, cfg.steps + cfg.finetune_steps + 1)
        running = value if running is None or new_phase else 0.98 * running + 0.02 * value
        bar.update()
        bar.set_postfix(loss=f"{running:.2f}")
        if step % cfg.val_every == 0 or step in (cfg.steps, total):
            val = validate(net, *data.val)
            history.append(
                {
                    "step": step,
                    "train_loss": running,
                    "val": val,
                    "elapsed_s": time.perf_counter() - t0,
                }
            )
            refine = f", refine {val['refine']:.3f}" if "refine" in val else ""
            bar.write(
                f"step {step}: train {running:.3f}  val {val['total']:.3f} "
                f"(count {val['count']:.3f}, loc {val['loc']:.3f}, type {val['type']:.3f}"
                f"{refine})"
            )
        if step % cfg.checkpoint_every == 0 or step in (
            cfg.steps,
            cfg.total_steps - cfg.refine_steps,
            total,
        ):
            _save_checkpoint(
                ckpt,
                {
                    "config": asdict(cfg),
                    "model": net.state_dict(),
                    "optimizer": opt.state_dict(),
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": gen.get_state(),
                    "step": step,
                    "history": history,
                    "elapsed": time.perf_counter() - t0,
                },
            )
    bar.close()
    survey = cfg.survey()
    merge, calibration = _fit_decoding(net, cfg, cfg.calibration_scenes, data.val_sim, progress)
    weights = {
        "kind": "detection",
        "hparams": net.hparams,
        "state_dict": net.state_dict(),
        "survey": survey.to_dict(),
        "config": asdict(cfg),
        "centroid_calibration": calibration,
        "merge": merge,
    }
    manifest = {
        "kind": "detection",
        "weights": "detection.pt",
        "config": asdict(cfg),
        "data": {
            "train": f"parametric bank, split=train, catalog_seed={cfg.catalog_seed}, "
            f"{cfg.bank_size} galaxies, fresh scenes from seed {cfg.seed}",
            "validation": f"split=val, {cfg.val_scenes} scenes",
        },
        "training_s": round(time.perf_counter() - t0, 1),
        "steps": step,
        "final_val": history[-1]["val"] if history else None,
        "history": history,
        "centroid_calibration": calibration,
        "merge": merge,
        **provenance(command),
    }
    _write_run(out, weights, manifest)
    return manifest


def _write_run(out: Path, weights: dict, manifest: dict) -> None:
    atomic_write(out / "detection.pt", lambda tmp: torch.save(weights, tmp))
    text = json.dumps(manifest, indent=1, default=str)
    atomic_write(out / "manifest.json", lambda tmp: Path(tmp).write_text(text))


def calibrate_run(out: str | Path, *, n_scenes: int = 512, cache_dir=None, progress=True) -> dict:
    """Refit the merge rule (weights with a location refiner) and the centroid-interval
    calibration of the run in ``out`` (training fits them as its last steps) and record
    them in its ``detection.pt`` and ``manifest.json``."""
    out = Path(out)
    weights = torch.load(out / "detection.pt", map_location="cpu", weights_only=False)
    known = {f.name for f in fields(DetectionTrainConfig)}
    cfg = DetectionTrainConfig(**{k: v for k, v in weights["config"].items() if k in known})
    net = DetectionNet(**weights["hparams"])
    net.load_state_dict(weights["state_dict"])
    manifest = json.loads((out / "manifest.json").read_text())
    sim = _simulator(cfg, "val", cache_dir, progress)
    merge, cal = _fit_decoding(net, cfg, n_scenes, sim, progress)
    weights["centroid_calibration"] = manifest["centroid_calibration"] = cal
    weights["merge"] = manifest["merge"] = merge
    _write_run(out, weights, manifest)
    return manifest


def _fit_decoding(net, cfg: DetectionTrainConfig, calibration_scenes, sim, progress):
    """The fits that follow training, in order: the merge radius (set on ``net``), then the
    centroid calibration of the catalogues decoded with it."""
    merge = _fit_merge(net, cfg, cfg.merge_scenes, sim, progress)
    return merge, _fit_calibration(net, cfg, calibration_scenes, sim, progress)


def _fit_merge(net, cfg: DetectionTrainConfig, n_scenes, sim: SceneSimulator, progress):
    """The radius within which decoding merges claims of neighbouring tiles
    (:mod:`probcat.infer.merge`), fitted on fresh scenes of ``sim`` (validation galaxies, a
    seed of its own) and set on ``net``; None (no merging) without a location refiner."""
    from probcat.infer.merge import fit_merge_radius

    if not cfg.loc_refine:
        return None
    seed = [cfg.seed, 23]
    rule = fit_merge_radius(
        net,
        sim,
        cfg.survey().noise_sigma,
        n_scenes=n_scenes,
        rng=np.random.default_rng(seed),
        seed=cfg.seed,
        source=f"{n_scenes} validation scenes ({cfg.image_size} px, split=val, seed {seed}): "
        "MAP catalogues and 4 posterior samples each at every radius",
        progress=progress,
    )
    net.merge_px = rule.radius_px
    return rule.to_dict()


def _fit_calibration(
    net, cfg: DetectionTrainConfig, n_scenes, sim: SceneSimulator, progress
) -> dict | None:
    """The centroid-interval calibration (:mod:`probcat.infer.calibration`) of ``net`` on
    fresh scenes of ``sim`` (validation galaxies, the training scene layout; a seed of its
    own); None, with a warning, when an undertrained net matches too few sources."""
    from probcat.infer.calibration import TooFewMatches, fit_centroid_calibration

    seed = [cfg.seed, 17]
    try:
        return fit_centroid_calibration(
            net,
            sim,
            cfg.survey().noise_sigma,
            n_scenes=n_scenes,
            rng=np.random.default_rng(seed),
            source=f"{n_scenes} validation scenes ({cfg.image_size} px, split=val, "
            f"seed {seed}), MAP detections matched within 2 px",
            progress=progress,
        ).to_dict()
    except TooFewMatches as e:  # intervals stay Gaussian
        warnings.warn(f"no centroid calibration: {e}", stacklevel=3)
        return None
