import numpy as np
import pytest

from probcat.simulate.render import render_direct
from probcat.simulate.scene import SceneConfig, SceneSimulator


def test_composed_scene_matches_direct_galsim(tiny_bank, rng):
    sim = SceneSimulator(tiny_bank, SceneConfig(40, 48, galaxy_density=1500, star_density=200))
    scene = sim.sample(rng, keep_noiseless=True)
    assert len(scene.catalog) > 5
    direct = render_direct(scene.catalog, tiny_bank.survey, (40, 48))
    diff = np.abs(direct - scene.noiseless).max() / tiny_bank.survey.noise_sigma[0]
    assert diff < 0.1


def test_scene_catalog_columns_and_truth(tiny_bank, rng):
    sim = SceneSimulator(tiny_bank, SceneConfig(32, 32, galaxy_density=2000, star_density=300))
    s = sim.sample(rng)
    c = s.catalog
    assert s.image.shape == (1, 32, 32) and s.image.dtype == np.float32
    assert np.all((c["x"] >= -0.5) & (c["x"] < 31.5) & (c["y"] >= -0.5) & (c["y"] < 31.5))
    assert c["flux"].shape == (len(c), 1) and c["snr"].shape == (len(c), 1)
    assert np.all((c["blendedness"] >= 0) & (c["blendedness"] <= 1))
    stars = ~c["galaxy"]
    assert np.all(c["source_id"][stars] == -1) and np.all(np.isnan(c["disk_hlr"][stars]))
    assert np.allclose(c["mag"][:, 0], tiny_bank.survey["i"].flux_to_mag(c["flux"][:, 0]))


def test_counts_follow_density(tiny_bank):
    sim = SceneSimulator(tiny_bank, SceneConfig(98, 98))
    rng = np.random.default_rng(0)
    cats = [sim.sample_catalog(rng) for _ in range(300)]
    area = (98 * 0.2 / 60) ** 2
    n_gal = np.mean([c["galaxy"].sum() for c in cats]) / area
    n_star = np.mean([(~c["galaxy"]).sum() for c in cats]) / area
    assert n_gal == pytest.approx(160, rel=0.1)
    assert n_star == pytest.approx(15.5, rel=0.2)


def test_noise_is_background_limited_gaussian(tiny_bank, rng):
    sim = SceneSimulator(tiny_bank, SceneConfig(64, 64, galaxy_density=0, star_density=0))
    img = sim.sample(rng).image
    assert img.std() == pytest.approx(tiny_bank.survey.noise_sigma[0], rel=0.05)
    assert abs(img.mean()) < 0.05 * tiny_bank.survey.noise_sigma[0]


def test_poisson_noise_includes_source_photons(tiny_bank, rng):
    sim = SceneSimulator(
        tiny_bank, SceneConfig(64, 64, galaxy_density=0, star_density=0, noise="poisson")
    )
    flat = np.full((1, 64, 64), 4e5, np.float32)
    noisy = sim.add_noise(rng, flat)
    expected = np.sqrt(4e5 + tiny_bank.survey.noise_sigma[0] ** 2)
    assert noisy.std() == pytest.approx(expected, rel=0.05)
    assert noisy.mean() == pytest.approx(4e5, rel=0.01)


def test_same_rng_same_scene(tiny_bank):
    sim = SceneSimulator(tiny_bank, SceneConfig(32, 32))
    a = sim.sample(np.random.default_rng(7))
    b = sim.sample(np.random.default_rng(7))
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.catalog["x"], b.catalog["x"])
