"""Photo-z where bands have no data: the shipped ugrizy weights reading masked pixels as no
light, against the same weights handing those objects to ``photoz_lsst_ugrizy_masked``
(trained further with bands masked: what ``probcat photoz`` does by default).

Real coadds lose pixels in some bands and not others: chip gaps and edges, bad columns,
the masks of bright stars, a band not observed over part of a field. Read as no light, a
masked u band is a u dropout and the PDF reads colours the galaxy does not have. This
benchmark takes ``--fields`` held-out 400×400 LSST ugrizy fields at 10-year depth
(test-split DC2 galaxies, their own seeds), and measures the PDFs of their gold galaxies
(true i < 25.3) at their true positions, with pixels set to NaN (no data):

- ``clean``: nothing masked (both arms read every galaxy with the shipped weights);
- ``half_<band>``: one band without data over the field's left half (the edge of its
  coverage: galaxies there read five bands);
- ``defects``: each band its own defects, drawn apart from the training's masks
  (:func:`defects`): chip gaps, bad columns, bright-star masks and a field edge;
- ``no_u``, ``no_i``: an image without that band at all (five bands: the default arm only,
  the shipped weights alone refuse it).

Arms: ``shipped_only`` (``photoz_lsst_ugrizy`` reads everything, masked pixels as
zeros: probcat before the masked weights) and ``default`` (``probcat.load
("photoz_lsst_ugrizy")`` as users get it: objects with a masked pixel within 7 px,
``MASKED_RADIUS``, are read by ``photoz_lsst_ugrizy_masked``). Metrics as
``benchmarks/photoz.py``'s, over the affected galaxies (those the default arm hands
over) and, for reference, every galaxy; the mean truncated-mixture NLL of the true
redshifts too.

Writes ``benchmarks/results/photoz_masks.json`` and ``photoz_masks.png``.

    .venv/bin/python benchmarks/photoz_masks.py
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
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 400
BANDS = "ugrizy"
SCENARIOS = ("clean", *(f"half_{b}" for b in BANDS), "defects", "no_u", "no_i")
KEYS = ("n", "bias", "sigma_iqr", "outlier_frac", "outlier_frac_015", "ks", "cde_loss",
        "pit_coverage_68", "pit_coverage_95", "nll")  # fmt: skip


def fields(n: int, seed: int) -> list:
    """``n`` held-out 10-year ugrizy scenes of test-split DC2 galaxies (seeds ``[seed, f]``;
    ``photoz_colours.py``'s fields)."""
    return _paths.sibling("photoz_colours").fields("dc2", n, seed)[0]


def defects(rng: np.random.Generator, shape) -> np.ndarray:
    """``(bands, H, W)`` pixels without data, each band its own: one or two chip gaps
    (strips 4-12 px wide across the field, rows or columns), one to three bad columns (1-2
    px), two to five bright-star masks (discs of radius 8-30 px) and, in half the bands,
    a field edge (a band 10-60 px deep along one side)."""
    bands, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros(shape, bool)
    for b in range(bands):
        m = out[b]
        for _ in range(int(rng.integers(1, 3))):
            lo, width = rng.uniform(0, h), rng.uniform(4, 12)
            u = yy if rng.random() < 0.5 else xx
            m |= (u >= lo) & (u < lo + width)
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(0, w))
            m[:, c : c + int(rng.integers(1, 3))] = True
        for _ in range(int(rng.integers(2, 6))):
            x0, y0, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 30)
            m |= (xx - x0) ** 2 + (yy - y0) ** 2 < r**2
        if rng.random() < 0.5:
            depth = int(rng.integers(10, 61))
            side = int(rng.integers(4))
            sl = [slice(None, depth), slice(-depth, None)][side % 2]
            if side < 2:
                m[sl, :] = True
            else:
                m[:, sl] = True
    return out


def masked_image(scene, scenario: str, rng):
    """The scene's image under ``scenario``: an array, or for ``no_<band>`` an ImageData
    without that band (as a file of the other five bands reads)."""
    image = scene.image.astype(np.float32).copy()
    if scenario.startswith("no_"):
        from probcat.io import ImageData
        from probcat.survey import Survey

        keep = [k for k, b in enumerate(BANDS) if b != scenario[3:]]
        sigma = Survey.lsst(bands=BANDS).noise_sigma[keep]
        return ImageData(image[keep], None, tuple(BANDS[k] for k in keep), sigma)
    if scenario.startswith("half_"):
        image[BANDS.index(scenario[5:]), :, : SIZE // 2] = np.nan
    elif scenario == "defects":
        image[defects(rng, image.shape)] = np.nan
    return image


def measure(est, scenes: list, scenario: str, seed: int) -> dict:
    """``est``'s mixtures and grid PDFs of the fields' gold galaxies at their true
    positions under ``scenario`` (its masks drawn from ``[seed, 77, field]``), their true
    redshifts and whether the default arm hands them to the masked weights."""
    from probcat.catalog import FullCatalog
    from probcat.nets.photoz import mixture_nll
    from probcat.redshift.pdf import GRID, truncated_pdf
    from probcat.simulate.prior import MAG_GOLD

    ib = BANDS.index("i")
    pdfs, zs, hit, nll, part = [], [], [], [], []
    for f, scene in enumerate(scenes):
        t = scene.catalog
        gold = np.asarray(t["galaxy"], bool) & (np.asarray(t["mag"])[:, ib] < MAG_GOLD)
        cat = FullCatalog({"x": np.asarray(t["x"])[gold], "y": np.asarray(t["y"])[gold]},
                          (SIZE, SIZE), tuple(BANDS))  # fmt: skip
        image = masked_image(scene, scenario, np.random.default_rng([seed, 77, f]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NaN pixels and the dropout warning, expected
            res = est.estimate(image, cat, galaxies_only=False)
        z = np.asarray(t["redshift"], np.float64)[gold]
        pdfs.append(truncated_pdf(res.weights, res.means, res.sds, GRID))
        zs.append(z)
        hit.append(np.asarray(res.catalog["pz_masked_weights"], bool))
        frac = np.asarray(res.catalog["mask_fraction_band"])
        part.append(((frac > 0) & (frac < 1)).any(1))
        args = (torch.from_numpy(a) for a in (res.weights, res.means, res.sds, z))
        nll.append(mixture_nll(*args).numpy())
    return {"pdfs": np.concatenate(pdfs), "z": np.concatenate(zs),
            "affected": np.concatenate(hit), "nll": np.concatenate(nll),
            "partly": np.concatenate(part)}  # fmt: skip


def summary(m: dict, sel) -> dict:
    from probcat.redshift.metrics import all_metrics

    if not sel.any():
        return {"n": 0}
    got = all_metrics(m["pdfs"][sel], m["z"][sel])
    return {**{k: got[k] for k in KEYS if k in got}, "nll": float(np.mean(m["nll"][sel]))}


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in SCENARIOS if s != "clean"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("sigma_iqr", "σ_IQR of the PDF mode"), ("pit_coverage_68", "68% interval "
              "coverage"), ("nll", "mean NLL of the true z"))  # fmt: skip
    xs = np.arange(len(names))
    for ax, (key, title) in zip(axes, panels):
        for j, (arm, label) in enumerate((("shipped_only", "masked pixels read as no light"),
                                          ("default", "masked weights (default)"))):  # fmt: skip
            vals = [results[s][arm]["affected"].get(key, np.nan) for s in names]
            ax.bar(xs + (j - 0.5) * 0.38, vals, 0.38, label=label)
        clean = results["clean"]["default"]["all"][key]
        ax.axhline(clean, color="k", lw=1, ls="--", label="clean fields")
        if key == "pit_coverage_68":
            ax.axhline(0.683, color="grey", lw=1, ls=":")
        ax.set_xticks(xs, [s.replace("half_", "half no ").replace("no_", "no ")
                           for s in names], rotation=30)  # fmt: skip
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle("Photo-z of gold galaxies within 7 px of pixels without data")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from probcat.api import load
    from probcat.catalog import atomic_write
    from probcat.provenance import provenance
    from probcat.redshift.estimator import PhotozEstimator

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=16, help="400-px fields")
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/photoz_masks.py",
                        *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    if args.fields < 1:
        sys.exit("--fields: at least 1")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    scenes = fields(args.fields, args.seed)
    default = load("photoz_lsst_ugrizy", threads=2, kind="photoz")
    if default.masked_weights is None:
        sys.exit("photoz_lsst_ugrizy has no masked weights registered")
    # the same network and manifest, bar the sha256 that names it: no masked weights
    man = {k: v for k, v in default.manifest.items() if k != "sha256"}
    shipped_only = PhotozEstimator(default.net, default.survey, man, threads=2)
    arms = {"shipped_only": shipped_only, "default": default}
    results = {}
    for scenario in SCENARIOS:
        run = {a: e for a, e in arms.items() if a == "default" or not scenario.startswith("no_")}
        got = {arm: measure(est, scenes, scenario, args.seed) for arm, est in run.items()}
        affected = got["default"]["affected"]
        partly = got["default"]["partly"]
        results[scenario] = {
            arm: {
                "affected": summary(m, affected),
                "aperture_partly_masked": summary(m, affected & partly),
                "all": summary(m, np.ones_like(affected)),
            }
            for arm, m in got.items()
        }
        if "shipped_only" not in got:  # an image without a band: refused before
            results[scenario]["shipped_only"] = {k: {"n": 0} for k in ("affected", "all")}
        results[scenario]["affected_fraction"] = float(affected.mean())
        for arm in got:
            r = results[scenario][arm]["affected" if affected.any() else "all"]
            print(f"{scenario} {arm} ({r['n']} galaxies): sigma_IQR {r['sigma_iqr']:.4f}, "
                  f"outliers (0.15) {r['outlier_frac_015']:.3f}, bias {r['bias']:+.4f}, "
                  f"KS {r['ks']:.3f}, coverage {r['pit_coverage_68']:.3f} / "
                  f"{r['pit_coverage_95']:.3f}, NLL {r['nll']:.3f}", flush=True)  # fmt: skip
    out = {
        "command": command,
        "fields": args.fields,
        "field_size": SIZE,
        "depth_years": 10.0,
        "seed": args.seed,
        "weights": {"default": "photoz_lsst_ugrizy", "masked": default.masked_weights},
        "masked_weights_sha256": load(default.masked_weights).manifest.get("sha256"),
        "weights_sha256": {
            "photoz_lsst_ugrizy": default.manifest.get("sha256"),
            default.masked_weights: load(default.masked_weights).manifest.get("sha256"),
        },
        "results": results,
        "definitions": {
            "galaxies": "gold galaxies (true i < 25.3) of the fields at their true "
            "positions; 'affected': those with a pixel without data within 7 px "
            "(MASKED_RADIUS: what the default arm hands to the masked weights), "
            "'aperture_partly_masked': of those, the ones with some band's 5-px aperture "
            "partly masked (0 < mask_fraction_band < 1: a mask's edge across the galaxy), "
            "'all': every one",
            "scenarios": "clean: nothing masked; half_<band>: that band NaN over the field's "
            "left half; no_<band>: the image without that band (five bands; shipped_only "
            "refuses it: n 0); defects: per band chip gaps, bad columns, bright-star masks "
            "and a field edge (benchmarks/photoz_masks.py defects(), seeds [seed, 77, field])",
            "arms": "shipped_only: photoz_lsst_ugrizy reads every galaxy, masked pixels as "
            "zeros; default: probcat.load('photoz_lsst_ugrizy'), the affected galaxies read "
            "by photoz_lsst_ugrizy_masked",
            "metrics": "benchmarks/photoz.py's (paper 002): point estimate the PDF mode on "
            "the 0-3 grid; outlier_frac beyond max(3 sigma_IQR, 0.06), outlier_frac_015 "
            "beyond 0.15; pit_coverage_*: share of true z inside the central intervals; "
            "nll: mean negative log density of the true z under the truncated mixture",
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure(results, args.out / "photoz_masks.png")
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(out, indent=1, default=float)
    atomic_write(args.out / "photoz_masks.json", lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    main()
