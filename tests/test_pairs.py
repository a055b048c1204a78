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
    sd = np.array([0.2, 0.5, 0.3])
    f, partner = pairs.pair_features(img, x, y, p, sd)
    assert partner.tolist() == [1, 0, -1]
    assert np.isnan(f[2]).all()
    sm = gaussian_filter(img, pairs.SMOOTH_PX, mode="nearest", truncate=3.0)
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
    assert named["log_peak_ratio"] == pytest.approx(np.log(sm[20, 12] / sm[20, 20]), rel=1e-4)
    assert named["log_sd"] == pytest.approx(np.log(0.2))
    assert named["log_sd_neighbour"] == pytest.approx(np.log(0.5))
    # the fainter blob's own peak over the saddle
    assert dict(zip(pairs.FEATURES, f[1]))["contrast"] == pytest.approx(
        (sm[20, 20] - saddle) / noise, rel=0.05
    )


def test_multiband_pixels_are_summed_over_sqrt_bands():
    img = _gauss((30, 30), 10.0, 15.0, 20.0) + _gauss((30, 30), 16.0, 15.0, 8.0)
    x, y, p = np.array([10.0, 16.0]), np.array([15.0, 15.0]), np.array([0.8, 0.7])
    sd = np.array([0.3, 0.4])
    one, _ = pairs.pair_features(img, x, y, p, sd)
    four, _ = pairs.pair_features(np.stack([img / 2] * 4), x, y, p, sd)  # sum/2 = img
    np.testing.assert_allclose(four, one, rtol=1e-5)
    with pytest.raises(ProbcatValueError):
        pairs.pair_features(img[0], x, y, p, sd)


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
    # P(real) = sigmoid(logit(raw) - 2): in pair 1, 0.95 -> 0.72 stays and 0.6 -> 0.17
    # goes; pair 2 ties at 0.24: only the later one goes; the lone detection (25 px from
    # any other) always stays
    rule = _rule([1.0], intercept=-2.0)
    sd = np.full(5, 0.3)
    keep, p = rule.keep(img, x, y, raw, sd)
    assert keep.tolist() == [True, False, True, False, True]
    assert np.isnan(p[4])
    assert p[1] == pytest.approx(1 / (1 + np.exp(2 - np.log(0.6 / 0.4))))
    # a rule that finds every paired detection real drops nothing
    assert _rule([0.0], intercept=5.0).keep(img, x, y, raw, sd)[0].all()


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
    n = 20000
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
            "x_sd": np.full(3, 0.2),
            "y_sd": np.full(3, 0.2),
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


def test_shipped_catalogue_is_the_decoded_one_less_the_rules_vetoes(tiny_bank):
    """The shipped LSST-i weights carry a pair rule, and their MAP catalogue is exactly the
    decoded detections that :meth:`PairRule.keep` keeps (the rule applied once, on the
    image in noise units; the network's decisions alone, without the rescue of bright
    objects)."""
    import probcat
    from probcat.infer.detect import batch_tile_features, catalog_from_decisions, decode, tile_image
    from probcat.simulate.scene import SceneConfig, SceneSimulator

    det = probcat.load("detection_lsst_i", device="cpu", threads=1)
    rule = det.net.pair_rule
    assert isinstance(rule, pairs.PairRule) and rule.n > 100
    sigma = tiny_bank.survey.noise_sigma
    sim = SceneSimulator(tiny_bank, SceneConfig(64, 64, margin=0))
    rng = np.random.default_rng(11)
    imgs = np.stack([sim.sample(rng).image for _ in range(12)])
    cats = det.catalog(imgs, noise_sigma=sigma, background="none", rescue_bright=False)
    feats = batch_tile_features(det.net, imgs, sigma)
    dec = decode(det.net, feats, image=tile_image(det.net, imgs, sigma))
    vetoed = 0
    for k, cat in enumerate(cats):
        raw = catalog_from_decisions(dec, k, dec.marginal, (64, 64), 5, ("i",), {})
        pix = imgs[k] / sigma[:, None, None]
        keep, p = rule.keep(pix, raw["x"], raw["y"], raw["prob"], pairs.catalog_sd(raw))
        np.testing.assert_allclose(cat["x"], raw["x"][keep], atol=1e-5)
        np.testing.assert_allclose(cat["pair_prob"], p[keep], atol=1e-5, equal_nan=True)
        assert cat.meta["pair_vetoed"] == int((~keep).sum())
        vetoed += int((~keep).sum())
    assert vetoed >= 1  # the check has something to check


def test_detected_snr_equals_the_aperture_sum_pixel_by_pixel_inside_and_at_the_edges():
    from probcat.metrics.detection import detected_snr

    rng = np.random.default_rng(4)
    img = rng.standard_normal((30, 40)) + _gauss((30, 40), 20.0, 15.0, 12.0)
    x = np.concatenate([rng.uniform(-0.5, 39.5, 200), [0.0, 39.4, 2.2, 37.6]])
    y = np.concatenate([rng.uniform(-0.5, 29.5, 200), [0.0, 29.4, 28.9, 1.1]])
    yy, xx = np.mgrid[:30, :40]
    want = []
    for xc, yc in zip(x, y):  # every pixel of the image within 5 px, one position at a time
        m = (xx - xc) ** 2 + (yy - yc) ** 2 <= 25.0
        want.append(np.sqrt(max(np.sum(img[m] ** 2) / 2.0**2 - m.sum(), 0.0)))
    np.testing.assert_allclose(detected_snr(img, x, y, 2.0), want)
    assert detected_snr(img, [], [], 1.0).shape == (0,)


def test_detected_snr_of_any_pixel_type_equals_that_of_the_image_over_sigma_in_float64():
    """Only the aperture pixels are divided by sigma: the same numbers, to the bit, as the
    whole image divided first, for float32, big-endian, integer and read-only images."""
    import warnings

    import torch

    from probcat.metrics.detection import aperture_snr, detected_snr

    rng = np.random.default_rng(5)
    base = 400 * rng.standard_normal((30, 40)) + 9e4 * _gauss((30, 40), 20.0, 15.0, 12.0)
    x, y = rng.uniform(-0.5, 39.5, 50), rng.uniform(-0.5, 29.5, 50)
    read_only = base.astype(np.float32)
    read_only.flags.writeable = False
    b = torch.zeros(50, dtype=torch.long)
    for img, sigma in ((base.astype(np.float32), 433.7), (base.astype(">f4"), 433.7),
                       (base.astype(np.int32), np.float32(433.7)), (read_only, 433.7)):  # fmt: skip
        whole = torch.from_numpy(np.asarray(img, np.float64) / sigma)[None, None]
        want = aperture_snr(whole, b, torch.from_numpy(x), torch.from_numpy(y), 5.0,
                            skip_zeros=False).double().numpy()  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = detected_snr(img, x, y, sigma)
        np.testing.assert_array_equal(got, want)
