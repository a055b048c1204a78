"""Tables of the benchmark results, generated from ``benchmarks/results/*.json``: the whole of
``docs/benchmarks.md`` and the results block of the README (between its ``results`` markers).

    .venv/bin/python benchmarks/report.py           # rewrite both
    .venv/bin/python benchmarks/report.py --check   # exit 1 if either is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _get(data: dict, path: str):
    """``data`` at a dotted ``path``; keys may hold dots themselves (``"0.683"``), and an
    integer part indexes a list (``"r3_rounds.-1.prior_fraction"``)."""
    parts = path.split(".")
    while parts:
        if isinstance(data, list):
            try:
                data, parts = data[int(parts[0])], parts[1:]
            except (ValueError, IndexError):
                return None
            continue
        if not isinstance(data, dict):
            return None
        for n in range(len(parts), 0, -1):  # the longest key that exists
            key = ".".join(parts[:n])
            if key in data:
                data, parts = data[key], parts[n:]
                break
        else:
            return None
    return data


def _fmt(value, spec: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):  # an interval
        return "[" + ", ".join(format(v, spec) for v in value) + "]"
    return format(value, spec)


# (label, json path of probcat's value, of the baseline's (or None), format, target[, the
# baseline's name when it is not the table's])
LEFT_OUT_FAMILIES = ("sersic", "clumpy", "spiral", "irregular")


def _left_out_rows(fam: str) -> list[tuple]:
    """The robustness table's rows for family ``fam`` left out of training."""
    lo = f"left_out.{fam}"
    return [
        (f"{fam} left out: F1", f"{lo}.probcat.f1", f"{lo}.sep.f1", ".3f", "≥ SEP + 0.10"),
        (f"{fam} left out: precision", f"{lo}.probcat.precision", f"{lo}.sep.precision",
         ".3f", "≥ 0.93"),
        (f"{fam} left out: precision at prob ≥ 0.9", f"{lo}.probcat.precision_at_0_9", None,
         ".3f", "≥ 0.97"),
        (f"{fam} left out: detection ECE", f"{lo}.probcat.detection_ece", None, ".3f",
         "≤ 0.03"),
        (f"{fam} left out: detection ECE, evidence of all the scenes pooled",
         f"{lo}.probcat.detection_ece_batch", None, ".3f", ""),
        (f"{fam} left out: detection ECE, over 8 px inside",
         f"{lo}.probcat.detection_ece_interior", None, ".3f", ""),
        (f"{fam} left out: detection ECE, survey-cutout layout",
         f"{lo}.margin_8.detection_ece", None, ".3f", ""),
        (f"{fam} left out: detection ECE, survey-cutout layout, evidence pooled",
         f"{lo}.margin_8.detection_ece_batch", None, ".3f", ""),
        (f"{fam} left out: ood_score AUC, false vs real", f"{lo}.ood_flag_auc", None, ".3f", ""),
        (f"{fam} left out: false detections splitting a found source",
         f"{lo}.false_detections.split.fraction", None, ".2f", ""),
        (f"{fam} left out: centroid 68% intervals' coverage",
         f"{lo}.probcat.centroid_coverage_68", f"{lo}.probcat.centroid_coverage_68_prior",
         ".3f", "0.683", "training galaxies' calibration alone"),
        (f"{fam} left out: centroid 95% intervals' coverage",
         f"{lo}.probcat.centroid_coverage_95", f"{lo}.probcat.centroid_coverage_95_prior",
         ".3f", "0.954", "training galaxies' calibration alone"),
        (f"{fam} left out: centroid 68% coverage, true SNR 3–10 / 100–1000",
         f"{lo}.probcat.centroid_coverage_by_snr.0.68",
         f"{lo}.probcat.centroid_coverage_by_snr.3.68", ".3f", "0.683", "SNR 100–1000"),
    ]  # fmt: skip


HUBBLE_ROWS = [
    ("Hubble Deep Field galaxies (shipped): F1", "hubble.shipped.probcat.f1",
     "hubble.shipped.sep.f1", ".3f", ""),
    ("Hubble Deep Field galaxies (shipped): precision", "hubble.shipped.probcat.precision",
     "hubble.shipped.sep.precision", ".3f", ""),
    ("Hubble Deep Field galaxies (shipped): recall", "hubble.shipped.probcat.recall",
     "hubble.shipped.sep.recall", ".3f", ""),
    ("Hubble Deep Field galaxies (shipped): recall at SNR 3–10",
     "hubble.shipped.probcat.recall_snr_3_10", "hubble.shipped.sep.recall_snr_3_10", ".3f", ""),
    ("Hubble Deep Field galaxies (shipped): precision at prob ≥ 0.9",
     "hubble.shipped.probcat.precision_at_0_9", None, ".3f", ""),
    ("Hubble Deep Field galaxies (shipped): detection ECE",
     "hubble.shipped.probcat.detection_ece", None, ".3f", ""),
    ("Hubble Deep Field galaxies (shipped): detection ECE, evidence of all the scenes pooled",
     "hubble.shipped.probcat.detection_ece_batch", None, ".3f", ""),
    ("Hubble Deep Field galaxies (shipped): precision at prob ≥ 0.9, evidence pooled",
     "hubble.shipped.probcat.precision_at_0_9_batch", None, ".3f", ""),
    ("Hubble Deep Field galaxies (shipped): centroid 68% / 95% coverage, evidence pooled",
     "hubble.shipped.probcat.centroid_coverage_68_batch",
     "hubble.shipped.probcat.centroid_coverage_95_batch", ".3f", "0.683 / 0.954", "95%"),
    ("Hubble Deep Field galaxies: precision of the bulge + disk weights (v6)",
     "hubble.bulgedisk.probcat.precision", None, ".3f", ""),
    ("Hubble Deep Field galaxies (shipped): centroid 68% intervals' coverage",
     "hubble.shipped.probcat.centroid_coverage_68",
     "hubble.shipped.probcat.centroid_coverage_68_prior", ".3f", "0.683",
     "training galaxies' calibration alone"),
    ("Hubble Deep Field galaxies (shipped): centroid 95% intervals' coverage",
     "hubble.shipped.probcat.centroid_coverage_95",
     "hubble.shipped.probcat.centroid_coverage_95_prior", ".3f", "0.954",
     "training galaxies' calibration alone"),
    ("Hubble Deep Field galaxies (shipped): centroid 68% coverage, true SNR 3–10",
     "hubble.shipped.probcat.centroid_coverage_by_snr.0.68", None, ".3f", "0.683"),
    ("Hubble Deep Field galaxies (shipped): centroid 68% coverage, true SNR 30–100",
     "hubble.shipped.probcat.centroid_coverage_by_snr.2.68", None, ".3f", "0.683"),
    ("Hubble Deep Field galaxies (shipped): centroid 68% coverage, true SNR 100–1000",
     "hubble.shipped.probcat.centroid_coverage_by_snr.3.68", None, ".3f", "0.683"),
]  # fmt: skip

SEEING_SCALES = ("0.8", "1", "1.25", "1.5")


def _seeing_rows(scale: str) -> list[tuple]:
    """The robustness table's rows for the shipped weights under seeing ``scale`` x the
    survey's PSF FWHM."""
    by = f"seeing.by_scale.{scale}"
    return [
        (f"seeing x {scale}: F1", f"{by}.probcat.f1", f"{by}.sep.f1", ".3f", ""),
        (f"seeing x {scale}: precision at prob ≥ 0.9", f"{by}.probcat.precision_at_0_9", None,
         ".3f", ""),
        (f"seeing x {scale}: detection ECE, over 8 px inside",
         f"{by}.probcat.detection_ece_interior", None, ".3f", ""),
        (f"seeing x {scale}: star F1 (SNR > 12), at true positions, stamps as cut",
         f"{by}.classification.star_f1", None, ".3f", ""),
        (f"seeing x {scale}: star F1, stamps at the measured seeing (default)",
         f"{by}.classification_matched.star_f1", None, ".3f", ""),
        (f"seeing x {scale}: galaxy F1 (SNR > 10), stamps at the measured seeing",
         f"{by}.classification_matched.galaxy_f1", None, ".3f", ""),
    ]  # fmt: skip


def _seeing_calibration_rows() -> list[tuple]:
    """Rows of a seeing-calibration table: ECE and precision at prob >= 0.9 at each seeing,
    the default calibration against the survey's."""
    return [
        (
            f"seeing x {scale}: {label}",
            f"by_scale.{scale}.seeing_calibration.{key}",
            f"by_scale.{scale}.survey_calibration.{key}",
            ".3f",
            "",
        )
        for scale in (*SEEING_SCALES, "2")
        for label, key in (
            ("detection ECE", "detection_ece"),
            ("precision at prob ≥ 0.9", "precision_at_0_9"),
        )
    ]


def machine_speed_row(key: str, when: str) -> tuple:
    """The row of a benchmark's ``reference_speed_s`` (at ``key``), measured at the
    ``when`` ("time" or "start") of its run: the machine's speed beside its seconds."""
    label = f"machine speed at the {when}: reference net (s; about 2.5 on a normal day)"
    return (label, key, None, ".2f", "")


def _noise_rows(flux: bool = True, coadd_weights: bool = True) -> list:
    """The rows of a correlated-noise table: each noise, each of probcat's weights (the
    default ones, and the coadd weights with ``coadd_weights``); with ``flux``, the
    deblender's flux-error coverage."""
    rows = []
    for noise, title in (
        ("white", "white noise"),
        ("coadd", "coadd, cubic spline"),
        ("coadd_lanczos3", "coadd, Lanczos-3"),
    ):
        kinds = (("probcat", "default"), ("probcat_coadd_weights", "coadd weights"))
        for who, weights in kinds[: 2 if coadd_weights else 1]:
            for label, key, fmt in (
                ("false detections per Mpx", "false_per_mpx", ".0f"),
                ("precision", "precision", ".3f"),
                ("precision at prob >= 0.9", "precision_at_0_9", ".3f"),
                ("recall (SNR > 3)", "recall", ".3f"),
                ("F1", "f1", ".3f"),
                ("detection ECE", "detection_ece", ".3f"),
            ):
                base = (
                    None if key in ("precision_at_0_9", "detection_ece") else f"sep_{noise}.{key}"
                )
                rows.append((f"{title}, {weights}: {label}", f"{who}_{noise}.{key}", base, fmt, ""))
        for label, key in (("68%", "coverage_68"), ("95%", "coverage_95")) if flux else ():
            rows.append(
                (
                    f"{title}: {label} coverage of isolated galaxies' aperture flux by flux_ap_err",
                    f"flux_error_coverage.{noise}.{key}",
                    None,
                    ".3f",
                    "",
                )
            )
        rows.append(
            (
                f"{title}: noise_correlation (median)",
                f"noise_correlation.{noise}.median",
                None,
                ".3f",
                "warns above 0.08",
            )
        )
    return rows


def _photoz_noise_rows() -> list:
    """The photo-z rows of the six-band correlated-noise table: per image and way of
    reading it, the PDFs' interval coverage, sigma_IQR and PIT KS."""
    rows = []
    for key, title in (
        ("white_survey_sigma", "white noise of the survey's sigma"),
        ("white", "white noise of the coadd's pixel sigma (a deeper image)"),
        ("coadd", "coadd, cubic spline, as probcat reads it"),
        ("coadd_pixel_sigma", "coadd, cubic spline, read at its pixel sigma"),
        ("coadd_lanczos3", "coadd, Lanczos-3, as probcat reads it"),
        ("coadd_lanczos3_pixel_sigma", "coadd, Lanczos-3, read at its pixel sigma"),
    ):
        for label, metric, target in (
            ("68% interval coverage", "pit_coverage_68", "0.683"),
            ("95% interval coverage", "pit_coverage_95", "0.954"),
            ("sigma_IQR", "sigma_iqr", ""),
            ("PIT KS", "ks", ""),
        ):
            rows.append(
                (f"photo-z, {title}: {label}", f"photoz.{key}.{metric}", None, ".3f", target)
            )
    return rows


BAND_SEEING_PATTERNS = ("1.3,1.3,1,1,0.8,0.8", "0.8,0.8,1,1,1.3,1.3", "1.15,0.9,1.2,1,0.85,1.1")


PSF_PROFILES = (("kolmogorov", "Kolmogorov (as trained)"), ("moffat_4.765", "Moffat beta 4.765"),
                ("moffat_3.5", "Moffat beta 3.5"), ("moffat_2.5", "Moffat beta 2.5"))  # fmt: skip


BIAS10 = "deblended_flux_bias_max_abs_snr_gt_10"


def _psf_profile_rows() -> list:
    """The psf_profile table: each PSF profile's (and pixel scale's) detection scores."""
    rows = []
    profiles = [(f"by_profile.{key}", name) for key, name in PSF_PROFILES]
    scales = [(f"by_pixel_scale.{k}", f'{k}" pixels') for k in ("0.168", "0.263")]
    for by, name in profiles + scales:
        rows += [
            (f"{name}: F1", f"{by}.probcat.f1", f"{by}.sep.f1", ".3f", ""),
            (f"{name}: precision", f"{by}.probcat.precision", f"{by}.sep.precision", ".3f", ""),
            (f"{name}: recall at SNR 3–10", f"{by}.probcat.recall_snr_3_10",
             f"{by}.sep.recall_snr_3_10", ".3f", ""),
            (f"{name}: precision at prob ≥ 0.9", f"{by}.probcat.precision_at_0_9", None,
             ".3f", ""),
            (f"{name}: detection ECE", f"{by}.probcat.detection_ece", None, ".3f", ""),
            (f"{name}: centroid 68% interval coverage", f"{by}.probcat.centroid_coverage_68",
             None, ".3f", ""),
        ]  # fmt: skip
    for key, name in PSF_PROFILES[1:]:  # deblending: each Moffat profile against Kolmogorov
        by, base = f"deblend.by_profile.{key}", "deblend.by_profile.kolmogorov"
        rows += [
            (f"deblending, {name}: {label}", f"{by}.{k}", f"{base}.{k}", fmt, "", "Kolmogorov")
            for label, k, fmt in (
                ("flux bias above SNR 10, max |median|", f"conserve.{BIAS10}", ".4f"),
                ("flux residual 68% width", "conserve.flux_residual_width68", ".3f"),
                ("size bias, max |median|", "conserve.size_bias_max_abs", ".3f"),
                ("model subtraction: flux bias above SNR 10", f"subtract.{BIAS10}", ".4f"),
            )
        ]  # fmt: skip
    for key, name in PSF_PROFILES[1:]:  # photo-z: each Moffat profile against Kolmogorov
        by, base = f"photoz.by_profile.{key}", "photoz.by_profile.kolmogorov"
        rows += [
            (f"photo-z, {name}: {label}", f"{by}.{k}", f"{base}.{k}", fmt, "", "Kolmogorov")
            for label, k, fmt in (("σ_IQR", "sigma_iqr", ".4f"),
                                  ("outliers beyond 0.15", "outlier_frac_015", ".3f"),
                                  ("68% interval coverage", "pit_coverage_68", ".3f"),
                                  ("95% interval coverage", "pit_coverage_95", ".3f"))
        ]  # fmt: skip
    return rows


def _depth_rows() -> list:
    """The rows of the depth table: per depth, detection against SEP and the photo-z
    PDFs' calibration."""
    rows = []
    for y in ("0.5", "1", "2", "5", "10", "20"):
        for label, key, base, fmt in (
            ("detection F1", "detection.{y}.probcat.f1", "detection.{y}.sep.f1", ".3f"),
            ("detection precision", "detection.{y}.probcat.precision",
             "detection.{y}.sep.precision", ".3f"),
            ("detection recall (SNR > 3)", "detection.{y}.probcat.recall",
             "detection.{y}.sep.recall", ".3f"),
            ("detection ECE (its depth's calibration)", "detection.{y}.probcat.detection_ece",
             "detection.{y}.probcat_depth_unknown.detection_ece", ".3f"),
            ("detection precision at prob >= 0.9 (its depth's calibration)",
             "detection.{y}.probcat.precision_at_0_9",
             "detection.{y}.probcat_depth_unknown.precision_at_0_9", ".3f"),
            ("detection F1, no noise stated", "detection.{y}.probcat_noise_unstated.f1",
             "detection.{y}.probcat_survey_noise.f1", ".3f"),
            ("detection ECE, no noise stated",
             "detection.{y}.probcat_noise_unstated.detection_ece",
             "detection.{y}.probcat_survey_noise.detection_ece", ".3f"),
            ("five morphology families: detection F1", "detection_families.{y}.probcat.f1",
             "detection_families.{y}.sep.f1", ".3f"),
            ("five morphology families: detection ECE (its depth's calibration)",
             "detection_families.{y}.probcat.detection_ece",
             "detection_families.{y}.probcat_depth_unknown.detection_ece", ".3f"),
            ("five morphology families: precision at prob >= 0.9 (its depth's calibration)",
             "detection_families.{y}.probcat.precision_at_0_9",
             "detection_families.{y}.probcat_depth_unknown.precision_at_0_9", ".3f"),
            ("isolated galaxies' aperture flux within 1 flux_ap_err",
             "detection.{y}.flux_error_coverage.coverage_68", None, ".3f"),
            ("same, within 1.96 flux_ap_err",
             "detection.{y}.flux_error_coverage.coverage_95", None, ".3f"),
            ("ugrizy detection (detection_lsst_ugrizy) ECE",
             "photoz.{y}.detection.probcat.detection_ece", None, ".3f"),
            ("ugrizy detection precision at prob >= 0.9",
             "photoz.{y}.detection.probcat.precision_at_0_9", None, ".3f"),
            ("photo-z 68% interval coverage", "photoz.{y}.pit_coverage_68", None, ".3f"),
            ("photo-z 95% interval coverage", "photoz.{y}.pit_coverage_95", None, ".3f"),
            ("photo-z sigma_IQR", "photoz.{y}.sigma_iqr", None, ".4f"),
            ("photo-z PIT KS", "photoz.{y}.ks", None, ".3f"),
        ):  # fmt: skip
            other = (
                ()
                if not base or ".sep." in base
                else ("read at the survey's noise" if "survey_noise" in base else "depth unknown",)
            )
            rows.append((f"{y} years: {label}", key.format(y=y),
                         base.format(y=y) if base else None, fmt, "", *other))  # fmt: skip
    calibration = (
        ("68% interval coverage", "pit_coverage_68", ".3f"),
        ("95% interval coverage", "pit_coverage_95", ".3f"),
        ("sigma_IQR", "sigma_iqr", ".4f"),
        ("PIT KS", "ks", ".3f"),
    )
    parts = [
        (
            "20 years, photo-z read at the training depth (--match-depth): ",
            "photoz.20.match_depth",
            calibration,
        )
    ]
    parts += [
        (f"10 years, PSF {f}x LSST's: photo-z ", f"photoz_seeing.{f}", calibration[:3])
        for f in ("0.8", "1.25", "1.5")
    ]
    parts += [(f"10 years, PSF ({pat})x LSST's in ugrizy: photo-z ",
               f"photoz_band_seeing.{pat}", calibration)
              for pat in BAND_SEEING_PATTERNS]  # fmt: skip
    parts += [(f"10 years, PSF ({pat})x LSST's in ugrizy: photo-z photoz_lsst_ugrizy alone ",
               f"photoz_band_seeing_shipped_only.{pat}", calibration)
              for pat in BAND_SEEING_PATTERNS]  # fmt: skip
    parts += [("10 years, LSST's PSF: photo-z photoz_lsst_ugrizy_seeing ",
               "seeing_weights.photoz_10", calibration)]  # fmt: skip
    parts += [(f"10 years, PSF {f}x LSST's: photo-z photoz_lsst_ugrizy_seeing ",
               f"seeing_weights.photoz_seeing.{f}", calibration[:3])
              for f in ("0.8", "1.25", "1.5")]  # fmt: skip
    parts += [(f"10 years, PSF ({pat})x LSST's in ugrizy: photo-z photoz_lsst_ugrizy_seeing ",
               f"seeing_weights.photoz_band_seeing.{pat}", calibration)
              for pat in BAND_SEEING_PATTERNS]  # fmt: skip
    for head, path, metrics in parts:
        rows += [(head + label, f"{path}.{key}", None, fmt, "") for label, key, fmt in metrics]
    return rows


_PHOTOZ_COLOUR_METRICS = (
    ("sigma_IQR (PDF mode)", "sigma_iqr", ".4f"),
    ("outlier fraction beyond 0.15", "outlier_frac_015", ".3f"),
    ("PIT KS", "ks", ".3f"),
    ("CDE loss", "cde_loss", ".2f"),
    ("68% interval coverage", "pit_coverage_68", ".3f"),
    ("95% interval coverage", "pit_coverage_95", ".3f"),
)


CALIBRATED = ("0.0", "0.03", "0.1", "0.3", "1.0", "2.0")  # density.py's default factors
BETWEEN = ("0.05", "0.2", "0.5", "0.7", "1.4")  # density.py --between


def _density_sky_rows(prior: str = "sky at the prior's density", factors=CALIBRATED) -> list:
    """Rows of ``benchmarks/density.py --sky``: the sky subtracted at each field's density
    against at the prior's (``prior``: that reading's name)."""
    rows = []
    for f in factors:
        at = "noise alone" if f == "0.0" else f"{float(f):g}× the prior's density"
        rows.append(
            (
                f"{at}: false detections per Mpx",
                f"results.{f}.probcat.false_per_mpx",
                f"results.{f}.sky_at_prior_density.false_per_mpx",
                ".1f",
                "",
                prior,
            )
        )
        if f == "0.0":
            continue
        rows += [
            (
                f"{at}: precision",
                f"results.{f}.probcat.precision",
                f"results.{f}.sky_at_prior_density.precision",
                ".3f",
                "",
                prior,
            ),
            (
                f"{at}: F1",
                f"results.{f}.probcat.f1",
                f"results.{f}.sky_at_prior_density.f1",
                ".3f",
                "",
                prior,
            ),
            (f"{at}: F1, SEP", f"results.{f}.sep.f1", None, ".3f", ""),
            (
                f"{at}: detection ECE",
                f"results.{f}.probcat.detection_ece",
                f"results.{f}.sky_at_prior_density.detection_ece",
                ".3f",
                "",
                prior,
            ),
            (
                f"{at}: density the sky was read at",
                f"results.{f}.probcat.sky_density_factor",
                None,
                ".2f",
                "",
            ),
        ]
    return rows  # fmt: skip


def _density_rows(factors=CALIBRATED) -> list:
    """Rows of the density benchmarks (``benchmarks/density.py``; noise alone where
    ``factors`` hold 0, the density read where they fall between the calibrated ones)."""
    rows = []
    if "0.0" in factors:
        rows += [
            (
                "noise alone: false detections per Mpx",
                "results.0.0.probcat.false_per_mpx",
                "results.0.0.sep.false_per_mpx",
                ".1f",
                "",
            ),
            (
                "noise alone: false detections per Mpx, no density calibration",
                "results.0.0.prior_density.false_per_mpx",
                None,
                ".1f",
                "",
            ),
            (
                "noise alone: detection ECE",
                "results.0.0.probcat.detection_ece",
                "results.0.0.prior_density.detection_ece",
                ".3f",
                "",
                "no density calibration",
            ),
            (
                "noise alone: posterior samples' sources per Mpx",
                "results.0.0.probcat.samples.false_per_mpx",
                "results.0.0.prior_density.samples.false_per_mpx",
                ".1f",
                "",
                "not thinned",
            ),
        ]
    for f in factors:
        if f == "0.0":
            continue
        at, r = f"{float(f):g}× the prior's density", f"results.{f}"
        if factors != CALIBRATED:
            rows.append(
                (
                    f"{at}: density read (mean over fields)",
                    f"{r}.probcat.density_read",
                    None,
                    ".2f",
                    "",
                )
            )
        rows += [
            (f"{at}: F1", f"{r}.probcat.f1", f"{r}.sep.f1", ".3f", ""),
            (f"{at}: precision", f"{r}.probcat.precision", f"{r}.sep.precision", ".3f", ""),
            (f"{at}: recall (SNR > 3)", f"{r}.probcat.recall", f"{r}.sep.recall", ".3f", ""),
            (
                f"{at}: precision, no density calibration",
                f"{r}.prior_density.precision",
                None,
                ".3f",
                "",
            ),
            (
                f"{at}: detection ECE",
                f"{r}.probcat.detection_ece",
                f"{r}.prior_density.detection_ece",
                ".3f",
                "",
                "no density calibration",
            ),
            (
                f"{at}: posterior samples' false sources per Mpx",
                f"{r}.probcat.samples.false_per_mpx",
                f"{r}.prior_density.samples.false_per_mpx",
                ".1f",
                "",
                "not thinned",
            ),
            (
                f"{at}: posterior samples' real sources per Mpx",
                f"{r}.probcat.samples.real_per_mpx",
                f"{r}.prior_density.samples.real_per_mpx",
                ".1f",
                "",
                "not thinned",
            ),
        ]
    return rows  # fmt: skip


TABLES = {
    "detection": (
        "probcat vs SEP on held-out 98×98 LSST-i `blend` scenes (test-split galaxies)",
        [
            ("F1 (SNR 3–1000)", "probcat.f1", "sep.f1", ".3f", "probcat ≥ SEP + 0.05"),
            ("precision", "probcat.precision", "sep.precision", ".3f", ""),
            ("recall", "probcat.recall", "sep.recall", ".3f", ""),
            (
                "recall at SNR 3–10",
                "probcat.recall_snr_3_10",
                "sep.recall_snr_3_10",
                ".3f",
                "≥ 1.5× SEP",
            ),
            (
                "recall, top blendedness third",
                "probcat.recall_blend_top_third",
                "sep.recall_blend_top_third",
                ".3f",
                "≥ 1.2× SEP",
            ),
            ("galaxy F1 at SNR > 10", "galaxy_f1_snr_gt_10", None, ".3f", "≥ 0.97"),
            ("star F1 at SNR > 12", "star_f1_snr_gt_12", None, ".3f", "≥ 0.85"),
            ("detection ECE", "detection_ece", None, ".4f", "≤ 0.03"),
            ("centroid coverage 68%", "centroid_coverage_68", None, ".3f", "0.683 ± 0.03"),
            ("centroid coverage 95%", "centroid_coverage_95", None, ".3f", "0.954 ± 0.03"),
            (
                "centroid coverage 68%, true SNR 3–10",
                "centroid_coverage_by_snr.0.68",
                None,
                ".3f",
                "0.683",
            ),
            (
                "centroid coverage 68%, true SNR 100–1000",
                "centroid_coverage_by_snr.3.68",
                None,
                ".3f",
                "0.683",
            ),
            (
                "tile-boundary P(one match), worst offset",
                "boundary_min_prob_one_match",
                None,
                ".3f",
                "≥ 0.95",
            ),
            (
                "seconds, 1000×1000 MAP catalog (fresh process)",
                "speed.probcat_s",
                "speed.sep_s",
                ".3f",
                "ratio ≤ 3",
            ),
            ("speed ratio probcat / SEP", "speed.ratio", None, ".2f", "≤ 3"),
            machine_speed_row("speed.reference_speed_s", "time"),
            (
                "peak RSS MB, `probcat detect` 4000×4000",
                "detect_4k.peak_rss_mb",
                None,
                ".0f",
                "≤ 2048",
            ),
        ],
    ),
    "platform": (
        "the public API, start-up and thread policy (fresh processes, medians of 5)",
        [
            ("`import probcat` (s)", "import_s", None, ".3f", "≤ 1.0"),
            ("`probcat --help` (s)", "help_s", None, ".3f", "≤ 1.5"),
            (
                "1000×1000 MAP catalog, quiet, default threads (s)",
                "detect_1k_quiet_s",
                "sep_1k_quiet_s",
                ".3f",
                "",
            ),
            (
                "1000×1000 MAP catalog, quiet, 1 thread (s)",
                "detect_1k_quiet_1thread_s",
                None,
                ".3f",
                "",
            ),
            (
                "1000×1000 MAP catalog, one core busy, default threads (s)",
                "detect_1k_busy_s",
                "sep_1k_busy_s",
                ".3f",
                "≤ 1.25 × quiet 1 thread",
            ),
            ("busy / quiet 1 thread", "busy_over_quiet_1thread", None, ".2f", "≤ 1.25"),
            (
                "98×98 cutouts per second, batched",
                "cutouts_per_s_probcat_batched",
                "cutouts_per_s_sep",
                ".0f",
                "≥ 50",
            ),
            (
                "same catalog as before the platform change",
                "same_catalog_as_before",
                None,
                "",
                "yes",
            ),
            ("max abs probability difference", "same_catalog_max_abs_prob_diff", None, ".1e", ""),
            ("training resume exact", "resume_exact", None, "", "yes"),
            machine_speed_row("reference_speed_s", "start"),
        ],
    ),
    "population": (
        "detection as truncation: one simulated target, posterior widths and coverage",
        [
            (
                "68% width of N, combined",
                "widths_68.combined.N",
                "widths_68.plain_nre.N",
                ".1f",
                "< r3, r4 and plain",
            ),
            ("68% width of N, sub-threshold only (r3)", "widths_68.r3.N", None, ".1f", ""),
            ("68% width of N, detected only (r4)", "widths_68.r4.N", None, ".1f", ""),
            ("68% width of h, sub-threshold only (r3)", "widths_68.r3.h", None, ".2f", ""),
            (
                "68% width of sigma, combined",
                "widths_68.combined.sigma",
                "widths_68.plain_nre.sigma",
                ".3f",
                "< plain",
            ),
            (
                "68% width of h, combined",
                "widths_68.combined.h",
                "widths_68.plain_nre.h",
                ".2f",
                "< plain",
            ),
            (
                "coverage of N at 68.3%, combined",
                "coverage.combined.N.0.683",
                "coverage.plain_nre.N.0.683",
                ".3f",
                "0.683 within binomial error",
            ),
            (
                "coverage of N at 95.4%, combined",
                "coverage.combined.N.0.954",
                "coverage.plain_nre.N.0.954",
                ".3f",
                "0.954 within binomial error",
            ),
            (
                "coverage of sigma / h at 68.3%, combined",
                "coverage.combined.sigma.0.683",
                "coverage.combined.h.0.683",
                ".3f",
                "0.683 within binomial error",
                "h",
            ),
            (
                "coverage of N at 68.3%, r3 / r4",
                "coverage.r3.N.0.683",
                "coverage.r4.N.0.683",
                ".3f",
                "0.683 within binomial error",
                "r4",
            ),
            (
                "mean 68% width of h over the coverage check's target-like maps, combined",
                "widths_68_target_like_maps.combined.h",
                "widths_68_target_like_maps.r3.h",
                ".2f",
                "< r3",
                "r3",
            ),
            (
                "joint 68% region, fraction of the prior box, combined",
                "joint_volume_68.combined",
                "joint_volume_68.plain_nre",
                ".2e",
                "< r3, r4 and plain",
            ),
            (
                "joint coverage at 68.3%, combined",
                "coverage.combined.joint.0.683",
                "coverage.plain_nre.joint.0.683",
                ".3f",
                "0.683 within binomial error",
            ),
            (
                "joint coverage at 95.4%, combined",
                "coverage.combined.joint.0.954",
                "coverage.plain_nre.joint.0.954",
                ".3f",
                "0.954 within binomial error",
            ),
            (
                "per-parameter coverage checks beyond 2 standard errors (of 24)",
                "checks.coverage_checks_outside_2_se.count",
                None,
                "d",
                "about 1.1 if calibrated",
            ),
            (
                "effective size of the 20,000 weighted samples, combined",
                "samples_ess.combined",
                "samples_ess.plain_nre",
                ".0f",
                "",
            ),
            (
                "r3's last truncation box, fraction of the prior box",
                "r3_rounds.-1.prior_fraction",
                None,
                ".3f",
                "",
            ),
            ("simulations, all networks", "n_simulations", None, "d", ""),
            ("wall time of the chain (s)", "wall_s", None, ".0f", "≤ 3600"),
            machine_speed_row("reference_speed_s", "start"),
        ],
    ),
    "population_heads": (
        "the plain NRE's head stage as balanced NRE (shipped, balance 100) or plain NRE, "
        "validation maps",
        [
            (
                "joint coverage at 68.3%",
                "variants.bnre_100.coverage.joint.0.683",
                "variants.nre.coverage.joint.0.683",
                ".3f",
                "0.683 within binomial error",
            ),
            (
                "joint coverage at 95.4%",
                "variants.bnre_100.coverage.joint.0.954",
                "variants.nre.coverage.joint.0.954",
                ".3f",
                "0.954 within binomial error",
            ),
            (
                "coverage of N at 68.3%",
                "variants.bnre_100.coverage.N.0.683",
                "variants.nre.coverage.N.0.683",
                ".3f",
                "0.683 within binomial error",
            ),
            (
                "coverage of sigma at 68.3%",
                "variants.bnre_100.coverage.sigma.0.683",
                "variants.nre.coverage.sigma.0.683",
                ".3f",
                "0.683 within binomial error",
            ),
            (
                "coverage of h at 68.3%",
                "variants.bnre_100.coverage.h.0.683",
                "variants.nre.coverage.h.0.683",
                ".3f",
                "0.683 within binomial error",
            ),
            (
                "largest coverage deviation (binomial standard errors)",
                "variants.bnre_100.max_abs_deviation_in_standard_errors",
                "variants.nre.max_abs_deviation_in_standard_errors",
                ".2f",
                "",
            ),
            (
                "held-out NRE loss",
                "variants.bnre_100.held_out_loss",
                "variants.nre.held_out_loss",
                ".4f",
                "lower is sharper",
            ),
            (
                "mean 68% width of sigma",
                "variants.bnre_100.widths_68.sigma",
                "variants.nre.widths_68.sigma",
                ".3f",
                "",
            ),
            ("coverage maps", "n_coverage_maps", None, "d", ""),
        ],
    ),
    "population_targets": (
        "the whole chain over several targets drawn from the prior (r3 retrained on each)",
        [
            ("targets", "n_targets", None, "d", ""),
            (
                "truth inside the 68.3% intervals (N, sigma, h pooled)",
                "summary.truth_inside.combined.all_parameters.0.683.fraction",
                "summary.truth_inside.plain_nre.all_parameters.0.683.fraction",
                ".2f",
                "0.683 within binomial error",
            ),
            (
                "truth inside the 95.4% intervals (N, sigma, h pooled)",
                "summary.truth_inside.combined.all_parameters.0.954.fraction",
                "summary.truth_inside.plain_nre.all_parameters.0.954.fraction",
                ".2f",
                "0.954 within binomial error",
            ),
            (
                "truth inside the joint 95.4% region",
                "summary.truth_inside.combined.joint.0.954.fraction",
                "summary.truth_inside.plain_nre.joint.0.954.fraction",
                ".2f",
                "",
            ),
            (
                "combined narrower than r3: N",
                "summary.combined_narrower.r3.N.fraction",
                None,
                ".2f",
                "",
            ),
            (
                "combined narrower than r3: sigma",
                "summary.combined_narrower.r3.sigma.fraction",
                None,
                ".2f",
                "",
            ),
            (
                "combined narrower than r3: h",
                "summary.combined_narrower.r3.h.fraction",
                None,
                ".2f",
                "",
            ),
            (
                "combined joint 68% region smaller than the plain NRE's",
                "summary.combined_narrower.plain_nre.joint_volume_68.fraction",
                None,
                ".2f",
                "",
            ),
            (
                "mean 68% width of h",
                "summary.mean_width_68.combined.h",
                "summary.mean_width_68.plain_nre.h",
                ".2f",
                "",
            ),
        ],
    ),
    "population_sbi": (
        "r4 (detected-source lists) against sbi's NRE_A on the same simulations",
        [
            (
                "mean log ratio at the truth, held-out lists",
                "probcat.mean_log_ratio_at_truth",
                "sbi_nre_a.mean_log_ratio_at_truth",
                ".2f",
                "higher is sharper",
            ),
            (
                "joint coverage at 68.3%",
                "probcat.coverage.joint.0.683",
                "sbi_nre_a.coverage.joint.0.683",
                ".3f",
                "0.683 within binomial error",
            ),
            (
                "joint coverage at 95.4%",
                "probcat.coverage.joint.0.954",
                "sbi_nre_a.coverage.joint.0.954",
                ".3f",
                "0.954 within binomial error",
            ),
            (
                "target: 68% width of h",
                "probcat.target_widths_68.h",
                "sbi_nre_a.target_widths_68.h",
                ".2f",
                "",
            ),
            (
                "target: mean of N, difference in 68% widths",
                "target_mean_difference_in_68_widths.N",
                None,
                ".2f",
                "",
            ),
            ("training time (s)", "probcat.training_s", "sbi_nre_a.training_s", ".0f", ""),
        ],
    ),
    "population_predictive": (
        "posterior predictive check on the target and on maps the model cannot make",
        [
            (
                "target (made by the model): smallest p-value of the five summaries",
                "cases.target.min_p_value",
                None,
                ".3f",
                "not near 0",
            ),
            (
                "longitudes spread 10° (the model: 20°): p-value of l_rms",
                "cases.narrow_longitude.posterior_predictive.l_rms.p_value",
                None,
                ".3f",
                "near 0",
            ),
            (
                "longitudes spread 10°: l_rms (degrees)",
                "cases.narrow_longitude.posterior_predictive.l_rms.observed",
                "cases.narrow_longitude.posterior_predictive.l_rms.predictive_median",
                ".2f",
                "",
            ),
            (
                "diffuse background of 0.03 a pixel (the model: none): smallest p-value",
                "cases.background.min_p_value",
                None,
                ".3f",
                "near 0",
            ),
            (
                "diffuse background: p-value of l_rms",
                "cases.background.posterior_predictive.l_rms.p_value",
                "cases.background.posterior_predictive.b_rms.p_value",
                ".3f",
                "near 0",
                "b_rms",
            ),
            (
                "power-law fluxes (the model: log-normal): smallest p-value",
                "cases.power_law_flux.min_p_value",
                None,
                ".3f",
                "",
            ),
            (
                "prior check before training, smallest p-value: target",
                "cases.target.prior_check_min_p_value",
                "cases.narrow_longitude.prior_check_min_p_value",
                ".3f",
                "",
                "narrow longitudes",
            ),
            (
                "prior check before training, smallest p-value: background",
                "cases.background.prior_check_min_p_value",
                "cases.power_law_flux.prior_check_min_p_value",
                ".3f",
                "",
                "power-law fluxes",
            ),
        ],
    ),
    "correlated_noise": (
        "correlated noise, as in a coadd of resampled visits (6 visits; a cubic spline, which "
        "the coadd weights never saw, and the pipelines' Lanczos-3), against white noise of "
        "the same pixel sigma, same signal; the default weights and detection_lsst_i_coadd",
        _noise_rows(),
    ),
    "depth": (
        "the shipped weights at LSST depths other than their training's (detection 10 "
        "years, photo-z 5 and 10): LSST-i detection against SEP, and the photo-z PDFs of "
        "gold galaxies at their true positions, each field read at its own noise from the "
        "FITS file probcat writes",
        _depth_rows(),
    ),
    "density": (
        "LSST-i detection on fields of other source densities than the prior's (500-px "
        "fields of the weights' population's test galaxies at 0 to 2 times its galaxy and "
        "star densities), the product's MAP catalogue (read under the density each field "
        "shows) against SEP on the same fields",
        _density_rows(),
    ),
    "density_ugrizy": (
        "the same for the six-band weights (detection_lsst_ugrizy) on ugrizy fields of "
        "their population (DC2 colours), SEP on the riz coadd",
        _density_rows(),
    ),
    "density_seeing1.25": (
        "density.py's LSST-i fields under a PSF 1.25 times the survey's FWHM, read at the "
        "measured seeing, with the density calibration fitted under that seeing",
        _density_rows(),
    ),
    "density_noise3.1623": (
        "density.py's LSST-i fields with the noise of 1 year of LSST (3.16 times the "
        "10-year noise), read with the survey's zeropoints, with the density calibration "
        "fitted at that depth",
        _density_rows(),
    ),
    "density_ugrizy_seeing1.25": (
        "density_ugrizy's fields under a PSF 1.25 times the survey's FWHM, read at the "
        "measured seeing, with the six-band weights' density calibration of that seeing",
        _density_rows(),
    ),
    "density_sky50": (
        "density.py's LSST-i fields with a flat sky of 50 noise sigma left in, subtracted by "
        "probcat's background estimate (the faint galaxies' lift taken off at the density "
        "each field's bright detections show) and by SEP's",
        _density_sky_rows(),
    ),
    "density_noise3.1623_sky50": (
        "density_sky50's fields with the noise of 1 year of LSST (3.16 times the 10-year "
        "noise), read with the survey's zeropoints: the faint galaxies' lift taken off at "
        "each field's density and at that depth",
        _density_sky_rows("sky at the prior's density and the survey's depth"),
    ),
    "density_between": (
        "density.py's LSST-i fields at densities between those the density calibration was "
        "fitted at, which it reads by interpolation",
        _density_rows(BETWEEN),
    ),
    "density_sky50_between": (
        "density_sky50's fields (a flat sky of 50 noise sigma left in) at densities between "
        "the calibrated ones",
        _density_sky_rows(factors=BETWEEN),
    ),
    "density_coadd_lanczos3": (
        "the coadd weights (detection_lsst_i_coadd) on density.py's LSST-i fields with the "
        "correlated noise of a coadd of 1-16 visits resampled by Lanczos-3 (the same pixel "
        "sigma), with their density calibration fitted on such noise",
        _density_rows(),
    ),
    "psf_profile": (
        "LSST-i detection when the PSF's atmosphere is a Moffat profile (index beta, the "
        "survey's FWHM) instead of the Kolmogorov one the weights learned, and on pixels of "
        "another size than LSST's 0.2\": 98-px scenes of the five morphology families' test "
        "galaxies, read at the measured seeing, SEP on the same scenes; and under each "
        "profile, deblending at true centroids (deblend.py's blend scenes) and photo-z "
        "(photoz_colours.py's DC2 fields), against the Kolmogorov PSF",
        _psf_profile_rows(),
    ),
    "photoz_colours": (
        "photoz_lsst_ugrizy on galaxy colours unlike those it learned: the same test-split "
        "DC2 galaxies (redshifts, i magnitudes, shapes, scene layouts) with their DC2 colours "
        "and with the colours of the four CWW templates at their redshifts (population cww); "
        "gold galaxies at their true positions, 10-year ugrizy fields; and the six-band and "
        "i-band detectors on the same fields",
        [
            (
                f"{head}: {label}",
                f"results.photoz_lsst_ugrizy.{arm}.{key}",
                f"results.photoz_lsst_ugrizy.dc2.{key}",
                fmt,
                "",
            )
            for head, arm, keys in (
                (
                    "CWW colours",
                    "cww",
                    (
                        "sigma_iqr",
                        "outlier_frac_015",
                        "ks",
                        "cde_loss",
                        "pit_coverage_68",
                        "pit_coverage_95",
                    ),
                ),
                (
                    "CWW colours, widths refit on other fields' true z",
                    "cww_refit",
                    ("ks", "pit_coverage_68", "pit_coverage_95"),
                ),
            )
            for label, key, fmt in _PHOTOZ_COLOUR_METRICS
            if key in keys
        ]
        + [
            (
                f"CWW colours: {det}, {label}",
                f"detection.{det}.cww.{key}",
                f"detection.{det}.dc2.{key}",
                ".3f",
                "",
            )
            for det in ("detection_lsst_ugrizy", "detection_lsst_i")
            for label, key in (
                ("precision", "precision"),
                ("recall (i-band SNR > 3)", "recall"),
                ("matched galaxies classified galaxy", "galaxies_as_galaxies"),
                ("matched stars classified star", "stars_as_stars"),
            )
        ],  # fmt: skip
    ),
    "photoz_masks": (
        "photo-z where bands have no data (NaN): 16 held-out 400-px 10-year ugrizy fields "
        "(test-split DC2 galaxies), gold galaxies at their true positions within 7 px of a "
        "masked pixel; probcat as it reads them (photoz_lsst_ugrizy_masked) against "
        "photoz_lsst_ugrizy reading masked pixels as no light",
        [
            (
                f"{head}: {label}",
                f"results.{arm}.default.affected.{key}",
                f"results.{arm}.shipped_only.affected.{key}",
                fmt,
                "",
            )
            for arm, head in (
                ("half_u", "u band missing over half the field"),
                ("half_i", "i band missing over half the field"),
                ("defects", "defects in every band"),
            )
            for label, key, fmt in _PHOTOZ_COLOUR_METRICS
            if key in ("sigma_iqr", "outlier_frac_015", "ks", "pit_coverage_68")
        ]
        + [
            (
                f"no {band} band in the image: {label}",
                f"results.no_{band}.default.all.{key}",
                f"results.clean.default.all.{key}",
                fmt,
                "",
                "every band",
            )
            for band in "ui"
            for label, key, fmt in _PHOTOZ_COLOUR_METRICS
            if key in ("sigma_iqr", "outlier_frac_015", "pit_coverage_68")
        ],
    ),
    "detection_masks": (
        "six-band detection where bands have no data (NaN): 16 held-out 400-px 10-year ugrizy "
        "fields (test-split DC2 galaxies and stars), sources within 7 px of a pixel masked in "
        "some band but not all; probcat as it reads such an image "
        "(detection_lsst_ugrizy_masked) against detection_lsst_ugrizy reading masked pixels "
        "as no light",
        [
            (
                f"{head}: {label}",
                f"results.{arm}.default.zone.{key}",
                f"results.{arm}.shipped_only.zone.{key}",
                ".3f",
                "",
            )
            for arm, head in (
                ("half_g", "g band missing over half the field"),
                ("half_r", "r band missing over half the field"),
                ("half_i", "i band missing over half the field"),
                ("defects", "defects in every band"),
            )
            for label, key in (
                ("recall (true i-band SNR > 3)", "recall"),
                ("recall at SNR 3–10", "recall_snr_3_10"),
                ("precision", "precision"),
                ("star/galaxy right", "class_accuracy"),
                ("star F1 at SNR > 12", "star_f1_snr_gt_12"),
                ("detection ECE", "detection_ece"),
            )
        ]
        + [
            (
                f"nothing masked, the masked weights on every image: {label}",
                f"results.clean.masked_only.all.{key}",
                f"results.clean.shipped_only.all.{key}",
                ".3f",
                "",
                "detection_lsst_ugrizy",
            )
            for label, key in (
                ("recall (true i-band SNR > 3)", "recall"),
                ("precision", "precision"),
                ("star/galaxy right", "class_accuracy"),
            )
        ],
    ),
    "correlated_noise_ugrizy": (
        "the same for LSST ugrizy fields (DC2 colours; each band coadded from its own 6 "
        "visits): the six-band weights; SEP on the riz coadd; and photoz_lsst_ugrizy's PDFs "
        "of the gold galaxies at their true positions, read as probcat reads each image (at "
        "the aperture noise where the noise is correlated) and at the pixel sigma, against "
        "the same signal with white noise of the survey's sigma",
        _noise_rows(flux=False, coadd_weights=False) + _photoz_noise_rows(),
    ),
    "missing_data": (
        "pixels without data (a masked 10-px strip) and a noise that varies across an LSST "
        "image (left half 1.5× noisier, VARIANCE plane)",
        [
            (
                "false detections within 6 px of the masked strip, masked",
                "masked_strip.probcat_masked.false_near_strip",
                "masked_strip.sep_masked.false_near_strip",
                ".0f",
                "",
            ),
            (
                "same, no mask (the strip's pixels as data)",
                "masked_strip.probcat_no_mask.false_near_strip",
                "masked_strip.sep_no_mask.false_near_strip",
                ".0f",
                "",
            ),
            (
                "recall outside the strip (SNR > 3), masked",
                "masked_strip.probcat_masked.recall_outside",
                "masked_strip.sep_masked.recall_outside",
                ".3f",
                "",
            ),
            (
                "recall outside the strip, no mask",
                "masked_strip.probcat_no_mask.recall_outside",
                "masked_strip.sep_no_mask.recall_outside",
                ".3f",
                "",
            ),
            *[
                (
                    f"stars at {flux} σ_local, {how}: {what}, {half} half",
                    f"varying_noise.flux_{flux}.probcat_{key}.{half}.{field}",
                    f"varying_noise.flux_{flux}.sep_{key}.{half}.{field}",
                    spec,
                    "",
                )
                for flux in ("25", "40")
                for how, key in (("noise map", "noise_map"), ("one σ", "one_sigma"))
                for what, field, spec in (
                    ("recall", "recall", ".3f"),
                    ("false detections", "false_detections", ".0f"),
                )
                for half in ("noisy", "quiet")
            ],
        ],
    ),
    "scale": (
        "survey scale: large images, many images on Dask, kill tests, sky left in, fuzzing",
        [
            (
                "chunked = whole-image inference (2000×2000)",
                "chunked_equals_whole.equal",
                None,
                "",
                "yes",
            ),
            (
                "max abs tile-probability difference, chunked vs whole",
                "chunked_equals_whole.max_abs_prob_diff",
                None,
                ".1e",
                "",
            ),
            (
                "peak memory, 4000×4000 image (MB)",
                "peak_rss_mb_4k",
                "peak_rss_mb_1k",
                ".0f",
                "≤ 2048",
                "1000×1000",
            ),
            (
                "seconds per megapixel, 4000×4000",
                "seconds_per_megapixel_4k",
                "seconds_per_megapixel_1k",
                ".3f",
                "within 20% of 1000×1000",
                "1000×1000",
            ),
            (
                "images per hour, Dask with 2 workers",
                "images_per_hour_dask_2_workers",
                "images_per_hour_serial",
                ".0f",
                "≥ 1.7× serial",
                "serial",
            ),
            (
                "images per hour, Dask with 2 workers (vs serial on 1 torch thread)",
                "images_per_hour_dask_2_workers",
                "images_per_hour_serial_1_thread",
                ".0f",
                "",
                "serial, 1 thread",
            ),
            (
                "Dask's ceiling over serial here: cores / serial's thread speed-up",
                "dask_ceiling_vs_serial",
                None,
                ".2f",
                "",
            ),
            (
                "one image's own time on a Dask worker / alone on one thread (medians)",
                "dask_worker_image_s_over_serial_1_thread",
                None,
                ".2f",
                "",
            ),
            machine_speed_row("reference_speed_s", "start"),
            (
                "lost / duplicated rows after SIGKILL of the run",
                "resume.lost_rows",
                "resume.duplicated_rows",
                "d",
                "0 / 0",
                "duplicated",
            ),
            (
                "lost / duplicated rows after SIGKILL of a Dask worker",
                "worker_kill.lost_rows",
                "worker_kill.duplicated_rows",
                "d",
                "0 / 0",
                "duplicated",
            ),
            (
                "precision, sky left in, --background auto",
                "background.unsubtracted_auto.precision",
                "background.subtracted.precision",
                ".3f",
                "within 0.02",
                "sky subtracted",
            ),
            (
                "recall, sky left in, --background auto",
                "background.unsubtracted_auto.recall",
                "background.subtracted.recall",
                ".3f",
                "within 0.02",
                "sky subtracted",
            ),
            ("fuzz: malformed inputs", "fuzz.cases", None, "d", "≥ 1000"),
            ("fuzz: unhandled / hangs", "fuzz.unhandled", "fuzz.hangs", "d", "0 / 0", "hangs"),
            (
                "fuzz: partial outputs / silent garbage",
                "fuzz.partial_outputs",
                "fuzz.silent_garbage",
                "d",
                "0 / 0",
                "silent garbage",
            ),
        ],
    ),  # fmt: skip
    "deblend": (
        "deblending and flux posteriors (paper 000 §4.4–4.6) on held-out scenes",
        [
            (
                "central galaxy, top blendedness bin: median abs. frac. flux residual, samples",
                "flux_residual_top_bin.samples",
                "flux_residual_top_bin.sep",
                ".3f",
                "≤ 0.1× SEP",
            ),
            (
                "same, MAP detections",
                "flux_residual_top_bin.map",
                "flux_residual_top_bin.sep",
                ".3f",
                "samples ≤ 0.2× MAP",
            ),
            (
                "same, samples vs scarlet2",
                "flux_residual_top_bin.samples",
                "flux_residual_top_bin.scarlet2",
                ".3f",
                "samples ≤ scarlet2",
                "scarlet2",
            ),
            (
                "deblended flux bias, max over SNR > 10 bins",
                "deblended_flux_bias_max_abs_snr_gt_10",
                None,
                ".4f",
                "≤ 0.01",
            ),
            (
                "flux scatter, deblended / no deblending",
                "scatter_ratio_deblended_vs_none",
                None,
                ".3f",
                "≤ 0.5",
            ),
            ("size bias, max over SNR bins", "size_bias_max_abs", None, ".3f", ""),
            ("ellipticity bias, max over SNR bins", "e_bias_max_abs", None, ".3f", ""),
            (
                "flux posterior coverage 68%",
                "flux_posterior_coverage_68",
                None,
                ".3f",
                "0.683 ± 0.05",
            ),
            (
                "flux posterior coverage 95%",
                "flux_posterior_coverage_95",
                None,
                ".3f",
                "0.954 ± 0.05",
            ),
            (
                "blendedness > 0.376 (the paper's last bin, in no bin above), samples where "
                "matched",
                "paper_top_bin.median_abs_frac_residual_where_matched.samples",
                "paper_top_bin.median_abs_frac_residual_where_matched.map",
                ".3f",
                "",
                "MAP",
            ),
            (
                "same: images, and those where SEP finds the central galaxy",
                "paper_top_bin.n_images",
                "paper_top_bin.matched.sep",
                "d",
                "",
            ),
            (
                "all central galaxies, samples: refined models vs the paper's single pass",
                "refinement.samples.all",
                "refinement.samples_single_pass.all",
                ".4f",
                "",
                "single pass",
            ),
            (
                "flux-conserving: top bin, samples",
                "flux_conserving.flux_residual_top_bin.samples",
                "flux_conserving.flux_residual_top_bin.sep",
                ".3f",
                "",
            ),
            (
                "flux-conserving (the product's default): flux scatter, deblended / none",
                "flux_conserving.scatter_ratio_deblended_vs_none",
                "scatter_ratio_deblended_vs_none",
                ".3f",
                "",
                "subtract",
            ),
            (
                "morphology-family blends: 68% width of the flux residuals, flux-conserving",
                "morphology.deblender.conserve.flux_residual_width68",
                "morphology.deblender.flux_residual_width68",
                ".3f",
                "",
                "subtract",
            ),
            (
                "central galaxies of the five morphology families: flux posterior coverage 68% "
                "(flux-conserving)",
                "morphology_central.all.conserve.coverage_68",
                "flux_conserving.flux_posterior_coverage.68",
                ".3f",
                "",
                "bulge + disk",
            ),
            (
                "same, 95%",
                "morphology_central.all.conserve.coverage_95",
                "flux_conserving.flux_posterior_coverage.95",
                ".3f",
                "",
                "bulge + disk",
            ),
            (
                "same, irregular central galaxies: coverage 68%, 95%",
                "morphology_central.by_family.irregular.conserve.coverage_68",
                "morphology_central.by_family.irregular.conserve.coverage_95",
                ".3f",
                "",
                "95%",
            ),
            (
                "1000×1000 field: MAP detection + deblending + measurement (s)",
                "speed.deblend_1k_s",
                None,
                ".2f",
                "≤ 10",
            ),
            (
                "98×98 scene, detection + deblending (s)",
                "speed.probcat_per_scene_s",
                "speed.scarlet2_per_scene_s",
                ".3f",
                "< scarlet2",
                "scarlet2",
            ),
            machine_speed_row("speed.reference_speed_s", "time"),
        ],
    ),
    "blendedness": (
        "measured blendedness (Bosch et al. 2018) of held-out blend scenes' galaxies against "
        "the truth: probcat's column (its deblended models) and the same formula on SEP's "
        "detections drawn as Gaussian ellipses, on the galaxies both match within 2 px; for "
        "telling blended galaxies (true blendedness > 0.1) apart, also SEP's deblending flag",
        [
            ("galaxies matched within 2 px", "matched.probcat", "matched.sep", "d", ""),
            (
                "Spearman correlation with the true blendedness",
                "common.probcat.spearman",
                "common.sep.spearman",
                ".3f",
                "",
            ),
            (
                "median absolute error",
                "common.probcat.median_abs_error",
                "common.sep.median_abs_error",
                ".4f",
                "",
            ),
            (
                "share within 0.05 of the truth",
                "common.probcat.within_0_05",
                "common.sep.within_0_05",
                ".3f",
                "",
            ),
            (
                "blended (true > 0.1): precision of measured > 0.1",
                "common.probcat.blended_precision",
                "common.sep_flag.blended_precision",
                ".3f",
                "",
                "SEP's deblending flag",
            ),
            (
                "blended (true > 0.1): recall of measured > 0.1",
                "common.probcat.blended_recall",
                "common.sep_flag.blended_recall",
                ".3f",
                "",
                "SEP's deblending flag",
            ),
            (
                "each on the galaxies it matches: Spearman correlation",
                "own_matches.probcat.spearman",
                "own_matches.sep.spearman",
                ".3f",
                "",
            ),
            (
                "each on the galaxies it matches: median absolute error",
                "own_matches.probcat.median_abs_error",
                "own_matches.sep.median_abs_error",
                ".4f",
                "",
            ),
            (
                "five families' blends, each on the galaxies it matches: Spearman correlation",
                "morphology.own_matches.probcat.spearman",
                "morphology.own_matches.sep.spearman",
                ".3f",
                "",
            ),
            (
                "five families' blends, each on the galaxies it matches: median absolute error",
                "morphology.own_matches.probcat.median_abs_error",
                "morphology.own_matches.sep.median_abs_error",
                ".4f",
                "",
            ),
            (
                "five families' blends, both match: precision of measured > 0.1 for blended",
                "morphology.common.probcat.blended_precision",
                "morphology.common.sep_flag.blended_precision",
                ".3f",
                "",
                "SEP's deblending flag",
            ),
            (
                "five families' blends, both match: recall of measured > 0.1 for blended",
                "morphology.common.probcat.blended_recall",
                "morphology.common.sep_flag.blended_recall",
                ".3f",
                "",
                "SEP's deblending flag",
            ),
        ],
    ),
    "deblend_wings": (
        "faint galaxies in big galaxies' outskirts: their wings fitted or not, on held-out "
        "1000×1000 fields",
        [
            (
                f"{pop}: galaxies with others' wings ≥ 1σ in the aperture, median frac. flux "
                "residual",
                f"populations.{pop}.on.wing_ge_1.median",
                f"populations.{pop}.off.wing_ge_1.median",
                "+.3f",
                "",
            )
            for pop in ("parametric", "morphology")
        ]
        + [
            (
                f"{pop}: same, median abs. frac. flux residual",
                f"populations.{pop}.on.wing_ge_1.median_abs",
                f"populations.{pop}.off.wing_ge_1.median_abs",
                ".3f",
                "",
            )
            for pop in ("parametric", "morphology")
        ]
        + [
            (
                f"{pop}: all galaxies, median frac. flux residual",
                f"populations.{pop}.on.all.median",
                f"populations.{pop}.off.all.median",
                "+.4f",
                "",
            )
            for pop in ("parametric", "morphology")
        ]
        + [
            (
                "parametric: deblending a 1000×1000 field, detection excluded (s)",
                "populations.parametric.on.deblend_s_median",
                "populations.parametric.off.deblend_s_median",
                ".2f",
                "",
            ),
            (
                "bright stars (i 15–18) added: galaxies with their wings ≥ 1σ in the aperture, "
                "median frac. flux residual",
                "populations.bright_stars.on.wing_ge_1.median",
                "populations.bright_stars.off.wing_ge_1.median",
                "+.3f",
                "",
            ),
            (
                "bright stars: same, median abs. frac. flux residual",
                "populations.bright_stars.on.wing_ge_1.median_abs",
                "populations.bright_stars.off.wing_ge_1.median_abs",
                ".3f",
                "",
            ),
            (
                "bright stars: galaxies matched, and those with the stars' wings ≥ 1σ",
                "populations.bright_stars.on.all.n",
                "populations.bright_stars.on.wing_ge_1.n",
                "d",
                "",
            ),
        ],
    ),
    "photoz": (
        "image photo-z PDFs (paper 002) on held-out ugrizy scenes, same objects as the "
        "catalog codes",
        [
            ("σ_IQR (PDF mode)", "probcat.sigma_iqr", "flexzboost.sigma_iqr", ".4f", "≤ 0.85× FZB"),
            (
                "outlier fraction",
                "probcat.outlier_frac",
                "flexzboost.outlier_frac",
                ".3f",
                "≤ FZB",
            ),
            ("bias (median e_z)", "probcat.bias", "flexzboost.bias", "+.4f", ""),
            ("PIT KS", "probcat.ks", "flexzboost.ks", ".3f", "≤ FZB"),
            ("PIT CvM", "probcat.cvm", "flexzboost.cvm", ".2f", ""),
            ("PIT AD", "probcat.ad", "flexzboost.ad", ".1f", ""),
            ("CDE loss", "probcat.cde_loss", "flexzboost.cde_loss", ".2f", ""),
            ("σ_IQR vs BPZ", "probcat.sigma_iqr", "bpz.sigma_iqr", ".4f", "< BPZ", "BPZ"),
            (
                "outlier fraction vs BPZ",
                "probcat.outlier_frac",
                "bpz.outlier_frac",
                ".3f",
                "< BPZ",
                "BPZ",
            ),
            (
                "outlier fraction at e_z beyond ±0.15 (one cut for every code) vs BPZ",
                "probcat.outlier_frac_015",
                "bpz.outlier_frac_015",
                ".3f",
                "",
                "BPZ",
            ),
            ("PIT KS vs BPZ", "probcat.ks", "bpz.ks", ".3f", "< BPZ", "BPZ"),
            ("bias vs BPZ", "probcat.bias", "bpz.bias", "+.4f", "nearer 0 than BPZ", "BPZ"),
            ("PIT CvM vs BPZ", "probcat.cvm", "bpz.cvm", ".2f", "< BPZ", "BPZ"),
            ("PIT AD vs BPZ", "probcat.ad", "bpz.ad", ".1f", "< BPZ", "BPZ"),
            ("CDE loss vs BPZ", "probcat.cde_loss", "bpz.cde_loss", ".2f", "< BPZ", "BPZ"),
            ("68% interval coverage", "pit_coverage_68", None, ".3f", "0.683 ± 0.03"),
            ("95% interval coverage", "pit_coverage_95", None, ".3f", "0.954 ± 0.03"),
            (
                "secondary-peak recovery of outliers (each code's own outlier cut)",
                "probcat.secondary_peak_recovery",
                "flexzboost.secondary_peak_recovery",
                ".3f",
                "",
            ),
            (
                "secondary-peak recovery, own cut, vs BPZ",
                "probcat.secondary_peak_recovery",
                "bpz.secondary_peak_recovery",
                ".3f",
                "",
                "BPZ",
            ),
            (
                "secondary-peak recovery of outliers beyond ±0.15 (one cut for every code)",
                "probcat.secondary_peak_recovery_015",
                "flexzboost.secondary_peak_recovery_015",
                ".3f",
                "",
            ),
            (
                "secondary-peak recovery beyond ±0.15 vs BPZ",
                "probcat.secondary_peak_recovery_015",
                "bpz.secondary_peak_recovery_015",
                ".3f",
                "",
                "BPZ",
            ),
            (
                "galaxies with the morphology families' shapes (same DC2 galaxies and scenes, "
                "every code trained on bulge + disk): σ_IQR",
                "morphology.probcat.sigma_iqr",
                "morphology.flexzboost.sigma_iqr",
                ".4f",
                "",
            ),
            (
                "morphology families: outlier fraction",
                "morphology.probcat.outlier_frac",
                "morphology.flexzboost.outlier_frac",
                ".3f",
                "",
            ),
            (
                "morphology families: PIT KS",
                "morphology.probcat.ks",
                "morphology.flexzboost.ks",
                ".3f",
                "",
            ),
            (
                "morphology families: 68% interval coverage",
                "morphology.probcat.pit_coverage_68",
                None,
                ".3f",
                "",
            ),
            (
                "morphology families: 95% interval coverage",
                "morphology.probcat.pit_coverage_95",
                None,
                ".3f",
                "",
            ),
            (
                "morphology families: σ_IQR over the bulge + disk scenes' σ_IQR",
                "morphology.sigma_iqr_over_bulge_disk.probcat",
                "morphology.sigma_iqr_over_bulge_disk.flexzboost",
                ".2f",
                "",
            ),
            (
                "six-band detector: precision vs i-band detector (same scenes)",
                "detection_ugrizy.ugrizy.precision",
                "detection_ugrizy.i.precision",
                ".3f",
                "",
                "i band",
            ),
            (
                "six-band detector: recall at SNR 3-10 vs i-band detector",
                "detection_ugrizy.ugrizy.recall_snr_3_10",
                "detection_ugrizy.i.recall_snr_3_10",
                ".3f",
                "≥ i band",
                "i band",
            ),
            (
                "six-band detector: recall at SNR 3-10 vs SEP (riz coadd)",
                "detection_ugrizy.ugrizy.recall_snr_3_10",
                "detection_ugrizy.sep.recall_snr_3_10",
                ".3f",
                "",
                "SEP",
            ),
            (
                "six-band detector: star F1 at SNR > 12 vs i-band detector",
                "detection_ugrizy.ugrizy.star_f1_snr_gt_12",
                "detection_ugrizy.i.star_f1_snr_gt_12",
                ".3f",
                "",
                "i band",
            ),
            (
                "morphology families: six-band detector precision vs i-band detector",
                "morphology.detection.ugrizy.precision",
                "morphology.detection.i.precision",
                ".3f",
                "",
                "i band",
            ),
            (
                "1000×1000 ugrizy field: detection + photo-z (s)",
                "speed.photoz_1k_s",
                None,
                ".2f",
                "≤ 3",
            ),
            (
                "`probcat photoz` on a 4000×4000 ugrizy FITS file (s)",
                "speed.big_field.seconds",
                None,
                ".1f",
                "",
            ),
            (
                "`probcat photoz` on a 4000×4000 ugrizy FITS file: peak RSS (MB)",
                "speed.big_field.peak_rss_mb",
                None,
                ".0f",
                "",
            ),
            machine_speed_row("speed.reference_speed_s", "time"),
            (
                "σ_IQR over FlexZBoost's (same objects)",
                "ratios.sigma_iqr_over_flexzboost.value",
                None,
                ".3f",
                "≤ 0.85",
            ),
            (
                "σ_IQR over FlexZBoost's: paired-bootstrap 95% interval",
                "ratios.sigma_iqr_over_flexzboost.interval_95",
                None,
                ".3f",
                "",
            ),
            (
                "PIT KS over FlexZBoost's: paired-bootstrap 95% interval",
                "ratios.ks_over_flexzboost.interval_95",
                None,
                ".3f",
                "value ≤ 1",
            ),
            (
                "outlier fraction over BPZ's: paired-bootstrap 95% interval",
                "ratios.outlier_frac_over_bpz.interval_95",
                None,
                ".3f",
                "< 1",
            ),
            (
                "σ_IQR of the deep ensemble vs one of its nets alone (member 0)",
                "probcat.sigma_iqr",
                "ensemble_size.first_m_members.1.sigma_iqr",
                ".4f",
                "",
                "one net",
            ),
            (
                "σ_IQR of the ensemble reading each stamp in two orientations vs in one",
                "probcat.sigma_iqr",
                "ensemble_size.first_s_orientations.1.sigma_iqr",
                ".4f",
                "",
                "one orientation",
            ),
        ],
    ),
    "bright": (
        "the brightest galaxies of 400×400 fields (test galaxies): found when a detection lies "
        "within max(2 px, half the half-light radius) of the centre; probcat as it is (bright "
        "objects rescued) and with `--no-rescue-bright` (the network's decisions alone), SEP "
        "on the same fields",
        [
            *[
                (
                    f"{label}, i {bins}: recall{'' if rescue else ', --no-rescue-bright'}",
                    f"populations.{pop}.bins.{key}.probcat{'_rescue' if rescue else ''}.recall",
                    f"populations.{pop}.bins.{key}.sep.recall",
                    ".3f",
                    "",
                )
                for pop, label in (
                    ("morphology", "five families"),
                    ("morphology:irregular", "irregular"),
                    ("hdf", "Hubble Deep Field"),
                )
                for key, bins in (("14-19", "< 19"), ("19-20", "19–20"), ("20-21", "20–21"))
                for rescue in (False, True)
            ],
            *[
                (
                    f"{label}, 98-px scenes: {what}",
                    f"populations.{pop}.scenes_98px.probcat_rescue.{what}",
                    f"populations.{pop}.scenes_98px.probcat.{what}",
                    ".4f",
                    "",
                    "--no-rescue-bright",
                )
                for pop, label in (
                    ("morphology", "five families"),
                    ("morphology:irregular", "irregular"),
                    ("hdf", "Hubble Deep Field"),
                )
                for what in ("precision", "recall", "f1")
            ],
        ],
    ),
    "robustness": (
        "detection on galaxy families left out of training (98×98 LSST-i scenes, test split)",
        [
            (
                "all families (shipped): F1",
                "in_distribution.probcat.f1",
                "in_distribution.sep.f1",
                ".3f",
                "",
            ),
            (
                "all families (shipped): precision at prob ≥ 0.9",
                "in_distribution.probcat.precision_at_0_9",
                None,
                ".3f",
                "",
            ),
            (
                "all families (shipped): detection ECE",
                "in_distribution.probcat.detection_ece",
                None,
                ".3f",
                "",
            ),
            (
                "all families (shipped): detection ECE, evidence of all the scenes pooled",
                "in_distribution.probcat.detection_ece_batch",
                None,
                ".3f",
                "",
            ),
            (
                "all families (shipped): detection ECE, over 8 px inside",
                "in_distribution.probcat.detection_ece_interior",
                None,
                ".3f",
                "",
            ),
            (
                "all families (shipped): detection ECE, survey-cutout layout",
                "in_distribution.margin_8.detection_ece",
                None,
                ".3f",
                "",
            ),
            (
                "all families (shipped): detection ECE, survey-cutout layout, evidence pooled",
                "in_distribution.margin_8.detection_ece_batch",
                None,
                ".3f",
                "",
            ),
            (
                "all families (shipped): centroid 68% intervals' coverage",
                "in_distribution.probcat.centroid_coverage_68",
                "in_distribution.probcat.centroid_coverage_68_prior",
                ".3f",
                "0.683",
                "training galaxies' calibration alone",
            ),
            (
                "all families (shipped): centroid 95% intervals' coverage",
                "in_distribution.probcat.centroid_coverage_95",
                "in_distribution.probcat.centroid_coverage_95_prior",
                ".3f",
                "0.954",
                "training galaxies' calibration alone",
            ),
            *(row for fam in LEFT_OUT_FAMILIES for row in _left_out_rows(fam)),
            *HUBBLE_ROWS,
            *(row for scale in SEEING_SCALES for row in _seeing_rows(scale)),
        ],
    ),
    "calibration_lofo": (
        "probability calibration designs on families left out of training (validation "
        "scenes), against the single map shipped up to v7.5 (`shapes` is v7.6's)",
        [
            row
            for design in ("shapes", "ood_only", "none", "with_hdf")
            for row in (
                (
                    f"{design}: ECE on the left-out family, mean of four",
                    f"summary.{design}.left_out.ece_mean",
                    "summary.shipped.left_out.ece_mean",
                    ".3f",
                    "",
                ),
                (
                    f"{design}: ECE on the left-out family, worst of four",
                    f"summary.{design}.left_out.ece_max",
                    "summary.shipped.left_out.ece_max",
                    ".3f",
                    "≤ 0.03",
                ),
                (
                    f"{design}: ECE on left-out-family cutouts, mean",
                    f"summary.{design}.left_out_cutouts.ece_mean",
                    "summary.shipped.left_out_cutouts.ece_mean",
                    ".3f",
                    "",
                ),
                (
                    f"{design}: ECE on the training families, mean",
                    f"summary.{design}.in_distribution_ece_mean",
                    "summary.shipped.in_distribution_ece_mean",
                    ".3f",
                    "",
                ),
            )
        ],
    ),
    "seeing_calibration": (
        "detection probabilities under other seeing: the calibration fitted nearest the "
        "measured seeing (the detector's default) against the one fitted at the survey's "
        "seeing, same test scenes",
        _seeing_calibration_rows(),
    ),
    "seeing_calibration_ugrizy": (
        "the same for the six-band (ugrizy) detection weights, on scenes of DC2 galaxies",
        _seeing_calibration_rows(),
    ),
    "simulate": (
        "the simulator: composed scenes against direct GalSim rendering",
        [
            (
                "composed 98×98 scenes per second (one core)",
                "composed_scenes_per_s",
                "direct_scenes_per_s",
                ".0f",
                "≥ 1000",
            ),
            ("max |composed − direct| / σ", "max_abs_diff_over_sigma", None, ".4f", "≤ 0.1"),
            (
                "galaxies per arcmin² at i < 27",
                "density_i_lt_27_per_arcmin2",
                None,
                ".1f",
                "160 ± 10%",
            ),
            (
                "galaxies per arcmin² at i < 25.3",
                "density_i_lt_25_3_per_arcmin2",
                None,
                ".1f",
                "55 ± 10%",
            ),
        ],
    ),
    "gpu": (
        "the same images and training steps on a GPU (probcat's column) and on the CPU "
        "(one NVIDIA H200 and its machine's 16 cores; not this 2-core machine)",
        [
            (
                "1000×1000 MAP catalog (s)",
                "inference.seconds.gpu.detect_1k",
                "inference.seconds.cpu.detect_1k",
                ".3f",
                "",
            ),
            (
                "4000×4000 MAP catalog (s)",
                "inference.seconds.gpu.detect_4k",
                "inference.seconds.cpu.detect_4k",
                ".2f",
                "",
            ),
            (
                "16 posterior samples of 1000×1000 (s)",
                "inference.seconds.gpu.samples_16_1k",
                "inference.seconds.cpu.samples_16_1k",
                ".2f",
                "",
            ),
            (
                "detection + photo-z PDFs, 1000×1000 ugrizy (s)",
                "inference.seconds.gpu.photoz_1k",
                "inference.seconds.cpu.photoz_1k",
                ".2f",
                "",
            ),
            (
                "deblending + measurement, 1000×1000 (s)",
                "inference.seconds.gpu.deblend_measure_1k",
                "inference.seconds.cpu.deblend_measure_1k",
                ".2f",
                "",
            ),
            (
                "detection training step, 32 scenes (s)",
                "training.detection.step_gpu_s",
                "training.detection.step_cpu_s",
                ".3f",
                "",
            ),
            (
                "photo-z training step, 256 stamps (s)",
                "training.photoz.step_gpu_s",
                "training.photoz.step_cpu_s",
                ".3f",
                "",
            ),
            (
                "making one detection batch on the CPU (s)",
                "training.detection.batch_s",
                None,
                ".3f",
                "",
            ),
            (
                "1000×1000: largest detection-probability difference, GPU vs CPU",
                "inference.agreement.detect_1k.prob_max_abs",
                None,
                ".2g",
                "",
            ),
            (
                "4000×4000: largest detection-probability difference, GPU vs CPU",
                "inference.agreement.detect_4k.prob_max_abs",
                None,
                ".2g",
                "",
            ),
            (
                "4000×4000: share of detections the two devices share",
                "inference.agreement.detect_4k.matched_fraction",
                None,
                ".5f",
                "",
            ),
            (
                "photo-z: largest difference of the PDFs' means, GPU vs CPU",
                "inference.agreement.photoz_1k.z_mean_max_abs",
                None,
                ".2g",
                "",
            ),
            (
                "16 seeded posterior samples: share with the same sources on both devices",
                "inference.agreement.samples_16_1k.identical_fraction",
                None,
                ".2f",
                "",
            ),
            (
                "deblending: largest relative flux difference, GPU vs CPU",
                "inference.agreement.deblend_measure_1k.flux_ap_max_rel",
                None,
                ".2g",
                "",
            ),
            (
                "with TF32 convolutions (torch's default): 1000×1000 MAP catalog (s)",
                "inference.seconds_tf32.detect_1k",
                None,
                ".3f",
                "",
            ),
            (
                "with TF32 convolutions: 4000×4000 largest probability difference, GPU vs CPU",
                "inference.agreement.detect_4k_tf32.prob_max_abs",
                None,
                ".2g",
                "",
            ),
        ],
    ),  # fmt: skip
}
BASELINES = {
    "gpu": "CPU",
    "population_predictive": "maps at the posterior (median)",
    "detection": "SEP",
    "platform": "SEP",
    "population": "plain NRE",
    "population_sbi": "sbi NRE_A",
    "population_heads": "plain NRE head",
    "population_targets": "plain NRE",
    "scale": "reference",
    "missing_data": "SEP",
    "correlated_noise": "SEP",
    "correlated_noise_ugrizy": "SEP (riz)",
    "depth": "SEP",
    "density": "SEP",
    "density_ugrizy": "SEP (riz)",
    "density_seeing1.25": "SEP",
    "density_noise3.1623": "SEP",
    "density_ugrizy_seeing1.25": "SEP (riz)",
    "density_coadd_lanczos3": "SEP",
    "density_sky50": "sky at the prior's density",
    "density_noise3.1623_sky50": "sky at the prior's density and the survey's depth",
    "density_between": "SEP",
    "density_sky50_between": "sky at the prior's density",
    "photoz_colours": "DC2 colours",
    "photoz_masks": "masked pixels as no light",
    "detection_masks": "masked pixels as no light",
    "psf_profile": "SEP",
    "deblend": "SEP",
    "deblend_wings": "no wings",
    "blendedness": "SEP",
    "photoz": "FlexZBoost",
    "simulate": "direct GalSim",
    "robustness": "SEP",
    "bright": "SEP",
    "calibration_lofo": "single map (v7.5)",
    "seeing_calibration": "survey-seeing calibration",
    "seeing_calibration_ugrizy": "survey-seeing calibration",
}
# the README's headline rows of each table, by label (a new row elsewhere cannot shift them)
README_ROWS = {
    "detection": ["F1 (SNR 3–1000)", "recall at SNR 3–10", "detection ECE"],
    "platform": ["1000×1000 MAP catalog, one core busy, default threads (s)"],
    "population": ["68% width of N, combined", "coverage of N at 68.3%, combined"],
    "deblend": [
        "central galaxy, top blendedness bin: median abs. frac. flux residual, samples",
        "same, samples vs scarlet2",
        "flux posterior coverage 68%",
        "1000×1000 field: MAP detection + deblending + measurement (s)",
    ],
    "photoz": ["σ_IQR (PDF mode)", "outlier fraction", "PIT KS", "68% interval coverage"],
    "photoz_colours": ["CWW colours: sigma_IQR (PDF mode)", "CWW colours: 68% interval coverage"],
    "robustness": ["irregular left out: F1", "irregular left out: precision at prob ≥ 0.9"],
}


def _readme_pick(name: str) -> list[int]:
    """Indices of the README's rows of table ``name`` (an unknown label is an error)."""
    labels = [r[0] for r in TABLES[name][1]]
    missing = [x for x in README_ROWS[name] if x not in labels]
    if missing:
        raise SystemExit(f"README_ROWS[{name!r}]: no row labelled {missing}")
    return [labels.index(x) for x in README_ROWS[name]]


def _rows(name: str, data: dict, pick=None) -> list[str]:
    _, rows = TABLES[name]
    base = BASELINES[name]
    out = [f"| | probcat | {base} | target |", "| --- | --- | --- | --- |"]
    for i, (label, path, other, spec, target, *named) in enumerate(rows):
        if pick is not None and i not in pick:
            continue
        b = _fmt(_get(data, other), spec) if other else ""
        if b and named and pick is None:  # the docs' table names a row's other baseline
            b = f"{b} ({named[0]})"
        out.append(f"| {label} | {_fmt(_get(data, path), spec)} | {b} | {target} |")
    return out


def _base_names(name: str, pick) -> list[str]:
    """The baseline's name of each picked row."""
    rows = TABLES[name][1]
    return [(r[5] if len(r) > 5 else BASELINES[name]) for i, r in enumerate(rows) if i in pick]


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def doc_text() -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/report.py` from `benchmarks/results/*.json`; do not edit.",
        "Each benchmark writes its JSON (with the exact command and git commit) and PNG",
        "figures under `benchmarks/results/`. Numbers were measured on a 2-core CPU without",
        "a GPU (the gpu section: on a GPU machine); probcat and its baseline ran on the same",
        "images, in the same run.",
    ]
    for name, (title, _) in TABLES.items():
        data = _load(name)
        lines += ["", f"## {name}: {title}", ""]
        if data is None:
            lines.append(f"Not run yet: `.venv/bin/python benchmarks/{name}.py`.")
            continue
        lines += [f"`{data.get('command')}` at commit `{data.get('git_commit')}`.", ""]
        lines += _rows(name, data)
        longer = [o for o in TABLES if o != name and o.startswith(name)]  # population_sbi
        figures = sorted(
            p.name
            for p in RESULTS.glob(f"{name}*.png")
            if not any(p.name.startswith(o) for o in longer)
        )
        if figures:
            lines += ["", "Figures: " + ", ".join(f"`results/{f}`" for f in figures) + "."]
    return "\n".join(lines) + "\n"


def readme_block() -> str:
    """One table of headline rows from every benchmark that has run."""
    lines = [START, "", "| benchmark: measure | probcat | baseline | target |"]
    lines.append("| --- | --- | --- | --- |")
    for name in README_ROWS:
        pick = _readme_pick(name)
        data = _load(name)
        if data is None:
            continue
        for row, base_name in zip(_rows(name, data, pick)[2:], _base_names(name, pick)):
            cells = row.split(" | ")
            base = cells[2] if cells[2].strip() else ""
            if base:
                base = f"{base} ({base_name})"
            lines.append(f"| {name}: {cells[0][2:]} | {cells[1]} | {base} | {cells[3]}")
    lines += ["", END]
    return "\n".join(lines)


def readme_text() -> str:
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{README}: no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + readme_block() + tail


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the files are out of date")
    args = ap.parse_args(argv)
    wanted = {DOC: doc_text(), README: readme_text()}
    stale = [p for p, t in wanted.items() if not p.exists() or p.read_text() != t]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is out of date: run benchmarks/report.py")
        return 1 if stale else 0
    for p in stale:
        p.write_text(wanted[p])
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
