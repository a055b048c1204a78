import filecmp

import numpy as np
import pytest

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.io import read_image
from probcat.simulate.datasets import Simulation, SimulationConfig, write_dataset

SMALL = dict(bank_size=24, n=2, seed=5)


@pytest.fixture(scope="module")
def sims(cache_dir):
    return {
        r: Simulation(
            SimulationConfig(recipe=r, **SMALL), cache_dir=cache_dir, workers=1, progress=False
        )
        for r in ("blend", "single", "tiles", "central", "pair")
    }


def test_single_is_one_centred_galaxy(sims):
    scene, extras = sims["single"].scene(0)
    assert scene.image.shape == (1, 53, 53) and not extras
    c = scene.catalog
    assert len(c) == 1 and c["x"][0] == 26 and c["y"][0] == 26 and c["galaxy"][0]


def test_images_tile_the_sky_in_rows_that_stop_at_the_pole(sims):
    """Image i's WCS: 100 images per row side by side, rows stacked north from the field
    centre; past the pole the rows start again (their dec went beyond 90: NaN positions)."""
    sim = sims["single"]
    step = 53 * 0.2 / 3600.0
    ra0, dec0 = sim.wcs(0).wcs.crval
    assert (ra0, dec0) == (56.0, -30.0)
    ra1, dec1 = sim.wcs(1).wcs.crval
    assert dec1 == dec0 and (ra1 - ra0) * np.cos(np.radians(dec0)) == pytest.approx(step)
    assert sim.wcs(100).wcs.crval[1] == pytest.approx(dec0 + step)
    rows = int(120.0 // step) + 1
    top = sim.wcs(100 * (rows - 1) + 7).wcs.crval
    assert 90.0 - step < top[1] <= 90.0
    assert tuple(sim.wcs(100 * rows + 7).wcs.crval) == tuple(sim.wcs(7).wcs.crval)


def test_tiles_has_one_galaxy_in_central_tile_and_centred_redraw(sims):
    for i in range(2):
        scene, extras = sims["tiles"].scene(i)
        c = scene.catalog
        inside = (np.abs(c["x"] - 26) <= 2.5) & (np.abs(c["y"] - 26) <= 2.5)
        inside &= (c["x"] < 28.5) & (c["y"] < 28.5)
        assert inside.sum() == 1 and c["galaxy"][inside][0]
        centred = extras["centered"]
        assert centred.shape == scene.image.shape
        # same noise: the difference is noiseless source light only
        diff = scene.image - centred
        assert np.abs(diff[:, :3, :3]).max() < np.abs(scene.image).max()


def test_central_galaxy_is_gold_and_centred(sims):
    scene, _ = sims["central"].scene(0)
    c = scene.catalog
    assert c["x"][0] == 36 and c["y"][0] == 36 and c["mag"][0, 0] < 25.3
    assert np.all(c["galaxy"])
    others = (np.abs(c["x"][1:] - 36) < 2.5) & (np.abs(c["y"][1:] - 36) < 2.5)
    assert not others.any()


def test_pair_shares_noise_and_steps_separation(sims):
    s0, _ = sims["pair"].scene(0)
    s1, _ = sims["pair"].scene(1)
    assert s0.catalog["separation"][0] == 0.0 and s1.catalog["separation"][0] == pytest.approx(0.1)
    assert np.allclose(s0.image - s0.noiseless, s1.image - s1.noiseless)
    assert s1.catalog["x"][1] - s1.catalog["x"][0] == pytest.approx(0.1)


def test_same_seed_identical_files(tmp_path, cache_dir):
    cfg = SimulationConfig(recipe="blend", **SMALL)
    for d in ("a", "b"):
        write_dataset(
            cfg, tmp_path / d, cache_dir=cache_dir, workers=1, progress=False, command="test"
        )
    for rel in ("images/image_00000.fits", "images/image_00001.fits", "truth.fits", "config.yaml"):
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel
    img = read_image(tmp_path / "a/images/image_00001.fits")
    assert img.wcs is not None and img.bands == ("i",)
    assert img.noise_sigma[0] == pytest.approx(434.5, abs=0.1)
    truth = FullCatalog.read(tmp_path / "a/truth.fits")
    assert set(np.unique(truth["image"])) <= {0, 1}
    assert {"ra", "dec", "snr", "blendedness"} <= set(truth.colnames)


@pytest.mark.slow
def test_multiband_blend(cache_dir):
    cfg = SimulationConfig(
        recipe="blend", bands="gri", population="dc2", bank_size=12, n=1, size=32
    )
    scene, _ = Simulation(cfg, cache_dir=cache_dir, workers=1, progress=False).scene(0)
    assert scene.image.shape == (3, 32, 32)
    gal = scene.catalog["galaxy"]
    assert np.all(np.isfinite(scene.catalog["redshift"][gal]))
    assert scene.catalog["flux"].shape[1] == 3


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(recipe="bogus"), "unknown recipe"),
        (dict(n=0), "n must be"),
        (dict(recipe="pair", n=500), "at most 201"),
    ],
)
def test_bad_config(kw, msg):
    with pytest.raises(ProbcatValueError, match=msg):
        SimulationConfig(**kw)


def test_dataset_written_before_a_config_field_existed_still_resumes(tmp_path):
    import json
    from dataclasses import asdict

    from probcat.simulate.datasets import RUN_STATE, claim_directory

    cfg = SimulationConfig(recipe="blend", n=2, bank_size=8)
    old = {k: v for k, v in asdict(cfg).items() if k not in ("val_to_train", "keep_gold")}
    (tmp_path / "images").mkdir()
    (tmp_path / RUN_STATE).write_text(json.dumps(old))
    assert claim_directory(cfg, tmp_path) == 0  # the missing fields read as their defaults
    with pytest.raises(ProbcatValueError, match="keep_gold"):
        claim_directory(
            SimulationConfig(recipe="blend", n=2, bank_size=8, keep_gold=True), tmp_path
        )
