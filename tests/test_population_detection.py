import numpy as np
import pytest

from probcat.population import simulator as S
from probcat.population.detection import (
    REGION_DEG,
    Detections,
    find_detections,
    match_detections,
)
from probcat.population.truncated import TruncatedSimulator


def test_detections_are_regions_where_r1_exceeds_5():
    post = np.full((128, 128), 0.01)
    prior = np.full((128, 128), 0.01)
    post[40:43, 70:72] = 0.2  # r1 = 20: one region...
    post[41, 71] = 0.5  # ...peaking here
    post[100, 10] = 0.06  # r1 = 6: a one-pixel region
    post[10, 10] = 0.04  # r1 = 4: not a detection
    det = find_detections(post, prior, 1.0, min_mass=0.05)
    assert len(det) == 2
    order = np.argsort(det.y)
    assert (det.x[order].tolist(), det.y[order].tolist()) == ([71.0, 10.0], [41.0, 100.0])
    assert det.npix[order].tolist() == [6, 1]
    assert det.r1[order] == pytest.approx([50.0, 6.0])
    l, b = S.pix_to_deg(71.0, 41.0)
    assert (det.l[order][0], det.b[order][0]) == pytest.approx((float(l), float(b)))
    assert len(find_detections(np.zeros((128, 128)), prior, 1.0)) == 0
    # only regions that hold a source above the threshold with enough posterior mass
    sure = find_detections(post, prior, 1.0, min_mass=0.8)
    assert len(sure) == 1 and sure.x[0] == 71.0  # mass 5 x 0.2 + 0.5 = 1.5 >= 0.8
    assert sure.npix.tolist() == [6] and sure.r1 == pytest.approx([50.0])  # its own region's


def test_detections_are_written_as_a_fits_table_with_their_regions(tmp_path):
    from astropy.table import Table

    post = np.full((128, 128), 0.01)
    post[40:43, 70:72] = 0.2
    post[100, 10] = 0.06
    det = find_detections(post, np.full((128, 128), 0.01), 1.5, min_mass=0.05)
    det.write(tmp_path / "detections.fits")
    t = Table.read(tmp_path / "detections.fits")
    assert len(t) == 2 and t.meta["LOGFTH"] == 1.5
    np.testing.assert_allclose(t["l"], det.l)
    np.testing.assert_allclose(t["b_max"] - t["b"], REGION_DEG)
    np.testing.assert_allclose(t["l"] - t["l_min"], REGION_DEG)
    assert sorted(t["npix"].tolist()) == [1, 6] and str(t["l"].unit) == "deg"
    none = find_detections(np.zeros((128, 128)), np.full((128, 128), 0.01), 1.5)
    none.write(tmp_path / "none.fits")  # a map with no detection: an empty table
    assert len(Table.read(tmp_path / "none.fits")) == 0


def test_matching_marks_the_brightest_source_above_threshold_in_each_region():
    src = S.Sources(
        np.array([0, 0, 0, 0, 1]),
        np.array([50.0, 80.0, 5.0, 200.0, 90.0]),
        np.array([0.0, 0.5, 0.1, 10.0, 0.0]),
        np.array([0.0, -0.5, 0.0, 10.0, 0.0]),
    )
    det0 = Detections(*(np.array([v]) for v in (0, 0, 0.2, 0.1, 9.0, 3)), 1.0)
    det1 = Detections(*(np.zeros(0),) * 6, 1.0)
    out = match_detections(src, [det0, det1])
    # in map 0's region: sources of flux 50 and 80 (above 10); the brightest is taken;
    # the one of flux 200 lies outside; map 1 has no detection
    assert out.detected.tolist() == [False, True, False, False, False]


def _dets(l, b, thr=1.0):
    n = len(l)
    return Detections(
        np.zeros(n), np.zeros(n), np.array(l), np.array(b), np.full(n, 9.0), np.ones(n, int), thr
    )


def test_truncated_simulator_keeps_detected_sources_in_their_regions():
    det = _dets([5.0, -12.0], [1.0, -3.0], thr=1.0)
    never = TruncatedSimulator(det, lambda f, l, b, t: np.zeros(len(f)))
    rng = np.random.default_rng(0)
    theta = never.sample_theta(rng, 50)
    assert theta[:, 0].min() >= 2
    src = never.sources(rng, theta)
    counts = np.bincount(src.map, minlength=50)
    assert counts.tolist() == theta[:, 0].astype(int).tolist()
    # the first two sources of each map are the detected ones
    first = np.searchsorted(src.map, np.arange(50))
    for k, (l0, b0) in enumerate(zip(det.l, det.b)):
        i = first + k
        assert np.all(np.abs(src.l[i] - l0) <= REGION_DEG)
        assert np.all(np.abs(src.b[i] - b0) <= REGION_DEG)
        assert np.all(src.flux[i] >= 10.0)


def test_a_truncation_box_confines_theta_and_its_log_prior_is_the_box():
    det = _dets([5.0, -12.0, 0.0], [1.0, -3.0, 2.0], thr=1.0)  # N_det = 3
    sens = lambda f, l, b, t: np.zeros(len(f))  # noqa: E731
    free = TruncatedSimulator(det, sens)
    box = np.array([[20.5, 42.5], [1.5, 2.25], [3.0, 30.0]])  # h beyond the prior: cut to 20
    boxed = TruncatedSimulator(det, sens, box)
    assert boxed.n_range == (21, 42) and boxed.bounds[2].tolist() == [3.0, 20.0]
    assert TruncatedSimulator(det, sens, [[1, 42.5], [1, 3], [1, 20]]).n_range == (10, 42)
    theta = boxed.sample_theta(np.random.default_rng(1), 22000)
    assert np.array_equal(theta[:, 0], np.round(theta[:, 0]))
    counts = np.bincount(theta[:, 0].astype(int))
    assert np.flatnonzero(counts).tolist() == list(range(21, 43))  # every allowed N
    assert counts[21:].min() > 850 and counts[21:].max() < 1150  # uniform: 1,000 +- 32
    assert (theta[:, 1] >= 1.5).all() and (theta[:, 1] <= 2.25).all()
    assert abs(theta[:, 2].mean() - 11.5) < 0.1  # uniform on [3, 20]
    assert (boxed.log_prior(theta) == 0).all()
    # against the definition, point by point
    pts = np.array([[20, 2, 5], [21, 2, 5], [42, 2, 5], [43, 2, 5], [30, 1.4, 5],
                    [30, 2.25, 20], [30, 2, 2.9], [600, 2, 5]], float)  # fmt: skip
    assert boxed.log_prior(pts).tolist() == [-np.inf, 0, 0, -np.inf, -np.inf, 0, -np.inf,
                                              -np.inf]  # fmt: skip
    # without a box: the whole prior with N >= N_det, as before
    grid = np.array(np.meshgrid([2, 3, 10, 500], [1, 3], [1, 20])).reshape(3, -1).T
    assert np.array_equal(free.log_prior(grid) == 0, grid[:, 0] >= 10)
    assert (free.log_prior([[12, 2, 5]]) == 0).all()
    assert (TruncatedSimulator(_dets([0.0] * 12, [0.0] * 12, 1.0), sens).log_prior(
        [[11, 2, 5], [12, 2, 5]]) == [-np.inf, 0]).all()  # fmt: skip
    with pytest.raises(ValueError, match="holds no allowed theta"):
        TruncatedSimulator(det, sens, [[30, 25], [1, 3], [1, 20]])


def test_sub_threshold_sources_avoid_what_would_be_detected():
    det = _dets([0.0], [0.0], thr=1.0)
    # a source brighter than 10 is always detected: no sub-threshold source may be
    bright = TruncatedSimulator(det, lambda f, l, b, t: (f > 10).astype(float))
    rng = np.random.default_rng(1)
    theta, maps, src = bright.simulate(rng, 20, np.tile([[300, 2.5, 10.0]], (20, 1)))
    first = np.searchsorted(src.map, np.arange(20))
    sub = np.ones(len(src), bool)
    sub[first] = False
    assert maps.shape == (20, 128, 128) and np.bincount(src.map).tolist() == [300] * 20
    assert src.flux[sub].max() <= 10
    with pytest.raises(ValueError, match="more than the prior"):
        TruncatedSimulator(_dets(np.zeros(501), np.zeros(501)), bright.sensitivity)
