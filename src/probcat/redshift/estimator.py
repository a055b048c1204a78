"""Photo-z PDFs for the objects of a catalog, from a multi-band image.

:class:`PhotozEstimator` (from ``probcat.load("photoz_lsst_ugrizy")``) cuts a stamp
around each object (nearest pixel to its centroid, every band, noise-sigma units), runs
the mixture density network and returns the truncated Gaussian mixtures, the catalog
columns and a ``qp`` ensemble. :func:`probcat.photoz` detects and estimates in one call.

The network reads fluxes in units of the noise sigma, as it was trained (at the survey's
depths): an image read at another noise (deeper or shallower than the weights' survey)
gives it the wrong magnitudes, and the PDFs lose their calibration. The pixel noise of a
coadd of resampled visits is lower than the noise of the sums the network's photometry
reads (its correlation), so in bands whose noise reads as correlated the stamps are read
at the pixel sigma times :func:`probcat.background.aperture_noise_factor` (about the
visits' own noise: the resampling kernels pass the low spatial frequencies unchanged),
recorded in the catalog's ``meta["photoz"]["aperture_noise_factor"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.runtime import check_interrupt, inference_entry

__all__ = ["PhotozEstimator", "PhotozResult", "stamps_at"]

_CHUNK = 256  # stamps per forward pass (cache-sized: faster on a CPU than larger ones)


def stamps_at(x_sigma: np.ndarray, x, y, size: int) -> np.ndarray:
    """``(n, bands, size, size)`` stamps of an image ``(bands, H, W)`` centred on the pixel
    nearest each ``(x, y)``, zero outside the image."""
    from probcat.infer.deblend import crop_nearest

    out = np.zeros((len(x), x_sigma.shape[0], size, size), np.float32)
    for k in range(len(x)):
        out[k] = crop_nearest(x_sigma, x[k], y[k], size)
    return out


@dataclass
class PhotozResult:
    """Output of :func:`probcat.photoz` / :meth:`PhotozEstimator.estimate`.

    Attributes:
        catalog: the objects with ``z_mode`` (mode on the 0-3 grid), ``z_median``,
            ``z_mean``, ``z_lo68, z_hi68, z_lo95, z_hi95`` (central intervals) and
            ``has_pz``; objects without a PDF (stars, unless asked) hold NaN.
        ensemble: ``qp.Ensemble(qp.mixmod)`` of the objects with ``has_pz``, in catalog
            order; its ancil ``row`` is the catalog row. The PDF is the mixture truncated at
            z = 0 (:mod:`probcat.redshift.pdf`).
        weights, means, sds: the mixture parameters ``(n_pz, net.n_components)``
            (members x orientations x 5 components).
        detection: the :class:`~probcat.api.DetectionResult` (from :func:`probcat.photoz`).
        wcs: the image's WCS, or None.
    """

    catalog: FullCatalog
    ensemble: object
    weights: np.ndarray
    means: np.ndarray
    sds: np.ndarray
    detection: object = None
    wcs: object = None

    def pdf(self, grid=None) -> np.ndarray:
        """``(n_pz, g)`` truncated PDFs on ``grid`` (default 0-3 in 301 points)."""
        from probcat.redshift.pdf import GRID, truncated_pdf

        return truncated_pdf(self.weights, self.means, self.sds, GRID if grid is None else grid)


def _for_inference(net):
    """``net`` in eval mode with in-place activations (each acts on a fresh convolution
    output) and channels-last convolution weights: same outputs, about twice as fast on a
    CPU for these few-channel stamps."""
    import torch
    from torch import nn

    net.eval()
    for m in net.modules():
        if isinstance(m, nn.LeakyReLU):
            m.inplace = True
    return net.to(memory_format=torch.channels_last)


class PhotozEstimator:
    """The photo-z mixture density network ready for inference.

    Args:
        net: the :class:`~probcat.nets.photoz.PhotozNet`.
        survey: the survey the weights were trained for (its bands, in order).
        manifest: the weights' manifest, if any.
        device, threads: as for :class:`probcat.Detector`.
    """

    def __init__(self, net, survey, manifest=None, *, device=None, threads="auto"):
        from probcat.runtime import place

        net, self.device = place(_for_inference(net), device, threads)
        self.net, self.survey, self.manifest, self.threads = net, survey, manifest, threads

    def __repr__(self) -> str:
        name = (self.manifest or {}).get("weights", "custom weights")
        return f"PhotozEstimator({name}, bands={''.join(self.survey.band_names)!r})"

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.survey.band_names)

    def mixture(self, image, x, y, *, noise_sigma=None):
        """Mixture parameters ``(weights, means, sds)``, each ``(n, net.n_components)``, of
        the objects at pixel positions ``x, y`` of ``image`` (FITS path, ImageData or array
        in electrons with the weights' bands)."""
        from probcat.api import read_input

        xs, _, _, info, _ = read_input(image, self.survey, noise_sigma, whiten=False)
        return self._mixture(correlated_noise_read(xs, info)[0], x, y)

    @inference_entry
    def _mixture(self, x_sigma: np.ndarray, x, y):
        import torch

        from probcat.runtime import thread_limit, threads_for

        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        k = self.net.n_components
        if len(x) == 0:
            return np.zeros((0, k)), np.zeros((0, k)), np.ones((0, k))
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ProbcatValueError("object positions must be finite")
        size = self.net.hparams["size"]
        outs = []
        n_threads = threads_for(self.threads, len(x) * size * size)
        with thread_limit(n_threads), torch.no_grad():
            for s in range(0, len(x), _CHUNK):
                check_interrupt()  # Ctrl-C reaches probcat's inference thread here
                st = stamps_at(x_sigma, x[s : s + _CHUNK], y[s : s + _CHUNK], size)
                st = torch.from_numpy(st).to(self.device, memory_format=torch.channels_last)
                w, m, sd = self.net(st)
                outs.append([t.double().cpu().numpy() for t in (w, m, sd)])
        w, m, sd = (np.concatenate([o[j] for o in outs]) for j in range(3))
        return w / w.sum(1, keepdims=True), m, sd

    def estimate(
        self, image, catalog: FullCatalog, *, noise_sigma=None, galaxies_only: bool = True
    ) -> PhotozResult:
        """Redshift PDFs of ``catalog``'s objects (``x, y``; with ``galaxies_only``, those
        whose ``galaxy`` flag, or ``galaxy_prob >= 0.5``, says galaxy) in ``image``."""
        from probcat.api import read_input

        xs, wcs, _, info, _ = read_input(image, self.survey, noise_sigma, whiten=False)
        return self._estimate(xs, catalog, wcs, galaxies_only, info=info)

    def _estimate(self, xs, catalog, wcs, galaxies_only, detection=None, info=None) -> PhotozResult:
        """``xs``: the image in noise-sigma units as :func:`probcat.api.read_input` gives
        it, with its ``info`` (the noise correlation per band), read at the aperture noise
        where it is correlated (:func:`correlated_noise_read`)."""
        from probcat.redshift.pdf import SUMMARY_COLUMNS, summaries, to_qp

        xs, factors = correlated_noise_read(xs, info or {})

        n = len(catalog)
        if galaxies_only and "galaxy" in catalog.colnames:
            use = np.asarray(catalog["galaxy"], bool)
        elif galaxies_only and "galaxy_prob" in catalog.colnames:
            use = np.asarray(catalog["galaxy_prob"]) >= 0.5
        else:
            use = np.ones(n, bool)
        rows = np.flatnonzero(use)
        w, m, sd = self._mixture(xs, catalog["x"][rows], catalog["y"][rows])
        summ = summaries(w, m, sd)
        cols = {}
        for c in SUMMARY_COLUMNS:
            full = np.full(n, np.nan)
            full[rows] = summ[c]
            cols[c] = full
        cols["has_pz"] = use
        ens = to_qp(w, m, sd, ancil={"row": rows}) if len(rows) else None
        cat = catalog.with_columns(**cols)
        cat.meta["photoz"] = {"weights": (self.manifest or {}).get("weights", "custom weights")}
        if np.any(factors != 1.0):
            cat.meta["photoz"]["aperture_noise_factor"] = [round(float(v), 4) for v in factors]
        return PhotozResult(cat, ens, w, m, sd, detection, wcs)


def correlated_noise_read(xs: np.ndarray, info: dict) -> tuple[np.ndarray, np.ndarray]:
    """``xs`` (noise-sigma units, ``(bands, H, W)``) divided, per band, by the factor
    by which correlated pixel noise (a coadd's) raises the noise of aperture sums
    (:func:`probcat.api._aperture_noise_factors`: 1 where ``info["noise_correlation"]``
    reads white): the image in units of the noise the network's photometry was trained
    against, and the factors. ``xs`` itself is returned where every factor is 1."""
    from probcat.api import _aperture_noise_factors

    factors = _aperture_noise_factors(xs, info)
    if np.all(factors == 1.0):
        return xs, factors
    return (xs / factors[:, None, None]).astype(np.float32), factors
