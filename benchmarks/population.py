"""Population inference with detection as truncation (paper 001): the whole chain for one
target observation with known parameters, on this machine, and the coverage of every
estimator. Writes ``benchmarks/results/population.json`` and ``population_*.png``
(detection map, targeted vs full simulations as in Fig. 2, corner plot as in Fig. 3,
coverage):

    .venv/bin/python benchmarks/population.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
from scipy import stats

from probcat.catalog import atomic_write
from probcat.config import load_yaml
from probcat.population.chain import PopulationConfig, run_chain
from probcat.population.simulator import PARAM_NAMES
from probcat.provenance import reference_speed_s

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = ("detection_map.png", "targeted_vs_full.png", "corner.png", "coverage.png")
ESTIMATORS = ("r3", "r4", "combined", "plain_nre")


def checks(s: dict) -> dict:
    """The issue's targets, measured."""
    cov = s["coverage"]
    within = {}
    for est in ESTIMATORS:
        for p in PARAM_NAMES:
            for level in ("0.683", "0.954"):
                dev = abs(cov[est][p][level] - float(level)) / cov[est][p][f"{level}_se"]
                within[f"{est}.{p}.{level}"] = round(float(dev), 2)
    w = s["widths_68"]
    truth = s["truth"]
    comb = s["posterior"]["combined"]
    # 24 checks: a calibrated chain has each outside 2 standard errors with probability
    # 4.55%, so about one of them (the checks share maps, so they are not independent)
    p_out = float(2 * stats.norm.sf(2))
    n_out = sum(v > 2 for v in within.values())
    # the weighted samples' interval ends against the grid's, in 68% widths of the grid's
    gap = {
        est: max(
            abs(a - b) / w[est][p]
            for p in PARAM_NAMES
            for key in ("interval_68", "interval_95")
            for a, b in zip(s["samples_intervals"][est][p][key], s["posterior"][est][p][key])
        )
        for est in ESTIMATORS
    }
    return {
        "coverage_deviation_in_standard_errors": within,
        "coverage_within_2_se": {k: v <= 2 for k, v in within.items()},
        "coverage_checks_outside_2_se": {
            "count": n_out,
            "of": len(within),
            "expected_if_calibrated": round(len(within) * p_out, 2),
            "probability_of_as_many_or_more": round(
                float(stats.binom.sf(n_out - 1, len(within), p_out)), 3
            ),
        },
        "samples_vs_grid_intervals_max_gap_in_68_widths": {k: round(v, 4) for k, v in gap.items()},
        # the joint 95% highest-density region of (N, sigma, h), as the paper's Fig. 3
        # regions; and each marginal's central 95% interval
        "truth_in_combined_95_region": s["truth_hpd_level"]["combined"] < 0.954,
        "truth_in_combined_95_marginal": {
            p: comb[p]["interval_95"][0] <= truth[p] <= comb[p]["interval_95"][1]
            for p in PARAM_NAMES
        },
        "joint_coverage_within_2_se": {
            est: all(
                abs(cov[est]["joint"][lv] - float(lv)) <= 2 * cov[est]["joint"][f"{lv}_se"]
                for lv in ("0.683", "0.954")
            )
            for est in ESTIMATORS
        },
        "combined_narrower_than_r3": {p: w["combined"][p] < w["r3"][p] for p in PARAM_NAMES},
        "combined_narrower_than_r4": {p: w["combined"][p] < w["r4"][p] for p in PARAM_NAMES},
        "combined_narrower_than_plain": {
            p: w["combined"][p] < w["plain_nre"][p] for p in PARAM_NAMES
        },
        "combined_narrower_than_r3_on_target_like_maps": {
            p: s["widths_68_target_like_maps"]["combined"][p]
            < s["widths_68_target_like_maps"]["r3"][p]
            for p in (*PARAM_NAMES, "joint_volume_68")
        },
        "combined_joint_region_smaller": {
            est: s["joint_volume_68"]["combined"] < s["joint_volume_68"][est]
            for est in ("r3", "r4", "plain_nre")
        },
        "wall_under_60_min": s["wall_s"] <= 3600,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1, help="seed of the simulated target")
    ap.add_argument("--config", default=None, help="YAML budget (default: PopulationConfig)")
    ap.add_argument("--run", default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder (smoke runs: elsewhere)")
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/population.py", *sys.argv[1:]])
    cfg = load_yaml(PopulationConfig, args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    speed = reference_speed_s()  # the machine's speed at the start (not in wall_s)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run or tmp)
        s = run_chain(
            cfg, run, target_seed=args.seed, progress=True, command=command, shipped=False
        )  # the whole chain, every network trained here
        for name in FIGURES:
            shutil.copyfile(run / name, out / f"population_{name}")
    s["wall_s"] = round(time.perf_counter() - t0, 1)
    s["machine"] = "2-core CPU, no GPU"
    s["reference_speed_s"] = speed
    s["target_seed"] = args.seed
    s["checks"] = checks(s)
    s["definitions"] = {
        "coverage.r3": "targeted maps, theta from the prior truncated to N >= N_det and to "
        "r3's last truncation box (r3_rounds)",
        "coverage.combined": "targeted maps, theta from the r4-route posterior (prior x "
        "p(I=1 | theta)) in r3's last box, posterior p(theta) r3 E[r4] in that box",
        "r3_rounds": "r3's truncation rounds (TMNRE): each round's first-stage steps and the "
        "box its theta was drawn from (prior_fraction: the box's share of the prior box); "
        "the head stage trains in the last box",
        "coverage.r4": "full-model maps run through r1, their true detected lists",
        "coverage.plain_nre": "full-model maps, theta from the prior",
        "intervals": "central intervals of each marginal on the grid (N in steps of "
        "grid_n_step); the coverage checks use the same grid",
        "joint coverage": "truth inside the joint highest-density region of each level: grid "
        "cells denser than the estimator's own density at the truth hold less than the level",
        "joint_volume_68": "fraction of the prior box inside the joint 68% highest-density region",
        "widths_68_target_like_maps": "mean over the combined coverage maps (the target's "
        "detections, theta from the r4-route posterior) of r3's and the combination's 68% "
        "widths and joint 68% volumes",
        "reference_speed_s": "seconds of probcat.provenance.reference_speed_s (a reference "
        "convolution net on 1 Mpx) just before the chain started: about 2.5 on a normal day "
        "here; wall_s scales with it",
        "n_simulations": "r1 (fresh maps) + pool (r2, r4) + r3 (targeted) + plain NRE "
        "(as many as r3 and the pool together)",
        "samples_ess": "effective sample size 1 / sum(w^2) of each estimator's weights in "
        "posterior_samples.parquet (20,000 points drawn from an equal mixture of the four "
        "grid posteriors, weighted by each estimator's own density at the point over the "
        "mixture's)",
        "samples_intervals": "central 68% / 95% intervals read from the weighted samples "
        "(no grid in them); checks.samples_vs_grid_intervals_max_gap_in_68_widths: their "
        "largest distance from the grid's, over parameters and ends, in 68% widths",
        "coverage_checks_outside_2_se": "how many of the per-parameter coverage checks lie "
        "more than 2 standard errors from nominal, what a calibrated chain gives on average "
        "(4.55% of them) and the binomial probability of at least as many (treating the "
        "checks as independent, which they are not quite: they share maps)",
    }
    text = json.dumps(s, indent=1, default=float)
    atomic_write(out / "population.json", lambda tmp: Path(tmp).write_text(text))
    print(
        json.dumps(
            {k: s[k] for k in ("wall_s", "n_simulations", "truth", "checks")},
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
