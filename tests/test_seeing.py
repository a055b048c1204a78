"""The seeing check: the image's PSF width against the weights', from its most compact
bright sources, without the star/galaxy classifier."""

import warnings

import galsim
import numpy as np
import pytest

from probcat.catalog import FullCatalog
from probcat.measure import SEEING_COMPACT_MAX, measure_seeing, seeing_ratio, stellar_locus
from probcat.survey import Survey


def _field(scale: float, n_stars=30, n_galaxies=60, size=200, seed=0, hlr=(0.4, 1.0), e=0.0):
    """Stars with the survey's PSF at ``scale`` x its FWHM and larger galaxies (half-light
    radii uniform in ``hlr``, arcsec; ellipticities up to ``e``, random angles), bright and
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
            else galsim.Convolve(
                galsim.Exponential(half_light_radius=rng.uniform(*hlr)).shear(
                    e=rng.uniform(0, e), beta=rng.uniform(0, np.pi) * galsim.radians
                ),
                psf,
            )
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


def test_the_stellar_locus_is_a_spike_in_size_and_shape():
    """Stars alike in size and shape among galaxies are the locus, all of them (the
    brute-force windows about the chosen centre hold every star); galaxies alone, however
    many of nearly one size, or too few stars, are none."""
    rng = np.random.default_rng(3)
    n = 90
    gal = np.stack([rng.uniform(1.2, 2.5, n), rng.uniform(-0.3, 0.3, n), rng.uniform(-0.3, 0.3, n)])
    star = np.stack([1.3 * (1 + 0.004 * rng.standard_normal(12)), 0.01 * rng.standard_normal(12),
                     0.01 * rng.standard_normal(12)])  # fmt: skip
    s, e1, e2 = np.concatenate([star, gal], axis=1)
    got = stellar_locus(s, e1, e2)
    assert got is not None and got[:12].all()
    c = np.flatnonzero(got)

    # every member is within the windows of one centre among them, and nothing else is
    def windows(i):
        return (
            (np.abs(s / s[i] - 1) < 0.03)
            & (np.abs(e1 - e1[i]) < 0.05)
            & (np.abs(e2 - e2[i]) < 0.05)
        )

    centre = [i for i in c if np.array_equal(got, windows(i))]
    assert centre and s[centre[0]] <= np.median(s)
    assert np.median(s[got]) == pytest.approx(1.3, rel=0.005)
    assert stellar_locus(*gal) is None
    assert stellar_locus(*np.concatenate([star[:, :6], gal], axis=1)) is None  # under 8%
    # 30 galaxies of one size (2%) but every shape: the shape window rules them out
    same = np.stack([1.5 * (1 + 0.01 * rng.standard_normal(30)), rng.uniform(-0.3, 0.3, 30),
                     rng.uniform(-0.3, 0.3, 30)])  # fmt: skip
    assert stellar_locus(*np.concatenate([same, gal], axis=1)) is None
    # 40 round ones spread over 12% in size: a crowded stretch, not a spike
    crowd = np.stack([1.5 * rng.uniform(1, 1.12, 40), 0.02 * rng.standard_normal(40),
                      0.02 * rng.standard_normal(40)])  # fmt: skip
    assert stellar_locus(*np.concatenate([crowd, gal], axis=1)) is None
    assert stellar_locus(*np.concatenate([star, crowd, gal], axis=1))[:12].all()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_field_without_stars_is_not_read_as_wider_seeing(seed):
    """100 compact galaxies and no star: their sizes are 1.3-1.4 times the PSF's, which
    the most compact sources alone would have called the seeing; with a tenth of them
    stars under a 1.3 times wider PSF, the stars give it."""
    band = Survey.lsst(bands="i")["i"]
    for e in (0.5, 0.0):
        img, x, y = _field(1.0, n_stars=0, n_galaxies=100, hlr=(0.3, 0.6), e=e, seed=seed)
        got = measure_seeing(img, x, y, band)
        assert got.ratio is None and got.n == 100 and got.locus == 0
        assert got.compact > 1.25
    img, x, y = _field(1.3, n_stars=12, n_galaxies=88, hlr=(0.3, 0.6), e=0.5, seed=seed)
    got = measure_seeing(img, x, y, band)
    assert got.ratio == pytest.approx(1.3, rel=0.02) and 10 <= got.locus <= 14
    assert seeing_ratio(img, x, y, band) == (got.ratio, 100)


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
        got, ratio = det._seeing(img[None], cat)
        assert got["seeing_ratio"] == pytest.approx(scale, rel=0.04) == ratio
        assert got["seeing_sources"] == 90
        for matched in (False, True):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                det._warn_seeing(ratio, matched)
            msgs = [str(w.message) for w in caught if "as wide as the PSF" in str(w.message)]
            assert bool(msgs) == warns
            if warns:  # classes matched to the seeing: only the probabilities assume it
                assert ("and star/galaxy classes assume" in msgs[0]) != matched
        if warns:  # with a calibration fitted under a wider PSF, the warning names it
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                det._warn_seeing(ratio, True, 1.25)
            assert "calibration fitted under a PSF 1.25 times as wide" in str(caught[0].message)
    few = FullCatalog({"x": x[:3], "y": y[:3]}, img.shape, ("i",))
    assert det._seeing(img[None], few) == ({}, None)
    # no stars: no ratio, the record says so; galaxies as compact as these are under the
    # survey's PSF are no cause for a warning, wider or narrower ones say the seeing is
    # unknown, unless it was given
    img, x, y = _field(1.0, n_stars=0, n_galaxies=100, hlr=(0.3, 0.6), e=0.5)
    got, ratio = det._seeing(img[None], FullCatalog({"x": x, "y": y}, img.shape, ("i",)))
    assert ratio is None and got["seeing_locus"] == 0 and got["seeing_sources"] == 100
    assert "seeing_ratio" not in got and 1.25 < got["seeing_compact"] < SEEING_COMPACT_MAX
    for compact, warns in [
        (got["seeing_compact"], False),
        (1.1, False),
        (0.8, True),
        (SEEING_COMPACT_MAX, False),
        (SEEING_COMPACT_MAX + 0.01, True),
    ]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            det._warn_seeing(None, False, 1.0, {**got, "seeing_compact": compact})
            det._warn_seeing(None, True, 1.25, {**got, "seeing_compact": compact})  # given
        assert len(caught) == warns, compact
        if warns:
            assert "not alike enough to be stars" in str(caught[0].message)
            assert ("narrower" in str(caught[0].message)) == (compact < 1)


def test_resampled_stamps_show_the_psf_at_the_survey_width():
    """A Gaussian ``scale`` times wider than one of sigma 1.8 px, resampled, is that
    Gaussian (times ``scale``: the factor of DetectionNet.stamps) on the stamp's pixels;
    its offset from the centre pixel is in resampled pixels."""
    import torch

    from probcat.nets.detection import DetectionNet
    from probcat.nets.stamps import STAMP_SIZE

    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2)
    t = net.tile_size
    yy, xx = np.mgrid[:64, :64].astype(float)
    x0, y0 = 30.4, 33.0  # the source; centre pixel (30, 33)
    r = STAMP_SIZE // 2
    ar = np.arange(STAMP_SIZE) - r
    for scale in (0.8, 1.3, 1.6):
        sd = 1.8 * scale
        img = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sd**2))
        image = torch.tensor(img, dtype=torch.float32)[None, None]
        ty, tx = torch.tensor([int(y0 // t)]), torch.tensor([int(x0 // t)])
        # tile units: pixel i spans [i, i + 1), its centre at i + 0.5
        locs = torch.tensor([[(x0 + 0.5 - tx.item() * t) / t, (y0 + 0.5 - ty.item() * t) / t]])
        st, off = net.stamps(image, torch.tensor([0]), ty, tx, locs, scale)
        assert st.shape == (1, 1, STAMP_SIZE, STAMP_SIZE)
        assert off[0].tolist() == pytest.approx([0.4 / scale, 0.0], abs=1e-5)
        # brute force: bilinear interpolation at pixels scale px apart around (30, 33)
        got = st[0, 0].numpy() / scale
        for i, yi in enumerate(33 + ar * scale):
            for j, xj in enumerate(30 + ar * scale):
                y_, x_ = int(np.floor(yi)), int(np.floor(xj))
                fy, fx = yi - y_, xj - x_
                v = (img[y_, x_] * (1 - fy) * (1 - fx) + img[y_, x_ + 1] * (1 - fy) * fx
                     + img[y_ + 1, x_] * fy * (1 - fx) + img[y_ + 1, x_ + 1] * fy * fx)  # fmt: skip
                assert got[i, j] == pytest.approx(v, abs=1e-5)
        # and that is the survey-width Gaussian, to the interpolation's error
        want = np.exp(-((ar[None, :] - off[0, 0].item()) ** 2 + ar[:, None] ** 2) / (2 * 1.8**2))
        assert np.abs(got - want).max() < 0.06
    same = net.stamps(image, torch.tensor([0]), ty, tx, locs, 1.0)[0]
    centre = (round(y0), round(x0))
    assert same[0, 0].numpy() == pytest.approx(
        img[centre[0] - r : centre[0] + r + 1, centre[1] - r : centre[1] + r + 1], abs=1e-6
    )


def test_matched_scale_and_the_classifier_scale_restored():
    from probcat.errors import ProbcatValueError
    from probcat.infer.detect import at_seeing, matched_scale
    from probcat.nets.detection import DetectionNet

    assert matched_scale(None) == matched_scale(1.02) == matched_scale(0.975) == 1.0
    assert matched_scale(1.25) == 1.25 and matched_scale(0.8) == 0.8
    for bad in (0.0, -1.0, 9.0, float("nan"), "1.2"):
        with pytest.raises(ProbcatValueError, match="PSF width ratio"):
            matched_scale(bad)
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2)
    with at_seeing(net, 1.4):
        assert net.seeing_scale == 1.4
    assert net.seeing_scale == 1.0


def test_classes_at_the_image_seeing_leave_the_detections_alone(stamp_weights, monkeypatch):
    """seeing="auto" with a measured ratio of 1.4 classifies exactly as seeing=1.4 given,
    with the same detections as seeing="none"; the catalog says which seeing it used."""
    import probcat
    from probcat.errors import ProbcatValueError

    det = probcat.load(stamp_weights)
    img = _field(1.0, seed=2, size=96)[0]
    none = det.catalog(img, noise_sigma=1.0, threshold=0.0, seeing="none")
    given = det.catalog(img, noise_sigma=1.0, threshold=0.0, seeing=1.4)
    monkeypatch.setattr(det, "_seeing", lambda x, cat: ({"seeing_ratio": 1.4}, 1.4))
    auto = det.catalog(img, noise_sigma=1.0, threshold=0.0)
    assert len(none) == len(given) == len(auto) > 0
    for col in ("x", "y", "prob"):
        assert np.array_equal(none[col], auto[col]) and np.array_equal(none[col], given[col])
    assert np.array_equal(auto["galaxy_prob"], given["galaxy_prob"])
    assert not np.allclose(auto["galaxy_prob"], none["galaxy_prob"])
    assert auto.meta["input"]["seeing_matched"] == given.meta["input"]["seeing_matched"] == 1.4
    assert none.meta["input"]["seeing_matched"] == 1.0
    # posterior samples: classified at the same seeing, measured on the MAP catalog
    drawn = det.sample(img, 2, seed=5, noise_sigma=1.0)
    told = det.sample(img, 2, seed=5, noise_sigma=1.0, seeing=1.4)
    plain = det.sample(img, 2, seed=5, noise_sigma=1.0, seeing="none")
    for a, b, c in zip(drawn, told, plain):
        assert np.array_equal(a["x"], c["x"]) and np.array_equal(a["galaxy_prob"], b["galaxy_prob"])
        assert not np.allclose(a["galaxy_prob"], c["galaxy_prob"])
    for bad in ("wide", 0.0, True, 12):
        with pytest.raises(ProbcatValueError, match="seeing must be"):
            det.catalog(img, noise_sigma=1.0, seeing=bad)


def test_shipped_classes_hold_under_wider_seeing():
    """The shipped weights on stars and galaxies under 1.3x the survey's seeing (a tenth of
    ``_field``'s fluxes: SNR 100-3,000): read as trained, the stars look resolved; read
    at the measured seeing, they are stars."""
    import probcat

    det = probcat.load()
    img, x, y = _field(1.3, seed=3)
    rng = np.random.default_rng(4)
    img = (img / 10 + rng.normal(0, np.sqrt(0.99), img.shape)).astype(np.float32)
    star = np.arange(len(x)) < 30  # _field draws the stars first
    called = {}
    for mode in ("none", "auto"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cat = det.catalog(img, noise_sigma=1.0, seeing=mode, background="none")
        d = np.hypot(cat["x"][None] - x[:, None], cat["y"][None] - y[:, None])
        j = d.argmin(1)
        assert np.all(d[np.arange(len(x)), j] < 1.5)  # every source found
        galaxy = np.asarray(cat["galaxy_prob"])[j] > 0.5
        called[mode] = (np.mean(~galaxy[star]), np.mean(galaxy[~star]))
    assert cat.meta["input"]["seeing_matched"] == pytest.approx(1.3, rel=0.04)
    assert called["none"][0] < 0.5  # stars read as galaxies at the trained seeing
    assert called["auto"][0] > 0.9 and called["auto"][1] > 0.9
