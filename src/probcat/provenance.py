"""Provenance stored beside every output: package versions, git commit, command line."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["provenance", "git_commit", "write_record"]

_PACKAGES = ("probcat", "numpy", "torch", "galsim", "sep", "astropy", "surveycodex")


def git_commit() -> str | None:
    """Commit of the source tree probcat runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(command: str | None = None) -> dict:
    versions = {}
    for name in _PACKAGES:
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
