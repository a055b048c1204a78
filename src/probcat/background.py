"""Images as users have them: pixels in ADU with a gain, a sky left in, a NOISE keyword
that does not describe the pixels.

probcat's networks expect background-subtracted images in electrons with a known noise
sigma per band. :func:`prepare` brings an image there and says what it did (recorded in
the catalog's metadata):

- **Units.** With a gain (e-/ADU: the ``gain`` argument, ``--gain``, or the ``GAIN``
  keyword of an image whose ``BUNIT`` is not electrons), the pixels are converted to
  electrons. A ``NOISE`` keyword is in the pixels' own units (so it needs no conversion); a
  ``noise_sigma`` argument and the survey's default are in electrons.
- **Background** (``"auto"``, the default): a smooth sky is estimated per band with
  ``sep.Background`` (64-px boxes, 3x3 median filter, SExtractor's estimator) and subtracted
  when the image is not already background-subtracted: when the sky's median over the image
  is more than :data:`SKY_LEVEL` noise sigma from zero, or when it varies across the image
  by more than :data:`SKY_RANGE` sigma (a gradient). An image that is already subtracted is
  left exactly as it was. ``"none"`` skips all this.
- **Noise.** The pixel noise is measured (the clipped rms of the sky); a NOISE value (or the
  survey's default, when there is none) that differs from it by more than a factor of
  :data:`NOISE_FACTOR` is reported as a warning with the measured value.

Images smaller than 32 x 32 px are too small to tell sky from source: they are left alone.
"""

from __future__ import annotations

import warnings

import numpy as np

from probcat.errors import ProbcatValueError

__all__ = [
    "prepare",
    "sky",
    "gain_array",
    "check_mode",
    "BACKGROUND_MODES",
    "SKY_LEVEL",
    "SKY_RANGE",
    "NOISE_FACTOR",
]

BACKGROUND_MODES = ("auto", "none")
SKY_LEVEL = 0.3  # |median sky| above this many noise sigma: not background-subtracted
SKY_RANGE = 1.0  # the sky's 5th-95th percentile range above this many sigma: a gradient
NOISE_FACTOR = 1.5
MIN_SIZE = 32
BOX = 64


def sky(band: np.ndarray) -> tuple[np.ndarray, float]:
    """The smooth sky of one band ``(H, W)`` (``sep.Background``, boxes of 64 px or half the
    image, 3x3 median filter) and the noise of its pixels about it: 1.4826 times their
    median absolute deviation (robust to sources; 0 for a constant image, where sep would
    report 1), on at most about a million pixels."""
    import sep

    box = int(min(BOX, max(16, min(band.shape) // 2)))
    data = np.ascontiguousarray(band, dtype=np.float32)
    back = sep.Background(data, bw=box, bh=box, fw=3, fh=3).back()
    step = max(1, int(np.sqrt(data.size / 1e6)))
    resid = (data - back)[::step, ::step].astype(np.float64)
    rms = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    return back, rms


def check_mode(background) -> None:
    """A one-line error unless ``background`` is one of :data:`BACKGROUND_MODES`."""
    if background not in BACKGROUND_MODES:
        raise ProbcatValueError(
            f"background must be one of {', '.join(BACKGROUND_MODES)}, got {background!r}"
        )


def gain_array(gain, n: int) -> np.ndarray:
    """A gain (e-/ADU) per band from a number or a sequence; a one-line error otherwise."""
    if isinstance(gain, (bool, np.bool_, str, bytes)):
        raise ProbcatValueError(f"gain must be a positive finite number, got {gain!r}")
    try:
        arr = np.broadcast_to(np.asarray(gain, dtype=np.float64), (n,)).copy()
    except (TypeError, ValueError):
        raise ProbcatValueError(f"gain must be a number or one per band, got {gain!r}") from None
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ProbcatValueError(f"gain must be a positive finite number, got {gain!r}")
    return arr


def prepare(
    x: np.ndarray, sigma: np.ndarray, *, background: str = "auto", sigma_source: str = "NOISE"
) -> tuple[np.ndarray, dict]:
    """``(x, info)``: the checked image ``x`` ``(bands, H, W)`` in units of the noise sigma
    ``sigma`` (per band, electrons), background subtracted as the module says, and what
    was done: ``background`` = ``"subtracted"``, ``"kept"`` (already subtracted), ``"none"``
    (not asked) or ``"too small"``; the subtracted ``sky_median`` and the measured
    ``pixel_noise`` per band, in electrons. ``sigma_source`` names where ``sigma`` came from,
    for the warning. ``x`` itself is never modified."""
    check_mode(background)
    info: dict = {"background": background}
    if background == "none":
        return x, info
    if min(x.shape[1:]) < MIN_SIZE:
        info["background"] = "too small"
        return x, info
    out, medians, noise = None, [], []
    for k in range(x.shape[0]):
        back, rms = sky(x[k])
        med = float(np.median(back))
        spread = float(np.subtract(*np.percentile(back, [95, 5])))
        if abs(med) > SKY_LEVEL or spread > SKY_RANGE:
            if out is None:
                out = np.array(x, dtype=np.float32, copy=True)
            out[k] -= back.astype(np.float32)  # rms is already about this new zero
        else:
            med = 0.0
        medians.append(med * float(sigma[k]))
        noise.append(rms * float(sigma[k]))
    info.update(
        background="kept" if out is None else "subtracted",
        sky_median=[round(v, 6) for v in medians],
        pixel_noise=[round(v, 6) for v in noise],
    )
    ratio = np.asarray(sigma, float) / np.maximum(np.asarray(noise), 1e-30)
    bad = np.flatnonzero((ratio > NOISE_FACTOR) | (ratio < 1 / NOISE_FACTOR))
    if len(bad):
        k = int(bad[0])
        warnings.warn(
            f"{sigma_source} {float(sigma[k]):.4g} differs from the measured pixel noise "
            f"{noise[k]:.4g} (band {k}) by more than a factor {NOISE_FACTOR}: detection "
            "probabilities assume the former (check NOISE, noise_sigma or the gain)",
            stacklevel=3,
        )
    return (x if out is None else out), info
