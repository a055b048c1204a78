"""Population inference over several simulated targets: does the truth fall inside the
posterior intervals, and is the combined posterior narrower than r3, r4 and the plain NRE,
target after target (``benchmarks/population.py`` runs one target and checks coverage on
maps simulated like it; this runs the whole chain, r3 retrained on each target's own
detections, for targets drawn from the prior).

    .venv/bin/python benchmarks/population_targets.py --run RUN --seeds 2,3,4,5,6

``RUN`` holds the target-independent networks (r1, r2, r4, the plain NRE and the pool) of a
``benchmarks/population.py --run RUN`` run, or gets them trained first. Writes
``benchmarks/results/population_targets.json``. Each finished target is kept in
``RUN/targets/``: a rerun of the command after an interruption starts at the first
unfinished target (and that target's r3 at its last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
import torch

from probcat.catalog import atomic_write
from probcat.config import load_yaml, to_dict
from probcat.population.chain import Chain, Grid, PopulationConfig, simulated_target
from probcat.population.simulator import PARAM_NAMES
from probcat.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"
ESTIMATORS = ("r3", "r4", "combined", "plain_nre")
LEVELS = ("0.683", "0.954")


def one_target(chain: Chain, seed: int, grid: Grid, cfg: PopulationConfig) -> dict:
    """The four posteriors of the target of ``seed`` against its truth."""
    t0 = time.perf_counter()
    x_o, truth = simulated_target(seed)
    det = chain.detect(x_o[None])[0]
    chain.train_r3(det, x_o)
    post = chain.posteriors(x_o, det, grid, np.random.default_rng([cfg.seed, 99, seed]))
    t_o = [truth[p] for p in PARAM_NAMES]
    at_o = chain.log_densities_at(x_o, t_o)
    row = {"seed": seed, "truth": truth, "n_detected": len(det),
           "detections_factor_change_between_rounds": chain.e_r4_change,
           "r3_rounds": chain.r3_rounds_log,
           "r3_box_edge_mass": chain.box_edge_mass(post)}  # fmt: skip
    for k in ESTIMATORS:
        s = post[k].summary()
        inside = {
            p: {
                lv: bool(s[p][key][0] <= truth[p] <= s[p][key][1])
                for lv, key in zip(LEVELS, ("interval_68", "interval_95"))
            }
            for p in PARAM_NAMES
        }
        level = post[k].hpd_level(t_o, at_o[k])
        row[k] = {
            "mean": {p: s[p]["mean"] for p in PARAM_NAMES},
            "interval_68": {p: s[p]["interval_68"] for p in PARAM_NAMES},
            "interval_95": {p: s[p]["interval_95"] for p in PARAM_NAMES},
            "width_68": {p: post[k].width(i) for i, p in enumerate(PARAM_NAMES)},
            "joint_volume_68": post[k].hpd_volume(0.683),
            "truth_hpd_level": level,
            "truth_inside": inside,
            "truth_inside_joint": {lv: bool(level < float(lv)) for lv in LEVELS},
        }
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def shared_networks(chain: Chain) -> dict:
    """A sha256 of the values of each target-independent network (r1, r2, r4, the plain
    NRE with its head): the parameters themselves, not their files, which a resumed run
    writes again."""
    import hashlib

    out = {}
    for name in ("r1", "r2", "r4", "plain"):
        state = getattr(chain, name).state_dict()
        h = hashlib.sha256()
        for key in sorted(state):
            h.update(key.encode())
            h.update(state[key].detach().contiguous().cpu().numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def _target_file(run: Path, seed: int) -> Path:
    return run / "targets" / f"seed_{seed}.json"


def _target_key(seed: int, cfg: PopulationConfig, shared: dict) -> dict:
    return {"seed": seed, "config": to_dict(cfg), "networks": shared}


def cached_target(run: Path, seed: int, cfg: PopulationConfig, shared: dict) -> dict | None:
    """The row of target ``seed`` if an earlier run finished it with the same budget and
    networks (a killed run resumes target by target), else None."""
    path = _target_file(run, seed)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    key = json.loads(json.dumps(_target_key(seed, cfg, shared), default=float))
    return saved.get("row") if saved.get("key") == key else None


def save_target(run: Path, seed: int, cfg: PopulationConfig, shared: dict, row: dict) -> None:
    path = _target_file(run, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"key": _target_key(seed, cfg, shared), "row": row}, default=float)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _frac(flags) -> dict:
    flags = np.asarray(list(flags), bool)
    n = len(flags)
    f = float(flags.mean()) if n else float("nan")
    return {"fraction": f, "n": n}


def aggregate(rows: list[dict]) -> dict:
    """Fractions of truths inside each estimator's intervals (per parameter and pooled over
    parameters), and how often the combination is the narrowest."""
    out = {"truth_inside": {}, "combined_narrower": {}, "mean_width_68": {}}
    for k in ESTIMATORS:
        out["truth_inside"][k] = {
            **{
                p: {lv: _frac(r[k]["truth_inside"][p][lv] for r in rows) for lv in LEVELS}
                for p in PARAM_NAMES
            },
            "all_parameters": {
                lv: _frac(r[k]["truth_inside"][p][lv] for r in rows for p in PARAM_NAMES)
                for lv in LEVELS
            },
            "joint": {lv: _frac(r[k]["truth_inside_joint"][lv] for r in rows) for lv in LEVELS},
        }
        out["mean_width_68"][k] = {
            **{p: float(np.mean([r[k]["width_68"][p] for r in rows])) for p in PARAM_NAMES},
            "joint_volume_68": float(np.mean([r[k]["joint_volume_68"] for r in rows])),
        }
    for other in ("r3", "r4", "plain_nre"):
        out["combined_narrower"][other] = {
            **{
                p: _frac(r["combined"]["width_68"][p] < r[other]["width_68"][p] for r in rows)
                for p in PARAM_NAMES
            },
            "joint_volume_68": _frac(
                r["combined"]["joint_volume_68"] < r[other]["joint_volume_68"] for r in rows
            ),
        }
    return out


def figure(result: dict, out: Path) -> None:
    """Per target and parameter, each estimator's 68% and 95% intervals and the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["targets"]
    colours = {"r3": "C0", "r4": "C1", "combined": "C3", "plain_nre": "C2"}
    fig, axes = plt.subplots(1, 3, figsize=(11, 0.5 + 0.7 * len(rows)), sharey=True)
    for ax, p in zip(axes, PARAM_NAMES):
        for i, r in enumerate(rows):
            for j, k in enumerate(ESTIMATORS):
                y = i + (j - 1.5) * 0.16
                lo, hi = r[k]["interval_95"][p]
                ax.plot([lo, hi], [y, y], color=colours[k], lw=1)
                lo, hi = r[k]["interval_68"][p]
                ax.plot([lo, hi], [y, y], color=colours[k], lw=3.5,
                        label=k if i == 0 and p == "N" else None)  # fmt: skip
            ax.plot(r["truth"][p], i, "k|", ms=14, mew=2)
        ax.set_xlabel(p)
    axes[0].set_yticks(range(len(rows)), [f"seed {r['seed']}" for r in rows])
    fig.suptitle("68% (thick) and 95% (thin) intervals per target; truth: black tick", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(fontsize=7, loc="lower center", ncol=4)
    fig.savefig(out / "population_targets.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="run directory (networks reused or trained)")
    ap.add_argument("--seeds", default="2,3,4,5,6", help="target seeds, comma-separated")
    ap.add_argument("--config", default=None, help="YAML budget (default: PopulationConfig)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder (smoke runs: elsewhere)")
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/population_targets.py", *sys.argv[1:]])
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"population_targets: --seeds must be integers, got {args.seeds!r}")
    if not seeds:
        sys.exit("population_targets: give at least one seed")
    cfg = load_yaml(PopulationConfig, args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    run = Path(args.run)
    chain = Chain(cfg, run, progress=True)
    chain.train_r1()
    pool = chain.pool()
    chain.train_r2_r4(pool)
    chain.train_plain()
    grid = Grid.default(cfg.grid_sigma, cfg.grid_h, cfg.grid_n_step)
    rows, reused = [], []
    shared = shared_networks(chain)
    for seed in seeds:
        row = cached_target(run, seed, cfg, shared)
        if row is None:
            print(f"target seed {seed} ...", flush=True)
            row = one_target(chain, seed, grid, cfg)
            save_target(run, seed, cfg, shared, row)
        else:
            print(f"target seed {seed}: finished by an earlier run of this command", flush=True)
            reused.append(seed)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("truth", "n_detected", "wall_s")}), flush=True)
    result = {
        "command": command,
        "machine": "2-core CPU, no GPU",
        "seeds": seeds,
        "n_targets": len(rows),
        "summary": aggregate(rows),
        "targets": rows,
        "definitions": {
            "truth_inside": "fraction of targets whose true parameter lies inside the central "
            "68.3% / 95.4% interval of each marginal (all_parameters: pooled over N, sigma, "
            "h; joint: inside the joint highest-density region, judged with the estimator's "
            "own density at the truth); n is the number of cases, so its binomial error is "
            "sqrt(p (1 - p) / n)",
            "combined_narrower": "fraction of targets where the combined 68% width (joint: "
            "joint 68% volume) is smaller than the other estimator's",
            "targets": "theta drawn from the prior by simulated_target(seed); r3 trained on "
            "each target's own detections; r1, r2, r4 and the plain NRE shared",
        },
        "wall_s": round(time.perf_counter() - t0, 1),
        # targets finished by an interrupted earlier run of the same command on the same
        # networks (their rows are reused; wall_s above counts only this run)
        "targets_reused": reused,
        "targets_wall_s": round(sum(r["wall_s"] for r in rows), 1),
    }
    result.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(result, indent=1, default=float)
    atomic_write(out / "population_targets.json", lambda tmp: Path(tmp).write_text(text))
    figure(result, out)
    print(json.dumps(result["summary"], indent=1, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
