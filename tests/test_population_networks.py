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
from probcat.population.tasks import R1Task, SetRatioTask, pad_lists


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


def test_r4_batches_flip_l_and_b_of_whole_lists_and_keep_fluxes():
    rng = np.random.default_rng(5)
    lists = [rng.normal(size=(k, 3)).astype(np.float32) for k in (3, 1, 4)]
    theta = np.array([[100.0, 2.0, 5.0], [50.0, 1.5, 10.0], [300.0, 2.5, 15.0]])
    task = SetRatioTask(10, 1e-3, 0, theta, lists, batch=400, balance=0.0)
    draw = np.random.default_rng(6)
    feats, mask, th = task.batch(draw)
    idx = np.random.default_rng(6).integers(0, 3, 400)  # the lists the batch drew
    signs = set()
    for f, m, j, t in zip(feats.numpy(), mask.numpy(), idx, th.numpy()):
        src = lists[j]
        assert m.sum() == len(src) and np.allclose(t, normalise_theta(theta[j : j + 1])[0])
        assert np.array_equal(f[: len(src), 0], src[:, 0])  # fluxes untouched
        s = f[: len(src), 1:] / src[:, 1:]  # one sign per coordinate and list
        assert np.allclose(np.abs(s), 1) and np.allclose(s, s[:1])
        signs.add(tuple(s[0].round().astype(int)))
    assert signs == {(1, 1), (1, -1), (-1, 1), (-1, -1)}


@pytest.mark.slow
def test_head_stage_learns_the_exact_log_ratio(tmp_path):
    """HeadTask through the training loop on frozen 'embeddings' e = theta + 0.1 eps (theta
    normalised, uniform on [-1, 1]^3), whose log ratio is known exactly:
    log N(e; theta, 0.1) - log p(e), p(e) the uniform smoothed by the noise, per axis."""
    from scipy.stats import norm

    from probcat.population.networks import _RatioHead
    from probcat.population.simulator import sample_prior
    from probcat.population.tasks import HeadTask
    from probcat.train.loop import LoopSettings, fit

    rng = np.random.default_rng(4)
    theta = sample_prior(rng, 20000)
    theta[:, 0] += rng.uniform(-0.5, 0.5, len(theta))  # N continuous: the exact ratio below
    t = normalise_theta(theta)
    emb = (t + 0.1 * rng.normal(size=t.shape)).astype(np.float32)

    def exact(e, tt):
        like = norm.logpdf(e, tt, 0.1).sum(1)
        evidence = np.log((norm.cdf((1 - e) / 0.1) - norm.cdf((-1 - e) / 0.1)) / 2).sum(1)
        return like - evidence

    torch.manual_seed(0)
    head = _RatioHead(3, width=64)
    bank = lambda: (torch.from_numpy(emb), theta)  # noqa: E731
    task = HeadTask("toy", 4000, 3e-3, 0, head, bank, len(theta), 256, 0.0)
    # on the CPU, by name, as the chain trains these heads (probcat.population.chain)
    fit(task, tmp_path, config={"t": 1}, settings=LoopSettings(0, 500, 4000, 1), progress=False,
        device="cpu")  # fmt: skip
    e, tt = emb[:2000], t[:2000].astype(np.float32)
    shuffled = np.roll(tt, 1, 0)
    with torch.no_grad():
        learned = np.concatenate([
            task.model(torch.from_numpy(e), torch.from_numpy(x)).numpy() for x in (tt, shuffled)
        ])  # fmt: skip
    truth = np.concatenate([exact(e, tt), exact(e, shuffled)])
    keep = truth > -15  # far tails: both are "never"
    assert np.corrcoef(learned[keep], truth[keep])[0, 1] > 0.97
    joint = slice(0, 2000)
    assert abs(np.mean(learned[joint]) - np.mean(truth[joint])) < 0.5  # not flattened
    near = truth > -5
    assert np.mean(np.abs(learned - truth)[near]) < 0.6
    assert head is not task.model  # the jointly trained head is left as it was


def test_a_finished_head_stage_resumes_without_drawing_its_bank(tmp_path):
    from probcat.population.networks import _RatioHead
    from probcat.population.simulator import sample_prior
    from probcat.population.tasks import HeadTask
    from probcat.train.loop import LoopSettings, fit

    theta = sample_prior(np.random.default_rng(0), 64)
    emb = torch.randn(64, 3)
    calls = []

    def bank():
        calls.append(1)
        return emb, theta

    settings = LoopSettings(0, 3, 3, 1)
    for _ in range(2):
        task = HeadTask("toy", 3, 1e-3, 0, _RatioHead(3, width=8), bank, 64, 16, 0.0)
        fit(task, tmp_path, config={"t": 1}, settings=settings, progress=False, device="cpu")
    assert len(calls) == 1  # drawn for the training steps, not for the finished rerun


@pytest.mark.parametrize("make", [lambda: DetectionNet(channels=8), lambda: MapRatioNet(8, 16)])
def test_channels_last_networks_give_the_contiguous_layout_outputs_and_load_plain_state(make):
    torch.manual_seed(0)
    net = make()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(
        m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
        for m in convs
        if m.weight.shape[1] > 1 and m.weight.shape[2] * m.weight.shape[3] > 1  # else both
    )
    plain = make().to(memory_format=torch.contiguous_format)  # the layout before
    plain.load_state_dict({k: v.contiguous() for k, v in net.state_dict().items()})
    net2 = make()
    net2.load_state_dict(plain.state_dict())  # a plain-layout file loads into the new one
    maps = torch.rand(3, 128, 128) * 5
    theta = torch.rand(3, 3) * 2 - 1
    args = (maps,) if isinstance(net, DetectionNet) else (maps, theta)
    with torch.no_grad():
        ref = plain(*args)
        for m in (net, net2):
            torch.testing.assert_close(m(*args), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: SetRatioNet(width=16, emb=8), lambda: MapRatioNet(8, 16)])
def test_head_on_grid_equals_the_head_on_every_pair(make):
    # on_grid splits the first layer into its embedding and theta parts: it must give the
    # head's own value on every (embedding, theta) pair, across the blocks of the grid
    torch.manual_seed(1)
    head = make().head.eval()
    embs = torch.randn(3, head.mlp[0].in_features - 5)
    theta = torch.rand(23, 3) * 2 - 1
    got = head.on_grid(embs, theta, chunk=5)
    with torch.no_grad():
        want = np.stack([head(e[None].expand(len(theta), -1), theta).numpy() for e in embs])
    assert got.shape == (3, 23) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want) > 1e-2  # the values differ between pairs: a real comparison
