"""``probcat.detect``: probabilistic detection and star/galaxy classification on any image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.infer.detect import (
    catalog_from_decisions,
    check_image,
    decode,
    map_meta,
    sample_catalogs,
    tile_features,
    tile_image,
)
from probcat.io import ImageData, read_image
from probcat.nets.detection import TileOutput
from probcat.survey import Survey
from probcat.weights import load_detection

__all__ = ["detect", "DetectionResult"]


@dataclass
class DetectionResult:
    """Output of :func:`detect`.

    Attributes:
        catalog: MAP catalog (``x, y, x_sd, y_sd, prob, prob_conditional, galaxy_prob,
            galaxy``; ``ra, dec`` when the image has a WCS).
        tiles: marginal tile outputs ``(1, nty, ntx)``: the per-tile detection probability map.
        samples: posterior catalog samples (empty unless asked).
    """

    catalog: FullCatalog
    tiles: TileOutput
    samples: list[FullCatalog] = field(default_factory=list)
    wcs: object = None

    def probability_map(self) -> np.ndarray:
        """Per-tile detection probability ``(nty, ntx)``."""
        return self.tiles.prob[0].numpy()


def _with_sky(cat: FullCatalog, wcs) -> FullCatalog:
    if wcs is None:
        return cat
    ra, dec = wcs.pixel_to_world_values(cat["x"], cat["y"]) if len(cat) else (np.zeros(0),) * 2
    return cat.with_columns(ra=np.asarray(ra, float), dec=np.asarray(dec, float))


def detect(
    image,
    survey: Survey | None = None,
    *,
    noise_sigma=None,
    weights=None,
    threshold: float = 0.5,
    samples: int = 0,
    seed: int = 0,
) -> DetectionResult:
    """Detect and classify sources in an image of any size.

    Args:
        image: ``(bands, H, W)`` or ``(H, W)`` array in electrons (background-subtracted),
            an :class:`~probcat.io.ImageData`, or a path to a FITS file.
        survey: the image's survey; defaults to the one the weights were trained for.
        noise_sigma: per-band background noise sigma in electrons; defaults to the FITS
            ``NOISE`` keyword, else the survey's.
        weights: path of a weights file; default: the shipped LSST-i encoder.
        threshold: detection probability threshold of the MAP catalog.
        samples: number of posterior catalog samples to draw.

    Example:
        >>> res = probcat.detect("field.fits")                    # doctest: +SKIP
        >>> res.catalog.write("catalog.fits", wcs=res.wcs)        # doctest: +SKIP
    """
    net, trained_on = load_detection(weights)
    survey = survey or trained_on
    wcs = None
    if isinstance(image, (str, Path)):
        image = read_image(image)
    if isinstance(image, ImageData):
        wcs = image.wcs
        missing = [b for b in survey.band_names if b not in image.bands]
        if len(image.bands) == survey.n_bands and not missing:
            order = [image.bands.index(b) for b in survey.band_names]
            data = image.image[order]
            sig = image.noise_sigma[order]
        elif image.image.shape[0] == survey.n_bands == 1:
            data, sig = image.image, image.noise_sigma
        else:
            raise ProbcatValueError(
                f"image bands {''.join(image.bands)} do not match the weights' "
                f"bands {''.join(survey.band_names)}"
            )
        if noise_sigma is None and np.all(np.isfinite(sig)):
            noise_sigma = sig
        image = data
    if noise_sigma is None:
        noise_sigma = survey.noise_sigma
    image = np.asarray(image)
    min_size = net.receptive_field // 2
    check_image(image, net.n_bands, noise_sigma, min_size=min_size)
    if samples < 0:
        raise ProbcatValueError(f"samples must be >= 0, got {samples}")
    shape = image.shape[-2:]
    feats = tile_features(net, image, noise_sigma)
    pixels = tile_image(net, image, noise_sigma)
    dec = decode(net, feats, image=pixels, threshold=threshold)
    cat = catalog_from_decisions(
        dec, 0, dec.marginal, shape, net.tile_size, survey.band_names, map_meta(net, threshold)
    )
    draws = []
    if samples:
        gen = torch.Generator().manual_seed(seed)
        draws = [
            _with_sky(c, wcs)
            for c in sample_catalogs(
                net, feats, shape, samples, image=pixels, generator=gen, bands=survey.band_names
            )
        ]
    return DetectionResult(_with_sky(cat, wcs), dec.marginal, draws, wcs)
