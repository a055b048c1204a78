"""Detection on galaxy shapes the encoder has not seen: leave-one-family-out, against SEP.

Five morphology families (:data:`probcat.simulate.prior.FAMILIES`). For each family F
among ``--left-out`` (default: every family but bulge_disk, which the runs' starting
weights were trained on), a run trained on every other family (``--lofo DIR/F``, made by
``probcat train detection -c benchmarks/configs/lofo_F.yaml``) is tested on scenes whose
galaxies are all of family F (test split, disjoint from every training galaxy); its
probability calibration and feature density are fitted on validation scenes of its own
training families only. ``in_distribution`` is the shipped weights on scenes of the full
mixture. The shipped weights (trained on all families) and the bulge+disk weights of v6
(``detection_lsst_i_bulgedisk``) are also run on every family, side by side with SEP on
the same images. ``seeing``: the shipped weights and SEP on scenes of the full mixture
whose PSF FWHM is ``--seeing`` times the survey's. ``hubble``: the shipped and bulge+disk
weights, and SEP, on scenes of real galaxies cut from the Hubble eXtreme Deep Field
(population ``hdf``, :mod:`probcat.simulate.hubble`; installs the ``hubble`` extra when
missing), shapes that no training run saw.

    .venv/bin/python benchmarks/robustness.py --lofo runs/lofo

``benchmarks/lofo/F`` holds finished leave-one-out runs (``detection.pt`` and its manifest,
with the training command and commit), so ``--lofo benchmarks/lofo`` reruns the benchmark
without retraining once every family's run is there.

writes ``benchmarks/results/robustness.json`` and ``robustness_*.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import _paths  # first: keeps benchmarks/ off the import path
import numpy as np
import torch
from scipy.stats import norm

from probcat.baselines.sep import sep_detect
from probcat.catalog import atomic_write
from probcat.infer.calibration import CentroidCalibration
from probcat.infer.deblend import match_nearest
from probcat.infer.detect import (
    batch_tile_features,
    catalog_from_decisions,
    decode,
    map_meta,
    tile_image,
)
from probcat.infer.reliability import (
    EDGE_ZONES,
    OOD_FLAG,
    annotate,
    calibrate,
    edge_distance,
    fit_reliability,
    pooled_evidence,
)
from probcat.metrics import expected_calibration_error
from probcat.metrics.detection import detected_snr, match
from probcat.provenance import provenance
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.prior import FAMILIES
from probcat.simulate.scene import SceneConfig, SceneSimulator
from probcat.tiles import TileCatalog
from probcat.weights import DEFAULT_DETECTION, load, load_detection

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "detection_lsst_i_bulgedisk"


def simulator(
    population: str, split: str, n: int, seed: int = 0, psf_scale: float = 1.0, bands="i"
) -> SceneSimulator:
    from probcat.survey import Survey

    bank = SourceBank.load_or_build(
        Survey.lsst(bands=bands).with_psf_scale(psf_scale),
        BankConfig(population=population, split=split, n_galaxies=n, catalog_seed=seed),
    )
    return SceneSimulator(bank, SceneConfig(98, 98))


SEEING_KEYS = ("precision", "recall", "f1", "recall_snr_3_10", "precision_at_0_9",
               "detection_ece", "detection_ece_interior")  # fmt: skip


def seeing(
    net, survey, sigma, scales, n_images, bank_size, seed, summarise, class_bank_size
) -> dict:
    """The shipped weights and SEP on scenes of the full mixture whose PSF FWHM is each
    of ``scales`` times the survey's (same scene seed at every scale), the weights reading
    them at the seeing ``probcat.detect`` measures (below), as the detector does by default
    (probability calibration fitted nearest that seeing); and the weights'
    star/galaxy classification at the true positions on as many bulge + disk scenes
    (``class_bank_size`` test galaxies) under the same PSF: as trained (``classification``)
    and from stamps resampled to the seeing that ``probcat.detect`` measures on a
    1000x1000 field of those galaxies under that PSF (``classification_matched``, at
    ``measured_seeing_ratio``), as the detector does by default."""
    from probcat.infer.detect import at_seeing, measured_scale

    out = {}
    for scale in scales:
        print(f"seeing x {scale:g} ...", flush=True)
        bulge_disk = simulator("parametric", "test", class_bank_size, psf_scale=scale)
        ratio = field_seeing_ratio(net, survey, bulge_disk, seed)
        sim = simulator("morphology", "test", bank_size, psf_scale=scale)
        with at_seeing(net, measured_scale(ratio)):  # as the detector reads such an image
            r = evaluate(net, scenes_for(sim, n_images, [seed, 77]), sigma, with_sep=True)
        m = metrics(r, summarise, sep=True)
        scenes = scenes_for(bulge_disk, n_images, [seed, 78])
        with at_seeing(net, ratio):
            matched = classification_at_truth(net, scenes, sigma)
        out[f"{scale:g}"] = {
            "probcat": {k: m["probcat"][k] for k in SEEING_KEYS},
            "sep": {k: m["sep"][k] for k in ("precision", "recall", "f1", "recall_snr_3_10")},
            "f1_minus_sep": m["f1_minus_sep"],
            "ood_flagged_fraction": m.get("ood_flagged_fraction"),
            "classification": classification_at_truth(net, scenes, sigma),
            "measured_seeing_ratio": ratio,
            "classification_matched": matched,
        }
    return out


@torch.no_grad()
def field_seeing_ratio(net, survey, sim, seed) -> float | None:
    """The PSF width ratio ``probcat.detect`` measures on a 1000x1000 field of ``sim``'s
    galaxies (None: too few bright isolated sources)."""
    from probcat.api import Detector

    field = SceneSimulator(sim.bank, SceneConfig(1000, 1000)).sample(
        np.random.default_rng([seed, 79]), truth=False
    )
    info = Detector(net, survey).catalog(field.image, background="none").meta["input"]
    return info.get("seeing_ratio")


def classification_at_truth(net, scenes, sigma, chunk: int = 100) -> dict:
    """Galaxy F1 above SNR 10 and star F1 above SNR 12 of the sources of ``scenes``,
    each classified at its true position (``benchmarks/detection.py``'s
    ``classification``; F1 None where no source is called a star or a galaxy)."""
    det_bench = _paths.sibling("detection")  # the same definitions
    rows = {"prob": [], "galaxy": [], "snr": []}
    for start in range(0, len(scenes), chunk):
        part = scenes[start : start + chunk]
        imgs = np.stack([s.image for s in part])
        tiles = TileCatalog.from_full([s.catalog for s in part], net.tile_size)
        got = det_bench.classified_at_truth(
            net, batch_tile_features(net, imgs, sigma), tile_image(net, imgs, sigma), tiles
        )
        for k, v in got.items():
            rows[k].append(v)
    c = det_bench.classification({k: np.concatenate(v) for k, v in rows.items()})
    out = {k: c[k] for k in ("galaxy_f1", "star_f1", "n_galaxies", "n_stars")}
    return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in out.items()}


def hubble(shipped, baseline, sigma, summarise, n_images, bank_size, seed) -> dict:
    """The shipped weights (with SEP) and the bulge+disk weights on scenes whose galaxies
    are real galaxies of the Hubble eXtreme Deep Field (population ``hdf``, test third of
    its stamps; :mod:`probcat.simulate.hubble`): shapes made apart from probcat's prior."""
    from probcat.simulate.hubble import _split_stamps, hdf_stamps

    sim = simulator("hdf", "test", bank_size)
    scenes = scenes_for(sim, n_images, [seed, 4099])
    return {
        "n_images": n_images,
        "n_stamps_test": int(len(_split_stamps(len(hdf_stamps()[0]), "test"))),
        "shipped": metrics(evaluate(shipped, scenes, sigma, with_sep=True), summarise, sep=True),
        "bulgedisk": metrics(
            evaluate(baseline, scenes, sigma, with_sep=False), summarise, sep=False
        ),
    }


def scenes_for(sim, n, seed):
    rng = np.random.default_rng(seed)
    return [sim.sample(rng) for _ in range(n)]


@torch.no_grad()
def evaluate(net, scenes, sigma, *, with_sep: bool, chunk: int = 100, bands=("i",)) -> dict:
    """probcat (and SEP) on the same scenes: rows for the detection.py summaries, plus the
    probabilities, outcomes and OOD scores of probcat's MAP detections. ``bands``: the
    scenes' (``sigma`` then one noise sigma per band); SNRs are those of the i plane, and
    SEP (i-band scenes only) detects on it."""
    plane = list(bands).index("i")
    sig_i = float(np.broadcast_to(np.asarray(sigma, float), (len(bands),))[plane])
    if with_sep and len(bands) > 1:
        raise ValueError("SEP runs on i-band scenes only")
    truth = {"snr": [], "blend": []}
    matched = {"p0.5": [], "cal0.5": [], "sep": []}
    det = {m: {"snr": [], "matched": []} for m in matched}
    keys = ("prob", "prob_raw", "prob_pooled", "ood", "edge", "tile_prob", "tile_truth",
            "nearest_d", "nearest_taken", "prob_batch")  # fmt: skip
    extra = {k: [] for k in keys}
    # matched MAP detections, both axes: |true - x| / x_sd, and the half-widths (in sd) of
    # the catalogue's 68.3% / 95.4% intervals (its own calibration, the image's mixture where
    # the weights carry two) and of the training galaxies' calibration alone
    cz = {k: [] for k in ("z", "snr", "k68", "k95", "k68_prior", "k95_prior", "k68_batch",
                          "k95_batch")}  # fmt: skip
    matches = []  # per scene: its matched detections
    cutout_w = []  # per scene: the calibration's probability that it is a survey cutout
    shapes_w = []  # per scene: its probability that its galaxies are unlike the prior's
    ests = []  # per scene: its MAP catalogue, for the evidence pooled over every scene
    for start in range(0, len(scenes), chunk):
        part = scenes[start : start + chunk]
        imgs = np.stack([s.image for s in part])
        feats = batch_tile_features(net, imgs, sigma)
        pixels = tile_image(net, imgs, sigma)
        dec = decode(net, feats, image=pixels)
        extra["tile_prob"].append(dec.marginal.prob.numpy().ravel())
        tiles = TileCatalog.from_full([s.catalog for s in part], net.tile_size)
        nty, ntx = feats.shape[-2:]
        extra["tile_truth"].append((tiles.n_sources[:, :nty, :ntx] > 0).numpy().ravel())
        for b, scene in enumerate(part):
            cat = scene.catalog
            truth["snr"].append(cat["snr"][:, plane])
            truth["blend"].append(cat["blendedness"][:, plane])
            true_xy = np.stack([cat["x"], cat["y"]], 1)
            shape = imgs.shape[-2:]
            est = catalog_from_decisions(  # the product's metadata: its centroid calibration
                dec, b, dec.marginal, shape, net.tile_size, tuple(bands), map_meta(net, 0.5)
            )
            est = annotate(est, net, feats[b], pixels[b])
            ests.append(est)
            if "cutout_probability" in est.meta:
                cutout_w.append(est.meta["cutout_probability"])
            if "real_shapes_probability" in est.meta:
                shapes_w.append(est.meta["real_shapes_probability"])
            keep = np.asarray(est["prob"], float) > 0.5
            runs = [("p0.5", est), ("cal0.5", {k: np.asarray(est[k])[keep] for k in ("x", "y")})]
            if with_sep:
                runs.append(("sep", sep_detect(scene.image, sigma)))
            for name, c in runs:
                i, j = match(true_xy, np.stack([c["x"], c["y"]], 1))
                mt = np.zeros(len(cat), bool)
                mt[i] = True
                me = np.zeros(len(c["x"]), bool)
                me[j] = True
                matched[name].append(mt)
                det[name]["matched"].append(me)
                det[name]["snr"].append(detected_snr(scene.image[plane], c["x"], c["y"], sig_i))
                if name == "p0.5":
                    _centroid_errors(cz, net, est, cat, i, j)
                    matches.append(j)
                    cz["snr"].extend([cat["snr"][i, plane]] * 2)  # true SNR, both axes
                    d_near, taken = _nearest_truth(true_xy, c, mt)
                    extra["nearest_d"].append(d_near)
                    extra["nearest_taken"].append(taken)
            extra["prob"].append(np.asarray(est["prob"], float))
            extra["prob_raw"].append(
                np.asarray(est["prob_raw"] if "prob_raw" in est.colnames else est["prob"], float)
            )
            extra["prob_pooled"].append(
                net.prob_calibration(extra["prob_raw"][-1])
                if net.prob_calibration is not None
                else extra["prob_raw"][-1]
            )
            extra["edge"].append(edge_distance(est["x"], est["y"], shape))
            extra["ood"].append(
                np.asarray(est["ood_score"], float)
                if "ood_score" in est.colnames
                else np.full(len(est), np.nan)
            )
    # the same detections read with the weights that every scene's evidence gives together
    # (the scenes as a user's many images of one survey: probcat.pooled_evidence)
    pooled = pooled_evidence(ests)
    kw = {k: pooled[k] for k in ("real_shapes", "cutout")}
    batch = [calibrate(e, net, **kw) for e in ests]
    extra["prob_batch"] = [np.asarray(e["prob"], float) for e in batch]
    for e, j in zip(batch, matches):  # the centroid intervals of those weights
        for level, key in ((0.6827, "k68"), (0.9545, "k95")):
            k = _interval_factor(_catalog_calibration(e), e, j, level)
            k = np.broadcast_to(np.asarray(k, float), len(j))
            cz[key + "_batch"].append(np.r_[k, k])  # both axes, as z
    cat_ = np.concatenate
    return {
        "truth": {k: cat_(v) for k, v in truth.items()},
        "matched": {k: cat_(v) for k, v in matched.items() if v},
        "det": {m: {k: cat_(v) for k, v in d.items()} for m, d in det.items() if d["snr"]},
        **{k: cat_(v) for k, v in extra.items()},
        "centroid": {k: cat_(v) if v else np.zeros(0) for k, v in cz.items()},
        "cutout_probability": np.asarray(cutout_w, float),
        "real_shapes_probability": np.asarray(shapes_w, float),
        "pooled_evidence": pooled,
    }


def _centroid_errors(cz: dict, net, est, truth, i, j) -> None:
    """Append to ``cz`` the standardised errors of the matched detections ``j`` (true sources
    ``i``), both axes, with the interval half-widths of the catalogue's centroid calibration
    (its metadata's: the weights', mixed with their second one by the image's weight where
    they carry two) and of the weights' own alone (Gaussian without one), each detection's
    own where the calibration is binned by detection SNR."""
    cal = _catalog_calibration(est)
    for t, s in (("x", "x_sd"), ("y", "y_sd")):
        z = np.abs(np.asarray(truth[t], float)[i] - np.asarray(est[t], float)[j])
        cz["z"].append(z / np.asarray(est[s], float)[j])
        for name, c in (("", cal), ("_prior", net.centroid_calibration)):
            for level, key in ((0.6827, "k68"), (0.9545, "k95")):
                k = _interval_factor(c, est, j, level)
                cz[key + name].append(np.broadcast_to(np.asarray(k, float), len(z)))


def _catalog_calibration(est):
    """The centroid calibration a MAP catalogue's metadata name (None without one)."""
    cal = est.meta.get("centroid_calibration")
    return CentroidCalibration.from_dict(cal) if cal is not None else None


def _interval_factor(cal, est, j, level: float):
    """Half-width (in sd) of the ``level`` interval of detections ``j`` of ``est`` by the
    centroid calibration ``cal`` (Gaussian without one; per detection where it is binned
    by detection SNR)."""
    if cal is None:
        return float(norm.ppf(0.5 + level / 2))
    snr = np.asarray(est["detection_snr"], float)[j] if "detection_snr" in est else None
    return cal.factor(level) if snr is None else cal.factor(level, snr)


def _nearest_truth(true_xy, est, matched_truth):
    """For each detection: the distance to the nearest true source (inf without one) and
    whether that source is matched to some detection."""
    ex, ey = np.asarray(est["x"], float), np.asarray(est["y"], float)
    k = match_nearest(true_xy[:, 0], true_xy[:, 1], ex, ey, np.inf)
    if not len(true_xy):
        return np.full(len(ex), np.inf), np.zeros(len(ex), bool)
    return np.hypot(*(true_xy[k] - np.stack([ex, ey], 1)).T), matched_truth[k]


def false_detections(r) -> dict:
    """What the false MAP detections (detected SNR 3-1000, matched to no true source) are:
    ``split`` (the nearest true source is already matched to another detection: a clump or
    blob of a galaxy read as a source of its own, or a second detection of one source),
    ``mislocated`` (the nearest true source is 2-4 px away and matched by no detection: the
    source found but placed off its light-weighted centre), ``other`` (no true
    source within 4 px: noise, artefacts, sources beyond the image edge); with the median
    detected SNR, calibrated probability and ``ood_score`` of each kind."""
    d = r["det"]["p0.5"]
    false = (d["snr"] >= 3) & (d["snr"] <= 1000) & ~d["matched"]
    split = false & r["nearest_taken"]
    misloc = false & ~r["nearest_taken"] & (r["nearest_d"] <= 4.0)
    kinds = {"split": split, "mislocated": misloc, "other": false & ~split & ~misloc}
    n = int(false.sum())
    out = {"n_false": n}
    for name, sel in kinds.items():
        out[name] = {
            "fraction": float(sel.sum() / n) if n else float("nan"),
            "median_snr": float(np.median(d["snr"][sel])) if sel.any() else None,
            "median_prob": float(np.median(r["prob"][sel])) if sel.any() else None,
            "flagged_fraction": float(np.mean(r["ood"][sel] > OOD_FLAG)) if sel.any() else None,
        }
    return out


def auc(score_pos, score_neg) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    pos, neg = np.asarray(score_pos, float), np.asarray(score_neg, float)
    if not len(pos) or not len(neg):
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def metrics(r, summarise, *, sep: bool) -> dict:
    p = summarise(r, "p0.5")
    d = r["det"]["p0.5"]
    in_range = (d["snr"] >= 3) & (d["snr"] <= 1000)
    real = d["matched"]
    hi = in_range & (r["prob"] >= 0.9)
    hi_raw = in_range & (r["prob_raw"] >= 0.9)
    hi_pooled = in_range & (r["prob_pooled"] >= 0.9)
    hi_batch = in_range & (r["prob_batch"] >= 0.9)
    inner = r["edge"] >= EDGE_ZONES[-1]
    keys = ("precision", "recall", "f1", "recall_snr_3_10", "n_detections")
    c = summarise(r, "cal0.5")
    out = {
        "probcat_calibrated_threshold": {k: c[k] for k in keys},
        "probcat": {
            **{k: p[k] for k in keys},
            "precision_at_0_9": float(real[hi].mean()) if hi.any() else float("nan"),
            "fraction_at_0_9": float(hi.sum() / max(in_range.sum(), 1)),
            "precision_at_0_9_raw": float(real[hi_raw].mean()) if hi_raw.any() else float("nan"),
            "precision_at_0_9_pooled": float(real[hi_pooled].mean())
            if hi_pooled.any()
            else float("nan"),
            # every MAP detection: the population the catalogue's prob describes
            "detection_ece": expected_calibration_error(r["prob"], real),
            "detection_ece_raw": expected_calibration_error(r["prob_raw"], real),
            "detection_ece_pooled": expected_calibration_error(r["prob_pooled"], real),
            "detection_ece_batch": expected_calibration_error(r["prob_batch"], real),
            "precision_at_0_9_batch": float(real[hi_batch].mean())
            if hi_batch.any()
            else float("nan"),
            **{
                f"batch_{k}_probability": r["pooled_evidence"][k] for k in ("real_shapes", "cutout")
            },
            "detection_ece_snr_3_1000": expected_calibration_error(
                r["prob"][in_range], real[in_range]
            ),
            "detection_ece_tiles": expected_calibration_error(r["tile_prob"], r["tile_truth"]),
            "detection_ece_interior": expected_calibration_error(r["prob"][inner], real[inner]),
            "detection_ece_interior_pooled": expected_calibration_error(
                r["prob_pooled"][inner], real[inner]
            ),
            "fraction_interior": float(inner.mean()) if len(inner) else float("nan"),
            **{
                f"mean_{k}": float(r[k].mean()) if len(r[k]) else None
                for k in ("cutout_probability", "real_shapes_probability")
            },
            **centroid_coverage(r["centroid"]),
        },
    }
    ood = r["ood"][in_range]
    if np.isfinite(ood).all() and len(ood):
        out["ood_flag_auc"] = auc(ood[~real[in_range]], ood[real[in_range]])
        out["ood_flagged_fraction"] = float(np.mean(ood > OOD_FLAG))
        out["false_among_flagged"] = (
            float(np.mean(~real[in_range][ood > OOD_FLAG])) if np.any(ood > OOD_FLAG) else None
        )
    out["false_detections"] = false_detections(r)
    if sep:
        s = summarise(r, "sep")
        out["sep"] = {k: s[k] for k in keys}
        out["f1_minus_sep"] = out["probcat"]["f1"] - out["sep"]["f1"]
    return out


def centroid_coverage(cz: dict) -> dict:
    """Coverage of the true centroids of matched MAP detections (both axes pooled) by the
    catalogue's calibrated 68.3% / 95.4% intervals, and by those of the training galaxies'
    calibration alone (``_prior``: what they were before weights carried a second one)."""
    z = cz["z"]
    out = {}
    for name in ("", "_prior", "_batch"):
        for level, key in (("68", "k68"), ("95", "k95")):
            if len(cz[key + name]) != len(z):  # not measured (no pooled reading)
                continue
            hit = z <= cz[key + name]
            out[f"centroid_coverage_{level}{name}"] = float(hit.mean()) if len(z) else None
    out["centroid_n"] = int(len(z))
    out["centroid_coverage_by_snr"] = [
        {
            "snr": [lo, hi],
            "n": int(m.sum()),
            "68": float(np.mean(z[m] <= cz["k68"][m])) if m.any() else None,
            "95": float(np.mean(z[m] <= cz["k95"][m])) if m.any() else None,
        }
        for lo, hi in SNR_RANGES
        for m in [(cz["snr"] >= lo) & (cz["snr"] < hi)]
    ]
    return out


SNR_RANGES = ((3, 10), (10, 30), (30, 100), (100, 1000))  # of centroid_coverage_by_snr


def reliability_rows(r) -> dict:
    """10-bin reliability of MAP detections (raw and calibrated) for the figure."""
    from probcat.metrics.calibration import reliability

    d = r["det"]["p0.5"]
    ok = (d["snr"] >= 3) & (d["snr"] <= 1000)
    rows = {}
    for key in ("prob_raw", "prob"):
        conf, acc, count = reliability(r[key][ok], d["matched"][ok])
        rows[key] = {"conf": conf.tolist(), "freq": acc.tolist(), "count": count.tolist()}
    return rows


def figures(result: dict, rel_rows: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(result["per_family"])
    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.2
    xs = np.arange(len(fams))
    series = [
        ("v6 bulge+disk", lambda f: result["per_family"][f]["bulgedisk"]["probcat"]["f1"]),
        ("shipped (all families)", lambda f: result["per_family"][f]["shipped"]["probcat"]["f1"]),
        (
            "left out of training",
            lambda f: (result["left_out"].get(f) or {}).get("probcat", {}).get("f1", np.nan),
        ),
        ("SEP", lambda f: result["per_family"][f]["shipped"]["sep"]["f1"]),
    ]
    for k, (label, get) in enumerate(series):
        ax.bar(xs + (k - 1.5) * w, [get(f) for f in fams], w, label=label)
    ax.set_xticks(xs, fams)
    ax.set_ylabel("F1 (true SNR 3-1000)")
    ax.set_ylim(0.4, 1.0)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Detection F1 by galaxy family")
    fig.tight_layout()
    fig.savefig(out / "robustness_f1.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(rel_rows), figsize=(3.2 * len(rel_rows), 3.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], rel_rows.items()):
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for key, style in (("prob_raw", "o--"), ("prob", "s-")):
            conf, freq = np.array(rows[key]["conf"]), np.array(rows[key]["freq"])
            ok = np.isfinite(conf)
            ax.plot(
                conf[ok], freq[ok], style, ms=3, label="raw" if key == "prob_raw" else "calibrated"
            )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("detection probability")
        ax.set_xlim(0.45, 1.0)
        ax.set_ylim(0.0, 1.02)
    axes[0][0].set_ylabel("fraction real")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Reliability of MAP detections on left-out families", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "robustness_reliability.png", dpi=120)
    plt.close(fig)


MARGIN_KEYS = ("precision", "recall", "precision_at_0_9", "detection_ece", "detection_ece_raw",
               "detection_ece_pooled", "detection_ece_interior",
               "mean_cutout_probability", "mean_real_shapes_probability",
               "detection_ece_batch", "precision_at_0_9_batch",
               "batch_cutout_probability")  # fmt: skip


def margin_8(net, sim, sigma, summarise, n_images: int, seed) -> dict:
    """``net`` on scenes of ``sim``'s bank in the training layout: 100 px, sources up to
    8 px beyond the edges (their light enters the image), as in any image cut from a
    survey."""
    wide = sim.with_layout(SceneConfig(100, 100, margin=8))
    r = evaluate(net, scenes_for(wide, n_images, seed), sigma, with_sep=False)
    p = metrics(r, summarise, sep=False)["probcat"]
    return {k: p[k] for k in MARGIN_KEYS}


def _lofo_net(run: Path, n_fit: int):
    """The run's network with reliability fitted on validation scenes of its own families."""
    man = json.loads((run / "manifest.json").read_text())
    net, survey = load_detection(run / "detection.pt")
    pop = man["config"]["data"]["population"]
    if net.prob_calibration is None or net.feature_density is None:
        val = simulator(pop, "val", man["config"]["data"]["val_bank_size"])
        cal, dens = fit_reliability(
            net,
            val,
            survey.noise_sigma,
            n_scenes=n_fit,
            rng=[7, 29],
            source=f"{n_fit} validation scenes of {pop}",
        )
        net.prob_calibration, net.feature_density = cal, dens
    return net, pop, man


def ensure_hubble() -> None:
    """The Hubble Deep Field image ships with scikit-image (the ``hubble`` extra): install
    it into this environment when missing."""
    import subprocess

    if importlib.util.find_spec("skimage") is not None:
        return
    root = Path(__file__).resolve().parents[1]
    print("installing the hubble extra (scikit-image) for this benchmark ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-e", f"{root}[hubble]"], check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=DEFAULT_DETECTION, help="shipped weights (all families)")
    ap.add_argument("--baseline", default=BASELINE, help="weights trained on bulge+disk only")
    ap.add_argument("--lofo", default=None, help="folder of leave-one-family-out runs (DIR/F)")
    ap.add_argument("--left-out", default="sersic,clumpy,spiral,irregular")
    ap.add_argument("--n-images", type=int, default=1000, help="scenes per family")
    ap.add_argument("--bank-size", type=int, default=4000, help="test galaxies per family")
    ap.add_argument("--fit-scenes", type=int, default=256, help="reliability fit, LOFO runs")
    ap.add_argument("--seed", type=int, default=2029)
    ap.add_argument(
        "--seeing", default="0.8,1,1.25,1.5", help="PSF FWHM factors of the seeing test ('': none)"
    )
    ap.add_argument("--seeing-images", type=int, default=500, help="scenes per seeing factor")
    ap.add_argument(
        "--seeing-class-bank-size",
        type=int,
        default=2000,
        help="bulge+disk test galaxies of the classification under each seeing factor",
    )
    ap.add_argument(
        "--hubble-images",
        type=int,
        default=1000,
        help="scenes of Hubble Deep Field galaxies (0: none)",
    )
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/robustness.py", *sys.argv[1:]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    summarise = _paths.sibling("detection").summarise  # the same definitions
    shipped, survey = load_detection(args.weights)
    baseline, _ = load_detection(args.baseline)
    sigma = float(survey.noise_sigma[0])
    left_out = [f for f in args.left_out.split(",") if f]
    result = {
        "command": command,
        "machine": "2-core CPU, no GPU",
        "families": list(FAMILIES),
        "weights": args.weights,
        "weights_sha256": load(args.weights).sha256,
        "baseline": args.baseline,
        "n_images_per_family": args.n_images,
        "image_size": 98,
        "seed": args.seed,
        "held_out": "test-split galaxies of each family (disjoint from every training "
        "galaxy), scene seeds of their own",
    }
    print("in-distribution (all families) ...", flush=True)
    mix_sim = simulator("morphology", "test", args.bank_size)
    mix = scenes_for(mix_sim, args.n_images, [args.seed, 99])
    result["in_distribution"] = metrics(
        evaluate(shipped, mix, sigma, with_sep=True), summarise, sep=True
    )
    del mix
    result["in_distribution"]["margin_8"] = margin_8(
        shipped, mix_sim, sigma, summarise, args.n_images, [args.seed, 99, 8]
    )
    scales = [float(v) for v in args.seeing.split(",") if v]
    if scales:
        result["seeing"] = {
            "trained_psf_scales": (load(args.weights).manifest or {})
            .get("config", {})
            .get("data", {})
            .get("psf_scales", [1.0]),
            "n_images": args.seeing_images,
            "class_bank_size": args.seeing_class_bank_size,
            "by_scale": seeing(
                shipped,
                survey,
                sigma,
                scales,
                args.seeing_images,
                args.bank_size,
                args.seed,
                summarise,
                args.seeing_class_bank_size,
            ),
        }
    if args.hubble_images:
        print("Hubble Deep Field galaxies ...", flush=True)
        ensure_hubble()
        result["hubble"] = hubble(
            shipped, baseline, sigma, summarise, args.hubble_images, args.bank_size, args.seed
        )
    result["per_family"], result["left_out"], rel_rows = {}, {}, {}
    for code, fam in enumerate(FAMILIES):
        print(f"{fam} ...", flush=True)
        sim = simulator(f"morphology:{fam}", "test", args.bank_size)
        scenes = scenes_for(sim, args.n_images, [args.seed, code])
        r = evaluate(shipped, scenes, sigma, with_sep=True)
        result["per_family"][fam] = {
            "shipped": metrics(r, summarise, sep=True),
            "bulgedisk": metrics(
                evaluate(baseline, scenes, sigma, with_sep=False), summarise, sep=False
            ),
        }
        run = Path(args.lofo) / fam if args.lofo else None
        if fam in left_out and run is not None and (run / "detection.pt").exists():
            net, pop, man = _lofo_net(run, args.fit_scenes)
            r = evaluate(net, scenes, sigma, with_sep=True)
            result["left_out"][fam] = {
                "trained_on": pop,
                "run_steps": man.get("steps"),
                "run_sha256": man.get("sha256"),
                **metrics(r, summarise, sep=True),
            }
            rel_rows[fam] = reliability_rows(r)
            result["left_out"][fam]["margin_8"] = margin_8(
                net, sim, sigma, summarise, args.n_images, [args.seed, code, 8]
            )
        elif fam in left_out:
            result["left_out"][fam] = None
            print(f"  no leave-one-out run for {fam} under {args.lofo}", flush=True)
    lo = [v for v in result["left_out"].values() if v]
    result["targets"] = {
        "precision": ">= 0.93 on every left-out family",
        "precision_at_0_9": ">= 0.97",
        "f1_minus_sep": ">= 0.10",
        "detection_ece": "<= 0.03",
    }
    result["targets_met"] = (
        {
            "precision": all(v["probcat"]["precision"] >= 0.93 for v in lo),
            "precision_at_0_9": all(v["probcat"]["precision_at_0_9"] >= 0.97 for v in lo),
            "f1_minus_sep": all(v["f1_minus_sep"] >= 0.10 for v in lo),
            "detection_ece": all(v["probcat"]["detection_ece"] <= 0.03 for v in lo),
            "every_left_out_family_run": len(lo) == len(left_out),
        }
        if lo
        else None
    )
    result["definitions"] = {
        "precision, recall, f1, recall_snr_3_10": "as benchmarks/detection.py: MAP catalogue "
        "at threshold 0.5, matches within 2 px; precision over detections with detected SNR "
        "in [3, 1000], recall over true sources with SNR in [3, 1000]",
        "probcat_calibrated_threshold": "the MAP catalogue's detections whose calibrated prob "
        "exceeds 0.5 (an alternative threshold, for comparison)",
        "precision_at_0_9": "precision among those detections with calibrated prob >= 0.9 "
        "(the shipped calibration, per edge zone and ood_score bin; _pooled: one map for all "
        "detections; "
        "_raw: the network's own probability)",
        "detection_ece": "10-bin ECE of the calibrated probabilities of all MAP detections "
        "against being real (matched within 2 px); _raw: the network's probabilities; "
        "_pooled: one calibration map, no edge zones or ood_score bins; _snr_3_1000: "
        "detections with detected SNR 3-1000 only; _tiles: detection.py's, marginal tile "
        "probabilities against occupancy, all tiles; _interior: detections at least 8 px "
        "inside the image (the shipped map and the single pooled one), which are "
        "fraction_interior of them",
        "detection_ece_batch, precision_at_0_9_batch": "the same detections calibrated with "
        "the evidence of every scene of the test pooled (the scenes as a user's many images "
        "of one survey: probcat.pooled_evidence of their MAP catalogues, then each read with "
        "real_shapes and cutout at batch_real_shapes_probability and "
        "batch_cutout_probability, what probcat.detect(images, real_shapes='pooled', "
        "cutout='pooled') does); the main numbers read each 98-px scene by its own detections",
        "ood_flag_auc": "probability that a false detection has a higher ood_score than a "
        "real one (Mann-Whitney AUC), on the left-out family",
        "margin_8": "the same weights (under in_distribution: the shipped ones, on the "
        "full mixture) on scenes of the training layout (100 px, sources up "
        "to 8 px beyond the edges, as in a survey cutout); the main numbers use detection.py's "
        "layout (98 px, every source inside: isolated scenes)",
        "mean_cutout_probability": "mean over the scenes of the calibration's probability "
        "that a scene is a survey cutout (sources beyond its edges) rather than an isolated "
        "scene, from the number of its detections near its edges (None: a calibration "
        "fitted on one layout only)",
        "centroid_coverage_68, centroid_coverage_95": "fraction of the true centroids of "
        "matched MAP detections (within 2 px; x and y pooled, centroid_n coordinates) inside "
        "the catalogue's calibrated 68.3% / 95.4% intervals, x +- k x_sd (the catalogue's "
        "centroid calibration: for weights that carry a second one, fitted on Hubble Deep "
        "Field galaxies, the two mixed by the image's real_shapes_probability); _prior: with "
        "the calibration fitted on the training galaxies alone; _batch: with the catalogue's "
        "calibration mixed by the real-shapes weight pooled over the test's scenes (as "
        "detection_ece_batch); half-widths k of the source's detection SNR where the "
        "calibration is binned by it",
        "centroid_coverage_by_snr": "the same (the catalogue's intervals) in ranges of the "
        "matched sources' true SNR",
        "mean_real_shapes_probability": "mean over the scenes of the calibration's "
        "posterior mean share of a scene's galaxies unlike the prior's (from its detections' "
        "ood_score values; the weight of the second map, docs/robustness.md; None: weights "
        "with one)",
        "per_family": "on each family's test scenes (those of its left-out test): the shipped "
        "weights (trained on every family; with SEP) and the bulge+disk weights",
        "left_out": "weights trained on every family but this one with the shipped weights' "
        "schedule and bank size (benchmarks/configs/lofo_F.yaml), started from the v6 "
        "bulge+disk weights (which is why bulge_disk itself is not left out), their "
        "calibration and density fitted on validation scenes of their training families",
        "seeing": "the shipped weights and SEP on scenes of the full mixture (test "
        "galaxies) rendered with the atmospheric PSF FWHM times each factor (by_scale; "
        "trained_psf_scales: the factors the weights were trained on), probcat reading them "
        "at measured_seeing_ratio as the detector does by default (beyond 3% of 1: the "
        "probability calibration of the weights fitted nearest that seeing); classification: "
        "the shipped weights' star/galaxy classes at the true positions on as many bulge+disk "
        "scenes (class_bank_size test galaxies) under the same PSF, as benchmarks/"
        "detection.py's classification (galaxy F1 above SNR 10, star F1 above SNR 12; None: "
        "no source called one), from stamps as cut (the weights as trained); "
        "classification_matched: the same, the stamp classifier reading stamps resampled to "
        "measured_seeing_ratio, the PSF width ratio probcat.detect measures (and, by default, "
        "matches) on a 1000x1000 field of the same bulge+disk galaxies under that PSF",
        "hubble": "the shipped weights (with SEP) and the bulge+disk weights on scenes of "
        "population hdf: real galaxies cut from the Hubble eXtreme Deep Field image that "
        "scikit-image ships (test third of its stamps, matched to the prior's sizes by rank, "
        "turned and mirrored at random; probcat.simulate.hubble), which no training run saw",
        "false_detections": "the false MAP detections (detected SNR 3-1000) by kind: split "
        "(nearest true source matched to another detection), mislocated (nearest true "
        "source 2-4 px away and unmatched), other; median detected SNR, calibrated prob and "
        "the fraction with ood_score above the flag, per kind",
    }
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    prov = provenance(command, packages=("scikit-image",))  # the Hubble Deep Field image's
    result.update({k: v for k, v in prov.items() if k != "command"})
    text = json.dumps(result, indent=2, default=float) + "\n"
    atomic_write(out / "robustness.json", lambda tmp: Path(tmp).write_text(text))
    if rel_rows:
        figures(result, rel_rows, out)
    print(
        json.dumps(
            {k: result[k] for k in ("in_distribution", "left_out", "targets_met")},
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
