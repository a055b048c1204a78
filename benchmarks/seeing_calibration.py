"""Detection probabilities under other seeing: the shipped calibration against the same
recipe refitted on validation scenes rendered at that seeing (an experiment; nothing it
fits is shipped).

Under a wider PSF than the survey's the shipped weights' calibrated ``prob`` is too high
(``benchmarks/robustness.py``, ``seeing``: precision at prob >= 0.9 of 0.927 at 1.5 times
the FWHM). Here, for each factor, the reliability fits (probability calibration and
feature density, the shipped recipe: half the scenes isolated, half survey cutouts) are
redone on ``--fit-scenes`` validation scenes of the full morphology mixture under that
PSF, and both calibrations are scored on the test scenes of robustness.py's seeing test
(same seeds: its ``shipped`` numbers are robustness.json's). Factor 1 is the control: a
refit at the survey's own seeing, which says how much of any gain is the refit itself.
MAP detections, hence precision and recall, do not depend on the calibration. Writes
``benchmarks/results/seeing_calibration.json`` and ``seeing_calibration.png``:

    .venv/bin/python benchmarks/seeing_calibration.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _paths  # first: keeps benchmarks/ off the import path
import numpy as np
import torch

from probcat.catalog import atomic_write
from probcat.infer.reliability import fit_reliability
from probcat.provenance import provenance
from probcat.weights import DEFAULT_DETECTION, load_detection

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("precision", "recall", "precision_at_0_9", "detection_ece", "detection_ece_interior")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=DEFAULT_DETECTION)
    ap.add_argument("--scales", default="0.8,1,1.25,1.5", help="PSF FWHM factors")
    ap.add_argument("--fit-scenes", type=int, default=1024, help="validation scenes per fit")
    ap.add_argument("--test-images", type=int, default=500, help="robustness.py's seeing test")
    ap.add_argument("--bank-size", type=int, default=4000, help="test galaxies per factor")
    ap.add_argument("--seed", type=int, default=2029, help="robustness.py's seed")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rb = _paths.sibling("robustness")
    summarise = _paths.sibling("detection").summarise
    net, survey = load_detection(args.weights)
    sigma = float(survey.noise_sigma[0])
    shipped = (net.prob_calibration, net.feature_density)
    by_scale = {}
    for scale in [float(v) for v in args.scales.split(",") if v]:
        print(f"seeing x {scale:g}: fit ...", flush=True)
        val = rb.simulator("morphology", "val", 2000, psf_scale=scale)
        refit = fit_reliability(
            net,
            val,
            survey.noise_sigma,
            n_scenes=args.fit_scenes,
            rng=np.random.default_rng([args.seed, 5, round(scale * 100)]),
            inside_fraction=0.5,
            source=f"validation scenes at {scale:g} x the FWHM",
        )
        test = rb.simulator("morphology", "test", args.bank_size, psf_scale=scale)
        scenes = rb.scenes_for(test, args.test_images, [args.seed, 77])
        row = {}
        for name, (cal, dens) in (("shipped", shipped), ("refit_at_seeing", refit)):
            net.prob_calibration, net.feature_density = cal, dens
            with torch.no_grad():
                r = rb.evaluate(net, scenes, sigma, with_sep=False)
            m = rb.metrics(r, summarise, sep=False)["probcat"]
            row[name] = {k: m[k] for k in KEYS}
            print(f"  {name}: " + ", ".join(f"{k} {row[name][k]:.3f}" for k in KEYS), flush=True)
        net.prob_calibration, net.feature_density = shipped
        by_scale[f"{scale:g}"] = row
    result = {
        "command": " ".join([".venv/bin/python benchmarks/seeing_calibration.py", *sys.argv[1:]]),
        "weights": args.weights,
        "fit_scenes": args.fit_scenes,
        "fit_population": "morphology (validation galaxies), half isolated, half cutouts",
        "test_images": args.test_images,
        "by_scale": by_scale,
        "definitions": {
            "shipped": "the weights' own calibration (fitted at the survey's seeing)",
            "refit_at_seeing": "probability calibration and feature density fitted as the "
            "shipped ones were, on validation scenes rendered under that seeing",
            "metrics": "robustness.py's seeing test: MAP catalogs of 98x98 scenes of the "
            "full morphology mixture (test galaxies); detection ECE over all detections "
            "and over those 8 px or more inside",
        },
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    prov = provenance(result["command"])
    result.update({k: v for k, v in prov.items() if k != "command"})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=float) + "\n"
    atomic_write(out / "seeing_calibration.json", lambda tmp: Path(tmp).write_text(text))
    figure(by_scale, out / "seeing_calibration.png")
    print(json.dumps(by_scale, indent=1, default=float))


def figure(by_scale: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = list(by_scale)
    x = np.arange(len(scales))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for k, (key, label) in enumerate(
        (("precision_at_0_9", "precision at prob ≥ 0.9"), ("detection_ece", "detection ECE"))
    ):
        for j, (name, colour) in enumerate((("shipped", "C0"), ("refit_at_seeing", "C1"))):
            vals = [by_scale[s][name][key] for s in scales]
            ax[k].bar(x + (j - 0.5) * 0.38, vals, 0.38, color=colour, label=name)
        ax[k].set_xticks(x, [f"× {s}" for s in scales])
        ax[k].set_xlabel("PSF FWHM factor")
        ax[k].set_ylabel(label)
    ax[0].set_ylim(0.85, 1.0)
    ax[0].legend(loc="lower left")
    fig.tight_layout()

    def save(tmp):
        fig.savefig(tmp, dpi=110, format="png")

    atomic_write(path, save)
    plt.close(fig)


if __name__ == "__main__":
    main()
