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
recorded in the catalog's ``meta["photoz"]["aperture_noise_factor"]``. An image deeper
than the weights' deepest training depth gets a warning, or with ``match_depth`` is read
at that depth (:meth:`PhotozEstimator.network_input`, :func:`at_depth`).

The PDFs are calibrated for galaxies like the training population. Given objects of the
image with known (spectroscopic) redshifts, :meth:`PhotozEstimator.fit_widths` (and
``known_redshifts`` of :func:`probcat.photoz`) fits one factor on every mixture width to
them, which ``width_scale`` then applies: the remedy for galaxies whose colours are unlike
the training galaxies' (``docs/photoz.md``), for the calibration, not the accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError, warn_user
from probcat.runtime import check_interrupt, inference_entry

__all__ = [
    "PhotozEstimator",
    "PhotozResult",
    "at_depth",
    "correlated_noise_read",
    "known_redshifts",
    "read_known",
    "stamps_at",
    "table_positions",
]

_CHUNK = 256  # stamps per forward pass (cache-sized: faster on a CPU than larger ones)
# a progress bar over the PDFs (when asked for) from this many objects: about 2 s here
PROGRESS_MIN_OBJECTS = 2048
# noise over the deepest training depth's below which photo-z warns: on white noise of
# 0.87 times the 10-year sigma the PDFs' 68% intervals held 0.61 of the true redshifts
DEEPER_WARN = 0.9
MIN_KNOWN = 10  # objects of known redshift a width fit needs at the least
# the bands' PSF widths over the weights' (measured per band): a largest over smallest
# beyond this warns (on 400-px fields: 1.07 at most under LSST's seeing and 1.09 under
# 1.25 times it in every band; 1.6 with u, g at 1.3 times and z, y at 0.8 times)
BAND_SEEING_SPREAD = 1.2
_MIN_COMPACT = 4  # compact sources a band's seeing needs at the least
_BAND_PEAK = 5.0  # and their peak in that band at least (noise sigma)
# shipped photo-z weights -> the weights trained further with bands masked
# (``configs/photoz_lsst_ugrizy_masked.yaml``) that read the objects near pixels without
# data in some band: read by the former, a masked band is a dropout
MASKED_WEIGHTS = {"photoz_lsst_ugrizy": "photoz_lsst_ugrizy_masked"}
# they read an object when a pixel without data lies within this many px of its stamp's
# centre: on validation stamps with bands masked (discs, strips, half-planes) their mean NLL
# of the true z beat the shipped weights' with the nearest masked pixel 0-2 / 2-4 / 4-6 px
# from the centre (-0.63 / -0.97 / -1.26 against 1.99 / -0.51 / -1.20), tied at 6-8 px
# (-1.23 / -1.24) and lost beyond (8-13 px: -1.28 against -1.32; unmasked: -1.27 / -1.32)
MASKED_RADIUS = 7.0
# shipped photo-z weights -> the weights trained further under per-band seeing
# (``configs/photoz_lsst_ugrizy_seeing.yaml``) that read an image whose bands' measured
# seeing differs by more than BAND_SEEING_SPREAD (benchmarks/depth.py: 68% coverage 0.681
# against 0.538 with each band its own factor, 0.632 against 0.589 with u, g sharp and z, y
# wide, 0.619 against 0.618 the other way; 0.686 against 0.697 at LSST's seeing)
SEEING_WEIGHTS = {"photoz_lsst_ugrizy": "photoz_lsst_ugrizy_seeing"}


def near_masked(masked, x, y, radius: float = MASKED_RADIUS) -> np.ndarray:
    """Per object at ``x, y``, whether a pixel of ``masked`` (``(H, W)``, pixels without
    data in some band; None: none is) lies within ``radius`` px of the pixel nearest it (the
    centre of its stamp, :func:`stamps_at`). Pixels off the image do not count: the
    networks were trained with them zero."""
    x, y = np.atleast_1d(np.asarray(x, np.float64)), np.atleast_1d(np.asarray(y, np.float64))
    if masked is None or len(x) == 0:
        return np.zeros(len(x), bool)
    r = int(np.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = dx**2 + dy**2 <= radius**2
    dy, dx = dy[disc], dx[disc]
    pad = np.pad(np.asarray(masked, bool), r)  # off the image: not masked
    h, w = pad.shape
    cx = np.clip(np.floor(x + 0.5).astype(np.int64) + r, 0, w - 1)
    cy = np.clip(np.floor(y + 0.5).astype(np.int64) + r, 0, h - 1)
    return pad[np.clip(cy[:, None] + dy, 0, h - 1), np.clip(cx[:, None] + dx, 0, w - 1)].any(1)


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


def _column_names(data) -> set:
    """The column names of an astropy Table (whose ``in`` looks at rows), a dict or a
    DataFrame."""
    names = getattr(data, "colnames", None)
    return set(names if names is not None else data.keys())


def table_positions(data, wcs) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions of a table's rows: its ``x, y`` columns, else ``ra, dec`` (degrees)
    through the image's celestial ``wcs``."""
    names = _column_names(data)
    if "x" in names and "y" in names:
        return np.asarray(data["x"], np.float64), np.asarray(data["y"], np.float64)
    if "ra" in names and "dec" in names:
        if wcs is None or not getattr(wcs, "has_celestial", False):
            raise ProbcatValueError("ra/dec given but the image has no celestial WCS")
        x, y = wcs.world_to_pixel_values(np.asarray(data["ra"]), np.asarray(data["dec"]))
        return np.asarray(x, np.float64), np.asarray(y, np.float64)
    raise ProbcatValueError("the table needs columns x, y (pixels) or ra, dec (degrees)")


def read_known(known):
    """A table of objects of known redshift (a FITS or Parquet path, an astropy Table or a
    dict of columns), checked: ``x, y`` or ``ra, dec`` columns, and ``redshift`` (or ``z``)
    finite and >= 0. Returns the table and the name of its redshift column."""

    if isinstance(known, (str, Path)):
        from probcat.catalog import read_table
        from probcat.errors import ProbcatFileError

        if not Path(known).is_file():
            raise ProbcatFileError(f"{known}: no such table of known redshifts")
        known = read_table(known)
    names = _column_names(known)
    col = "redshift" if "redshift" in names else "z" if "z" in names else None
    if col is None:
        raise ProbcatValueError("the table of known redshifts needs a column redshift (or z)")
    if not ({"x", "y"} <= names or {"ra", "dec"} <= names):
        raise ProbcatValueError("the table of known redshifts needs x, y or ra, dec columns")
    z = np.asarray(known[col], np.float64)
    if not np.all(np.isfinite(z) & (z >= 0)):
        raise ProbcatValueError(f"known redshifts must be finite and >= 0 (column {col})")
    return known, col


def known_redshifts(known, wcs, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x, y, z`` of the objects of known redshift in ``known`` (:func:`read_known`) that
    lie on an image of ``shape`` ``(H, W)``; those off it are left out. Refuses fewer than
    :data:`MIN_KNOWN` on the image."""
    known, col = read_known(known)
    x, y = table_positions(known, wcs)
    z = np.asarray(known[col], np.float64)
    h, w = shape
    on = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < w - 0.5)
    on &= (y >= -0.5) & (y < h - 0.5)
    if on.sum() < MIN_KNOWN:
        raise ProbcatValueError(
            f"{int(on.sum())} of the {len(z)} objects of known redshift lie on the image: a "
            f"width fit needs at least {MIN_KNOWN}"
        )
    return x[on], y[on], z[on]


class PhotozEstimator:
    """The photo-z mixture density network ready for inference.

    Args:
        net: the :class:`~probcat.nets.photoz.PhotozNet`.
        survey: the survey the weights were trained for (its bands, in order).
        manifest: the weights' manifest, if any.
        device, threads: as for :class:`probcat.Detector`.
    """

    def __init__(self, net, survey, manifest=None, *, device=None, threads="auto"):
        from probcat.nets.backbone import for_inference
        from probcat.runtime import place

        net, self.device = place(for_inference(net), device, threads)
        self.net, self.survey, self.manifest, self.threads = net, survey, manifest, threads
        self._masked = self._seeing = None

    @cached_property
    def masked_weights(self) -> str | None:
        """The registered weights that read this estimator's objects with a pixel without
        data within :data:`MASKED_RADIUS` px (:data:`MASKED_WEIGHTS`: trained with bands
        masked, where these weights read a masked band as no light), or None: these weights
        read them."""
        from probcat.weights import companion

        return companion(self.manifest, MASKED_WEIGHTS)

    def _read_by_masked_net(self, masked, x, y) -> np.ndarray:
        """Per object at ``x, y``, whether :meth:`masked_net` reads it: there are such weights
        and a pixel of ``masked`` (``(H, W)``, or None) lies near it (:func:`near_masked`)."""
        return near_masked(masked if self.masked_weights is not None else None, x, y)

    def masked_net(self):
        """The network of :attr:`masked_weights` (loaded at first use, on this estimator's
        device), or None."""
        if self.masked_weights is not None and self._masked is None:
            self._masked = self._companion_net(self.masked_weights)
        return self._masked

    @cached_property
    def seeing_weights(self) -> str | None:
        """The registered weights that read, in :meth:`estimate`, an image whose bands'
        measured seeing differs by more than :data:`BAND_SEEING_SPREAD`
        (:data:`SEEING_WEIGHTS`: trained under per-band seeing), or None."""
        from probcat.weights import companion

        return companion(self.manifest, SEEING_WEIGHTS)

    def seeing_net(self):
        """The network of :attr:`seeing_weights` (loaded at first use), or None."""
        if self.seeing_weights is not None and self._seeing is None:
            self._seeing = self._companion_net(self.seeing_weights)
        return self._seeing

    def _companion_net(self, name: str):
        """The network of the registered weights ``name``, checked to have this one's
        architecture, on this estimator's device and threads."""
        from probcat.nets.backbone import for_inference
        from probcat.runtime import place
        from probcat.weights import load

        net = load(name, kind="photoz").model
        size = self.net.hparams["size"]
        if net.n_components != self.net.n_components or net.hparams["size"] != size:
            raise ProbcatValueError(f"{name}: not the architecture of {self!r}")
        return place(for_inference(net), self.device, self.threads)[0]

    def seeing_choice(self, xs: np.ndarray, catalog, route: bool = True) -> tuple:
        """``(ratios, net)``: the bands' measured seeing (:meth:`band_seeing` on
        ``catalog``'s objects in ``xs``) and the network that reads the image's objects
        away from masks: :meth:`seeing_net` where ``route``, there are such weights and the
        ratios differ by more than :data:`BAND_SEEING_SPREAD`; else None (this one's)."""
        ratios = self.band_seeing(xs, catalog)
        wide = route and self.seeing_weights is not None and _seeing_differs(ratios)
        return ratios, self.seeing_net() if wide else None

    def __repr__(self) -> str:
        name = (self.manifest or {}).get("weights", "custom weights")
        return f"PhotozEstimator({name}, bands={''.join(self.survey.band_names)!r})"

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.survey.band_names)

    def mixture(self, image, x, y, *, noise_sigma=None, zeropoint=None, match_depth=False):
        """Mixture parameters ``(weights, means, sds)``, each ``(n, net.n_components)``, of
        the objects at pixel positions ``x, y`` of ``image`` (FITS path, ImageData or array
        in electrons with the weights' bands). ``zeropoint``: the AB magnitude of a flux of
        1 in the image's units, per band or one for all (default: the image's, as
        :func:`probcat.api.read_input` finds it), by which the image's depth is checked
        (:meth:`network_input`); ``match_depth``: a deeper image read at the training
        depth (:meth:`network_input`)."""
        xs, _, _, bands_masked = self.read(image, noise_sigma, zeropoint, match_depth)
        return self._mixture(xs, x, y, None if bands_masked is None else bands_masked.any(0))

    def read(self, image, noise_sigma=None, zeropoint=None, match_depth=False):
        """``image`` as the network reads it (:func:`probcat.api.read_input`, then
        :meth:`network_input`): ``(xs, wcs, meta, bands_masked)``, ``meta`` what the catalog
        records of it, ``bands_masked`` each band's pixels without data ``(bands, H, W)`` or
        None. An image (FITS or :class:`~probcat.io.ImageData` with named bands) without
        one or two of the weights' bands has them read as bands without data, where the
        weights have :attr:`masked_weights` (:func:`probcat.api.absent_bands`; a
        warning)."""
        from probcat.api import read_photoz_input

        got = read_photoz_input(image, self, noise_sigma, whiten=False, zeropoint=zeropoint)
        _, xs, wcs, sigma, info, bands_masked, masked = got
        xs, meta = self.network_input(xs, sigma, info, match_depth, masked)
        return xs, wcs, meta, bands_masked

    def training_depths(self) -> tuple[float, ...]:
        """The depths (years) the weights were trained at: the manifest's ``data.years``,
        else the survey's own depth."""
        years = ((self.manifest or {}).get("config") or {}).get("data", {}).get("years")
        return tuple(float(y) for y in years) if years else (float(self.survey.depth_years),)

    def noise_over_training(self, sigma, info: dict) -> np.ndarray:
        """Per band, the image's noise ``sigma`` (its pixel units, as
        :func:`probcat.api.read_input` gives it) as a flux, over the noise of the deepest
        depth the weights were trained at, through the image's zeropoint
        (``info["zeropoint"]``), else its pixel unit (electrons: the survey's zeropoint
        and exposure; nJy ...): below 1, a deeper image. NaN where the pixels cannot be
        calibrated (ADU)."""
        from probcat.api import noise_over_survey

        deepest = np.sqrt(self.survey.depth_years / max(self.training_depths()))
        return noise_over_survey(self.survey, sigma, info) / deepest

    def network_input(
        self, xs: np.ndarray, sigma, info: dict, match_depth: bool = False, masked=None
    ) -> tuple[np.ndarray, dict]:
        """``xs`` (noise-sigma units, from :func:`probcat.api.read_input` with its
        ``sigma``, ``info`` and ``masked``) as the network reads it: divided by each band's
        aperture noise factor where the noise is correlated (:func:`correlated_noise_read`);
        and what the catalog's ``meta["photoz"]`` records: those factors, and the noise
        over the deepest training depth's (:meth:`noise_over_training`, of the noise the
        stamps are read at). Warns when that is below :data:`DEEPER_WARN` in a band: a
        deeper image than the weights were trained at, whose PDFs come out too narrow.
        ``match_depth``: instead, read such bands at the deepest training depth, with white
        noise added (:func:`at_depth`; ``meta["photoz"]["depth_matched"]``): calibrated
        PDFs, at that depth's precision."""
        xs, factors = correlated_noise_read(xs, info)
        meta: dict = {}
        if info.get("absent_bands"):  # bands the image lacks, read as without data
            meta["absent_bands"] = info["absent_bands"]
        if np.any(factors != 1.0):
            meta["aperture_noise_factor"] = [round(float(v), 4) for v in factors]
        ratio = self.noise_over_training(np.asarray(sigma, float) * factors, info)
        if np.isfinite(ratio).any():
            meta["noise_over_training"] = [
                round(float(v), 4) if np.isfinite(v) else None for v in ratio
            ]
        deeper = ratio < 1.0 - 1e-6  # not the training depth itself, to rounding
        if match_depth and np.any(deeper):
            xs = at_depth(xs, np.where(deeper, ratio, 1.0), masked)
            meta["depth_matched"] = True
            return xs, meta
        deep = [b for b, v in zip(self.bands, ratio) if v < DEEPER_WARN]
        if deep:
            years = self.training_depths()
            span = f"{min(years):g}-{max(years):g}" if len(years) > 1 else f"{years[0]:g}"
            how = (
                f"zeropoint from {info['zeropoint_source']}"
                if info.get("zeropoint_source")
                else "pixels read as electrons at the survey's zeropoint and exposure: state "
                "the image's zeropoint if not"
            )
            warn_user(
                f"photo-z: the image is deeper than the weights were trained at ({span} "
                f"years) in band(s) {''.join(deep)} (noise {np.nanmin(ratio):.2f} times the "
                f"deepest's as a flux; {how}): the network reads fluxes in units of the "
                "noise, so its galaxies look brighter than they are and their PDFs come out "
                "too narrow; match_depth (--match-depth) reads it at the training depth "
                "(docs/photoz.md, Depth and coadds)",
            )
        return xs, meta

    def fit_widths(
        self, image, known, *, noise_sigma=None, zeropoint=None, match_depth: bool = False
    ) -> float:
        """The factor on every mixture width that maximises the likelihood of the known
        redshifts of objects of ``image`` (``known``: see :func:`known_redshifts`), to pass
        as ``width_scale`` to
        :meth:`estimate` or :func:`probcat.photoz` for this image or others like it.
        Image options as for :meth:`mixture`. The factor is one of
        :data:`probcat.nets.photoz.SD_SCALES` (0.5-3); at either end, a warning."""
        xs, wcs, _, bands_masked = self.read(image, noise_sigma, zeropoint, match_depth)
        masked = None if bands_masked is None else bands_masked.any(0)
        return self._fit_widths(xs, wcs, known, masked)[0]

    def _fit_widths(self, xs: np.ndarray, wcs, known, masked=None) -> tuple[float, int]:
        """:meth:`fit_widths` on the image as the network reads it (``masked``: its pixels
        without data, :meth:`_mixture`); also the number of objects fitted. These weights'
        widths: a width factor keeps :meth:`estimate` on them (no :attr:`seeing_weights`)."""
        from probcat.nets.photoz import SD_SCALES, fit_sd_scale

        x, y, z = known_redshifts(known, wcs, xs.shape[1:])
        k = fit_sd_scale(*self._mixture(xs, x, y, masked), z)
        if k in (SD_SCALES[0], SD_SCALES[-1]):
            warn_user(
                f"photo-z: the known redshifts want the PDFs' widths times {k:.2f} or "
                "further, the end of the range fitted (0.5-3): the PDFs are far from "
                "calibrated for these galaxies (docs/photoz.md, galaxy colours)",
            )
        return k, len(z)

    def band_seeing(self, xs: np.ndarray, catalog) -> list:
        """Per band, the image's PSF width relative to its i band's (the first band's
        without i) over the same ratio of the weights' survey: 1 where the bands' seeing
        differs as the weights'. Measured on the same sources in every band: of
        ``catalog``'s objects fit to measure seeing on in the i plane of ``xs``
        (noise-sigma units; :func:`probcat.measure.seeing_sources`, none a mask touches),
        the most compact third there (stars where there are some), the median of their
        adaptive-moments sizes in the band over those in i, over those whose peak in the
        band exceeds 5 noise sigma. None where too few (the whole list without
        :data:`probcat.measure.SEEING_MIN_SOURCES` sources)."""
        from probcat.measure import (
            SEEING_MIN_SOURCES,
            _psf_moments_sigma,
            peaks_at,
            seeing_band,
            seeing_sources,
            source_sizes,
            unmasked_positions,
        )

        ref = seeing_band(self.bands)
        out = [None] * len(self.bands)
        x, y = unmasked_positions(catalog)
        idx = seeing_sources(xs[ref], x, y)
        t_ref, ok = source_sizes(xs[ref], x[idx], y[idx])
        if ok.sum() < SEEING_MIN_SOURCES:
            return out
        idx, t_ref = idx[ok], t_ref[ok]
        compact = t_ref <= np.quantile(t_ref, 1 / 3)
        idx, t_ref = idx[compact], t_ref[compact]
        psf_ref = _psf_moments_sigma(self.survey.bands[ref])
        for k, band in enumerate(self.survey.bands):
            t, ok = source_sizes(xs[k], x[idx], y[idx])
            ok &= peaks_at(xs[k], x[idx], y[idx]) > _BAND_PEAK  # fainter: its size is noise
            if ok.sum() >= _MIN_COMPACT:
                rel = np.median(t[ok] / t_ref[ok]) / (_psf_moments_sigma(band) / psf_ref)
                out[k] = round(float(rel), 3)
        return out

    @inference_entry
    def _mixture(self, x_sigma: np.ndarray, x, y, masked=None, main=None, progress=False):
        """Mixtures of the objects at ``x, y`` of the image ``x_sigma`` as the network
        reads it; ``masked``: its ``(H, W)`` pixels without data in some band (None: none),
        whose near objects (:func:`near_masked`) the :meth:`masked_net` reads when there is
        one; ``main``: the network that reads the others (None: this estimator's);
        ``progress``: a progress bar over the objects when there are
        :data:`PROGRESS_MIN_OBJECTS` or more."""
        import torch
        from tqdm.auto import tqdm

        from probcat.runtime import full_float32, thread_limit, threads_for

        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        k = self.net.n_components
        if len(x) == 0:
            return np.zeros((0, k)), np.zeros((0, k)), np.ones((0, k))
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ProbcatValueError("object positions must be finite")
        size = self.net.hparams["size"]
        hit = self._read_by_masked_net(masked, x, y)
        other = self.masked_net() if hit.any() else None  # loaded only when needed
        out = [np.zeros((len(x), k)) for _ in range(3)]
        n_threads = threads_for(self.threads, len(x) * size * size)
        show = progress and len(x) >= PROGRESS_MIN_OBJECTS
        bar = tqdm(total=len(x), desc="photo-z PDFs", unit="obj", disable=not show)
        with thread_limit(n_threads), full_float32(), torch.no_grad(), bar:
            for net, rows in ((self.net if main is None else main, np.flatnonzero(~hit)),
                              (other, np.flatnonzero(hit))):  # fmt: skip
                for s in range(0, len(rows), _CHUNK):
                    check_interrupt()  # Ctrl-C reaches probcat's inference thread here
                    r = rows[s : s + _CHUNK]
                    st = stamps_at(x_sigma, x[r], y[r], size)
                    st = torch.from_numpy(st).to(self.device, memory_format=torch.channels_last)
                    for j, t in enumerate(net(st)):
                        out[j][r] = t.double().cpu().numpy()
                    bar.update(len(r))
        w, m, sd = out
        return w / w.sum(1, keepdims=True), m, sd

    def estimate(
        self,
        image,
        catalog: FullCatalog,
        *,
        noise_sigma=None,
        galaxies_only: bool = True,
        zeropoint=None,
        match_depth: bool = False,
        width_scale: float = 1.0,
        progress: bool = False,
    ) -> PhotozResult:
        """Redshift PDFs of ``catalog``'s objects (``x, y``; with ``galaxies_only``, those
        whose ``galaxy`` flag, or ``galaxy_prob >= 0.5``, says galaxy) in ``image``;
        ``zeropoint`` and ``match_depth`` as for :meth:`mixture`; ``width_scale``: a factor
        on every mixture width (:meth:`fit_widths`), recorded in ``meta["photoz"]``; without
        one (``width_scale`` 1), an image whose bands' measured seeing differs by more than
        :data:`BAND_SEEING_SPREAD` is read by :attr:`seeing_weights` where there are such
        (``meta["photoz"]["seeing_weights"]``; objects near masks by :meth:`masked_net`). An
        image (FITS or :class:`~probcat.io.ImageData` with named bands) without one or two of the
        weights' bands has them read as bands without data, where the weights have
        :attr:`masked_weights` (:func:`probcat.api.absent_bands`; a warning). ``progress``:
        a progress bar over the PDFs of many objects."""
        xs, wcs, meta, bands_masked = self.read(image, noise_sigma, zeropoint, match_depth)
        return self._estimate(
            xs, catalog, wcs, galaxies_only, meta=meta, width_scale=width_scale,
            band_mask=bands_masked, seeing_route=width_scale == 1.0, progress=progress,
        )  # fmt: skip

    def _estimate(
        self,
        xs,
        catalog,
        wcs,
        galaxies_only,
        detection=None,
        meta=None,
        width_scale=1.0,
        band_mask=None,
        seeing_route=True,
        progress=False,
    ) -> PhotozResult:
        """``xs``: the image as the network reads it, and ``meta`` what
        :meth:`network_input` recorded of it; ``band_mask``: each band's pixels without
        data ``(bands, H, W)``, or None (:func:`masked_bands_column`); ``seeing_route``:
        an image whose bands' seeing differs is read by :attr:`seeing_weights`
        (:meth:`seeing_choice`; not where widths were fitted to these weights)."""
        from probcat.redshift.pdf import SUMMARY_COLUMNS, summaries, to_qp

        width_scale = check_width_scale(width_scale)
        meta = dict(meta or {})
        if width_scale != 1.0:
            meta["width_scale"] = width_scale
        seeing, main = self.seeing_choice(xs, catalog, seeing_route)
        if any(v is not None for v in seeing):
            meta["band_seeing_ratio"] = seeing
        if main is not None:
            meta["seeing_weights"] = self.seeing_weights
        data = ((self.manifest or {}).get("config") or {}).get("data") or {}
        _warn_band_seeing(
            seeing, self.bands, bool(data.get("seeing_patterns")),
            self.seeing_weights if main is not None else None,
        )  # fmt: skip

        n = len(catalog)
        if galaxies_only and "galaxy" in catalog.colnames:
            use = np.asarray(catalog["galaxy"], bool)
        elif galaxies_only and "galaxy_prob" in catalog.colnames:
            use = np.asarray(catalog["galaxy_prob"]) >= 0.5
        else:
            use = np.ones(n, bool)
        rows = np.flatnonzero(use)
        masked = None if band_mask is None else band_mask.any(0)
        w, m, sd = self._mixture(
            xs, catalog["x"][rows], catalog["y"][rows], masked, main, progress=progress
        )
        sd = sd * width_scale
        summ = summaries(w, m, sd)
        cols = {}
        for c in SUMMARY_COLUMNS:
            full = np.full(n, np.nan)
            full[rows] = summ[c]
            cols[c] = full
        cols["has_pz"] = use
        other = self.masked_weights if masked is not None else None
        cols["pz_masked_weights"] = np.zeros(n, bool)
        cols["pz_masked_weights"][rows] = self._read_by_masked_net(
            masked, catalog["x"][rows], catalog["y"][rows]
        )
        if other is not None:
            meta["masked_weights"] = other
        cols.update(masked_bands_column(band_mask, catalog, self.bands, use, other is None))
        ens = to_qp(w, m, sd, ancil={"row": rows}) if len(rows) else None
        cat = catalog.with_columns(**cols)
        name = (self.manifest or {}).get("weights", "custom weights")
        cat.meta["photoz"] = {"weights": name, **meta}
        return PhotozResult(cat, ens, w, m, sd, detection, wcs)


# a PDF whose aperture (5 px) has at least this share of a band's pixels without data is
# warned of: the network reads those pixels as no light, a galaxy's colours change
MASKED_BAND_WARN = 0.5


def masked_bands_column(band_mask, catalog, bands, use, warn: bool = True) -> dict:
    """``{"mask_fraction_band": (n, bands)}``: per object and band, the share of the 5-px
    aperture's pixels (:func:`probcat.masking.aperture_fraction`) without data in that band
    (``band_mask`` ``(bands, H, W)``; None: nothing masked, zeros). With ``warn`` (weights
    without :data:`MASKED_WEIGHTS`, which read such pixels as no light, so a galaxy's PDF
    then reads colours it does not have: a masked u band as a u dropout) a warning counts
    the PDFs (``use``) with a band at :data:`MASKED_BAND_WARN` or more."""
    from probcat.masking import aperture_fraction

    x, y = catalog["x"], catalog["y"]
    if band_mask is None:
        return {"mask_fraction_band": np.zeros((len(x), len(bands)))}
    frac = np.stack([aperture_fraction(m, x, y) for m in band_mask], axis=1)
    hit = use & (frac >= MASKED_BAND_WARN).any(1)
    if warn and hit.any():
        which = "".join(b for k, b in enumerate(bands) if (frac[hit, k] >= MASKED_BAND_WARN).any())
        warn_user(
            f"photo-z: {int(hit.sum())} PDF(s) read band(s) {which} where "
            f"{MASKED_BAND_WARN:.0%} or more of their aperture has no data, as no light (a "
            "masked band reads as a dropout): cut on the column mask_fraction_band",
        )
    return {"mask_fraction_band": frac}


def _seeing_differs(ratios: list) -> bool:
    """Whether the bands' measured PSF widths over the weights' (``ratios``, None where
    unknown; two at least) differ by more than :data:`BAND_SEEING_SPREAD`."""
    known = [v for v in ratios if v is not None]
    return len(known) >= 2 and max(known) / min(known) > BAND_SEEING_SPREAD


def _warn_band_seeing(
    ratios: list, bands, trained_under_it: bool = False, read_by: str | None = None
) -> None:
    """A warning when the bands' measured PSF widths over the weights' (``ratios``, None
    where unknown) differ by more than :data:`BAND_SEEING_SPREAD` between bands; unless
    ``trained_under_it`` (weights trained under per-band seeing), it names the weights that
    were, or, where they read the image (``read_by``), says so."""
    if not _seeing_differs(ratios):
        return
    said = ", ".join(f"{b} {'-' if v is None else f'{v:.2f}'}" for b, v in zip(bands, ratios))
    if read_by is not None:
        warn_user(
            f"photo-z: the seeing differs between the bands unlike the weights' (PSF width "
            f"relative to the i band's, over theirs: {said}): the PDFs are from {read_by}, "
            "trained under such seeing (less overconfident, not calibrated everywhere); "
            "refitting the widths to known redshifts calibrates them (--spec-z, "
            "docs/photoz.md)",
        )
        return
    other = "" if trained_under_it else (
        "weights trained under such seeing (photoz_lsst_ugrizy_seeing, --photoz-weights) "
        "are less so on some; "
    )  # fmt: skip
    warn_user(
        f"photo-z: the seeing differs between the bands unlike the weights' (PSF width "
        f"relative to the i band's, over theirs: {said}): the network reads colours in "
        f"fixed apertures, and its PDFs come out overconfident; {other}refitting their "
        "widths to known redshifts calibrates them (--spec-z, docs/photoz.md)",
    )


# a width factor outside this range is no calibration of these PDFs (fitted ones lie within
# 0.5-3), and far outside it the widths overflow or vanish
WIDTH_SCALE_RANGE = (0.01, 100.0)


def check_width_scale(value) -> float:
    """``value`` as a width factor within :data:`WIDTH_SCALE_RANGE`, else a one-line error."""
    try:
        k = float(value)
    except (TypeError, ValueError):
        k = float("nan")
    lo, hi = WIDTH_SCALE_RANGE
    if not (np.isfinite(k) and lo <= k <= hi):
        raise ProbcatValueError(
            f"width_scale must be a positive number from {lo:g} to {hi:g} (a factor on the "
            f"PDFs' widths), got {value!r}"
        )
    return k


def at_depth(xs: np.ndarray, ratio, masked=None, seed: int = 0) -> np.ndarray:
    """``xs`` (noise-sigma units, ``(bands, H, W)``) as it would read at a noise
    ``1 / ratio`` times as large (per band, ``ratio`` <= 1: an image that deep over the
    depth wanted): the signal scaled by ``ratio`` and white noise of variance
    ``1 - ratio**2`` added (from ``seed`` and the band: the same image, the same output),
    so that an aperture's noise is again one sigma's worth. Pixels without data
    (``masked``, ``(H, W)`` or per band) stay 0."""
    ratio = np.asarray(ratio, float)
    if np.any(ratio <= 0) or np.any(ratio > 1):
        raise ProbcatValueError(f"depth ratios must be in (0, 1], got {ratio}")
    out = xs * ratio[:, None, None].astype(np.float32)
    for k, r in enumerate(ratio):
        if r < 1.0:  # each band's noise its own: independent of the other bands' ratios
            noise = np.random.default_rng([seed, k]).standard_normal(xs.shape[1:], np.float32)
            out[k] += np.float32(np.sqrt(1.0 - r * r)) * noise
    if masked is not None:
        out[np.broadcast_to(np.asarray(masked, bool), out.shape)] = 0.0
    return out


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
