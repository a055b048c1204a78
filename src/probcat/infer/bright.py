"""Bright objects the detector leaves without a detection (``rescue_bright``).

The detector decides tile by tile. On a bright galaxy whose light is lumpy (a clumpy or
irregular disc, many real galaxies) or large, the network is unsure which tile holds its
centre, spreads the probability over several (0.15-0.4 each, about 1 in all), and no tile
passes the threshold: the galaxy gets no detection at all, while SEP finds it. In held-out
fields (``benchmarks/bright.py``) this misses 38% of the galaxies brighter than i = 19 and
21% of those of 19-20 (irregular ones: 91% and 65%; real Hubble Deep Field galaxies: 57%
and 30%). Fine-tuning on ten times more bright galaxies did not change it.

The rescue: SEP segments the image (in noise units, summed over bands; threshold 1.5, the
paper's deblending); each object of SNR at least :data:`BRIGHT_SNR` (its flux over the
noise of its pixels) and :data:`BRIGHT_NPIX` pixels or more, with no detection within
max(3 px, :data:`BRIGHT_FREE` times its radius sqrt(npix / pi)) of its centre, has the tile
holding its centre decided to hold a source, proposed at that centre, and the image is
decoded again (:func:`probcat.infer.detect.decode`, ``force`` and ``force_locs``): the
network refines its position, classifies it and gives it intervals, and conditions its
neighbours on it, as for any other source. (Proposed where the tile's own posterior puts
it, the refined positions of rescued irregular galaxies were within 2 px of the truth for
51% of them, against 69% from SEP's centre; validation fields.) Its ``prob`` is the
probability that the tiles of its core hold at least one source, ``1 - prod(1 - p)`` over
the marginal probabilities of the tiles within that radius (calibrated as any probability),
and ``bright_rescue`` marks it.

Chosen on validation galaxies (scratch; 98-px scenes, 300 per population, and forty 400-px
fields of the five families): SNR 50, 100 px and 0.4 against SNR 30-100, 10-200 px and
0.4-0.6, and against rules on the tile probabilities alone (a 3x3 sum above 0.6-0.8), which
added pieces of detected galaxies more often than the galaxies they missed.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = [
    "BRIGHT_SNR",
    "BRIGHT_NPIX",
    "BRIGHT_FREE",
    "unclaimed",
    "force_mask",
    "core_probability",
]

BRIGHT_SNR = 50.0  # an object's flux over the noise of its pixels
BRIGHT_NPIX = 100  # pixels of its segment (a radius of 5.6 px or more)
BRIGHT_FREE = 0.4  # no detection within this share of its radius (at least MIN_FREE_PX)
MIN_FREE_PX = 3.0
SEGMENT_THRESH = 1.5  # sigma, SEP's extraction threshold (paper 000, Table 2)


def unclaimed(image: np.ndarray, x, y) -> np.ndarray:
    """``(m, 3)``: centre ``x, y`` and radius (px) of the bright objects of ``image``
    (``(bands, H, W)`` in noise-sigma units, or ``(H, W)``) with no detection of ``x, y``
    near their centre (module docstring)."""
    import sep

    from probcat.baselines.sep import gaussian_kernel

    img = np.asarray(image, np.float64)
    if img.ndim == 3:  # bands summed, in units of the sum's noise
        img = img.sum(0) / np.sqrt(img.shape[0])
    img = np.ascontiguousarray(np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0))
    try:
        objs = sep.extract(img, SEGMENT_THRESH, err=1.0, minarea=5, deblend_nthresh=32,
                           deblend_cont=0.005, filter_kernel=gaussian_kernel(3, 2.0))  # fmt: skip
    except Exception as e:  # noqa: BLE001 - SEP's buffer limits on a crowded image
        warnings.warn(f"rescue_bright: SEP could not segment the image ({e}): no object "
                      "was rescued", stacklevel=3)  # fmt: skip
        return np.zeros((0, 3))
    npix = np.asarray(objs["npix"], float)
    snr = np.asarray(objs["flux"], float) / np.sqrt(np.maximum(npix, 1.0))
    radius = np.sqrt(npix / np.pi)
    keep = (snr >= BRIGHT_SNR) & (npix >= BRIGHT_NPIX)
    ox, oy, radius = np.asarray(objs["x"])[keep], np.asarray(objs["y"])[keep], radius[keep]
    x, y = np.asarray(x, float), np.asarray(y, float)
    free = np.maximum(MIN_FREE_PX, BRIGHT_FREE * radius)
    if len(x):
        d = np.hypot(ox[:, None] - x[None, :], oy[:, None] - y[None, :]).min(1)
        taken = d < free
        ox, oy, radius = ox[~taken], oy[~taken], radius[~taken]
    return np.stack([ox, oy, radius], 1) if len(ox) else np.zeros((0, 3))


def force_mask(objects: np.ndarray, tile_size: int, grid: tuple[int, int]):
    """``(1, nty, ntx)`` bool: the tiles holding the centres of ``objects``; and
    ``(1, nty, ntx, 2)``: those centres in tile units (``x``, ``y`` within their tile)."""
    mask = torch.zeros(1, *grid, dtype=torch.bool)
    locs = torch.zeros(1, *grid, 2)
    for ox, oy, _ in objects:
        ty, tx = int(np.floor(oy + 0.5)) // tile_size, int(np.floor(ox + 0.5)) // tile_size
        if 0 <= ty < grid[0] and 0 <= tx < grid[1]:
            mask[0, ty, tx] = True
            locs[0, ty, tx] = torch.tensor(
                [(ox + 0.5) / tile_size - tx, (oy + 0.5) / tile_size - ty]
            )
    return mask, locs


def core_probability(prob: np.ndarray, x: float, y: float, radius: float, tile_size: int) -> float:
    """``1 - prod(1 - p)`` over the tiles of the ``(nty, ntx)`` marginal probabilities
    ``prob`` whose centres lie within max(``radius`` * BRIGHT_FREE, a tile) of ``(x, y)``:
    the probability that they hold at least one source (read as independent)."""
    nty, ntx = prob.shape
    cy = (np.arange(nty) + 0.5) * tile_size - 0.5
    cx = (np.arange(ntx) + 0.5) * tile_size - 0.5
    r = max(BRIGHT_FREE * radius, float(tile_size))
    near = np.hypot(cx[None, :] - x, cy[:, None] - y) <= r
    p = np.clip(np.asarray(prob, float)[near], 0.0, 1.0)
    return float(1.0 - np.prod(1.0 - p)) if p.size else 0.0
