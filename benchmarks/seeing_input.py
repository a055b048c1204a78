"""Weights told the seeing against weights that are not, on scenes of several PSF widths.

For each weights file (default: the shipped ``detection_lsst_i`` and a run trained with
``model.psf_input`` and ``data.psf_scales``) and each factor on the survey's atmospheric
PSF FWHM, on the same scenes:

* detection, as the ``seeing`` test of ``benchmarks/robustness.py``: ``--n-images`` 98-px
  scenes of the full morphology mixture (test galaxies), MAP catalogue precision, recall,
  F1, precision at calibrated prob >= 0.9 and detection ECE (every MAP detection, and over
  8 px inside);
* star/galaxy classification, as ``benchmarks/detection.py``: ``--n-class-images`` 98-px
  bulge + disk scenes (test galaxies), each source classified at its true location, galaxy
  F1 above SNR 10 and star F1 above SNR 12.

Weights with a seeing input are run twice: told the scenes' true factor ("told") and told
nothing (the survey's PSF, "untold": what they do when the seeing cannot be measured).
Writes ``benchmarks/results/seeing_input.json`` and ``seeing_input.png``::

    .venv/bin/python benchmarks/seeing_input.py --weights detection_lsst_i runs/seeing/detection.pt
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
from probcat.infer.detect import batch_tile_features, tile_image
from probcat.provenance import provenance
from probcat.tiles import TileCatalog
from probcat.weights import load, load_detection

RESULTS = Path(__file__).resolve().parent / "results"
SCALES = (0.8, 1.0, 1.25, 1.5)
DET_KEYS = ("precision", "recall", "f1", "precision_at_0_9", "detection_ece",
            "detection_ece_interior")  # fmt: skip


@torch.no_grad()
def classification(net, scenes, sigma, det_bench) -> dict:
    """Galaxy F1 (SNR > 10) and star F1 (SNR > 12) of sources classified at their true
    locations (``benchmarks/detection.py``'s ``classification``)."""
    rows = {"prob": [], "galaxy": [], "snr": []}
    for start in range(0, len(scenes), 100):
        part = scenes[start : start + 100]
        imgs = np.stack([s.image for s in part])
        feats = batch_tile_features(net, imgs, sigma)
        pixels = tile_image(net, imgs, sigma)
        tiles = TileCatalog.from_full([s.catalog for s in part], net.tile_size)
        nty, ntx = feats.shape[-2:]
        has = tiles.n_sources[:, :nty, :ntx] > 0
        given = net.heads(feats, type_locs=tiles.locs[:, :nty, :ntx], image=pixels, type_mask=has)
        rows["prob"].append(given.galaxy_prob[has].numpy())
        rows["galaxy"].append(tiles.params["galaxy"][..., 0][has].numpy() > 0.5)
        rows["snr"].append(tiles.params["snr"][..., 0][has].numpy())
    c = det_bench.classification({k: np.concatenate(v) for k, v in rows.items()})
    return {k: c[k] for k in ("galaxy_f1", "star_f1", "n_galaxies", "n_stars")}


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("precision_at_0_9", "precision at prob ≥ 0.9"), ("detection_ece", "detection ECE"),
              ("f1", "detection F1"), ("star_f1", "star F1 (SNR > 12)"))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        for name, runs in result["weights"].items():
            for mode, by_scale in runs["modes"].items():
                xs = [float(s) for s in by_scale]
                ys = [by_scale[s].get(key, np.nan) for s in by_scale]
                ax.plot(xs, ys, "o-" if mode != "untold" else "s--", label=f"{name} ({mode})")
        ax.set_xlabel("PSF FWHM / survey's")
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", nargs="+", default=["detection_lsst_i"])
    ap.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES))
    ap.add_argument("--n-images", type=int, default=500, help="morphology scenes per factor")
    ap.add_argument("--n-class-images", type=int, default=500, help="bulge+disk scenes per factor")
    ap.add_argument("--bank-size", type=int, default=4000, help="morphology test galaxies")
    ap.add_argument("--class-bank-size", type=int, default=2000, help="bulge+disk test galaxies")
    ap.add_argument("--seed", type=int, default=2029)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    rob = _paths.sibling("robustness")
    det_bench = _paths.sibling("detection")
    summarise = det_bench.summarise
    scales = [float(s) for s in args.scales.split(",")]
    scenes = {}
    for s in scales:
        morph = rob.simulator("morphology", "test", args.bank_size, psf_scale=s)
        bd = rob.simulator("parametric", "test", args.class_bank_size, psf_scale=s)
        scenes[s] = (
            rob.scenes_for(morph, args.n_images, [args.seed, 77]),
            rob.scenes_for(bd, args.n_class_images, [args.seed, 78]),
        )
    out = {}
    for w in args.weights:
        net, survey = load_detection(w)
        sigma = float(survey.noise_sigma[0])
        told = bool(getattr(net, "psf_input", False))
        modes = {}
        for mode in ("told", "untold") if told else ("untold",):
            by_scale = {}
            for s in scales:
                print(f"{w} {mode} x {s:g} ...", flush=True)
                net.psf_scale = s if mode == "told" else 1.0
                morph, bd = scenes[s]
                m = rob.metrics(rob.evaluate(net, morph, sigma, with_sep=False), summarise,
                                sep=False)  # fmt: skip
                by_scale[f"{s:g}"] = {
                    **{k: m["probcat"][k] for k in DET_KEYS},
                    **classification(net, bd, sigma, det_bench),
                }
            modes[mode] = by_scale
        man = load(w).manifest or {}
        out[Path(str(w)).stem if str(w).endswith(".pt") else str(w)] = {
            "weights": str(w),
            "sha256": load(w).sha256,
            "psf_input": told,
            "trained_psf_scales": ((man.get("config") or {}).get("data") or {}).get(
                "psf_scales", [1.0]
            ),
            "modes": modes,
        }
    command = " ".join([".venv/bin/python", "benchmarks/seeing_input.py", *sys.argv[1:]])
    result = {
        "command": command,
        "scales": scales,
        "n_images": args.n_images,
        "n_class_images": args.n_class_images,
        "bank_size": args.bank_size,
        "class_bank_size": args.class_bank_size,
        "seed": args.seed,
        "weights": out,
        # the weights told the seeing (the first such), for their manifest
        "told_weights_sha256": next((v["sha256"] for v in out.values() if v["psf_input"]), None),
        "definitions": {
            "detection": "benchmarks/robustness.py's seeing test: morphology test scenes "
            "(98 px, every source inside), MAP catalogue at threshold 0.5, matched within 2 px",
            "classification": "benchmarks/detection.py's: bulge+disk test scenes, sources "
            "classified at their true locations; galaxy F1 above SNR 10, star F1 above SNR 12",
            "told": "the network told the scenes' true PSF factor (weights with a seeing input)",
            "untold": "told nothing: the survey's PSF",
        },
        "wall_s": time.perf_counter() - t0,
        **provenance(command),
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    atomic_write(out_dir / "seeing_input.json", lambda tmp: Path(tmp).write_text(text))
    figure(result, out_dir / "seeing_input.png")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
