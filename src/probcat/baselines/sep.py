"""SEP (SourceExtractor in Python) detection with the settings of paper 000, Appendix C.

``sep.extract`` with ``thresh=1.5`` in units of the known noise sigma, ``minarea=5``,
``deblend_nthresh=32``, ``deblend_cont=0.005`` and a 3x3 Gaussian filter of FWHM 2 px.
The result is a :class:`~probcat.catalog.FullCatalog` like probcat's own detections, with
``prob = 1`` for every detection so that the same metrics treat both alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError

__all__ = ["SepConfig", "sep_detect", "gaussian_kernel", "riz_coadd"]


def gaussian_kernel(size: int = 3, fwhm: float = 2.0) -> np.ndarray:
    """Normalised ``size x size`` Gaussian kernel of the given FWHM (pixels)."""
    s = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / s**2)
    return g / g.sum()


@dataclass(frozen=True)
class SepConfig:
    """``sep.extract`` arguments (defaults: paper 000 Table 2)."""

    thresh: float = 1.5
    minarea: int = 5
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    filter_size: int = 3
    filter_fwhm: float = 2.0
    subtract_background: bool = False


def sep_detect(
    image: np.ndarray,
    noise_sigma: float | np.ndarray,
    *,
    band: int = 0,
    config: SepConfig = SepConfig(),
    bands: tuple[str, ...] | None = None,
    mask: np.ndarray | None = None,
) -> FullCatalog:
    """Detect sources with SEP on one band of ``image`` ``(bands, H, W)`` or ``(H, W)``.

    Args:
        image: background-subtracted image in electrons.
        noise_sigma: per-pixel noise sigma (scalar or per band), electrons.
        band: which band to detect on.
        config: SEP settings.
        mask: ``(H, W)`` pixels without data (True); NaN and inf pixels are masked too
            (SEP's ``mask``, for the background and the extraction).

    Returns:
        FullCatalog with ``x, y`` (0-indexed pixels), ``flux`` (isophotal, electrons),
        ``prob`` (1.0), ``npix``, SEP's ``flag`` and its isophotal ellipse ``a, b`` (pixels:
        the square roots of the second moments' eigenvalues) and ``theta`` (radians, from
        the x axis).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ProbcatValueError(f"image must be (bands, H, W) or (H, W), got {image.shape}")
    sigma = float(np.atleast_1d(noise_sigma)[band if np.ndim(noise_sigma) else 0])
    if not np.isfinite(sigma) or sigma <= 0:
        raise ProbcatValueError(f"noise sigma must be positive and finite, got {sigma}")
    data = np.ascontiguousarray(image[band], dtype=np.float64)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, bool)
    if bad.any():
        data = np.ascontiguousarray(np.where(bad, 0.0, data))
    else:
        bad = None
    if config.subtract_background:
        data = data - sep.Background(data, mask=bad).back()
    kernel = gaussian_kernel(config.filter_size, config.filter_fwhm)
    objs = sep.extract(
        data,
        config.thresh,
        err=sigma,
        minarea=config.minarea,
        deblend_nthresh=config.deblend_nthresh,
        deblend_cont=config.deblend_cont,
        filter_kernel=kernel,
        mask=bad,
    )
    n = len(objs)
    names = bands or tuple(f"b{k}" for k in range(image.shape[0]))
    return FullCatalog(
        {
            "x": np.asarray(objs["x"], float),
            "y": np.asarray(objs["y"], float),
            "flux": np.asarray(objs["flux"], float),
            "prob": np.ones(n),
            "npix": np.asarray(objs["npix"], np.int64),
            "flag": np.asarray(objs["flag"], np.int64),
            "a": np.asarray(objs["a"], float),
            "b": np.asarray(objs["b"], float),
            "theta": np.asarray(objs["theta"], float),
        },
        image.shape[-2:],
        (names[band],),
        {"detector": "sep", **config.__dict__},
    )


def riz_coadd(image_sigma: np.ndarray, bands) -> np.ndarray:
    """The riz coadd ``(H, W)`` of a multi-band image ``(bands, H, W)`` in noise-sigma units,
    itself of unit noise: SEP's detection image for six-band scenes."""
    k = [list(bands).index(b) for b in "riz"]
    return image_sigma[k].sum(0) / np.sqrt(len(k))
