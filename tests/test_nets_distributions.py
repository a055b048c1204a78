import torch


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
