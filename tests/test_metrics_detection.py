import numpy as np
import pytest

from probcat.metrics.detection import (
    SNR_BINS,
    binned_detection_metrics,
    detected_snr,
    f1_score,
    match,
)


def test_match_hand_built():
    truth = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]])
    est = np.array([[0.5, 0.0], [10.0, 11.9], [30.0, 30.0], [0.0, 1.0]])
    i, j = match(truth, est)
    pairs = sorted(zip(i.tolist(), j.tolist()))
    assert pairs == [(0, 0), (1, 1)]  # (20,20) unmatched; est 3 is a duplicate near truth 0


def test_match_prefers_global_minimum():
    # greedy would give truth 0 -> est 0 (d=0.5) and leave truth 1 unmatched
    truth = np.array([[0.0, 0.0], [1.4, 0.0]])
    est = np.array([[0.5, 0.0], [-1.0, 0.0]])
    i, j = match(truth, est)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (1, 0)]


def test_match_excludes_exactly_max_dist_and_empty():
    i, j = match([[0, 0]], [[2.0, 0]])
    assert len(i) == 0
    i, j = match(np.zeros((0, 2)), [[1, 1]])
    assert len(i) == 0 and len(j) == 0


def test_binned_precision_recall_f1():
    c = binned_detection_metrics(
        true_value=np.array([5, 5, 50, 50]),
        true_matched=np.array([1, 0, 1, 1]),
        est_value=np.array([5, 50, 50]),
        est_matched=np.array([1, 1, 0]),
        bins=np.array([1, 10, 100]),
    )
    assert c.recall.tolist() == [0.5, 1.0]
    assert c.precision.tolist() == [1.0, 0.5]
    assert f1_score(c.precision, c.recall).tolist() == pytest.approx([2 / 3, 2 / 3])
    assert (
        len(SNR_BINS) == 11
        and SNR_BINS[0] == pytest.approx(3)
        and SNR_BINS[-1] == pytest.approx(1000)
    )


def test_detected_snr_is_unbiased_on_noisy_images():
    sigma = 2.0
    source = np.zeros((21, 21))
    source[10, 10] = 40.0  # eq. 12 true SNR = 40 / 2 = 20
    rng = np.random.default_rng(0)
    snr2 = [
        detected_snr(source + rng.standard_normal((21, 21)) * sigma, [10.0], [10.0], sigma)[0] ** 2
        for _ in range(400)
    ]
    assert np.mean(snr2) == pytest.approx(400.0, rel=0.05)
    noise_only = [
        detected_snr(rng.standard_normal((21, 21)) * sigma, [10.0], [10.0], sigma)[0]
        for _ in range(400)
    ]
    assert np.median(noise_only) < 3  # pure noise sits below the lowest SNR bin


def test_matched_detections_flags_the_detections_match_pairs_with_a_source():
    from probcat.metrics.detection import matched_detections

    truth = {"x": np.array([10.0, 30.0]), "y": np.array([10.0, 30.0])}
    cat = {"x": np.array([10.5, 50.0, 31.9, 10.0]), "y": np.array([10.0, 50.0, 30.0, 11.0])}
    # the source at (10, 10) has two candidates: the nearer (10.5, 10) takes it
    np.testing.assert_array_equal(matched_detections(truth, cat), [True, False, True, False])
    assert matched_detections(truth, {"x": np.zeros(0), "y": np.zeros(0)}).shape == (0,)
    assert not matched_detections({"x": [], "y": []}, cat).any()
