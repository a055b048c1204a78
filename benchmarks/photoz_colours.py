"""Photo-z on galaxy colours unlike the training's: the shipped ugrizy weights on the same
galaxies with their DC2 colours and with the colours of the CWW templates.

The photo-z weights learned DC2's colour-redshift relation (a simulation: cosmoDC2's
galaxies). Galaxies in the sky need not follow it. This benchmark keeps everything else
the same and changes only the colours: population ``dc2`` (test-split DC2 galaxies) and
population ``cww`` (:func:`probcat.simulate.prior.cww_galaxies`: the same galaxies, the
same true redshifts, i magnitudes and shapes, their other bands from one of the four
Coleman, Wu & Weedman templates redshifted to the galaxy's redshift and dimmed by the
intergalactic medium's mean absorption). ``--fields``
400×400 LSST ugrizy fields at 10-year depth per population (the same scene seeds),
each written as probcat writes an image and read back as a user's file; the PDFs of the
gold galaxies (true i < 25.3) at their true positions; the metrics of
``benchmarks/photoz.py`` (σ_IQR and outliers of the PDF mode, PIT KS, CDE loss, interval
coverage), for ``cww`` also per template, and once more for ``cww`` with the mixture
widths refit on the true redshifts of other fields' galaxies (the remedy of a user with a
spectroscopic sample: ``ProbcatPhotozInformer``). ``--weights`` takes several photo-z weights
(registered names or files), each measured on the same fields. Detection too: the six-band
``detection_lsst_ugrizy`` (which reads the colours) and ``detection_lsst_i`` (which does
not: a control) on both populations' fields, precision, recall (i-band SNR > 3) and how
the matched galaxies and stars are classified.

Writes ``benchmarks/results/photoz_colours.json`` and ``photoz_colours.png``.

    .venv/bin/python benchmarks/photoz_colours.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 400
POPULATIONS = ("dc2", "cww")
DETECTORS = ("detection_lsst_ugrizy", "detection_lsst_i")
LABELS = {"dc2": "DC2 colours", "cww": "CWW colours", "cww_refit": "CWW colours, widths refit"}
KEYS = ("n", "bias", "sigma_iqr", "outlier_frac", "outlier_frac_015", "ks", "cde_loss",
        "pit_coverage_68", "pit_coverage_95")  # fmt: skip


def fields(population: str, n: int, seed: int) -> list:
    """``n`` held-out ugrizy scenes of ``population`` (test split), scene ``f`` from seed
    ``[seed, f]`` whatever the population, so both populations share their layouts."""
    from probcat.simulate.bank import BankConfig, SourceBank
    from probcat.simulate.scene import SceneConfig, SceneSimulator
    from probcat.survey import Survey

    survey = Survey.lsst(bands="ugrizy")
    bank = SourceBank.load_or_build(
        survey, BankConfig(split="test", n_galaxies=5000, population=population)
    )
    sim = SceneSimulator(bank, SceneConfig(SIZE, SIZE))
    scenes = [sim.sample(np.random.default_rng([seed, f])) for f in range(n)]
    # the scene catalogs name each galaxy's bank row, the bank its template
    cols = bank.table.colnames
    return scenes, np.asarray(bank.table["template"]).astype(str) if "template" in cols else None


def measure(est, scenes: list, templates_of_rows, paths: list) -> dict:
    """``est``'s grid PDFs of each scene's gold galaxies at their true positions (each
    scene read from its FITS file, ``paths``), their true redshifts and, where the
    population has them, their templates."""
    from probcat.catalog import FullCatalog
    from probcat.redshift.pdf import GRID, truncated_pdf
    from probcat.simulate.prior import MAG_GOLD

    ib = est.bands.index("i")
    pdfs, zs, templates, mixtures, field = [], [], [], [], []
    for f, (scene, path) in enumerate(zip(scenes, paths)):
        t = scene.catalog
        gold = np.asarray(t["galaxy"], bool) & (np.asarray(t["mag"])[:, ib] < MAG_GOLD)
        cat = FullCatalog(
            {"x": np.asarray(t["x"])[gold], "y": np.asarray(t["y"])[gold]},
            tuple(scene.image.shape[1:]),
            tuple(est.bands),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fields are at a training depth
            res = est.estimate(path, cat, galaxies_only=False)
        pdfs.append(truncated_pdf(res.weights, res.means, res.sds, GRID))
        mixtures.append(np.stack([res.weights, res.means, res.sds]))
        field.append(np.full(int(gold.sum()), f))
        zs.append(np.asarray(t["redshift"], np.float64)[gold])
        if templates_of_rows is not None:
            templates.append(templates_of_rows[np.asarray(t["bank_index"])[gold]])
    return {
        "pdfs": np.concatenate(pdfs),
        "z": np.concatenate(zs),
        "template": np.concatenate(templates) if templates else None,
        "mixture": np.concatenate(mixtures, axis=1),  # (weights|means|sds, galaxy, component)
        "field": np.concatenate(field),
    }


def refit(m: dict) -> tuple[dict, list[float]]:
    """``m`` with its mixture widths rescaled as ``ProbcatPhotozInformer`` would from a
    spectroscopic sample of these colours: the factor fitted on the galaxies of the even
    fields applied to the odd ones and the other way round (each galaxy out of sample)."""
    from probcat.nets.photoz import fit_sd_scale
    from probcat.redshift.pdf import GRID, truncated_pdf

    w, mu, sd = m["mixture"]
    pdfs, scales = np.empty_like(m["pdfs"]), []
    for half in (0, 1):
        fit, use = m["field"] % 2 == half, m["field"] % 2 != half
        k = fit_sd_scale(w[fit], mu[fit], sd[fit], m["z"][fit])
        pdfs[use] = truncated_pdf(w[use], mu[use], sd[use] * k, GRID)
        scales.append(k)
    return {**m, "pdfs": pdfs}, scales


def detection(det, scenes: list, paths: list) -> dict:
    """``det`` on each field's FITS file: :mod:`correlated_noise`'s precision, recall (true
    i-band SNR > 3), precision at prob >= 0.9 and ECE; and of the matched true sources,
    the share of galaxies classified as galaxies and of stars as stars."""
    from probcat.api import detect
    from probcat.metrics.detection import match

    cn = _paths.sibling("correlated_noise")
    counts, gal, star = [], [0, 0], [0, 0]
    for scene, path in zip(scenes, paths):
        cat = detect(path, weights=det, threads=2).catalog
        t = scene.catalog
        counts.append(cn.score(cat, t, band=list(t.bands).index("i")))
        txy = np.stack([np.asarray(t["x"]), np.asarray(t["y"])], 1)
        i, j = match(txy, np.stack([np.asarray(cat["x"]), np.asarray(cat["y"])], 1))
        truth_gal, said_gal = np.asarray(t["galaxy"], bool)[i], np.asarray(cat["galaxy"], bool)[j]
        gal[0] += int((truth_gal & said_gal).sum())
        gal[1] += int(truth_gal.sum())
        star[0] += int((~truth_gal & ~said_gal).sum())
        star[1] += int((~truth_gal).sum())
    out = cn.summary(counts, len(scenes) * SIZE * SIZE / 1e6)
    out.update(galaxies_as_galaxies=gal[0] / max(gal[1], 1), n_matched_galaxies=gal[1],
               stars_as_stars=star[0] / max(star[1], 1), n_matched_stars=star[1])  # fmt: skip
    return out


def summary(m: dict) -> dict:
    from probcat.redshift.metrics import all_metrics

    got = all_metrics(m["pdfs"], m["z"])
    out = {k: got[k] for k in KEYS}
    if m["template"] is not None:
        out["by_template"] = {}
        for name in np.unique(m["template"]):
            sel = m["template"] == name
            got = all_metrics(m["pdfs"][sel], m["z"][sel])
            out["by_template"][str(name)] = {k: got[k] for k in KEYS}
    return out


def figure(results: dict, points: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probcat.redshift.pdf import GRID

    first = next(iter(points))
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.6))
    for a, pop in zip(ax[:2], POPULATIONS):
        m = points[first][pop]
        mode = GRID[np.argmax(m["pdfs"], axis=1)]
        a.scatter(m["z"], mode, s=2, alpha=0.3, color="C0" if pop == "dc2" else "C3")
        a.plot([0, 3], [0, 3], color="0.4", lw=0.8)
        r = results[first][pop]
        a.set_title(f"{first}, {pop} colours: σ_IQR {r['sigma_iqr']:.3f}, "
                    f"|e_z| > 0.15: {r['outlier_frac_015']:.3f}", fontsize=9)  # fmt: skip
        a.set_xlabel("true z")
        a.set_ylabel("PDF mode")
        a.set_xlim(0, 3)
        a.set_ylim(0, 3)
    for pop, colour in (("dc2", "C0"), ("cww", "C3"), ("cww_refit", "C1")):
        m = points[first][pop]
        cdf = np.cumsum(m["pdfs"], axis=1)
        cdf = cdf / cdf[:, -1:]
        pit = np.array([np.interp(z, GRID, c) for z, c in zip(m["z"], cdf)])
        ax[2].hist(pit, bins=25, range=(0, 1), density=True, histtype="step", color=colour,
                   lw=1.5, label=LABELS[pop])  # fmt: skip
    ax[2].axhline(1.0, color="0.4", lw=0.8, ls=":")
    ax[2].set_title("PIT of the true z (flat: calibrated)")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from probcat.api import load
    from probcat.catalog import atomic_write
    from probcat.io import write_image
    from probcat.provenance import provenance
    from probcat.simulate.prior import CWW_TEMPLATES, prior_version
    from probcat.survey import Survey

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="photoz_lsst_ugrizy",
                    help="photo-z weights, comma-separated (names or files)")  # fmt: skip
    ap.add_argument("--fields", type=int, default=16, help="400-px fields per population")
    ap.add_argument("--seed", type=int, default=20261204)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/photoz_colours.py",
                        *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    if args.fields < 2:
        sys.exit("--fields: at least 2 (the width refit fits on some fields, measures on others)")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    scenes = {pop: fields(pop, args.fields, args.seed) for pop in POPULATIONS}
    results, points, shas, detections = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        # each field written as probcat writes an image, read back as a user's file
        paths = {p: [write_image(Path(tmp) / f"{p}_{f}.fits", sc.image, Survey.lsst(bands="ugrizy"))
                     for f, sc in enumerate(scenes[p][0])] for p in POPULATIONS}  # fmt: skip
        for name in [w for w in args.weights.split(",") if w]:
            est = load(name, threads=2, kind="photoz")
            shas[name] = (est.manifest or {}).get("sha256")
            points[name] = {p: measure(est, *scenes[p], paths[p]) for p in POPULATIONS}
            results[name] = {p: summary(points[name][p]) for p in POPULATIONS}
            refitted, scales = refit(points[name]["cww"])
            points[name]["cww_refit"] = refitted
            results[name]["cww_refit"] = {**summary(refitted), "sd_scale": scales}
            for p in (*POPULATIONS, "cww_refit"):
                r = results[name][p]
                print(f"{name} {p}: sigma_IQR {r['sigma_iqr']:.4f}, outliers (0.15) "
                      f"{r['outlier_frac_015']:.3f}, KS {r['ks']:.3f}, coverage "
                      f"{r['pit_coverage_68']:.3f} / {r['pit_coverage_95']:.3f}, "
                      f"CDE {r['cde_loss']:.2f}", flush=True)  # fmt: skip
        for det in DETECTORS:
            detections[det] = {p: detection(det, scenes[p][0], paths[p]) for p in POPULATIONS}
            for p in POPULATIONS:
                r = detections[det][p]
                print(f"{det} {p}: precision {r['precision']:.3f}, recall {r['recall']:.3f}, "
                      f"galaxies as galaxies {r['galaxies_as_galaxies']:.3f}, stars as stars "
                      f"{r['stars_as_stars']:.3f}", flush=True)  # fmt: skip
    out = {
        "command": command,
        "fields": args.fields,
        "field_size": SIZE,
        "depth_years": 10.0,
        "seed": args.seed,
        "populations": {p: prior_version(p) for p in POPULATIONS},
        "cww_templates": list(CWW_TEMPLATES),
        "weights_sha256": shas,
        "results": results,
        "detection": detections,
        "definitions": {
            "galaxies": "gold galaxies (true i < 25.3) of the fields, at their true "
            "positions; the same scene seeds for both populations (population cww: the "
            "test-split DC2 galaxies, redshifts, i magnitudes and shapes, other bands from "
            "a CWW template at the galaxy's redshift, each template as likely)",
            "cww_refit": "population cww with the mixture widths times one factor fitted "
            "on the true redshifts of the galaxies of the other fields' parity (even fields "
            "fit the odd ones and vice versa), as probcat.redshift.rail's "
            "ProbcatPhotozInformer fits it on a spectroscopic sample; sd_scale: the two "
            "factors",
            "detection": "each detector on each field's FITS file (threshold 0.5); "
            "precision over all detections, recall over true sources with i-band SNR > 3, "
            "matched within 2 px (correlated_noise.py's score); galaxies_as_galaxies, "
            "stars_as_stars: of the matched true galaxies (stars), the share whose galaxy "
            "flag says so",
            "metrics": "benchmarks/photoz.py's (paper 002): point estimate the PDF mode on "
            "the 0-3 grid; outlier_frac beyond max(3 sigma_IQR, 0.06), outlier_frac_015 "
            "beyond 0.15; pit_coverage_*: share of true z inside the central intervals",
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure(results, points, args.out / "photoz_colours.png")
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(out, indent=1, default=float)
    atomic_write(args.out / "photoz_colours.json", lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    main()
