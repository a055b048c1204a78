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
    gets the two mixed by the image's share of real shapes, and its intervals follow;
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
    # no scores: the share's prior mean
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


def _snr_dependent_errors(rng, n):
    """Standardised errors whose scale falls with SNR as a power law (0.25 at SNR 1000, 1 at
    SNR 10 and below), with their SNRs (log-uniform on 2-2000)."""
    snr = np.exp(rng.uniform(np.log(2.0), np.log(2000.0), n))
    scale = np.clip((snr / 10.0) ** (-np.log(4.0) / np.log(100.0)), 0.25, 1.0)
    return np.abs(rng.standard_normal(n)) * scale, snr, scale


def test_calibration_binned_by_snr_covers_at_every_snr_where_the_pooled_one_does_not():
    """Errors that shrink with SNR: the pooled calibration over-covers bright and under-covers
    faint sources; the binned one covers within Monte Carlo error in every SNR decade, on
    fresh draws, and its bins' k follow the scale (normal quantiles times it)."""
    rng = np.random.default_rng(7)
    z, snr, _ = _snr_dependent_errors(rng, 60_000)
    cal = calibration_from_errors(z, "binned", snr=snr)
    assert cal.binned and len(cal.snr) >= 6 and np.all(np.diff(cal.snr) > 0)
    assert cal.k == calibration_from_errors(z).k  # the pooled table is unchanged
    zt, st, scale = _snr_dependent_errors(rng, 200_000)
    for lo, hi in ((2, 20), (20, 200), (200, 2000)):
        m = (st >= lo) & (st < hi)
        for level in (0.6827, 0.9545):
            binned = np.mean(zt[m] <= cal.factor(level, st[m]))
            assert binned == pytest.approx(level, abs=0.015)
        pooled = np.mean(zt[m] <= cal.factor(0.6827))
        if lo != 20:  # the problem the bins solve: faint under-, bright over-covered
            assert (pooled - 0.6827) * (1 if lo > 20 else -1) > 0.07
    for c, kb in zip(cal.snr, cal.k_by_snr):  # each bin: normal quantiles x its scale
        s = np.clip((c / 10.0) ** (-np.log(4.0) / np.log(100.0)), 0.25, 1.0)
        assert np.interp(0.6827, cal.levels, kb) == pytest.approx(s, rel=0.12)
    # interpolation in log SNR between bins; constant beyond the outermost
    mid = np.sqrt(cal.snr[2] * cal.snr[3])
    want = 0.5 * (cal.at(cal.snr[2]).factor(0.9) + cal.at(cal.snr[3]).factor(0.9))
    assert cal.factor(0.9, [mid])[0] == pytest.approx(want, rel=1e-9)
    assert cal.factor(0.9, [1e6])[0] == pytest.approx(cal.at(cal.snr[-1]).factor(0.9))
    assert cal.factor(0.9, [0.0, np.nan])[0] == pytest.approx(cal.at(cal.snr[0]).factor(0.9))
    assert CentroidCalibration.from_dict(cal.to_dict()) == cal
    plain = CentroidCalibration.from_dict(calibration_from_errors(z).to_dict())
    assert not plain.binned and "snr" not in plain.to_dict()
    np.testing.assert_allclose(plain.factor(0.6827, [5.0, 500.0]), plain.factor(0.6827))


def test_too_few_errors_for_two_snr_bins_give_a_pooled_calibration():
    rng = np.random.default_rng(8)
    z, snr, _ = _snr_dependent_errors(rng, 900)
    assert not calibration_from_errors(z, snr=snr).binned
    same = np.full(5000, 30.0)  # one SNR: nothing to bin on
    assert not calibration_from_errors(np.abs(rng.standard_normal(5000)), snr=same).binned


def test_binned_quantile_draws_follow_each_sources_snr():
    """Draws with ``snr`` given reproduce, source by source, the distribution the binned
    calibration gives that SNR (its interval half-widths)."""
    rng = np.random.default_rng(9)
    z, snr, _ = _snr_dependent_errors(rng, 60_000)
    cal = calibration_from_errors(z, snr=snr)
    for s in (4.0, 60.0, 1500.0):
        d = cal.quantile(rng.random(100_000), np.full(100_000, s))
        for level in (0.6827, 0.9545):
            assert np.mean(d <= cal.factor(level, [s])[0]) == pytest.approx(level, abs=0.006)
    u = rng.random((50, 2))
    per = np.broadcast_to(np.geomspace(3, 3000, 50)[:, None], (50, 2))
    got = cal.quantile(u, per)
    want = [[cal.at(p).quantile(np.array([x]))[0] for x, p in zip(r, q)] for r, q in zip(u, per)]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_mixing_binned_calibrations_mixes_them_at_each_snr():
    rng = np.random.default_rng(10)
    z, snr, _ = _snr_dependent_errors(rng, 40_000)
    a = calibration_from_errors(z, "a", snr=snr)
    b = calibration_from_errors(np.abs(rng.standard_normal(40_000)) * 2.0, "b")  # not binned
    m = mix_centroid_calibrations(a, b, 0.3, "m")
    assert m.snr == a.snr and len(m.k_by_snr) == len(a.k_by_snr)
    for s in (a.snr[0], a.snr[len(a.snr) // 2], a.snr[-1]):
        at = m.at(s)
        for level, k in zip(at.levels, at.k):
            assert 0.7 * _cdf(a.at(s), k) + 0.3 * _cdf(b, k) == pytest.approx(level, abs=1e-3)
    assert mix_centroid_calibrations(b, a, 0.0).snr == a.snr  # b's tables at a's SNRs
    np.testing.assert_allclose(
        mix_centroid_calibrations(b, a, 1.0).factor(0.6827, [a.snr[1]]),
        a.factor(0.6827, [a.snr[1]]),
        atol=2e-3,
    )


def test_centroid_interval_reads_each_sources_detection_snr():
    rng = np.random.default_rng(11)
    z, snr, _ = _snr_dependent_errors(rng, 40_000)
    cal = calibration_from_errors(z, snr=snr)
    cat = _cat({"centroid_calibration": cal.to_dict()})
    pooled = centroid_interval(cat, 0.6827)
    np.testing.assert_allclose(pooled["x_hi"] - cat["x"], cal.factor(0.6827) * cat["x_sd"])
    cat = cat.with_columns(detection_snr=np.array([5.0, 800.0]))
    got = centroid_interval(cat, 0.6827)
    k = cal.factor(0.6827, [5.0, 800.0])
    assert k[0] > 2 * k[1]
    np.testing.assert_allclose(got["y_hi"] - cat["y"], k * cat["y_sd"])
    np.testing.assert_allclose(cat["x"] - got["x_lo"], k * cat["x_sd"])


def test_aperture_snr_is_the_detected_snr_of_the_metrics():
    """The decoder's detection SNR equals :func:`probcat.metrics.detection.detected_snr` and
    a brute force over pixels at any position, inside, at and beyond the edges, on each
    image of a batch; padding zeros are not counted (``detected_snr`` counts them); bands
    add in quadrature."""
    from probcat.metrics.detection import aperture_snr, detected_snr

    rng = np.random.default_rng(12)
    img = rng.standard_normal((2, 1, 40, 50))
    img[1, 0, 10:20, 10:20] += 4.0
    x, y = rng.uniform(-3, 53, 60), rng.uniform(-3, 43, 60)
    b = rng.integers(0, 2, 60)
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    got = aperture_snr(t(img).float(), t(b), t(x), t(y)).numpy()
    want = [detected_snr(img[i, 0], [u], [v], 1.0)[0] for i, u, v in zip(b, x, y)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    padded = np.zeros((2, 1, 48, 56))
    padded[..., :40, :50] = img
    again = aperture_snr(t(padded).float(), t(b), t(x), t(y)).numpy()
    np.testing.assert_allclose(again, got, rtol=1e-6)
    near_pad = [detected_snr(padded[i, 0], [u], [v], 1.0)[0] for i, u, v in zip(b, x, y)]
    assert np.any(np.abs(np.asarray(near_pad) - got) > 1e-3)  # the metric counts the zeros
    two = np.concatenate([img, 0.5 * img], 1)  # a second band
    quad = aperture_snr(t(two).float(), t(b), t(x), t(y)).numpy()
    yy, xx = np.mgrid[:40, :50]
    for k in range(60):  # brute force over pixels
        near = (xx - x[k]) ** 2 + (yy - y[k]) ** 2 <= 25.0
        near &= (np.abs(xx - np.rint(x[k])) <= 6) & (np.abs(yy - np.rint(y[k])) <= 6)
        one = np.sum(img[b[k], 0][near] ** 2 - 1.0)
        assert got[k] == pytest.approx(np.sqrt(max(one, 0.0)), rel=1e-5, abs=1e-4)
        total = sum(np.sum(two[b[k], c][near] ** 2 - 1.0) for c in range(2))
        assert quad[k] == pytest.approx(np.sqrt(max(total, 0.0)), rel=1e-5, abs=1e-4)


def test_refined_samples_scatter_as_the_binned_calibration_says_at_each_sources_snr():
    """A calibration binned by detection SNR (normal errors at twice the sd at SNR 5 and
    below, half of it at SNR 50 and above): sampled positions scatter about the refined
    means at the scale each source's detection SNR gets, that SNR being the aperture SNR at
    the refined mean, which MAP catalogues carry as ``detection_snr``."""
    from scipy.stats import norm as normal

    from probcat.infer.calibration import LEVELS
    from probcat.infer.detect import decode, map_catalog, tile_features, tile_image
    from probcat.metrics.detection import aperture_snr
    from probcat.nets.detection import DetectionNet
    from probcat.tiles import tile_to_pixel

    torch.manual_seed(0)
    net = DetectionNet(
        n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier="stamp", loc_refine=True
    ).eval()
    img = np.random.default_rng(4).standard_normal((1, 40, 45)).astype(np.float32)
    img[0, 5:35, 20:40] *= np.linspace(1.5, 8.0, 20)[None, :]  # SNRs from ~0 to ~150
    feats, pixels = tile_features(net, img, 1.0), tile_image(net, img, 1.0)
    q = tuple(float(v) for v in normal.ppf(0.5 + np.asarray(LEVELS) / 2))
    cal = CentroidCalibration(
        LEVELS, q, 1000, "", (5.0, 50.0), (tuple(2 * v for v in q), tuple(0.5 * v for v in q))
    )
    dec = decode(net, feats, image=pixels, n_samples=64, generator=torch.Generator(),
                 centroid_calibration=cal)  # fmt: skip
    b, ty, tx = torch.nonzero(dec.n, as_tuple=True)
    snr = dec.snr[b, ty, tx]
    at = aperture_snr(
        pixels.expand(64, -1, -1, -1),
        b,
        *tile_to_pixel(ty, tx, dec.cond_locs[b, ty, tx], net.tile_size),
    )
    np.testing.assert_allclose(snr.numpy(), at.numpy(), rtol=1e-5, atol=1e-4)
    assert snr.min() < 5 and snr.max() > 50
    t = np.clip(np.log(np.maximum(snr.numpy(), 1.0) / 5.0) / np.log(10.0), 0.0, 1.0)
    scale = torch.as_tensor((1 - t) * 2.0 + t * 0.5, dtype=torch.float32)[:, None]
    z = (dec.locs - dec.cond_locs)[b, ty, tx] / dec.loc_sd[b, ty, tx]
    assert float((z / scale).std()) == pytest.approx(1.0, abs=0.05)
    faint, bright = snr < 5, snr > 50
    assert float(z[faint].std()) == pytest.approx(2.0, abs=0.15)
    assert float(z[bright].std()) == pytest.approx(0.5, abs=0.05)
    cat = map_catalog(net, feats, img.shape[-2:], image=pixels)
    want = aperture_snr(pixels, torch.zeros(len(cat), dtype=torch.long),
                        torch.as_tensor(cat["x"]), torch.as_tensor(cat["y"]))  # fmt: skip
    np.testing.assert_allclose(cat["detection_snr"], want.numpy(), rtol=1e-5, atol=1e-4)
