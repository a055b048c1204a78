"""Ratio estimators of the population chain (``nn.Module`` only).

- :class:`DetectionNet` (r1): image to image, per pixel and flux threshold the logit of
  ``p(source above F_th in s | x)``; sees the map and the sky coordinates of each pixel.
- :class:`SensitivityNet` (r2): ``(log10 F, l, b, theta)`` to the logit of
  ``P(detected | F, s, theta)``.
- :class:`MapRatioNet` (r3 and the plain NRE): a map embedding and a head that gives the
  log ratio ``log r(theta; x)`` for the joint ``theta = (N, sigma, h)``.
- :class:`SetRatioNet` (r4): a permutation-invariant embedding of a detected-source list
  and a head giving ``log r(theta; S_det)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from probcat.population.simulator import EXTENT_DEG, MAP_SIZE, PIXEL_DEG, PRIOR_HIGH, PRIOR_LOW

__all__ = [
    "DetectionNet",
    "SensitivityNet",
    "MapRatioNet",
    "SetRatioNet",
    "map_input",
    "theta_features",
    "nre_loss",
]


def map_input(maps: torch.Tensor) -> torch.Tensor:
    """Maps ``(B, H, W)`` (flux units, Poisson counts / 100) compressed for the networks:
    ``asinh`` of the counts over 3."""
    return torch.asinh(maps * (100.0 / 3.0))


def channels_last(net: nn.Module) -> nn.Module:
    """``net``'s convolution weights in channels-last memory order, in place: same outputs,
    and the convolutions (which then run channels-last whatever the input's order) are
    faster on a CPU for these few-channel networks (in ``benchmarks/population.py``, r1,
    r3 and the plain NRE trained 1.2-1.5x faster, simulations included). Saved and loaded
    state is unaffected (``load_state_dict`` copies into the existing layout)."""
    return net.to(memory_format=torch.channels_last)


def _coords(b: int, h: int, w: int, y0: int = 0, x0: int = 0, device=None) -> torch.Tensor:
    """Sky coordinates ``(l, b) / 40 deg`` of the pixels of a ``h x w`` window at
    ``(y0, x0)``, ``(B, 2, h, w)``."""
    ys = (torch.arange(y0, y0 + h, device=device) + 0.5) * PIXEL_DEG - EXTENT_DEG
    xs = (torch.arange(x0, x0 + w, device=device) + 0.5) * PIXEL_DEG - EXTENT_DEG
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), 0) / EXTENT_DEG
    return grid[None].expand(b, -1, -1, -1)


class DetectionNet(nn.Module):
    """Per-pixel, per-threshold detection logits ``(B, K, H, W)`` from maps ``(B, H, W)``
    (any window of the 128 x 128 map: ``y0, x0`` give its position, for the coordinate
    channels). Dilated 3x3 convolutions; receptive field 33 px."""

    def __init__(self, n_thresholds: int = 12, channels: int = 24):
        super().__init__()
        self.hparams = {"n_thresholds": n_thresholds, "channels": channels}
        layers, c_in = [], 3
        for d in (1, 2, 4, 8, 1):
            layers += [nn.Conv2d(c_in, channels, 3, padding=d, dilation=d), nn.SiLU()]
            c_in = channels
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, n_thresholds, 1)
        channels_last(self)

    def forward(self, maps: torch.Tensor, y0: int = 0, x0: int = 0) -> torch.Tensor:
        b, h, w = maps.shape
        x = torch.cat([map_input(maps)[:, None], _coords(b, h, w, y0, x0, maps.device)], 1)
        return self.out(self.body(x))


class SensitivityNet(nn.Module):
    """Logit of ``P(detected | F, l, b, theta)`` from ``(N, 6)``: ``log10 F``, ``l / 40``,
    ``b / 40`` and the normalised population parameters of the source's map (crowding
    changes what can be detected)."""

    def __init__(self, width: int = 64, n_in: int = 6):
        super().__init__()
        self.hparams = {"width": width, "n_in": n_in}
        self.mlp = nn.Sequential(
            nn.Linear(n_in, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 1),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats)[:, 0]


def theta_features(theta: torch.Tensor) -> torch.Tensor:
    """A ratio head's view of normalised ``theta`` ``(B, 3)``: ``theta`` itself plus
    ``log N`` and ``log h`` (centred), ``(B, 5)``. The posterior width of ``N`` and ``h``
    grows with their value (a few sources or a thin disc pin them down far more sharply than
    many or a thick one); on log axes the head needs no sharper features at small values than
    at large ones, which is what let it reach calibrated widths in the benchmark."""
    lo = torch.as_tensor(PRIOR_LOW, dtype=theta.dtype, device=theta.device)
    hi = torch.as_tensor(PRIOR_HIGH, dtype=theta.dtype, device=theta.device)
    value = (theta + 1) / 2 * (hi - lo) + lo
    logs = torch.log(value[:, [0, 2]].clamp_min(1e-3))
    centre = (torch.log(lo[[0, 2]]) + torch.log(hi[[0, 2]])) / 2
    return torch.cat([theta, logs - centre], 1)


class _RatioHead(nn.Module):
    """``log r(theta; embedding)`` for normalised ``theta`` ``(B, 3)``
    (seen through :func:`theta_features`)."""

    def __init__(self, emb: int, width: int = 128, n_params: int = 3):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(emb + n_params + 2, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 1),
        )

    def forward(self, emb: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([emb, theta_features(theta)], 1))[:, 0]

    @torch.no_grad()
    def on_grid(self, embs: torch.Tensor, theta: torch.Tensor, chunk: int = 16384) -> np.ndarray:
        """``log r`` ``(M, G)`` float64 of every embedding ``(M, E)`` at every point of
        ``theta`` ``(G, 3)``: :meth:`forward` on all pairs, to float32 rounding. The first
        layer is linear in the concatenated input, so its embedding and ``theta`` parts are
        computed once each (``M`` and ``G`` rows) and added, instead of once per pair; about
        twice as fast on a CPU for grids of 10^5 points."""
        first, act, second, act2, last = self.mlp
        n_emb = embs.shape[1]
        a = embs @ first.weight[:, :n_emb].T  # (M, width)
        t = torch.addmm(first.bias, theta_features(theta), first.weight[:, n_emb:].T)
        out = np.empty((len(embs), len(theta)))
        for j in range(len(embs)):
            for i in range(0, len(theta), chunk):  # cache-sized blocks of the grid
                h = act(t[i : i + chunk] + a[j])
                h = act2(torch.addmm(second.bias, h, second.weight.T))
                out[j, i : i + chunk] = torch.addmm(last.bias, h, last.weight.T)[:, 0].cpu().numpy()
        return out


class MapRatioNet(nn.Module):
    """``log r(theta; x)`` for maps ``(B, 128, 128)``: strided convolutions down to 8 x 8,
    plus the map's latitude profile (its rows' mean, which the spatial parameter ``h``
    shapes), then a head on ``[embedding, theta]``."""

    def __init__(self, channels: int = 32, emb: int = 128):
        super().__init__()
        self.hparams = {"channels": channels, "emb": emb}
        c = channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c // 2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, stride=2, padding=1),
            nn.SiLU(),
        )
        side = MAP_SIZE // 16
        self.embed = nn.Sequential(
            nn.Linear(c * side * side + MAP_SIZE + 2, emb), nn.SiLU(), nn.Linear(emb, emb)
        )
        self.head = _RatioHead(emb)
        channels_last(self)

    def embedding(self, maps: torch.Tensor) -> torch.Tensor:
        x = map_input(maps)
        profile = x.mean(2)  # (B, H): the latitude profile
        totals = torch.stack([x.mean((1, 2)), torch.log1p(maps.clamp_min(0).sum((1, 2)))], 1)
        z = self.conv(x[:, None]).flatten(1)
        return self.embed(torch.cat([z, profile, totals], 1))

    def forward(self, maps: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(maps), theta)


class SetRatioNet(nn.Module):
    """``log r(theta; S_det)`` for detected-source lists: per source ``(log10 F, l / 40,
    b / 40)`` ``(B, M, 3)`` with a mask ``(B, M)`` of the real entries; sum and mean pooling
    and the list length, then a head on ``[embedding, theta]``."""

    def __init__(self, width: int = 64, emb: int = 64):
        super().__init__()
        self.hparams = {"width": width, "emb": emb}
        self.phi = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.rho = nn.Sequential(nn.Linear(2 * width + 1, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.head = _RatioHead(emb)

    def embedding(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(feats.dtype)
        z = self.phi(feats) * m
        n = m.sum(1)
        pooled = torch.cat([z.sum(1) / 50.0, z.sum(1) / n.clamp_min(1.0), torch.log1p(n)], 1)
        return self.rho(pooled)

    def forward(self, feats, mask, theta) -> torch.Tensor:
        return self.head(self.embedding(feats, mask), theta)


def nre_loss(log_r_joint: torch.Tensor, log_r_marginal: torch.Tensor, balance: float = 0.0):
    """Neural ratio estimation: classify joint ``(theta, x)`` pairs (label 1) from pairs
    with ``theta`` shuffled across the batch (label 0); the optimal logit is
    ``log p(x | theta) / p(x)``. ``balance > 0``: balanced NRE (Delaunoy et al. 2022), whose
    penalty ``balance * (E sigma(joint) + E sigma(marginal) - 1)^2`` makes the posteriors
    conservative."""
    f = nn.functional.binary_cross_entropy_with_logits
    loss = f(log_r_joint, torch.ones_like(log_r_joint)) + f(
        log_r_marginal, torch.zeros_like(log_r_marginal)
    )
    if balance > 0:
        b = torch.sigmoid(log_r_joint).mean() + torch.sigmoid(log_r_marginal).mean() - 1
        loss = loss + balance * b**2
    return loss
