"""Detection metrics of paper 000 section 4.2.

*Matching* (eqs. 15-16): Hungarian assignment minimising the summed distance, where a
true source and a detection may only be matched within ``max_dist`` (2 px).
*Precision* in a bin of detected SNR: matched detections / detections in the bin;
*recall* in a bin of true SNR (or blendedness): matched truths / truths in the bin;
*F1* (eq. 17) = 2PR / (P + R).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "match",
    "detected_snr",
    "DetectionCounts",
    "binned_detection_metrics",
    "f1_score",
    "SNR_BINS",
]

SNR_BINS = np.logspace(np.log10(3), np.log10(1000), 11)  # log-spaced 3-1000 (paper Fig. 2)
_FORBIDDEN = 1e9


def match(true_xy: np.ndarray, est_xy: np.ndarray, max_dist: float = 2.0):
    """Hungarian matching within ``max_dist`` pixels.

    Args:
        true_xy: ``(n, 2)`` true positions; est_xy: ``(m, 2)`` detections.

    Returns:
        ``(i_true, j_est)`` index arrays of the matched pairs (each distance < max_dist).
    """
    true_xy = np.asarray(true_xy, float).reshape(-1, 2)
    est_xy = np.asarray(est_xy, float).reshape(-1, 2)
    if len(true_xy) == 0 or len(est_xy) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    d = np.linalg.norm(true_xy[:, None, :] - est_xy[None, :, :], axis=-1)
    cost = np.where(d < max_dist, d, _FORBIDDEN)
    i, j = linear_sum_assignment(cost)
    ok = cost[i, j] < _FORBIDDEN
    return i[ok].astype(np.int64), j[ok].astype(np.int64)


def detected_snr(image: np.ndarray, x, y, sigma: float, radius: float = 5.0) -> np.ndarray:
    """SNR at detected positions on the (noisy, blended) image ``(H, W)``.

    Eq. 12 on a noisy image is biased up by the noise: E[sum (I+n)^2 / sigma^2] =
    sum I^2 / sigma^2 + N_aperture. We subtract that expectation, so the detected SNR
    estimates the same quantity as the true SNR (which is computed noiseless).
    """
    h, w = image.shape
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    r = int(np.ceil(radius)) + 1
    off = np.arange(-r, r + 1)
    out = np.zeros(len(x))
    for a in range(0, len(x), 4096):  # vectorised over positions, bounded memory
        xc, yc = x[a : a + 4096, None, None], y[a : a + 4096, None, None]
        xx = np.rint(xc).astype(int) + off[None, None, :]
        yy = np.rint(yc).astype(int) + off[None, :, None]
        m = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        m &= (xx - xc) ** 2 + (yy - yc) ** 2 <= radius**2
        v = np.asarray(image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], float)
        s = np.sum(np.where(m, v * v, 0.0), axis=(1, 2)) / sigma**2 - m.sum(axis=(1, 2))
        out[a : a + 4096] = np.sqrt(np.maximum(s, 0.0))
    return out


@dataclass
class DetectionCounts:
    """Counts accumulated over many images, per bin."""

    matched_est: np.ndarray  # matched detections per detected-SNR bin
    n_est: np.ndarray  # detections per detected-SNR bin
    matched_true: np.ndarray  # matched truths per true-quantity bin
    n_true: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.matched_est / self.n_est

    @property
    def recall(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.matched_true / self.n_true


def f1_score(precision, recall):
    precision, recall = np.asarray(precision, float), np.asarray(recall, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * precision * recall / (precision + recall)


def binned_detection_metrics(
    true_value: np.ndarray,
    true_matched: np.ndarray,
    est_value: np.ndarray,
    est_matched: np.ndarray,
    bins: np.ndarray,
) -> DetectionCounts:
    """Bin matched flags: truths by ``true_value`` (true SNR or blendedness), detections by
    ``est_value`` (detected SNR). Values outside ``bins`` are ignored."""

    def count(v, flag):
        idx = np.digitize(v, bins) - 1
        ok = (idx >= 0) & (idx < len(bins) - 1)
        n = np.bincount(idx[ok], minlength=len(bins) - 1)
        m = np.bincount(idx[ok], weights=flag[ok].astype(float), minlength=len(bins) - 1)
        return m, n

    me, ne = count(np.asarray(est_value), np.asarray(est_matched))
    mt, nt = count(np.asarray(true_value), np.asarray(true_matched))
    return DetectionCounts(me, ne, mt, nt)
