import math

import numpy as np
import pytest
import torch

from probcat.catalog import FullCatalog, TileCatalog
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
    # counts: two tiles at p = 0.5; location: exact mean, unit variance, 2 dims; type: p = 0.5
    assert parts["count"].item() == pytest.approx(2 * math.log(2))
    assert parts["loc"].item() == pytest.approx(math.log(2 * math.pi))
    assert parts["type"].item() == pytest.approx(math.log(2))  # empty tile does not count
    assert parts["total"].item() == pytest.approx(3 * math.log(2) + math.log(2 * math.pi))


def test_loss_gradients_finite_and_better_prediction_lower(net):
    img = torch.randn(2, 1, 20, 20)
    cats = [
        FullCatalog(
            {
                "x": np.array([3.0, 12.2]),
                "y": np.array([4.0, 9.9]),
                "galaxy": np.array([True, False]),
                "flux": np.ones((2, 1)),
            },
            (20, 20),
        )
    ] * 2
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
        net.det_head.bias.copy_(torch.tensor([math.log(0.3 / 0.7), 0, 0, -30.0, -30.0]))
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
