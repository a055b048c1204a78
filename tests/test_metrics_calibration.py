import numpy as np
import pytest

from probcat.metrics import (
    expected_calibration_error,
    interval_coverage,
    precision_recall_f1,
    reliability,
)


def test_ece_zero_for_calibrated_and_hand_worked():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = rng.random(200_000) < p
    assert expected_calibration_error(p, y) < 0.01
    # always predicting 0.9 for events that happen half the time: ECE = 0.4
    assert expected_calibration_error(np.full(10, 0.9), np.arange(10) % 2) == pytest.approx(0.4)
    conf, acc, n = reliability([0.05, 0.05, 0.95], [0, 1, 1], n_bins=10)
    assert n[0] == 2 and acc[0] == 0.5 and conf[9] == pytest.approx(0.95)


def test_interval_coverage_gaussian():
    rng = np.random.default_rng(1)
    mean, sd = rng.normal(size=100_000), rng.uniform(0.5, 2, 100_000)
    true = mean + sd * rng.standard_normal(100_000)
    assert interval_coverage(true, mean, sd, 0.68) == pytest.approx(0.68, abs=0.01)
    assert interval_coverage(true, mean, sd, 0.95) == pytest.approx(0.95, abs=0.01)
    assert interval_coverage(true, mean, sd / 2, 0.68) < 0.5  # overconfident


def test_precision_recall_f1_hand_worked():
    p, r, f = precision_recall_f1([1, 1, 0, 0], [1, 0, 1, 0])
    assert (p, r, f) == (0.5, 0.5, 0.5)
    assert np.isnan(precision_recall_f1([0, 0], [0, 1])[0])


def test_interval_coverage_bounds_hand_built():
    from probcat.metrics import interval_coverage_bounds

    true = np.array([[0.0, 1.0], [2.0, 5.0]])
    lo = np.array([[-1.0, 1.5], [2.0, 0.0]])
    hi = np.array([[1.0, 2.0], [3.0, 4.9]])
    assert interval_coverage_bounds(true, lo, hi) == 0.5  # inside, outside, edge in, outside
    assert np.isnan(interval_coverage_bounds([], [], []))
