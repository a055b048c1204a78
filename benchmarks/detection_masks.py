"""Six-band detection where bands have no data: the shipped ugrizy detector reading masked
pixels as no light, against the same detector handing such images to
``detection_lsst_ugrizy_masked`` (trained further with bands masked: what ``probcat
detect`` and ``probcat photoz`` do by default).

A pixel without data in one band is read as 0, no light: where the i band is masked the
shipped weights lose most faint galaxies, though five bands still show them. This
benchmark takes ``--fields`` held-out 400×400 LSST ugrizy fields at 10-year depth
(test-split DC2 galaxies and stars; seeds of their own, apart from the photo-z
benchmarks') and sets pixels to NaN (no data):

- ``clean``: nothing masked;
- ``half_<band>``: one band without data over the field's left half;
- ``defects``: each band its own chip gaps, bad columns, bright-star masks and field
  edge (``photoz_masks.py``'s, drawn apart from the training's masks).

Arms: ``shipped_only`` (``detection_lsst_ugrizy`` reads every image), ``default``
(``probcat.load("detection_lsst_ugrizy")`` as users get it: an image with a pixel
without data in some of its bands but not all is read by the masked weights) and
``masked_only`` (``detection_lsst_ugrizy_masked`` on every image, clean ones too: what it
does where nothing is masked). Metrics over the sources within 7 px of a pixel masked in
some band but not all (``zone``; on clean fields, none), outside it (``outside``) and over
the whole field (``all``): precision (detections at probability > 0.5 matched within 2 px
to a true source of any brightness), recall of the sources with true i-band aperture
SNR > 3 and at SNR 3-10, F1, and the star/galaxy class of the matched sources (accuracy,
and star F1 at SNR > 12 as ``benchmarks/detection.py`` counts it).

Writes ``benchmarks/results/detection_masks.json`` and ``detection_masks.png``.

    .venv/bin/python benchmarks/detection_masks.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import _paths  # first: keeps benchmarks/ off the import path
import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
BANDS = "ugrizy"
SCENARIOS = ("clean", *(f"half_{b}" for b in BANDS), "defects")
ZONE_PX = 7  # px from a partly masked pixel: the sources the masks touch
MATCH_PX = 2.0
ARMS = ("shipped_only", "default", "masked_only")


def zone_of(image: np.ndarray) -> np.ndarray:
    """``(H, W)``: the pixels within :data:`ZONE_PX` of a pixel without data in some band
    but not all (NaN in ``image`` ``(bands, H, W)``)."""
    from scipy.ndimage import distance_transform_edt

    nan = ~np.isfinite(image)
    partial = nan.any(0) & ~nan.all(0)
    if not partial.any():
        return partial
    return distance_transform_edt(~partial) <= ZONE_PX


def score(cat, truth, zone: np.ndarray) -> dict:
    """Counts of one field: per region (zone, outside, all), true positives and
    detections, true sources (SNR > 3; 3-10) and those matched, class agreements."""
    from probcat.metrics.detection import match

    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    cx, cy = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    snr = np.asarray(truth["snr"], float)[:, BANDS.index("i")]
    t_gal = np.asarray(truth["galaxy"], bool)
    c_gal = np.asarray(cat["galaxy_prob"], float) > 0.5
    ti, dj = match(np.stack([tx, ty], 1), np.stack([cx, cy], 1), MATCH_PX)
    hit_t = np.zeros(len(tx), bool)
    hit_t[ti] = True
    hit_c = np.zeros(len(cx), bool)
    hit_c[dj] = True
    h, w = zone.shape

    def inside(x, y):
        ix = np.clip(np.round(x).astype(int), 0, w - 1)
        iy = np.clip(np.round(y).astype(int), 0, h - 1)
        return zone[iy, ix]

    zt, zc = inside(tx, ty), inside(cx, cy)
    out = {}
    for region, sel_t, sel_c in (
        ("zone", zt, zc),
        ("outside", ~zt, ~zc),
        ("all", np.ones_like(zt), np.ones_like(zc)),
    ):
        pair = sel_t[ti]  # matched pairs whose true source lies in the region
        bright = pair & (snr[ti] > 12)
        out[region] = {
            "det": int(sel_c.sum()),
            "tp": int((hit_c & sel_c).sum()),
            "n3": int((sel_t & (snr > 3)).sum()),
            "hit3": int((hit_t & sel_t & (snr > 3)).sum()),
            "n3_10": int((sel_t & (snr > 3) & (snr <= 10)).sum()),
            "hit3_10": int((hit_t & sel_t & (snr > 3) & (snr <= 10)).sum()),
            "pairs": int(pair.sum()),
            "class_ok": int((t_gal[ti] == c_gal[dj])[pair].sum()),
            # stars above SNR 12: true stars called stars, stars missed, galaxies called stars
            "star_tp": int((~t_gal[ti] & ~c_gal[dj])[bright].sum()),
            "star_fn": int((~t_gal[ti] & c_gal[dj])[bright].sum()),
            "star_fp": int((t_gal[ti] & ~c_gal[dj])[bright].sum()),
            # the region's detections: their probability and whether they are real
            "prob": np.asarray(cat["prob"], float)[sel_c],
            "real": hit_c[sel_c],
        }
    return out


def metrics(counts: list[dict]) -> dict:
    """Precision, recall, F1 and classification from the fields' summed counts."""
    from probcat.metrics.calibration import expected_calibration_error

    s = {k: sum(c[k] for c in counts) for k in counts[0] if k not in ("prob", "real")}
    prob = np.concatenate([c["prob"] for c in counts])
    real = np.concatenate([c["real"] for c in counts])

    def ratio(a, b):
        return float(a / b) if b else None

    p, r = ratio(s["tp"], s["det"]), ratio(s["hit3"], s["n3"])
    star_p = ratio(s["star_tp"], s["star_tp"] + s["star_fp"])
    star_r = ratio(s["star_tp"], s["star_tp"] + s["star_fn"])
    return {
        "n_true_snr_gt_3": s["n3"],
        "n_detections": s["det"],
        "precision": p,
        "recall": r,
        "f1": None if p is None or r is None or p + r == 0 else 2 * p * r / (p + r),
        "recall_snr_3_10": ratio(s["hit3_10"], s["n3_10"]),
        "class_accuracy": ratio(s["class_ok"], s["pairs"]),
        "precision_at_0_9": float(real[prob >= 0.9].mean()) if (prob >= 0.9).any() else None,
        "detection_ece": expected_calibration_error(prob, real) if len(prob) else None,
        "star_f1_snr_gt_12": None
        if star_p is None or star_r is None or star_p + star_r == 0
        else 2 * star_p * star_r / (star_p + star_r),
    }


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in SCENARIOS if s != "clean"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    x = np.arange(len(names))
    for ax, key, label in zip(
        axes,
        ("recall", "precision", "class_accuracy"),
        ("recall (true i SNR > 3)", "precision", "star/galaxy accuracy"),
    ):
        for j, arm in enumerate(ARMS):
            vals = [results[s][arm]["zone"][key] or np.nan for s in names]
            ax.bar(x + (j - 1) * 0.27, vals, 0.27, label=arm)
        clean = results["clean"]["shipped_only"]["all"][key]
        ax.axhline(clean, color="k", ls="--", lw=1, label="clean field, shipped")
        ax.set_xticks(x, names, rotation=30)
        ax.set_ylim(min(0.6, np.nanmin([results[s][a]["zone"][key] or 1 for s in names
                                        for a in ARMS]) - 0.02), 1.0)  # fmt: skip
        ax.set_title(f"{label}, within {ZONE_PX} px of a partly masked pixel", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=4)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from probcat.api import Detector, load
    from probcat.catalog import atomic_write
    from probcat.provenance import provenance

    pm = _paths.sibling("photoz_masks")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=16, help="400-px fields")
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/detection_masks.py",
                        *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    if args.fields < 1:
        sys.exit("--fields: at least 1")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    scenes = pm.fields(args.fields, args.seed)
    default = load("detection_lsst_ugrizy", threads=2, kind="detection")
    if default.masked_weights is None:
        sys.exit("detection_lsst_ugrizy has no masked weights registered")
    # the same network and manifest, bar the sha256 that names it: no masked weights
    man = {k: v for k, v in default.manifest.items() if k != "sha256"}
    arms = {
        "shipped_only": Detector(default.net, default.survey, man, threads=2),
        "default": default,
        "masked_only": load(default.masked_weights, threads=2, kind="detection"),
    }
    results, routed = {}, {}
    for scenario in SCENARIOS:
        counts = {arm: [] for arm in arms}
        routed[scenario] = 0
        for f, scene in enumerate(scenes):
            image = pm.masked_image(scene, scenario, np.random.default_rng([args.seed, 77, f]))
            zone = zone_of(image)
            for arm, det in arms.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # NaN pixels read as masked: expected
                    cat = det.catalog(image)
                if arm == "default":
                    routed[scenario] += cat.meta["input"].get("masked_weights") is not None
                counts[arm].append(score(cat, scene.catalog, zone))
        results[scenario] = {
            arm: {r: metrics([c[r] for c in cs]) for r in ("zone", "outside", "all")}
            for arm, cs in counts.items()
        }
        results[scenario]["fields_read_by_masked_weights"] = routed[scenario]
        for arm in arms:
            m = results[scenario][arm]["zone" if scenario != "clean" else "all"]
            print(f"{scenario} {arm}: precision {m['precision']:.3f}, recall {m['recall']:.3f}"
                  f" (3-10: {m['recall_snr_3_10']:.3f}), class {m['class_accuracy']:.3f} "
                  f"({m['n_true_snr_gt_3']} sources)", flush=True)  # fmt: skip
    out = {
        "command": command,
        "fields": args.fields,
        "field_size": pm.SIZE,
        "depth_years": 10.0,
        "seed": args.seed,
        "weights": {"default": "detection_lsst_ugrizy", "masked": default.masked_weights},
        "masked_weights_sha256": arms["masked_only"].manifest.get("sha256"),
        "weights_sha256": {
            "detection_lsst_ugrizy": default.manifest.get("sha256"),
            default.masked_weights: arms["masked_only"].manifest.get("sha256"),
        },
        "results": results,
        "definitions": {
            "regions": f"zone: within {ZONE_PX} px of a pixel without data in some band but "
            "not all (none on clean fields); outside: the rest; all: the whole field. A "
            "detection counts in the region of its position, a true source in its own",
            "scenarios": "clean: nothing masked; half_<band>: that band NaN over the field's "
            "left half; defects: per band chip gaps, bad columns, bright-star masks and a "
            "field edge (benchmarks/photoz_masks.py defects(), seeds [seed, 77, field])",
            "arms": "shipped_only: detection_lsst_ugrizy reads every image, masked pixels as "
            "zeros; default: probcat.load('detection_lsst_ugrizy'), an image with a pixel "
            "masked in some band but not all read by the masked weights; masked_only: the "
            "masked weights on every image",
            "metrics": "MAP catalogs at probability > 0.5, matched to the truth within 2 px "
            "(Hungarian); precision over all detections, recall over true sources with "
            "i-band aperture SNR > 3 (and 3-10, on the unmasked image); class_accuracy: "
            "galaxy_prob > 0.5 against the truth over matched sources; star_f1_snr_gt_12: "
            "stars as the positive class, matched sources above SNR 12; precision_at_0_9: "
            "of the detections with prob >= 0.9; detection_ece: 10-bin ECE of the "
            "detections' prob against whether they are real",
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure(results, args.out / "detection_masks.png")
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(out, indent=1, default=float)
    atomic_write(args.out / "detection_masks.json", lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    main()
