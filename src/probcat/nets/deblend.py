"""The galaxy autoencoder and the deblending encoder (paper 000 section 3.4).

An encoder maps a galaxy stamp (noise-sigma units) to a latent ``z`` in R^8; the decoder
maps ``z`` to the noiseless, exactly centred galaxy. The decoder writes the galaxy as a
total flux per band times a positive profile that sums to one (a softmax over the
stamp's pixels): reconstructions are never negative and their flux is one number the
network states outright, which keeps bright and faint galaxies on the same footing.

The deblending encoder has the encoder's architecture on a smaller crop (49 px for the
53-px decoder, as in the paper) and is trained against the frozen decoder, so it learns to
ignore the light of neighbours. :class:`GalaxyModel` bundles an encoder and a decoder;
both the autoencoder and the deblender are one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GalaxyEncoder", "GalaxyDecoder", "GalaxyModel", "eq11_loss", "STAMP", "CROP"]

STAMP = 53  # decoder output, autoencoder input (paper: dataset-single)
CROP = 49  # deblending encoder input, centred within a pixel on the detected centroid


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.LeakyReLU(0.1))


class GalaxyEncoder(nn.Module):
    """Stamp ``(B, bands, S, S)`` in noise-sigma units → latent ``(B, latent)``.

    The input goes through ``asinh`` first (bright cores and faint wings on one scale).
    ``extra`` more features (e.g. aperture photometry) can join the convolutional ones at
    the MLP's input; ``hidden``: the widths of the MLP's hidden layers."""

    def __init__(
        self,
        size: int = STAMP,
        bands: int = 1,
        latent: int = 8,
        channels: int = 32,
        extra: int = 0,
        hidden: tuple[int, ...] = (128,),
    ):
        super().__init__()
        c = channels
        self.size, self.bands = size, bands
        self.convs = nn.Sequential(
            nn.Conv2d(bands, c // 2, 5, 1, 2),
            nn.LeakyReLU(0.1),
            _conv(c // 2, c, 2),
            _conv(c, 2 * c, 2),
            _conv(2 * c, 2 * c, 2),
        )
        side = size
        for _ in range(3):
            side = (side + 1) // 2
        widths = [2 * c * side * side + extra, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.1)]
        self.fc = nn.Sequential(*layers, nn.Linear(widths[-1], latent))

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_asinh(torch.asinh(x), extra)

    def from_asinh(self, xa: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """The latent of a stamp already through ``asinh`` (encoders reading the same stamps
        transform them once), with the ``(B, extra)`` features when the encoder has them."""
        return self.fc[-1](self.last_hidden(xa, extra))

    def last_hidden(self, xa: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """The MLP's last hidden layer (what its output layer reads) for a stamp already
        through ``asinh``, with the ``(B, extra)`` features when the encoder has them."""
        h = self.convs(xa).flatten(1)
        if extra is not None:
            h = torch.cat([h, extra], dim=1)
        return self.fc[:-1](h)


class GalaxyDecoder(nn.Module):
    """Latent ``(B, latent)`` → noiseless centred galaxy ``(B, bands, S, S)`` in sigma units:
    ``exp(log_flux) * softmax(logits)`` per band."""

    def __init__(self, size: int = STAMP, bands: int = 1, latent: int = 8, channels: int = 32):
        super().__init__()
        c = channels
        self.size, self.bands = size, bands
        self.side = (size + 7) // 8  # upsampled x8, then cropped to size
        self.fc = nn.Sequential(
            nn.Linear(latent, 128),
            nn.LeakyReLU(0.1),
            nn.Linear(128, 2 * c * self.side * self.side),
            nn.LeakyReLU(0.1),
        )
        self.flux = nn.Sequential(nn.Linear(latent, 64), nn.LeakyReLU(0.1), nn.Linear(64, bands))
        nn.init.constant_(self.flux[-1].bias, 4.0)  # a typical galaxy: ~50 sigma x pixels
        self.c = c
        self.ups = nn.Sequential(
            nn.ConvTranspose2d(2 * c, 2 * c, 4, 2, 1),
            nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1),
            nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(c, c // 2, 4, 2, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(c // 2, bands, 3, 1, 1),
        )

    def profile(self, z: torch.Tensor) -> torch.Tensor:
        """Unit-sum positive profiles ``(B, bands, S, S)``."""
        h = self.fc(z).view(-1, 2 * self.c, self.side, self.side)
        logits = self.ups(h)
        lo = (logits.shape[-1] - self.size) // 2
        logits = logits[..., lo : lo + self.size, lo : lo + self.size]
        b = logits.shape[0]
        return F.softmax(logits.reshape(b, self.bands, -1), -1).view(
            b, self.bands, self.size, self.size
        )

    def log_flux(self, z: torch.Tensor) -> torch.Tensor:
        """Log total flux per band (sigma units x pixels), ``(B, bands)``."""
        return self.flux(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_flux(z))[..., None, None] * self.profile(z)


class GalaxyModel(nn.Module):
    """An encoder (input side ``in_size``) and a decoder (output side ``out_size``)."""

    def __init__(
        self,
        in_size: int = STAMP,
        out_size: int = STAMP,
        bands: int = 1,
        latent: int = 8,
        channels: int = 32,
    ):
        super().__init__()
        self.hparams = dict(
            in_size=in_size, out_size=out_size, bands=bands, latent=latent, channels=channels
        )
        self.encoder = GalaxyEncoder(in_size, bands, latent, channels)
        self.decoder = GalaxyDecoder(out_size, bands, latent, channels)

    @property
    def in_size(self) -> int:
        return self.encoder.size

    @property
    def out_size(self) -> int:
        return self.decoder.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def eq11_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 11 of paper 000 per image (constants dropped), both in noise-sigma units:
    ``0.5 * sum_p (x_p - recon_p)^2``; mean over the batch."""
    return 0.5 * ((recon - target) ** 2).flatten(1).sum(1).mean()
