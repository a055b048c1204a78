"""The noise of a coadd: white noise of each visit resampled onto the coadd's pixel grid
and averaged, which correlates neighbouring pixels.

A survey coadd is made by warping every visit onto a common grid: each output pixel
interpolates the visit's pixels around its position, at a sub-pixel offset that differs
from visit to visit. Resampling leaves the signal as it was but mixes the visit's noise of
neighbouring pixels, so the coadd's noise is correlated over a pixel or two and its pixel
sigma is lower than its white-noise equivalent (the Rubin and HSC pipelines and SWarp warp
with a Lanczos-3 kernel by default). A detector trained on white noise of the same pixel
sigma finds about twice its false detections in such noise (``benchmarks/
correlated_noise.py``). :func:`coadd_noise` draws it, at a given pixel sigma, for training
and tests; the kernels are written here (:func:`shift_weights`), separable and exact for
a shift of the whole visit.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d

from probcat.errors import ProbcatValueError

__all__ = ["RESAMPLING_KERNELS", "shift_weights", "resampled", "coadd_noise"]

RESAMPLING_KERNELS = ("lanczos3", "bilinear")


def shift_weights(d: float, kernel: str = "lanczos3") -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, weights)`` of the 1-D interpolation of a grid at ``d`` pixels
    (``|d| <= 0.5``) from its own pixels: ``out[i] = sum_k weights[k] * in[i + offsets[k]]``.
    ``"lanczos3"``: ``sinc(t) sinc(t / 3)`` at ``t = offset - d`` over six pixels, weights
    normalised to sum to 1 (flux-conserving, as warping codes do); ``"bilinear"``: the two
    nearest pixels."""
    if kernel not in RESAMPLING_KERNELS:
        raise ProbcatValueError(f"kernel must be one of {RESAMPLING_KERNELS}, got {kernel!r}")
    if not abs(d) <= 0.5:
        raise ProbcatValueError(f"shift must lie in [-0.5, 0.5] px, got {d}")
    if kernel == "bilinear":
        step = 1 if d >= 0 else -1
        return np.array([0, step]), np.array([1.0 - abs(d), abs(d)])
    offsets = np.arange(-2, 4) if d >= 0 else np.arange(-3, 3)
    t = offsets - d
    w = np.sinc(t) * np.sinc(t / 3.0)
    return offsets, w / w.sum()


def resampled(image: np.ndarray, dy: float, dx: float, kernel: str = "lanczos3") -> np.ndarray:
    """``image`` (2-D) interpolated at ``(y + dy, x + dx)`` by the separable ``kernel``
    (periodic at the edges: for stationary noise the wrap is invisible)."""
    out = np.asarray(image, np.float64)
    for axis, d in ((0, dy), (1, dx)):
        offsets, w = shift_weights(d, kernel)
        # correlate1d centres a kernel of odd length n at index n // 2: offset 0 goes there
        half = int(np.abs(offsets).max())
        full = np.zeros(2 * half + 1)
        full[half + offsets] = w
        out = correlate1d(out, full, axis=axis, mode="wrap")
    return out


def coadd_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    sigma: float,
    visits: int,
    kernel: str = "lanczos3",
) -> np.ndarray:
    """The noise ``(H, W)`` float32 of a coadd of ``visits`` visits: each visit's white noise
    resampled by ``kernel`` at its own offset (uniform in a pixel, both axes), averaged, and
    scaled so that the pixel sigma is ``sigma`` in expectation (the variance each visit keeps
    is exact: the product over the two axes of the sum of the squared weights)."""
    if visits < 1:
        raise ProbcatValueError(f"visits must be >= 1, got {visits}")
    total = np.zeros(shape)
    var = 0.0
    for _ in range(visits):
        dy, dx = rng.uniform(-0.5, 0.5, 2)
        total += resampled(rng.standard_normal(shape), dy, dx, kernel)
        var += float(np.sum(shift_weights(dy, kernel)[1] ** 2)) * float(
            np.sum(shift_weights(dx, kernel)[1] ** 2)
        )
    return (total * (sigma / np.sqrt(var))).astype(np.float32)
