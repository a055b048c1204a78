"""Measured blendedness against the truth: probcat's deblended models and SEP's ellipses on
the same held-out scenes, one run.

Blendedness (Bosch et al. 2018; paper 000 eqs. 13-14) is the share of a galaxy's light
that overlaps its neighbours', ``1 - <I, I> / <I, I_all>``: 0 for an isolated galaxy, near
1 for a faint one on a brighter one. Survey catalogues carry it to select clean galaxies,
and paper 000 bins every deblending metric by its true value. ``probcat deblend`` gives a
``blendedness`` column computed on its models (``probcat.infer.deblend.blendedness``);
without models, the same formula can be applied to the sources of a SEP catalogue drawn as
elliptical Gaussians of their isophotal second moments (``a, b, theta``) and flux, which is
the baseline here.

Each galaxy of ``blend`` scenes (test-split galaxies, a scene seed no training uses) that a
detection matches (Hungarian, within 2 px) is scored: probcat's MAP detections deblended
(``probcat.deblend``, no posterior samples) and SEP's detections (paper 000's settings),
each against the galaxy's true blendedness from the noiseless isolated images. Reported
for each method's own matches and for the galaxies both match: Spearman rank correlation,
median absolute error, the share within 0.05, and as a test for "blended" (true > 0.1)
precision and recall at measured > 0.1; medians by true blendedness (figure).

Writes ``benchmarks/results/blendedness.json`` and ``blendedness.png``.

    .venv/bin/python benchmarks/blendedness.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
import sep
import torch

RESULTS = Path(__file__).resolve().parent / "results"
MATCH_PX = 2.0
BLENDED = 0.1  # true blendedness above which a galaxy counts as blended
EDGES = [0.0, 0.01, 0.03, 0.1, 0.2, 0.4, 1.0]


def gaussian_blendedness(cat, shape) -> np.ndarray:
    """Blendedness of each SEP source drawn as an elliptical Gaussian of its isophotal
    second moments (``a``, ``b``, ``theta``) and flux, over the image ``shape``."""
    from probcat.infer.deblend import Models, blendedness, paste_models

    n = len(cat["x"])
    x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    a = np.maximum(np.asarray(cat["a"], float), 0.3)
    b = np.maximum(np.asarray(cat["b"], float), 0.3)
    t = np.asarray(cat["theta"], float)
    flux = np.maximum(np.asarray(cat["flux"], float), 0.0)
    half = int(np.clip(np.ceil(5 * a.max()), 3, 40)) if n else 3
    cx, cy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    r = np.arange(-half, half + 1, dtype=float)
    stamps = np.zeros((n, 1, 2 * half + 1, 2 * half + 1), np.float32)
    for i in range(n):
        dx = r[None, :] + cx[i] - x[i]
        dy = r[:, None] + cy[i] - y[i]
        u = dx * np.cos(t[i]) + dy * np.sin(t[i])
        v = -dx * np.sin(t[i]) + dy * np.cos(t[i])
        g = np.exp(-0.5 * ((u / a[i]) ** 2 + (v / b[i]) ** 2))
        stamps[i, 0] = flux[i] * g / g.sum()
    models = Models(stamps, cx, cy, x, y, np.ones(n, bool))
    return blendedness(models, paste_models(models, shape))[:, 0]


def scores(true, est) -> dict:
    """Agreement of measured with true blendedness (NaN estimates left out)."""
    from scipy.stats import spearmanr

    ok = np.isfinite(est)
    t, e = true[ok], est[ok]
    blended, called = t > BLENDED, e > BLENDED
    out = {
        "n": int(ok.sum()),
        "n_nan": int((~ok).sum()),
        "spearman": float(spearmanr(t, e).statistic) if len(t) > 2 else None,
        "median_abs_error": float(np.median(np.abs(e - t))) if len(t) else None,
        "within_0_05": float(np.mean(np.abs(e - t) <= 0.05)) if len(t) else None,
        "blended_precision": float(np.mean(blended[called])) if called.any() else None,
        "blended_recall": float(np.mean(called[blended])) if blended.any() else None,
        "n_blended": int(blended.sum()),
        "bins": [],
    }
    for lo, hi in zip(EDGES[:-1], EDGES[1:]):
        sel = (t >= lo) & (t < hi) if hi < 1 else (t >= lo)
        out["bins"].append({
            "lo": lo, "hi": hi, "n": int(sel.sum()),
            "median_true": float(np.median(t[sel])) if sel.any() else None,
            "median": float(np.median(e[sel])) if sel.any() else None,
            "q16": float(np.quantile(e[sel], 0.16)) if sel.any() else None,
            "q84": float(np.quantile(e[sel], 0.84)) if sel.any() else None,
        })  # fmt: skip
    return out


def run(det, deb, *, population: str, n: int, seed: int) -> tuple[dict, dict]:
    """Every galaxy of ``n`` blend scenes of ``population`` (test split, scene seed
    ``seed``), measured by probcat (``det`` detections, ``deb`` deblended) and SEP."""
    import probcat
    from probcat.baselines.sep import sep_detect
    from probcat.metrics.detection import match
    from probcat.simulate.datasets import Simulation, SimulationConfig

    cfg = SimulationConfig(recipe="blend", n=n, seed=seed, split="test", population=population)
    sim = Simulation(cfg, progress=False)
    sigma = sim.sim.survey.noise_sigma
    # one per true galaxy: NaN when unmatched; sep_flag: SEP's "deblended from a parent" bit
    rows = {"true": [], "probcat": [], "sep": [], "sep_flag": [], "family": []}
    n_det = {"probcat": 0, "sep": 0}
    for i in range(n):
        scene, _ = sim.scene(i)
        cat, image = scene.catalog, scene.image
        h, w = image.shape[1:]
        inside = (cat["x"] >= 0) & (cat["x"] < w) & (cat["y"] >= 0) & (cat["y"] < h)
        gal = np.flatnonzero(cat["galaxy"] & inside)
        true_xy = np.stack([cat["x"][gal], cat["y"][gal]], 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = probcat.deblend(image, noise_sigma=sigma, weights=det, deblender=deb, samples=0)
        pc = res.catalog
        sc = sep_detect(image, sigma)
        measured = {
            "probcat": (np.stack([pc["x"], pc["y"]], 1), np.asarray(pc["blendedness"])[:, 0]),
            "sep": (np.stack([sc["x"], sc["y"]], 1), gaussian_blendedness(sc, (h, w))),
        }
        rows["true"].append(cat["blendedness"][gal, 0])
        rows["family"].append(cat["family"][gal] if "family" in cat else np.zeros(len(gal)))
        for name, (xy, b) in measured.items():
            n_det[name] += len(xy)
            out = np.full(len(gal), np.nan)
            it, jd = match(true_xy, xy, MATCH_PX)
            out[it] = b[jd]
            rows[name].append(out)
            if name == "sep":
                flag = np.full(len(gal), np.nan)
                flag[it] = (np.asarray(sc["flag"])[jd] & sep.OBJ_MERGED) > 0
                rows["sep_flag"].append(flag)
    r = {k: np.concatenate(v) for k, v in rows.items()}
    both = np.isfinite(r["probcat"]) & np.isfinite(r["sep"])
    result = {
        "population": population,
        "n_scenes": n,
        "n_true_galaxies": len(r["true"]),
        "n_detections": n_det,
        "matched": {k: int(np.isfinite(r[k]).sum()) for k in ("probcat", "sep")},
        "own_matches": {
            k: scores(r["true"][np.isfinite(r[k])], r[k][np.isfinite(r[k])])
            for k in ("probcat", "sep")
        },
        "common": {k: scores(r["true"][both], r[k][both]) for k in ("probcat", "sep")},
        "n_common": int(both.sum()),
    }
    # SEP's own word on blending: its deblending flag, as a test for "blended"
    flagged, blended = r["sep_flag"][both] > 0, r["true"][both] > BLENDED
    result["common"]["sep_flag"] = {
        "blended_precision": float(np.mean(blended[flagged])) if flagged.any() else None,
        "blended_recall": float(np.mean(flagged[blended])) if blended.any() else None,
        "flagged": int(flagged.sum()),
    }
    if population.startswith("morphology"):  # each family, probcat on its own matches
        from probcat.simulate.prior import FAMILIES

        result["by_family"] = {}
        for k, fam in enumerate(FAMILIES):
            sel = (r["family"] == k) & np.isfinite(r["probcat"])
            if sel.any():
                part = scores(r["true"][sel], r["probcat"][sel])
                result["by_family"][fam] = {m: v for m, v in part.items() if m != "bins"}
    return result, r


def figure(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    both = np.isfinite(r["probcat"]) & np.isfinite(r["sep"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, name in zip(axes, ("probcat", "sep")):
        t, e = r["true"][both], r[name][both]
        ax.scatter(t, e, s=3, alpha=0.3, color="C0" if name == "probcat" else "C1")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("true blendedness")
        ax.set_title(
            "probcat (deblended models)" if name == "probcat" else "SEP (Gaussian ellipses)"
        )
    axes[0].set_ylabel("measured blendedness")
    fig.suptitle(f"{int(both.sum())} galaxies matched by both (held-out blend scenes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from probcat.catalog import atomic_write
    from probcat.provenance import provenance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="detection_lsst_i")
    ap.add_argument("--deblender", default="deblender_lsst_i")
    ap.add_argument("--scenes", type=int, default=500, help="blend scenes (98 x 98 px)")
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument(
        "--morph-scenes",
        type=int,
        default=300,
        help="blend scenes of the morphology-rich prior's five families (0: none)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/blendedness.py", *(argv or sys.argv[1:])])
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    import probcat

    det = probcat.load(args.weights, threads=2, kind="detection")
    deb = probcat.load(args.deblender, threads=2)
    result, rows = run(det, deb, population="parametric", n=args.scenes, seed=args.seed)
    if args.morph_scenes:  # shapes the deblender never saw (its training: bulge + disk)
        morph, _ = run(det, deb, population="morphology", n=args.morph_scenes, seed=args.seed + 1)
        result["morphology"] = morph
    out = {"command": command, "weights": args.weights, "deblender": args.deblender,
           "seed": args.seed, **result}  # fmt: skip
    out["definitions"] = {
        "blendedness": "1 - <I, I> / <I, I_all> over the image pixels (Bosch et al. 2018; "
        "paper 000 eqs. 13-14); true: from the noiseless isolated images",
        "probcat": "the blendedness column of probcat.deblend (MAP detections, deblended "
        "models, wings included; no posterior samples)",
        "sep": "SEP detections (paper 000's settings) drawn as elliptical Gaussians of their "
        "isophotal a, b, theta and flux, the same formula",
        "matching": f"Hungarian within {MATCH_PX:g} px of true galaxies inside the image",
        "own_matches": "each method on the galaxies it matched; common: on those both matched",
        "morphology": "the same on blend scenes of the morphology-rich prior (the five "
        "families' test galaxies, scene seed seed + 1); by_family: probcat on its own matches",
        "blended": f"true blendedness > {BLENDED:g}; precision and recall of measured > "
        f"{BLENDED:g}",
        "sep_flag": "SEP's OBJ_MERGED flag (the object was deblended from a parent) as the "
        "test for blended, on the common galaxies",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure(rows, args.out / "blendedness.png")
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(out, indent=1, default=float)
    atomic_write(args.out / "blendedness.json", lambda tmp: Path(tmp).write_text(text))
    print(json.dumps({k: out[k] for k in ("matched", "n_common")}), flush=True)
    for part in ("own_matches", "common"):
        for k in ("probcat", "sep"):
            s = out[part][k]
            print(part, k, {m: s[m] for m in ("n", "spearman", "median_abs_error", "within_0_05",
                                              "blended_precision", "blended_recall")})  # fmt: skip
    print("common sep_flag", out["common"]["sep_flag"])
    print(f"wrote {args.out / 'blendedness.json'} in {out['wall_s']} s")


if __name__ == "__main__":
    main()
