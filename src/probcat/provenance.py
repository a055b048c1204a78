"""Provenance stored beside every output: package versions, git commit, command line."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["provenance", "git_commit", "write_record", "json_safe", "reference_speed_s"]

_PACKAGES = ("probcat", "numpy", "torch", "galsim", "sep", "astropy", "surveycodex")


def git_commit() -> str | None:
    """Commit of the source tree probcat runs from, if it is a git checkout; ``+dirty``
    when tracked files under ``src/probcat`` differ from it (the run used uncommitted code)."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)

    try:
        out = git("rev-parse", "HEAD")
        if out.returncode != 0 or not out.stdout.strip():
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance(command: str | None = None, packages: tuple[str, ...] = ()) -> dict:
    """The command line, the versions of probcat's main dependencies and of ``packages``
    (distribution names; None where not installed), Python's version and the git commit."""
    versions = {}
    for name in (*_PACKAGES, *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": command if command is not None else " ".join(["probcat", *sys.argv[1:]]),
        "versions": versions,
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


def write_record(path: str | Path, record: dict) -> Path:
    """Write a provenance/config record as YAML, atomically, beside an output."""
    import yaml

    from probcat.catalog import atomic_write

    text = yaml.safe_dump(json.loads(json.dumps(record, default=str)), sort_keys=False)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def json_safe(obj):
    """``obj`` with NaN and inf as None and numpy scalars as Python numbers, so that the
    JSON it becomes stays valid for strict readers."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def reference_speed_s(size: int = 1000, runs: int = 2) -> float:
    """Seconds a fixed reference computation takes now, in this process: a yardstick of the
    machine's speed for benchmarks that report seconds.

    The same CPU runs at different speeds from one session to another (shared hosts). The
    reference is a 5-layer, 64-channel 3x3 convolution net (ReLU, float32, no gradients,
    the process's torch threads) on one ``size`` x ``size`` image, median of ``runs`` after
    a warm-up; at 1000 x 1000 it took about 2.5 s with two threads on the quiet 2-core
    development machine on a normal day. Ratios of a benchmark's seconds to it compare
    across sessions; targets are judged on the seconds themselves."""
    import time

    import numpy as np
    import torch

    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(0)
        layers: list = []
        for k in range(5):
            layers += [torch.nn.Conv2d(1 if k == 0 else 64, 64, 3, padding=1), torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers).eval()
        x = torch.randn(1, 1, size, size)
    times = []
    with torch.no_grad():
        net(x)
        for _ in range(runs):
            t = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t)
    return float(np.median(times))
