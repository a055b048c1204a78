"""Which probability calibration holds on galaxy shapes the network never saw: the
calibration designs compared family by family, on validation scenes only.

For each leave-one-family-out run (``--lofo DIR/F``, as in ``benchmarks/robustness.py``)
the detections of fresh validation scenes of its own training families are collected as
the fits after training collect them (``fits.reliability_scenes`` scenes, half of them
survey-like cutouts, half isolated), and calibrations of several designs are fitted on them:

* ``shipped``: one map per layout split by neighbour distance, edge zone and ``ood_score``
  bin (what the shipped weight files carried up to v7.5, and the first map of ``shapes``);
* ``ood_only``: one map per layout split by ``ood_score`` bin alone;
* ``none``: one isotonic map per layout;
* ``with_hdf``: the shipped design fitted (calibration and ``ood_score`` density) on
  validation scenes of the training families plus Hubble Deep Field galaxies
  (population ``<families>+hdf``: what ``probcat train calibrate RUN --population`` does);
* ``shapes``: what the shipped weights carry since v7.6 (``ShapesCalibration``): the
  ``shipped`` map and a second one fitted the same way on validation scenes of Hubble
  Deep Field galaxies (half as many), mixed per image by the Bayes weight, prior 0.1, of
  its detections' ``ood_score`` values (their densities measured on those scenes and on
  a quarter as many fresh scenes of the training families).

Each is scored on validation scenes of the family the run left out (isolated 98-px scenes,
as the robustness benchmark's main numbers, and 100-px cutouts with sources up to 8 px
beyond the edges) and on other validation scenes of its training families
(``in_distribution``): the 10-bin ECE of all MAP detections, the ECE of those 8 px or
more inside the image, and the precision among detections with calibrated prob >= 0.9.
The shipped weights (trained on every family) are scored on the full mixture the same way.
Each evaluation set also scores the two kinds of ``ood_score`` density (the nearest of
``OOD_NEIGHBOURS`` reference vectors, and v7's single Gaussian): how well each separates
false from real detections, on the family left out and on Hubble Deep Field galaxies
(``hubble``).
No test scene is read: this is how a calibration design is chosen, family by family, so
that the choice is not made on the families it is judged on.

    .venv/bin/python benchmarks/calibration_lofo.py --lofo benchmarks/lofo

writes ``benchmarks/results/calibration_lofo.json`` and ``calibration_lofo.png``.
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
from probcat.infer.reliability import (
    EDGE_ZONES,
    OOD_FLAG,
    OOD_NEIGHBOURS,
    ShapesCalibration,
    calibration_from_detections,
    detections_with_outcomes,
    fit_feature_density,
    ood_log_ratio,
    reliability_detections,
)
from probcat.metrics import expected_calibration_error
from probcat.provenance import provenance
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.scene import SceneConfig, SceneSimulator
from probcat.survey import Survey
from probcat.weights import DEFAULT_DETECTION, load, load_detection

RESULTS = Path(__file__).resolve().parent / "results"
FULL = ("ood", "edge", "neighbour")
DESIGNS = {"shipped": FULL, "ood_only": ("ood",), "none": ()}
EXTRA_DESIGNS = ("with_hdf", "shapes")  # fitted on other scenes as well
SHAPES_PRIOR = 0.1  # as the shipped weights' fits.real_shapes_prior
TITLES = {
    "left_out": "family left out, isolated scenes",
    "left_out_cutouts": "family left out, survey cutouts",
    "in_distribution": "training families (run named by the family it left out)",
}


def simulator(population: str, size: int, margin: int, n_galaxies: int) -> SceneSimulator:
    bank = SourceBank.load_or_build(
        Survey.lsst(bands="i"),
        BankConfig(population=population, split="val", n_galaxies=n_galaxies, catalog_seed=0),
    )
    return SceneSimulator(bank, SceneConfig(size, size, margin=margin))


def designs(net, pop: str, sigma: float, n_fit: int, n_gal: int, seed) -> tuple[dict, dict]:
    """``{design: (calibration, density)}`` fitted on validation scenes of ``pop`` (and,
    for ``with_hdf``, of ``pop+hdf``; for ``shapes``, of ``hdf`` too), and the two kinds of
    ``ood_score`` density of the real detections of ``pop``'s scenes:
    ``{"nearest_neighbour": ..., "gaussian": ...}``."""
    out, densities = {}, {}
    for fit_pop, names in ((pop, DESIGNS), (f"{pop}+hdf", {"with_hdf": FULL})):
        sim = simulator(fit_pop, 100, 8, n_gal)
        d, layouts = reliability_detections(
            net, sim, sigma, n_scenes=n_fit, rng=seed, inside_fraction=0.5
        )
        real = d["feats"][d["real"]]
        dens = fit_feature_density(real, neighbours=OOD_NEIGHBOURS)
        if not densities:
            densities = {"nearest_neighbour": dens, "gaussian": fit_feature_density(real)}
        for name, contexts in names.items():
            out[name] = (calibration_from_detections(d, layouts, contexts=contexts), dens)
    base, dens = out["shipped"]
    kw = {"inside_fraction": 0.5, "density": dens}
    d, layouts = reliability_detections(
        net, simulator("hdf", 100, 8, n_gal), sigma, n_scenes=n_fit // 2, rng=[*seed, 7], **kw
    )
    ref, _ = reliability_detections(
        net, simulator(pop, 100, 8, n_gal), sigma, n_scenes=n_fit // 4, rng=[*seed, 8], **kw
    )
    real = calibration_from_detections(d, layouts)
    log_ratio = ood_log_ratio(d["ood"], ref["ood"])
    out["shapes"] = (ShapesCalibration(base, real, log_ratio, SHAPES_PRIOR, "hdf"), dens)
    return out, densities


def ood_scores(densities: dict, e: dict) -> dict:
    """For each density: the probability that a false detection of ``e`` has a higher
    ``ood_score`` than a real one (Mann-Whitney AUC, ties half) and the flagged fraction."""
    from scipy.stats import mannwhitneyu

    out = {}
    for name, dens in densities.items():
        ood, real = dens.score(e["feats"]), e["real"]
        auc = float("nan")
        if real.any() and (~real).any():
            u = mannwhitneyu(ood[~real], ood[real]).statistic
            auc = float(u / ((~real).sum() * real.sum()))
        out[name] = {"auc_false_vs_real": auc, "flagged_fraction": float(np.mean(ood > OOD_FLAG))}
    return out


def score(cal, dens, e: dict, shape) -> dict:
    """Calibrated probabilities of the evaluation detections ``e`` (image by image: a
    layout calibration weighs each image's maps by its own detections) and their scores."""
    ood = dens.score(e["feats"])
    prob = np.zeros(len(e["prob"]))
    for s in np.unique(e["scene"]):
        m = e["scene"] == s
        prob[m] = cal(e["prob"][m], ood[m], e["edge"][m], e["neighbour"][m], shape=shape)
    real, inner, hi = e["real"], e["edge"] >= EDGE_ZONES[-1], prob >= 0.9
    return {
        "detection_ece": expected_calibration_error(prob, real),
        "detection_ece_interior": expected_calibration_error(prob[inner], real[inner]),
        "precision_at_0_9": float(real[hi].mean()) if hi.any() else float("nan"),
        "fraction_at_0_9": float(hi.mean()),
    }


def evaluate(net, fitted: dict, densities: dict, sets: dict, sigma, n_eval: int, seed) -> dict:
    out = {}
    for k, (key, sim) in enumerate(sets.items()):
        e = detections_with_outcomes(net, sim, sigma, n_scenes=n_eval, rng=[*seed, k])
        shape = sim.config.shape
        raw = expected_calibration_error(e["prob"], e["real"])
        out[key] = {
            "n_detections": int(len(e["prob"])),
            "fraction_real": float(e["real"].mean()),
            "detection_ece_raw": raw,
            **{name: score(cal, dens, e, shape) for name, (cal, dens) in fitted.items()},
            "ood_score": ood_scores(densities, e),
        }
        print(f"  {key}: " + "  ".join(
            f"{n} {out[key][n]['detection_ece']:.3f}" for n in fitted), flush=True)  # fmt: skip
    return out


def summary(runs: dict) -> dict:
    """Per design: mean and largest ECE and precision at prob >= 0.9 over the left-out
    families (isolated scenes and cutouts), and the mean in-distribution ECE."""
    lo = {f: r for f, r in runs.items() if f != "shipped"}
    out = {}
    for name in [*DESIGNS, *EXTRA_DESIGNS]:
        row = {}
        for kind in ("left_out", "left_out_cutouts"):
            ece = [r[kind][name]["detection_ece"] for r in lo.values()]
            p9 = [r[kind][name]["precision_at_0_9"] for r in lo.values()]
            row[kind] = {"ece_mean": float(np.mean(ece)), "ece_max": float(np.max(ece)),
                         "precision_at_0_9_min": float(np.min(p9))}  # fmt: skip
        row["in_distribution_ece_mean"] = float(
            np.mean([r["in_distribution"][name]["detection_ece"] for r in runs.values()])
        )
        out[name] = row
    for name in ("nearest_neighbour", "gaussian"):
        out[f"ood_score_{name}"] = {
            "auc_left_out": {
                f: r["left_out"]["ood_score"][name]["auc_false_vs_real"] for f, r in lo.items()
            },  # fmt: skip
            "auc_hubble": {
                f: r["hubble"]["ood_score"][name]["auc_false_vs_real"] for f, r in runs.items()
            },  # fmt: skip
            "flagged_fraction_in_distribution": float(
                np.mean(
                    [
                        r["in_distribution"]["ood_score"][name]["flagged_fraction"]
                        for r in runs.values()
                    ]
                )
            ),  # fmt: skip
        }
        v = out[f"ood_score_{name}"]
        v["auc_left_out_mean"] = float(np.mean(list(v["auc_left_out"].values())))
        v["auc_hubble_mean"] = float(np.mean(list(v["auc_hubble"].values())))
    return out


def figure(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*DESIGNS, *EXTRA_DESIGNS]
    kinds = ("left_out", "left_out_cutouts", "in_distribution")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, kind in zip(axes, kinds):
        fams = [f for f in runs if kind in runs[f]]
        x = np.arange(len(fams))
        for i, n in enumerate(names):
            v = [runs[f][kind][n]["detection_ece"] for f in fams]
            ax.bar(x + (i - 2) * 0.16, v, 0.16, label=n)
        ax.axhline(0.03, color="k", lw=0.8, ls="--")
        ax.set_xticks(x, fams, rotation=20)
        ax.set_title(TITLES[kind], fontsize=10)
    axes[0].set_ylabel("detection ECE (validation scenes)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lofo", default="benchmarks/lofo", help="leave-one-family-out runs (DIR/F)")
    ap.add_argument("--weights", default=DEFAULT_DETECTION, help="shipped weights")
    ap.add_argument("--fit-scenes", type=int, default=2048, help="as fits.reliability_scenes")
    ap.add_argument("--eval-scenes", type=int, default=400, help="scenes per evaluation set")
    ap.add_argument("--bank-size", type=int, default=4000, help="validation galaxies")
    ap.add_argument("--seed", type=int, default=5353)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/calibration_lofo.py", *sys.argv[1:]])
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    runs_in = {
        p.name: p for p in sorted(Path(args.lofo).iterdir()) if (p / "manifest.json").exists()
    }
    runs = {}
    for fam, path in [*runs_in.items(), ("shipped", None)]:
        print(f"{fam} ...", flush=True)
        if path is None:
            net, survey = load_detection(args.weights)
            pop = "morphology"
        else:
            net, survey = load_detection(path / "detection.pt")
            pop = json.loads((path / "manifest.json").read_text())["config"]["data"]["population"]
        sigma = float(survey.noise_sigma[0])
        fitted, densities = designs(
            net, pop, sigma, args.fit_scenes, args.bank_size, [args.seed, 1]
        )
        sets = {"in_distribution": simulator(pop, 98, 0, args.bank_size)}
        if path is not None:
            sets["left_out"] = simulator(f"morphology:{fam}", 98, 0, args.bank_size)
            sets["left_out_cutouts"] = simulator(f"morphology:{fam}", 100, 8, args.bank_size)
        else:
            sets["in_distribution_cutouts"] = simulator(pop, 100, 8, args.bank_size)
        sets["hubble"] = simulator("hdf", 98, 0, args.bank_size)
        scores = evaluate(net, fitted, densities, sets, sigma, args.eval_scenes, [args.seed, 2])
        runs[fam] = {"trained_on": pop, **scores}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command,
        "machine": "2-core CPU, no GPU",
        "weights": args.weights,
        "weights_sha256": load(args.weights).sha256,
        "fit_scenes": args.fit_scenes,
        "eval_scenes": args.eval_scenes,
        "designs": {
            **{k: list(v) for k, v in DESIGNS.items()},
            "with_hdf": list(FULL),
            "shapes": ["shipped", "hdf", f"prior {SHAPES_PRIOR}"],
        },  # fmt: skip
        "runs": runs,
        "summary": summary(runs),
        "definitions": {
            "scenes": "validation galaxies only (split=val), scene seeds of their own; no "
            "test scene is read",
            "detection_ece": "10-bin ECE of the calibrated probabilities of all MAP "
            "detections against being real (matched within 2 px); _interior: those 8 px or "
            "more inside the image; _raw: the network's own probability",
            "precision_at_0_9": "fraction real among the detections with calibrated prob "
            ">= 0.9 (every detected SNR)",
            "ood_score": "per evaluation set and ood_score density (nearest_neighbour: "
            "the distance to the nearest of OOD_NEIGHBOURS reference vectors, what new fits "
            "use; gaussian: the Mahalanobis distance of v7's files), both fitted on the real "
            "detections of the training families' fit scenes: auc_false_vs_real, the "
            "probability that a false detection scores higher than a real one (ties half), "
            "and the fraction flagged (ood_score > OOD_FLAG)",
            "hubble": "isolated 98-px scenes of Hubble Deep Field galaxies (validation "
            "third), which no network saw",
            "with_hdf": "the Hubble stamps' validation third, so its in_distribution and "
            "left-out numbers are on families whose calibration saw none of those shapes, "
            "but its fit saw Hubble galaxies",
            "shapes": "its second map is fitted on the Hubble stamps' validation third too, "
            "so its hubble numbers flatter it, as with_hdf's do",
        },
        "wall_s": round(time.perf_counter() - t0, 1),
        **provenance(command),
    }
    figure(runs, out / "calibration_lofo.png")
    text = json.dumps(result, indent=1)
    atomic_write(out / "calibration_lofo.json", lambda tmp: Path(tmp).write_text(text))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
