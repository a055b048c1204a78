"""Tile-level inference on any image, MAP catalogs and posterior catalog samples.

An image of any size is padded (never cropped) to whole tiles plus a halo of blank sky,
and processed in overlapping chunks whose halo is at least the network's receptive
field, so the stitched tile outputs equal whole-image inference and memory is bounded by
the chunk size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.nets.detection import DetectionNet, TileOutput

__all__ = ["predict_tiles", "map_catalog", "sample_catalogs"]


def _check_image(image: np.ndarray, net: DetectionNet, noise_sigma) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ProbcatValueError(f"image must be (bands, H, W), got shape {image.shape}")
    if image.shape[0] != net.n_bands:
        raise ProbcatValueError(f"image has {image.shape[0]} band(s), the weights expect {net.n_bands}")
    if min(image.shape[1:]) < 1:
        raise ProbcatValueError(f"image is empty: shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ProbcatValueError("image contains NaN or inf pixels: mask or replace them first")
    sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float32), (image.shape[0],))
    if not np.all(sigma > 0):
        raise ProbcatValueError(f"noise sigma must be positive, got {sigma}")
    return image / sigma[:, None, None]


@torch.no_grad()
def predict_tiles(net: DetectionNet, image: np.ndarray, noise_sigma, *,
                  chunk_tiles: int = 128) -> TileOutput:
    """Tile outputs for an image ``(bands, H, W)`` of any size, in electrons.

    Returns a :class:`TileOutput` with batch size 1 covering ``ceil(H/t) x ceil(W/t)`` tiles.
    """
    net.eval()
    x = _check_image(image, net, noise_sigma)
    t = net.tile_size
    _, h, w = x.shape
    nty, ntx = math.ceil(h / t), math.ceil(w / t)
    halo = math.ceil(net.receptive_field / 2 / t) + 1  # tiles of context on each side
    padded = np.zeros((x.shape[0], (nty + 2 * halo) * t, (ntx + 2 * halo) * t), np.float32)
    padded[:, halo * t:halo * t + h, halo * t:halo * t + w] = x
    fields = {k: torch.zeros(1, nty, ntx, *([2] if k.startswith("loc") else []))
              for k in ("count_logit", "loc_mean", "loc_logvar", "galaxy_logit")}
    for ty0 in range(0, nty, chunk_tiles):
        for tx0 in range(0, ntx, chunk_tiles):
            ty1, tx1 = min(ty0 + chunk_tiles, nty), min(tx0 + chunk_tiles, ntx)
            # chunk core tiles [ty0, ty1) live at padded tiles [ty0 + halo, ty1 + halo)
            crop = padded[:, ty0 * t:(ty1 + 2 * halo) * t, tx0 * t:(tx1 + 2 * halo) * t]
            out = net(torch.from_numpy(np.ascontiguousarray(crop))[None])
            for k in fields:
                fields[k][:, ty0:ty1, tx0:tx1] = getattr(out, k)[:, halo:-halo, halo:-halo]
    return TileOutput(**fields)


def _tile_xy(tiles: TileOutput, t: int, loc: torch.Tensor):
    nty, ntx = tiles.count_logit.shape[-2:]
    ty, tx = torch.meshgrid(torch.arange(nty), torch.arange(ntx), indexing="ij")
    return (tx + loc[..., 0]) * t - 0.5, (ty + loc[..., 1]) * t - 0.5


def map_catalog(tiles: TileOutput, image_shape, tile_size: int = 5, threshold: float = 0.5,
                bands=("i",)) -> FullCatalog:
    """Tiles with detection probability > ``threshold``, centroid at the posterior mean.

    Columns: ``x, y`` (pixels), ``x_sd, y_sd`` (pixels), ``prob``, ``galaxy_prob``,
    ``tile_x, tile_y``.
    """
    if not 0.0 <= threshold < 1.0:
        raise ProbcatValueError(f"threshold must lie in [0, 1), got {threshold}")
    prob = tiles.prob[0]
    x, y = _tile_xy(tiles, tile_size, tiles.loc_mean[0])
    keep = prob > threshold
    sd = tiles.loc_sd[0] * tile_size
    ty, tx = torch.nonzero(keep, as_tuple=True)
    return FullCatalog({
        "x": x[keep].double().numpy(), "y": y[keep].double().numpy(),
        "x_sd": sd[..., 0][keep].double().numpy(), "y_sd": sd[..., 1][keep].double().numpy(),
        "prob": prob[keep].double().numpy(), "galaxy_prob": tiles.galaxy_prob[0][keep].double().numpy(),
        "tile_x": tx.numpy(), "tile_y": ty.numpy(),
    }, tuple(image_shape), tuple(bands), {"threshold": threshold})


def sample_catalogs(tiles: TileOutput, image_shape, n: int, tile_size: int = 5,
                    generator: torch.Generator | None = None, bands=("i",)) -> list[FullCatalog]:
    """``n`` posterior catalog samples (paper 000 section 4.6): per tile a Bernoulli count
    and a Gaussian centroid; centroid draws outside their tile count as non-detections
    (paper footnote 10). Each sample's ``galaxy`` is drawn from its Bernoulli too."""
    if n < 1:
        raise ProbcatValueError(f"number of samples must be >= 1, got {n}")
    prob, mean, sd = tiles.prob[0], tiles.loc_mean[0], tiles.loc_sd[0]
    h, w = image_shape
    out = []
    for _ in range(n):
        on = torch.rand(prob.shape, generator=generator) < prob
        loc = mean + sd * torch.randn(mean.shape, generator=generator)
        on &= ((loc >= 0) & (loc < 1)).all(-1)
        gal = torch.rand(prob.shape, generator=generator) < tiles.galaxy_prob[0]
        x, y = _tile_xy(tiles, tile_size, loc)
        on &= (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
        out.append(FullCatalog({"x": x[on].double().numpy(), "y": y[on].double().numpy(),
                                "galaxy": gal[on].numpy(), "prob": prob[on].double().numpy()},
                               tuple(image_shape), tuple(bands)))
    return out
