"""Source density unlike the prior's: probcat's shipped LSST-i detection weights and SEP on
the same simulated fields, from empty sky to twice the prior's density, one run.

The detection network learned its probabilities from scenes of one source density, the
prior's (paper 000 section 2: 160 galaxies and 15.5 stars per arcmin^2 to i = 27). Its
probabilities are posterior probabilities under that prior: a faint bump that is a real
source most of the time at that density is a noise peak most of the time on an empty
sky. The weights' density calibration (:mod:`probcat.infer.density`) reads each image
under the density its bright detections show. This benchmark measures both. Held-out
500x500 LSST i fields (test-split galaxies of the weights' population, every source
inside the field) at ``--factors`` times the prior's galaxy and star densities (0: noise
alone), ``--fields`` fields per factor, each read by the product's detector at its known
noise (``probcat``: as shipped; ``prior_density``: with the density calibration left
out) and by SEP with paper 000's settings (:mod:`probcat.baselines.sep`). Per factor:
precision (all detections), recall (true SNR > 3), F1, false detections per Mpx; for
probcat also the precision of the detections with prob >= 0.9, the detection ECE, the
mean calibrated probability against the fraction of detections that are real (matched
within 2 px), the same precision and recall for the detections with prob >= 0.5
(``at_0_5``), and the density calibration's mean weights of the factors; and of
``--samples`` posterior samples per field (``samples``), the sources, real and false ones
per Mpx, thinned to the image's density (``probcat``) or not (``prior_density``).

``--weights detection_lsst_ugrizy``: the six-band weights on ugrizy fields of their
population (SEP on the riz coadd; truth SNR in i).

``--coadd KERNEL`` (with ``--weights detection_lsst_i_coadd``): fields with the
correlated noise of a coadd of 1-16 visits resampled by KERNEL.

``--seeing F`` / ``--noise G``: fields under a PSF ``F`` times the survey's FWHM (read at
the measured seeing) or with ``G`` times its noise (read with the survey's zeropoints, so
as a shallower image), the density calibration fitted there doing the reading.

``--between``: fields at densities between those the density calibration was fitted at
(0.05, 0.2, 0.5, 0.7 and 1.4 times the prior's), which it reads by interpolation.

``--sky S``: a flat sky of ``S`` noise sigma left in every field, which probcat's
background estimate subtracts (at the density the image's bright detections read and at
its depth: ``probcat``; the faint galaxies' lift of a field of the prior's density at the
survey's depth taken off whatever the field's: ``sky_at_prior_density``) and SEP's.

Writes ``benchmarks/results/density.json`` and ``density.png`` (six bands:
``density_ugrizy.*``; ``_coadd_KERNEL``, ``_seeingF``, ``_noiseG``, ``_skyS``,
``_between`` added to the name).

    .venv/bin/python benchmarks/density.py
    .venv/bin/python benchmarks/density.py --weights detection_lsst_ugrizy
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
SIZE = 500
FACTORS = (0.0, 0.03, 0.1, 0.3, 1.0, 2.0)
BETWEEN = (0.05, 0.2, 0.5, 0.7, 1.4)  # --between: densities between the calibrated ones


def fields(
    bank, factor: float, n: int, seed: int, noise: float = 1.0, coadd=None, sky: float = 0.0
) -> list:
    """``n`` scenes of ``SIZE`` px at ``factor`` times the prior's source densities, scene
    ``f`` from seed ``[seed, f]`` (the same seeds for every factor); ``noise``: the noise
    sigma times the survey's (a shallower image, its sources as bright); ``coadd``: a
    resampling kernel, the noise of a coadd of 1-16 visits resampled by it (the same pixel
    sigma); ``sky``: a flat sky of that many noise sigma left in."""
    from types import SimpleNamespace

    from probcat.simulate.prior import GALAXY_DENSITY, STAR_DENSITY
    from probcat.simulate.scene import SceneConfig, SceneSimulator

    extra = {} if coadd is None else {"coadd_fraction": 1.0, "coadd_kernels": (coadd,)}
    cfg = SceneConfig(SIZE, SIZE, GALAXY_DENSITY * factor, STAR_DENSITY * factor, **extra)
    sim = SceneSimulator(bank, cfg)
    scenes = [sim.sample_at_noise(np.random.default_rng([seed, f]), noise) for f in range(n)]
    if not sky:
        return scenes
    level = sky * noise * np.asarray(bank.survey.noise_sigma, np.float32)[:, None, None]
    return [SimpleNamespace(image=(sc.image + level).astype(np.float32), catalog=sc.catalog)
            for sc in scenes]  # fmt: skip


def measure(scenes: list, sigma, det, n_samples: int = 8, read=None, sky=False) -> dict:
    """probcat (its MAP catalogue as the product makes it, and with the density
    calibration left out: ``prior_density``; with ``sky``, also with the sky subtracted
    at the prior's density and the survey's depth, the calibration kept:
    ``sky_at_prior_density``) and SEP on
    each scene: ``correlated_noise.py``'s
    summaries, detections per Mpx, probcat's mean calibrated probability against the
    share of its detections that are real, and the precision and recall of its detections
    with prob >= 0.5 (``at_0_5``). Truth SNR in band i; SEP on the one band, or on the
    riz coadd of a multi-band image."""
    from probcat.baselines.sep import SepConfig, riz_coadd, sep_detect

    cn = _paths.sibling("correlated_noise")
    own = det.density_calibration
    variants = [("probcat", own, True), ("prior_density", None, True)]
    if sky:
        variants.append(("sky_at_prior_density", own, False))
    counts = {name: [] for name, _, _ in variants} | {"sep": []}
    kept = {name: [] for name, _, _ in variants}  # the prob >= 0.5 catalogue's counts
    bands, sigma = det.bands, np.asarray(sigma, float)
    ib = bands.index("i")
    weights, factors, read_at = [], [], []
    drawn = {name: [] for name, _, _ in variants}  # per scene: mean sources, mean real
    for i, sc in enumerate(scenes):
        for name, cal, at in variants:
            det.density_calibration, det.sky_at_density = cal, at
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the fields are at the survey's depth
                cat = det.catalog(sc.image, noise_sigma=sigma, **(read or {}))
                got = det.sample(sc.image, n_samples, noise_sigma=sigma, seed=i, **(read or {}))
            one = [cn.score(c, sc.catalog, ib) for c in got]
            drawn[name].append([np.mean([o[k] for o in one]) for k in ("n_detections", "n_real")])
            counts[name].append(cn.score(cat, sc.catalog, ib))
            half = np.asarray(cat["prob"]) >= 0.5
            kept[name].append(cn.score(cat.select(half), sc.catalog, ib))
            if name == "probcat" and "density" in cat.meta:
                weights.append(cat.meta["density"].get("weights"))
                read_at.append(cat.meta["density"].get("mean_factor"))
            if name == "probcat" and "sky_density" in cat.meta["input"]:
                factors.append(cat.meta["input"]["sky_density"].get("factor"))
        conf = SepConfig(subtract_background=sky)  # a sky left in: SEP takes its own off
        if len(bands) == 1:
            sep_cat = sep_detect(sc.image, sigma[0], config=conf)
        else:
            image = riz_coadd(sc.image / sigma[:, None, None], bands)
            sep_cat = sep_detect(image, 1.0, config=conf)
        counts["sep"].append(cn.score(sep_cat, sc.catalog, ib))
    det.density_calibration, det.sky_at_density = own, True
    area = len(scenes) * SIZE * SIZE / 1e6
    out = {}
    for k, v in counts.items():
        prob = [c.get("prob") for c in v]
        real = [c.get("real") for c in v]
        out[k] = cn.summary(v, area)
        out[k]["detections_per_mpx"] = out[k]["n_detections"] / area
        if k in kept:
            prob, real = np.concatenate(prob), np.concatenate(real)
            out[k]["mean_prob"] = float(prob.mean()) if len(prob) else None
            out[k]["real_fraction"] = float(real.mean()) if len(real) else None
            half = cn.summary(kept[k], area)
            if half["n_detections"] == 0:
                half["precision"] = None
            if half["n_true_snr_gt_3"] == 0:
                half["recall"] = half["f1"] = None
            out[k]["at_0_5"] = {key: half[key] for key in ("precision", "recall", "f1",
                                                          "n_detections")}  # fmt: skip
        if out[k]["n_detections"] == 0:  # no detections: no precision
            out[k]["precision"] = None
        if out[k].get("n_at_0_9") == 0:
            out[k]["precision_at_0_9"] = None
        if out[k]["n_true_snr_gt_3"] == 0:
            out[k]["recall"] = out[k]["f1"] = None
    n_true = sum(len(sc.catalog) for sc in scenes)
    for k, v in drawn.items():  # posterior samples: sources and real ones per Mpx
        n, real = np.sum(v, axis=0) if v else (0.0, 0.0)
        out[k]["samples"] = {
            "n_samples": n_samples,
            "sources_per_mpx": n / area,
            "real_per_mpx": real / area,
            "false_per_mpx": (n - real) / area,
            "true_per_mpx": n_true / area,
            "true_snr_gt_3_per_mpx": out[k]["n_true_snr_gt_3"] / area,
        }
    if weights:  # the density calibration's weights of the factors, mean over fields
        out["probcat"]["density_weights"] = {
            f: float(np.mean([w[f] for w in weights])) for f in weights[0]
        }
    read_at = [f for f in read_at if f is not None]
    if read_at:  # the density calibration's posterior mean density, over fields
        out["probcat"]["density_read"] = float(np.mean(read_at))
        out["probcat"]["density_read_sd"] = float(np.std(read_at))
    factors = [f for f in factors if f is not None]
    if factors:  # the density the sky was subtracted at, mean over fields
        out["probcat"]["sky_density_factor"] = float(np.mean(factors))
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def figure(factors, res: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([max(f, 0.01) for f in factors])  # noise alone drawn at 0.01
    fig, ax = plt.subplots(1, 5, figsize=(21, 3.9))

    def row(method, key, sub=None):
        vals = [res[str(f)][method] for f in factors]
        vals = [v.get(sub, {}) if sub else v for v in vals]
        return [np.nan if v.get(key) is None else v[key] for v in vals]

    ax[0].plot(x, row("probcat", "precision"), "o-", label="probcat MAP catalogue")
    ax[0].plot(x, row("probcat", "precision", "at_0_5"), "s-", label="probcat, prob >= 0.5")
    ax[0].plot(x, row("prior_density", "precision", "at_0_5"), "s:",
               label="prob >= 0.5, no density calibration")  # fmt: skip
    if "sky_at_prior_density" in res[str(factors[0])]:
        ax[0].plot(x, row("sky_at_prior_density", "precision"), "o--",
                   label="MAP, sky at the prior's density")  # fmt: skip
        ax[3].plot(x, row("sky_at_prior_density", "detection_ece"), "o--",
                   label="sky at the prior's density")  # fmt: skip
    ax[0].plot(x, row("sep", "precision"), "^-", label="SEP")
    ax[0].set_ylabel("precision")
    ax[1].plot(x, row("probcat", "recall"), "o-", label="probcat MAP catalogue")
    ax[1].plot(x, row("probcat", "recall", "at_0_5"), "s-", label="probcat, prob >= 0.5")
    ax[1].plot(x, row("sep", "recall"), "^-", label="SEP")
    ax[1].set_ylabel("recall (true SNR > 3)")
    ax[2].plot(x, row("probcat", "real_fraction"), "k.-", label="share of detections real")
    ax[2].plot(x, row("probcat", "mean_prob"), "o-", label="mean prob")
    ax[2].plot(x, row("prior_density", "mean_prob"), "o:", label="mean prob, no density cal.")
    ax[2].set_ylabel("probcat's MAP detections")
    ax[3].plot(x, row("probcat", "detection_ece"), "o-", label="probcat")
    ax[3].plot(x, row("prior_density", "detection_ece"), "o:", label="no density calibration")
    ax[3].set_ylabel("detection ECE")
    ax[4].plot(x, row("probcat", "false_per_mpx", "samples"), "o-", label="false, thinned")
    ax[4].plot(x, row("prior_density", "false_per_mpx", "samples"), "o:",
               label="false, no density calibration")  # fmt: skip
    ax[4].plot(x, row("probcat", "real_per_mpx", "samples"), "s-", label="real, thinned")
    ax[4].plot(x, row("prior_density", "real_per_mpx", "samples"), "s:",
               label="real, no density calibration")  # fmt: skip
    ax[4].plot(x, row("probcat", "true_snr_gt_3_per_mpx", "samples"), "k.-",
               label="true sources, SNR > 3")  # fmt: skip
    ax[4].set_yscale("symlog", linthresh=1.0)
    ax[4].set_ylabel("posterior samples' sources per Mpx")
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("source density / prior's (noise alone at 0.01)")
        a.axvline(1.0, color="0.7", lw=0.8)
        a.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from probcat.api import load
    from probcat.catalog import atomic_write
    from probcat.provenance import provenance
    from probcat.simulate.bank import BankConfig, SourceBank
    from probcat.survey import Survey

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factors", default=None,
                    help="source densities over the prior's, comma-separated (default: "
                    "those of the density calibration)")  # fmt: skip
    ap.add_argument("--between", action="store_true",
                    help=f"the densities {', '.join(f'{f:g}' for f in BETWEEN)}, between "
                    "those the density calibration was fitted at (named _between)")  # fmt: skip
    ap.add_argument("--fields", type=int, default=16, help="500-px fields per factor")
    ap.add_argument("--weights", default="detection_lsst_i",
                    help="detection weights (registered name or file) with a density "
                    "calibration")  # fmt: skip
    ap.add_argument("--samples", type=int, default=8, help="posterior samples per field")
    ap.add_argument(
        "--seeing",
        type=float,
        default=1.0,
        help="the fields' PSF FWHM over the survey's (read at the measured seeing)",
    )
    ap.add_argument(
        "--coadd",
        default=None,
        choices=("lanczos3", "bilinear"),
        help="the fields' noise that of a coadd resampled by this kernel",
    )
    ap.add_argument("--noise", type=float, default=1.0,
                    help="the fields' noise over the survey's (read with the survey's "
                    "zeropoints: a shallower image)")  # fmt: skip
    ap.add_argument("--sky", type=float, default=0.0,
                    help="a flat sky of this many noise sigma left in the fields (subtracted "
                    "by probcat's and SEP's background estimates)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/density.py",
                        *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    if args.between and args.factors is not None:
        sys.exit("--between and --factors: one or the other")
    preset = BETWEEN if args.between else FACTORS
    args.factors = args.factors or ",".join(f"{f:g}" for f in preset)
    try:
        factors = [float(f) for f in args.factors.split(",") if f.strip()]
    except ValueError:
        sys.exit(f"--factors: numbers separated by commas, got {args.factors!r}")
    if not factors or any(not np.isfinite(f) or f < 0 for f in factors) or args.fields < 1:
        sys.exit("--factors: one or more numbers >= 0; --fields: at least 1")
    if args.samples < 1:
        sys.exit("--samples: at least 1")
    if not (0.5 <= args.seeing <= 2.5 and 0.1 <= args.noise <= 30):
        sys.exit("--seeing: a PSF width ratio in [0.5, 2.5]; --noise: a factor in [0.1, 30]")
    if args.coadd and args.noise != 1.0:
        sys.exit("--coadd and --noise: one at a time")
    if not (np.isfinite(args.sky) and 0 <= args.sky <= 1e4):
        sys.exit("--sky: a number of noise sigma in [0, 10000]")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    det = load(args.weights, kind="detection")
    if det.density_calibration is None:
        sys.exit(f"{args.weights}: no density calibration to measure")
    manifest = det.manifest
    data = manifest["config"]["data"]
    survey = Survey.lsst(bands=det.bands)
    name = "density" if det.bands == ("i",) else f"density_{''.join(det.bands)}"
    name += "" if args.coadd is None else f"_coadd_{args.coadd}"
    name += "" if args.seeing == 1.0 else f"_seeing{args.seeing:g}"
    name += "" if args.noise == 1.0 else f"_noise{args.noise:g}"
    name += "" if not args.sky else f"_sky{args.sky:g}"
    name += "_between" if args.between else ""
    bank = SourceBank.load_or_build(
        survey.with_psf_scale(args.seeing),
        BankConfig(split="test", n_galaxies=5000, population=data["population"]),
    )
    sigma = survey.noise_sigma * args.noise
    # the depth told by the survey's zeropoints; the seeing measured, as by default
    read = {"zeropoint": [b.flux_to_mag(1.0) for b in survey.bands]} if args.noise != 1 else {}
    res = {}
    for f in factors:
        scenes = fields(bank, f, args.fields, args.seed, args.noise, args.coadd, args.sky)
        res[str(f)] = measure(scenes, sigma, det, args.samples, read, sky=bool(args.sky))
        r = res[str(f)]
        print(f"density x{f:g}: " + "; ".join(
            f"{name} precision {_fmt(v.get('precision'))} recall {_fmt(v.get('recall'))}"
            for name, v in (("probcat", r["probcat"]), ("prob >= 0.5", r["probcat"]["at_0_5"]),
                            ("SEP", r["sep"]))), flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    title = (f"LSST {''.join(det.bands)}, {SIZE}x{SIZE} fields of held-out galaxies at other "
             "source densities")  # fmt: skip
    if args.seeing != 1.0 or args.noise != 1.0:
        title += f" (PSF x{args.seeing:g}, noise x{args.noise:g})"
    if args.coadd:
        title += f", coadd noise ({args.coadd}), {args.weights}"
    if args.sky:
        title += f", a sky of {args.sky:g} sigma left in"
    figure(factors, res, args.out / f"{name}.png", title)
    out = {
        "command": command,
        "weights": args.weights,
        "weights_sha256": manifest.get("sha256"),
        "population": data["population"],
        "field_size": SIZE,
        "coadd": args.coadd,
        "seeing": args.seeing,
        "noise": args.noise,
        "sky_sigma": args.sky,
        "fields_per_factor": args.fields,
        "seed": args.seed,
        "factors": factors,
        "results": res,
        "definitions": {
            "factor": "galaxy and star densities over the prior's (160 and 15.5 per "
            "arcmin^2), Poisson; 0: noise alone",
            "precision": "share of all detections matched to a true source within 2 px",
            "recall": "share of true sources with SNR > 3 matched",
            "precision_at_0_9": "precision of probcat's detections with calibrated prob >= 0.9",
            "detection_ece": "10-bin ECE of probcat's calibrated probabilities against "
            "being matched",
            "mean_prob, real_fraction": "mean calibrated prob of probcat's detections, and "
            "the share of them matched: equal where the probabilities are calibrated",
            "samples": "posterior catalogue samples (seed: the field's index), mean over "
            "samples and fields: sources, real (matched within 2 px) and false ones per "
            "Mpx; true sources (all, and SNR > 3) per Mpx; probcat's thinned to the "
            "image's density, prior_density's not",
            "density_weights": "the density calibration's weights of its calibrated "
            "factors, mean over fields",
            "density_read, density_read_sd": "the density calibration's posterior mean "
            "density (times the prior's), mean and standard deviation over fields",
            "sky_density_factor": "the density the sky left in was taken off at, mean over fields",
        },
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }
    out.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(out, indent=1, default=float)
    atomic_write(args.out / f"{name}.json", lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    main()
