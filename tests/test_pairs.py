"""The split veto of close detection pairs (probcat.infer.pairs)."""

from types import SimpleNamespace

import numpy as np
import pytest

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.infer import pairs
from probcat.infer.reliability import annotate, veto_pairs


def _gauss(shape, x0, y0, amp, sigma=1.5):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return amp * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))


def test_pair_features_equal_their_definitions_on_two_blobs():
    from scipy.ndimage import gaussian_filter

    from probcat.metrics.detection import detected_snr

    img = _gauss((40, 40), 12.0, 20.0, 30.0) + _gauss((40, 40), 20.0, 20.0, 10.0)
    x, y, p = np.array([12.0, 20.0, 35.0]), np.array([20.0, 20.0, 5.0]), np.array([0.9, 0.6, 0.7])
    f, partner = pairs.pair_features(img, x, y, p)
    assert partner.tolist() == [1, 0, -1]
    assert np.isnan(f[2]).all()
    sm = gaussian_filter(img, pairs.SMOOTH_PX, mode="nearest")
    # brute force: the smoothed profile along the segment, by direct interpolation
    t = np.linspace(0, 1, 2001)
    xs = 12 + 8 * t  # along the row y = 20
    prof = np.interp(xs, np.arange(40), sm[20])
    noise = 1 / (2 * np.sqrt(np.pi) * pairs.SMOOTH_PX)
    saddle = prof.min()
    named = dict(zip(pairs.FEATURES, f[0]))
    assert named["distance"] == pytest.approx(8.0)
    assert named["logit_prob"] == pytest.approx(np.log(0.9 / 0.1))
    assert named["logit_prob_neighbour"] == pytest.approx(np.log(0.6 / 0.4))
    assert named["log_snr"] == pytest.approx(np.log(detected_snr(img, [12.0], [20.0], 1.0)[0]))
    # the 25-point profile finds the saddle to within the grid's spacing
    assert named["contrast"] == pytest.approx((sm[20, 12] - saddle) / noise, rel=0.01)
    assert named["saddle_over_peak"] == pytest.approx(saddle / sm[20, 12], rel=0.01)
    assert named["log_peak_ratio"] == pytest.approx(np.log(sm[20, 12] / sm[20, 20]))
    # the fainter blob's own peak over the saddle
    assert dict(zip(pairs.FEATURES, f[1]))["contrast"] == pytest.approx(
        (sm[20, 20] - saddle) / noise, rel=0.05
    )


def test_multiband_pixels_are_summed_over_sqrt_bands():
    img = _gauss((30, 30), 10.0, 15.0, 20.0) + _gauss((30, 30), 16.0, 15.0, 8.0)
    x, y, p = np.array([10.0, 16.0]), np.array([15.0, 15.0]), np.array([0.8, 0.7])
    one, _ = pairs.pair_features(img, x, y, p)
    four, _ = pairs.pair_features(np.stack([img / 2] * 4), x, y, p)  # sum/2 = img
    np.testing.assert_allclose(four, one)
    with pytest.raises(ProbcatValueError):
        pairs.pair_features(img[0], x, y, p)


@pytest.mark.parametrize("seed", range(3))
def test_logistic_fit_recovers_the_generating_coefficients(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((20000, 3))
    w, b = np.array([1.5, -0.7, 0.0]), 0.4
    y = rng.random(20000) < 1 / (1 + np.exp(-(X @ w + b)))
    coef, icpt = pairs.logistic_fit(X, y, ridge=0.0)
    np.testing.assert_allclose(coef, w, atol=0.08)
    assert icpt == pytest.approx(b, abs=0.06)
    # the fit is the likelihood maximum: its gradient vanishes
    p = 1 / (1 + np.exp(-(X @ coef + icpt)))
    np.testing.assert_allclose(X.T @ (y - p), 0, atol=1e-5)


def _rule(coef, intercept=0.0):
    d = len(pairs.FEATURES)
    c = np.zeros(d)
    c[: len(coef)] = coef
    return pairs.PairRule((0.0,) * d, (1.0,) * d, tuple(c), float(intercept), n=1)


def test_keep_drops_only_the_less_probable_member_of_a_pair():
    img = _gauss((40, 40), 10.0, 10.0, 30.0) + _gauss((40, 40), 15.0, 10.0, 20.0)
    img += _gauss((40, 40), 30.0, 30.0, 25.0) + _gauss((40, 40), 34.0, 30.0, 25.0)
    x = np.array([10.0, 15.0, 30.0, 34.0, 5.0])
    y = np.array([10.0, 10.0, 30.0, 30.0, 35.0])
    raw = np.array([0.95, 0.6, 0.7, 0.7, 0.55])
    # P(real) grows with the raw logit, minus 2: pair 1 -> 0.97 keeps, 0.6 -> 0.16 drops;
    # pair 2 ties at 0.30: only the later one goes; the lone detection always stays
    rule = _rule([1.0], intercept=-2.0)
    keep, p = rule.keep(img, x, y, raw)
    assert keep.tolist() == [True, False, True, False, True]
    assert np.isnan(p[4])
    assert p[1] == pytest.approx(1 / (1 + np.exp(2 - np.log(0.6 / 0.4))))
    # a rule that finds every paired detection real drops nothing
    assert _rule([0.0], intercept=5.0).keep(img, x, y, raw)[0].all()


def test_rule_round_trips_and_refuses_other_features():
    r = _rule([1.0, -0.5], 0.3)
    d = r.to_dict()
    assert pairs.PairRule.from_dict(d) == r
    with pytest.raises(ProbcatValueError):
        pairs.PairRule.from_dict({**d, "features": ["a"] * len(pairs.FEATURES)})


def test_rule_from_rows_learns_which_pairs_are_splits():
    """Paired detections whose contrast over the saddle is low are mostly false: the fitted
    rule gives them low probabilities, and refuses too few rows."""
    rng = np.random.default_rng(1)
    n = 4000
    feats = rng.standard_normal((n, len(pairs.FEATURES)))
    k = pairs.FEATURES.index("contrast")
    real = rng.random(n) < 1 / (1 + np.exp(-3 * feats[:, k]))
    rule = pairs.rule_from_rows(feats, real, ridge=0.0)
    p = rule.probability(feats)
    # the fitted probabilities are the generating ones, up to the sample's noise
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-3 * feats[:, k])), atol=0.1)
    with pytest.raises(ProbcatValueError):
        pairs.rule_from_rows(feats[:50], real[:50])


def test_annotate_vetoes_before_calibrating_and_records_the_count():
    img = _gauss((40, 40), 10.0, 10.0, 30.0) + _gauss((40, 40), 15.0, 10.0, 20.0)
    cat = FullCatalog(
        {
            "x": np.array([10.0, 15.0, 30.0]),
            "y": np.array([10.0, 10.0, 30.0]),
            "prob": np.array([0.95, 0.6, 0.8]),
            "tile_x": np.array([2, 3, 6]),
            "tile_y": np.array([2, 2, 6]),
        },
        (40, 40),
        ("i",),
        {},
    )
    net = SimpleNamespace(pair_rule=_rule([1.0], -2.0), prob_calibration=None, feature_density=None)
    out = veto_pairs(cat, net, img[None, None])  # a batch of one, padded pixels welcome
    assert out["x"].tolist() == [10.0, 30.0]
    assert out.meta["pair_vetoed"] == 1
    assert np.isnan(out["pair_prob"][1])
    # without pixels, or without a rule, nothing changes
    assert len(annotate(cat, net, None)) == 3
    assert len(veto_pairs(cat, SimpleNamespace(pair_rule=None), img)) == 3
