"""One training loop for every probcat model.

A model supplies a :class:`Task` (its network, batches, loss, validation and the fits that
follow training); the loop owns everything else: phases (steps, learning rate with warm-up
and cosine decay, which parameters train, train or eval mode), the Adam optimizer,
gradient clipping, validation, atomic checkpoints, exact resume, the history, and the run's
weights file and manifest.

Training runs on ``device`` (default: a GPU when present, else the CPU): the model, its
batches and the validation data go there; data are made on the CPU and the random
streams stay on the CPU, so a seed draws the same batches on any device. The fits after
training and the weights file are made with the model back on the CPU.

Resuming is exact: the checkpoint holds the model, the optimizer, the data and sampling
random states and the step, so ``k`` steps then a resume to ``n`` give the same state as
``n`` steps straight (on the CPU; on a GPU, up to its float rounding, since its kernels
need not be deterministic, and a checkpoint resumes on either). A checkpoint resumes only
into the same config, except that phases not yet started may be added or changed, and
the settings of the fits after training (a config's ``fits``) may change.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from probcat.catalog import atomic_write
from probcat.errors import ProbcatValueError

__all__ = [
    "Phase",
    "Task",
    "LoopSettings",
    "fit",
    "fit_config",
    "phase_lr",
    "write_run",
    "check_run_config",
    "to_device",
    "model_device",
]


@dataclass(frozen=True)
class Phase:
    """One training phase: ``steps`` at a learning rate that warms up linearly over
    ``warmup`` steps to ``lr`` then decays by a cosine to 0; only the parameters whose names
    start with one of ``trainable`` train (all when empty); ``eval_mode`` runs the model in
    eval mode (frozen batch-norm statistics), e.g. when training one head on a frozen net."""

    name: str
    steps: int
    lr: float
    warmup: int = 100
    trainable: tuple[str, ...] = ()
    eval_mode: bool = False


def fit_config(task, cfg, out, *, progress=True, command=None, stop_after=None, device=None):
    """:func:`fit` for a task made from a config dataclass (with ``settings()``), the config
    recorded as plain data."""
    from probcat.config import to_dict

    return fit(
        task,
        out,
        config=to_dict(cfg),
        settings=cfg.settings(),
        progress=progress,
        command=command,
        stop_after=stop_after,
        device=device,
    )


def to_device(obj, device):
    """``obj`` with every tensor in it on ``device``: a tensor, or tuples, lists, dicts and
    dataclasses (e.g. :class:`~probcat.tiles.TileCatalog`) holding tensors; anything else
    as it is. On the device it is already on, the same tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        moved = {f.name: to_device(getattr(obj, f.name), device)
                 for f in dataclasses.fields(obj) if f.init}  # fmt: skip
        return dataclasses.replace(obj, **moved)
    return obj


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def phase_lr(phase: Phase, k: int) -> float:
    """Learning rate at step ``k`` (from 0) of ``phase``."""
    warm = min(phase.warmup, phase.steps)
    if k < warm:
        return phase.lr * (k + 1) / warm
    p = (k - warm) / max(phase.steps - warm, 1)
    return phase.lr * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


class Task(Protocol):
    """What a model brings to the loop."""

    kind: str  # names the weights file (``<kind>.pt``) and the registry builder

    def build_model(self) -> nn.Module: ...

    def phases(self) -> list[Phase]: ...

    def batch(self, rng: np.random.Generator) -> Any:
        """A fresh training batch drawn with ``rng``."""

    def loss(
        self, model: nn.Module, batch: Any, phase: int, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Loss parts of ``batch`` in phase number ``phase``; ``"total"`` is minimised."""

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics (the model is in eval mode; ``"total"`` is reported)."""

    def finish(self, model: nn.Module, progress: bool) -> dict:
        """Fits after training (calibrations...): entries added to the weights file and the
        manifest."""

    def weights(self, model: nn.Module) -> dict:
        """The weights file's contents: ``kind``, ``hparams``, ``state_dict``, ``survey``."""

    def describe_data(self) -> dict:
        """The training and validation data, for the manifest."""


@dataclass(frozen=True)
class LoopSettings:
    """Seeds, cadence and resources of a run."""

    seed: int = 0
    val_every: int = 500
    checkpoint_every: int = 250
    threads: int = 2
    grad_clip: float = 10.0


def load_init(name: str, kind: str):
    """The ``kind`` weights a run starts from (``init``: a registered name or a file; sha256
    checked); a missing or wrong file is a one-line error that says ``init``."""
    from probcat.weights import load

    try:
        return load(name, kind=kind)
    except (ProbcatValueError, OSError) as e:
        raise ProbcatValueError(f"init: {e}") from None


def check_seeds(seeds: dict[str, int], bits: int = 63) -> None:
    """Every entry of ``seeds`` (name -> value) a whole number in [0, 2^``bits``): numpy
    refuses negative seeds and torch those from 2^64, each with a traceback, and only when
    the seed is first used (after minutes of rendering). Raises :class:`ProbcatValueError`."""
    for name, v in seeds.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**bits:
            raise ProbcatValueError(f"{name} must lie in [0, 2^{bits}), got {v!r}")


def check_run_config(
    bands: str,
    years: float,
    phases,
    counts: dict[str, int],
    threads,
    seeds: dict[str, int] | None = None,
) -> None:
    """The checks every training config shares: a string of ugrizy ``bands``, a positive
    ``years``, at least one phase with steps >= 1, warmup >= 0 and a positive finite ``lr``, every
    entry of ``counts`` (name -> value) >= 1, every entry of ``seeds`` (name -> value) a
    whole number in [0, 2^63), and ``threads`` within the bound of every command
    (:func:`probcat.runtime.threads_for`), before any bank is rendered. Raises
    :class:`ProbcatValueError`."""
    from probcat.runtime import threads_for

    threads_for(threads, 0)
    check_seeds(seeds or {})
    if not bands or any(b not in "ugrizy" for b in bands):
        raise ProbcatValueError(f"data.bands: {bands!r} is not a string of ugrizy bands")
    counts = dict(counts)
    for i, p in enumerate(phases):
        counts[f"phases[{i}].steps"] = p.steps
        if not (p.lr > 0 and math.isfinite(p.lr)):
            raise ProbcatValueError(f"phases[{i}].lr must be a positive number, got {p.lr}")
        if p.warmup < 0:
            raise ProbcatValueError(f"phases[{i}].warmup must be >= 0, got {p.warmup}")
    for name, v in counts.items():
        if v < 1:
            raise ProbcatValueError(f"{name} must be >= 1, got {v}")
    if not phases:
        raise ProbcatValueError("phases: at least one phase is needed")
    if years <= 0 or not math.isfinite(years):
        raise ProbcatValueError(f"data.years must be positive, got {years}")


def _phase_at(phases: list[Phase], step: int) -> int:
    """Index of the phase that step ``step`` (from 0) belongs to."""
    end = 0
    for i, p in enumerate(phases):
        end += p.steps
        if step < end:
            return i
    return len(phases) - 1


_MISSING = object()


def _config_changes(saved: dict, now: dict, phases_done: int) -> list[str]:
    """The settings that stop a checkpoint of config ``saved`` from resuming under ``now``
    (empty: it resumes): every key but the phases and the ``fits`` (what is fitted after
    training, which the steps never read) whose value differs, and ``phases`` when one of
    the first ``phases_done`` phases (started or finished) differs."""
    keys = sorted((set(saved) | set(now)) - {"phases", "fits"})
    changed = [k for k in keys if saved.get(k, _MISSING) != now.get(k, _MISSING)]
    if saved.get("phases", [])[:phases_done] != now.get("phases", [])[:phases_done]:
        changed.append("phases")
    return changed


def run_directory(out: str | Path) -> Path:
    """The run directory ``out``, created if needed; a one-line error when it cannot be (a
    file of that name, no permission). The trainers call it before building their source
    banks, so a bad ``--out`` stops them before the work, not after."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProbcatValueError(f"{out}: cannot create the run directory ({e})") from None
    return out


def fit(
    task: Task,
    out: str | Path,
    *,
    config: dict,
    settings: LoopSettings,
    progress: bool = True,
    command: str | None = None,
    stop_after: int | None = None,
    device=None,
) -> dict | None:
    """Train (or resume) ``task`` into the run directory ``out``: ``checkpoint.pt``, then
    ``<kind>.pt`` and ``manifest.json``. ``config`` (plain data, with a ``phases`` list) is
    recorded and decides which checkpoints may resume. ``stop_after``: stop (checkpointed)
    after that many steps in all, without the final fits; returns None then, else the
    manifest. ``device``: where the steps run (``"cpu"``, ``"cuda"``...; default a GPU
    when present); a checkpoint resumes on any device."""
    from tqdm.auto import tqdm

    from probcat.runtime import choose_device, deterministic_gpu, device_name, threads_for

    out = run_directory(out)
    device = choose_device(device)
    torch.set_num_threads(threads_for(settings.threads, 0))
    torch.manual_seed(settings.seed)
    model = task.build_model().to(device)
    phases = task.phases()
    total = sum(p.steps for p in phases)
    opt = torch.optim.Adam(model.parameters(), lr=phases[0].lr)
    rng = np.random.default_rng([settings.seed, 1])
    gen = torch.Generator().manual_seed(settings.seed)
    step, history, elapsed = 0, [], 0.0
    running, running_phase = None, None  # the training loss's moving average, per phase
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)  # the run's own file
        done = _phase_at(phases, max(state["step"] - 1, 0)) + 1
        changed = _config_changes(state["config"], config, done)
        if changed:
            raise ProbcatValueError(
                f"{ckpt}: checkpoint of a different config ({', '.join(changed)} changed); "
                "use another --out"
            )
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise ProbcatValueError(
                f"{ckpt}: checkpoint does not fit the network; use another --out"
            ) from None
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_rng"])
        step, history, elapsed = state["step"], state["history"], state["elapsed"]
        running, running_phase = state.get("running_loss"), state.get("running_phase")
    trained_before = step >= total  # a finished run loaded again: no step trains here
    stop = total if stop_after is None else min(stop_after, total)
    ends = np.cumsum([p.steps for p in phases]).tolist()
    bar = tqdm(total=total, initial=step, desc=f"training {task.kind}", disable=not progress)
    t0 = time.perf_counter() - elapsed
    current = None
    with deterministic_gpu():  # the same steps on every run of a config
        while step < stop:
            i = _phase_at(phases, step)
            phase = phases[i]
            if i != current:  # entering (or resuming into) a phase
                for name, p in model.named_parameters():
                    p.requires_grad_(not phase.trainable or name.startswith(phase.trainable))
                current = i
            if i != running_phase:  # a new phase's average starts afresh (not a resumed one's)
                running, running_phase = None, i
            k = step - (ends[i] - phase.steps)
            for g in opt.param_groups:
                g["lr"] = phase_lr(phase, k)
            model.train(not phase.eval_mode)
            loss = task.loss(model, to_device(task.batch(rng), device), i, gen)
            opt.zero_grad(set_to_none=True)
            loss["total"].backward()
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            step += 1
            value = float(loss["total"].detach())
            running = value if running is None else 0.98 * running + 0.02 * value
            bar.update()
            bar.set_postfix(loss=f"{running:.2f}")
            if step % settings.val_every == 0 or step in ends:
                model.eval()
                with torch.no_grad():
                    val = task.validate(model)
                history.append(
                    {
                        "step": step,
                        "phase": phase.name,
                        "train_loss": running,
                        "val": val,
                        "elapsed_s": time.perf_counter() - t0,
                    }
                )
                parts = ", ".join(f"{k} {v:.3f}" for k, v in val.items() if k != "total")
                bar.write(f"step {step}: train {running:.3f}  val {val['total']:.3f} ({parts})")
            if step % settings.checkpoint_every == 0 or step in ends or step == stop:
                state = {
                    "config": config,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": gen.get_state(),
                    "step": step,
                    "history": history,
                    "elapsed": time.perf_counter() - t0,
                    "running_loss": running,
                    "running_phase": running_phase,
                }
                atomic_write(ckpt, lambda tmp, s=state: torch.save(s, tmp))
    bar.close()
    if step < total:
        return None
    for p in model.parameters():
        p.requires_grad_(True)
    model.cpu().eval()
    fits = task.finish(model, progress)
    from probcat.weights import FORMAT

    weights = {**task.weights(model), "format": FORMAT, "config": config, **fits}
    manifest = {
        "kind": task.kind,
        "weights": f"{task.kind}.pt",
        "config": config,
        "data": task.describe_data(),
        "training_s": round(time.perf_counter() - t0, 1),
        "device": device_name(device),
        "steps": step,
        "final_val": history[-1]["val"] if history else None,
        "history": history,
        **getattr(task, "manifest_fits", lambda f: f)(fits),
    }
    old = manifest_of_run(out, config) if trained_before else None
    if old is not None:  # who trained it, and when: not this call, which only loaded it
        manifest["training_s"] = old.get("training_s", manifest["training_s"])
    return write_run(out, task.kind, weights, manifest, command, trained_by=old)


def manifest_of_run(out: Path, config: dict) -> dict | None:
    """The run directory's ``manifest.json`` when it records the training of ``config``."""
    try:
        old = json.loads((Path(out) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    same = isinstance(old, dict) and old.get("config") == json.loads(
        json.dumps(config, default=str)
    )
    return old if same else None


def write_run(
    out: Path,
    kind: str,
    weights: dict,
    manifest: dict,
    command=None,
    refit: str | None = None,
    trained_by: dict | None = None,
) -> dict:
    """Write ``<kind>.pt`` and ``manifest.json`` (with the file's sha256 and provenance)
    into the run directory ``out``, atomically. ``refit``: the name of a fit redone after
    training (e.g. ``"recalibration"``); the manifest keeps the training's command and
    commit, package versions and Python, and records the refit's as ``<refit>_command``,
    ``<refit>_git_commit``, ``<refit>_versions`` and ``<refit>_python``. ``trained_by``:
    the manifest of the training when this call only loaded its finished network again;
    its command, commit, versions and Python stay."""
    from probcat.provenance import provenance
    from probcat.weights import sha256

    path = Path(out) / f"{kind}.pt"
    atomic_write(path, lambda tmp: torch.save(weights, tmp))
    prov = provenance(command)
    if trained_by is not None:
        prov.update({k: trained_by[k] for k in prov if k in trained_by})
    if refit is not None:
        manifest = {
            **manifest,
            f"{refit}_command": prov.pop("command"),
            f"{refit}_git_commit": prov.pop("git_commit"),
        }
        for key in ("versions", "python"):  # the training's environment stays as it was
            if key in manifest:
                manifest[f"{refit}_{key}"] = prov.pop(key)
    if "command" in manifest and (command is None or refit is not None):
        prov["command"] = manifest["command"]  # a refit keeps the training command
    manifest = {**manifest, **prov, "sha256": sha256(path), "size_bytes": path.stat().st_size}
    text = json.dumps(manifest, indent=1, default=str)
    atomic_write(Path(out) / "manifest.json", lambda tmp: Path(tmp).write_text(text))
    return manifest


def record_in_manifest(manifest_path, key: str, record) -> None:
    """Set ``key`` of the JSON manifest at ``manifest_path`` to ``record``, atomically (a
    fit recorded after training; the weights file, and so its sha256, stays as it is)."""
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    manifest[key] = record
    text = json.dumps(manifest, indent=1, default=str)
    atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(text + "\n"))
