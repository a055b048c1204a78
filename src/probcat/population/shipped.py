"""The population chain's networks that do not depend on the target map, shipped inside the
package (registry name :data:`NAME`): r1, r2, r4 and the plain NRE with its head, trained
at the default :class:`~probcat.population.chain.PopulationConfig`, with the detected
sources of the pool of full-model maps they were trained on.

A run whose settings are those the networks were trained with takes them (:func:`install`:
each written into the run as a finished network, its weights and ``manifest.json``) and
trains r3 alone, as ``--reuse`` of an earlier run does; ``probcat population
--no-shipped`` (``run_chain(..., shipped=False)``) trains every network. The pool ships
its detected sources only: what the posteriors read of it once r2 and r4 are trained
(:meth:`~probcat.population.chain.Chain.pool` takes such a pool only then).

``scripts/ship_weights.py --population RUN`` packs a finished run (:func:`pack`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["NAME", "NETWORKS", "pack", "install", "read"]

NAME = "population_default"
NETWORKS = ("r1", "r2", "r4", "plain", "plain_head")  # folders of a run, as reuse copies
POOL_ARRAYS = ("map", "flux", "l", "b")  # per detected source (theta: per map)


def pack(run: str | Path, path: str | Path) -> dict:
    """Write the finished networks of the population run ``run`` and its pool's detected
    sources into one weights file ``path`` (tensors and plain data only, read with
    ``weights_only=True``), each network's manifest with the run's command (its
    ``summary.json``'s); returns what the shipped manifest says of it: each network's
    training in brief, the pool's maps and detected sources."""
    from probcat.catalog import atomic_write
    from probcat.errors import ProbcatValueError
    from probcat.weights import FORMAT

    run = Path(run)
    summary = run / "summary.json"
    command = json.loads(summary.read_text()).get("command") if summary.exists() else None
    networks, brief = {}, {}
    for name in NETWORKS:
        man_path = run / name / "manifest.json"
        if not man_path.exists():
            raise ProbcatValueError(f"{run / name}: not a finished network of a population run")
        man = json.loads(man_path.read_text())
        if command:  # the run's command trained them all (the plain NRE in a worker of it)
            man["command"] = command
        state = torch.load(run / name / man["weights"], map_location="cpu", weights_only=True)
        networks[name] = {"manifest": _plain(man), "weights": state}
        brief[name] = {k: man.get(k) for k in ("kind", "steps", "training_s", "final_val",
                                                "git_commit", "command")}  # fmt: skip
    with np.load(run / "pool.npz") as data:
        pool = {k: data[k] for k in data.files}
    det = pool["detected"]
    ship_pool = {
        "key": str(pool["key"]),
        "theta": torch.from_numpy(pool["theta"]),
        **{k: torch.from_numpy(np.ascontiguousarray(pool[k][det])) for k in POOL_ARRAYS},
    }
    if len(pool["theta"]) < 2**31:  # map indices in half the bytes
        ship_pool["map"] = ship_pool["map"].to(torch.int32)
    content = {"format": FORMAT, "kind": "population", "networks": networks, "pool": ship_pool}
    atomic_write(Path(path), lambda tmp: torch.save(content, tmp))
    return {"networks": brief, "pool_maps": int(len(pool["theta"])),
            "pool_detected_sources": int(det.sum())}  # fmt: skip


def _plain(manifest: dict) -> dict:
    """A training manifest as plain data (what ``weights_only`` loading accepts)."""
    return json.loads(json.dumps(manifest, default=str))


def read(name: str | Path = NAME) -> dict:
    """The contents of the shipped file ``name`` (its sha256 checked against its manifest),
    or of a file :func:`pack` wrote (a path)."""
    from probcat import weights as registry

    if isinstance(name, Path):
        return torch.load(name, map_location="cpu", weights_only=True)
    man = registry.manifest(name)
    path = registry.shipped(man["weights"])
    digest = registry.sha256(path)
    if man.get("sha256") != digest:
        from probcat.errors import ProbcatIOError

        raise ProbcatIOError(f"{path}: sha256 {digest[:12]}... is not its manifest's")
    return torch.load(path, map_location="cpu", weights_only=True)


def install(cfg, out: str | Path, name: str | Path = NAME) -> dict:
    """Write into the run folder ``out`` each shipped network that ``cfg`` would train the
    same way (every setting in its training manifest's ``config`` equal to ``cfg``'s), as a
    finished network (its weights and ``manifest.json``, no checkpoint), and the pool's
    detected sources as ``pool.npz`` when r2 and r4 are among them and ``cfg`` gives the
    pool the same key. A network ``out`` already holds stays. ``name``: the shipped file's
    registry name, or the path of a file :func:`pack` wrote. Returns ``{"run": "shipped
    <name>", "reused": [...], "not_reused": {name: why}}``, like
    :func:`~probcat.population.chain.reuse_run`."""
    from probcat.catalog import atomic_write
    from probcat.config import to_dict
    from probcat.population.chain import Chain, _changed_settings
    from probcat.weights import sha256

    out = Path(out)
    content = read(name)
    current = to_dict(cfg)
    result = {"run": f"shipped {name}", "reused": [], "not_reused": {}}
    for net in NETWORKS:
        folder = out / net
        entry = content["networks"][net]
        changed = _changed_settings(entry["manifest"]["config"], current)
        if folder.exists():
            result["not_reused"][net] = f"{folder} exists"
        elif changed:
            result["not_reused"][net] = f"of other settings ({', '.join(changed)})"
        else:
            tmp = out / f".shipped_{net}.tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            man = entry["manifest"]
            weights = tmp / man["weights"]
            torch.save(entry["weights"], weights)
            man = {**man, "sha256": sha256(weights), "size_bytes": weights.stat().st_size,
                   "shipped": str(name)}  # fmt: skip
            (tmp / "manifest.json").write_text(json.dumps(man, indent=1))
            tmp.replace(folder)  # a copy cut short leaves no half folder
            result["reused"].append(net)
    pool = content["pool"]
    key = json.dumps(Chain(cfg, out, False)._keys("pool"), sort_keys=True)
    path = out / "pool.npz"
    if path.exists():
        result["not_reused"]["pool"] = f"{path} exists"
    elif not {"r2", "r4"} <= set(result["reused"]) or pool["key"] != key:
        result["not_reused"]["pool"] = "of other settings (or r2, r4 not taken)"
    else:
        arrays = {k: pool[k].numpy() for k in ("theta", *POOL_ARRAYS)}
        arrays["map"] = arrays["map"].astype(np.int64)  # as the chain's pool holds it
        arrays["detected"] = np.ones(len(arrays["flux"]), bool)
        atomic_write(path, lambda tmp: np.savez(tmp, key=key, detected_only=True, **arrays))
        result["reused"].append("pool")
    return result
