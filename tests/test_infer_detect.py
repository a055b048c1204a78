import math

import numpy as np
import pytest
import torch
from helpers import refiner_net, stamp_net_with

from probcat.errors import ProbcatValueError
from probcat.infer.detect import (
    decode,
    map_catalog,
    predict_tiles,
    sample_catalogs,
    tile_features,
)
from probcat.nets.detection import DetectionNet, tile_groups


def test_any_size_chunked_equals_whole(net):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((1, 47, 61)).astype(np.float32) * 3
    whole = tile_features(net, img, 1.0, chunk_tiles=1000)
    chunked = tile_features(net, img, 1.0, chunk_tiles=3)
    assert whole.shape[-2:] == (10, 13)
    assert torch.allclose(whole, chunked, atol=1e-5)
    a, b = predict_tiles(net, img, 1.0), predict_tiles(net, img, 1.0, chunk_tiles=3)
    assert torch.allclose(a.count_logit, b.count_logit, atol=1e-5)


def test_stamp_pixels_share_whole_tile_images_and_leave_them_unchanged():
    # an image of whole tiles is read in place by the stamp networks (no padded copy): the
    # pixels equal the padded copy, and decoding every tile (each stamp read) and drawing
    # samples leaves them as they were
    from probcat.infer.detect import features_sigma, pixels_sigma
    from probcat.tiles import pad_to_tiles

    net = refiner_net()
    rng = np.random.default_rng(4)
    for h, w in ((40, 35), (41, 37)):  # whole tiles (shared), then not (padded copy)
        x = (rng.standard_normal((1, 1, h, w)) * 2).astype(np.float32)
        x[0, 0, 10:14, 12:16] += 30  # a bright source
        before = x.copy()
        pix = pixels_sigma(net, x)
        assert np.shares_memory(pix.numpy(), x) == (h % 5 == 0 and w % 5 == 0)
        assert np.array_equal(pix.numpy(), pad_to_tiles(x, net.tile_size))
        feats = features_sigma(net, x)
        cat = map_catalog(net, feats, (h, w), image=pix, threshold=0.0)  # every tile
        sample_catalogs(net, feats, (h, w), 4, image=pix, generator=torch.Generator())
        assert len(cat) > 0 and np.array_equal(x, before)


def test_batched_features_equal_per_image(net):
    from probcat.infer.detect import batch_tile_features

    imgs = np.random.default_rng(3).standard_normal((3, 1, 33, 41)).astype(np.float32)
    batched = batch_tile_features(net, imgs, 1.0)
    for i in range(3):
        assert torch.allclose(batched[i : i + 1], tile_features(net, imgs[i], 1.0), atol=1e-5)


def test_map_catalog_and_samples(net):
    img = np.random.default_rng(1).standard_normal((1, 30, 30)).astype(np.float32)
    feats = tile_features(net, img, 1.0)
    cat = map_catalog(net, feats, (30, 30), threshold=0.0)
    assert len(cat) == 36  # every tile detected at threshold 0
    assert np.all((cat["x"] >= -0.5) & (cat["x"] < 29.5))
    assert np.all(cat["x_sd"] > 0)
    assert np.array_equal(np.floor((cat["x"] + 0.5) / 5), cat["tile_x"])
    samples = sample_catalogs(net, feats, (30, 30), 40, generator=torch.Generator().manual_seed(0))
    assert len(samples) == 40 and all(len(s) <= 36 for s in samples)
    # a cutout's samples are decoded 32 at a time by default: the same draws as batch=32
    again = sample_catalogs(
        net, feats, (30, 30), 40, generator=torch.Generator().manual_seed(0), batch=32
    )
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(samples, again))
    odd = sample_catalogs(net, feats, (30, 30), 5, generator=torch.Generator(), batch=2)
    assert len(odd) == 5


def test_sample_batch_shrinks_with_the_tile_count():
    from probcat.infer.detect import SAMPLE_TILES, sample_batch

    assert sample_batch(36) == 32  # cutouts: capped
    assert sample_batch(250 * 250) == SAMPLE_TILES // 62_500 == 4  # a 1000x1000 field
    assert sample_batch(1000 * 1000) == 1  # a 4000x4000 field: one at a time
    assert sample_batch(0) == 32
    # a GPU's budget is 8 times larger (no GPU needed to check the arithmetic)
    assert sample_batch(250 * 250, "cuda") == 32 and sample_batch(1000 * 1000, "cuda") == 2
    assert sample_batch(250 * 250, torch.device("cpu")) == 4


@pytest.mark.parametrize("classifier", ["tile", "stamp"])
def test_map_decoding_equals_a_brute_force_sequence_of_head_calls(classifier):
    """MAP decoding equals, group by group, full-grid head calls conditioned on the
    decisions of the groups before (no row chunks, no group-only heads, no merging)."""
    torch.manual_seed(3)
    net = DetectionNet(
        n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier=classifier, proximity=True
    ).eval()
    image = torch.randn(1, 1, 35, 40) * 3
    feats = net.features(image)
    with torch.no_grad():  # a busy scene: about half of the marginal counts on
        net.detection_head.det_head.weight[0] *= 30
        logit = net.detection_params(net.trunk(feats))[0]
        net.detection_head.det_head.bias[0] -= logit.median()
    dec = decode(net, feats, image=image, threshold=0.5, row_chunk=2, merge_px=0.0)
    nty, ntx = feats.shape[-2:]
    groups = tile_groups(nty, ntx)[None]
    n = torch.zeros(1, nty, ntx, dtype=torch.bool)
    locs = torch.zeros(1, nty, ntx, 2)
    decided = torch.zeros_like(n)
    with torch.no_grad():
        for g in range(4):
            now = groups == g
            out = net.heads(feats, decided, n, locs, classify=False)
            on, loc = out.prob > 0.5, out.loc_post_mean
            assert torch.allclose(out.count_logit[now], dec.conditional.count_logit[now], atol=1e-5)
            mine = now & on
            h = net.trunk(feats, decided, n, locs)
            logits = net.classify(h, loc, image, mask=mine)
            assert torch.allclose(logits[mine], dec.conditional.galaxy_logit[mine], atol=1e-5)
            if g == 0:  # nothing decided: every tile's marginal
                assert torch.allclose(out.count_logit, dec.marginal.count_logit, atol=1e-5)
            n = torch.where(now, on, n)
            locs = torch.where(now[..., None], loc, locs)
            decided |= now
    assert 0 < int(n.sum()) < nty * ntx
    assert torch.equal(n, dec.n)
    assert torch.allclose(locs[n], dec.locs[n], atol=1e-6)


def test_sample_decoding_is_seeded():
    torch.manual_seed(1)
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=1).eval()
    feats = net.features(torch.randn(1, 1, 30, 30))
    with torch.no_grad():  # counts and locations that vary from draw to draw
        net.detection_head.det_head.bias[0] -= net.detection_params(net.trunk(feats))[0].median()

    def draw(seed):
        return decode(net, feats, n_samples=3, generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(1), draw(1), draw(2)
    assert a.n.shape == (3, 6, 6) and a.locs.shape == (3, 6, 6, 2)
    assert torch.equal(a.n, b.n) and torch.equal(a.locs, b.locs)
    assert not torch.equal(a.n, c.n) or not torch.equal(a.locs, c.locs)


def _refiner_with_calibration():
    from probcat.infer.calibration import calibration_from_errors
    from probcat.infer.detect import tile_image

    torch.manual_seed(0)
    net = DetectionNet(
        n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier="stamp", loc_refine=True
    ).eval()
    errors = np.abs(np.random.default_rng(2).standard_normal(20_000)) * 0.7
    net.centroid_calibration = calibration_from_errors(errors)
    img = np.random.default_rng(4).standard_normal((1, 120, 120)).astype(np.float32) * 3
    return net, tile_features(net, img, 1.0), tile_image(net, img, 1.0)


def test_a_samples_draws_do_not_depend_on_the_batch_it_is_drawn_in():
    """Sample k of a seed is the same whether drawn alone or with others (a GPU draws more
    samples per batch than a CPU); before, a sample's numbers came from one stream shared
    by its batch."""
    net, feats, pixels = _refiner_with_calibration()

    def draw(n, batch):
        gen = torch.Generator().manual_seed(11)
        return sample_catalogs(net, feats, (120, 120), n, image=pixels, generator=gen,
                               batch=batch)  # fmt: skip

    whole = draw(5, 5)
    assert sum(len(c) for c in whole) > 20
    for got in (draw(5, 1), draw(5, 2), draw(3, 3)):
        for a, b in zip(whole, got):  # the same sources (positions to float rounding)
            assert len(a) == len(b)
            np.testing.assert_array_equal(a["galaxy"], b["galaxy"])
            for col in ("x", "y"):
                np.testing.assert_allclose(a[col], b[col], rtol=0, atol=1e-4)


def test_a_flipped_decision_changes_its_neighbourhood_not_the_whole_sample():
    """A tile whose decision changes (as float rounding can flip one near its probability on
    another device) leaves the random numbers of every other draw as they were: only
    tiles near it, conditioned on it, differ. (When the position errors were drawn for the
    decided sources alone, one more source shifted every later number: all 576 tiles of
    this grid differed.)"""
    net, feats, pixels = _refiner_with_calibration()

    def run(f):
        gen = torch.Generator().manual_seed(7)
        return decode(net, f, image=pixels, n_samples=8, generator=gen, sweeps=2)

    a = run(feats)
    moved = feats.clone()
    moved[..., 0, 0] += 200.0  # the corner tile's heads see other features: p 0.60 -> 0.98
    b = run(moved)
    assert (a.n[:, 0, 0] != b.n[:, 0, 0]).any()  # its decision flipped in some sample
    differs = (a.n != b.n) | (((a.locs - b.locs).abs().amax(-1) > 1e-6) & (a.n | b.n))
    ty, tx = torch.nonzero(differs.any(0), as_tuple=True)
    assert int(torch.maximum(ty, tx).max()) <= 3  # 24 x 24 tiles: the rest is the same


def test_sampling_matches_probabilities():
    """With a network whose heads ignore the conditioning, samples follow the marginals."""
    net = DetectionNet(n_bands=1, stem_channels=2, channels=4, n_blocks=1).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.detection_head.det_head.bias.copy_(
            torch.tensor([math.log(0.3 / 0.7), 0, 0, -30.0, -30.0])
        )
    feats = torch.zeros(1, 4, 2, 3)
    s = sample_catalogs(net, feats, (10, 15), 3000, generator=torch.Generator().manual_seed(0))
    n = np.array([len(c) for c in s])
    assert n.mean() == pytest.approx(6 * 0.3, abs=0.05)
    assert np.allclose(s[0]["x"] % 5, 2.0, atol=0.1)  # sigmoid(0) = 0.5 tile -> pixel 2.0


@pytest.mark.parametrize(
    "image, msg",
    [
        (np.full((1, 20, 20), np.nan), "NaN"),
        (np.zeros((2, 20, 20)), "band"),
        (np.zeros((1, 0, 20)), "empty"),
        (np.zeros(5), "bands, H, W"),
    ],
)
def test_bad_inputs(net, image, msg):
    with pytest.raises(ProbcatValueError, match=msg):
        predict_tiles(net, image, 1.0)


@pytest.mark.parametrize(
    "sigma, msg",
    [
        ([1.0, 2.0], r"got \[1.0, 2.0\] \(2 values for 1 band\(s\)\)"),
        ("abc", "got 'abc'$"),
        (-1.0, "positive and finite"),
    ],
)
def test_bad_noise_sigma(net, sigma, msg):
    with pytest.raises(ProbcatValueError, match=msg):
        predict_tiles(net, np.zeros((1, 20, 20)), sigma)


@pytest.mark.parametrize(
    "classifier,sweeps,refine",
    [("tile", 1, False), ("stamp", 1, False), ("stamp", 2, False), ("stamp", 2, True)],
)
def test_decode_in_row_chunks_equals_whole(classifier, sweeps, refine):
    from probcat.infer.detect import tile_image

    torch.manual_seed(0)
    net = DetectionNet(
        n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier=classifier, proximity=True
    ).eval()
    if refine:
        net = refiner_net()
    img = np.random.default_rng(4).standard_normal((1, 43, 37)).astype(np.float32) * 3
    feats, pixels = tile_features(net, img, 1.0), tile_image(net, img, 1.0)
    whole = decode(net, feats, image=pixels, threshold=0.3, row_chunk=1000, sweeps=sweeps)
    for rows in (1, 2, 3):
        part = decode(net, feats, image=pixels, threshold=0.3, row_chunk=rows, sweeps=sweeps)
        assert torch.equal(whole.n, part.n) and whole.n.any()
        assert torch.allclose(whole.locs, part.locs, atol=1e-6)
        c, w = part.conditional, whole.conditional
        assert torch.allclose(c.count_logit, w.count_logit, atol=1e-5)
        assert torch.allclose(c.galaxy_logit, w.galaxy_logit, atol=1e-5, equal_nan=True)
        assert torch.isfinite(c.galaxy_logit[part.n]).all()


def test_tile_image_pads_to_whole_tiles_in_sigma_units(net):
    from probcat.infer.detect import tile_image

    img = np.full((1, 12, 7), 4.0, np.float32)
    one = tile_image(net, img, 2.0)
    assert one.shape == (1, 1, 15, 10)
    assert torch.all(one[0, 0, :12, :7] == 2.0) and one[0, 0, 12:].abs().sum() == 0
    batch = tile_image(net, np.stack([img, img * 2]), 2.0)
    assert batch.shape == (2, 1, 15, 10) and batch[1, 0, 0, 0] == 4.0
    with pytest.raises(ProbcatValueError, match="NaN"):
        tile_image(net, np.full((1, 10, 10), np.nan), 1.0)


def test_later_sweeps_redecide_each_group_given_all_others(monkeypatch):
    """Sweep 1 decides group g given groups < g; sweep 2 re-decides it given all others."""
    import probcat.infer.detect as D

    torch.manual_seed(0)
    net = DetectionNet(n_bands=1, channels=8, n_blocks=1, stem="patchify", proximity=True).eval()
    img = np.random.default_rng(5).standard_normal((1, 40, 40)).astype(np.float32) * 3
    feats = tile_features(net, img, 1.0)
    seen = []
    real = D._group_pass

    def spy(net_, f, decided, n, locs, g, row_chunk, every_tile=True):
        seen.append((g, decided.clone()))
        return real(net_, f, decided, n, locs, g, row_chunk, every_tile)

    monkeypatch.setattr(D, "_group_pass", spy)
    dec = decode(net, feats, n_samples=4, generator=torch.Generator().manual_seed(0), sweeps=2)
    groups = tile_groups(*feats.shape[-2:])
    assert [g for g, _ in seen] == [0, 1, 2, 3] * 2
    for step, (g, decided) in enumerate(seen):
        want = groups < g if step < 4 else groups != g
        assert torch.equal(decided, want.expand_as(decided))
    assert torch.isfinite(dec.conditional.galaxy_logit[dec.n]).all()
    with pytest.raises(ProbcatValueError, match="sweeps"):
        decode(net, feats, sweeps=0)


@pytest.mark.parametrize("refine", [False, True])
def test_group_only_heads_decode_as_the_every_tile_heads(monkeypatch, refine):
    """Later passes run the heads on their group's tiles only: same decisions, locations and
    conditional outputs as running them on every tile."""
    import probcat.infer.detect as D

    net = stamp_net_with(refine)
    img = np.random.default_rng(6).standard_normal((1, 43, 37)).astype(np.float32) * 3
    feats, pixels = tile_features(net, img, 1.0), D.tile_image(net, img, 1.0)
    kw = dict(image=pixels, n_samples=3, sweeps=2, row_chunk=3)
    fast = decode(net, feats, generator=torch.Generator().manual_seed(2), **kw)
    real = D._group_pass
    monkeypatch.setattr(
        D,
        "_group_pass",
        lambda *a: real(*a[:7], True),  # every tile, every pass
    )
    slow = decode(net, feats, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(fast.n, slow.n) and fast.n.any()
    assert torch.allclose(fast.locs, slow.locs, atol=1e-5)
    c, w = fast.conditional, slow.conditional
    assert torch.allclose(c.count_logit, w.count_logit, atol=1e-5)
    assert torch.allclose(c.galaxy_logit, w.galaxy_logit, atol=1e-5, equal_nan=True)


def test_unsubtracted_sky_warns_but_a_bright_galaxy_does_not():
    import warnings

    from probcat.infer.detect import check_image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    galaxy = 50.0 * np.exp(-np.hypot(xx - 32, yy - 32) / 12.0)  # median pixel ~ 8 sigma
    image = (galaxy + rng.standard_normal((64, 64)))[None]
    assert np.median(image) > 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_image(image, 1, 1.0)  # sky-subtracted: no warning
    with pytest.warns(UserWarning, match="background-subtracted"):
        check_image(image + 435.0, 1, 1.0)
