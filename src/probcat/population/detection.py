"""Source detection as a ratio (paper 001 eq. 2): per pixel ``s`` and flux threshold
``F_th``, ``r1 = p(source above F_th in s | x) / p(source above F_th in s)``.

The network (:class:`~probcat.population.networks.DetectionNet`) is a per-pixel classifier
of "a source brighter than ``F_th`` lies in this pixel", so its output is the posterior
``p(. | x)``; the prior in the denominator is exact (:func:`prior_map`). A detection is a
connected region where ``r1 > 5`` at the detection threshold (paper 001) that is also sure:
its posterior mass (the expected number of sources above ``F_th`` in it) is at least
``min_mass`` (0.8 by default). Where the prior per pixel is small, ``r1 > 5`` alone flags
regions whose posterior is a few per cent: with the network of the benchmark run, 58% of
such detections held no source above ``F_th`` at the target's parameters, and the
truncation ``F >= F_th`` would then exclude the truth. Its position is the pixel of highest
posterior probability in the region, and its truncation region ``R_i`` the box of +-1
degree around it (as the authors moved each detected source within +-1 degree).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from probcat.population.simulator import (
    EXTENT_DEG,
    FLUX_MU,
    L_SIGMA_DEG,
    MAP_SIZE,
    PIXEL_DEG,
    Sources,
    deg_to_pix,
    pix_to_deg,
    sample_prior,
)

__all__ = [
    "THRESHOLDS_LOG10",
    "R1_DETECT",
    "MIN_MASS",
    "REGION_DEG",
    "Detections",
    "pixel_labels",
    "prior_map",
    "find_detections",
    "match_detections",
]

THRESHOLDS_LOG10 = np.linspace(-1.0, 2.0, 12)  # log10 F_th, the authors' 12 thresholds
R1_DETECT = 5.0  # a detection: r1 > 5...
MIN_MASS = 0.8  # ...in a region holding a source above F_th with this posterior mass
REGION_DEG = 1.0  # R_i: +-1 degree around the detection


def pixel_labels(sources: Sources, n_maps: int, thresholds_log10=THRESHOLDS_LOG10):
    """``(n_maps, K, 128, 128)`` bool: pixel holds a source brighter than threshold ``k``."""
    x, y = deg_to_pix(sources.l, sources.b)
    ix, iy = np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64)
    inside = (ix >= 0) & (ix < MAP_SIZE) & (iy >= 0) & (iy < MAP_SIZE)
    # the brightest source of each pixel decides every threshold
    flat = (sources.map[inside] * MAP_SIZE + iy[inside]) * MAP_SIZE + ix[inside]
    brightest = np.full(n_maps * MAP_SIZE**2, -np.inf)
    np.maximum.at(brightest, flat, np.log10(sources.flux[inside]))
    brightest = brightest.reshape(n_maps, 1, MAP_SIZE, MAP_SIZE)
    return brightest > np.asarray(thresholds_log10)[None, :, None, None]


def prior_map(n_draws: int = 4000, seed: int = 0, thresholds_log10=THRESHOLDS_LOG10):
    """``p(source above F_th in pixel s)`` under the prior, ``(K, 128, 128)``: for each
    draw of ``theta`` exactly ``1 - (1 - q)^N`` with ``q`` the probability that one source
    falls in the pixel and is brighter than ``F_th``, averaged over ``n_draws`` draws."""
    rng = np.random.default_rng(seed)
    theta = sample_prior(rng, n_draws)
    edges = np.arange(MAP_SIZE + 1) * PIXEL_DEG - EXTENT_DEG
    p_l = np.diff(ndtr(edges / L_SIGMA_DEG))  # (W,)
    out = np.zeros((len(thresholds_log10), MAP_SIZE, MAP_SIZE))
    for n, sigma, h in theta:
        p_b = np.diff(ndtr(edges / h))  # (H,)
        p_f = 1 - ndtr((np.log(10.0) * np.asarray(thresholds_log10) - FLUX_MU) / sigma)
        q = p_f[:, None, None] * p_b[None, :, None] * p_l[None, None, :]
        out += -np.expm1(n * np.log1p(-q))
    return (out / n_draws).astype(np.float32)


@dataclass
class Detections:
    """Detected sources of one map: pixel ``x, y``, position ``l, b`` (degrees), peak
    ``r1`` and region size (pixels), at the threshold ``log10 F_th``."""

    x: np.ndarray
    y: np.ndarray
    l: np.ndarray
    b: np.ndarray
    r1: np.ndarray
    npix: np.ndarray
    threshold_log10: float

    def __len__(self) -> int:
        return len(self.x)

    def to_dict(self) -> dict:
        return {
            "l": self.l.tolist(),
            "b": self.b.tolist(),
            "r1": self.r1.tolist(),
            "npix": self.npix.tolist(),
            "threshold_log10": self.threshold_log10,
        }

    def write(self, path) -> None:
        """The detected-source catalog as a FITS table (atomically): per source the peak
        pixel ``x, y`` (0-based, ``x`` along ``l``), its position ``l, b`` (degrees), the
        peak ``r1`` and the size ``npix`` (pixels) of its ``r1 > 5`` region, and the region
        ``R_i`` the truncated simulator keeps it in (``l_min .. b_max``: +-``REGION_DEG``);
        the header holds the threshold ``log10 F_th`` the detections are above."""
        from astropy.table import Table

        from probcat.catalog import atomic_write

        t = Table(
            {
                "x": self.x,
                "y": self.y,
                "l": self.l,
                "b": self.b,
                "r1": self.r1,
                "npix": np.asarray(self.npix, np.int64),
                "l_min": self.l - REGION_DEG,
                "l_max": self.l + REGION_DEG,
                "b_min": self.b - REGION_DEG,
                "b_max": self.b + REGION_DEG,
            }
        )
        for name in ("l", "b", "l_min", "l_max", "b_min", "b_max"):
            t[name].unit = "deg"
        t.meta["LOGFTH"] = (self.threshold_log10, "log10 of the flux threshold F_th")
        t.meta["R1CUT"] = (R1_DETECT, "a detection: a region where r1 exceeds this")
        atomic_write(path, lambda tmp: t.write(tmp, format="fits", overwrite=True))


def find_detections(
    posterior: np.ndarray, prior: np.ndarray, threshold_log10: float, min_mass: float = MIN_MASS
):
    """Detections of one map from its posterior ``(128, 128)`` and prior map at one
    threshold: connected regions (8-neighbours) where ``r1 = posterior / prior > 5`` whose
    posterior mass is at least ``min_mass``."""
    r1 = posterior / np.maximum(prior, 1e-12)
    labels, n = ndimage.label(r1 > R1_DETECT, structure=np.ones((3, 3)))
    idx = np.arange(1, n + 1)
    if n:
        mass = np.asarray(ndimage.sum(posterior, labels, idx))
        idx = idx[mass >= min_mass]
    if len(idx) == 0:
        empty = np.zeros(0)
        return Detections(empty, empty, empty, empty, empty, empty.astype(int), threshold_log10)
    peaks = ndimage.maximum_position(posterior, labels, idx)
    y, x = (np.array(v, float) for v in zip(*peaks))
    l, b = pix_to_deg(x, y)
    return Detections(
        x,
        y,
        l,
        b,
        np.asarray(ndimage.maximum(r1, labels, idx)),
        np.bincount(labels.ravel(), minlength=n + 1)[idx],  # the kept regions' sizes
        threshold_log10,
    )


def match_detections(sources: Sources, detections: list[Detections]) -> Sources:
    """Mark each source ``detected`` when it is the brightest source above the detection
    threshold inside a detection's region ``R_i`` (one source per detection)."""
    det = np.zeros(len(sources), bool)
    order = np.argsort(sources.map, kind="stable")
    starts = np.searchsorted(sources.map[order], np.arange(len(detections) + 1))
    for m, d in enumerate(detections):
        sel = order[starts[m] : starts[m + 1]]
        if not len(d) or not len(sel):
            continue
        f_th = 10.0**d.threshold_log10
        bright = sel[sources.flux[sel] > f_th]
        taken = set()
        for i in range(len(d)):
            inr = bright[
                (np.abs(sources.l[bright] - d.l[i]) <= REGION_DEG)
                & (np.abs(sources.b[bright] - d.b[i]) <= REGION_DEG)
            ]
            inr = [j for j in inr[np.argsort(-sources.flux[inr])] if j not in taken]
            if inr:
                taken.add(inr[0])
                det[inr[0]] = True
    out = Sources(sources.map, sources.flux, sources.l, sources.b, det)
    return out
