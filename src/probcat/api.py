"""The public entry points: :func:`load` a model from the registry, :func:`detect` sources
in an image, and the batched, device-aware :class:`Detector`."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError

__all__ = ["load", "detect", "Detector", "DetectionResult"]

# images per forward pass in batched inference: bounded by this many pixels
_BATCH_PIXELS = 4_000_000


@dataclass
class DetectionResult:
    """Output of :func:`detect` / :meth:`Detector.detect`.

    Attributes:
        catalog: MAP catalog (``x, y, x_sd, y_sd, prob, prob_conditional, galaxy_prob,
            galaxy``; ``ra, dec`` in degrees when the image has a celestial WCS).
        tiles: marginal tile outputs ``(1, nty, ntx)`` (:class:`probcat.nets.TileOutput`).
        samples: posterior catalog samples (empty unless asked).
        wcs: the image's WCS, or None.
    """

    catalog: FullCatalog
    tiles: object
    samples: list[FullCatalog] = field(default_factory=list)
    wcs: object = None

    def probability_map(self) -> np.ndarray:
        """Per-tile marginal detection probability ``(nty, ntx)``."""
        return self.tiles.prob[0].cpu().numpy()


@dataclass
class _Batch:
    """Images ready for the network: ``(B, bands, H, W)`` in noise-sigma units, one WCS per
    image, and whether the caller passed a single image."""

    x: np.ndarray
    wcs: list
    single: bool


def _with_sky(cat: FullCatalog, wcs) -> FullCatalog:
    if wcs is None or not getattr(wcs, "has_celestial", False):
        return cat
    if len(cat):
        ra, dec = wcs.pixel_to_world_values(cat["x"], cat["y"])
    else:
        ra, dec = np.zeros(0), np.zeros(0)
    return cat.with_columns(ra=np.asarray(ra, float), dec=np.asarray(dec, float))


class Detector:
    """A detection/classification encoder ready for inference, from :func:`load`.

    Every method takes one image or many: a FITS path, an
    :class:`~probcat.io.ImageData`, an array ``(H, W)`` or ``(bands, H, W)`` in electrons
    (background-subtracted), a stack ``(B, bands, H, W)``, or a list of any of these. Images
    of one size run as one batch; a single image gives a single result, several a list.

    Args:
        net: the network (:class:`~probcat.nets.DetectionNet`).
        survey: the survey the weights were trained for (bands, noise levels).
        manifest: the weights' manifest, if any.
        device: ``"cpu"``, ``"cuda"``...; default: a GPU when present, else the CPU.
        threads: CPU threads, ``"auto"`` (see :mod:`probcat.runtime`) or an integer.

    Example:
        >>> det = probcat.load("detection_lsst_i")              # doctest: +SKIP
        >>> cats = det.catalog([cutout1, cutout2])              # doctest: +SKIP
    """

    def __init__(self, net, survey, manifest=None, *, device=None, threads="auto"):
        from probcat.runtime import choose_device, threads_for

        threads_for(threads, 0)  # validates the setting
        self.device = choose_device(device)
        if next(net.parameters()).device != self.device:
            net = copy.deepcopy(net).to(self.device)  # the registry's copy stays where it is
        self.net, self.survey, self.manifest, self.threads = net, survey, manifest, threads

    def __repr__(self) -> str:
        name = (self.manifest or {}).get("weights", "custom weights")
        bands = "".join(self.survey.band_names)
        return f"Detector({name}, bands={bands!r}, device={self.device.type})"

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.survey.band_names)

    # ---- inputs --------------------------------------------------------------------------
    def _one(self, image, noise_sigma):
        """One image as ``(bands, H, W)`` in sigma units, and its WCS."""
        from probcat.infer.detect import check_image
        from probcat.io import ImageData, read_image

        wcs = None
        sigma = noise_sigma
        if isinstance(image, (str, Path)):
            image = read_image(image)
        if isinstance(image, ImageData):
            wcs = image.wcs
            names = tuple(self.survey.band_names)
            if len(image.bands) == len(names) and set(image.bands) == set(names):
                order = [image.bands.index(b) for b in names]
                data, sig = image.image[order], image.noise_sigma[order]
            elif image.image.shape[0] == len(names) == 1:
                data, sig = image.image, image.noise_sigma
            else:
                raise ProbcatValueError(
                    f"image bands {''.join(image.bands)} do not match the weights' "
                    f"bands {''.join(names)}"
                )
            if sigma is None and np.all(np.isfinite(sig)):
                sigma = sig
            image = data
        if sigma is None:
            sigma = self.survey.noise_sigma
        x = check_image(image, self.net.n_bands, sigma, min_size=self.net.receptive_field // 2)
        return x, wcs

    def _prepare(self, images, noise_sigma) -> _Batch:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            items, single = list(images), False
        elif isinstance(images, (list, tuple)):
            if not images:
                raise ProbcatValueError("no images given")
            items, single = list(images), False
        else:
            items, single = [images], True
        xs, wcs = zip(*(self._one(im, noise_sigma) for im in items))
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise ProbcatValueError(
                f"images of one batch must share one shape, got {sorted(shapes)}: "
                "pass them in separate calls"
            )
        return _Batch(np.stack(xs), list(wcs), single)

    def _threads(self, batch: _Batch) -> int:
        from probcat.runtime import threads_for

        return threads_for(self.threads, int(np.prod(batch.x.shape[:1] + batch.x.shape[2:])))

    def _groups(self, batch: _Batch):
        """Index ranges of images that run as one forward pass."""
        h, w = batch.x.shape[-2:]
        per = max(1, _BATCH_PIXELS // (h * w))
        return [slice(i, i + per) for i in range(0, len(batch.x), per)]

    def _features(self, x: np.ndarray):
        """Features and tile-padded pixels of images ``x`` ``(B, bands, H, W)``, already
        checked and in sigma units (a single image runs in chunks of bounded memory)."""
        from probcat.infer.detect import features_sigma, pixels_sigma

        return features_sigma(self.net, x), pixels_sigma(self.net, x)

    # ---- outputs -------------------------------------------------------------------------
    def catalog(self, images, *, noise_sigma=None, threshold: float = 0.5):
        """MAP catalog(s): detections with marginal probability > ``threshold`` (paper 000
        section 4.2), with posterior mean centroids and their standard deviations (pixels),
        star/galaxy probabilities; ``ra, dec`` from a celestial WCS."""
        return self._run(images, noise_sigma, threshold=threshold)[0]

    def probability_map(self, images, *, noise_sigma=None) -> np.ndarray:
        """Per-tile marginal detection probability ``(nty, ntx)`` (``(B, nty, ntx)`` for
        several images)."""
        return self._run(images, noise_sigma, threshold=0.5)[1]

    def sample(self, images, n: int, *, seed: int = 0, noise_sigma=None):
        """``n`` posterior catalog samples (paper 000 section 4.6) of each image: a list of
        catalogs (a list of such lists for several images). Seeded: the same seed gives the
        same samples, on any device."""
        return self._run(images, noise_sigma, samples=n, seed=seed, want_map=False)[2]

    def detect(
        self, image, *, noise_sigma=None, threshold: float = 0.5, samples: int = 0, seed: int = 0
    ):
        """MAP catalog, probability map and (with ``samples``) posterior samples of one image
        (or a list of results for several)."""
        cats, _, draws, tiles, batch = self._run(
            image, noise_sigma, threshold=threshold, samples=samples, seed=seed, full=True
        )
        cats = [cats] if batch.single else cats
        draws = [draws] if batch.single else draws
        out = [DetectionResult(c, t, d, w) for c, t, d, w in zip(cats, tiles, draws, batch.wcs)]
        return out[0] if batch.single else out

    def _run(
        self, images, noise_sigma, *, threshold=0.5, samples=0, seed=0, want_map=True, full=False
    ):
        import torch

        from probcat.infer.detect import (
            catalog_from_decisions,
            decode,
            map_meta,
            sample_catalogs,
        )
        from probcat.runtime import thread_limit

        if not 0.0 <= threshold < 1.0:
            raise ProbcatValueError(f"threshold must lie in [0, 1), got {threshold}")
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)):
            raise ProbcatValueError(f"samples must be an integer, got {samples!r}")
        if not 0 <= samples <= 100_000:
            raise ProbcatValueError(f"samples must lie in [0, 100000], got {samples}")
        batch = self._prepare(images, noise_sigma)
        shape = batch.x.shape[-2:]
        bands = self.survey.band_names
        cats, maps, draws, tiles = [], [], [], []
        with thread_limit(self._threads(batch)), torch.no_grad():
            for sl in self._groups(batch):
                feats, pixels = self._features(batch.x[sl])
                if want_map:
                    dec = decode(self.net, feats, image=pixels, threshold=threshold)
                    meta = map_meta(self.net, threshold)
                    for k in range(feats.shape[0]):
                        c = catalog_from_decisions(
                            dec, k, dec.marginal, shape, self.net.tile_size, bands, meta
                        )
                        cats.append(_with_sky(c, batch.wcs[sl.start + k]))
                        tiles.append(dec.marginal.at(slice(k, k + 1)))
                    maps.append(dec.marginal.prob.cpu().numpy())
                for k in range(feats.shape[0]) if samples else ():
                    gen = torch.Generator().manual_seed(seed)
                    wcs = batch.wcs[sl.start + k]
                    got = sample_catalogs(
                        self.net,
                        feats[k : k + 1],
                        shape,
                        samples,
                        image=pixels[k : k + 1],
                        generator=gen,
                        bands=bands,
                    )
                    draws.append([_with_sky(c, wcs) for c in got])
                if samples == 0:
                    draws += [[] for _ in range(feats.shape[0])]
        prob = np.concatenate(maps) if maps else None
        if batch.single:
            out = (cats[0] if cats else None, None if prob is None else prob[0], draws[0])
        else:
            out = (cats, prob, draws)
        return (*out, tiles, batch) if full else out


def load(name_or_path=None, *, device=None, threads="auto") -> Detector:
    """A model from the weights registry: a shipped name (default ``"detection_lsst_i"``;
    :func:`probcat.weights.names` lists them) or a weights file (``detection.pt`` of a
    training run). Checks the file's sha256 against its manifest.

    Example:
        >>> det = probcat.load()                                # doctest: +SKIP
        >>> det.catalog("field.fits")                           # doctest: +SKIP
    """
    from probcat.weights import load as load_weights

    w = load_weights(name_or_path)
    if w.kind != "detection":
        raise ProbcatValueError(f"{w.path}: {w.kind!r} weights have no Python entry point yet")
    return Detector(w.model, w.survey, w.manifest, device=device, threads=threads)


def detect(
    image,
    survey=None,
    *,
    noise_sigma=None,
    weights=None,
    threshold: float = 0.5,
    samples: int = 0,
    seed: int = 0,
    device=None,
    threads="auto",
) -> DetectionResult:
    """Detect and classify sources in an image of any size.

    Args:
        image: a FITS path, an :class:`~probcat.io.ImageData` or an array ``(bands, H, W)``
            / ``(H, W)`` in electrons, background-subtracted (a list gives a list).
        survey: the image's survey (band order); default: the weights'.
        noise_sigma: per-band background noise sigma in electrons; default: the FITS
            ``NOISE`` keyword, else the survey's.
        weights: a registered name or weights file; default: the shipped LSST-i encoder.
        threshold: detection probability threshold of the MAP catalog.
        samples: number of posterior catalog samples to draw (seeded by ``seed``).
        device, threads: see :class:`Detector`.

    Example:
        >>> res = probcat.detect("field.fits")                    # doctest: +SKIP
        >>> res.catalog.write("catalog.fits", wcs=res.wcs)        # doctest: +SKIP
    """
    det = load(weights, device=device, threads=threads)
    if survey is not None:
        det.survey = survey
    return det.detect(
        image, noise_sigma=noise_sigma, threshold=threshold, samples=samples, seed=seed
    )
