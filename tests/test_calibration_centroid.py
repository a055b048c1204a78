import numpy as np
import pytest
import torch

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.infer.calibration import (
    CentroidCalibration,
    TooFewMatches,
    calibration_from_errors,
    centroid_interval,
    fit_centroid_calibration,
    mix_centroid_calibrations,
)


def _cat(meta=None):
    cols = {"x": np.array([10.0, 20.0]), "y": np.array([5.0, 7.0])}
    cols |= {"x_sd": np.array([0.5, 1.0]), "y_sd": np.array([0.2, 0.4])}
    return FullCatalog(cols, (30, 30), meta=meta or {})


def test_calibration_from_gaussian_errors_is_gaussian():
    z = np.abs(np.random.default_rng(0).standard_normal(200_000))
    cal = calibration_from_errors(z)
    assert cal.factor(0.6827) == pytest.approx(1.0, abs=0.01)
    assert cal.factor(0.9545) == pytest.approx(2.0, abs=0.02)
    assert np.all(np.diff(cal.k) > 0)


def test_heavy_tailed_errors_widen_only_the_outer_intervals():
    z = np.abs(np.random.default_rng(1).standard_t(3, 200_000)) / np.sqrt(3)  # unit variance
    cal = calibration_from_errors(z)
    assert cal.factor(0.6827) < 1.0 and cal.factor(0.99) > 2.58


def test_centroid_interval_uses_catalog_calibration_or_gaussian():
    gauss = centroid_interval(_cat(), 0.6827)
    assert np.allclose(gauss["x_hi"] - gauss["x_lo"], 2 * np.array([0.5, 1.0]), rtol=1e-3)
    cal = CentroidCalibration((0.5, 0.6827, 0.9545), (0.7, 1.1, 2.7), 500)
    got = centroid_interval(_cat({"centroid_calibration": cal.to_dict()}), 0.9545)
    assert np.allclose(got["y_hi"], [5.0 + 2.7 * 0.2, 7.0 + 2.7 * 0.4])
    assert np.allclose(got["x_lo"], [10.0 - 2.7 * 0.5, 20.0 - 2.7 * 1.0])
    mid = centroid_interval(_cat(), 0.8, calibration=cal)  # interpolated between levels
    k = np.interp(0.8, cal.levels, cal.k)
    assert 1.1 < k < 2.7 and np.allclose(mid["x_hi"] - [10.0, 20.0], k * np.array([0.5, 1.0]))
    assert CentroidCalibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ProbcatValueError, match="levels"):
        centroid_interval(_cat(), 0.3, calibration=cal)
    with pytest.raises(ProbcatValueError, match="level must"):
        centroid_interval(_cat(), 1.0)


def test_too_few_matches_is_a_clear_error(tiny_bank, survey_i):
    from probcat.nets.detection import DetectionNet
    from probcat.simulate.scene import SceneConfig, SceneSimulator

    with pytest.raises(TooFewMatches, match="too few"):
        calibration_from_errors(np.ones(50))
    torch.manual_seed(0)
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=1).eval()
    with torch.no_grad():
        net.detection_head.det_head.bias[0] = -20.0  # detects nothing
    sim = SceneSimulator(tiny_bank, SceneConfig(40, 40))
    with pytest.raises(TooFewMatches):
        fit_centroid_calibration(net, sim, survey_i.noise_sigma, n_scenes=2, rng=0)


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_weights_calibration_reaches_the_written_catalog(weights, tmp_path, suffix):
    """A calibration stored in the weights file travels with the MAP catalogue (also
    through FITS and Parquet) and sets its intervals."""
    from probcat.api import detect

    state = torch.load(weights, weights_only=False)
    cal = calibration_from_errors(np.abs(np.random.default_rng(2).standard_t(4, 5000)))
    state["centroid_calibration"] = cal.to_dict()
    path = tmp_path / "cal.pt"
    torch.save(state, path)
    img = np.random.default_rng(0).standard_normal((1, 48, 48)).astype(np.float32) * 434.5
    res = detect(img, weights=path, threshold=0.0)
    assert len(res.catalog) > 0
    res.catalog.write(tmp_path / f"cat{suffix}")
    back = FullCatalog.read(tmp_path / f"cat{suffix}")
    assert CentroidCalibration.from_dict(back.meta["centroid_calibration"]) == cal
    got = centroid_interval(back, 0.9545)
    k = cal.factor(0.9545)
    assert np.allclose(got["x_hi"], back["x"] + k * back["x_sd"])
    plain = detect(img, weights=weights, threshold=0.0).catalog
    assert "centroid_calibration" not in plain.meta


def test_quantile_draws_reproduce_the_calibration():
    rng = np.random.default_rng(1)
    heavy = np.abs(rng.standard_t(3, 100_000)) * 0.7
    cal = calibration_from_errors(heavy)
    z = cal.quantile(rng.random(200_000))
    for level in (0.3, 0.6827, 0.9, 0.9545):
        assert np.quantile(z, level) == pytest.approx(cal.factor(level), rel=0.02)
    assert cal.quantile(np.array([0.0]))[0] == 0.0
    # beyond the last level: a normal tail through it, increasing
    far = cal.quantile(np.array([0.99, 0.995, 0.999]))
    assert far[0] == pytest.approx(cal.factor(0.99)) and np.all(np.diff(far) > 0)
    u = np.linspace(0.0, 0.9995, 400)  # cdf inverts quantile, core and tail
    np.testing.assert_allclose(cal.cdf(cal.quantile(u)), u, atol=1e-12)


def test_refined_sample_positions_follow_the_calibration():
    """With a calibration of errors at half the refiner's sd, sampled positions scatter
    around the refined means at half the sd; without one, at the sd; with one given to the
    decoder, as that one says."""
    from probcat.infer.detect import decode, tile_features, tile_image
    from probcat.nets.detection import DetectionNet

    torch.manual_seed(0)
    net = DetectionNet(
        n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier="stamp", loc_refine=True
    ).eval()
    img = np.random.default_rng(4).standard_normal((1, 40, 45)).astype(np.float32) * 3
    feats, pixels = tile_features(net, img, 1.0), tile_image(net, img, 1.0)

    def spread(cal=None):
        dec = decode(
            net, feats, image=pixels, n_samples=64, generator=torch.Generator(),
            centroid_calibration=cal,
        )  # fmt: skip
        z = (dec.locs - dec.cond_locs)[dec.n] / dec.loc_sd[dec.n]
        return float(z.std())

    assert spread() == pytest.approx(1.0, abs=0.05)
    half = np.abs(np.random.default_rng(2).standard_normal(100_000)) * 0.5
    net.centroid_calibration = calibration_from_errors(half)
    assert spread() == pytest.approx(0.5, abs=0.03)
    # a calibration given to the decoder (an image's mixture) replaces the weights' own
    double = calibration_from_errors(np.abs(np.random.default_rng(5).standard_normal(100_000)) * 2)
    assert spread(double) == pytest.approx(2.0, abs=0.12)


def _cdf(cal: CentroidCalibration, k: float) -> float:
    """P(|error| / sd <= k) under ``cal``, by root-finding on its quantile function."""
    from scipy.optimize import brentq

    if k >= cal.quantile(np.array([1 - 1e-9]))[0]:
        return 1.0
    return brentq(lambda u: cal.quantile(np.array([u]))[0] - k, 0.0, 1 - 1e-9, xtol=1e-10)


def test_mixed_calibration_solves_the_mixture_cdf_at_each_level():
    """The mixture's k at each level is where (1 - w) F_a + w F_b equals the level (each F
    inverted from its own quantile function by root-finding); w = 0 and 1 give the two
    calibrations; a Monte Carlo draw of the mixture covers at the levels."""
    rng = np.random.default_rng(3)
    a = calibration_from_errors(np.abs(rng.standard_normal(50_000)), "a")
    b = calibration_from_errors(np.abs(rng.standard_t(3, 50_000)) * 1.8, "b")
    np.testing.assert_allclose(mix_centroid_calibrations(a, b, 0.0).k, a.k, atol=2e-3)
    np.testing.assert_allclose(mix_centroid_calibrations(a, b, 1.0).k, b.k, atol=2e-3)
    for w in (0.2, 0.7):
        m = mix_centroid_calibrations(a, b, w, "mixed")
        assert m.source == "mixed" and m.levels == a.levels and m.n == a.n + b.n
        for level, k in zip(m.levels, m.k):
            assert (1 - w) * _cdf(a, k) + w * _cdf(b, k) == pytest.approx(level, abs=1e-3)
        assert np.all(np.asarray(m.k) >= np.asarray(a.k)) and np.all(np.asarray(m.k) <= b.k)
        n = 400_000
        za, zb = a.quantile(rng.random(n)), b.quantile(rng.random(n))
        z = np.where(rng.random(n) < w, zb, za)
        for level in (0.6827, 0.9545):
            assert np.mean(z <= m.factor(level)) == pytest.approx(level, abs=0.004)
    with pytest.raises(ProbcatValueError, match="weight"):
        mix_centroid_calibrations(a, b, 1.5)


def test_annotate_mixes_the_centroid_calibrations_by_the_images_real_shapes_probability():
    """Weights with a second (real shapes) centroid calibration: the catalogue's metadata
    gets the two mixed by the image's real-shapes probability, and its intervals follow;
    weights without one keep the catalogue's own."""
    from types import SimpleNamespace

    import probcat.infer.reliability as rel

    rng = np.random.default_rng(4)
    own = calibration_from_errors(np.abs(rng.standard_normal(20_000)), "own")
    real = calibration_from_errors(np.abs(rng.standard_normal(20_000)) * 3, "real")
    probs = rel.ProbabilityCalibration((0.0, 1.0), (0.0, 1.0), 100, "p")
    shapes = rel.ShapesCalibration(probs, probs, (0.0,) * 20, 0.3, "hdf", 100, "s")
    cols = dict(x=[5.0, 20.0], y=[6.0, 22.0], prob=[0.9, 0.8], tile_x=[1, 5], tile_y=[1, 5])
    cols |= dict(x_sd=[0.5, 0.2], y_sd=[0.4, 0.3])
    meta = {"centroid_calibration": own.to_dict()}
    cat = FullCatalog({k: np.asarray(v) for k, v in cols.items()}, (30, 30), ("i",), meta)
    net = SimpleNamespace(prob_calibration=shapes, feature_density=None)
    net.centroid_calibration, net.real_shapes_centroid_calibration = own, real
    out = rel.annotate(cat, net, torch.zeros(3, 8, 8))
    assert out.meta["real_shapes_probability"] == pytest.approx(0.3)
    want = mix_centroid_calibrations(own, real, 0.3)
    got = CentroidCalibration.from_dict(out.meta["centroid_calibration"])
    assert got.k == pytest.approx(want.k, abs=1e-9) and "mixed with weight 0.3000" in got.source
    assert 1.0 < got.factor(0.6827) < 3.0
    iv = centroid_interval(out, 0.6827)
    np.testing.assert_allclose(iv["x_hi"] - out["x"], want.factor(0.6827) * out["x_sd"])
    net.real_shapes_centroid_calibration = None
    kept = rel.annotate(cat, net, torch.zeros(3, 8, 8)).meta["centroid_calibration"]
    assert kept == own.to_dict()
