"""Photo-z metrics of paper 002 section 4 (eqs. 3-10), for any code's PDFs.

Every code's PDFs are first put on the same grid (:func:`probcat.redshift.pdf.grid_pdf`,
0-3 in 301 points) so that the metrics treat probcat, FlexZBoost and BPZ identically.

* point estimate: the PDF mode on the grid; ``e_z = (z_phot - z_true) / (1 + z_true)``
  (eq. 3); bias = median e_z; sigma_IQR = IQR(e_z) / 1.349 (eq. 4); outlier fraction:
  |e_z| > max(3 sigma_IQR, 0.06) (eq. 5, Schmidt & Malz et al. 2020);
* PIT = CDF(z_true) (eq. 6) and the KS, CvM and AD statistics of the PIT values against
  U(0, 1) (eqs. 8-10) — computed with qp's ``PIT`` class;
* CDE loss (eq. 7) — qp's ``CDELossMetric`` on the same grid;
* ``outlier_frac_015``: the fraction with |e_z| > 0.15, a cut shared by every code (the
  paper's cut scales with each code's own sigma_IQR, so a code with a wide core gets a
  loose cut);
* coverage: the fraction of true redshifts inside the central 68% / 95% intervals
  (|PIT - 0.5| <= 0.34 / 0.475);
* secondary-peak recovery (Fig. 7): the fraction of outliers that are no longer
  outliers when the second-highest local maximum of the PDF replaces the mode.
"""

from __future__ import annotations

import warnings

import numpy as np

from probcat.errors import ProbcatValueError
from probcat.redshift.pdf import GRID, interp_ensemble

__all__ = [
    "ez",
    "point_metrics",
    "pit_values",
    "pit_statistics",
    "cde_loss",
    "coverage",
    "secondary_peaks",
    "secondary_peak_recovery",
    "all_metrics",
    "paired_ratio",
    "paired_ks_ratio",
    "binned",
]


def ez(z_phot, z_true) -> np.ndarray:
    z_true = np.asarray(z_true, np.float64)
    return (np.asarray(z_phot, np.float64) - z_true) / (1.0 + z_true)


def point_metrics(z_phot, z_true) -> dict:
    """bias, sigma_IQR and outlier fraction (eqs. 3-5)."""
    e = ez(z_phot, z_true)
    if len(e) == 0:
        return {"bias": float("nan"), "sigma_iqr": float("nan"), "outlier_frac": float("nan")}
    q25, q75 = np.percentile(e, [25, 75])
    sig = (q75 - q25) / 1.349
    return {
        "bias": float(np.median(e)),
        "sigma_iqr": float(sig),
        "outlier_frac": float(np.mean(np.abs(e) > max(3 * sig, 0.06))),
    }


def _cdf_at(pdf: np.ndarray, z_true, grid=GRID) -> np.ndarray:
    cum = np.concatenate(
        [np.zeros((len(pdf), 1)), np.cumsum(0.5 * (pdf[:, 1:] + pdf[:, :-1]) * np.diff(grid), 1)],
        axis=1,
    )
    return np.array([np.interp(z, grid, c) for z, c in zip(np.asarray(z_true), cum)])


def pit_values(pdf: np.ndarray, z_true, grid=GRID) -> np.ndarray:
    """PIT = CDF(z_true) of grid PDFs ``(n, g)`` (normalised on ``grid``)."""
    return np.clip(_cdf_at(np.asarray(pdf, np.float64), z_true, grid), 0.0, 1.0)


def pit_statistics(pdf: np.ndarray, z_true, grid=GRID) -> dict:
    """KS, CvM and AD of the PIT values against U(0, 1), from qp's PIT class."""
    from qp.metrics.pit import PIT

    pit = PIT(interp_ensemble(pdf, grid), np.asarray(z_true, np.float64))
    with warnings.catch_warnings():
        # qp's call into scipy.stats.anderson_ksamp: its deprecated ``midrank`` argument
        # and the floored p-value (only the statistic is used here) are not the caller's
        warnings.filterwarnings("ignore", message=r"Parameter `variant`", category=Warning)
        warnings.filterwarnings("ignore", message=r"p-value (floored|capped)", category=Warning)
        ad = pit.evaluate_PIT_anderson_ksamp()
    return {
        "ks": float(pit.evaluate_PIT_KS().statistic),
        "cvm": float(pit.evaluate_PIT_CvM().statistic),
        "ad": float(ad.statistic),
    }


def cde_loss(pdf: np.ndarray, z_true, grid=GRID) -> float:
    """Eq. 7, with qp's ``CDELossMetric`` on ``grid``."""
    from qp.metrics.concrete_metric_classes import CDELossMetric

    return float(
        CDELossMetric(eval_grid=np.asarray(grid)).evaluate(
            interp_ensemble(pdf, grid), np.asarray(z_true, np.float64)
        )
    )


def coverage(pit: np.ndarray, level: float) -> float:
    """Fraction of true values inside the central ``level`` interval."""
    pit = np.asarray(pit)
    return float(np.mean(np.abs(pit - 0.5) <= level / 2)) if len(pit) else float("nan")


def secondary_peaks(pdf: np.ndarray, grid=GRID) -> tuple[np.ndarray, np.ndarray]:
    """Location and weight (density ratio to the mode) of the second-highest local maximum
    of each grid PDF; NaN where there is none."""
    pdf = np.asarray(pdf)
    inner = (pdf[:, 1:-1] > pdf[:, :-2]) & (pdf[:, 1:-1] >= pdf[:, 2:])
    peaks = np.zeros_like(pdf, bool)
    peaks[:, 1:-1] = inner
    peaks[:, 0] = pdf[:, 0] > pdf[:, 1]
    peaks[:, -1] = pdf[:, -1] > pdf[:, -2]
    mode = np.argmax(pdf, axis=1)
    masked = np.where(peaks, pdf, -np.inf)
    masked[np.arange(len(pdf)), mode] = -np.inf
    second = np.argmax(masked, axis=1)
    has = np.isfinite(masked[np.arange(len(pdf)), second])
    loc = np.where(has, np.asarray(grid)[second], np.nan)
    top = pdf[np.arange(len(pdf)), mode]
    weight = np.where(has, pdf[np.arange(len(pdf)), second] / np.where(top > 0, top, 1), np.nan)
    return loc, weight


def secondary_peak_recovery(pdf: np.ndarray, z_true, grid=GRID, cut: float | None = None) -> float:
    """Fraction of mode outliers whose secondary peak is not an outlier (paper 002 Fig. 7).

    ``cut``: the outlier threshold on ``|e_z|``; by default the estimate's own
    ``max(3 sigma_IQR, 0.06)`` (eq. 5), which narrows with sigma_IQR, so that codes of
    different sigma_IQR are scored on different outliers; a fixed ``cut`` (e.g. 0.15)
    scores every code on the same footing."""
    z_true = np.asarray(z_true, np.float64)
    mode = np.asarray(grid)[np.argmax(pdf, axis=1)]
    if cut is None:
        cut = max(3 * point_metrics(mode, z_true)["sigma_iqr"], 0.06)
    out = np.abs(ez(mode, z_true)) > cut
    if not out.any():
        return float("nan")
    loc, _ = secondary_peaks(pdf[out], grid)
    ok = np.isfinite(loc) & (np.abs(ez(np.nan_to_num(loc, nan=-9.0), z_true[out])) <= cut)
    return float(np.mean(ok))


def all_metrics(pdf: np.ndarray, z_true, grid=GRID) -> dict:
    """Every metric of the benchmark for grid PDFs ``(n, g)``."""
    z_true = np.asarray(z_true, np.float64)
    mode = np.asarray(grid)[np.argmax(pdf, axis=1)]
    pit = pit_values(pdf, z_true, grid)
    out = {"n": int(len(z_true)), **point_metrics(mode, z_true)}
    out["outlier_frac_015"] = float(np.mean(np.abs(ez(mode, z_true)) > 0.15))
    out.update(pit_statistics(pdf, z_true, grid))
    out["cde_loss"] = cde_loss(pdf, z_true, grid)
    out["pit_coverage_68"] = coverage(pit, 0.6827)
    out["pit_coverage_95"] = coverage(pit, 0.9545)
    out["secondary_peak_recovery"] = secondary_peak_recovery(pdf, z_true, grid)
    out["secondary_peak_recovery_015"] = secondary_peak_recovery(pdf, z_true, grid, cut=0.15)
    return out


def paired_ratio(
    z_phot_a, z_phot_b, z_true, key: str = "sigma_iqr", *, boot: int = 1000, seed: int = 0
) -> dict:
    """``point_metrics(a)[key] / point_metrics(b)[key]`` for two codes' point estimates of
    the same objects, with a paired bootstrap (objects resampled together): its 68% and
    95% intervals and the fraction of resamples where the ratio exceeds 1."""
    z_a, z_b, z_true = (np.asarray(a, np.float64) for a in (z_phot_a, z_phot_b, z_true))
    if not len(z_a) == len(z_b) == len(z_true):
        raise ProbcatValueError("paired_ratio needs one estimate per object from each code")

    def ratio(i):
        return point_metrics(z_a[i], z_true[i])[key] / point_metrics(z_b[i], z_true[i])[key]

    return _paired_bootstrap(ratio, len(z_true), boot, seed)


def paired_ks_ratio(pit_a, pit_b, *, boot: int = 1000, seed: int = 0) -> dict:
    """The ratio of two codes' Kolmogorov-Smirnov distances of PIT values from U(0, 1)
    (the same objects), with a paired bootstrap as :func:`paired_ratio`'s."""
    from scipy.stats import kstest

    a, b = np.asarray(pit_a, np.float64), np.asarray(pit_b, np.float64)
    if len(a) != len(b) or len(a) == 0:
        raise ProbcatValueError("paired_ks_ratio needs one PIT value per object from each code")

    def ratio(i):
        return kstest(a[i], "uniform").statistic / kstest(b[i], "uniform").statistic

    return _paired_bootstrap(ratio, len(a), boot, seed)


def _paired_bootstrap(ratio, n: int, boot: int, seed: int) -> dict:
    """``ratio(all objects)`` and its bootstrap over objects (resampled with replacement)."""
    rng = np.random.default_rng(seed)
    value = ratio(slice(None))
    r = np.array([ratio(rng.integers(0, n, n)) for _ in range(boot)])
    return {
        "value": float(value),
        "interval_68": [float(v) for v in np.percentile(r, [15.865, 84.135])],
        "interval_95": [float(v) for v in np.percentile(r, [2.275, 97.725])],
        "fraction_above_1": float(np.mean(r > 1)),
        "boot": boot,
    }


def binned(z_phot, z_true, by, edges, *, boot: int = 200, seed: int = 0) -> dict:
    """Point metrics in bins of ``by`` with bootstrap standard errors (paper 002 Figs. 5, 9)."""
    rng = np.random.default_rng(seed)
    z_phot, z_true, by = (np.asarray(a, np.float64) for a in (z_phot, z_true, by))
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = np.flatnonzero((by >= lo) & (by < hi))
        row = {"lo": float(lo), "hi": float(hi), "n": int(len(sel))}
        if len(sel) >= 10:
            row.update(point_metrics(z_phot[sel], z_true[sel]))
            bs = [point_metrics(z_phot[b], z_true[b]) for b in rng.choice(sel, (boot, len(sel)))]
            for k in ("bias", "sigma_iqr", "outlier_frac"):
                row[f"{k}_err"] = float(np.std([b[k] for b in bs]))
        rows.append(row)
    return {"edges": [float(e) for e in edges], "bins": rows}
