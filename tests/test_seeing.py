"""The seeing check: the image's PSF width against the weights', from its most compact
bright sources, without the star/galaxy classifier."""

import warnings

import galsim
import numpy as np
import pytest

from probcat.catalog import FullCatalog
from probcat.measure import seeing_ratio
from probcat.survey import Survey


def _field(scale: float, n_stars=30, n_galaxies=60, size=200, seed=0):
    """Stars with the survey's PSF at ``scale`` x its FWHM and larger galaxies, bright and
    apart, in unit noise; their positions."""
    rng = np.random.default_rng(seed)
    band = Survey.lsst(bands="i").with_psf_scale(scale)["i"]
    psf = band.psf()
    img = galsim.ImageF(size, size, scale=band.pixel_scale)
    grid = [(x, y) for x in range(15, size - 14, 17) for y in range(15, size - 14, 17)]
    picks = rng.permutation(len(grid))[: n_stars + n_galaxies]
    xs, ys = [], []
    for j, g in enumerate(picks):
        x, y = grid[g][0] + rng.uniform(-0.5, 0.5), grid[g][1] + rng.uniform(-0.5, 0.5)
        obj = (
            psf
            if j < n_stars
            else galsim.Convolve(galsim.Exponential(half_light_radius=rng.uniform(0.4, 1.0)), psf)
        )
        flux = rng.uniform(3e3, 2e4) if j < n_stars else rng.uniform(2e4, 6e4)
        stamp = obj.withFlux(flux).drawImage(nx=25, ny=25, scale=band.pixel_scale,
                                             offset=(x - round(x), y - round(y)))  # fmt: skip
        stamp.setCenter(round(x) + 1, round(y) + 1)  # GalSim images start at 1
        bounds = stamp.bounds & img.bounds
        img[bounds] += stamp[bounds]
        xs.append(x)
        ys.append(y)
    noisy = img.array + rng.standard_normal(img.array.shape).astype(np.float32)
    return noisy, np.array(xs), np.array(ys)


@pytest.mark.parametrize("scale", [1.0, 1.3, 0.8])
def test_seeing_ratio_recovers_the_psf_width_among_galaxies(scale):
    img, x, y = _field(scale)
    band = Survey.lsst(bands="i")["i"]
    ratio, n = seeing_ratio(img, x, y, band)
    assert n == 90
    assert ratio == pytest.approx(scale, rel=0.04)


def test_too_few_bright_isolated_sources_give_no_ratio():
    img, x, y = _field(1.0, n_stars=4, n_galaxies=4)
    assert seeing_ratio(img, x, y, Survey.lsst(bands="i")["i"]) == (None, 8)
    # sources closer than the isolation radius do not count
    assert seeing_ratio(img, np.r_[x, x + 3], np.r_[y, y], Survey.lsst(bands="i")["i"])[1] == 0


def test_the_detector_records_the_ratio_and_warns_beyond_the_factor(weights):
    import probcat

    det = probcat.load(weights)
    for scale, warns in ((1.0, False), (1.3, True)):
        img, x, y = _field(scale, seed=1)
        cat = FullCatalog({"x": x, "y": y}, img.shape, ("i",))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = det._seeing(img[None], cat)
        assert got["seeing_ratio"] == pytest.approx(scale, rel=0.04)
        assert got["seeing_sources"] == 90
        msgs = [str(w.message) for w in caught if "as wide as the PSF" in str(w.message)]
        assert bool(msgs) == warns
    assert det._seeing(img[None], FullCatalog({"x": x[:3], "y": y[:3]}, img.shape, ("i",))) == {}
