"""The brightest galaxies of a field: are they found? probcat (the shipped LSST-i weights)
and SEP on the same held-out fields, one run.

The standard benchmarks score every source, and most sources are faint: a miss among the
few brightest galaxies of a field hardly moves their precision and recall, yet it is the
first thing an astronomer sees on an image. Here each galaxy brighter than i = 22 of
400×400 LSST-i fields (10-year depth, the prior's counts, test-split galaxies that no
training run saw) is *found* when a detection lies within max(2 px, half its half-light
radius) of its centre (its light-weighted centroid), and *found within 2 px* when one lies
within 2 px (the other benchmarks' matching distance, which a large galaxy's irregular
light makes strict). Recall by i magnitude (< 19, 19-20, 20-21, 21-22), overall and per
morphology family, for

- ``morphology``: the five families of the morphology prior (bulge + disk, Sérsic,
  clumpy, spiral, irregular), the population the shipped weights were trained on;
- ``morphology:irregular``: irregular galaxies alone (the family most often missed);
- ``hdf``: real galaxies of the Hubble eXtreme Deep Field (:mod:`probcat.simulate.hubble`;
  the ``hubble`` extra), shapes that no training run saw.

Also: ``detections_per_galaxy``, the mean number of detections within a galaxy's half-light
radius (above 1: the galaxy is split); ``probcat_rescue``, probcat with ``rescue_bright``
(:mod:`probcat.infer.bright`), and how many detections the rescue added and how many of
them lie within 2 px of a true source; ``scenes_98px``: precision, recall and F1 (every
source, Hungarian matching within 2 px, as ``benchmarks/detection.py``) of 98-px scenes
of the same galaxies, with and without the rescue.

Writes ``benchmarks/results/bright.json`` and ``bright.png``.

    .venv/bin/python benchmarks/bright.py
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

RESULTS = Path(__file__).resolve().parent / "results"
BINS = ((14.0, 19.0), (19.0, 20.0), (20.0, 21.0), (21.0, 22.0))
FAMILY_NAMES = ("bulge_disk", "sersic", "clumpy", "spiral", "irregular", "hdf")
MATCH_PX = 2.0  # the other benchmarks' matching distance
EDGE_PX = 4.0  # galaxies centred this close to an edge are left out


def galaxies(det, sim, n_fields: int, seed) -> list[dict]:
    """One row per galaxy brighter than i = 22 (centred at least EDGE_PX inside) of
    ``n_fields`` fields: magnitude, family, half-light radius (px), distance to the
    nearest probcat and SEP detection, and the number of each within the half-light
    radius."""
    from probcat.baselines.sep import sep_detect

    sigma = float(sim.survey.noise_sigma[0])
    scale = sim.survey.pixel_scale
    rng = np.random.default_rng(seed)
    rows, rescues = [], []
    for _ in range(n_fields):
        scene = sim.sample(rng)
        cat = scene.catalog
        res = det.detect(scene.image, noise_sigma=[sigma], rescue_bright=True).catalog
        rescued = np.asarray(res["bright_rescue"], bool)
        found = {
            "probcat": det.detect(scene.image, noise_sigma=[sigma], rescue_bright=False).catalog,
            "probcat_rescue": res,
            "sep": sep_detect(scene.image, sigma),
        }
        h, w = scene.image.shape[-2:]
        x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
        mag = np.asarray(cat["mag"], float)[:, 0]
        inside = (x >= EDGE_PX) & (x <= w - 1 - EDGE_PX) & (y >= EDGE_PX) & (y <= h - 1 - EDGE_PX)
        # each rescued detection: is a true source (any brightness) within 2 px of it?
        for rx, ry in zip(np.asarray(res["x"])[rescued], np.asarray(res["y"])[rescued]):
            near = float(np.hypot(x - rx, y - ry).min()) if len(x) else np.inf
            rescues.append(near)
        keep = np.asarray(cat["galaxy"], bool) & (mag < BINS[-1][1]) & inside
        # population hdf: no family column, every galaxy a real one
        family = np.asarray(cat["family"]) if "family" in cat.colnames else np.full(len(cat), 5)
        for k in np.flatnonzero(keep):
            hlr = float(cat["disk_hlr"][k]) / scale
            row = {"mag": float(mag[k]), "family": int(family[k]), "hlr_px": hlr,
                   "galaxy": int(cat["source_id"][k])}  # fmt: skip
            for name, c in found.items():
                d = np.hypot(np.asarray(c["x"], float) - x[k], np.asarray(c["y"], float) - y[k])
                row[f"{name}_d"] = float(d.min()) if len(d) else np.inf
                row[f"{name}_n"] = int((d < max(hlr, MATCH_PX)).sum())
            rows.append(row)
    return rows, rescues


def scenes(det, sim, n: int, seed) -> dict:
    """Precision, recall and F1 (Hungarian matching within 2 px, every true source) of
    probcat with and without the rescue on ``n`` scenes, and the rescue's detections."""
    from probcat.metrics.detection import match

    sigma = float(sim.survey.noise_sigma[0])
    rng = np.random.default_rng(seed)
    tally = {name: np.zeros(4, int) for name in ("probcat", "probcat_rescue")}
    rescued = rescued_matched = 0
    for _ in range(n):
        scene = sim.sample(rng)
        true_xy = np.stack([scene.catalog["x"], scene.catalog["y"]], 1)
        for name, flag in (("probcat", False), ("probcat_rescue", True)):
            c = det.detect(scene.image, noise_sigma=[sigma], rescue_bright=flag).catalog
            i, j = match(true_xy, np.stack([c["x"], c["y"]], 1))
            tally[name] += (len(true_xy), len(c), len(i), len(j))
            if flag:
                flagged = np.asarray(c["bright_rescue"], bool)
                rescued += int(flagged.sum())
                rescued_matched += int(flagged[j].sum())
    out = {"n_scenes": n, "rescued": rescued, "rescued_matched": rescued_matched}
    for name, (nt, nd, mt, md) in tally.items():
        p, r = md / max(nd, 1), mt / max(nt, 1)
        out[name] = {"precision": round(p, 4), "recall": round(r, 4),
                     "f1": round(2 * p * r / max(p + r, 1e-12), 4)}  # fmt: skip
    return out


def summary(rows: list[dict]) -> dict:
    """Recall (found, found within 2 px) and detections per galaxy by magnitude bin,
    overall and per family, for probcat and SEP; ratios of probcat's recall to SEP's."""

    def stats(sel: list[dict]) -> dict:
        # a bank galaxy recurs in many fields (as one of its 8 dihedral variants)
        out = {"n": len(sel), "n_distinct": len({r["galaxy"] for r in sel})}
        for name in ("probcat", "probcat_rescue", "sep"):
            d = np.array([r[f"{name}_d"] for r in sel])
            radius = np.array([max(MATCH_PX, 0.5 * r["hlr_px"]) for r in sel])
            out[name] = {
                "recall": round(float(np.mean(d < radius)), 4) if sel else None,
                "recall_2px": round(float(np.mean(d < MATCH_PX)), 4) if sel else None,
                "detections_per_galaxy": (
                    round(float(np.mean([r[f"{name}_n"] for r in sel])), 3) if sel else None
                ),
            }
        return out

    out = {}
    for lo, hi in BINS:
        sel = [r for r in rows if lo <= r["mag"] < hi]
        entry = stats(sel)
        entry["families"] = {
            FAMILY_NAMES[f]: stats([r for r in sel if r["family"] == f])
            for f in sorted({r["family"] for r in sel})
            if 0 <= f < len(FAMILY_NAMES)
        }
        out[f"{lo:g}-{hi:g}"] = entry
    return out


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pops = list(result["populations"])
    fig, axes = plt.subplots(1, len(pops), figsize=(5 * len(pops), 4), squeeze=False)
    labels = [b.replace("14-", "< ") for b in result["populations"][pops[0]]["bins"]]
    for ax, pop in zip(axes[0], pops):
        bins = result["populations"][pop]["bins"]
        xs = np.arange(len(bins))
        for name, style in (("probcat", "o-"), ("probcat_rescue", "^-"), ("sep", "s--")):
            ax.plot(xs, [b[name]["recall"] for b in bins.values()], style, label=name)
        if pop == "morphology":
            for fam in ("clumpy", "irregular"):
                ys = [b["families"].get(fam, {}).get("probcat", {}).get("recall") for b in
                      bins.values()]  # fmt: skip
                ax.plot(xs, [np.nan if v is None else v for v in ys], ":", label=f"probcat, {fam}")
        ax.set_xticks(xs, labels)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("i magnitude")
        ax.set_ylabel("recall (within max(2 px, hlr / 2))")
        ax.set_title(f"bright galaxies, {pop} ({result['populations'][pop]['n_galaxies']})")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from probcat.api import load
    from probcat.catalog import atomic_write
    from probcat.provenance import provenance
    from probcat.simulate.bank import BankConfig, SourceBank
    from probcat.simulate.scene import SceneConfig, SceneSimulator
    from probcat.survey import Survey

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="detection_lsst_i")
    ap.add_argument("--fields", type=int, default=200, help="fields per population")
    ap.add_argument("--size", type=int, default=400, help="field side (px)")
    ap.add_argument("--bank-size", type=int, default=20000, help="test galaxies per population")
    ap.add_argument("--populations", default="morphology,morphology:irregular,hdf")
    ap.add_argument("--scenes", type=int, default=500, help="98-px scenes per population")
    ap.add_argument("--seed", type=int, default=20261204)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/bright.py", *(argv or sys.argv[1:])])
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    det = load(args.weights, threads=2, kind="detection")
    survey = Survey.lsst(bands="i")
    out = {"command": command, "weights": args.weights, "n_fields": args.fields,
           "field_size": args.size, "seed": args.seed, "populations": {}}  # fmt: skip
    for k, pop in enumerate(p for p in args.populations.split(",") if p):
        if pop == "hdf":
            _paths.sibling("robustness").ensure_hubble()
        bank = SourceBank.load_or_build(
            survey, BankConfig(population=pop, split="test", n_galaxies=args.bank_size)
        )
        sim = SceneSimulator(bank, SceneConfig(args.size, args.size))
        rows, rescues = galaxies(det, sim, args.fields, [args.seed, k])
        out["populations"][pop] = {
            "n_galaxies": len(rows),
            "bins": summary(rows),
            "rescued": len(rescues),
            "rescued_within_2px_of_a_source": int(np.sum(np.array(rescues) < MATCH_PX)),
        }
        if args.scenes:
            small = SceneSimulator(bank, SceneConfig(98, 98))
            out["populations"][pop]["scenes_98px"] = scenes(det, small, args.scenes,
                                                            [args.seed, k, 98])  # fmt: skip
        print(pop, json.dumps(out["populations"][pop], default=float)[:3000], flush=True)
    out["definitions"] = {
        "found": "a detection within max(2 px, half the galaxy's half-light radius) of its "
        "light-weighted centroid",
        "found_2px": "a detection within 2 px of it",
        "detections_per_galaxy": "detections within max(2 px, its half-light radius)",
        "galaxies": f"i < {BINS[-1][1]:g}, centred at least {EDGE_PX:g} px inside the field",
        "probcat": "probcat with rescue_bright=False: the network's decisions alone",
        "probcat_rescue": "probcat with rescue_bright=True (probcat.infer.bright; the default)",
        "scenes_98px": "98-px scenes of the population: precision, recall, F1 of every source "
        "(Hungarian matching within 2 px); rescued_matched: rescued detections matched",
        "rescued": "detections the rescue added (bright_rescue); _within_2px_of_a_source: "
        "those with a true source of any brightness within 2 px",
        "n_distinct": "distinct bank galaxies among them (each recurs in several fields)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure(out, args.out / "bright.png")
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(out, indent=1, default=float)
    atomic_write(args.out / "bright.json", lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {args.out / 'bright.json'} in {out['wall_s']} s")


if __name__ == "__main__":
    main()
