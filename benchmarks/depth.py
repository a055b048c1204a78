"""Depth: the shipped weights on LSST fields shallower and deeper than those they were
trained at (detection: 10 years; photo-z: 5 and 10 years), one run, SEP beside them.

For each depth (``--years``, default 0.5, 1, 2, 5, 10 and 20 years of LSST), ``--fields``
held-out 400×400 fields (test-split galaxies; seeds other than training's), each image
read at its own noise sigma, as probcat reads a file that states it (``NOISE``):

- LSST i: ``detection_lsst_i`` and SEP: precision, recall (true SNR > 3), F1, false
  detections per Mpx, precision at prob ≥ 0.9 and detection ECE (the definitions of
  ``benchmarks/correlated_noise.py``), probcat reading each field with its zeropoint (as
  a file's header gives it: the probability calibration of its depth) and again as
  electrons of an unknown exposure (``probcat_depth_unknown``: the survey's calibration),
  with no noise stated (``probcat_noise_unstated``: probcat's default reading, the
  survey's noise or the measured one where that is more than 5% off it) and at the
  survey's 10-year noise whatever the depth (``probcat_survey_noise``);
  and ``deblender_lsst_i``'s aperture flux errors: the
  fraction of isolated galaxies (true SNR 5-200) whose true aperture flux lies within 1 /
  1.96 errors of the deblended one, measured at the true positions; the same detection
  measures again on fields of the five morphology families' test galaxies (``--families``),
  whose shapes the depth calibrations were fitted on beside bulge + disk ones;
- LSST ugrizy (DC2 colours and redshifts): ``detection_lsst_ugrizy`` on each field (the
  i-band part's measures, recall at true i-band SNR > 3), read from the file and as an
  array of unknown exposure; ``photoz_lsst_ugrizy``'s PDFs of the gold
  galaxies (true i < 25.3) at their true positions, each field written as probcat writes
  an image (its zeropoint and exposure in the header) and read back as a user's file:
  68% / 95% interval coverage, σ_IQR, outlier fraction, PIT KS and CDE loss, and the noise
  over the deepest training depth's that probcat records per band
  (``meta["photoz"]["noise_over_training"]``; it warns below 0.9); and the same at 10
  years under other seeing (``--seeing``: PSF FWHM 0.8, 1.25 and 1.5 times LSST's), and
  under seeing that differs between the bands (``--band-seeing``: u and g 1.3 times
  LSST's, r and i as LSST's, z and y 0.8 times; the other way round; and factors 1.15,
  0.9, 1.2, 1, 0.85, 1.1 in ugrizy, no gradient with wavelength);
- the 10-year, seeing and band-seeing photo-z parts again, on the same fields, with
  ``--seeing-weights`` (default ``photoz_lsst_ugrizy_seeing``: the shipped nets trained
  further on scenes whose bands each have their own seeing).

Writes ``benchmarks/results/depth.json`` and ``depth.png``.

    .venv/bin/python benchmarks/depth.py
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


def detection_depth(
    det, deb, years: float, fields: int, seed: int, cn, population: str = "parametric"
) -> dict:
    """probcat and SEP on ``fields`` i-band fields of ``population``'s test galaxies at
    ``years``' depth; and, with ``deb``, the coverage of isolated galaxies' true aperture
    fluxes by the deblender's errors (at the true positions:
    ``benchmarks/correlated_noise.py``'s ``flux_error_coverage``)."""
    from probcat.baselines.sep import sep_detect
    from probcat.simulate.bank import BankConfig, SourceBank
    from probcat.simulate.scene import SceneConfig, SceneSimulator
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i", years=years)
    bank = SourceBank.load_or_build(
        survey, BankConfig(split="test", n_galaxies=5000, population=population)
    )
    sim = SceneSimulator(bank, SceneConfig(SIZE, SIZE))
    sigma = survey.noise_sigma
    band = survey.bands[0]
    zeropoint = band.zeropoint + 2.5 * np.log10(band.exposure_time)  # of 1 e- in the field
    counts: dict = {"probcat": [], "probcat_depth_unknown": [], "probcat_noise_unstated": [],
                    "probcat_survey_noise": [], "sep": []}  # fmt: skip
    pulls: dict = {"pull": [], "pull_independent_pixels": [], "factor": []}
    for f in range(fields):
        rng = np.random.default_rng([seed, int(years * 100), f])
        scene = sim.sample(rng, keep_noiseless=True)
        # its zeropoint stated (as a file's header would): the calibration of its depth
        cat = det.catalog(scene.image, noise_sigma=sigma, background="none", zeropoint=zeropoint)
        counts["probcat"].append(cn.score(cat, scene.catalog))
        # electrons of an unknown exposure: the survey's calibration
        cat = det.catalog(scene.image, noise_sigma=sigma, background="none")
        counts["probcat_depth_unknown"].append(cn.score(cat, scene.catalog))
        # no noise stated (an array, or a file without NOISE): probcat's default reading
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the measured-noise warning, where it is said
            cat = det.catalog(scene.image)
        counts["probcat_noise_unstated"].append(cn.score(cat, scene.catalog))
        # the same read at the survey's 10-year noise (what probcat did before 0.1.0's
        # measured-noise default)
        s10 = Survey.lsst(bands="i").noise_sigma
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cat = det.catalog(scene.image, noise_sigma=s10)
        counts["probcat_survey_noise"].append(cn.score(cat, scene.catalog))
        counts["sep"].append(cn.score(sep_detect(scene.image[0], float(sigma[0])), scene.catalog))
        if deb is None:
            continue
        others = cn.neighbour_light(sim, scene)
        got = cn.flux_pulls(deb, scene.image[0], float(sigma[0]), scene.noiseless[0],
                            scene.catalog, others)  # fmt: skip
        for k, v in got.items():
            pulls[k].extend(v)
    area = fields * SIZE * SIZE / 1e6
    out = {who: cn.summary(c, area) for who, c in counts.items()}
    if deb is None:
        return out
    cov = cn.coverage(pulls)
    out["flux_error_coverage"] = {k: cov[k] for k in ("n_galaxies", "coverage_68", "coverage_95",
                                                     "pull_sd_68")}  # fmt: skip
    return out


def photoz_depth(
    est, survey, fields: int, seed, cn, tmp: Path, deeper: bool = False, det=None
) -> dict:
    """``est``'s PDFs of the gold galaxies of ``fields`` ugrizy fields of ``survey`` (its
    depth and seeing; field ``f`` from seed ``[*seed, f]``), each field read from a FITS
    file as probcat wrote it; with ``deeper`` (a depth beyond the training depths) also
    with ``match_depth`` (``"match_depth"``: the same metrics). With ``det`` (six-band
    detection weights), ``"detection"``: its catalogues of the same fields, read from the
    file (its zeropoint: the calibration of its depth) and as an array of electrons of an
    unknown exposure (``probcat_depth_unknown``), scored as the i-band part is (recall:
    true i-band SNR > 3)."""
    from probcat.io import write_image
    from probcat.redshift.pdf import GRID, truncated_pdf
    from probcat.simulate.bank import BankConfig, SourceBank
    from probcat.simulate.prior import MAG_GOLD
    from probcat.simulate.scene import SceneConfig, SceneSimulator

    bank = SourceBank.load_or_build(
        survey, BankConfig(split="test", n_galaxies=5000, population="dc2")
    )
    sim = SceneSimulator(bank, SceneConfig(SIZE, SIZE))
    ib = est.bands.index("i")
    pdfs, zs, ratios, warned, matched, routed = [], [], [], 0, [], 0
    counts: dict = {"probcat": [], "probcat_depth_unknown": []}
    for f in range(fields):
        scene = sim.sample(np.random.default_rng([*seed, f]))
        t = scene.catalog
        gold = np.asarray(t["galaxy"], bool) & (np.asarray(t["mag"])[:, ib] < MAG_GOLD)
        cat = _catalog(t, gold, scene.image.shape[1:], est.bands)
        path = write_image(tmp / "field.fits", scene.image, survey)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            res = est.estimate(path, cat, galaxies_only=False)
        warned += any("deeper than the weights" in str(w.message) for w in said)
        routed += bool(res.catalog.meta["photoz"].get("seeing_weights"))
        pdfs.append(truncated_pdf(res.weights, res.means, res.sds, GRID))
        if deeper:
            got = est.estimate(path, cat, galaxies_only=False, match_depth=True)
            matched.append(truncated_pdf(got.weights, got.means, got.sds, GRID))
        zs.append(np.asarray(t["redshift"], np.float64)[gold])
        ratios.append(res.catalog.meta["photoz"]["noise_over_training"])
        if det is not None:
            got = det.catalog(path, background="none")
            counts["probcat"].append(cn.score(got, t, band=ib))
            got = det.catalog(scene.image, noise_sigma=survey.noise_sigma, background="none")
            counts["probcat_depth_unknown"].append(cn.score(got, t, band=ib))
    out = cn.photoz_summary(pdfs, zs)
    if det is not None:
        area = fields * SIZE * SIZE / 1e6
        out["detection"] = {who: cn.summary(c, area) for who, c in counts.items()}
    out["noise_over_training"] = [float(v) for v in np.median(np.array(ratios, float), 0)]
    out["fields_warned_deeper"] = int(warned)
    out["fields_read_by_seeing_weights"] = int(routed)
    if deeper:
        out["match_depth"] = cn.photoz_summary(matched, zs)
    return out


def _catalog(truth, sel, shape, bands):
    from probcat.catalog import FullCatalog

    return FullCatalog(
        {"x": np.asarray(truth["x"])[sel], "y": np.asarray(truth["y"])[sel]},
        tuple(shape),
        tuple(bands),
    )


def _seeing_panel(a, out: dict) -> None:
    """68% coverage at 10 years under each seeing, the shipped photo-z weights and (if
    read) the seeing weights side by side."""
    parts = [("LSST", out["photoz"].get("10"), "photoz_10", None)]
    parts += [(f"x{k}", v, "photoz_seeing", k) for k, v in out["photoz_seeing"].items()]
    parts += [(k.replace(",", " "), v, "photoz_band_seeing", k)
              for k, v in out["photoz_band_seeing"].items()]  # fmt: skip
    other = out.get("seeing_weights")
    pos = np.arange(len(parts))
    a.bar(pos - 0.2, [p[1]["pit_coverage_68"] if p[1] else np.nan for p in parts], 0.4,
          label="photoz_lsst_ugrizy")  # fmt: skip
    if other:
        got = [(other[p[2]] if p[3] is None else other[p[2]].get(p[3])) for p in parts]
        a.bar(pos + 0.2, [g["pit_coverage_68"] if g else np.nan for g in got], 0.4,
              label=other["weights"])  # fmt: skip
    a.axhline(0.6827, color="k", ls=":", lw=1)
    a.set_xticks(pos, [p[0] for p in parts], rotation=20, fontsize=7, ha="right")
    a.set_ylim(0.4, 0.8)
    a.set_title("photo-z 68% coverage at 10 years, by seeing")
    a.set_xlabel("PSF FWHM x LSST's (per band: ugrizy)")
    a.legend(fontsize=7)


def figure(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    years = out["years"]
    det = out["detection"]
    pz = out["photoz"]
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.2))
    for who, style in (("probcat", "-o"), ("sep", "--s")):
        for metric, colour in (("precision", "C0"), ("recall", "C1"), ("f1", "C2")):
            ax[0].plot(years, [det[f"{y:g}"][who][metric] for y in years], style, color=colour,
                       label=f"{who} {metric}")  # fmt: skip
    ax[0].set_title("LSST i detection (recall: true SNR > 3)")
    ax[1].plot(years, [det[f"{y:g}"]["probcat"]["detection_ece"] for y in years], "-o", color="C3",
               label="probcat detection ECE (depth known)")  # fmt: skip
    ax[1].plot(years, [det[f"{y:g}"]["probcat_depth_unknown"]["detection_ece"] for y in years],
               ":o", color="C3", mfc="none", label="the same, depth unknown")  # fmt: skip
    fam = out.get("detection_families") or {}
    if all(f"{y:g}" in fam for y in years):
        for who, style, lab in (
            ("probcat", "-^", "five families (depth known)"),
            ("probcat_depth_unknown", ":^", "the same, depth unknown"),
        ):
            ax[1].plot(years, [fam[f"{y:g}"][who]["detection_ece"] for y in years], style,
                       color="C6", mfc="C6" if who == "probcat" else "none",
                       label=f"i detection ECE, {lab}")  # fmt: skip
    if all("detection" in pz[f"{y:g}"] for y in years):  # the six-band detector
        ece = {who: [pz[f"{y:g}"]["detection"][who]["detection_ece"] for y in years]
               for who in ("probcat", "probcat_depth_unknown")}  # fmt: skip
        same = ece["probcat"] == ece["probcat_depth_unknown"]  # weights without depth maps
        ax[1].plot(years, ece["probcat"], "-s", color="C5",
                   label="ugrizy detection ECE" + ("" if same else " (depth known)"))  # fmt: skip
        if not same:
            ax[1].plot(years, ece["probcat_depth_unknown"], ":s", color="C5", mfc="none",
                       label="the same, depth unknown")  # fmt: skip
    ax[1].plot(years, [pz[f"{y:g}"]["ks"] for y in years], "-o", color="C4", label="photo-z PIT KS")
    ax[1].set_title("calibration (lower is better)")
    for level, nominal, colour in (("68", 0.6827, "C0"), ("95", 0.9545, "C1")):
        ax[2].plot(years, [pz[f"{y:g}"][f"pit_coverage_{level}"] for y in years], "-o",
                   color=colour, label=f"{level}% interval")  # fmt: skip
        ax[2].axhline(nominal, color=colour, ls=":", lw=1)
    ax[2].set_title("photo-z PDFs (gold galaxies): coverage of the true z")
    trained = out["trained_years"]
    for a in ax[:3]:
        a.set_xscale("log")
        a.set_xticks(years, [f"{y:g}" for y in years])
        a.set_xlabel("depth (years of LSST; grey: the training depths)")
        a.legend(fontsize=7)
    for y in trained["detection"]:
        ax[0].axvline(y, color="0.7", lw=3, alpha=0.4)
    ax[2].axvspan(min(trained["photoz"]), max(trained["photoz"]), color="0.7", alpha=0.3)
    ax[1].set_xlabel("depth (years of LSST)")
    _seeing_panel(ax[3], out)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from probcat.api import load
    from probcat.catalog import atomic_write
    from probcat.provenance import provenance
    from probcat.survey import Survey

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--years", default="0.5,1,2,5,10,20", help="comma-separated depths, years")
    ap.add_argument(
        "--seeing",
        default="0.8,1.25,1.5",
        help="PSF FWHM factors of the photo-z seeing part (10 years; '' for none)",
    )
    ap.add_argument(
        "--band-seeing",
        default="1.3,1.3,1,1,0.8,0.8;0.8,0.8,1,1,1.3,1.3;1.15,0.9,1.2,1,0.85,1.1",
        help="per-band PSF FWHM factors (ugrizy order; ';' between patterns; '' for none): "
        "photo-z at 10 years under seeing that differs between the bands",
    )
    ap.add_argument(
        "--seeing-weights",
        default="photoz_lsst_ugrizy_seeing",
        help="photo-z weights also read on the 10-year, seeing and band-seeing fields ('' for "
        "none)",
    )
    ap.add_argument(
        "--families",
        default="morphology",
        help="galaxy population of a second LSST-i detection part at each depth ('' for none;"
        " default: the five morphology families)",
    )
    ap.add_argument("--fields", type=int, default=16, help="400-px fields per depth and part")
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/depth.py", *(argv or sys.argv[1:])])
    try:
        years = [float(y) for y in args.years.split(",")]
    except ValueError:
        sys.exit(f"--years: comma-separated numbers, got {args.years!r}")
    if not years or min(years) <= 0:
        sys.exit("--years: positive depths")
    try:
        seeing = [float(f) for f in args.seeing.split(",") if f.strip()]
    except ValueError:
        sys.exit(f"--seeing: comma-separated numbers, got {args.seeing!r}")
    if seeing and min(seeing) <= 0:
        sys.exit("--seeing: positive factors")
    try:
        band_seeing = [[float(f) for f in pat.split(",")] for pat in args.band_seeing.split(";")
                       if pat.strip()]  # fmt: skip
    except ValueError:
        sys.exit(f"--band-seeing: ';'-separated lists of numbers, got {args.band_seeing!r}")
    if any(len(pat) != 6 or min(pat) <= 0 for pat in band_seeing):
        sys.exit("--band-seeing: six positive factors (ugrizy) per pattern")
    cn = _paths.sibling("correlated_noise")  # the same detection and photo-z definitions
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    det = load("detection_lsst_i", threads=2, kind="detection")
    deb = load("deblender_lsst_i", threads=2, kind="deblender")
    est = load("photoz_lsst_ugrizy", threads=2, kind="photoz")
    det_ugrizy = load("detection_lsst_ugrizy", threads=2, kind="detection")
    other = load(args.seeing_weights, threads=2, kind="photoz") if args.seeing_weights else None
    # the shipped weights alone: a manifest without sha256 has no companion weights
    from probcat.redshift.estimator import PhotozEstimator

    man = {k: v for k, v in est.manifest.items() if k != "sha256"}
    shipped = PhotozEstimator(est.net, est.survey, man, threads=2)
    detection, families, photoz, seeing_pz, band_seeing_pz = {}, {}, {}, {}, {}
    band_seeing_shipped: dict = {}
    variant: dict = {"photoz_10": None, "photoz_seeing": {}, "photoz_band_seeing": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for y in years:
            key = f"{y:g}"  # "1", "10": the results' keys
            detection[key] = detection_depth(det, deb, y, args.fields, args.seed, cn)
            if args.families:  # other galaxies (and seeds), no deblending
                families[key] = detection_depth(
                    det, None, y, args.fields, args.seed + 4, cn, args.families
                )
            survey = Survey.lsst(bands="".join(est.bands), years=y)
            seed = [args.seed + 1, int(y * 100)]
            deeper = y > max(est.training_depths())
            photoz[key] = photoz_depth(est, survey, args.fields, seed, cn, Path(tmp), deeper,
                                       det_ugrizy)  # fmt: skip
            if other is not None and y == 10:  # the same fields
                variant["photoz_10"] = photoz_depth(other, survey, args.fields, seed, cn, Path(tmp))
            fam = (f"; families ECE {families[key]['probcat']['detection_ece']:.3f} ("
                   f"{families[key]['probcat_depth_unknown']['detection_ece']:.3f})"
                   if args.families else "")  # fmt: skip
            print(f"{y:g} years: detection F1 {detection[key]['probcat']['f1']:.3f} "
                  f"(SEP {detection[key]['sep']['f1']:.3f}), ECE "
                  f"{detection[key]['probcat']['detection_ece']:.3f} (depth unknown "
                  f"{detection[key]['probcat_depth_unknown']['detection_ece']:.3f}){fam}; "
                  "photo-z coverage "
                  f"{photoz[key]['pit_coverage_68']:.3f} / "
                  f"{photoz[key]['pit_coverage_95']:.3f}", flush=True)  # fmt: skip
        for f in seeing:  # photo-z at 10 years under another PSF
            survey = Survey.lsst(bands="".join(est.bands)).with_psf_scale(f)
            seed = [args.seed + 2, round(f * 100)]
            seeing_pz[f"{f:g}"] = photoz_depth(est, survey, args.fields, seed, cn, Path(tmp))
            if other is not None:
                variant["photoz_seeing"][f"{f:g}"] = photoz_depth(other, survey, args.fields,
                                                                  seed, cn, Path(tmp))  # fmt: skip
            print(f"PSF x{f:g}: photo-z coverage {seeing_pz[f'{f:g}']['pit_coverage_68']:.3f} / "
                  f"{seeing_pz[f'{f:g}']['pit_coverage_95']:.3f}", flush=True)  # fmt: skip
        for k, pat in enumerate(band_seeing):  # each band its own seeing
            survey = Survey.lsst(bands="".join(est.bands)).with_psf_scale(pat)
            key = ",".join(f"{f:g}" for f in pat)
            seed = [args.seed + 3, k]
            band_seeing_pz[key] = photoz_depth(est, survey, args.fields, seed, cn, Path(tmp))
            print(f"PSF x({key}): photo-z coverage {band_seeing_pz[key]['pit_coverage_68']:.3f}"
                  f" / {band_seeing_pz[key]['pit_coverage_95']:.3f} ("
                  f"{band_seeing_pz[key]['fields_read_by_seeing_weights']} fields read by "
                  "the seeing weights)", flush=True)  # fmt: skip
            got = photoz_depth(shipped, survey, args.fields, seed, cn, Path(tmp))
            band_seeing_shipped[key] = got
            print(f"  photoz_lsst_ugrizy alone: {got['pit_coverage_68']:.3f} / "
                  f"{got['pit_coverage_95']:.3f}", flush=True)  # fmt: skip
            if other is not None:
                got = photoz_depth(other, survey, args.fields, seed, cn, Path(tmp))
                variant["photoz_band_seeing"][key] = got
                print(f"  {args.seeing_weights}: {got['pit_coverage_68']:.3f} / "
                      f"{got['pit_coverage_95']:.3f}", flush=True)  # fmt: skip
    trained_det = det.manifest["config"]["data"].get("years", det.survey.depth_years)
    out = {
        "command": command,
        "years": years,
        "trained_years": {"detection": [float(trained_det)], "photoz": list(est.training_depths())},
        "fields": args.fields,
        "field_size": SIZE,
        "seed": args.seed,
        "held_out": "test-split galaxies (default prior and --families in i; dc2 in "
        "ugrizy); seeds other than training's",
        "weights": {
            "detection": "detection_lsst_i",
            "photoz": "photoz_lsst_ugrizy",
            "detection_ugrizy": "detection_lsst_ugrizy",
        },
        "weights_sha256": {
            "detection": det.manifest.get("sha256"),
            "photoz": est.manifest.get("sha256"),
            "detection_ugrizy": det_ugrizy.manifest.get("sha256"),
        },  # fmt: skip
        "detection": detection,
        "families": args.families or None,
        "detection_families": families,
        "photoz": photoz,
        "photoz_seeing": seeing_pz,
        "photoz_band_seeing": band_seeing_pz,
        "photoz_band_seeing_shipped_only": band_seeing_shipped,
        "seeing_weights_sha256": None if other is None else (other.manifest or {}).get("sha256"),
        "seeing_weights": None if other is None else {"weights": args.seeing_weights, **variant},
        "definitions": {
            "detection": "MAP catalogue at threshold 0.5 (SEP: its catalogue), Hungarian "
            "matches within 2 px; precision over all detections, recall over true sources "
            "with SNR > 3; false_per_mpx: unmatched detections per million pixels; "
            "detection_ece: expected calibration error of the calibrated prob against "
            "being matched (10 equal-width bins); probcat: each field read with its zeropoint "
            "(the calibration of its depth), probcat_depth_unknown: without (the survey's); "
            "probcat_noise_unstated: the field's pixels with no noise stated (probcat's "
            "default reading: the survey's noise, or the measured where that is over 5% off "
            "it), probcat_survey_noise: read at the survey's 10-year noise whatever the depth; "
            "flux_error_coverage: isolated galaxies "
            "(blendedness < 0.05, true SNR 5-200), deblended aperture flux (deblender_lsst_i, "
            "conserve, 5 px) at the true positions of all true sources, fraction within 1 / "
            "1.96 flux_ap_err of the galaxy's own noiseless light in the aperture",
            "detection_families": "the detection part's definitions on other fields (seed + 4)"
            " of the test galaxies of the population named by families (default: the five "
            "morphology families), without the deblender",
            "photoz.detection": "detection_lsst_ugrizy on the photo-z fields, the detection "
            "part's definitions (recall over true sources with i-band SNR > 3); probcat: the "
            "field's FITS file (its zeropoint), probcat_depth_unknown: its pixels as an "
            "array without one",
            "photoz": "PDFs of the gold galaxies (true i < 25.3) at their true positions, "
            "PhotozEstimator.estimate on the field's FITS file (its NOISE and zeropoint); "
            "point estimate the PDF mode on 0-3 (301 points), outlier_frac |e_z| > max(3 "
            "sigma_IQR, 0.06), pit_coverage: true z inside the central 68% / 95% interval; "
            "noise_over_training: per band, the median over fields of the noise as a flux "
            "over that of the deepest training depth; fields_warned_deeper: fields whose "
            "reading warned that the image is deeper than the weights were trained at; "
            "match_depth: the same galaxies read with match_depth=True (at the deepest "
            "training depth, white noise added), for depths beyond the training depths",
            "photoz_seeing": "the photo-z part at 10 years on fields rendered under a PSF "
            "whose atmospheric FWHM is that factor times LSST's (the weights were trained at "
            "LSST's), other seeds",
            "photoz_band_seeing": "the same with one factor per band (keys: the factors in "
            "ugrizy order): seeing that differs between the bands, which changes the "
            "colours a fixed aperture reads; read as probcat reads them by default "
            "(photoz_lsst_ugrizy, which hands a field whose bands' measured seeing differs "
            "by more than 1.2 to photoz_lsst_ugrizy_seeing: fields_read_by_seeing_weights)",
            "photoz_band_seeing_shipped_only": "the same fields read by photoz_lsst_ugrizy "
            "alone (as before the hand-over)",
            "fields_read_by_seeing_weights": "of a part's fields, those read by "
            "photoz_lsst_ugrizy_seeing (the default estimator's hand-over)",
            "seeing_weights": "the photo-z parts at 10 years (photoz_10: the fields of "
            "photoz.10; photoz_seeing, photoz_band_seeing: the fields of the parts of those "
            "names) read with these other weights",
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure(out, args.out / "depth.png")
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(out, indent=1, default=float)
    atomic_write(args.out / "depth.json", lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
