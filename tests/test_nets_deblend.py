import numpy as np
import torch

from probcat.nets.deblend import CROP, STAMP, GalaxyModel, eq11_loss


def test_shapes_positive_and_flux_is_stated():
    torch.manual_seed(0)
    m = GalaxyModel(CROP, STAMP, bands=2, latent=8, channels=4).eval()
    x = torch.randn(3, 2, CROP, CROP)
    z = m.encoder(x)
    assert z.shape == (3, 8)
    out = m.decoder(z)
    assert out.shape == (3, 2, STAMP, STAMP)
    assert (out > 0).all()
    # the decoder's image sums to exp(log_flux) per band
    total = out.flatten(2).sum(-1)
    assert torch.allclose(total, torch.exp(m.decoder.log_flux(z)), rtol=1e-5)


def test_eq11_loss_equals_gaussian_nll_up_to_a_constant():
    torch.manual_seed(1)
    recon = torch.rand(4, 1, 7, 7) * 5
    target = torch.randn(4, 1, 7, 7)
    nll = -torch.distributions.Normal(recon, 1.0).log_prob(target).flatten(1).sum(1).mean()
    const = 0.5 * np.log(2 * np.pi) * 49
    assert torch.allclose(eq11_loss(recon, target), nll - const, rtol=1e-5)
    assert float(eq11_loss(target, target)) == 0.0


def test_autoencoder_size_runs_end_to_end_and_trains():
    torch.manual_seed(0)
    m = GalaxyModel(STAMP, STAMP, channels=4)
    x = torch.zeros(2, 1, STAMP, STAMP)
    x[:, :, 24:29, 24:29] = 20.0
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    first = None
    for _ in range(80):
        loss = eq11_loss(m(x), x)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
