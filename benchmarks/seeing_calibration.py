"""Detection probabilities under other seeing: the weights' calibration fitted at the
survey's seeing against the one the detector picks for the image's seeing.

Under a wider PSF than the survey's the network's detection probabilities are too high
for the calibration fitted at the survey's seeing. The shipped weights carry calibrations
refitted by the same recipe on validation scenes rendered under wider PSFs
(``fits.seeing_factors``: ``probcat train calibrate RUN --seeing-only``), and the
detector reads each image at the PSF width ratio it measures, with the calibration fitted
nearest it (:func:`probcat.infer.reliability.seeing_calibration`). For each factor, the
ratio is measured as ``benchmarks/robustness.py``'s seeing test does (a 1000x1000 field of
bulge+disk test galaxies under that PSF), and both calibrations are scored on the same
test scenes of the full morphology mixture (robustness.py's seeing test scenes: same
seeds, so its ``by_scale`` numbers are this benchmark's ``seeing_calibration``). MAP
detections, hence precision and recall, do not depend on the calibration. Writes
``benchmarks/results/seeing_calibration.json`` and ``seeing_calibration.png``:

    .venv/bin/python benchmarks/seeing_calibration.py

Other weights (``--weights``) write ``seeing_calibration_<name>.json`` (``<name>``: the
weights' name less ``detection_lsst_``); six-band weights are scored on scenes of DC2
galaxies (``dc2:morphology``; the seeing field: ``dc2``, bulge+disk) in all their bands:

    .venv/bin/python benchmarks/seeing_calibration.py --weights detection_lsst_ugrizy \
        --bank-size 2000 --class-bank-size 1000 --test-images 300
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
from probcat.infer.detect import at_seeing, measured_scale
from probcat.infer.reliability import seeing_calibration
from probcat.provenance import provenance
from probcat.weights import DEFAULT_DETECTION, load, load_detection

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("precision", "recall", "precision_at_0_9", "detection_ece", "detection_ece_interior")
NAMES = ("survey_calibration", "seeing_calibration")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=DEFAULT_DETECTION)
    ap.add_argument("--scales", default="0.8,1,1.25,1.5,2", help="PSF FWHM factors")
    ap.add_argument("--test-images", type=int, default=500, help="robustness.py's seeing test")
    ap.add_argument("--bank-size", type=int, default=4000, help="test galaxies per factor")
    ap.add_argument(
        "--class-bank-size", type=int, default=2000, help="bulge+disk galaxies of the field"
    )
    ap.add_argument("--seed", type=int, default=2029, help="robustness.py's seed")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rb = _paths.sibling("robustness")
    summarise = _paths.sibling("detection").summarise
    net, survey = load_detection(args.weights)
    bands = "".join(survey.band_names)  # e.g. "ugrizy"
    multi = len(bands) > 1  # six-band weights: DC2 galaxies (colours, redshifts)
    sigma = np.asarray(survey.noise_sigma, float) if multi else float(survey.noise_sigma[0])
    field_pop, test_pop = ("dc2", "dc2:morphology") if multi else ("parametric", "morphology")
    by_scale = {}
    for scale in [float(v) for v in args.scales.split(",") if v]:
        print(f"seeing x {scale:g} ...", flush=True)
        field_sim = rb.simulator(
            field_pop, "test", args.class_bank_size, psf_scale=scale, bands=bands
        )
        ratio = rb.field_seeing_ratio(net, survey, field_sim, args.seed)
        read_at = measured_scale(ratio)
        test = rb.simulator(test_pop, "test", args.bank_size, psf_scale=scale, bands=bands)
        scenes = rb.scenes_for(test, args.test_images, [args.seed, 77])
        factor = seeing_calibration(net, 1.0 if read_at is None else read_at)[0]
        row = {"measured_seeing_ratio": ratio, "calibration_factor": factor}
        for name, at in zip(NAMES, (None, read_at)):
            own = net.seeing_calibrations
            if at is None:
                net.seeing_calibrations = ()  # the survey's calibration, classes as read
            try:
                with torch.no_grad(), at_seeing(net, read_at):
                    r = rb.evaluate(net, scenes, sigma, with_sep=False, bands=bands)
            finally:
                net.seeing_calibrations = own
            m = rb.metrics(r, summarise, sep=False)["probcat"]
            row[name] = {k: m[k] for k in KEYS}
            print(f"  {name}: " + ", ".join(f"{k} {row[name][k]:.3f}" for k in KEYS), flush=True)
        by_scale[f"{scale:g}"] = row
    weights = load(args.weights)
    stem = "seeing_calibration"
    if args.weights != DEFAULT_DETECTION:  # e.g. seeing_calibration_ugrizy.json
        stem += "_" + args.weights.removeprefix("detection_lsst_")
    result = {
        "command": " ".join([".venv/bin/python benchmarks/seeing_calibration.py", *sys.argv[1:]]),
        "weights": args.weights,
        "weights_sha256": weights.sha256,
        "bands": bands,
        "populations": {"field": field_pop, "test": test_pop},
        "seeing_calibrations": (weights.manifest or {}).get("seeing_calibrations"),
        "test_images": args.test_images,
        "by_scale": by_scale,
        "definitions": {
            "survey_calibration": "the weights' calibration fitted at the survey's seeing",
            "seeing_calibration": "the calibration the detector uses by default: of the "
            "weights' calibrations (the survey's and those fitted under wider PSFs), the one "
            "nearest in log to the measured seeing ratio (calibration_factor; 1 when the ratio "
            "is within 3% of 1)",
            "measured_seeing_ratio": "the PSF width ratio probcat.detect measures on a "
            "1000x1000 field of bulge+disk test galaxies (populations.field) under that PSF",
            "metrics": "robustness.py's seeing test: MAP catalogs of 98x98 scenes of the "
            "full morphology mixture (test galaxies, populations.test), star/galaxy classes "
            "read at the measured ratio in both; detection ECE over all detections and over "
            "those 8 px or more inside; with six-band weights, DC2 galaxies (magnitudes, "
            "colours) in all six bands, detections matched and SNRs measured in i",
        },
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    prov = provenance(result["command"])
    result.update({k: v for k, v in prov.items() if k != "command"})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=float) + "\n"
    atomic_write(out / f"{stem}.json", lambda tmp: Path(tmp).write_text(text))
    figure(by_scale, out / f"{stem}.png")
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
        for j, (name, colour) in enumerate(zip(NAMES, ("C0", "C1"))):
            vals = [by_scale[s][name][key] for s in scales]
            ax[k].bar(x + (j - 0.5) * 0.38, vals, 0.38, color=colour, label=name.replace("_", " "))
        ax[k].set_xticks(x, [f"× {s}" for s in scales])
        ax[k].set_xlabel("PSF FWHM factor")
        ax[k].set_ylabel(label)
    ax[0].axhline(0.9, color="k", lw=0.8, ls=":")
    ax[0].set_ylim(0.8, 1.0)
    ax[0].legend(loc="lower left")
    fig.tight_layout()

    def save(tmp):
        fig.savefig(tmp, dpi=110, format="png")

    atomic_write(path, save)
    plt.close(fig)


if __name__ == "__main__":
    main()
