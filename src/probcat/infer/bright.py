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
decoded again around it (:func:`decode_forced`: :func:`probcat.infer.detect.decode` with
``force`` and ``force_locs``, on windows): the network refines its position, classifies
it and gives it intervals, and conditions its neighbours on it, as for any other source.
(Proposed where the tile's own posterior puts it, the refined positions of rescued
irregular galaxies were within 2 px of the truth for 51% of them, against 69% from SEP's
centre; validation fields.) Its ``prob`` is the
probability that the tiles of its core hold at least one source, ``1 - prod(1 - p)`` over
the marginal probabilities of the tiles within that radius (calibrated as any probability),
and ``bright_rescue`` marks it.

On by default (``rescue_bright=True``; ``--no-rescue-bright`` turns it off).

Chosen on validation galaxies (scratch; 98-px scenes, 300 per population, and forty 400-px
fields of the five families): SNR 50, 100 px and 0.4 against SNR 30-100, 10-200 px and
0.4-0.6, and against rules on the tile probabilities alone (a 3x3 sum above 0.6-0.8), which
added pieces of detected galaxies more often than the galaxies they missed.
"""

from __future__ import annotations

import numpy as np
import torch

from probcat.errors import warn_user
from probcat.tiles import cores, in_core

__all__ = [
    "BRIGHT_SNR",
    "BRIGHT_NPIX",
    "BRIGHT_FREE",
    "unclaimed",
    "segments",
    "force_mask",
    "core_probability",
    "decode_forced",
]

BRIGHT_SNR = 50.0  # an object's flux over the noise of its pixels
BRIGHT_NPIX = 100  # pixels of its segment (a radius of 5.6 px or more)
BRIGHT_FREE = 0.4  # no detection within this share of its radius (at least MIN_FREE_PX)
MIN_FREE_PX = 3.0
SEGMENT_THRESH = 1.5  # sigma, SEP's extraction threshold (paper 000, Table 2)
# tiles a forced decision can change: each of the checkerboard's later passes conditions a
# tile on the decisions within 2 tiles (3x3 convolution of the decision channels, proximity
# to the 8 neighbours: ``_group_pass``'s halo), and a decision made in the first pass is
# read by the three after it
REACH_TILES = 2 * 3
# tiles of blank context beyond those: a window's edge changes the decisions within the same
# reach of it, and the stamps of the refiner and classifier (16 px) reach 2 tiles further
WINDOW_TILES = 2 * REACH_TILES + 2
WINDOW_BATCH = 64  # windows decoded at once (memory)
# SEP's extraction time grows faster than the area on large crowded images (blended segments
# deblended whole): 0.08-0.10 s per Mpx up to 4000x4000 LSST-i, 16.3 s on 8000x8000. Larger
# images are segmented in cores of SEGMENT_CHUNK px, each with SEGMENT_MARGIN px around it.
SEGMENT_CHUNK = 4096
SEGMENT_MARGIN = 256
_SEGMENT_FIELDS = ("x", "y", "npix", "flux", "xmin", "xmax", "ymin", "ymax")


def unclaimed(image: np.ndarray, x, y, masked: np.ndarray | None = None) -> np.ndarray:
    """``(m, 3)``: centre ``x, y`` and radius (px) of the bright objects of ``image``
    (``(bands, H, W)`` in noise-sigma units, or ``(H, W)``) with no detection of ``x, y``
    near their centre (module docstring). ``masked`` (``(H, W)`` bool, pixels without data,
    0 in ``image``): an object whose box, one pixel wider, holds any is left alone (its
    segment may be a piece of a source that the mask cuts in two)."""
    img = np.asarray(image, np.float32)  # SEP's own pixel type: no float64 copies
    if img.ndim == 3:  # bands summed, in units of the sum's noise
        img = img.sum(0) / np.float32(np.sqrt(img.shape[0]))
    # NaN and inf as 0 (np.nan_to_num's values; it took 4 s on an 8000x8000 image)
    img = np.where(np.isfinite(img), img, np.float32(0))  # a new, contiguous array
    try:
        objs = segments(img)
    except Exception as e:  # noqa: BLE001 - SEP's buffer limits on a crowded image
        warn_user(f"rescue_bright: SEP could not segment the image ({e}): no object was rescued")
        return np.zeros((0, 3))
    npix = np.asarray(objs["npix"], float)
    snr = np.asarray(objs["flux"], float) / np.sqrt(np.maximum(npix, 1.0))
    radius = np.sqrt(npix / np.pi)
    keep = (snr >= BRIGHT_SNR) & (npix >= BRIGHT_NPIX)
    box = np.stack([np.asarray(objs[k]) for k in ("xmin", "xmax", "ymin", "ymax")], 1)
    ox, oy, radius, box = (
        np.asarray(objs["x"])[keep],
        np.asarray(objs["y"])[keep],
        radius[keep],
        box[keep],
    )
    x, y = np.asarray(x, float), np.asarray(y, float)
    free = np.maximum(MIN_FREE_PX, BRIGHT_FREE * radius)
    if len(x) and len(ox):  # the nearest detection of each (a tree: thousands of each)
        from scipy.spatial import cKDTree

        d, _ = cKDTree(np.stack([x, y], 1)).query(np.stack([ox, oy], 1))
        alone = d >= free
        ox, oy, radius, box = ox[alone], oy[alone], radius[alone], box[alone]
    if masked is not None and np.any(masked) and len(ox):
        h, w = masked.shape
        cut = np.array([
            masked[max(y0 - 1, 0) : min(y1 + 2, h), max(x0 - 1, 0) : min(x1 + 2, w)].any()
            for x0, x1, y0, y1 in box.astype(int)
        ], bool)  # fmt: skip
        ox, oy, radius = ox[~cut], oy[~cut], radius[~cut]
    return np.stack([ox, oy, radius], 1) if len(ox) else np.zeros((0, 3))


def segments(img: np.ndarray) -> dict:
    """SEP's objects of ``img`` ``(H, W)`` (float32, noise-sigma units, no NaN) above
    ``SEGMENT_THRESH``: a dict of arrays ``x, y, npix, flux, xmin, xmax, ymin, ymax``
    (pixels of ``img``). An image of up to ``SEGMENT_CHUNK + 2 * SEGMENT_MARGIN`` px a side
    is segmented whole. A larger one is segmented core by core (``SEGMENT_CHUNK`` px), each
    with ``SEGMENT_MARGIN`` px of the image around it, keeping the objects whose centre
    lies in the core, so that the time grows as the area: an object or a blended segment that
    reaches further than the margin beyond its core is cut where the whole image's is not
    (on an 8000x8000 LSST-i scene, 21 of 14,625 bright objects differ, and the segmentation
    takes 7.3 s instead of 16.3 s)."""
    import sep

    from probcat.baselines.sep import gaussian_kernel

    def extract(part):
        objs = sep.extract(part, SEGMENT_THRESH, err=1.0, minarea=5, deblend_nthresh=32,
                           deblend_cont=0.005, filter_kernel=gaussian_kernel(3, 2.0))  # fmt: skip
        return {k: np.asarray(objs[k]) for k in _SEGMENT_FIELDS}

    h, w = img.shape
    if max(h, w) <= SEGMENT_CHUNK + 2 * SEGMENT_MARGIN:
        return extract(img)
    parts = []
    for box, (ya, yb, xa, xb) in cores(h, w, SEGMENT_CHUNK, SEGMENT_MARGIN):
        objs = extract(np.ascontiguousarray(img[ya:yb, xa:xb]))
        for k in ("x", "xmin", "xmax"):
            objs[k] = objs[k] + xa
        for k in ("y", "ymin", "ymax"):
            objs[k] = objs[k] + ya
        core = in_core(objs["x"], objs["y"], box)
        parts.append({k: v[core] for k, v in objs.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in _SEGMENT_FIELDS}


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
    r = max(BRIGHT_FREE * radius, float(tile_size))
    # the tiles whose centres ((i + 0.5) t - 0.5) can lie within r: a box, not the image
    ty0, ty1 = (
        min(max(int(np.floor((v + 0.5) / tile_size)), 0), nty) for v in (y - r, y + r + tile_size)
    )
    tx0, tx1 = (
        min(max(int(np.floor((v + 0.5) / tile_size)), 0), ntx) for v in (x - r, x + r + tile_size)
    )
    cy = (np.arange(ty0, ty1) + 0.5) * tile_size - 0.5
    cx = (np.arange(tx0, tx1) + 0.5) * tile_size - 0.5
    near = np.hypot(cx[None, :] - x, cy[:, None] - y) <= r
    p = np.clip(np.asarray(prob[ty0:ty1, tx0:tx1], float)[near], 0.0, 1.0)
    return float(1.0 - np.prod(1.0 - p)) if p.size else 0.0


def decode_forced(net, feats, pixels, base, k: int, force, force_locs, threshold: float):
    """The MAP decoding of image ``k`` of ``feats`` ``(B, C, nty, ntx)`` (pixels
    ``(B, bands, nty * t, ntx * t)``) with the tiles ``force`` ``(1, nty, ntx)`` decided to
    hold a source (at ``force_locs``): :func:`~probcat.infer.detect.decode` with ``force``,
    run only on a window around each of those tiles (the windows decoded as one batch) and
    spliced into ``base`` (the batch's decoding without them, a
    :class:`~probcat.infer.detect.Decisions`). The same as decoding the whole image again:
    the tiles a forced decision can change lie within :data:`REACH_TILES` of it, and each
    window adds :data:`WINDOW_TILES` of context (the tests compare the two). Returns the
    :class:`~probcat.infer.detect.Decisions` of the one image."""
    from probcat.infer.detect import decode

    nty, ntx = feats.shape[-2:]
    t = net.tile_size
    one = _select(base, k)  # a copy: the windows' tiles are written into it
    # every window the same size, starting on an even tile (the checkerboard's groups are
    # then the image's) and ending at the image's edge where it reaches it
    side = 2 * WINDOW_TILES + 2
    sy, sx = (n if side >= n else side + (n - side) % 2 for n in (nty, ntx))
    at = torch.nonzero(force[0]).tolist()
    for c0 in range(0, len(at), WINDOW_BATCH):
        chunk = at[c0 : c0 + WINDOW_BATCH]
        boxes = [
            (min(max((y - WINDOW_TILES) // 2 * 2, 0), nty - sy),
             min(max((x - WINDOW_TILES) // 2 * 2, 0), ntx - sx))
            for y, x in chunk
        ]  # fmt: skip
        crop = [(slice(None), slice(oy, oy + sy), slice(ox, ox + sx)) for oy, ox in boxes]
        win = decode(
            net,
            torch.cat([feats[k : k + 1, :, b[1], b[2]] for b in crop]),
            image=torch.cat(
                [
                    pixels[k : k + 1, :, oy * t : (oy + sy) * t, ox * t : (ox + sx) * t]
                    for oy, ox in boxes
                ]
            ),
            threshold=threshold,
            force=torch.cat([force[b] for b in crop]),
            force_locs=None if force_locs is None else torch.cat([force_locs[b] for b in crop]),
        )
        for j, ((y, x), (oy, ox)) in enumerate(zip(chunk, boxes)):
            # the tiles within reach of this window's forced tile (inside the window)
            y0, y1 = max(y - REACH_TILES, 0), min(y + REACH_TILES + 1, nty)
            x0, x1 = max(x - REACH_TILES, 0), min(x + REACH_TILES + 1, ntx)
            near = (0, slice(y0, y1), slice(x0, x1))
            there = (j, slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
            for a, b in zip(_tensors(one), _tensors(win)):
                a[near] = b[there].to(a)
    return one


def _values(x) -> tuple:
    """The fields of a dataclass (a decoding, a tile output), in order."""
    return tuple(getattr(x, name) for name in x.__dataclass_fields__)


def _tensors(dec) -> list:
    """The tensors of a decoding (those of its tile outputs included), in order."""
    out = []
    for v in _values(dec):
        out.extend(_values(v) if hasattr(v, "count_logit") else [] if v is None else [v])
    return out


def _select(dec, k: int):
    """Image ``k`` of the batch decoding ``dec``, as a copy decoding one image (a field with
    one image for the whole batch, e.g. a shared marginal, is that one)."""
    from probcat.infer.detect import Decisions
    from probcat.nets.heads import TileOutput

    def pick(x):
        if isinstance(x, TileOutput):
            return TileOutput(*(pick(v) for v in _values(x)))
        if x is None:
            return None
        i = min(k, x.shape[0] - 1)
        return x[i : i + 1].clone()

    return Decisions(*(pick(v) for v in _values(dec)))
