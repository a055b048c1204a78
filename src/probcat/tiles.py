"""Tiling: the per-tile catalog and every tile <-> pixel conversion and stamp cut-out.

A tile of side ``t`` with index ``(ty, tx)`` covers ``x in [tx*t - 0.5, (tx+1)*t - 0.5)``
and likewise in y (pixel centres at integers, ``image[..., y, x]``); inside a tile,
locations ``(x, y)`` are in tile units in ``[0, 1)``. This module is the only place that
arithmetic lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probcat.catalog import PER_BAND, FullCatalog, as2d
from probcat.errors import ProbcatValueError

__all__ = [
    "TileCatalog",
    "grid_shape",
    "pixel_to_tile",
    "tile_to_pixel",
    "pad_to_tiles",
    "window",
    "cut_stamps",
    "cores",
    "in_core",
]


def grid_shape(image_shape: tuple[int, int], tile_size: int) -> tuple[int, int]:
    """Number of tiles ``(nty, ntx)`` covering an image (the last tiles may overhang)."""
    h, w = image_shape
    return -(-h // tile_size), -(-w // tile_size)


def pixel_to_tile(x, y, tile_size: int):
    """Tile indices ``(tx, ty)`` (int64) and in-tile locations ``(lx, ly)`` (tile units)
    of pixel positions ``x, y`` (numpy arrays)."""
    fx, fy = (np.asarray(x, float) + 0.5) / tile_size, (np.asarray(y, float) + 0.5) / tile_size
    tx, ty = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    return tx, ty, fx - tx, fy - ty


def tile_to_pixel(ty, tx, locs, tile_size: int):
    """Pixel positions ``(x, y)`` of locations ``locs`` ``(N, 2)`` (tile units, may leave
    the tile) in tiles ``(ty, tx)``; numpy arrays or tensors alike."""
    return (tx + locs[:, 0]) * tile_size - 0.5, (ty + locs[:, 1]) * tile_size - 0.5


def window(x: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` and columns ``[x0, x1)`` of ``x`` (``(..., H, W)``), zero where
    they fall outside it; float32, a new C-contiguous array."""
    out = np.zeros((*x.shape[:-2], y1 - y0, x1 - x0), np.float32)
    h, w = x.shape[-2:]
    ya, yb, xa, xb = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if ya < yb and xa < xb:
        out[..., ya - y0 : yb - y0, xa - x0 : xb - x0] = x[..., ya:yb, xa:xb]
    return out


def cores(h: int, w: int, core: int, margin: int):
    """An ``(h, w)`` image cut into squares of ``core`` px, row by row, for work done part
    by part: per square, its box ``(y0, y1, x0, x1)`` (``y1 = y0 + core``, beyond the image
    for the last ones) and the window of the image it is worked on, the square with
    ``margin`` px of the image around it, ``(ya, yb, xa, xb)``."""
    for y0 in range(0, h, core):
        for x0 in range(0, w, core):
            win = (max(y0 - margin, 0), min(y0 + core + margin, h))
            win += (max(x0 - margin, 0), min(x0 + core + margin, w))
            yield (y0, y0 + core, x0, x0 + core), win


def in_core(x, y, box) -> np.ndarray:
    """Whether the pixel of each position ``(x, y)`` (pixel centres at integers) lies in
    the box ``(y0, y1, x0, x1)`` of :func:`cores`."""
    px, py = np.floor(np.asarray(x) + 0.5), np.floor(np.asarray(y) + 0.5)
    y0, y1, x0, x1 = box
    return (px >= x0) & (px < x1) & (py >= y0) & (py < y1)


def pad_to_tiles(x: np.ndarray, tile_size: int, halo: int = 0) -> np.ndarray:
    """``x`` (``(..., H, W)``) zero-padded at the bottom and right to whole tiles, plus
    ``halo`` tiles of zeros on every side; float32."""
    nty, ntx = grid_shape(x.shape[-2:], tile_size)
    t = tile_size
    return window(x, -halo * t, (nty + halo) * t, -halo * t, (ntx + halo) * t)


def cut_stamps(
    image: torch.Tensor,
    b: torch.Tensor,
    ty: torch.Tensor,
    tx: torch.Tensor,
    locs: torch.Tensor,
    tile_size: int,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``size``-px stamps ``(N, bands, size, size)`` of ``image`` ``(B, bands, H, W)``
    centred on the pixel nearest each source at ``locs`` ``(N, 2)`` (tile units, relative
    to tile ``(b, ty, tx)``'s origin; zeros beyond the image), and the sources' offsets
    ``(N, 2)`` in pixels from those centre pixels."""
    r = size // 2
    _, _, h, w = image.shape
    x, y = tile_to_pixel(ty.to(locs.dtype), tx.to(locs.dtype), locs, tile_size)
    cx = torch.round(x).long().clamp(0, w - 1)
    cy = torch.round(y).long().clamp(0, h - 1)
    # indices clamped into the image and pixels beyond it zeroed: the same as cutting from
    # a zero-padded copy, without copying the image on every call (that made whole-image
    # inference quadratic: calls grow with the sources, each copy with the image)
    ar = torch.arange(size, device=image.device) - r
    rows, cols = cy[:, None] + ar, cx[:, None] + ar
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    rows, cols = rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]
    st = image[b[:, None, None], :, rows, cols]  # (N, size, size, bands)
    st = torch.where(inside[..., None], st, st.new_zeros(()))
    return st.permute(0, 3, 1, 2), torch.stack([x - cx, y - cy], 1)


@dataclass(frozen=True)
class TileCatalog:
    """Per-tile catalog of a batch of images: at most one source per tile.

    Attributes:
        n_sources: ``(B, nty, ntx)`` long, 0 or 1.
        locs: ``(B, nty, ntx, 2)`` float, ``(x, y)`` of the source in tile units, [0, 1).
        params: name -> ``(B, nty, ntx, k)`` float tensors (e.g. ``galaxy``, ``flux``), zero
            where there is no source.
        tile_size: tile side in pixels.
        image_shape: ``(H, W)`` of the images.
        n_collisions: how many sources were dropped because a brighter one shared a tile.
    """

    n_sources: torch.Tensor
    locs: torch.Tensor
    params: dict[str, torch.Tensor]
    tile_size: int
    image_shape: tuple[int, int]
    bands: tuple[str, ...] = ("i",)
    n_collisions: int = 0

    @property
    def batch_size(self) -> int:
        return self.n_sources.shape[0]

    @classmethod
    def from_full(
        cls, cats: list[FullCatalog], tile_size: int = 5, brightness: str = "flux"
    ) -> TileCatalog:
        """Tile a batch of catalogs (same image shape). Where several sources fall in one
        tile, the brightest (largest ``brightness`` summed over bands) is kept."""
        if not cats:
            raise ProbcatValueError("need at least one catalog")
        shape, bands = cats[0].image_shape, cats[0].bands
        if any(c.image_shape != shape for c in cats):
            raise ProbcatValueError("all catalogs of a batch must share one image shape")
        nty, ntx = grid_shape(shape, tile_size)
        b = len(cats)
        names = [
            k
            for k in cats[0].colnames
            if k not in ("x", "y")
            and np.asarray(cats[0][k]).dtype.kind in "biuf"
            and all(k in c for c in cats)
        ]
        x = np.concatenate([np.asarray(c["x"], float) for c in cats])
        y = np.concatenate([np.asarray(c["y"], float) for c in cats])
        img = np.concatenate([np.full(len(c), i) for i, c in enumerate(cats)]).astype(np.int64)
        if brightness in cats[0]:
            bright = np.concatenate([as2d(c[brightness]).sum(1) for c in cats])
        else:
            bright = np.zeros(len(x))
        tx, ty, lx, ly = pixel_to_tile(x, y, tile_size)
        inside = (tx >= 0) & (tx < ntx) & (ty >= 0) & (ty < nty)
        flat = (img * nty + ty) * ntx + tx
        order = np.lexsort((-bright, flat))
        order = order[inside[order]]
        first = np.ones(len(order), bool)
        first[1:] = flat[order][1:] != flat[order][:-1]
        keep = order[first]
        n_collisions = int(len(order) - len(keep))

        n_sources = torch.zeros(b * nty * ntx, dtype=torch.long)
        n_sources[torch.from_numpy(flat[keep])] = 1
        locs = torch.zeros(b * nty * ntx, 2)
        lxy = np.stack([lx[keep], ly[keep]], 1)
        locs[torch.from_numpy(flat[keep])] = torch.from_numpy(lxy).float()
        params = {}
        for k in names:
            col = np.concatenate([as2d(c[k]) for c in cats])
            t = torch.zeros(b * nty * ntx, col.shape[1])
            t[torch.from_numpy(flat[keep])] = torch.from_numpy(col[keep]).float()
            params[k] = t.reshape(b, nty, ntx, -1)
        return cls(
            n_sources.reshape(b, nty, ntx),
            locs.reshape(b, nty, ntx, 2),
            params,
            tile_size,
            tuple(shape),
            tuple(bands),
            n_collisions,
        )

    def to_full(self) -> list[FullCatalog]:
        """Back to one :class:`FullCatalog` per image (sources in row-major tile order)."""
        out = []
        ts = self.tile_size
        for i in range(self.batch_size):
            ty, tx = torch.nonzero(self.n_sources[i] > 0, as_tuple=True)
            x, y = tile_to_pixel(ty.numpy(), tx.numpy(), self.locs[i, ty, tx].double().numpy(), ts)
            cols = {"x": x, "y": y}
            for k, v in self.params.items():
                val = v[i, ty, tx].double().numpy()
                cols[k] = val[:, 0] if val.shape[1] == 1 and k not in PER_BAND else val
            out.append(FullCatalog(cols, self.image_shape, self.bands))
        return out

    def subset(self, index: slice) -> TileCatalog:
        """The catalogs of the images ``index`` (a slice of the batch)."""
        return TileCatalog(
            self.n_sources[index],
            self.locs[index],
            {k: v[index] for k, v in self.params.items()},
            self.tile_size,
            self.image_shape,
            self.bands,
        )
