"""Detection, photo-z and deblending under PSF profiles and pixel scales unlike the training's.

The shipped LSST-i weights learned one PSF profile: a Kolmogorov atmosphere convolved
with the telescope's obscured Airy pattern (paper 000, section 2.1). A survey's PSF is
not that profile: ground-based PSFs are often fitted by Moffat profiles with an index
beta of about 2.5 to 4.8 (Trujillo et al. 2001, MNRAS 328, 977; 4.765 is what
Kolmogorov turbulence gives), and the smaller beta the more light lies in the wings.
Here the atmosphere of the test scenes is a Moffat of index beta and the survey's FWHM
(:meth:`probcat.survey.Survey.with_psf_beta`), everything else as in
``benchmarks/robustness.py``'s in-distribution test: ``--n-images`` 98-px scenes of the
five morphology families' test galaxies (``--bank-size`` of them, the same scene seeds
for every profile), the shipped weights read at the seeing ``probcat.detect`` measures on
a 1000x1000 field of the same galaxies under the same PSF (as the detector does by
default), and SEP on the same scenes. The same again for ``--pixel-scales``: the
Kolmogorov PSF and every other setting of the survey, the scenes drawn on pixels of
another size (HSC's 0.168", DES's 0.263"; the sky noise per pixel follows the pixel's
area), read as they come: the weights expect LSST's 0.2", and probcat warns of another
scale in an image's WCS but does not resample. And photo-z under each profile:
``photoz_lsst_ugrizy`` on ``--photoz-fields`` 400-px 10-year ugrizy fields of DC2 test
galaxies (``benchmarks/photoz_colours.py``'s fields, seeds and metrics: the gold
galaxies' PDFs at their true positions, each field read back from the FITS file probcat
writes). And deblending under each profile: the shipped deblender on
``--deblend-scenes`` blend scenes of ``benchmarks/deblend.py`` (its blend seed, bulge + disk
test galaxies), every galaxy deblended at its true centroid, its aperture flux, size and
distortion against the truth (deblend.py's definitions), for the default flux-conserving
deblending and for plain model subtraction.

Writes ``benchmarks/results/psf_profile.json`` and ``psf_profile.png``.

    .venv/bin/python benchmarks/psf_profile.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
import torch

from probcat.catalog import atomic_write
from probcat.infer.detect import at_seeing, measured_scale
from probcat.provenance import json_safe, provenance
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.scene import SceneConfig, SceneSimulator
from probcat.survey import Survey
from probcat.weights import DEFAULT_DETECTION, load, load_detection

RESULTS = Path(__file__).resolve().parent / "results"
PROBCAT_KEYS = ("precision", "recall", "f1", "recall_snr_3_10", "precision_at_0_9",
                "detection_ece", "centroid_coverage_68", "centroid_coverage_95")  # fmt: skip
SEP_KEYS = ("precision", "recall", "f1", "recall_snr_3_10")
PHOTOZ_SEED = 20261204  # photoz_colours.py's default: the same fields
DEBLEND_SEED = 3032  # deblend.py's blend scenes (its --seed 3031, plus 1)


def profile_name(beta: float | None) -> str:
    return "kolmogorov" if beta is None else f"moffat_{beta:g}"


def run_profile(net, survey, beta, args, robustness, summarise, pixel_scale=None) -> dict:
    """The shipped weights and SEP on the scenes of one PSF profile (and pixel scale)."""
    test_survey = Survey.lsst(bands="i").with_psf_beta(beta)
    if pixel_scale is not None:
        test_survey = replace(
            test_survey,
            pixel_scale=pixel_scale,
            bands=tuple(replace(b, pixel_scale=pixel_scale) for b in test_survey.bands),
        )
    sigma = float(test_survey.noise_sigma[0])
    bank = SourceBank.load_or_build(
        test_survey,
        BankConfig(population="morphology", split="test", n_galaxies=args.bank_size),
    )
    sim = SceneSimulator(bank, SceneConfig(98, 98))
    ratio = robustness.field_seeing_ratio(net, survey, sim, args.seed)
    scenes = robustness.scenes_for(sim, args.n_images, [args.seed, 99])
    with at_seeing(net, measured_scale(ratio)):  # as the detector reads such an image
        r = robustness.evaluate(net, scenes, sigma, with_sep=True)
    m = robustness.metrics(r, summarise, sep=True)
    psf = test_survey.bands[0].psf()
    return {
        "pixel_scale": test_survey.pixel_scale,
        "noise_sigma": sigma,
        "psf_fwhm_arcsec": psf.calculateFWHM(scale=0.01, size=512),
        "psf_flux_outside_1_arcsec": 1.0 - _flux_within(psf, 1.0),
        "measured_seeing_ratio": ratio,
        "probcat": {k: m["probcat"][k] for k in PROBCAT_KEYS},
        "sep": {k: m["sep"][k] for k in SEP_KEYS},
        "f1_minus_sep": m["f1_minus_sep"],
        "ood_flag_auc": m.get("ood_flag_auc"),
        "ood_flagged_fraction": m.get("ood_flagged_fraction"),
    }


def photoz_profile(est, beta, n_fields: int, colours) -> dict:
    """``est``'s PDF metrics on ``n_fields`` DC2 ugrizy fields under the PSF profile."""
    import tempfile

    from probcat.io import write_image

    survey = Survey.lsst(bands="ugrizy").with_psf_beta(beta)
    bank = SourceBank.load_or_build(
        survey, BankConfig(split="test", n_galaxies=5000, population="dc2")
    )
    sim = SceneSimulator(bank, SceneConfig(colours.SIZE, colours.SIZE))
    scenes = [sim.sample(np.random.default_rng([PHOTOZ_SEED, f])) for f in range(n_fields)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_image(Path(tmp) / f"f{f}.fits", sc.image, Survey.lsst(bands="ugrizy"))
                 for f, sc in enumerate(scenes)]  # fmt: skip
        return colours.summary(colours.measure(est, scenes, None, paths))


def deblend_profile(deb, beta, n_scenes: int, deblend) -> dict:
    """deblend.py's blend-part summaries (true centroids) under the PSF profile."""
    r = deblend.blend_part(deb, None, n=n_scenes, seed=DEBLEND_SEED, psf_beta=beta)
    out = {"n_galaxies": int(len(r["snr"]))}
    for method in ("conserve", "subtract"):
        out[method] = {k: v for k, v in deblend.blend_summary(r, method).items()
                       if not isinstance(v, list)}  # fmt: skip
    return out


def _say(r: dict) -> None:
    print(f"  probcat precision {r['probcat']['precision']:.3f} recall "
          f"{r['probcat']['recall']:.3f} ECE {r['probcat']['detection_ece']:.3f}; "
          f"SEP F1 {r['sep']['f1']:.3f}", flush=True)  # fmt: skip


def _flux_within(psf, radius_arcsec: float) -> float:
    """Share of ``psf``'s flux within ``radius_arcsec`` of its centre (a fine image)."""
    scale, n = 0.02, 600
    img = psf.drawImage(nx=n, ny=n, scale=scale, method="no_pixel").array
    yy, xx = (np.mgrid[:n, :n] - (n - 1) / 2) * scale
    return float(img[np.hypot(xx, yy) <= radius_arcsec].sum() / img.sum())


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["by_profile"]) + [f'pixels {k}"' for k in result["by_pixel_scale"]]
    rows = [*result["by_profile"].values(), *result["by_pixel_scale"].values()]
    x = np.arange(len(names))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0, 0]
    for key, marker, colour in (("precision", "o", "C0"), ("recall", "s", "C1"), ("f1", "^", "C2")):
        ax.plot(x, [r["probcat"][key] for r in rows], marker + "-", color=colour,
                label=f"probcat {key}")  # fmt: skip
        ax.plot(x, [r["sep"][key] for r in rows], marker + "--", color=colour, alpha=0.5,
                label=f"SEP {key}")  # fmt: skip
    ax.set_ylabel("detection score")
    ax.set_ylim(0.3, 1.02)
    ax.legend(fontsize=7, ncol=3, loc="lower center")
    ax = axes[0, 1]
    ax.plot(x, [r["probcat"]["precision_at_0_9"] for r in rows], "o-", color="C0")
    ax.axhline(0.97, color="C0", ls=":", lw=0.8)
    ax.set_ylabel("precision at prob ≥ 0.9", color="C0")
    twin = ax.twinx()
    twin.plot(x, [r["probcat"]["detection_ece"] for r in rows], "s-", color="C3")
    twin.axhline(0.03, color="C3", ls=":", lw=0.8)
    twin.set_ylabel("detection ECE", color="C3")
    for ax in axes[0]:
        ax.set_xticks(x, names, rotation=20, fontsize=8)
    profiles = list(result["by_profile"])
    xp = np.arange(len(profiles))
    if "photoz" in result:
        ax = axes[1, 0]
        pz = [result["photoz"]["by_profile"][n] for n in profiles]
        ax.plot(xp, [r["sigma_iqr"] for r in pz], "o-", color="C0", label="σ_IQR")
        ax.plot(xp, [r["outlier_frac_015"] for r in pz], "s-", color="C1",
                label="outliers beyond 0.15")  # fmt: skip
        twin = ax.twinx()
        twin.plot(xp, [r["pit_coverage_68"] for r in pz], "^--", color="C2", label="68% coverage")
        twin.axhline(0.683, color="C2", ls=":", lw=0.8)
        twin.set_ylim(0.6, 0.76)
        twin.set_ylabel("68% interval coverage", color="C2")
        ax.set_ylim(0, 0.07)
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title("photo-z, DC2 ugrizy fields", fontsize=9)
    if "deblend" in result:
        ax = axes[1, 1]
        db = [result["deblend"]["by_profile"][n] for n in profiles]
        for method, colour in (("conserve", "C0"), ("subtract", "C1")):
            ax.plot(xp, [r[method]["flux_residual_width68"] for r in db], "o-", color=colour,
                    label=f"{method}: 68% width of flux residuals")  # fmt: skip
            ax.plot(xp, [r[method]["deblended_flux_bias_max_abs_snr_gt_10"] for r in db], "s--",
                    color=colour, label=f"{method}: flux bias above SNR 10")  # fmt: skip
        ax.axhline(0.01, color="grey", ls=":", lw=0.8)
        ax.set_ylim(-0.005, 0.2)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
        ax.set_title("deblending at true centroids, blend scenes", fontsize=9)
    for ax in axes[1]:
        ax.set_xticks(xp, profiles, rotation=20, fontsize=8)
    fig.suptitle("LSST-i detection (five morphology families), photo-z and deblending under "
                 "PSF atmosphere profiles and pixel scales unlike the training's",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=DEFAULT_DETECTION)
    ap.add_argument("--betas", default="4.765,3.5,2.5", help="Moffat indices beside Kolmogorov")
    ap.add_argument("--pixel-scales", default="0.168,0.263", help="other pixel sizes, arcsec")
    ap.add_argument("--photoz-fields", type=int, default=16, help="ugrizy fields (0: none)")
    ap.add_argument("--deblend-scenes", type=int, default=150, help="blend scenes (0: none)")
    ap.add_argument("--n-images", type=int, default=1000, help="98-px scenes per profile")
    ap.add_argument("--bank-size", type=int, default=4000, help="test galaxies per profile")
    ap.add_argument("--seed", type=int, default=2029)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/psf_profile.py", *sys.argv[1:]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    robustness = _paths.sibling("robustness")
    summarise = _paths.sibling("detection").summarise
    net, survey = load_detection(args.weights)
    betas = [None] + [float(b) for b in args.betas.split(",") if b]
    result = {
        "command": command,
        "machine": "2-core CPU, no GPU",
        "weights": args.weights,
        "weights_sha256": load(args.weights).sha256,
        "n_images": args.n_images,
        "image_size": 98,
        "bank_size": args.bank_size,
        "seed": args.seed,
        "held_out": "test-split galaxies of the five morphology families (disjoint from "
        "every training galaxy), scene seeds of robustness.py's in-distribution test",
        "by_profile": {},
    }
    for beta in betas:
        name = profile_name(beta)
        print(f"{name} ...", flush=True)
        result["by_profile"][name] = run_profile(net, survey, beta, args, robustness, summarise)
        _say(result["by_profile"][name])
    from probcat.api import load as load_any

    if args.photoz_fields:
        colours = _paths.sibling("photoz_colours")
        est = load_any("photoz_lsst_ugrizy", threads=2, kind="photoz")
        result["photoz"] = {"weights_sha256": (est.manifest or {}).get("sha256"),
                            "n_fields": args.photoz_fields, "by_profile": {}}  # fmt: skip
        for beta in betas:
            name = profile_name(beta)
            print(f"photo-z, {name} ...", flush=True)
            r = photoz_profile(est, beta, args.photoz_fields, colours)
            result["photoz"]["by_profile"][name] = r
            print(f"  sigma_IQR {r['sigma_iqr']:.4f}, outliers (0.15) {r['outlier_frac_015']:.3f}"
                  f", coverage {r['pit_coverage_68']:.3f} / {r['pit_coverage_95']:.3f}",
                  flush=True)  # fmt: skip
    if args.deblend_scenes:
        deblend = _paths.sibling("deblend")
        deb = load_any("deblender_lsst_i", kind="deblender", threads=2)
        result["deblend"] = {"weights_sha256": (deb.manifest or {}).get("sha256"),
                             "n_scenes": args.deblend_scenes, "by_profile": {}}  # fmt: skip
        for beta in betas:
            name = profile_name(beta)
            print(f"deblending, {name} ...", flush=True)
            r = result["deblend"]["by_profile"][name] = deblend_profile(
                deb, beta, args.deblend_scenes, deblend
            )
            c = r["conserve"]
            print(f"  flux bias (SNR > 10) {c['deblended_flux_bias_max_abs_snr_gt_10']:.4f}, "
                  f"width {c['flux_residual_width68']:.3f}, size bias "
                  f"{c['size_bias_max_abs']:.3f}", flush=True)  # fmt: skip
    result["by_pixel_scale"] = {}
    for scale in [float(v) for v in args.pixel_scales.split(",") if v]:
        print(f"pixel scale {scale:g} ...", flush=True)
        result["by_pixel_scale"][f"{scale:g}"] = r = run_profile(
            net, survey, None, args, robustness, summarise, pixel_scale=scale
        )
        _say(r)
    result["definitions"] = {
        "profiles": "kolmogorov: the training's PSF (Kolmogorov atmosphere of the survey's "
        "FWHM convolved with the obscured Airy optics); moffat_B: a Moffat atmosphere of "
        "index B and the same FWHM, the same optics",
        "psf_flux_outside_1_arcsec": "share of the PSF's light more than 1 arcsec "
        "from its centre: the wings",
        "by_pixel_scale": "the Kolmogorov PSF, scenes on pixels of that size (arcsec), the "
        "sky noise per pixel of that area; the same galaxies, scene seeds and reading",
        "deblend": "deblend.py's blend-part keys (deblended_flux_bias_max_abs_snr_gt_10: "
        "largest |median fractional aperture-flux residual| over SNR bins above 10; "
        "scatter ratio: 68% width of the residuals, deblended over none; size and "
        "ellipticity biases from adaptive moments), conserve: the default deblending, "
        "subtract: model subtraction",
        "photoz": "photoz_colours.py's metrics (PDF mode on the 0-3 grid, sigma_IQR, "
        "outliers beyond 0.15 and beyond max(3 sigma_IQR, 0.06), PIT KS, CDE loss, central "
        "interval coverage) of the gold galaxies (true i < 25.3) at their true positions",
        "metrics": "robustness.py's (detection.py's matching; precision and recall over "
        "true SNR 3-1000; ECE over every MAP detection; centroid coverage of matched MAP "
        "detections by the calibrated intervals), the weights read at "
        "measured_seeing_ratio as probcat.detect does",
    }
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json_safe(result)
    atomic_write(out / "psf_profile.json", lambda tmp: Path(tmp).write_text(
        json.dumps(text, indent=1) + "\n"))  # fmt: skip
    figure(result, out / "psf_profile.png")
    print(f"wrote {out / 'psf_profile.json'} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
