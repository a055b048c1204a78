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

__all__ = [
    "match",
    "detected_snr",
    "aperture_snr",
    "aperture_pixels",
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
    from scipy.optimize import linear_sum_assignment  # here: importing it costs 0.2 s

    true_xy = np.asarray(true_xy, float).reshape(-1, 2)
    est_xy = np.asarray(est_xy, float).reshape(-1, 2)
    if len(true_xy) == 0 or len(est_xy) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    d = np.linalg.norm(true_xy[:, None, :] - est_xy[None, :, :], axis=-1)
    cost = np.where(d < max_dist, d, _FORBIDDEN)
    i, j = linear_sum_assignment(cost)
    ok = cost[i, j] < _FORBIDDEN
    return i[ok].astype(np.int64), j[ok].astype(np.int64)


def matched_detections(truth, cat, max_dist: float = 2.0) -> np.ndarray:
    """Per detection of ``cat`` (``x, y`` columns), whether :func:`match` pairs it with a
    source of ``truth`` (``x, y`` columns) within ``max_dist`` pixels: a real detection."""
    est = np.stack([np.asarray(cat["x"], float), np.asarray(cat["y"], float)], 1)
    _, j = match(
        np.stack([np.asarray(truth["x"], float), np.asarray(truth["y"], float)], 1),
        est,
        max_dist,
    )
    real = np.zeros(len(est), bool)
    real[j] = True
    return real


def detected_snr(image: np.ndarray, x, y, sigma: float, radius: float = 5.0) -> np.ndarray:
    """SNR at detected positions on the (noisy, blended) image ``(H, W)``.

    Eq. 12 on a noisy image is biased up by the noise: E[sum (I+n)^2 / sigma^2] =
    sum I^2 / sigma^2 + N_aperture. We subtract that expectation, so the detected SNR
    estimates the same quantity as the true SNR (which is computed noiseless). Every pixel
    of the aperture inside the image counts, zeros included (:func:`aperture_snr`).
    """
    import warnings

    import torch

    img = np.asarray(image)
    if img.dtype not in (np.float32, np.float64):  # other types, other byte orders
        img = img.astype(np.float64)
    with warnings.catch_warnings():  # a read-only image is only read
        warnings.simplefilter("ignore", UserWarning)
        img = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    x, y = (torch.from_numpy(np.asarray(v, np.float64).ravel()) for v in (x, y))
    b = torch.zeros(len(x), dtype=torch.long)
    # the aperture pixels alone, in float64 over sigma: the values a float64 copy of the
    # whole image over sigma gives (2.5 s for an 8000x8000 image), to the bit
    snr = aperture_snr(img, b, x, y, radius, skip_zeros=False, scale=float(sigma))
    return snr.double().numpy()


APERTURE_CHUNK = 4096  # positions per vectorised step of the aperture sums


def aperture_pixels(x, y, radius: float, shape):
    """The pixels of the apertures of radius ``radius`` about positions ``x, y`` (1-D
    tensors, pixels) in an image of ``shape`` ``(H, W)``: the pixels within ``radius`` of
    each position, on a square centred on its nearest pixel. Returns ``(xx, yy, inside)``,
    each ``(N, 2r+1, 2r+1)``: column and row indices clamped into the image, and whether
    the pixel is in the aperture and inside the image."""
    import torch

    h, w = shape
    r = int(np.ceil(radius)) + 1
    off = torch.arange(-r, r + 1, device=x.device)
    xc, yc = x[:, None, None].double(), y[:, None, None].double()
    xx = torch.round(xc).long() + off[None, None, :]
    yy = torch.round(yc).long() + off[None, :, None]
    inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
    inside &= (xx - xc) ** 2 + (yy - yc) ** 2 <= radius**2
    return xx.clamp(0, w - 1), yy.clamp(0, h - 1), inside


def aperture_snr(image, b, x, y, radius: float = 5.0, *, skip_zeros: bool = True, scale=None):
    """Detection SNR (a float32 tensor) of sources at pixel positions ``(x, y)`` of images
    ``b`` of ``image`` (a ``(B, bands, H, W)`` tensor in noise-sigma units, e.g.
    :func:`probcat.infer.detect.tile_image`): eq. 12 of paper 000 on the noisy image,
    ``sqrt(sum (pixel^2 - 1))`` over the pixels within ``radius`` of the position (centred
    on its nearest pixel) and all bands, the noise's expected share subtracted as in
    :func:`detected_snr`. Pixels outside the image are not counted, nor, with
    ``skip_zeros``, those exactly 0 (the zero padding to whole tiles, masked pixels).
    ``scale``: the image's noise sigma when it is not in those units (its pixels are divided
    by it in float64)."""
    import torch

    out = []
    for a in range(0, len(b), APERTURE_CHUNK):  # vectorised over positions, bounded memory
        sl = slice(a, a + APERTURE_CHUNK)
        xx, yy, inside = aperture_pixels(x[sl], y[sl], radius, image.shape[-2:])
        v = image[b[sl, None, None], :, yy, xx]
        use = inside[..., None] & (v != 0) if skip_zeros else inside[..., None]
        v = v.double()  # (N, 2r+1, 2r+1, bands)
        if scale is not None:
            v = v / scale
        out.append(torch.where(use, v * v - 1.0, 0.0).sum((1, 2, 3)))
    s = torch.cat(out) if out else x.new_zeros(0, dtype=torch.float64)
    return s.clamp_min(0.0).sqrt().float()


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
