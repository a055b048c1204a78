"""Posterior predictive check of the population chain: on the benchmark's target (made by
the model) and on maps the model cannot make. Writes
``benchmarks/results/population_predictive.json`` and one PNG per case:

    .venv/bin/python benchmarks/population_predictive.py --run DIR

``DIR`` is a finished population run (``benchmarks/population.py --run DIR``); each case
runs the chain in a copy of it (``DIR_predictive_<case>``), so r1, the pool, r2, r4 and
the plain NRE are reused and r3 trains on the case's own detections (about 16 minutes a
case here; the benchmark's target reuses r3 as well). The cases:

- ``target``: the benchmark's target (seed 1), which the model made;
- ``narrow_longitude``: the target's population (N, sigma, h) with the sources'
  longitudes spread by 10 degrees instead of the model's 20;
- ``background``: the target's sources on a uniform diffuse background of 0.03 a pixel
  (the model has none), with its Poisson noise.
- ``power_law_flux``: the target's sources (its N, positions drawn with its h) with fluxes
  from a power law ``dN/dF ~ F^-2`` above 2.6 (about as many above the detection
  threshold as the target's log-normal gives) instead of the model's log-normal.

A ratio estimator returns a posterior for any map; the check is what says whether the
model at that posterior makes maps like it (``probcat.population.predictive``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np

from probcat.catalog import atomic_write
from probcat.config import load_yaml
from probcat.population.chain import PopulationConfig, run_chain, simulated_target
from probcat.population.simulator import (
    COUNTS,
    PARAM_NAMES,
    Sources,
    render,
    sample_sources,
)
from probcat.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"
CASES = ("target", "narrow_longitude", "background", "power_law_flux")
BACKGROUND = 0.03
POWER_LAW_MIN = 2.6  # dN/dF ~ F^-2 above it: P(flux > F) = 2.6 / F


def case_map(case: str, seed: int = 1) -> tuple[np.ndarray | None, dict]:
    """The case's target map (``None``: the simulated target of ``seed`` itself) and the
    population parameters its sources were drawn from."""
    _, truth = simulated_target(seed)
    theta = np.array([[truth[p] for p in PARAM_NAMES]])
    rng = np.random.default_rng([seed, 4321])
    if case == "target":
        return None, truth
    src = sample_sources(rng, theta)
    if case == "narrow_longitude":
        src = Sources(src.map, src.flux, src.l * 0.5, src.b)
        return render(rng, src, 1)[0], truth
    if case == "power_law_flux":
        flux = POWER_LAW_MIN / (1.0 - rng.random(len(src)))  # inverse CDF of the power law
        return render(rng, Sources(src.map, flux, src.l, src.b), 1)[0], truth
    if case == "background":
        mean = render(rng, src, 1, noise=False)[0].astype(np.float64) + BACKGROUND
        return (rng.poisson(mean * COUNTS) / COUNTS).astype(np.float32), truth
    raise ValueError(case)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished benchmarks/population.py run")
    ap.add_argument("--config", default=None, help="YAML budget (default: PopulationConfig)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/population_predictive.py", *sys.argv[1:]])
    cases = [c for c in args.cases.split(",") if c]
    if not cases or any(c not in CASES for c in cases):
        sys.exit(f"population_predictive: --cases must be among {', '.join(CASES)}")
    run = Path(args.run)
    if not (run / "summary.json").exists():
        sys.exit(f"population_predictive: {run} holds no finished population run")
    cfg = load_yaml(PopulationConfig, args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"command": command, "machine": "2-core CPU, no GPU", "run": str(run), "cases": {}}
    for case in cases:
        folder = run.parent / f"{run.name}_predictive_{case}"
        if not folder.exists():
            shutil.copytree(run, folder)
        x_o, truth = case_map(case)
        t = time.perf_counter()
        print(f"case {case} ...", flush=True)
        s = run_chain(cfg, folder, target_seed=1 if x_o is None else None, target_map=x_o,
                      progress=True, command=command)  # fmt: skip
        shutil.copyfile(folder / "predictive.png", out / f"population_predictive_{case}.png")
        result["cases"][case] = {
            "sources_drawn_with": truth,
            "n_detected": s["n_detected"],
            "combined": s["posterior"]["combined"],
            "posterior_predictive": s["posterior_predictive"],
            "min_p_value": min(c["p_value"] for c in s["posterior_predictive"].values()),
            # the same summaries (n_detected aside) against prior maps, before the training
            "prior_check": s["prior_check"],
            "prior_check_min_p_value": min(
                c["p_value"] for c in s["prior_check"]["statistics"].values()
            ),
            "wall_s": round(time.perf_counter() - t, 1),
        }
        print(json.dumps({case: result["cases"][case]["posterior_predictive"]}), flush=True)
        write(out, result, t0, command)  # after each case: a long run keeps what it did


def write(out: Path, result: dict, t0: float, command: str) -> None:
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["definitions"] = {
        "posterior_predictive": "per summary of probcat.population.predictive: the case's "
        "value, the median and central 68% / 95% ranges over maps simulated at the "
        "combined posterior (predictive_maps of the config), and the two-sided predictive "
        "p-value",
        "prior_check": "probcat.population.predictive.prior_check, run before the training: "
        "the case's summaries (n_detected aside) against prior_check_maps maps drawn from the "
        "prior (p-values and the prior maps' range), and its pixel values' fractions off the "
        "lattice of counts over 100 and of whole numbers",
        "sources_drawn_with": "the population parameters the case's sources were drawn from "
        "(the benchmark target's); for the misspecified cases they are not the truth of "
        "any model the chain knows",
    }
    result.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(result, indent=1, default=float)
    atomic_write(out / "population_predictive.json", lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
