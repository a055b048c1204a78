import math

import pytest
import torch
from helpers import galaxy_and_star

from probcat.nets.detection import TileOutput
from probcat.tiles import TileCatalog
from probcat.train.losses import favi_detection_loss


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
    cats = [galaxy_and_star((3.0, 12.2), (4.0, 9.9), 20)] * 2
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
