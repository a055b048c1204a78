"""The source bank cache (:func:`default_cache_dir`): what it holds
and how to prune it.

Every simulation config renders its source banks once and caches them, a few hundred MB to
a few GB each (the pixels of every stamp), and nothing removes them: a project that tries
several populations, splits, depths and bands collects tens of GB. :func:`cached_banks`
lists them with their size, what they hold and when they were last used (a bank's
``bank.json`` is touched each time it is loaded, :func:`touch`); :func:`prune` removes the
least recently used ones, by age or down to a total size (``probcat cache``). A pruned bank
costs only its rendering again, the next time a config needs it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from probcat.errors import ProbcatValueError

__all__ = [
    "CachedBank",
    "cached_banks",
    "cache_root",
    "default_cache_dir",
    "prune",
    "touch",
    "STALE_TMP_S",
]

PREFIX = "bank-"
STALE_TMP_S = 24 * 3600.0  # a half-written bank (``.bank-*.tmp*``) this old is abandoned


def default_cache_dir() -> Path:
    """``$PROBCAT_CACHE`` if set (read at call time), else ``~/.cache/probcat``."""
    env = os.environ.get("PROBCAT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "probcat"


def cache_root(cache_dir=None) -> Path:
    """``cache_dir`` as a path, or the default cache (:func:`default_cache_dir`)."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


@dataclass(frozen=True)
class CachedBank:
    """One cached bank: its directory, size in bytes, when it was last used (seconds since
    the epoch) and its ``bank.json`` config (None when unreadable: a corrupt bank, which
    the next load rebuilds)."""

    path: Path
    size: int
    last_used: float
    config: dict | None
    bands: str
    years: float | None = None

    @property
    def key(self) -> str:
        return self.path.name[len(PREFIX) :]

    def describe(self) -> str:
        """What the bank holds, in a few words."""
        c = self.config
        if c is None:
            return "unreadable (rebuilt when next needed)"
        words = [str(c.get("population", "?")), f"split {c.get('split', '?')}"]
        words.append(f"bands {self.bands or '?'}")
        if self.years is not None:
            words.append(f"{self.years:g} yr")
        if c.get("n_galaxies") is not None:
            words.append(f"{c['n_galaxies']} galaxies")
        if c.get("centered"):
            words.append("centred")
        return ", ".join(words)


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except OSError:  # removed meanwhile
                pass
    return total


def _read(path: Path) -> tuple[float, dict | None, str, float | None]:
    meta = path / "bank.json"
    try:
        used = meta.stat().st_mtime
    except OSError:  # no bank.json: an incomplete bank, as old as its directory
        return path.stat().st_mtime, None, "", None
    try:
        d = json.loads(meta.read_text())
        bands = "".join(b.get("name", "?") for b in d["survey"]["bands"])
        years = d["survey"].get("depth_years")
        return used, dict(d["config"]), bands, None if years is None else float(years)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return used, None, "", None


def cached_banks(cache_dir=None) -> list[CachedBank]:
    """The banks in ``cache_dir`` (default: the default cache), most recently used first
    (an empty list for a directory that does not exist)."""
    root = cache_root(cache_dir)
    if root.exists() and not root.is_dir():
        raise ProbcatValueError(f"{root}: not a directory")
    out = []
    for path in sorted(root.glob(f"{PREFIX}*")) if root.is_dir() else ():
        if not path.is_dir():
            continue
        try:
            used, config, bands, years = _read(path)
            out.append(CachedBank(path, _size(path), used, config, bands, years))
        except OSError:  # removed while listing
            continue
    return sorted(out, key=lambda b: -b.last_used)


def touch(path) -> None:
    """Mark the bank at ``path`` used now (its ``bank.json``'s time); a read-only cache
    is left as it is."""
    try:
        os.utime(Path(path) / "bank.json")
    except OSError:
        pass


def _remove(path: Path) -> None:
    """Move the bank out of the way first (a loader never sees half of one), then delete."""
    gone = path.with_name(f".{path.name}.del{os.getpid()}")
    try:
        path.rename(gone)
    except OSError:
        gone = path
    shutil.rmtree(gone, ignore_errors=True)


def prune(
    cache_dir=None,
    *,
    older_than_days: float | None = None,
    max_bytes: float | None = None,
    everything: bool = False,
    dry_run: bool = False,
    now: float | None = None,
) -> list[CachedBank]:
    """Remove cached banks, least recently used first: every one (``everything``), those
    unused for more than ``older_than_days``, then more until the rest hold at most
    ``max_bytes``. Abandoned half-written banks older than :data:`STALE_TMP_S` go too.
    ``dry_run``: remove nothing. Returns the banks removed (or that would be)."""
    for name, v in (("older_than_days", older_than_days), ("max_bytes", max_bytes)):
        if v is not None and not (isinstance(v, (int, float)) and v >= 0 and v == v):
            raise ProbcatValueError(f"{name} must be a number >= 0, got {v!r}")
    if not everything and older_than_days is None and max_bytes is None:
        raise ProbcatValueError("say what to prune: everything, older_than_days or max_bytes")
    root = cache_root(cache_dir)
    now = time.time() if now is None else now
    banks = cached_banks(root)[::-1]  # least recently used first
    gone = []
    if everything:
        gone = banks
    else:
        if older_than_days is not None:
            cutoff = now - older_than_days * 86400.0
            gone = [b for b in banks if b.last_used < cutoff]
        if max_bytes is not None:
            left = [b for b in banks if b not in gone]
            total = sum(b.size for b in left)
            for b in left:
                if total <= max_bytes:
                    break
                gone.append(b)
                total -= b.size
    if dry_run:
        return gone
    for b in gone:
        _remove(b.path)
    for tmp in root.glob(f".{PREFIX}*") if root.is_dir() else ():
        try:
            old = now - tmp.stat().st_mtime > STALE_TMP_S
        except OSError:
            continue
        if old and (".tmp" in tmp.name or ".del" in tmp.name):
            shutil.rmtree(tmp, ignore_errors=True)
    return gone
