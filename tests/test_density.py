"""Detection probabilities read under an image's own source density (probcat.infer.density)."""

import numpy as np
import pytest
from astropy.table import Table
from scipy.stats import nbinom

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.infer import density as dens
from probcat.infer.reliability import _interp

# bright detections per Mpx at each factor, and maps: noise alone makes nothing real,
# a sparse sky halves the odds of a middling detection, a crowded one raises them
FACTORS = (0.0, 0.1, 1.0, 2.0)
RATES = (0.0, 100.0, 1000.0, 2000.0)
MAPS = (
    ((0.5, 1.0), (0.0, 0.0)),
    ((0.5, 0.9, 1.0), (0.2, 0.6, 1.0)),
    None,
    ((0.5, 1.0), (0.6, 1.0)),
)


def _cal() -> dens.DensityCalibration:
    return dens.DensityCalibration(FACTORS, RATES, MAPS)


def _catalog(prob, snr, shape=(400, 400)) -> FullCatalog:
    n = len(prob)
    return FullCatalog(
        {
            "x": np.linspace(10, 300, n),
            "y": np.linspace(20, 200, n),
            "prob": np.asarray(prob, float),
            "prob_raw": np.asarray(prob, float),
            "detection_snr": np.asarray(snr, float),
        },
        shape,
    )


def test_factor_weights_are_the_negative_binomial_posterior_brute_force():
    from dataclasses import replace

    cal = replace(_cal(), refine=1, extend=1.0)  # the calibrated factors alone
    area = 250_000.0  # 0.25 Mpx
    r = 1.0 / dens.DISPERSION**2
    for n in (0, 3, 25, 240, 520):
        means = np.maximum(RATES, dens.RATE_FLOOR) * area / 1e6
        like = np.array([nbinom.pmf(n, r, r / (r + m)) for m in means])
        prior = np.array([0.5 / 3, 0.5 / 3, dens.PRIOR_SAME, 0.5 / 3])
        want = like * prior / np.sum(like * prior)
        np.testing.assert_allclose(cal.weights(n, area), want, rtol=1e-9, atol=1e-300)
    # the likeliest factor is the one whose rate the count matches
    assert FACTORS[int(np.argmax(cal.weights(25, area)))] == 0.1
    assert FACTORS[int(np.argmax(cal.weights(0, area)))] == 0.0
    assert FACTORS[int(np.argmax(cal.weights(500, area)))] == 2.0
    # no area, no evidence: the prior
    np.testing.assert_allclose(cal.weights(0, 0.0)[2], dens.PRIOR_SAME, rtol=1e-6)


def test_densities_between_the_factors_brute_force():
    from dataclasses import replace

    cal = replace(_cal(), refine=4)
    area = 250_000.0
    # the grid by hand: 4 steps from 0 to 0.1 (linear), from 0.1 to 1, 1 to 2 and beyond the
    # last factor to twice it (log)
    f = np.concatenate([[0.0], 0.1 * np.arange(1, 5) / 4, 0.1 * 10 ** (np.arange(1, 5) / 4),
                        2 ** (np.arange(1, 5) / 4), 2 * 2 ** (np.arange(1, 5) / 4)])  # fmt: skip
    np.testing.assert_allclose(cal.grid()[0], f, rtol=1e-12)
    # rates linear in the density between the factors, the last interval's slope beyond
    rate = np.where(f <= 2, np.interp(f, FACTORS, RATES), 2000.0 + 1000.0 * (f - 2))
    r = 1.0 / dens.DISPERSION**2
    # the prior's density and noise alone keep the calibrated factors' prior (0.5, 0.5 / 3),
    # the densities between them share the rest
    point = np.where(f == 1.0, dens.PRIOR_SAME, np.where(f == 0.0, 0.5 / 3, 0.0))
    prior = np.where(point > 0, point, (1 - point.sum()) / (len(f) - 2))
    # each density's share of the factor above it: log from 0.1 on, linear below; beyond 2,
    # all of it 2's
    lo = np.searchsorted(FACTORS, f, side="right") - 1
    lo = np.minimum(lo, len(FACTORS) - 2)
    a, b = np.asarray(FACTORS)[lo], np.asarray(FACTORS)[lo + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(a == 0, f / b, np.log(f / a) / np.log(b / a))
    u = np.where(f > 2, 1.0, u)
    for n in (0, 3, 25, 60, 240, 400, 520):
        means = np.maximum(rate, dens.RATE_FLOOR) * area / 1e6
        post = np.array([nbinom.pmf(n, r, r / (r + m)) for m in means]) * prior
        post /= post.sum()
        want = np.zeros(len(FACTORS))
        np.add.at(want, lo, post * (1 - u))
        np.add.at(want, lo + 1, post * u)
        np.testing.assert_allclose(cal.weights(n, area), want, rtol=1e-9, atol=1e-12)
        assert cal.mean(n, area) == pytest.approx(np.sum(f * post), rel=1e-9)
    # a sky at 0.3 times the prior's density, read on 10 Mpx: about 0.3, by the maps of 0.1
    # and 1 in proportion to its place between them in log density
    big, cal = 1e7, replace(cal, refine=12)
    w = cal.weights(3000, big)
    assert cal.mean(3000, big) == pytest.approx(0.3, rel=0.05)
    assert w[0] < 1e-6 and w[3] < 1e-6
    assert w[2] == pytest.approx(np.log(3) / np.log(10), abs=0.06)
    p = np.array([0.5, 0.7, 0.9, 0.99])
    f, post = cal.posterior(3000, big)
    inside = (f >= 0.1) & (f <= 1.0)  # where the weight is (w[0], w[3] above)
    f, post = f[inside], post[inside] / post[inside].sum()
    uf = np.log(f / 0.1) / np.log(10.0)  # each density's place between 0.1 and 1
    lo, hi = dens.mapped(p, MAPS[1]), p  # the 0.1 map and the identity at 1
    z = (1 - uf[:, None]) * np.log(lo / (1 - lo)) + uf[:, None] * np.log(hi / (1 - hi))
    want = np.sum(post[:, None] / (1 + np.exp(-z)), axis=0)  # log odds interpolated
    np.testing.assert_allclose(cal(p, 3000, big)[0], want, rtol=1e-5)
    # between noise alone and 0.1: the 0.1 map's odds scaled by the density over 0.1
    got = cal.mapped_at(p, MAPS, 0, 0.25, 0.025)
    g = 0.25 * dens.mapped(p, MAPS[1]) / (1 - dens.mapped(p, MAPS[1]))
    np.testing.assert_allclose(got, g / (1 + g))
    # a sky three times as crowded as the prior's reads about 3, by the map of 2
    assert cal.mean(30_000, big) == pytest.approx(3.0, rel=0.05)
    assert cal.weights(30_000, big)[3] == pytest.approx(1.0)
    # at a calibrated factor's own rate it reads that factor, as the factors alone did
    assert cal.weights(1000, big)[1] > 0.9 and cal.weights(10_000, big)[2] > 0.9


def test_probabilities_follow_the_maps_of_the_image_density():
    cal = _cal()
    p = np.array([0.5, 0.7, 0.9, 1.0])
    got, w = cal(p, 250, 250_000.0)  # the prior's density: the identity
    assert w[2] > 0.99
    np.testing.assert_allclose(got, p, atol=0.01)
    got, w = cal(p, 250, 2_500_000.0)  # a tenth: the 0.1 map, read between its knots
    assert w[1] > 0.9
    np.testing.assert_allclose(got, np.interp(p, [0, 0.5, 0.9, 1.0], [0, 0.2, 0.6, 1.0]), atol=0.06)


def test_at_density_drops_what_it_moves_below_the_threshold_and_records_it():
    cal = _cal()
    # an empty 400 x 400 sky: no bright detection, three bumps of which one was below 0.5
    cat = _catalog([0.95, 0.8, 0.4], [6.0, 4.0, 3.0])
    out = dens.at_density(cat, cal, 160_000.0, threshold=0.5)
    rec = out.meta["density"]
    assert rec["applied"] and rec["factor"] == 0.0 and rec["bright_detections"] == 0
    assert rec["dropped"] == 2  # the two it moved below 0.5; the third was below already
    assert len(out) == 1 and out["prob"][0] < 0.01 and out["prob_raw"][0] == 0.4
    # one bright galaxy on that sky: real at any density, it keeps its probability
    lone = _catalog([0.999, 0.95, 0.8], [40.0, 6.0, 4.0])
    out = dens.at_density(lone, cal, 160_000.0, threshold=0.5)
    assert out.meta["density"]["factor"] == 0.0 and out.meta["density"]["bright_detections"] == 1
    assert len(out) == 1 and abs(out["prob"][0] - 0.999) < 1e-9
    # at the prior's density nothing moves
    n = 160  # 1000 per Mpx on 0.16 Mpx
    same = _catalog(np.full(n, 0.8), np.full(n, 20.0))
    out = dens.at_density(same, cal, 160_000.0, threshold=0.5)
    assert out.meta["density"]["factor"] == 1.0 and out.meta["density"]["dropped"] == 0
    np.testing.assert_allclose(out["prob"], 0.8, atol=1e-3)


def test_at_density_leaves_small_images_other_seeing_or_depth_and_bare_catalogues_alone():
    cal = _cal()
    cat = _catalog([0.95, 0.8], [6.0, 4.0], shape=(64, 64))
    for area, seeing, noise in ((64 * 64, 1.0, 1.0), (160_000, 1.5, 1.0), (160_000, 1.0, 2.0)):
        out = dens.at_density(cat, cal, area, 0.5, seeing, noise)
        assert not out.meta["density"]["applied"] and out.meta["density"]["reason"]
        np.testing.assert_array_equal(out["prob"], cat["prob"])
    # nothing to count bright detections by: not read as an empty sky
    bare = FullCatalog({k: cat[k] for k in ("x", "y", "prob", "prob_raw")}, (400, 400))
    out = dens.at_density(bare, cal, 160_000, 0.5)
    assert not out.meta["density"]["applied"] and len(out) == 2


def test_maps_scale_the_odds_below_their_first_knot():
    xy = ((0.5, 0.9, 1.0), (0.2, 0.6, 1.0))
    p = np.linspace(0.0, 1.0, 201)
    got = dens.mapped(p, xy)
    above = p >= 0.5
    np.testing.assert_allclose(got[above], np.interp(p[above], *xy))
    # below 0.5 the odds are those of p times the knot's factor, (0.2/0.8) / (0.5/0.5)
    q = p[~above]
    np.testing.assert_allclose(got[~above], 0.25 * q / (0.25 * q + 1 - q))
    assert np.all(np.diff(got) >= 0) and got[0] == 0.0  # monotone, none real at 0
    assert abs(dens.mapped(0.5 - 1e-9, xy) - 0.2) < 1e-8  # continuous at the knot
    # a map whose first knot is the origin is read as it is
    np.testing.assert_allclose(dens.mapped([0.0, 0.25], ((0.0, 0.5), (0.0, 0.1))), [0.0, 0.05])


def test_keep_probability_is_the_mapped_probability_over_the_probability():
    cal = _cal()
    p = np.array([0.05, 0.3, 0.5, 0.7, 0.95])
    # the prior's density keeps everything; noise alone keeps no faint source
    np.testing.assert_allclose(dens.keep_probability(cal, p, 250, 250_000.0), 1.0, atol=0.01)
    # (an empty 0.25 Mpx sky leaves room for a density of a thousandth: almost nothing)
    np.testing.assert_allclose(dens.keep_probability(cal, p, 0, 250_000.0), 0.0, atol=5e-3)
    # a tenth of it: mostly the 0.1 map over p (the odds scaled below its first knot), the
    # maps around it in proportion to their weights
    w = cal.weights(25, 250_000.0)
    assert w[1] > 0.8
    got = dens.keep_probability(cal, p, 25, 250_000.0)
    np.testing.assert_allclose(got, np.minimum(cal(p, 25, 250_000.0)[0] / p, 1.0), rtol=1e-12)
    np.testing.assert_allclose(got, dens.mapped(p, MAPS[1]) / p, atol=0.1)
    assert np.all(np.diff(got) >= 0)  # fainter bumps are thinned more
    # where the density raises a probability, thinning keeps the source (ratio capped at 1)
    assert np.all(dens.keep_probability(cal, p, 500, 250_000.0) == 1.0)
    # no bright map for noise alone: a bright source keeps its probability there
    got = dens.keep_probability(cal, [0.9, 0.9], 0, 250_000.0, snr=[30.0, 5.0])
    np.testing.assert_allclose(got, [1.0, 0.0], atol=5e-3)


def _samples(n: int, prob, tiles) -> list:
    ty, tx = np.asarray(tiles).T
    return [
        FullCatalog(
            {
                "x": 4.0 * tx + 2,
                "y": 4.0 * ty + 2,
                "prob": np.asarray(prob, float),
                "tile_x": tx,
                "tile_y": ty,
            },  # fmt: skip
            (400, 400),
        )
        for _ in range(n)
    ]


def test_thinned_samples_hold_each_source_as_often_as_its_density_says():
    cal = _cal()
    # a MAP catalogue at a tenth of the prior's density (25 bright detections on 0.25 Mpx)
    tiles = [(10 + k, 20) for k in range(25)] + [(50, 50), (60, 60)]
    prob = np.r_[np.full(25, 0.99), 0.7, 0.95]
    cat = FullCatalog(
        {
            "x": np.zeros(27),
            "y": np.zeros(27),
            "prob": prob,
            "prob_raw": prob,
            "detection_snr": np.r_[np.full(25, 30.0), 5.0, 5.0],
            "tile_y": np.asarray(tiles)[:, 0],
            "tile_x": np.asarray(tiles)[:, 1],
        },  # fmt: skip
        (500, 500),
    )
    # samples: the MAP's faint detections' tiles (their prob in a sample is the sample's own,
    # 0.5, but the MAP's calibrated one counts) and one tile only the samples hold (0.3)
    draws = _samples(4000, [0.5, 0.5, 0.3], [(50, 50), (60, 60), (70, 70)])
    out = dens.thin_samples(draws, cat, cal, 250_000.0, seed=3)
    kept = np.array([[(t in zip(s["tile_y"], s["tile_x"])) for t in ((50, 50), (60, 60), (70, 70))]
                     for s in out])  # fmt: skip
    w = cal.weights(25, 250_000.0)
    want = [dens.keep_probability(cal, p, 25, 250_000.0)[()] for p in (0.7, 0.95, 0.3)]
    np.testing.assert_allclose(kept.mean(0), want, atol=0.025)  # 4000 draws: 3 sigma
    rec = out[0].meta["density"]
    assert rec["applied"] and rec["factor"] == 0.1 and abs(rec["weights"]["0.1"] - w[1]) < 1e-3
    assert rec["thinned"] == 3 - len(out[0])
    # each sample's draw is fixed by the seed, its index and the tile: the first 10 of 4000
    # are the 10 alone; another seed, other draws
    again = dens.thin_samples(draws[:10], cat, cal, 250_000.0, seed=3)
    assert [len(a) for a in again] == [len(s) for s in out[:10]]
    other = dens.thin_samples(draws[:200], cat, cal, 250_000.0, seed=4)
    assert [len(a) for a in other] != [len(s) for s in out[:200]]
    # an empty sample among others stays empty, the others thinned as alone
    empty = draws[0].select(np.zeros(3, bool))
    mixed = dens.thin_samples([draws[0], empty, draws[1]], cat, cal, 250_000.0, seed=3)
    assert len(mixed[1]) == 0 and mixed[1].meta["density"]["thinned"] == 0
    assert len(mixed[0]) == len(out[0])
    # a cutout keeps the prior's density: nothing thinned, and the samples say why
    small = dens.thin_samples(draws[:2], cat, cal, 50_000.0, seed=3)
    assert all(len(s) == 3 and not s.meta["density"]["applied"] for s in small)


def test_each_seeing_and_depth_reads_the_density_calibration_fitted_there():
    from dataclasses import replace

    main, wide = _cal(), replace(_cal(), seeing_factor=1.25)
    deep = replace(_cal(), noise_factor=0.7071)
    assert dens.choose((main, wide, deep), 1.25, 1.0) is wide
    assert dens.choose((main, wide, deep), 1.0, 0.7071) is deep
    assert dens.choose((main, wide, deep), 1.0, 1.0) is main
    assert dens.choose((main, wide, deep), 1.5, 1.0) is None
    cat = _catalog([0.7, 0.9], [5.0, 5.0])
    # the wide one applies under its seeing only; the survey's, there, does not
    assert dens.at_density(cat, wide, 160_000.0, 0.5, 1.25, 1.0).meta["density"]["applied"]
    assert not dens.at_density(cat, wide, 160_000.0, 0.5, 1.0, 1.0).meta["density"]["applied"]
    assert not dens.at_density(cat, main, 160_000.0, 0.5, 1.25, 1.0).meta["density"]["applied"]
    back = dens.DensityCalibration.from_dict(deep.to_dict())
    assert (back.seeing_factor, back.noise_factor) == (1.0, 0.7071)
    # records without the two (before they were recorded) are the survey's own
    old = {k: v for k, v in main.to_dict().items() if not k.endswith("_factor")}
    assert dens.DensityCalibration.from_dict(old) == main


def test_density_calibration_round_trips_and_refuses_bad_records():
    cal = _cal()
    back = dens.DensityCalibration.from_dict(cal.to_dict())
    p = np.linspace(0.4, 1.0, 7)
    for n in (0, 30, 250):
        np.testing.assert_allclose(back(p, n, 250_000.0)[0], cal(p, n, 250_000.0)[0])
    with pytest.raises(ProbcatValueError):
        dens.DensityCalibration.from_dict({"kind": "layout"})
    with pytest.raises(ProbcatValueError):
        dens.DensityCalibration((0.0, 0.1), (0.0, 10.0), (None, None))  # no factor 1
    with pytest.raises(ProbcatValueError, match="increase"):  # factors out of order
        dens.DensityCalibration((1.0, 0.1), (1000.0, 100.0), (None, MAPS[1]))
    with pytest.raises(ProbcatValueError, match="extend"):
        dens.DensityCalibration(FACTORS, RATES, MAPS, extend=0.5)


def test_fit_measures_rates_and_maps_from_scenes_of_each_density():
    # scene stand-ins: at factor f, 10 f bright real sources, as many faint real ones and
    # two noise bumps; the faint and the bright detections get maps of their own
    class Scene:
        def __init__(self, f, i):
            k = int(round(10 * f))
            self.image = np.zeros((1, 100, 100))
            xs = 5.0 + 9.0 * np.arange(k)
            self.catalog = Table(
                {"x": np.r_[xs, xs], "y": np.r_[np.full(k, 50.0), np.full(k, 70.0)]}
            )
            prob = np.r_[np.full(k, 0.99), np.full(k, 0.8), 0.9, 0.9]
            snr = np.r_[np.full(k, 30.0), np.full(k, 5.0), 4.0, 4.0]
            self.det = _catalog(prob, snr, (100, 100)).with_columns(
                x=np.r_[xs, xs, 20.0, 40.0], y=np.r_[np.full(k, 50.0), np.full(k, 70.0), 10.0, 90.0]
            )

    scenes = {}

    def sample(f, i):
        scenes[f, i] = Scene(f, i)
        return scenes[f, i]

    def detect(image):
        return next(s.det for s in scenes.values() if s.image is image)

    cal = dens.fit_density_calibration(detect, sample, factors=(0.0, 0.5), n_fields=3)
    assert cal.factors == (0.0, 0.5, 1.0)
    np.testing.assert_allclose(cal.rates, [0.0, 500.0, 1000.0])  # 5 and 10 per 0.01 Mpx
    assert cal.maps[2] is None  # the prior's density: the identity
    assert cal.n == (6, 36, 66)
    # noise alone: the noise bumps are never real, and there is no bright detection to map
    np.testing.assert_allclose(_interp([0.9], *cal.maps[0]), [0.0])
    assert cal.bright_maps[0] is None and cal.bright_maps[2] is None
    # half the prior's density: 5 of its 7 faint detections real (one bin of few), and
    # every bright one
    np.testing.assert_allclose(cal.maps[1][1], [5 / 7])
    np.testing.assert_allclose(cal.bright_maps[1][1], [1.0])
    back = dens.DensityCalibration.from_dict(cal.to_dict())
    assert back.bright_maps == cal.bright_maps
    # read by density: a bright detection on a half-dense sky gets its map, a faint its own
    got, w = back([0.99, 0.8], 500, 1e6, snr=[30.0, 5.0])  # 500 bright on 1 Mpx
    assert np.argmax(w) == 1
    assert got[0] > 0.99 - 1e-9 and abs(got[1] - 5 / 7) < 0.05


def test_the_shipped_detector_reads_an_empty_sky_as_one_and_says_so():
    import probcat

    det = probcat.load("detection_lsst_i", device="cpu", threads=1)
    assert det.density_calibration is not None  # recorded in the shipped manifests
    six = probcat.load("detection_lsst_ugrizy", device="cpu", threads=1).density_calibration
    assert six is not None and six.factors == det.density_calibration.factors
    sigma = float(det.survey.noise_sigma[0])
    noise = np.random.default_rng(11).normal(0.0, sigma, (320, 320)).astype(np.float32)
    got = det.catalog(noise, noise_sigma=sigma)
    rec = got.meta["density"]
    assert rec["applied"] and rec["factor"] == 0.0 and rec["area_px"] == 320 * 320
    det.density_calibration = None  # the same image at the prior's density
    before = det.catalog(noise, noise_sigma=sigma)
    assert "density" not in before.meta
    # every detection of noise alone is false: the prior's density calls most of them
    # likely, the empty sky's density none
    assert np.sum(before["prob"] >= 0.5) > np.sum(got["prob"] >= 0.5)
    assert np.all(got["prob"] < 0.05) and len(got) == len(before) - rec["dropped"]
    # posterior samples too: drawn at the prior's density, thinned to the image's
    loose = det.sample(noise, 4, noise_sigma=sigma)
    det.density_calibration = probcat.load("detection_lsst_i").density_calibration
    thin = det.sample(noise, 4, noise_sigma=sigma)
    assert all(s.meta["density"]["factor"] == 0.0 for s in thin)
    assert [len(s) + s.meta["density"]["thinned"] for s in thin] == [len(s) for s in loose]
    assert sum(len(s) for s in loose) >= 20 and sum(len(s) for s in thin) <= 2


def test_probcat_detect_says_when_it_reads_an_emptier_sky(tmp_path, capsys):
    from probcat.catalog import FullCatalog as Cat
    from probcat.cli import main
    from probcat.io import write_image
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    noise = np.random.default_rng(5).normal(0.0, survey.noise_sigma[0], (1, 320, 320))
    write_image(tmp_path / "sky.fits", noise.astype(np.float32), survey)
    rc = main(["detect", str(tmp_path / "sky.fits"), "-o", str(tmp_path / "cat.fits")])
    out = capsys.readouterr().out
    assert rc == 0 and "source density read as 0 times the prior's" in out
    cat = Cat.read(tmp_path / "cat.fits")
    assert cat.meta["density"]["factor"] == 0.0 and np.all(cat["prob"] < 0.05)
    # posterior samples thinned to that density, the file's record counting them all
    rc = main(["detect", str(tmp_path / "sky.fits"), "-o", str(tmp_path / "two.fits"),
               "--samples", "3"])  # fmt: skip
    out = capsys.readouterr().out
    draws = Cat.read(tmp_path / "two_samples.fits")
    n = draws.meta["density"]["thinned"]
    assert rc == 0 and n >= 10 and f"3 posterior samples (thinned to that density: {n} left" in out
    assert len(draws) <= 1 and set(np.unique(draws["sample"])) <= {0, 1, 2}


def test_fit_refuses_catalogues_without_detection_snr():
    class Scene:
        image = np.zeros((1, 50, 50))
        catalog = Table({"x": [10.0], "y": [10.0]})

    bare = FullCatalog(
        {"x": np.array([10.0]), "y": np.array([10.0]), "prob": np.array([0.9])}, (50, 50)
    )
    with pytest.raises(ProbcatValueError, match="detection_snr"):
        dens.fit_density_calibration(lambda image: bare, lambda f, i: Scene(), n_fields=1)


def test_mean_factor_and_sky_shift_are_their_definitions():
    meta = {"density": {"applied": True, "weights": {"0": 0.25, "0.3": 0.25, "1": 0.5}}}
    assert dens.mean_factor(meta) == pytest.approx(0.25 * 0.3 + 0.5)
    meta["density"]["mean_factor"] = 0.42  # the posterior's own mean, where recorded
    assert dens.mean_factor(meta) == 0.42
    assert dens.mean_factor({"density": {"applied": False, "reason": "small"}}) is None
    assert dens.mean_factor({}) is None
    # the faint galaxies' lift scales with the density: the prior's offset leaves an empty
    # sky `offset` too bright, a field twice as crowded `offset` too faint
    np.testing.assert_allclose(dens.sky_shift([0.1, 0.2], 0.0), [0.1, 0.2])
    np.testing.assert_allclose(dens.sky_shift([0.1, 0.2], 1.0), [0.0, 0.0])
    np.testing.assert_allclose(dens.sky_shift([0.1, 0.2], 2.0), [-0.1, -0.2])
    # at another depth the lift recorded there: a shallower image's, in its own sigma, less
    np.testing.assert_allclose(dens.sky_shift([0.1, 0.2], 1.0, [0.06, 0.1]), [0.04, 0.1])
    np.testing.assert_allclose(dens.sky_shift([0.1], 0.5, [0.06]), [0.07])


def test_sky_shift_moves_the_pixels_with_data_and_the_recorded_sky():
    from probcat.api import Detector, _Batch, _offset_at_density

    x = np.ones((2, 1, 4, 5), np.float32)
    masked = np.zeros((4, 5), bool)
    masked[0, :2] = True
    x[1, 0][masked] = 0.0  # no data: zero, and zero it stays
    info = {"background": "subtracted", "sky_offset": [0.2], "sigma_e": [10.0],
            "sky_median": [500.0]}  # fmt: skip
    batch = _Batch(x, [None, None], False, [dict(info), dict(info)], [None, masked])
    empty = _catalog([0.9], [20.0])
    empty.meta["density"] = {"applied": True, "weights": {"0": 1.0, "1": 0.0}}
    same = _catalog([0.9], [20.0])
    same.meta["density"] = {"applied": True, "weights": {"0": 0.02, "1": 0.98}}
    det = object.__new__(Detector)
    det.manifest = None  # no offsets recorded at other depths
    out = det._sky_at_density(batch, [same, empty], [0, 1])
    np.testing.assert_array_equal(out.x[0], x[0])  # shift 0.004 sigma: under the tolerance
    assert not out.info[0]["sky_density"]["applied"]
    assert out.info[0]["sky_density"]["factor"] == pytest.approx(0.98)
    want = np.where(masked, 0.0, 1.0 - 0.2).astype(np.float32)
    np.testing.assert_allclose(out.x[1, 0], want, rtol=1e-6)
    rec = out.info[1]["sky_density"]
    assert rec["applied"] and rec["factor"] == 0.0 and rec["shift_sigma"] == [0.2]
    assert out.info[1]["sky_median"] == [pytest.approx(502.0)]  # 0.2 sigma more taken off
    np.testing.assert_array_equal(x[1, 0], np.where(masked, 0.0, 1.0))  # the input untouched
    # what deblending then subtracts: the prior's offset less that shift
    cat = _catalog([0.9], [20.0])
    cat.meta["input"] = out.info[1]
    np.testing.assert_allclose(_offset_at_density(np.array([0.2]), cat), [0.0])
    cat.meta["input"] = out.info[0]
    np.testing.assert_allclose(_offset_at_density(np.array([0.2]), cat), [0.2])
    # nothing to shift anywhere: None, the records made
    again = _Batch(x, [None, None], False, [dict(info), dict(info)], [None, masked])
    assert det._sky_at_density(again, [same, same], [0, 1]) is None
    assert all("sky_density" in i for i in again.info)


def test_a_sky_left_in_an_empty_field_is_subtracted_at_its_density():
    import probcat

    det = probcat.load("detection_lsst_i", device="cpu", threads=1)
    sigma = float(det.survey.noise_sigma[0])
    noise = np.random.default_rng(12).normal(0.0, sigma, (320, 320)).astype(np.float32)
    got = det.catalog(noise + 40.0 * sigma, noise_sigma=sigma)
    info = got.meta["input"]
    rec, offset = info["sky_density"], info["sky_offset"][0]
    # an empty sky: no faint galaxy lifts the estimate, and none of it comes off
    assert rec["applied"] and rec["factor"] < 0.05
    assert rec["shift_sigma"][0] == pytest.approx(offset * (1 - rec["factor"]), abs=1e-4)
    assert info["sky_median"][0] == pytest.approx(40.0 * sigma, abs=0.03 * sigma)
    # the sky-free image, which the network reads as it is: the same few detections
    free = det.catalog(noise, noise_sigma=sigma)
    assert free.meta["input"]["background"] == "kept"
    assert abs(len(got) - len(free)) <= 2
    # a small cutout is not read for its density: the prior's offset stands
    cut = det.catalog(noise[:200, :200] + 40.0 * sigma, noise_sigma=sigma)
    assert "sky_density" not in cut.meta["input"]


def test_photoz_reads_the_bands_with_the_sky_the_detector_read(monkeypatch):
    import probcat
    import probcat.infer.density as density
    from probcat.redshift.estimator import PhotozEstimator

    seen = []
    original = PhotozEstimator.network_input

    def spy(self, xs, *args, **kw):
        seen.append(np.array(xs, copy=True))
        return original(self, xs, *args, **kw)

    monkeypatch.setattr(PhotozEstimator, "network_input", spy)
    det = probcat.load("detection_lsst_ugrizy", device="cpu", threads=1)
    sigma = np.asarray(det.survey.noise_sigma, np.float32)[:, None, None]
    rng = np.random.default_rng(13)
    image = (rng.standard_normal((6, 320, 320)) + 30.0) * sigma  # an empty sky left in
    got = probcat.photoz(image.astype(np.float32), threads=1)
    rec = got.detection.catalog.meta["input"]["sky_density"]
    assert rec["applied"] and rec["factor"] < 0.05
    monkeypatch.setattr(density, "SKY_SHIFT_TOL", np.inf)  # the prior's density's sky
    probcat.photoz(image.astype(np.float32), threads=1)
    # every band moved by the detector's shift, to float rounding
    diff = (seen[1] - seen[0]).reshape(6, -1).mean(1)
    np.testing.assert_allclose(diff, rec["shift_sigma"], atol=1e-5)


def test_deblending_subtracts_the_sky_the_detector_read(monkeypatch):
    import probcat
    import probcat.infer.density as density

    det = probcat.load("detection_lsst_i", device="cpu", threads=1)
    sigma = float(det.survey.noise_sigma[0])
    rng = np.random.default_rng(3)
    image = rng.normal(0.0, sigma, (320, 320)).astype(np.float32) + 30 * sigma
    yy, xx = np.mgrid[:320, :320]
    r2 = (xx - 100) ** 2 + (yy - 150) ** 2
    image += (2e5 * np.exp(-r2 / 8.0) / (8 * np.pi)).astype(np.float32)  # one bright star
    far = r2 > 30**2
    res = probcat.deblend(image, threads=1)
    assert res.detection.catalog.meta["input"]["sky_density"]["applied"]
    # the residual's empty sky at zero: the sky taken off is the one left in
    assert abs(np.median(np.asarray(res.residual)[..., far])) < 0.02 * sigma
    monkeypatch.setattr(density, "SKY_SHIFT_TOL", np.inf)  # at the prior's density
    before = probcat.deblend(image, threads=1)
    assert np.median(np.asarray(before.residual)[..., far]) > 0.08 * sigma


def test_probcat_detect_says_at_which_density_it_took_the_sky_off(tmp_path, capsys):
    from probcat.catalog import FullCatalog as Cat
    from probcat.cli import main
    from probcat.io import write_image
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma[0]
    sky = np.random.default_rng(6).normal(40.0 * sigma, sigma, (1, 320, 320))
    write_image(tmp_path / "sky.fits", sky.astype(np.float32), survey)
    rc = main(["detect", str(tmp_path / "sky.fits"), "-o", str(tmp_path / "cat.fits")])
    out = capsys.readouterr().out
    assert rc == 0 and "faint galaxies' light at 0x the prior's density)" in out
    rec = Cat.read(tmp_path / "cat.fits").meta["input"]["sky_density"]
    assert rec["applied"] and rec["factor"] < 0.005


def test_a_shallower_image_takes_off_the_lift_recorded_at_its_depth():
    import probcat

    det = probcat.load("detection_lsst_i", device="cpu", threads=1)
    rec = det.manifest["sky_offset"]
    lifts = {e["noise_factor"]: e["per_band"][0] for e in rec["depths"]}
    g = min(lifts, key=lambda v: abs(v - 3.1623))  # 1 year of LSST: 10**0.5 times the noise
    sigma = g * float(det.survey.noise_sigma[0])
    zp = [b.flux_to_mag(1.0) for b in det.survey.bands]  # the depth told by the zeropoint
    image = np.random.default_rng(14).normal(40.0 * sigma, sigma, (200, 200)).astype(np.float32)
    got = det.catalog(image, noise_sigma=sigma, zeropoint=zp)
    sky = got.meta["input"]["sky_density"]
    # a cutout: its density not read (the prior's), the lift that of its depth
    assert sky["applied"] and sky["density_read"] is False and sky["factor"] == 1.0
    assert sky["noise_factor"] == pytest.approx(g)
    assert sky["shift_sigma"][0] == pytest.approx(rec["per_band"][0] - lifts[g], abs=1e-5)
    # at the survey's depth nothing of the kind
    survey_depth = det.catalog(image / g, noise_sigma=sigma / g, zeropoint=zp)
    assert "sky_density" not in survey_depth.meta["input"]


def test_the_command_line_says_the_density_read():
    from probcat.cli import _density_note

    assert _density_note({"applied": False, "reason": "small"}) == ""
    assert _density_note({"applied": True, "factor": 1.0, "mean_factor": 0.98}) == ""
    note = _density_note({"applied": True, "factor": 0.3, "mean_factor": 0.52, "dropped": 4})
    assert note.startswith("; source density read as 0.52 times the prior's, 4 detections")
    assert "read as 0 times" in _density_note({"applied": True, "factor": 0.0, "mean_factor": 3e-4})
    # a record made before the mean was: the likeliest factor
    assert "read as 2 times" in _density_note({"applied": True, "factor": 2.0})
