import numpy as np
import pytest

from probcat.baselines.sep import SepConfig, gaussian_kernel, sep_detect
from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.simulate.scene import SceneConfig, SceneSimulator


def test_kernel_is_normalised_fwhm_2():
    k = gaussian_kernel(3, 2.0)
    assert k.shape == (3, 3) and k.sum() == pytest.approx(1.0)
    # FWHM 2 px: the value one pixel off centre is 2**-1 of the peak
    assert k[1, 2] / k[1, 1] == pytest.approx(0.5)


def test_sep_finds_isolated_stars(tiny_bank):
    sim = SceneSimulator(tiny_bank, SceneConfig(48, 48, galaxy_density=0, star_density=0))
    cols = sim.star_columns(
        np.array([0, 1]),
        np.array([21.0, 22.0]),
        np.zeros((2, 1)),
        np.array([12, 34]),
        np.array([30, 10]),
    )
    cat = sim.make_catalog([cols])
    image = sim.add_noise(np.random.default_rng(0), sim.compose(cat))
    det = sep_detect(image, sim.sigma, bands=("i",))
    assert isinstance(det, FullCatalog) and len(det) == 2
    order = np.argsort(det["x"])
    assert np.allclose(det["x"][order], cat["x"], atol=0.1)
    assert np.allclose(det["y"][order], cat["y"], atol=0.1)
    assert np.all(det["prob"] == 1.0) and det.bands == ("i",)


def test_sep_on_pure_noise_finds_few(tiny_bank):
    img = np.random.default_rng(1).standard_normal((1, 64, 64)) * 434.5
    det = sep_detect(img, 434.5)
    assert len(det) < 10
    assert det.meta["thresh"] == SepConfig().thresh


def test_sep_rejects_bad_sigma():
    with pytest.raises(ProbcatValueError):
        sep_detect(np.zeros((16, 16)), 0.0)


def test_riz_coadd_is_the_unit_noise_sum_of_r_i_z():
    from probcat.baselines.sep import riz_coadd

    img = np.arange(6 * 2 * 3, dtype=float).reshape(6, 2, 3)
    want = (img[2] + img[3] + img[4]) / np.sqrt(3)  # r, i, z of ugrizy
    np.testing.assert_allclose(riz_coadd(img, "ugrizy"), want)
    noise = riz_coadd(np.random.default_rng(0).standard_normal((6, 200, 200)), "ugrizy")
    assert noise.std() == pytest.approx(1.0, rel=0.02)
