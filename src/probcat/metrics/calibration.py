"""Calibration of probabilistic outputs: reliability / expected calibration error, and
coverage of Gaussian credible intervals."""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri  # scipy.stats.norm.ppf (importing scipy.stats costs 0.5 s)

__all__ = [
    "reliability",
    "expected_calibration_error",
    "interval_coverage",
    "interval_coverage_bounds",
]


def reliability(prob, outcome, n_bins: int = 10):
    """Per equal-width probability bin: ``(mean predicted prob, observed frequency, count)``."""
    prob, outcome = np.asarray(prob, float), np.asarray(outcome, float)
    idx = np.clip((prob * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf = np.bincount(idx, weights=prob, minlength=n_bins)
    acc = np.bincount(idx, weights=outcome, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return conf / count, acc / count, count


def expected_calibration_error(prob, outcome, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) |freq_b - conf_b| over equal-width probability bins."""
    conf, acc, count = reliability(prob, outcome, n_bins)
    ok = count > 0
    return float(np.sum(count[ok] / count.sum() * np.abs(acc[ok] - conf[ok])))


def interval_coverage(true, mean, sd, level: float) -> float:
    """Fraction of ``true`` values inside the central ``level`` interval of N(mean, sd^2),
    per coordinate (all coordinates pooled)."""
    z = ndtri(0.5 + level / 2)
    inside = np.abs(np.asarray(true, float) - np.asarray(mean, float)) <= z * np.asarray(sd, float)
    return float(np.mean(inside)) if inside.size else float("nan")


def interval_coverage_bounds(true, lo, hi) -> float:
    """Fraction of ``true`` values inside their intervals ``[lo, hi]`` (all coordinates
    pooled): the coverage of a posterior's own central intervals, whatever its shape."""
    true, lo, hi = (np.asarray(a, float) for a in (true, lo, hi))
    inside = (true >= lo) & (true <= hi)
    return float(np.mean(inside)) if inside.size else float("nan")
