import numpy as np
import pytest

from probcat.errors import ProbcatValueError
from probcat.simulate.bank import BankConfig, SourceBank
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


def test_a_scene_at_other_noise_has_its_sources_and_that_noise(tiny_bank):
    sim = SceneSimulator(tiny_bank, SceneConfig(64, 64, galaxy_density=2000, star_density=300))
    same = sim.sample_at_noise(np.random.default_rng(3), 1.0)
    assert np.array_equal(same.image, sim.sample(np.random.default_rng(3)).image)
    own = sim.sample(np.random.default_rng(3), keep_noiseless=True)
    deep = sim.sample_at_noise(np.random.default_rng(3), 3.0)
    assert np.array_equal(deep.catalog["x"], own.catalog["x"])  # the same sources
    sigma = tiny_bank.survey.noise_sigma[0]
    assert (deep.image - own.noiseless).std() == pytest.approx(3.0 * sigma, rel=0.05)


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


def _second_moment(stamp):
    s = stamp / stamp.sum()
    yy, xx = np.mgrid[: s.shape[0], : s.shape[1]]
    cy, cx = (s * yy).sum(), (s * xx).sum()
    return float((s * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum())


def test_seeing_mixture_draws_each_scene_from_one_psf_width(survey_i, cache_dir):
    """Each scene is exactly the scene its simulator gives after the mixture's draw (same
    generator), both widths occur, and the wider bank's stars are wider."""
    from probcat.simulate.scene import SeeingMixture

    cfg = BankConfig(n_galaxies=8, n_star_phases=2, split="train")
    banks = [
        SourceBank.load_or_build(
            survey_i.with_psf_scale(s), cfg, cache_dir=cache_dir, workers=1, progress=False
        )
        for s in (1.0, 1.6)
    ]
    m2 = [_second_moment(b.star_stamps[0, 0]) for b in banks]
    assert m2[1] > 1.8 * m2[0]  # FWHM x 1.6 (with the same optics): second moment ~x 2.3
    sims = [SceneSimulator(b, SceneConfig(32, 32)) for b in banks]
    mix = SeeingMixture(sims, (1.0, 1.6))
    assert mix.bank is banks[0]
    rng, ref = np.random.default_rng(5), np.random.default_rng(5)
    drawn = set()
    for _ in range(12):
        scene = mix.sample(rng)
        k = int(ref.integers(2))
        drawn.add(k)
        np.testing.assert_array_equal(scene.image, sims[k].sample(ref).image)
    assert drawn == {0, 1}
    with pytest.raises(ProbcatValueError, match="scale 1"):
        SeeingMixture(sims, (0.8, 1.6))
    with pytest.raises(ProbcatValueError, match="one scene layout"):
        SeeingMixture([sims[0], SceneSimulator(banks[1], SceneConfig(40, 40))], (1.0, 1.6))
    # another layout: the same banks and scales, every member with the new layout
    wide = mix.with_layout(SceneConfig(32, 32, margin=4))
    assert isinstance(wide, SeeingMixture) and wide.scales == mix.scales
    assert [s.bank for s in wide.sims] == banks
    assert {s.config.margin for s in wide.sims} == {4} and mix.config.margin == 0
    rng, ref = np.random.default_rng(6), np.random.default_rng(6)
    scene = wide.sample(rng)
    k = int(ref.integers(2))
    np.testing.assert_array_equal(
        scene.image, SceneSimulator(banks[k], SceneConfig(32, 32, margin=4)).sample(ref).image
    )
