import math

import numpy as np
import pytest
import torch

from probcat.catalog import FullCatalog
from probcat.tiles import TileCatalog
from probcat.errors import ProbcatValueError
from probcat.infer.detect import (
    decode,
    map_catalog,
    predict_tiles,
    sample_catalogs,
    tile_features,
)
from probcat.nets.detection import DetectionNet, TileOutput, tile_groups
from probcat.train.losses import favi_detection_loss


def _galaxy_and_star(x, y, size):
    """A catalog of a galaxy at ``(x[0], y[0])`` and a star at ``(x[1], y[1])``."""
    return FullCatalog(
        {
            "x": np.array(x),
            "y": np.array(y),
            "galaxy": np.array([True, False]),
            "flux": np.ones((2, 1)),
        },
        (size, size),
    )


@pytest.fixture
def net():
    torch.manual_seed(0)
    return DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2).eval()


def test_output_shapes_and_ranges(net):
    out = net(torch.randn(2, 1, 40, 30))
    assert out.count_logit.shape == (2, 8, 6) and out.loc_mean.shape == (2, 8, 6, 2)
    assert torch.all((out.loc_mean > 0) & (out.loc_mean < 1))
    assert torch.all(out.prob <= 1) and torch.all(out.galaxy_prob >= 0)


@pytest.mark.parametrize("stem", ["conv", "patchify"])
def test_receptive_field_covers_padded_tile_and_is_exact(stem):
    """Impulse test: a pixel influences a tile only within the stated receptive field."""
    torch.manual_seed(0)
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2, stem=stem).eval()
    assert DetectionNet(stem=stem).receptive_field >= 53
    x = torch.zeros(1, 1, 125, 125, requires_grad=True)
    feats = net.features(x)
    feats[0, :, 12, 12].sum().backward()
    g = x.grad[0, 0].abs() > 0
    ys, xs = torch.nonzero(g, as_tuple=True)
    span = max(int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1)
    assert span <= net.receptive_field
    assert span >= net.receptive_field - 2 * net.tile_size


def _tiles(n_sources, locs, galaxy):
    n = torch.tensor(n_sources).reshape(1, 1, -1)
    return TileCatalog(
        n,
        torch.tensor(locs, dtype=torch.float).reshape(1, 1, -1, 2),
        {"galaxy": torch.tensor(galaxy, dtype=torch.float).reshape(1, 1, -1, 1)},
        5,
        (5, 5 * n.shape[-1]),
    )


def test_loss_hand_built_tiles():
    truth = _tiles([1, 0], [[0.3, 0.6], [0.0, 0.0]], [1.0, 0.0])
    out = TileOutput(
        count_logit=torch.tensor([[[0.0, 0.0]]]),
        loc_mean=torch.tensor([[[[0.3, 0.6], [0.5, 0.5]]]]),
        loc_logvar=torch.zeros(1, 1, 2, 2),
        galaxy_logit=torch.tensor([[[0.0, 5.0]]]),
    )
    parts = favi_detection_loss(out, truth)
    # counts: two tiles at p = 0.5; type: p = 0.5; location: exact mean, unit variance,
    # 2 dims, normal truncated to [0, 1]: -log density = log(2 pi)/2 + log Z per axis
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    log_z = math.log(phi(0.7) - phi(-0.3)) + math.log(phi(0.4) - phi(-0.6))
    assert parts["count"].item() == pytest.approx(2 * math.log(2))
    assert parts["loc"].item() == pytest.approx(math.log(2 * math.pi) + log_z, rel=1e-5)
    assert parts["type"].item() == pytest.approx(math.log(2))  # empty tile does not count
    assert parts["total"].item() == pytest.approx(
        3 * math.log(2) + math.log(2 * math.pi) + log_z, rel=1e-5
    )


def test_loss_gradients_finite_and_better_prediction_lower(net):
    img = torch.randn(2, 1, 20, 20)
    cats = [_galaxy_and_star((3.0, 12.2), (4.0, 9.9), 20)] * 2
    truth = TileCatalog.from_full(cats, 5)
    net.train()
    loss = favi_detection_loss(net(img), truth)["total"]
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    good = TileOutput(
        count_logit=(truth.n_sources.float() * 2 - 1) * 8,
        loc_mean=truth.locs.clamp(0.01, 0.99),
        loc_logvar=torch.full(truth.locs.shape, -6.0),
        galaxy_logit=(truth.params["galaxy"][..., 0] * 2 - 1) * 8,
    )
    assert favi_detection_loss(good, truth)["total"] < loss


def test_loss_mask_restricts_count_and_location_terms():
    truth = _tiles([1, 1], [[0.3, 0.6], [0.2, 0.2]], [1.0, 0.0])
    out = TileOutput(
        count_logit=torch.zeros(1, 1, 2),
        loc_mean=torch.full((1, 1, 2, 2), 0.5),
        loc_logvar=torch.zeros(1, 1, 2, 2),
        galaxy_logit=torch.zeros(1, 1, 2),
    )
    full = favi_detection_loss(out, truth)
    half = favi_detection_loss(out, truth, mask=torch.tensor([[[True, False]]]))
    assert half["count"].item() == pytest.approx(full["count"].item() / 2)
    assert half["type"].item() == pytest.approx(full["type"].item())


def test_any_size_chunked_equals_whole(net):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((1, 47, 61)).astype(np.float32) * 3
    whole = tile_features(net, img, 1.0, chunk_tiles=1000)
    chunked = tile_features(net, img, 1.0, chunk_tiles=3)
    assert whole.shape[-2:] == (10, 13)
    assert torch.allclose(whole, chunked, atol=1e-5)
    a, b = predict_tiles(net, img, 1.0), predict_tiles(net, img, 1.0, chunk_tiles=3)
    assert torch.allclose(a.count_logit, b.count_logit, atol=1e-5)


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


def test_decoding_conditions_later_groups_on_earlier_ones(net):
    feats = torch.randn(1, 8, 4, 4)
    out_free = net.heads(feats)
    decided = (tile_groups(4, 4) == 0)[None]
    out_cond = net.heads(feats, decided, decided.long(), torch.full((1, 4, 4, 2), 0.9))
    g1 = tile_groups(4, 4) == 1
    assert not torch.allclose(out_free.count_logit[0][g1], out_cond.count_logit[0][g1])
    dec = decode(net, feats, n_samples=3, generator=torch.Generator().manual_seed(1))
    assert dec.n.shape == (3, 4, 4) and dec.locs.shape == (3, 4, 4, 2)


def test_sampling_matches_probabilities():
    """With a network whose heads ignore the conditioning, samples follow the marginals."""
    net = DetectionNet(n_bands=1, stem_channels=2, channels=4, n_blocks=1).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.detection_head.det_head.bias.copy_(torch.tensor([math.log(0.3 / 0.7), 0, 0, -30.0, -30.0]))
    feats = torch.zeros(1, 4, 2, 3)
    s = sample_catalogs(net, feats, (10, 15), 3000, generator=torch.Generator().manual_seed(0))
    n = np.array([len(c) for c in s])
    assert n.mean() == pytest.approx(6 * 0.3, abs=0.05)
    assert np.allclose(s[0]["x"] % 5, 2.0, atol=0.1)  # sigmoid(0) = 0.5 tile -> pixel 2.0


def test_truncated_normal_samples_moments_and_intervals():
    from probcat.nets.distributions import (
        trunc_interval,
        trunc_log_prob,
        trunc_moments,
        trunc_sample,
    )

    mu = torch.tensor([0.02, 0.5, 0.97, 0.3])
    sd = torch.tensor([0.05, 0.1, 0.3, 2.0])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([trunc_sample(mu, sd, gen) for _ in range(20000)])
    assert torch.all((draws >= 0) & (draws < 1))
    mean, std = trunc_moments(mu, sd)
    assert torch.allclose(draws.mean(0), mean, atol=0.01)
    assert torch.allclose(draws.std(0), std, atol=0.01)
    for level in (0.68, 0.95):
        lo, hi = trunc_interval(mu, sd, level)
        inside = ((draws >= lo) & (draws <= hi)).float().mean(0)
        assert torch.allclose(inside, torch.full_like(inside, level), atol=0.015)
    # the density integrates to one over the tile
    x = torch.linspace(0, 1, 20001)[:, None]
    dens = trunc_log_prob(x, mu, sd).exp()
    assert torch.allclose(torch.trapezoid(dens, x[:, 0], dim=0), torch.ones(4), atol=1e-3)


@pytest.fixture
def stamp_net():
    torch.manual_seed(0)
    return DetectionNet(n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier="stamp")


def test_stamps_are_centred_on_the_source(stamp_net):
    from probcat.nets.detection import STAMP_SIZE

    img = torch.zeros(2, 1, 20, 25)
    img[1, 0, 7, 18] = 5.0  # pixel (x=18, y=7): tile (ty=1, tx=3), loc (0.7, 0.5)
    b, ty, tx = torch.tensor([1, 1]), torch.tensor([1, 1]), torch.tensor([3, 3])
    locs = torch.tensor([[0.7, 0.5], [0.75, 0.52]])
    st, off = stamp_net.stamps(img, b, ty, tx, locs)
    c = STAMP_SIZE // 2
    assert st.shape == (2, 1, STAMP_SIZE, STAMP_SIZE)
    assert st[0, 0, c, c] == 5.0 and st[0].sum() == 5.0
    assert torch.allclose(off[0], torch.tensor([0.0, 0.0]), atol=1e-6)
    assert torch.allclose(off[1], torch.tensor([0.25, 0.1]), atol=1e-5)
    # near the border the stamp is zero-padded, never wrapped
    edge, _ = stamp_net.stamps(
        img, torch.tensor([1]), torch.tensor([0]), torch.tensor([4]), torch.tensor([[0.99, 0.0]])
    )
    assert edge.shape == (1, 1, STAMP_SIZE, STAMP_SIZE) and torch.isfinite(edge).all()


def test_stamp_classifier_loss_decode_and_masks(stamp_net):
    from probcat.infer.detect import tile_image

    img = np.random.default_rng(2).standard_normal((1, 30, 30)).astype(np.float32) * 2
    x = torch.from_numpy(img)[None]
    cats = [_galaxy_and_star((3.0, 22.2), (4.0, 19.9), 30)]
    truth = TileCatalog.from_full(cats, 5)
    stamp_net.train()
    out = stamp_net.heads(
        stamp_net.features(x), type_locs=truth.locs, image=x, type_mask=truth.n_sources > 0
    )
    # classified only where asked; the loss ignores the other (NaN) tiles
    assert torch.isfinite(out.galaxy_logit[truth.n_sources > 0]).all()
    assert torch.isnan(out.galaxy_logit[truth.n_sources == 0]).all()
    loss = favi_detection_loss(out, truth)["total"]
    loss.backward()
    grads = [p.grad for p in stamp_net.stamp_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    stamp_net.eval()
    feats = tile_features(stamp_net, img, 1.0)
    with pytest.raises(ProbcatValueError, match="image"):
        decode(stamp_net, feats)
    pixels = tile_image(stamp_net, img, 1.0)
    cat = map_catalog(stamp_net, feats, (30, 30), image=pixels, threshold=0.0)
    assert len(cat) == 36 and np.all((cat["galaxy_prob"] >= 0) & (cat["galaxy_prob"] <= 1))
    # the chunked whole-image classification equals per-tile classification
    with torch.no_grad():
        h = stamp_net.trunk(feats)
        locs = torch.rand(1, 6, 6, 2, generator=torch.Generator().manual_seed(0))
        every = stamp_net.classify(h, locs, pixels)
        one = torch.zeros(1, 6, 6, dtype=torch.bool)
        one[0, 2, 4] = True
        single = stamp_net.classify(h, locs, pixels, mask=one)
    assert torch.allclose(every[one], single[one], atol=1e-5)
    samples = sample_catalogs(stamp_net, feats, (30, 30), 5, image=pixels)
    assert all(np.isfinite(s["galaxy_prob"]).all() for s in samples)


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


def test_decided_proximity_hand_built():
    from probcat.nets.detection import decided_proximity

    nd = torch.zeros(1, 3, 3)
    locs = torch.zeros(1, 3, 3, 2)
    nd[0, 1, 1] = 1.0
    locs[0, 1, 1] = torch.tensor([0.99, 0.01])  # (x, y): the centre tile's top-right corner
    p = decided_proximity(nd, locs, 5, scales=(0.5,))[0, 0]
    # the tiles touching that corner (above, above-right, right) see it within 0.05 px
    for ty, tx in [(0, 1), (0, 2), (1, 2)]:
        assert p[ty, tx] > 0.99
    # 4.95 px from the left column and the bottom row: nothing
    assert p[:, 0].max() < 1e-10 and p[2].max() < 1e-10
    assert p[1, 1] == 0  # a tile does not see its own decision


def test_proximity_conditioning_reaches_diagonal_neighbours():
    """With the raw decision channels silenced, the proximity channels alone tell tile (1, 1)
    whether its diagonal neighbour's source sits on their shared corner."""
    torch.manual_seed(0)
    net = DetectionNet(n_bands=1, channels=8, n_blocks=1, stem="patchify", proximity=True).eval()
    assert net.detection_head.cond_in.in_channels == 6
    with torch.no_grad():
        net.detection_head.cond_in.weight[:, :4] = 0
    feats = torch.randn(1, 8, 4, 4)
    decided = (tile_groups(4, 4) == 0)[None]
    n = torch.zeros(1, 4, 4, dtype=torch.long)
    n[0, 0, 0] = 1
    near, far = torch.zeros(1, 4, 4, 2), torch.zeros(1, 4, 4, 2)
    near[0, 0, 0] = torch.tensor([0.99, 0.99])  # at the corner shared with tile (1, 1)
    far[0, 0, 0] = torch.tensor([0.01, 0.01])
    a = net.heads(feats, decided, n, near, classify=False).count_logit
    b = net.heads(feats, decided, n, far, classify=False).count_logit
    assert not torch.isclose(a[0, 1, 1], b[0, 1, 1])


def _refiner_net(seed=0, scale=0.3):
    """A small network with a location refiner whose last layer is switched on (trained
    weights are not zero there)."""
    torch.manual_seed(seed)
    net = DetectionNet(
        n_bands=1,
        channels=8,
        n_blocks=1,
        stem="patchify",
        classifier="stamp",
        proximity=True,
        loc_refine=True,
    ).eval()
    with torch.no_grad():
        net.refiner.out.weight.normal_(0, scale)
    return net


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
        net = _refiner_net()
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


def test_location_refiner_starts_at_the_proposal():
    from probcat.infer.detect import tile_image
    from probcat.nets.stamps import REFINE_SD0

    torch.manual_seed(0)
    plain = DetectionNet(
        n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier="stamp", proximity=True
    ).eval()
    net = DetectionNet(**{**plain.hparams, "loc_refine": True}).eval()
    assert net.hparams["loc_refine"] and "loc_refine" not in plain.hparams
    missing, _ = net.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("refiner.") for k in missing)
    img = np.random.default_rng(3).standard_normal((1, 30, 35)).astype(np.float32) * 3
    feats, pixels = tile_features(net, img, 1.0), tile_image(net, img, 1.0)
    a = decode(plain, feats, image=pixels, threshold=0.3)
    b = decode(net, feats, image=pixels, threshold=0.3)
    # a fresh refiner keeps the tile posterior's mean, with sd REFINE_SD0 px
    assert torch.equal(a.n, b.n) and a.n.any() and a.loc_sd is None
    assert torch.allclose(a.locs[a.n], b.locs[b.n], atol=1e-6)
    assert torch.allclose(b.loc_sd[b.n], torch.full_like(b.loc_sd[b.n], REFINE_SD0 / 5))
    cat = map_catalog(net, feats, (30, 35), image=pixels, threshold=0.3)
    assert np.allclose(cat["x_sd"], REFINE_SD0) and np.allclose(cat["y_sd"], REFINE_SD0)
    with pytest.raises(ProbcatValueError, match="image"):
        decode(net, feats)


def test_location_refiner_learns_positions_off_the_proposal():
    """Trained on the normal NLL, the refiner moves proposals 1 px off onto blobs: the
    stamp-centre and tile-unit conventions of refine_at are consistent."""
    torch.manual_seed(0)
    net = DetectionNet(
        n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier="stamp", loc_refine=True
    )
    rng = np.random.default_rng(0)
    n, size, t = 48, 30, 5
    truth = rng.uniform(10, 20, (n, 2))  # px (x, y)
    yy, xx = np.mgrid[:size, :size]
    img = np.exp(
        -((xx - truth[:, 0, None, None]) ** 2 + (yy - truth[:, 1, None, None]) ** 2) / (2 * 1.5**2)
    )
    x = torch.from_numpy(30 * img[:, None].astype(np.float32))
    prop = truth + rng.normal(0, 1.0, (n, 2))
    tile = np.floor((prop + 0.5) / t).astype(int)
    b = torch.arange(n)
    tx, ty = torch.from_numpy(tile[:, 0]), torch.from_numpy(tile[:, 1])
    locs = torch.from_numpy((prop + 0.5) / t - tile).float()
    target = torch.from_numpy((truth + 0.5) / t - tile).float()
    # lr 3e-3 sometimes diverged in the last steps (the NLL's variance collapsing), so that
    # 1-ulp input differences decided the outcome; at 1e-3 four seeds all end at 0.16-0.17 px
    opt = torch.optim.Adam(net.refiner.parameters(), lr=1e-3)
    for _ in range(200):
        mean, logvar = net.refine_at(b, ty, tx, locs, x)
        nll = (0.5 * ((target - mean) ** 2 * torch.exp(-logvar) + logvar)).sum()
        opt.zero_grad()
        nll.backward()
        opt.step()
    with torch.no_grad():
        mean, logvar = net.refine_at(b, ty, tx, locs, x)
    err_before = float(((locs - target) * t).pow(2).mean().sqrt())
    err_after = float(((mean - target) * t).pow(2).mean().sqrt())
    assert err_after < 0.5 * err_before
    assert float(torch.exp(0.5 * logvar).mean()) * t < 1.0  # px: narrower than the start


def _stamp_net(refine: bool):
    """A small seeded stamp-classifier network, with a switched-on refiner if ``refine``."""
    if refine:
        return _refiner_net()
    torch.manual_seed(0)
    return DetectionNet(
        n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier="stamp", proximity=True
    ).eval()


def _neighbour_pairs(ty, tx):
    """Index pairs ``(i, j)``, ``i < j``, of sources in 8-neighbouring tiles."""
    i, j = np.triu_indices(len(ty), 1)
    near = (np.abs(ty[i] - ty[j]) <= 1) & (np.abs(tx[i] - tx[j]) <= 1)
    return i[near], j[near]


def _close_neighbour_pairs(dec, k, radius_px, t=5):
    """Pairs of sources of sample ``k`` in 8-neighbouring tiles whose conditioning
    positions lie closer than ``radius_px``."""
    ty, tx = (v.numpy() for v in torch.nonzero(dec.n[k], as_tuple=True))
    at = (np.stack([tx, ty], 1) + dec.cond_locs[k, ty, tx].numpy()) * t
    i, j = _neighbour_pairs(ty, tx)
    return int(np.sum(np.hypot(*(at[i] - at[j]).T) < radius_px))


@pytest.mark.parametrize("refine", [False, True])
def test_decode_merges_claims_of_neighbouring_tiles(refine):
    """With a merge radius no two neighbouring tiles hold sources closer than it (there are
    such pairs without); a radius beyond any neighbour's reach keeps the first group only."""
    from probcat.infer.detect import tile_image

    net = _stamp_net(refine)
    img = np.random.default_rng(4).standard_normal((1, 40, 45)).astype(np.float32) * 3
    feats, pixels = tile_features(net, img, 1.0), tile_image(net, img, 1.0)
    kw = dict(image=pixels, n_samples=6, sweeps=2)
    plain = decode(net, feats, merge_px=0.0, generator=torch.Generator().manual_seed(1), **kw)
    assert sum(_close_neighbour_pairs(plain, k, 2.5) for k in range(6)) > 0
    merged = decode(net, feats, merge_px=2.5, generator=torch.Generator().manual_seed(1), **kw)
    assert sum(_close_neighbour_pairs(merged, k, 2.5) for k in range(6)) == 0
    assert merged.n.sum() < plain.n.sum()
    if refine:
        assert not torch.equal(merged.cond_locs[merged.n], merged.locs[merged.n])
    # the weights' radius is the default
    net.merge_px = 2.5
    again = decode(net, feats, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(again.n, merged.n)
    net.merge_px = 0.0
    groups = tile_groups(*feats.shape[-2:])
    first = decode(net, feats, image=pixels, threshold=0.0, merge_px=20.0)
    assert torch.equal(first.n[0], groups == 0)


def test_merge_rule_round_trips_and_f1_from_counts():
    from probcat.infer.merge import RADII, MergeRule, _f1

    # 8 matched of 10 estimated, 16 true: P 0.8, R 0.5
    assert _f1(np.array([8, 10, 16])) == pytest.approx(2 * 0.8 * 0.5 / 1.3)
    assert _f1(np.zeros(3)) == 0.0
    rule = MergeRule(1.5, RADII, (0.1,) * len(RADII), (0.2,) * len(RADII), 3, "x")
    assert MergeRule.from_dict(rule.to_dict()) == rule


@pytest.mark.parametrize("shape", [(6, 7), (7, 6), (5, 5)])
def test_trunk_on_one_parity_equals_the_full_trunk_there(shape):
    torch.manual_seed(0)
    net = DetectionNet(n_bands=1, channels=8, n_blocks=1, stem="patchify", proximity=True).eval()
    feats = torch.randn(2, 8, *shape)
    decided = torch.rand(2, *shape) < 0.5
    n = torch.rand(2, *shape) < 0.5
    locs = torch.rand(2, *shape, 2)
    with torch.no_grad():
        full = net.trunk(feats, decided, n, locs)
        for py in (0, 1):
            for px in (0, 1):
                part = net.trunk(feats, decided, n, locs, parity=(py, px))
                assert torch.allclose(part, full[:, :, py::2, px::2], atol=1e-5)


@pytest.mark.parametrize("refine", [False, True])
def test_group_only_heads_decode_as_the_every_tile_heads(monkeypatch, refine):
    """Later passes run the heads on their group's tiles only: same decisions, locations and
    conditional outputs as running them on every tile."""
    import probcat.infer.detect as D

    net = _stamp_net(refine)
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


def test_for_inference_keeps_the_outputs():
    """Batch norms folded into their convolutions, channels-last weights: same features,
    heads and stamp outputs as the plain network in eval mode."""
    import copy

    from probcat.infer.detect import tile_image
    from probcat.nets.detection import for_inference

    net = _refiner_net()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
    fast = for_inference(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    img = np.random.default_rng(7).standard_normal((1, 40, 45)).astype(np.float32) * 3
    fa, fb = tile_features(net, img, 1.0), tile_features(fast, img, 1.0)
    assert torch.allclose(fa, fb, atol=1e-4)
    pixels = tile_image(net, img, 1.0)
    a = decode(net, fa, image=pixels, threshold=0.3)
    b = decode(fast, fa, image=pixels, threshold=0.3)
    assert torch.equal(a.n, b.n) and a.n.any()
    assert torch.allclose(a.locs, b.locs, atol=1e-5)
    assert torch.allclose(
        a.conditional.galaxy_logit, b.conditional.galaxy_logit, atol=1e-4, equal_nan=True
    )


@pytest.mark.parametrize("stem", ["conv", "patchify"])
@pytest.mark.parametrize("fast", [False, True])
def test_valid_features_equal_the_padded_ones_inside_the_halo(stem, fast):
    """Unpadded tile-grid convolutions give, on the tiles ``feature_halo`` in from each side,
    exactly the padded computation's features (BN folded and in-place activations too)."""
    from probcat.nets.detection import for_inference

    torch.manual_seed(3)
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2, stem=stem).eval()
    if fast:
        net = for_inference(net)
    img = torch.randn(2, 1, 100, 95) * 3
    h = net.feature_halo
    assert h >= 1
    with torch.no_grad():
        full, valid = net.features(img), net.features(img, valid=True)
    assert valid.shape == (2, 8, 20 - 2 * h, 19 - 2 * h)
    assert torch.allclose(valid, full[..., h:-h, h:-h], atol=1e-5)
    # the halo is no larger than needed: with more sky around the image, the features of
    # the tiles ``h`` in from its edge stay the same and those ``h - 1`` in change
    big = torch.randn(2, 1, 100 + 20, 95 + 20) * 3
    big[..., 10:-10, 10:-10] = img
    with torch.no_grad():
        ctx = net.features(big)[..., 2:-2, 2:-2]
    assert torch.allclose(ctx[..., h:-h, h:-h], valid, atol=1e-5)
    # (through the weakest path of the receptive field: a small but real difference)
    assert (ctx[..., h - 1, h:-h] - full[..., h - 1, h:-h]).abs().max() > 1e-6


def test_decided_proximity_equals_brute_force():
    from probcat.nets.detection import decided_proximity

    g = torch.Generator().manual_seed(4)
    nd = (torch.rand(3, 5, 6, generator=g) < 0.4).float()
    locs = torch.rand(3, 5, 6, 2, generator=g)
    got = decided_proximity(nd, locs, 5, scales=(0.5, 1.5))
    want = torch.zeros_like(got)
    for b in range(3):
        for ty in range(5):
            for tx in range(6):
                for ny in range(max(ty - 1, 0), min(ty + 2, 5)):
                    for nx in range(max(tx - 1, 0), min(tx + 2, 6)):
                        if (ny, nx) == (ty, tx) or not nd[b, ny, nx]:
                            continue
                        # the source in this tile's units; its distance to the unit square
                        x = float(locs[b, ny, nx, 0]) + nx - tx
                        y = float(locs[b, ny, nx, 1]) + ny - ty
                        ex, ey = max(-x, 0.0, x - 1), max(-y, 0.0, y - 1)
                        d2 = (ex**2 + ey**2) * 25
                        for k, s in enumerate((0.5, 1.5)):
                            want[b, k, ty, tx] = max(want[b, k, ty, tx], math.exp(-d2 / (2 * s**2)))
    assert want.max() > 0.5 and (want == 0).any()
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("parity", [None, (0, 1), (1, 0)])
def test_trunk_with_nothing_decided_is_the_convolution_of_zeros(parity):
    torch.manual_seed(5)
    net = DetectionNet(n_bands=1, channels=8, n_blocks=1, stem="patchify", proximity=True).eval()
    feats = torch.randn(2, 8, 6, 7)
    none = torch.zeros(2, 6, 7, dtype=torch.bool)
    n, locs = torch.ones(2, 6, 7), torch.rand(2, 6, 7, 2)
    with torch.no_grad():
        want = net.detection_head.cond_mix(feats + net.detection_head.cond_in(torch.zeros(2, 6, 6, 7)))
        if parity is not None:
            want = want[:, :, parity[0] :: 2, parity[1] :: 2]
        for decided in (None, none):
            got = net.trunk(feats, decided, n, locs, parity=parity)
            assert torch.allclose(got, want, atol=1e-6)
