"""The posterior predictive check's summaries and p-values against hand computations."""

import numpy as np
import pytest

from probcat.population.chain import simulated_target
from probcat.population.predictive import (
    STATISTICS,
    map_statistics,
    off_lattice_fraction,
    predictive_pvalues,
    predictive_warning,
    prior_check,
    prior_warning,
    whole_number_fraction,
)
from probcat.population.simulator import pix_to_deg, simulate


def test_map_statistics_equal_their_definitions_on_a_hand_built_map():
    m = np.zeros((2, 128, 128))
    m[0, 10, 100] = 3.0  # row 10 (latitude), column 100 (longitude)
    m[0, 70, 64] = 1.0
    s = map_statistics(m, [2, 0])
    l, b = pix_to_deg(np.array([100, 64]), np.array([10, 70]))
    w = np.arcsinh(np.array([3.0, 1.0]) * 100 / 3)  # the compressed counts weigh them
    assert s["total_flux"].tolist() == [4.0, 0.0]
    assert s["n_detected"].tolist() == [2.0, 0.0]
    assert s["l_rms"][0] == pytest.approx(np.sqrt((w * l**2).sum() / w.sum()))
    assert s["b_rms"][0] == pytest.approx(np.sqrt((w * b**2).sum() / w.sum()))
    assert s["pixel_999"][0] == pytest.approx(np.quantile(m[0], 0.999))
    assert s["l_rms"][1] == 0.0 and s["b_rms"][1] == 0.0  # an empty map: no NaN
    assert set(s) == set(STATISTICS)


def test_map_statistics_read_latitude_along_rows():
    """A thin disc (h = 3 degrees) of a simulated map: its light's latitude spread is
    small, its longitude spread near the model's 20 degrees (cut by the map's edges)."""
    _, maps, _ = simulate(np.random.default_rng(0), 1, np.array([[400.0, 1.0, 3.0]]))
    s = map_statistics(maps, [0])
    assert s["b_rms"][0] < 5.0 and 14.0 < s["l_rms"][0] < 21.0


def test_predictive_pvalues_count_ties_half_and_are_two_sided():
    draws = {"t": np.arange(100.0)}
    mid = predictive_pvalues({"t": 49.5}, draws)["t"]
    assert mid["p_value"] == 1.0 and mid["predictive_median"] == pytest.approx(49.5)
    assert predictive_pvalues({"t": 200.0}, draws)["t"]["p_value"] == 0.0
    assert predictive_pvalues({"t": -1.0}, draws)["t"]["p_value"] == 0.0
    # 89 draws above 10, one equal: P(T > t) = 0.895, so p = 2 x 0.105
    tie = predictive_pvalues({"t": 10.0}, draws)["t"]
    assert tie["p_value"] == pytest.approx(0.21)
    lo, hi = tie["predictive_95"]
    assert lo == pytest.approx(np.quantile(draws["t"], 0.025)) and hi > lo


def test_predictive_pvalues_are_uniform_when_the_target_comes_from_the_same_model():
    """Target and 199 predictive draws exchangeable: the target's rank is uniform over 200
    places, so p < 0.05 exactly 10 of them (5 at each end) and p < 0.5 exactly 100."""
    rng = np.random.default_rng(1)
    p = np.array(
        [
            predictive_pvalues({"t": rng.normal()}, {"t": rng.normal(size=199)})["t"]["p_value"]
            for _ in range(2000)
        ]
    )
    assert np.mean(p < 0.05) == pytest.approx(0.05, abs=0.015)  # 3 binomial errors
    assert np.mean(p < 0.5) == pytest.approx(0.5, abs=0.034)


def test_predictive_warning_names_only_the_failed_summaries():
    draws = {"l_rms": np.linspace(15, 20, 200), "b_rms": np.linspace(14, 19, 200)}
    check = predictive_pvalues({"l_rms": 12.0, "b_rms": 16.5}, draws)
    msg = predictive_warning(check)
    assert "l_rms (p = 0.000)" in msg and "b_rms" not in msg
    assert predictive_warning(predictive_pvalues({"l_rms": 17.5, "b_rms": 16.5}, draws)) is None


def test_prior_check_passes_a_model_map_and_flags_other_units():
    """A map the model made lies inside the prior maps' ranges, on whole counts over 100,
    few of its pixels whole numbers; the same map in counts (x 100) is all whole numbers,
    in other units off the counts' lattice, and an empty map is beyond every prior map."""
    x, _ = simulated_target(3)
    ok = prior_check(x, np.random.default_rng(0), 200)
    assert set(ok["statistics"]) == set(STATISTICS) - {"n_detected"}
    assert ok["off_lattice_fraction"] == 0.0 and ok["whole_number_fraction"] < 0.02
    assert prior_warning(ok) is None
    for c in ok["statistics"].values():
        lo, hi = c["prior_range"]
        assert lo <= c["observed"] <= hi and lo <= c["predictive_median"] <= hi
    counts = prior_check(x * 100, np.random.default_rng(0), 200)
    assert counts["off_lattice_fraction"] == 0.0 and counts["whole_number_fraction"] == 1.0
    assert "100% of its non-zero pixels are whole numbers" in prior_warning(counts)
    shifted = x * 1.2345  # other units: most lit pixels are no longer whole counts
    frac = off_lattice_fraction(shifted)
    lit = x > 0
    assert 0.5 * lit.mean() < frac <= lit.mean()
    assert "not whole counts" in prior_warning(prior_check(shifted, np.random.default_rng(0), 200))
    empty = prior_check(np.zeros((128, 128)), np.random.default_rng(0), 200)
    assert empty["whole_number_fraction"] == 0.0
    assert "beyond all 200 maps drawn from the model's prior in" in prior_warning(empty)
    assert "l_rms 0 (prior maps:" in prior_warning(empty)


def test_pixel_value_fractions_allow_float32_rounding():
    counts = np.array([0, 1, 7, 123456, 9_999_999]) / 100  # float32 at 1e5: spacing 0.008
    assert off_lattice_fraction(counts.astype(np.float32)) == 0.0
    assert off_lattice_fraction(np.array([0.005, 0.015, 0.02, 0.03])) == 0.5
    assert whole_number_fraction(np.float32([0, 0.5, 3, 123456, 0.25])) == 0.5
    assert whole_number_fraction(np.zeros(4)) == 0.0
