"""Detection-probability calibration map and the out-of-distribution feature score."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.infer import reliability as rel


def _brute_isotonic(y, w):
    """Non-decreasing weighted least squares by exhaustive block search (small n)."""
    n = len(y)
    best = None
    # every partition into consecutive blocks: 2^(n-1) of them
    for mask in range(2 ** (n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        fit = np.concatenate(
            [np.full(b - a, np.average(y[a:b], weights=w[a:b])) for a, b in zip(cuts, cuts[1:])]
        )
        if np.all(np.diff(fit) >= -1e-12):
            sse = float(np.sum(w * (y - fit) ** 2))
            if best is None or sse < best[0] - 1e-12:
                best = (sse, fit)
    return best[1]


@pytest.mark.parametrize("seed", range(5))
def test_pool_adjacent_violators_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    y, w = rng.random(8), rng.uniform(0.5, 2.0, 8)
    got = rel._pool_adjacent_violators(y, w)
    assert np.all(np.diff(got) >= 0)
    assert got == pytest.approx(_brute_isotonic(y, w), abs=1e-12)


def test_calibration_map_is_monotone_and_leaves_calibrated_inputs_unchanged():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.5, 1.0, 200_000)
    cal = rel.fit_probability_calibration(p, rng.random(len(p)) < p)
    grid = np.linspace(0, 1, 1001)
    assert np.all(np.diff(cal(grid)) >= 0)
    inner = np.linspace(0.55, 0.95, 41)
    assert np.max(np.abs(cal(inner) - inner)) < 0.02
    # over-confident inputs are pulled down: true frequency is p**2
    over = rel.fit_probability_calibration(p, rng.random(len(p)) < p**2)
    assert over(0.8) == pytest.approx(0.64, abs=0.02)
    assert over(0.9) < 0.9 - 0.05
    again = rel.ProbabilityCalibration.from_dict(over.to_dict())
    assert again(grid) == pytest.approx(over(grid))


def test_ood_binned_calibration_learns_that_unusual_detections_are_false_more_often():
    rng = np.random.default_rng(3)
    n = 300_000
    p = rng.uniform(0.5, 1.0, n)
    ood = rng.random(n)
    truth = np.where(ood > 0.99, 0.5 * p, p)  # extreme-score detections: half as reliable
    cal = rel.fit_probability_calibration(p, rng.random(n) < truth, ood=ood)
    grid = np.linspace(0.55, 0.95, 9)
    ordinary, extreme = cal(grid, np.full(9, 0.5)), cal(grid, np.full(9, 0.995))
    assert ordinary == pytest.approx(grid, abs=0.02)  # calibrated inputs unchanged
    assert extreme == pytest.approx(0.5 * grid, abs=0.05)
    for score in (0.1, 0.95, 0.999):
        assert np.all(np.diff(cal(np.linspace(0, 1, 501), np.full(501, score))) >= 0)
    # too few detections in a bin: that bin uses the pooled map
    few = rel.fit_probability_calibration(p[:5000], rng.random(5000) < p[:5000], ood=ood[:5000])
    assert few.by_ood[-1] is None and few(0.8, 0.999) == few(0.8)
    again = rel.ProbabilityCalibration.from_dict(cal.to_dict())
    assert again(grid, np.full(9, 0.995)) == pytest.approx(extreme)


def test_feature_density_scores_are_uniform_inside_and_one_far_away():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 4))
    cov = a @ a.T + np.eye(4)
    x = rng.multivariate_normal(np.ones(4), cov, 5000)
    dens = rel.fit_feature_density(x, shrinkage=0.0)
    d = x[0] - x.mean(0)
    assert dens.distance2(x[:1])[0] == pytest.approx(d @ np.linalg.inv(np.cov(x.T)) @ d)
    fresh = rng.multivariate_normal(np.ones(4), cov, 5000)
    s = dens.score(fresh)
    assert np.mean(s < 0.5) == pytest.approx(0.5, abs=0.03)
    assert np.mean(s > 0.99) == pytest.approx(0.01, abs=0.01)
    assert dens.score(np.ones(4) + 20 * np.sqrt(np.diag(cov)))[0] == 1.0
    again = rel.FeatureDensity.from_dict(dens.to_dict())
    assert again.score(fresh[:10]) == pytest.approx(s[:10])


def test_nearest_neighbour_density_matches_brute_force_and_sees_a_gap_a_gaussian_misses():
    """The nearest-neighbour score: distances equal a brute-force search in the whitened
    space, scores of fresh draws are uniform, a point in the empty middle of a two-cluster
    sample (where one Gaussian puts its peak) is flagged, and the stored float16 reference
    survives a round trip."""
    rng = np.random.default_rng(4)
    centres = np.array([[-8.0, 0, 0], [8.0, 0, 0]])

    def draw(n):
        return centres[rng.integers(0, 2, n)] + rng.standard_normal((n, 3))

    x = draw(6000)
    knn = rel.fit_feature_density(x, neighbours=1000, seed=1)
    gauss = rel.fit_feature_density(x)
    assert knn.reference.shape == (1000, 3) and gauss.reference is None
    q = draw(50)
    white = (q - knn.mean) @ np.linalg.cholesky(knn.precision)
    brute = ((white[:, None, :] - knn.reference[None]) ** 2).sum(-1).min(1)
    assert knn.distance2(q) == pytest.approx(brute, rel=1e-5, abs=1e-9)
    s = knn.score(draw(4000))
    assert np.mean(s < 0.5) == pytest.approx(0.5, abs=0.04)
    assert np.mean(s > 0.99) == pytest.approx(0.01, abs=0.01)
    gap = np.zeros((1, 3))  # between the clusters: no sample near, the Gaussian's mean
    assert knn.score(gap)[0] > 0.99 and gauss.score(gap)[0] < 0.2
    again = rel.FeatureDensity.from_dict(knn.to_dict())
    assert again.reference.dtype == np.float32
    assert again.score(q) == pytest.approx(knn.score(q))
    assert "neighbours" not in gauss.to_dict()  # a Gaussian density stores no reference


def _map_catalog(x, y, prob, tile_x, tile_y, shape) -> FullCatalog:
    """A MAP catalogue with the columns :func:`rel.annotate` reads."""
    cols = dict(x=x, y=y, prob=prob, tile_x=tile_x, tile_y=tile_y)
    return FullCatalog({k: np.asarray(v) for k, v in cols.items()}, shape, ("i",), {})


def _split_net(axis, zone, below, above):
    """Weights whose calibration maps raw (0.5, 1.0) to ``below`` under ``zone`` px of
    ``axis`` and to ``above`` beyond it (no ood_score density)."""
    subs = tuple(rel.ProbabilityCalibration((0.5, 1.0), y, 500) for y in (below, above))
    cal = rel.ProbabilityCalibration(
        (0.5, 1.0), (0.4, 0.8), 1000, axis=axis, zones=(zone,), by_zone=subs
    )
    return SimpleNamespace(prob_calibration=cal, feature_density=None)


def test_annotate_adds_calibrated_prob_raw_prob_and_ood_score():
    class Net:
        prob_calibration = rel.ProbabilityCalibration((0.5, 1.0), (0.25, 0.5), 100)
        feature_density = rel.fit_feature_density(np.random.default_rng(0).standard_normal((64, 3)))

    cat = _map_catalog([1.0, 2.0], [1.0, 2.0], [0.5, 1.0], [0, 1], [0, 0], (10, 10))
    feats = torch.zeros(3, 2, 2)
    feats[:, 0, 1] = 50.0  # the second source's tile is far from the training features
    out = rel.annotate(cat, Net(), feats)
    assert out["prob_raw"] == pytest.approx([0.5, 1.0])
    assert out["prob"] == pytest.approx([0.25, 0.5])
    assert out["ood_score"][1] == 1.0 and out["ood_score"][0] < 1.0
    assert out.meta["ood_flag"] == rel.OOD_FLAG


def test_the_calibration_of_the_nearest_seeing_in_log_and_annotate_reads_it():
    """An image read at a PSF width ratio gets the calibration fitted nearest it in log:
    the survey's own (factor 1) below sqrt(1.25), the 1.25 one up to sqrt(1.25 * 2)."""
    from probcat.infer.detect import at_seeing
    from probcat.nets.detection import DetectionNet

    own = rel.ProbabilityCalibration((0.0, 1.0), (0.0, 1.0), 100, "own")
    at125 = rel.ProbabilityCalibration((0.0, 1.0), (0.0, 0.8), 100, "x1.25")
    at2 = rel.ProbabilityCalibration((0.0, 1.0), (0.0, 0.5), 100, "x2")
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2)
    assert rel.seeing_calibration(net) == (1.0, None)  # weights without a calibration
    net.prob_calibration = own
    net.seeing_calibrations = ((1.25, at125), (2.0, at2))
    for scale, want in ((0.5, own), (1.0, own), (1.11, own), (1.12, at125), (1.58, at125),
                        (1.59, at2), (3.9, at2)):  # fmt: skip
        assert rel.seeing_calibration(net, scale)[1] is want, scale
    net.prob_calibration = own
    cat = _map_catalog([5.0, 6.0], [5.0, 2.0], [0.5, 1.0], [0, 1], [0, 0], (10, 10))
    feats = torch.zeros(8, 2, 2)
    assert rel.annotate(cat, net, feats)["prob"] == pytest.approx([0.5, 1.0])
    with at_seeing(net, 1.3):
        out = rel.annotate(cat, net, feats)
    assert out["prob"] == pytest.approx([0.4, 0.8]) and out.meta["prob_calibration"] == "x1.25"
    with at_seeing(net, 1.02):  # within the tolerance: the survey's seeing
        assert rel.annotate(cat, net, feats)["prob"] == pytest.approx([0.5, 1.0])


def test_the_calibration_of_the_nearest_depth_and_seeing_and_annotate_reads_it():
    """Depth calibrations (noise as a flux over the survey's) join the seeing ones: the
    nearest by the sum of the two log distances, the survey's own on a tie and for an
    unknown depth (None), the seeing's before the depth's."""
    from probcat.infer.detect import at_depth, at_seeing
    from probcat.nets.detection import DetectionNet

    own = rel.ProbabilityCalibration((0.0, 1.0), (0.0, 1.0), 100, "own")
    at2 = rel.ProbabilityCalibration((0.0, 1.0), (0.0, 0.5), 100, "x2")
    y1 = rel.ProbabilityCalibration((0.0, 1.0), (0.0, 0.6), 100, "1yr")
    y20 = rel.ProbabilityCalibration((0.0, 1.0), (0.0, 0.9), 100, "20yr")
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2)
    net.prob_calibration = own
    net.seeing_calibrations = ((2.0, at2),)
    net.depth_calibrations = ((0.5, y20), (4.0, y1))
    pick = rel.calibration_for
    assert pick(net, 1.0, None) == (1.0, 1.0, own)  # unknown depth: the survey's
    assert pick(net, 1.0, 1.9) == (1.0, 1.0, own)  # log 1.9 < log 4 - log 1.9
    assert pick(net, 1.0, 2.1) == (1.0, 4.0, y1)
    assert pick(net, 1.0, 0.7) == (1.0, 0.5, y20)
    assert pick(net, 1.0, 0.71) == (1.0, 1.0, own)  # nearer 1 than 0.5 in log
    assert pick(net, 1.9, 4.0) == (1.0, 4.0, y1)  # |log 1.9| < |log 2 - log 1.9| + log 4
    assert pick(net, 2.0, 2.0) == (2.0, 1.0, at2)  # a tie (log 2 each): the seeing's
    assert pick(net, 1.0, float("nan"))[2] is own and pick(net, 1.0, -1.0)[2] is own
    assert rel.seeing_calibration(net, 1.0) == (1.0, own)  # at the survey's depth
    cat = _map_catalog([5.0, 6.0], [5.0, 2.0], [0.5, 1.0], [0, 1], [0, 0], (10, 10))
    feats = torch.zeros(8, 2, 2)
    with at_depth(net, 3.0):
        out = rel.annotate(cat, net, feats)
    assert out["prob"] == pytest.approx([0.3, 0.6]) and out.meta["prob_calibration"] == "1yr"
    assert net.noise_scale is None  # restored after the block
    with at_depth(net, 3.0), at_seeing(net, 2.0):  # 1yr: log 2 + log 4/3 < x2: log 3
        assert rel.annotate(cat, net, feats)["prob"] == pytest.approx([0.3, 0.6])
    with at_depth(net, 1.5), at_seeing(net, 2.0):  # x2: log 1.5 < own: log 2 + log 1.5
        assert rel.annotate(cat, net, feats)["prob"] == pytest.approx([0.25, 0.5])
    with at_depth(net, None):
        assert rel.annotate(cat, net, feats)["prob"] == pytest.approx([0.5, 1.0])


def test_edge_zone_calibration_learns_that_edge_detections_are_false_more_often():
    rng = np.random.default_rng(4)
    n = 200_000
    p = rng.uniform(0.5, 1.0, n)
    edge = rng.uniform(0.0, 10.0, n)
    truth = np.where(edge < 2.0, 0.4 * p, p)  # within 2 px of the edge: far less reliable
    real = rng.random(n) < truth
    cal = rel.fit_probability_calibration(p, real, edge=edge)
    grid = np.linspace(0.55, 0.95, 9)
    assert cal(grid, edge=np.full(9, 10.0)) == pytest.approx(grid, abs=0.02)  # unchanged
    assert cal(grid, edge=np.full(9, 3.0)) == pytest.approx(grid, abs=0.02)
    assert cal(grid, edge=np.full(9, 1.0)) == pytest.approx(0.4 * grid, abs=0.03)
    # one map for every detection is off in both directions: the reason for the zones
    pooled = rel.fit_probability_calibration(p, real)
    assert pooled(0.9) < 0.9 - 0.04 and pooled(0.9) > 0.4 * 0.9 + 0.3
    for d in (0.5, 2.5, 5.0, 12.0):
        assert np.all(np.diff(cal(np.linspace(0, 1, 501), edge=np.full(501, d))) >= 0)
    assert cal(grid) == pytest.approx(pooled(grid))  # no distance given: the pooled map
    again = rel.ProbabilityCalibration.from_dict(cal.to_dict())
    assert again(grid, edge=np.full(9, 1.0)) == pytest.approx(cal(grid, edge=np.full(9, 1.0)))
    # a zone with too few detections falls back to the pooled map
    few = rel.fit_probability_calibration(
        p[:3000], real[:3000], edge=np.where(edge[:3000] < 2, 30.0, 1.0)
    )
    assert few.axis == "edge" and few.by_zone[-1] is not None and few.by_zone[1] is None
    assert few(0.8, edge=3.0) == few(0.8)
    # the weights of v7 stored the edge split under keys of their own
    old = cal.to_dict()
    old["edge_zones"], old["by_edge"] = old.pop("zones"), old.pop("by_zone")
    del old["axis"]
    legacy = rel.ProbabilityCalibration.from_dict(old)
    assert legacy(grid, edge=np.full(9, 1.0)) == pytest.approx(cal(grid, edge=np.full(9, 1.0)))


def test_edge_distance_and_annotate_reads_the_map_by_edge_zone():
    assert rel.edge_distance(
        [0.0, 9.0, 4.5, -3.0], [5.0, 5.0, 4.5, 5.0], (10, 10)
    ) == pytest.approx([0.5, 0.5, 5.0, -2.5])
    net = _split_net("edge", 2.0, below=(0.2, 0.4), above=(0.5, 1.0))
    cat = _map_catalog([0.2, 10.0], [10.0, 10.0], [1.0, 1.0], [0, 2], [2, 2], (20, 20))
    out = rel.annotate(cat, net, torch.zeros(3, 4, 4))
    assert out["prob"] == pytest.approx([0.4, 1.0])


@pytest.mark.parametrize("seed", range(3))
def test_neighbour_distance_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    x, y, p = rng.uniform(0, 30, 40), rng.uniform(0, 30, 40), rng.uniform(0.2, 1.0, 40)
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    assert rel.neighbour_distance(x, y) == pytest.approx(d.min(1))
    # only detections with raw probability >= NEIGHBOUR_PROB count as neighbours
    counted = np.where(p[None] >= rel.NEIGHBOUR_PROB, d, np.inf)
    assert rel.neighbour_distance(x, y, p) == pytest.approx(counted.min(1))
    assert rel.neighbour_distance([3.0], [4.0]) == pytest.approx([np.inf])
    assert rel.neighbour_distance([0.0, 3.0], [0.0, 4.0], [0.9, 0.1]) == pytest.approx([np.inf, 5])
    assert len(rel.neighbour_distance([], [])) == 0


def test_neighbour_zone_calibration_learns_that_close_pairs_are_false_more_often():
    rng = np.random.default_rng(5)
    n = 300_000
    p = rng.uniform(0.5, 1.0, n)
    edge = rng.uniform(0.0, 12.0, n)
    near = np.where(rng.random(n) < 0.2, np.inf, rng.uniform(3.0, 12.0, n))
    truth = np.where(near < 5.0, 0.6 * p, p) * np.where(edge < 2.0, 0.5, 1.0)
    real = rng.random(n) < truth
    cal = rel.fit_probability_calibration(p, real, edge=edge, neighbour=near)
    grid = np.linspace(0.55, 0.95, 9)

    def at(e, d):
        return cal(grid, edge=np.full(9, e), neighbour=np.full(9, d))

    for e, f in ((10.0, 1.0), (1.0, 0.5)):  # inside and at the edge, close pair or not
        assert at(e, np.inf) == pytest.approx(f * grid, abs=0.03)  # calibrated: unchanged
        assert at(e, 7.0) == pytest.approx(f * grid, abs=0.03)
        assert at(e, 3.5) == pytest.approx(0.6 * f * grid, abs=0.04)
    for e in (1.0, 10.0):
        for d in (3.0, 5.0, 9.0, np.inf):
            u = np.linspace(0, 1, 501)
            assert np.all(np.diff(cal(u, edge=np.full(501, e), neighbour=np.full(501, d))) >= 0)
    # no neighbour distance given: the pooled map, split by edge zone only
    assert cal.axis == "neighbour" and cal.by_zone[-1].axis == "edge"
    assert cal(grid, edge=np.full(9, 10.0)) == pytest.approx(cal(grid))
    again = rel.ProbabilityCalibration.from_dict(cal.to_dict())
    assert again(grid, edge=np.full(9, 1.0), neighbour=np.full(9, 3.5)) == pytest.approx(
        at(1.0, 3.5)
    )
    # a zone with too few detections uses the map of the split above it
    m = 4000
    few = rel.fit_probability_calibration(
        p[:m], real[:m], edge=np.where(near[:m] < 5, 1.0, 10.0), neighbour=near[:m]
    )
    assert few.by_zone[0] is not None and few.by_zone[0].by_zone[-1] is None  # close, inside
    assert few.by_zone[0].by_zone[0] is not None  # close, at the edge
    assert few(0.8, edge=10.0, neighbour=3.0) == few.by_zone[0](0.8)


def test_annotate_reads_the_map_by_neighbour_zone():
    net = _split_net("neighbour", 4.0, below=(0.3, 0.6), above=(0.5, 1.0))
    # two detections 3 px apart, one 10 px away from both; a faint one (raw 0.3) next to it
    cat = _map_catalog(
        [5.0, 8.0, 18.0, 19.0],
        [5.0, 5.0, 5.0, 5.0],
        [1.0, 1.0, 1.0, 0.3],
        [1, 1, 3, 3],
        [1] * 4,
        (25, 25),
    )
    out = rel.annotate(cat, net, torch.zeros(3, 5, 5))
    assert out["prob"] == pytest.approx([0.6, 0.6, 1.0, 0.18])


def test_fit_reliability_draws_the_inside_share_of_scenes_with_no_margin(monkeypatch):
    """``inside_fraction`` of the scenes come from the same bank with every source inside
    (margin 0), the rest from the simulator's own layout, from one generator in turn; each
    layout gets its own map (cutouts: edge detections half false; isolated scenes: all
    real), and the edge excess of each equals its definition."""
    from probcat.simulate.scene import SceneConfig

    class Sim:
        def __init__(self, config):
            self.config = config

        def with_layout(self, config):
            return Sim(config)

    calls = []

    def fake_rows(net, sim, noise_sigma, *, n_scenes, rng):
        calls.append((sim.config.margin, n_scenes, rng))
        g = np.random.default_rng(len(calls))
        n = 40 * n_scenes
        every = 4 if sim.config.margin else 8  # cutouts: 10 edge detections a scene, else 5
        edge = np.where(np.arange(n) % every == 0, 1.0, 20.0)
        real = np.ones(n, bool)
        if sim.config.margin:  # cutouts: every other edge detection is false
            real[(edge < 2) & (np.arange(n) % 8 == 0)] = False
        return {
            "prob": g.uniform(0.5, 1.0, n),
            "real": real,
            "feats": g.standard_normal((n, 3)),
            "scene": np.repeat(np.arange(n_scenes), 40),
            "edge": edge,
            "neighbour": np.full(n, np.inf),
        }

    monkeypatch.setattr(rel, "detections_with_outcomes", fake_rows)
    sim = Sim(SceneConfig(40, 40, margin=8))
    gen = np.random.default_rng(0)
    cal, _ = rel.fit_reliability(None, sim, 1.0, n_scenes=100, rng=gen, inside_fraction=0.6)
    assert [c[:2] for c in calls] == [(8, 40), (0, 60)]
    assert calls[0][2] is gen and calls[1][2] is gen
    assert isinstance(cal, rel.LayoutCalibration) and cal.prior == pytest.approx(0.4)
    p = np.random.default_rng(9).uniform(0.5, 1.0, 4000)
    # no neighbour, within 2 px of the edge: half real on cutouts, all real when isolated
    assert cal.cutout.by_zone[1].by_zone[0](p).mean() == pytest.approx(0.5, abs=0.03)
    assert cal.isolated.by_zone[1].by_zone[0](p).mean() == pytest.approx(1.0, abs=0.01)
    a_edge, a_int = 40 * 40 - 36 * 36, 24 * 24  # within 2 px; 8 px or more inside
    assert cal.edge_excess == pytest.approx(
        ((10 / a_edge) / (30 / a_int), (5 / a_edge) / (35 / a_int))
    )
    calls.clear()
    cal = rel.fit_reliability(None, sim, 1.0, n_scenes=20, rng=gen)[0]  # cutouts only
    assert [c[:2] for c in calls] == [(8, 20)] and isinstance(cal, rel.ProbabilityCalibration)
    calls.clear()
    rel.fit_reliability(None, Sim(SceneConfig(40, 40)), 1.0, n_scenes=20, inside_fraction=0.5)
    assert [c[:2] for c in calls] == [(0, 20)]  # no margin: every scene is already inside
    with pytest.raises(ProbcatValueError, match="inside_fraction"):
        rel.fit_reliability(None, sim, 1.0, n_scenes=20, inside_fraction=-0.1)


def _far_quarter_rows(n_scenes: int, far: bool = True) -> dict:
    """Rows of :func:`rel.detections_with_outcomes`: 40 detections per scene, raw
    probabilities uniform in [0.5, 1], 20 px inside, no neighbour; with ``far``, every fourth
    one's features far from the rest (unlike the training features) and false."""
    g = np.random.default_rng(n_scenes)
    n = 40 * n_scenes
    away = (np.arange(n) % 4 == 0) & far
    feats = g.standard_normal((n, 3))
    feats[away] += 50.0
    return {"prob": g.uniform(0.5, 1.0, n), "real": ~away, "feats": feats,
            "scene": np.repeat(np.arange(n_scenes), 40), "edge": np.full(n, 20.0),
            "neighbour": np.full(n, np.inf)}  # fmt: skip


def test_seeing_calibration_reads_ood_score_from_the_weights_density(monkeypatch):
    """For the calibrations under other seeing, each detection's ood_score is the score of
    the net's own density (not an out-of-fold refit), and the map splits by it: detections
    far from the density's features, all false here, get a low probability."""
    from probcat.simulate.scene import SceneConfig

    def fake_rows(net, sim, noise_sigma, *, n_scenes, rng):
        return _far_quarter_rows(n_scenes)

    monkeypatch.setattr(rel, "detections_with_outcomes", fake_rows)
    sim = SimpleNamespace(config=SceneConfig(40, 40))  # no margin: one layout
    dens = rel.fit_feature_density(np.random.default_rng(5).standard_normal((500, 3)))
    net = SimpleNamespace(feature_density=dens)
    d, _ = rel.reliability_detections(net, sim, 1.0, n_scenes=50, rng=0, density=dens)
    assert np.array_equal(d["ood"], dens.score(d["feats"]))
    cal = rel.fit_seeing_calibration(net, sim, 1.0, n_scenes=50, rng=0, source="x2")
    p = np.linspace(0.55, 0.95, 5)
    # ood_score >= 0.99: the 500 far detections and about 1% of the 1,500 real ones
    assert np.all(cal(p, ood=np.ones(5), edge=np.full(5, 20.0)) < 0.1)
    assert cal(p, ood=np.full(5, 0.5), edge=np.full(5, 20.0)) == pytest.approx(1.0, abs=0.01)
    assert cal.source == "x2"
    # without a density: edge and neighbour zones only, one map for all
    plain = rel.fit_seeing_calibration(SimpleNamespace(), sim, 1.0, n_scenes=50, rng=0)
    assert plain(p) == pytest.approx(0.75, abs=0.03) and not plain.by_ood


def _layout_cal(prior=0.5):
    cut = rel.ProbabilityCalibration((0.5, 1.0), (0.2, 0.4), 500)
    iso = rel.ProbabilityCalibration((0.5, 1.0), (0.4, 0.9), 500)
    return rel.LayoutCalibration(cut, iso, (1.7, 0.55), prior, 1000, "test")


@pytest.mark.parametrize("n_edge,n_int", [(0, 30), (1, 30), (3, 30), (6, 10), (2, 0)])
def test_cutout_probability_is_bayes_rule_with_poisson_edge_counts(n_edge, n_int):
    from scipy.stats import poisson

    cal = _layout_cal(prior=0.6)
    shape = (98, 98)
    edge = np.r_[np.full(n_edge, 1.0), np.full(n_int, 30.0), [5.0, 5.0]]  # 4-8 px: not counted
    raw = np.r_[np.full(n_edge + n_int, 0.9), [0.9, 0.9]]
    a_edge, a_int = 98 * 98 - 94 * 94, 82 * 82
    mu = n_int / a_int * a_edge
    if n_int:
        like = [poisson.pmf(n_edge, k * mu) for k in cal.edge_excess]
    else:  # no interior density: the likelihood ratio's limit as the rate goes to 0
        like = [k**n_edge for k in cal.edge_excess]
    want = 0.6 * like[0] / (0.6 * like[0] + 0.4 * like[1])
    assert cal.cutout_probability(edge, raw, shape) == pytest.approx(want, rel=1e-9)
    # detections below the MAP threshold do not count
    assert cal.cutout_probability(edge, np.full(len(raw), 0.3), shape) == pytest.approx(0.6)
    assert cal.cutout_probability(edge, raw, None) == 0.6  # no image: the prior


def test_layout_calibration_mixes_the_maps_and_round_trips():
    cal = _layout_cal()
    edge = np.array([1.0, 1.0, 1.0, 1.0, 20.0])  # many edge detections: a cutout
    raw = np.array([0.9, 0.8, 0.7, 0.6, 1.0])
    w = cal.cutout_probability(edge, raw, (40, 40))
    assert w > 0.9
    got = cal(raw, None, edge, None, shape=(40, 40))
    want = w * cal.cutout(raw) + (1 - w) * cal.isolated(raw)
    np.testing.assert_allclose(got, want)
    assert np.all(np.diff(cal(np.linspace(0, 1, 50), shape=None)) >= 0)  # monotone
    back = rel.calibration_from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    plain = cal.cutout
    assert rel.calibration_from_dict(plain.to_dict()) == plain
    with pytest.raises(ProbcatValueError, match="prior"):
        rel.LayoutCalibration(plain, plain, (1.0, 0.5), 1.0)


def test_annotate_records_the_images_cutout_probability():
    class Net:
        prob_calibration = _layout_cal()
        feature_density = None

    cat = _map_catalog([0.5, 0.5, 15.0], [10.0, 20.0, 15.0], [0.9, 0.9, 0.9], [0, 0, 3],
                       [2, 4, 3], (30, 30))  # fmt: skip
    out = rel.annotate(cat, Net(), torch.zeros(3, 6, 6))
    w = Net.prob_calibration.cutout_probability([1.0, 1.0, 15.0], [0.9] * 3, (30, 30))
    assert out.meta["cutout_probability"] == pytest.approx(w, abs=1e-4)
    assert out["prob"] == pytest.approx(w * 0.36 + (1 - w) * 0.8)


def test_shipped_weights_tell_cutouts_from_isolated_scenes(tiny_bank):
    """With the shipped LSST-i weights, scenes with sources beyond their edges read as
    cutouts more than scenes whose sources all lie inside (same bank and seed), and each
    catalogue's ``prob`` is the layout maps mixed with the recorded weight, then mixed with
    the real shapes' map at the image's real-shapes probability."""
    import probcat
    from probcat.simulate.scene import SceneConfig, SceneSimulator

    det = probcat.load("detection_lsst_i", device="cpu", threads=1)
    shapes = det.net.prob_calibration
    assert isinstance(shapes, rel.ShapesCalibration) and shapes.population == "hdf"
    cal, real = shapes.prior_shapes, shapes.real_shapes
    assert isinstance(cal, rel.LayoutCalibration)
    mean_w = {}
    for margin in (8, 0):
        sim = SceneSimulator(tiny_bank, SceneConfig(100, 100, margin=margin))
        rng = np.random.default_rng(3)
        imgs = np.stack([sim.sample(rng).image for _ in range(24)])
        cats = det.catalog(imgs, noise_sigma=tiny_bank.survey.noise_sigma)
        mean_w[margin] = np.mean([c.meta["cutout_probability"] for c in cats])
        c = cats[0]
        raw, ood = np.asarray(c["prob_raw"]), np.asarray(c["ood_score"])
        edge = rel.edge_distance(c["x"], c["y"], c.image_shape)
        near = rel.neighbour_distance(c["x"], c["y"], raw)
        w = cal.cutout_probability(edge, raw, c.image_shape)
        want = w * cal.cutout(raw, ood, edge, near) + (1 - w) * cal.isolated(raw, ood, edge, near)
        v = shapes.real_shapes_probability(ood)
        assert c.meta["real_shapes_probability"] == pytest.approx(v, abs=1e-4)
        r = shapes.share_posterior(ood) @ shapes.responsibility(ood, rel.SHARE_GRID)
        want = r * real(raw, ood, edge, near, shape=c.image_shape) + (1 - r) * want
        np.testing.assert_allclose(np.asarray(c["prob"]), want, rtol=1e-6)
    assert mean_w[8] > mean_w[0] + 0.15


def test_calibration_from_detections_splits_only_by_the_contexts_named():
    """With no context each layout gets one isotonic map (the plain fit of its detections);
    with ``edge`` alone the edge zones split it and nothing else; the default equals the fit
    of every context; an unknown context is a clear error."""
    from probcat.simulate.scene import SceneConfig

    class Sim:
        config = SceneConfig(40, 40, margin=8)

    g = np.random.default_rng(3)
    n = 3000
    edge = np.where(np.arange(n) % 4 == 0, 1.0, 20.0)
    d = {
        "prob": g.uniform(0.5, 1.0, n),
        "real": (edge > 2) | (np.arange(n) % 8 == 0),  # edge detections half real
        "edge": edge,
        "neighbour": np.full(n, np.inf),
        "ood": g.uniform(0, 1, n),
        "layout": np.zeros(n, int),
    }
    layouts = [(Sim(), 60)]
    plain = rel.calibration_from_detections(d, layouts, contexts=())
    ref = rel.fit_probability_calibration(d["prob"], d["real"])
    assert plain == ref and not plain.by_zone and not plain.by_ood
    by_edge = rel.calibration_from_detections(d, layouts, contexts=("edge",))
    assert by_edge.axis == "edge" and not by_edge.by_ood
    p = np.full(100, 0.8)
    assert by_edge(p, edge=np.full(100, 1.0)).mean() == pytest.approx(0.5, abs=0.05)
    assert by_edge(p, edge=np.full(100, 20.0)).mean() == pytest.approx(1.0, abs=0.01)
    full = rel.calibration_from_detections(d, layouts)
    assert full == rel.fit_probability_calibration(
        d["prob"], d["real"], ood=d["ood"], edge=d["edge"], neighbour=d["neighbour"]
    )
    with pytest.raises(ProbcatValueError, match="unknown calibration context"):
        rel.calibration_from_detections(d, layouts, contexts=("colour",))


def _shapes_cal(prior=0.2, log_ratio=None):
    """Prior shapes: a layout calibration; real shapes: raw (0.5, 1.0) -> (0.3, 0.5)."""
    real = rel.ProbabilityCalibration((0.5, 1.0), (0.3, 0.5), 500, "real")
    if log_ratio is None:  # the evidence: high ood_score values are real shapes' mark
        log_ratio = tuple(np.r_[np.full(17, -0.1), [0.2, 0.5, 1.0]])
    return rel.ShapesCalibration(_layout_cal(), real, log_ratio, prior, "hdf", 800, "test")


def _share_by_hand(scores, log_ratio, prior):
    """Posterior mean share, by brute force: a fine grid of shares, the prior's masses at
    0 and 1 and its even spread between (mean ``prior``), the likelihood a product over
    the detections."""
    w = np.linspace(0, 1, 2001)
    pr = np.full(len(w), 2 * prior / 3 / (len(w) - 2))
    pr[0], pr[-1] = 1 - 4 * prior / 3, 2 * prior / 3
    like = np.ones(len(w))
    for s in scores:
        e = np.exp(log_ratio[min(int(s * 20), 19)])
        like = like * (w * e + 1 - w)
    post = pr * like / np.sum(pr * like)
    return float(post @ w)


@pytest.mark.parametrize("scores", [[], [0.5], [0.99, 0.9, 0.1], [0.999] * 40, [0.2] * 400])
def test_real_shapes_share_is_the_posterior_mean_on_the_ood_score_bins(scores):
    cal = _shapes_cal()
    want = _share_by_hand(scores, np.asarray(cal.log_ratio), 0.2)
    assert cal.real_shapes_probability(np.asarray(scores)) == pytest.approx(want, abs=2e-3)
    # no scores: the prior's mean (0.733 on 0, 0.133 on 1, 0.133 spread between)
    assert cal.real_shapes_probability(None) == pytest.approx(0.2)
    post = rel.share_posterior(0.2, 0.0)
    assert post.sum() == pytest.approx(1.0) and post[0] == pytest.approx(1 - 0.8 / 3)
    with pytest.raises(ProbcatValueError, match="prior < 0.75"):
        rel.ShapesCalibration(cal.prior_shapes, cal.real_shapes, cal.log_ratio, 0.75)


def test_many_detections_measure_the_share_of_unusual_galaxies():
    """Thousands of detections whose scores follow a mixture of the two kinds' densities
    (the bins' counts in proportion) give that mixture's share, not 0 or 1; all unusual or
    all ordinary ones give the ends; two detections say little."""
    f_prior = np.full(20, 0.05)
    f_real = np.r_[np.full(17, 0.04), [0.07, 0.1, 0.15]]
    cal = _shapes_cal(log_ratio=tuple(np.log(f_real / f_prior)))
    for share in (0.1, 0.3, 0.6):
        n = np.round(20000 * (share * f_real + (1 - share) * f_prior)).astype(int)
        ood = np.repeat((np.arange(20) + 0.5) / 20, n)
        assert cal.real_shapes_probability(ood) == pytest.approx(share, abs=0.03)
    assert cal.real_shapes_probability(np.full(200, 0.995)) > 0.95  # a sky of unusual ones
    assert cal.real_shapes_probability(np.linspace(0, 0.8, 2000)) < 0.002  # ordinary ones
    # two detections say little: the share moves from the prior's mean, 0.2, to neither end
    assert 0.2 < cal.real_shapes_probability(np.array([0.3, 0.97])) < 0.5


def test_shapes_calibration_mixes_the_maps_and_round_trips():
    """Each detection gets the two maps mixed by its responsibility: at a stated share
    ``w``, ``w e / (w e + 1 - w)`` with ``e`` its bin's density ratio; from the image's own
    scores, that averaged over the share's posterior (by brute force)."""
    cal = _shapes_cal()
    raw = np.array([0.6, 0.8, 1.0])
    edge = np.array([20.0, 20.0, 20.0])
    ood = np.array([0.95, 0.99, 0.5])
    e = np.exp(np.array([cal.log_ratio[19], cal.log_ratio[19], cal.log_ratio[10]]))
    prior_p = cal.prior_shapes(raw, ood, edge, None, shape=(40, 40))
    real_p = np.array([0.34, 0.42, 0.5])
    r = 0.3 * e / (0.3 * e + 0.7)
    got = cal(raw, ood, edge, None, shape=(40, 40), real_shapes=0.3)
    np.testing.assert_allclose(got, r * real_p + (1 - r) * prior_p)
    w = np.linspace(0, 1, 2001)
    pr = np.full(len(w), 0.4 / 3 / 1999)
    pr[0], pr[-1] = 1 - 0.8 / 3, 0.4 / 3
    post = pr * np.prod(w[:, None] * e + 1 - w[:, None], axis=1)
    post /= post.sum()
    r = post @ (w[:, None] * e / (w[:, None] * e + 1 - w[:, None]))
    got = cal(raw, ood, edge, None, shape=(40, 40))
    np.testing.assert_allclose(got, r * real_p + (1 - r) * prior_p, atol=1e-3)
    np.testing.assert_allclose(cal(raw, ood, edge, None, shape=(40, 40), real_shapes=1.0), real_p)
    np.testing.assert_allclose(cal(raw, ood, edge, None, shape=(40, 40), real_shapes=0.0), prior_p)
    back = rel.calibration_from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    with pytest.raises(ProbcatValueError, match="prior"):
        rel.ShapesCalibration(cal.prior_shapes, cal.real_shapes, cal.log_ratio, 0.0)
    with pytest.raises(ProbcatValueError, match="20 log ratios"):
        rel.ShapesCalibration(cal.prior_shapes, cal.real_shapes, (0.0,) * 19)


def test_ood_log_ratio_equals_the_histograms_by_hand():
    real = np.r_[np.full(30, 0.97), np.full(10, 0.02), [1.0]]  # 1.0 is the last bin's
    prior = np.r_[np.full(5, 0.97), np.full(35, 0.42)]
    got = rel.ood_log_ratio(real, prior)
    hr, hp = np.ones(20), np.ones(20)
    hr[19] += 31
    hr[0] += 10
    hp[19] += 5
    hp[8] += 35
    np.testing.assert_allclose(got, np.log((hr / hr.sum()) / (hp / hp.sum())))
    with pytest.raises(ProbcatValueError, match="no detections"):
        rel.ood_log_ratio([], prior)


def test_annotate_records_the_images_real_shapes_probability():
    class Net:
        prob_calibration = _shapes_cal(prior=0.3, log_ratio=(0.0,) * 20)  # no evidence
        feature_density = None

    cat = _map_catalog([0.5, 0.5, 15.0], [10.0, 20.0, 15.0], [0.9, 0.9, 0.9], [0, 0, 3],
                       [2, 4, 3], (30, 30))  # fmt: skip
    out = rel.annotate(cat, Net(), torch.zeros(3, 6, 6))
    w = Net.prob_calibration.prior_shapes.cutout_probability([1.0, 1.0, 15.0], [0.9] * 3, (30, 30))
    assert out.meta["real_shapes_probability"] == pytest.approx(0.3)  # the prior's mean
    assert out.meta["prob_calibration"].startswith("test; for galaxies like hdf: test")
    assert out.meta["cutout_probability"] == pytest.approx(w, abs=1e-4)
    assert out["prob"] == pytest.approx(0.3 * 0.46 + 0.7 * (w * 0.36 + (1 - w) * 0.8))
    rec = out.meta["calibration_evidence"]["real_shapes"]
    assert rec == {"prior": 0.3, "counts": [], "bin_log_ratio": [0.0] * 20}  # no scores


def test_fit_shapes_calibration_keeps_the_prior_map_and_fits_the_other_on_its_scenes(
    monkeypatch,
):
    """The real shapes' map is fitted on the real-shapes scenes' detections (ood_score from
    the weights' density), the evidence from both kinds' scores, and the weights' own map
    stays; a refit replaces only the real shapes' part; weights without a calibration or
    a density are a clear error."""
    from probcat.simulate.scene import SceneConfig

    def fake_rows(net, sim, noise_sigma, *, n_scenes, rng):
        return _far_quarter_rows(n_scenes, far=sim.kind == "real")  # unusual, false

    monkeypatch.setattr(rel, "detections_with_outcomes", fake_rows)
    real_sim = SimpleNamespace(config=SceneConfig(40, 40), kind="real")
    prior_sim = SimpleNamespace(config=SceneConfig(40, 40), kind="prior")
    dens = rel.fit_feature_density(np.random.default_rng(5).standard_normal((500, 3)))
    own = rel.ProbabilityCalibration((0.0, 1.0), (0.0, 0.95), 100, "own")
    net = SimpleNamespace(feature_density=dens, prob_calibration=own)
    cal = rel.fit_shapes_calibration(net, real_sim, prior_sim, 1.0, n_scenes=50, rng=0,
                                     prior=0.1, population="hdf", source="s")  # fmt: skip
    assert cal.prior_shapes is own and cal.population == "hdf" and cal.n == 2000
    p = np.linspace(0.55, 0.95, 5)
    # the real shapes' map: far (ood_score 1) detections false, the others real
    assert np.all(cal.real_shapes(p, ood=np.ones(5), edge=np.full(5, 20.0)) < 0.1)
    # a quarter of the real shapes' scores are 1 (the last bin), the rest spread as the prior's
    assert cal.log_ratio[-1] > 1.0 and np.mean(cal.log_ratio[:-1]) == pytest.approx(
        np.log(0.75), abs=0.1
    )
    assert cal.real_shapes_probability(np.ones(30)) > 0.99
    net.prob_calibration = cal
    again = rel.fit_shapes_calibration(net, real_sim, prior_sim, 1.0, n_scenes=50, rng=0)
    assert again.prior_shapes is own  # not a mixture of mixtures
    with pytest.raises(ProbcatValueError, match="feature density"):
        rel.fit_shapes_calibration(SimpleNamespace(feature_density=None, prob_calibration=own),
                                   real_sim, prior_sim, 1.0)  # fmt: skip


class _OodFromFeature:
    """A feature density whose ``ood_score`` is a tile's first feature."""

    def score(self, feats):
        return np.asarray(feats)[:, 0]


def _scene_with_ood(xs, ys, ood, shape=(40, 40)):
    """A MAP catalogue of detections at ``xs, ys`` (raw probability 0.9) and tile features
    whose ``ood_score`` (:class:`_OodFromFeature`) is ``ood`` at their tiles."""
    tx, ty = (np.asarray(v, float).astype(int) // 5 for v in (xs, ys))
    cat = _map_catalog(xs, ys, [0.9] * len(xs), tx, ty, shape)
    feats = torch.zeros(1, shape[0] // 5, shape[1] // 5)
    feats[0, ty, tx] = torch.as_tensor(np.asarray(ood, np.float32))
    return cat, feats


def test_pooled_evidence_is_bayes_rule_on_every_images_detections():
    """Pooled over images, the real-shapes share is the one a single image holding all
    their detections would get (the share's log likelihoods add up), and the cutout weight
    adds the images' Poisson log likelihood ratios to the prior (by hand); catalogues
    without a record, and kinds no image has evidence of, are left out."""
    cal = _shapes_cal(prior=0.2)
    net = SimpleNamespace(prob_calibration=cal, feature_density=_OodFromFeature())
    scenes = [
        _scene_with_ood([1.0, 20.0, 33.0], [20.0, 20.0, 21.0], [0.97, 0.99, 0.3]),
        _scene_with_ood([20.0, 12.0], [1.0, 25.0], [0.95, 0.5]),
        _scene_with_ood([20.0], [20.0], [0.999]),
    ]
    cats = [rel.annotate(c, net, f) for c, f in scenes]
    got = rel.pooled_evidence(cats + [_map_catalog([], [], [], [], [], (40, 40))])
    assert got["images"] == 3
    ood = np.concatenate([np.asarray(c["ood_score"]) for c in cats])
    assert got["real_shapes"] == pytest.approx(cal.real_shapes_probability(ood), rel=1e-9)
    lay = cal.prior_shapes
    k_cut, k_iso = lay.edge_excess
    z = np.log(lay.prior / (1 - lay.prior))
    for c in cats:
        e = rel.edge_distance(c["x"], c["y"], (40, 40))
        n_edge, n_int = int(np.sum(e < 2)), int(np.sum(e >= 8))
        mu = n_int / (24 * 24) * (40 * 40 - 36 * 36)
        z += n_edge * np.log(k_cut / k_iso) - mu * (k_cut - k_iso)
    assert got["cutout"] == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-6)
    alone = rel.pooled_evidence(cats[:1])  # one image: its own weights
    assert alone["real_shapes"] == pytest.approx(cats[0].meta["real_shapes_probability"], abs=1e-4)
    assert rel.pooled_evidence([]) == {"images": 0, "real_shapes": None, "cutout": None}
    layout_only = SimpleNamespace(prob_calibration=lay, feature_density=_OodFromFeature())
    other = rel.pooled_evidence([rel.annotate(c, layout_only, f) for c, f in scenes])
    assert other["real_shapes"] is None and other["cutout"] == pytest.approx(got["cutout"])


def test_stated_weights_choose_the_maps_and_are_recorded():
    """``real_shapes`` and ``cutout`` given: the maps mixed by those weights (1 and 0 give
    one map alone; a share between weighs each detection by its responsibility), whatever
    the image's own detections say, which its record keeps."""
    cal = _shapes_cal(prior=0.2)
    net = SimpleNamespace(prob_calibration=cal, feature_density=_OodFromFeature())
    cat, feats = _scene_with_ood([1.0, 20.0, 33.0], [20.0, 20.0, 21.0], [0.97, 0.2, 0.3])
    own = rel.annotate(cat, net, feats)
    assert own.meta["calibration_evidence"]["from"] == "image"
    raw = np.full(3, 0.9)
    real = rel.annotate(cat, net, feats, real_shapes=1.0, cutout=0.0)
    np.testing.assert_allclose(real["prob"], cal.real_shapes(raw))  # (0.5, 1) -> (0.3, 0.5)
    prior = rel.annotate(cat, net, feats, real_shapes=0.0, cutout=1.0, evidence_from="x")
    np.testing.assert_allclose(prior["prob"], cal.prior_shapes.cutout(raw))
    half = rel.annotate(cat, net, feats, real_shapes=0.5, cutout=0.25)
    lay = cal.prior_shapes
    e = np.exp([1.0, -0.1, -0.1])  # the bins of ood_score 0.97, 0.2 and 0.3
    r = e / (e + 1)  # each detection's responsibility at a share of one half
    want = r * cal.real_shapes(raw) + (1 - r) * (0.25 * lay.cutout(raw) + 0.75 * lay.isolated(raw))
    np.testing.assert_allclose(half["prob"], want)
    assert (real.meta["real_shapes_probability"], real.meta["cutout_probability"]) == (1.0, 0.0)
    assert prior.meta["calibration_evidence"] == {**own.meta["calibration_evidence"], "from": "x"}
    for bad in (1.5, -0.1, float("nan"), "yes", True):
        with pytest.raises(ProbcatValueError, match="real_shapes must be a probability"):
            rel.check_evidence(bad, "real_shapes")
    with pytest.raises(ProbcatValueError, match=r"in \[0, 1\], got 'pooled'"):
        rel.check_evidence("pooled", "--cutout", pooled=False)
    assert rel.check_evidence("pooled", "cutout") == "pooled"


def test_detector_pools_the_evidence_of_a_list_of_images(tiny_bank, tmp_path):
    """``real_shapes="pooled"`` / ``cutout="pooled"``: the images of one call read with the
    weights their MAP catalogues' evidence gives together (those catalogues' files give the
    same), each catalogue saying so; the detections are the same as each image's own."""
    import probcat
    from probcat.simulate.scene import SceneConfig, SceneSimulator

    det = probcat.load("detection_lsst_i", device="cpu", threads=1)
    sim = SceneSimulator(tiny_bank, SceneConfig(48, 48, margin=8))
    rng = np.random.default_rng(5)
    imgs = [sim.sample(rng).image for _ in range(4)]
    sigma = tiny_bank.survey.noise_sigma
    own = det.catalog(imgs, noise_sigma=sigma)
    paths = [c.write(tmp_path / f"c{k}.fits") for k, c in enumerate(own)]
    ev = probcat.pooled_evidence(paths)
    assert ev == probcat.pooled_evidence(own) and ev["images"] == 4
    pooled = det.catalog(imgs, noise_sigma=sigma, real_shapes="pooled", cutout="pooled")
    stated = det.catalog(
        imgs, noise_sigma=sigma, real_shapes=ev["real_shapes"], cutout=ev["cutout"]
    )
    for a, b, c in zip(own, pooled, stated):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_allclose(b["prob"], c["prob"], rtol=1e-12)
        assert b.meta["calibration_evidence"]["from"] == "pooled over 4 images"
        assert b.meta["real_shapes_probability"] == round(ev["real_shapes"], 4)
        assert b.meta["cutout_probability"] == round(ev["cutout"], 4)
    # the images' own weights differ from the pooled ones: the test sees which was used
    assert any(abs(a.meta["cutout_probability"] - ev["cutout"]) > 0.01 for a in own)
    assert any(abs(a.meta["real_shapes_probability"] - ev["real_shapes"]) > 0.01 for a in own)
    with pytest.raises(ProbcatValueError, match="cutout must be a probability"):
        det.catalog(imgs, noise_sigma=sigma, cutout=2)
    one = det.catalog(imgs[0], noise_sigma=sigma, real_shapes="pooled")  # one: its own
    assert one.meta["calibration_evidence"]["from"] == "image"
    np.testing.assert_allclose(one["prob"], own[0]["prob"], rtol=1e-5)  # batch of 1 vs 4
    # at a seeing whose calibration has no second map, a stated weight is said to do nothing
    with pytest.warns(probcat.ProbcatWarning, match="real_shapes has no effect on the image"):
        det.catalog(imgs[0], noise_sigma=sigma, real_shapes=1.0, seeing=1.5)
