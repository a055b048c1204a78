"""Centroid precision of the detection network inside tiles and at tile edges.

Isolated SNR 30-100 galaxies (test-split bank), rendered directly with GalSim and with
noise, either inside a tile (sub-tile offsets 1-3 px on both axes) or 0.05 px inside a
tile's left edge (x) with an interior y. For each: the MAP catalog's centroid error and
posterior standard deviation, and a classical baseline on the same image, an iterated
Gaussian-windowed centroid (sigma 2 px, in the spirit of SExtractor's XWIN) started at the
truth rounded to the nearest pixel. Writes ``benchmarks/results/edge_localization.json``
and a PNG.

    .venv/bin/python benchmarks/edge_localization.py
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

from probcat.catalog import FullCatalog, atomic_write
from probcat.infer.detect import map_catalog, tile_features, tile_image
from probcat.provenance import provenance
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.render import render_direct
from probcat.weights import load_detection

RESULTS = Path(__file__).resolve().parent / "results"
SIZE, T0 = 60, 30.0  # the galaxy's tile (index 6) spans pixels [29.5, 34.5)
COLS = ("disk_hlr", "bulge_hlr", "disk_q", "bulge_q", "beta", "bulge_frac")


def windowed_centroid(img, x0, y0, s=2.0, iters=20):
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    cx, cy = float(x0), float(y0)
    for _ in range(iters):
        w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s**2)) * img
        tot = w.sum()
        if not tot > 0:
            break
        cx, cy = cx + 2 * np.sum(w * (xx - cx)) / tot, cy + 2 * np.sum(w * (yy - cy)) / tot
    return cx, cy


def run(net, survey, bank, where, args):
    sigma = float(survey.noise_sigma[0])
    snr = bank.snr[:, 0]
    pick = np.flatnonzero((snr > 30) & (snr < 100))[: args.galaxies]
    rng = np.random.default_rng([args.seed, 0 if where == "interior" else 1])
    err, sd, base = [], [], []
    for g in pick:
        oy = rng.uniform(1, 3)
        ox = rng.uniform(1, 3) if where == "interior" else -0.45
        x, y = T0 + ox, T0 + oy
        cols = {c: np.asarray(bank.table[c], float)[[g]] for c in COLS}
        cat = FullCatalog(
            {"x": [x], "y": [y], "galaxy": [True], "flux": bank.flux[[g]], **cols}, (SIZE, SIZE)
        )
        img = render_direct(cat, survey, (SIZE, SIZE))
        img = img + rng.standard_normal(img.shape) * sigma
        with torch.no_grad():
            feats = tile_features(net, img, sigma)
            m = map_catalog(net, feats, (SIZE, SIZE), image=tile_image(net, img, sigma))
        if len(m) == 0:
            continue
        j = int(np.argmin(np.hypot(m["x"] - x, m["y"] - y)))
        err.append([m["x"][j] - x, m["y"][j] - y])
        sd.append([m["x_sd"][j], m["y_sd"][j]])
        cx, cy = windowed_centroid(img[0], round(x), round(y))
        base.append([cx - x, cy - y])
    err, sd, base = map(np.array, (err, sd, base))
    return {
        "n": int(len(err)),
        "probcat_rms_px": {
            "x": float(np.sqrt(np.mean(err[:, 0] ** 2))),
            "y": float(np.sqrt(np.mean(err[:, 1] ** 2))),
        },
        "probcat_median_sd_px": {"x": float(np.median(sd[:, 0])), "y": float(np.median(sd[:, 1]))},
        "windowed_rms_px": {
            "x": float(np.sqrt(np.mean(base[:, 0] ** 2))),
            "y": float(np.sqrt(np.mean(base[:, 1] ** 2))),
        },
        "_err": err,
        "_base": base,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="weights file (default: shipped)")
    ap.add_argument("--galaxies", type=int, default=40)
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/edge_localization.py", *sys.argv[1:]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    net, survey = load_detection(args.weights)
    bank = SourceBank.load_or_build(
        survey, BankConfig(split="test", n_galaxies=2000, catalog_seed=0), progress=False
    )
    res = {w: run(net, survey, bank, w, args) for w in ("interior", "edge")}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    bins = np.linspace(-1.2, 1.2, 41)
    for a, w in zip(ax, ("interior", "edge")):
        a.hist(res[w]["_err"][:, 0], bins, alpha=0.6, label="probcat MAP")
        a.hist(res[w]["_base"][:, 0], bins, alpha=0.6, label="windowed centroid")
        a.set_title(f"{w}: x error (px)")
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "edge_localization.png", dpi=80)
    plt.close(fig)
    result = {
        "command": command,
        "machine": "2-core CPU, no GPU",
        "weights": str(args.weights or "shipped"),
        "galaxies": "test split, SNR 30-100 (eq. 12), isolated, direct GalSim render + noise",
        "positions": "interior: offsets 1-3 px in the tile on both axes; edge: x 0.05 px "
        "inside the tile's left edge, y interior",
        **{w: {k: v for k, v in r.items() if not k.startswith("_")} for w, r in res.items()},
        "wall_s": round(time.perf_counter() - t0, 1),
        **{k: v for k, v in provenance(command).items() if k != "command"},
    }
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(out / "edge_localization.json", lambda tmp: Path(tmp).write_text(text))
    print(json.dumps({w: result[w] for w in ("interior", "edge")}, indent=1))


if __name__ == "__main__":
    main()
