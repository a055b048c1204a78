"""Each ratio estimator's loss decreases on a tiny problem; the NRE loss is minimal at the
true log ratio."""

import numpy as np
import pytest
import torch

from probcat.population.networks import (
    DetectionNet,
    MapRatioNet,
    SensitivityNet,
    SetRatioNet,
    nre_loss,
)
from probcat.population.simulator import normalise_theta, simulate
from probcat.population.tasks import R1Task, pad_lists


def _train(params, loss_fn, steps=40, lr=3e-3):
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_nre_loss_is_minimal_at_the_true_log_ratio():
    """Gaussian pairs: theta ~ N(0, 1), x ~ N(theta, 1); log r = log N(x; theta, 1) -
    log N(x; 0, sqrt 2). The loss at the true log ratio beats shifted or scaled ones."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(200000, generator=g)
    x = theta + torch.randn(200000, generator=g)
    shuffled = torch.roll(theta, 1)

    def log_r(t):
        return -0.5 * (x - t) ** 2 + 0.25 * x**2 + 0.5 * np.log(2)

    best = float(nre_loss(log_r(theta), log_r(shuffled)))
    for scale, shift in ((1.2, 0.0), (0.8, 0.0), (1.0, 0.3), (1.0, -0.3)):
        other = nre_loss(scale * log_r(theta) + shift, scale * log_r(shuffled) + shift)
        assert float(other) > best
    balanced = nre_loss(log_r(theta), log_r(shuffled), balance=100.0)
    assert float(balanced) - best < 0.01  # the true ratio is balanced


@pytest.mark.slow
def test_detection_network_learns(tmp_path):
    task = R1Task(10, 1e-3, 0, batch=3, crop=40, channels=6)
    torch.manual_seed(0)
    net = task.build_model()
    batch = task.batch(np.random.default_rng(0))
    losses = _train(net.parameters(), lambda: task.loss(net, batch, 0, None)["total"], 25, 1e-2)
    assert losses[-1] < 0.5 * losses[0]
    assert isinstance(net, DetectionNet)


def test_sensitivity_network_learns_a_threshold():
    g = torch.Generator().manual_seed(1)
    feats = torch.rand(512, 6, generator=g) * 2 - 1
    y = (feats[:, 0] > 0.2 + 0.3 * feats[:, 3]).float()  # the threshold depends on N
    net = SensitivityNet(width=16)
    f = torch.nn.functional.binary_cross_entropy_with_logits
    losses = _train(net.parameters(), lambda: f(net(feats), y), steps=150, lr=1e-2)
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.slow
def test_map_ratio_network_learns():
    rng = np.random.default_rng(2)
    theta, maps, _ = simulate(rng, 8)
    x, t = torch.from_numpy(maps), torch.from_numpy(normalise_theta(theta)).float()
    torch.manual_seed(0)
    net = MapRatioNet(channels=8, emb=32)
    emb_loss = lambda: nre_loss(net(x, t), net(x, torch.roll(t, 1, 0)))  # noqa: E731
    losses = _train(net.parameters(), emb_loss, steps=30, lr=5e-3)
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.slow
def test_set_ratio_network_learns_and_is_permutation_invariant():
    rng = np.random.default_rng(3)
    n = rng.integers(1, 30, 64)
    lists = [rng.normal(size=(k, 3)).astype(np.float32) for k in n]
    feats, mask = pad_lists(lists)
    theta = torch.from_numpy(normalise_theta(np.column_stack([n * 10, n * 0 + 2, n * 0 + 5])))
    theta = theta.float()
    torch.manual_seed(0)
    net = SetRatioNet(width=16, emb=16)
    loss = lambda: nre_loss(net(feats, mask, theta), net(feats, mask, torch.roll(theta, 1, 0)))  # noqa: E731
    losses = _train(net.parameters(), loss, steps=80, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0]
    perm = torch.randperm(feats.shape[1])
    with torch.no_grad():
        a = net(feats, mask, theta)
        b = net(feats[:, perm], mask[:, perm], theta)
    assert torch.allclose(a, b, atol=1e-5)
