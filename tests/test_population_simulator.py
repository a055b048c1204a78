import numpy as np
import pytest
from scipy import stats

from probcat.population import simulator as S
from probcat.population.detection import pixel_labels, prior_map


def test_prior_draws_lie_in_table_1_ranges():
    theta = S.sample_prior(np.random.default_rng(0), 5000)
    assert theta.shape == (5000, 3)
    assert theta[:, 0].min() >= 10 and theta[:, 0].max() <= 500
    assert np.all(theta[:, 0] == np.round(theta[:, 0]))
    assert 1 <= theta[:, 1].min() and theta[:, 1].max() <= 3
    assert 1 <= theta[:, 2].min() and theta[:, 2].max() <= 20
    assert theta[:, 0].mean() == pytest.approx(255, rel=0.03)


def test_source_counts_fluxes_and_positions_follow_the_model():
    rng = np.random.default_rng(1)
    theta = np.array([[400, 2.0, 5.0], [37, 1.0, 15.0]])
    src = S.sample_sources(rng, np.repeat(theta, 200, 0))
    assert np.bincount(src.map).tolist() == [400] * 200 + [37] * 200
    a = src.map < 200
    assert np.log(src.flux[a]).mean() == pytest.approx(1.0, abs=0.02)
    assert np.log(src.flux[a]).std() == pytest.approx(2.0, rel=0.02)
    assert src.l[a].std() == pytest.approx(20.0, rel=0.02)
    assert src.b[a].std() == pytest.approx(5.0, rel=0.02)
    assert src.b[~a].std() == pytest.approx(15.0, rel=0.05)


def test_psf_conserves_flux_and_noise_is_poisson_over_100():
    rng = np.random.default_rng(2)
    one = S.Sources(np.array([0]), np.array([7.5]), np.array([0.3]), np.array([-1.2]))
    mean = S.render(rng, one, 1, noise=False)[0]
    assert mean.sum() == pytest.approx(4 * 7.5, rel=1e-4)  # gaussian_filter(mu) * 4
    y, x = np.unravel_index(mean.argmax(), mean.shape)
    px, py = S.deg_to_pix(0.3, -1.2)
    assert (x, y) == (round(float(px)), round(float(py)))
    many = S.Sources(np.arange(2000), np.full(2000, 7.5), np.full(2000, 0.3), np.full(2000, -1.2))
    maps = S.render(rng, many, 2000)
    assert np.allclose(maps.mean(0), mean, atol=0.01)
    assert np.allclose(maps[:, y, x].var(), mean[y, x] / 100, rtol=0.1)
    assert np.allclose(maps * 100, np.round(maps * 100), atol=1e-3)  # counts / 100


def test_sources_outside_the_map_are_lost_and_edges_do_not_reflect():
    rng = np.random.default_rng(3)
    out = S.Sources(np.array([0]), np.array([100.0]), np.array([45.0]), np.array([0.0]))
    assert S.render(rng, out, 1, noise=False).sum() == 0
    edge = S.Sources(np.array([0]), np.array([100.0]), np.array([39.9]), np.array([0.0]))
    m = S.render(rng, edge, 1, noise=False)[0]
    assert 0.5 * 400 < m.sum() < 400  # part of the PSF falls off the map (no mirror image)


def test_pixel_conversions_invert():
    x, y = S.deg_to_pix(np.array([-40.0, 0.0, 39.9]), np.array([-39.7, 12.3, 0.0]))
    lo, la = S.pix_to_deg(x, y)
    assert np.allclose(lo, [-40, 0, 39.9]) and np.allclose(la, [-39.7, 12.3, 0])
    assert S.deg_to_pix(-40.0 + S.PIXEL_DEG / 2, 0.0)[0] == pytest.approx(0.0)


def test_truncated_draws_match_scipy():
    rng = np.random.default_rng(4)
    sd = np.full(20000, 3.0)
    x = S.trunc_normal(rng, sd, np.full(20000, 1.0), np.full(20000, 2.5))
    assert x.min() >= 1.0 and x.max() <= 2.5
    ref = stats.truncnorm(1 / 3, 2.5 / 3, scale=3.0)
    assert x.mean() == pytest.approx(ref.mean(), abs=0.01)
    f = S.trunc_lognormal(rng, np.full(20000, 1.5), 20.0)
    assert f.min() >= 20.0
    ref = stats.truncnorm((np.log(20) - 1) / 1.5, np.inf, loc=1, scale=1.5)
    assert np.log(f).mean() == pytest.approx(ref.mean(), abs=0.02)
    # intervals deep in either tail, and one across zero
    for lo, hi in ((14.0, 16.0), (-39.0, -37.0), (-0.5, 2.0)):
        x = S.trunc_normal(rng, np.ones(5000), np.full(5000, lo), np.full(5000, hi))
        assert x.min() >= lo and x.max() <= hi
        assert x.mean() == pytest.approx(stats.truncnorm(lo, hi).mean(), abs=0.01)


def test_prior_map_equals_the_simulated_label_frequency():
    """The exact prior of r1's denominator against brute-force simulated labels."""
    p = prior_map(600, seed=5)
    rng = np.random.default_rng(6)
    theta = S.sample_prior(rng, 1500)
    lab = pixel_labels(S.sample_sources(rng, theta), len(theta))
    assert np.allclose(lab.mean((0, 2, 3)), p.mean((1, 2)), rtol=0.06)
    centre = lab[:, :, 56:72, 56:72].mean((0, 2, 3))
    assert np.allclose(centre, p[:, 56:72, 56:72].mean((1, 2)), rtol=0.08)
