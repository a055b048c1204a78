"""The public entry points: :func:`load` a model from the registry, :func:`detect` sources
in an image, and the batched, device-aware :class:`Detector`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError, warn_user
from probcat.measure import DEFAULT_METHOD
from probcat.runtime import inference_entry

__all__ = [
    "load",
    "detect",
    "deblend",
    "Detector",
    "DetectionResult",
    "Deblender",
    "DeblendResult",
    "photoz",
]

# images per forward pass in batched inference: bounded by this many pixels
_BATCH_PIXELS = 4_000_000
# The memory detection and deblending need, from the peak resident memory of `probcat
# detect` measured on this project's 2-core machine: LSST-i fields of 1000^2 to 16000^2 px
# 0.4 GB plus 34-37 bytes per pixel, a ugrizy field (4000^2) 10 bytes more per pixel and
# band beyond the first; deblending (4000^2 i, 25,549 sources, one posterior sample) 5
# float32 copies of every source's model stamps at once. Work beyond the memory this
# process may use is refused before it starts (probcat.runtime.check_memory).
BASE_BYTES = 5e8
DETECT_BYTES_PER_PIXEL = 40
DETECT_BYTES_PER_EXTRA_BAND = 12
DEBLEND_BYTES_PER_PIXEL = 32  # per band: the image, its scene model, wings, residual...
DEBLEND_STAMP_COPIES = 6
# An image of more than DEBLEND_WHOLE_PX a side is deblended core by core (DEBLEND_CORE_PX,
# each with DEBLEND_MARGIN_PX of the image around it and the sources there: a big
# galaxy's wing reaches 128 px, a model stamp 34 px), so that the memory held at once is
# one window's work, not the whole image's; smaller ones whole.
DEBLEND_WHOLE_PX = 4608
DEBLEND_CORE_PX = 4096
DEBLEND_MARGIN_PX = 256
# shipped detection weights -> the weights trained further with bands masked
# (``configs/detection_lsst_ugrizy_masked.yaml``) that read an image with a pixel without
# data in some of its bands but not all: read by the former, a masked band is no light
MASKED_DETECTOR = {"detection_lsst_ugrizy": "detection_lsst_ugrizy_masked"}


@dataclass
class DetectionResult:
    """Output of :func:`detect` / :meth:`Detector.detect`.

    Attributes:
        catalog: MAP catalog (``x, y, x_sd, y_sd, prob, prob_conditional, galaxy_prob,
            galaxy``; ``ra, dec`` in degrees when the image has a celestial WCS; with
            weights that carry them, ``prob`` is calibrated, ``prob_raw`` the network's,
            ``ood_score`` flags sources unlike the training data (see
            :mod:`probcat.infer.reliability`) and ``pair_prob`` is the probability that a
            detection within 10 px of another is a source of its own; the detections the
            pair rule reads as pieces of a neighbour's galaxy are left out, see
            :mod:`probcat.infer.pairs`).
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
    info: list = field(default_factory=list)  # what was done to each image (read_input)
    masked: list = field(default_factory=list)  # each image's (H, W) masked pixels, or None


def read_input(
    image,
    survey,
    noise_sigma=None,
    *,
    min_size: int = 1,
    background: str = "auto",
    gain=None,
    sky_offset=None,
    mask=None,
    whiten: bool = True,
    zeropoint=None,
    correlated_noise_ok: bool = False,
    band_mask: bool = False,
):
    """One image for ``survey``'s bands (taken by name from an image that has more, e.g. the
    i plane of a ugrizy file for i-band weights): ``(x, wcs, sigma, info, masked)`` with ``x``
    ``(bands, H, W)`` float32 in noise-sigma units (checked, converted to electrons with
    ``gain`` or the image's ``GAIN``, sky subtracted when ``background="auto"`` finds it
    left in: :mod:`probcat.background`), the image's WCS (or None), the noise sigma per band
    (``noise_sigma``, else the FITS ``NOISE`` keywords, else the survey's, but the measured
    pixel noise of a band where that is more than 5% off it) and what was done
    to the image (``info``, recorded in catalogs). ``noise_sigma="measured"``: the image's
    own pixel noise per band (:func:`probcat.background.measured_noise`), for images whose
    depth differs from the survey's and that carry no ``NOISE``. ``sky_offset``: see
    :func:`probcat.background.prepare` (the weights' manifest has it).

    Pixels without data (NaN, inf, masked in a numpy masked array, or set in ``mask``:
    ``(H, W)`` or ``(bands, H, W)`` of the image's bands as read, True or nonzero masks) are
    filled with sky-like noise for the sky and noise estimates and are 0 in ``x``
    (:mod:`probcat.masking`); a fifth value, ``masked``, is the ``(H, W)`` map of the pixels
    masked in any band (None when none is), and ``info["masked_pixels"]`` counts them;
    with ``band_mask``, the ``(bands, H, W)`` map of each band's instead.
    ``info["flux_unit"]``: the image's ``BUNIT`` when its pixels are not electrons (e.g.
    ``nJy``) and no gain converted them: fluxes measured on ``x * sigma`` are then in that
    unit. ``whiten``: an image with a noise map (``ImageData.variance``: an LSST
    ``VARIANCE`` plane or a weight file) whose noise varies across it is read scaled to the
    noise of its median depth everywhere, ``sigma`` (:func:`probcat.background.noise_ratio`;
    ``info["noise_map"]``: the 5-95% range of the noise over sigma); False reads it as it
    is. ``info["zeropoint"]``: per band, the AB magnitude of a flux of 1 in the units fluxes
    come out in (``zeropoint``, a number or one per band, in the pixels' units as given;
    else the image's, :class:`probcat.io.ImageData`; shifted by 2.5 log10 gain where a gain
    converts the pixels to electrons; ``None`` where unknown), and
    ``info["zeropoint_source"]`` where it came from. ``info["noise_correlation"]``: per
    band, :func:`probcat.background.noise_correlation`; probcat warns when it reads as a
    coadd's unless ``correlated_noise_ok`` (weights trained on such noise)."""
    from probcat.background import (
        gain_array,
        measured_noise,
        per_band_array,
        wants_measured_noise,
    )
    from probcat.infer.detect import check_image
    from probcat.io import ImageData, band_letter, plausible_zeropoint, read_image
    from probcat.masking import combined_mask, fill_masked, masked_pixels

    measure = wants_measured_noise(noise_sigma)
    pixel_unit = ""  # the image's BUNIT when not electrons (ImageData.unit)
    if measure:
        noise_sigma = None
    wcs, no_gain, given_gain = None, (), gain is not None
    zp, zp_from = None, ""  # the pixels' AB zeropoint per band, and where it came from
    sigma, source = noise_sigma, "noise_sigma"
    names = tuple(survey.band_names)
    if isinstance(image, (str, Path)):
        image = read_image(image)
    if isinstance(image, np.ma.MaskedArray):  # its masked pixels have no data
        own = np.ma.getmaskarray(image)
        image = np.ma.getdata(image)
        if own.any() and own.ndim in (2, 3):
            own = own if own.ndim == 3 else own[None]
            mask = combined_mask(own, mask, own.shape)
    original = image  # its noise map, if any (ImageData.variance), for whiten
    if isinstance(image, ImageData):
        wcs = image.wcs
        order = None
        if len(set(image.bands)) == len(image.bands) and set(names) <= set(image.bands):
            # the weights' bands, in their order, from an image that may have more (the i
            # plane of a ugrizy file for i-band weights)
            order = [image.bands.index(b) for b in names]
            same = order == list(range(len(image.bands)))  # all planes, in order: no copy
            data = image.image if same else image.image[order]
            sig = image.noise_sigma[order]
        elif image.image.shape[0] == len(names) == 1:
            data, sig = image.image, image.noise_sigma
            named = band_letter(image.bands[0]) if image.bands_named else None
            if named is not None and named != names[0]:
                warn_user(
                    f"the image is of band {named} (named {image.bands[0]!r}) and "
                    f"the weights were trained on {names[0]}: it is read as if it were "
                    f"{names[0]} (detections, classes and probabilities as trained and "
                    f"calibrated on {names[0]})",
                )
        elif all(b == f"b{k}" for k, b in enumerate(image.bands)):  # planes without names
            need = "".join(names)
            hint = (
                f"e.g. BANDS = '{need}'"
                if len(image.bands) == len(names)
                else f"the weights need {len(names)} band(s), {need}"
            )
            raise ProbcatValueError(
                f"the image's {len(image.bands)} planes have no band names: set the header "
                f"keyword BANDS, one letter per plane in order ({hint})"
            )
        else:
            raise ProbcatValueError(
                f"image bands {''.join(image.bands)} do not match the weights' "
                f"bands {''.join(names)}"
            )
        if sigma is None and np.all(np.isfinite(sig)):
            sigma, source = sig, image.noise_from  # NOISE keywords, or an LSST VARIANCE
        if gain is None and image.gain is not None:
            gain = image.gain if order is None else image.gain[order]
        no_gain = [b for b in image.adu_without_gain if order is None or b in names]
        mask = combined_mask(image.mask, mask, image.image.shape)
        if mask is not None and np.ndim(mask) == 3 and order is not None:
            if len(mask) != len(image.bands):
                raise ProbcatValueError(
                    f"mask has {len(mask)} planes, the image {len(image.bands)} bands"
                )
            mask = np.asarray(mask)[order]  # the weights' bands, as the image's
        pixel_unit = image.unit
        if image.zeropoint is not None:
            zp = image.zeropoint if order is None else image.zeropoint[order]
            zp_from = image.zeropoint_from
        image = data
    if zeropoint is not None:
        zp, zp_from = per_band_array(zeropoint, len(names), "zeropoint", False), "zeropoint"
        for v in zp:
            plausible_zeropoint(v, "zeropoint")
    bad = masked_pixels(image, mask)
    if bad is not None:
        image = fill_masked(image, bad)
    adu_warning = None
    if sigma is None:
        sigma, source = survey.noise_sigma, SURVEY_NOISE
        if no_gain and not (given_gain or measure):
            adu_warning = (
                f"BUNIT is ADU but there is no GAIN (band {', '.join(no_gain)}): the pixels "
                "are read as electrons against the survey's noise; give the gain (gain=, "
                "--gain) or use the measured noise (noise_sigma='measured', --noise measured)"
            )
    _check_pixel_scale(wcs, survey)
    info = {}
    if source == "VARIANCE":  # the noise sigma the file's VARIANCE plane gave
        info["noise_source"] = source
        info["noise_sigma"] = [round(float(v), 6) for v in np.atleast_1d(sigma)]
    if gain is not None:
        g = gain_array(gain, len(names))
        if source not in ("NOISE", "VARIANCE"):  # in the pixels' units: x = image / NOISE
            info["gain"] = g.tolist()
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    image = np.asarray(image, np.float64) * g[:, None, None]
            except (TypeError, ValueError):
                raise ProbcatValueError("image must be a numeric array") from None
            if not np.all(np.isfinite(image)) or np.abs(image).max(initial=0) > 3.4e38:
                raise ProbcatValueError(
                    f"pixels x gain {', '.join(f'{v:g}' for v in g)} overflow: check the gain"
                )
    if zp is not None and np.isfinite(zp).any():
        if "gain" in info:  # fluxes in electrons: gain e- per pixel unit
            zp = zp + 2.5 * np.log10(info["gain"])
        info["zeropoint"] = [float(v) if np.isfinite(v) else None for v in zp]
        info["zeropoint_source"] = zp_from
    ratio = noise_map_ratio(original, names, bad) if whiten else None
    x = check_image(image, len(names), sigma, min_size=min_size, warn_sky=background == "none")
    sigma = np.broadcast_to(np.asarray(sigma, np.float32), (len(names),)).copy()
    if measure:  # the noise of the median depth, where a noise map says it varies
        noise = measured_noise(x if ratio is None else x * ratio, sigma)
        x *= (sigma / noise).astype(np.float32)[:, None, None]  # x is check_image's own copy
        sigma, source = noise, "the measured pixel noise"
        info["noise_sigma"] = [round(float(v), 6) for v in noise]
        info["noise_source"] = "measured"
    if pixel_unit and "gain" not in info:  # fluxes come out in the pixels' units
        info["flux_unit"] = pixel_unit
    x, done, sigma, adu_warning = _prepared(
        x, sigma, info, source, adu_warning, background, sky_offset
    )
    if adu_warning:
        warn_user(adu_warning)
    if ratio is not None:  # the noise varies: read at sigma everywhere (the sky is off)
        x = whitened(x, ratio, info)
    masked = None
    if bad is not None:
        x[bad] = 0.0  # no data: the zero padding's value (x is never the caller's array)
        masked = bad.any(0)
        info["masked_pixels"] = int(masked.sum())
    _check_noise_correlation(x, names, info, correlated_noise_ok)
    if band_mask and bad is not None:
        # a mask given (H, W) holds for every band
        masked = bad if bad.shape == x.shape else np.broadcast_to(bad, x.shape).copy()
    return x, wcs, sigma, {**info, **done}, masked


SURVEY_NOISE = "the survey's default noise sigma"  # read_input's noise source of last resort
# an image that states no noise is read at the survey's where its measured pixel noise is
# within this factor of it, else at the measured (on validation fields of 0.5-20 years of
# LSST read without a noise, the measured noise gave the stated one's F1 and ECE at every
# depth, the survey's lost 0.02-0.38 of F1 from 14% off it and ECE up to 0.09)
MEASURED_NOISE_FACTOR = 1.05
NOISE_CROP = 256  # px: the central crop where that noise is measured


def _prepared(x, sigma, info: dict, source: str, adu_warning, background, offset):
    """:func:`probcat.background.prepare` of ``x`` (noise-sigma units of ``sigma``), and for an
    image that states no noise (``source`` is :data:`SURVEY_NOISE`): where a band's measured
    pixel noise (sources masked, on the central :data:`NOISE_CROP` px) is more than
    :data:`MEASURED_NOISE_FACTOR` off the survey's (and more than four times its own
    scatter: 7% on a 64-px cutout), that band is read at its measured noise instead
    (prepared again at it; said in a warning, recorded in ``info`` as ``noise_source =
    "measured"`` and ``noise_sigma``). ``(x, done, sigma, adu_warning)``: the noise read per
    band, and the ADU warning, dropped where the measured noise makes the units irrelevant."""
    from probcat.background import crop_noise, measured_noise, prepare

    if source != SURVEY_NOISE:
        x, done = prepare(x, sigma, background=background, sigma_source=source, offset=offset)
        return x, done, sigma, adu_warning
    with warnings.catch_warnings():  # the mismatch is handled here, not warned of
        warnings.filterwarnings("ignore", message=r".* differs from the measured pixel noise")
        out, done = prepare(x, sigma, background=background, sigma_source=source, offset=offset)
    stated = np.asarray(sigma, float)
    if "pixel_noise" not in done:  # the sky left as it is, or too small: not measured
        return out, done, sigma, adu_warning
    h, w = x.shape[1:]
    y0, x0 = max(0, (h - NOISE_CROP) // 2), max(0, (w - NOISE_CROP) // 2)
    crop = x[:, y0 : y0 + NOISE_CROP, x0 : x0 + NOISE_CROP]
    # beyond 5%, and beyond four times the estimate's own scatter (1.17 / sqrt(pixels))
    f = max(MEASURED_NOISE_FACTOR, 1.0 + 4 * 1.17 / np.sqrt(crop[0].size))
    quick = [crop_noise(band, NOISE_CROP) for band in out]  # sources masked once: 10 ms
    if all(q is not None and 1 / f <= q <= f for q in quick):
        return out, done, sigma, adu_warning  # the survey's, clearly: no need to measure
    try:  # sources masked as noise_sigma="measured" masks them, on the central crop
        noise = measured_noise(crop, stated).astype(float)
    except ProbcatValueError:  # a constant band: nothing to measure
        return out, done, sigma, adu_warning
    off = (stated > f * noise) | (noise > f * stated)
    if not off.any():
        return out, done, sigma, adu_warning
    new = np.where(off, noise, stated)
    x = x * (stated / new).astype(np.float32)[:, None, None]  # x itself is never modified
    out, done = prepare(x, new, background=background, sigma_source=source, offset=offset)
    bands = np.flatnonzero(off)
    said = ", ".join(f"band {k}: {new[k]:.4g} against {stated[k]:.4g}" for k in bands)
    warn_user(
        f"the image states no noise (no NOISE keyword, VARIANCE plane or noise_sigma) and its "
        f"pixel noise is more than {round(100 * (f - 1))}% off the survey's: read at the "
        f"measured noise ({said}); state it with noise_sigma= or --noise VALUE",
    )
    info["noise_source"] = "measured"
    info["noise_sigma"] = [round(float(v), 6) for v in new]
    return out, done, new.astype(np.float32), None


def _check_noise_correlation(x: np.ndarray, names, info: dict, ok: bool = False) -> None:
    """Record the neighbour correlation of each band's noise in
    ``info["noise_correlation"]`` (:func:`probcat.background.noise_correlation`), and warn
    when it is that of a resampled coadd rather than white noise, unless ``ok``; the
    warning names the shipped weights for these bands trained on such noise."""
    from probcat.background import NOISE_CORRELATION_WARN, noise_correlation
    from probcat.weights import coadd_detection_weights

    values = [noise_correlation(band) for band in x]
    info["noise_correlation"] = [None if v is None else round(v, 4) for v in values]
    known = [(v, k) for k, v in enumerate(values) if v is not None]
    worst = max(known) if known else None
    if worst is not None and worst[0] > NOISE_CORRELATION_WARN and not ok:
        better = coadd_detection_weights(names)
        hint = (
            f"; the weights {', '.join(better)} were trained on such noise (probcat detect "
            "--weights, probcat photoz --detector)"
            if better
            else ""
        )
        warn_user(
            f"the noise of neighbouring pixels is correlated ({worst[0]:.2f} more than that "
            f"of pixels 2 apart, band {names[worst[1]]}), as in a coadd of resampled "
            "visits: these weights were trained on uncorrelated noise, and such noise gives "
            "more false detections than white noise of the same sigma (on simulated coadds "
            "up to 2.2 times as many with the LSST-i weights, 1.4 with the six-band ones), "
            f"most of them below prob 0.9 (docs/method.md, Correlated noise){hint}",
        )


def sky_offset_of(manifest: dict | None, n_bands: int):
    """The sky offset per band (noise sigma) recorded in a weights manifest
    (:func:`probcat.background.sky_offset`), or None: weights without a manifest or
    without the record (then the sky estimate is subtracted as it is)."""
    rec = (manifest or {}).get("sky_offset") or {}
    per_band = rec.get("per_band")
    if per_band is None or len(per_band) != n_bands:
        return None
    return np.asarray(per_band, np.float64)


def _check_pixel_scale(wcs, survey, tolerance: float = 0.1) -> None:
    """Warn when a celestial WCS's pixel scale differs from the survey's the weights were
    trained for by more than ``tolerance`` (sources then look larger or smaller than any
    the networks have seen)."""
    if wcs is None or not getattr(wcs, "has_celestial", False):
        return
    try:
        from astropy.wcs.utils import proj_plane_pixel_scales

        scale = float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs.celestial)))) * 3600.0
    except Exception:  # a degenerate WCS: nothing to compare
        return
    want = float(survey.pixel_scale)
    if np.isfinite(scale) and abs(scale / want - 1) > tolerance:
        warn_user(
            f"the image's pixel scale is {scale:.3g} arcsec, the weights' survey has "
            f"{want:.3g} arcsec: sources look larger or smaller than any the networks "
            "learned; detection and its probabilities held on simulated 0.168 and 0.263 "
            "arcsec pixels, other quantities may be off (docs/robustness.md, Pixel scale)",
        )


def _masks(mask, n: int, single: bool) -> list:
    """One mask (or None) per image of a batch of ``n``: ``mask`` for a single image, a list
    or tuple of ``n`` masks (None for an image without one) for several."""
    if mask is None:
        return [None] * n
    if single:
        return [mask]
    if not isinstance(mask, (list, tuple)) or len(mask) != n:
        raise ProbcatValueError(
            f"mask: give one per image of the {n} (a list, None for an image without one)"
        )
    return list(mask)


def _with_mask(cat: FullCatalog, masked) -> FullCatalog:
    """``cat`` with its ``mask_fraction`` column: the fraction of the pixels within 5 px of
    each position that are masked (:func:`probcat.masking.aperture_fraction`; 0 without a
    mask)."""
    from probcat.masking import aperture_fraction

    return cat.with_columns(mask_fraction=aperture_fraction(masked, cat["x"], cat["y"]))


def _sky_shift_of(cat) -> np.ndarray | None:
    """The shift (noise sigma, per band of the detector) that the detector took off an image
    whose sky it read at the image's source density (``meta["input"]["sky_density"]``,
    :meth:`Detector._sky_at_density`), or None where it took none."""
    rec = ((cat.meta or {}).get("input") or {}).get("sky_density") or {}
    return np.asarray(rec["shift_sigma"], float) if rec.get("applied") else None


def _offset_at_density(offset, cat):
    """The sky offset (noise sigma per band) that the detector used for the image of its
    catalogue ``cat``: the weights' ``offset`` less the shift at the image's density."""
    shift = _sky_shift_of(cat)
    if offset is None or shift is None or len(shift) != len(offset):
        return offset
    return np.asarray(offset, float) - shift


def _with_sky(cat: FullCatalog, wcs) -> FullCatalog:
    from probcat.catalog import sky_positions

    sky = sky_positions(wcs, cat["x"], cat["y"])
    return cat if sky is None else cat.with_columns(ra=sky[0], dec=sky[1])


class Detector:
    """A detection/classification encoder ready for inference, from :func:`load`.

    Every method takes one image or many: a FITS path, an
    :class:`~probcat.io.ImageData`, an array ``(H, W)`` or ``(bands, H, W)`` in electrons
    (background-subtracted), a stack ``(B, bands, H, W)``, or a list of any of these. Images
    of one size run as one batch; a single image gives a single result, several a list.
    Every method also takes ``real_shapes`` and ``cutout`` (see :func:`detect`): with
    ``"pooled"``, the detection probabilities of many images of one survey are calibrated
    with what all their detections say of their galaxies and layout.

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
        from probcat.runtime import place

        net, self.device = place(net, device, threads)
        self.net, self.survey, self.manifest, self.threads = net, survey, manifest, threads
        self._masked = None
        # a sky left in an image and subtracted is read at the image's source density and
        # depth (probcat.infer.density.sky_shift); False: the weights' offset, that of the
        # prior's density at the survey's depth, whatever the image's
        self.sky_at_density = True

    def __repr__(self) -> str:
        name = (self.manifest or {}).get("weights", "custom weights")
        bands = "".join(self.survey.band_names)
        return f"Detector({name}, bands={bands!r}, device={self.device.type})"

    @cached_property
    def masked_weights(self) -> str | None:
        """The registered weights that read this detector's images with a pixel without
        data in some bands but not all (:data:`MASKED_DETECTOR`: trained with bands masked,
        where these weights read a masked band as no light), or None: these weights read
        every image."""
        from probcat.weights import companion

        return companion(self.manifest, MASKED_DETECTOR)

    def masked_detector(self) -> Detector | None:
        """The :class:`Detector` of :attr:`masked_weights` (loaded at first use, on this
        detector's device and threads), or None."""
        name = self.masked_weights
        if name is not None and self._masked is None:
            self._masked = load(name, device=self.device, threads=self.threads, kind="detection")
            if self._masked.bands != self.bands:
                raise ProbcatValueError(f"{name}: not the bands of {self!r}")
        return self._masked if name is not None else None

    def _routed(self, batch: _Batch) -> list[bool] | None:
        """Per image of ``batch``, whether :meth:`masked_detector` reads it: it has a pixel
        without data in some of its bands but not all (0 there, in sigma units, and not 0 in
        another band), or a band without any (``info["absent_bands"]``); None when no image
        is, or there are no such weights."""
        if self.masked_weights is None:
            return None
        out = [
            bool(info.get("absent_bands"))  # a band without any data (with_missing_bands)
            or (m is not None and bool((batch.x[k][:, m] != 0).any(0).any()))
            for k, (m, info) in enumerate(zip(batch.masked, batch.info))
        ]
        return out if any(out) else None

    def _run_routed(self, batch: _Batch, routed: list[bool], opts: dict, **kw):
        """:meth:`_run` of ``batch`` with its ``routed`` images read by
        :meth:`masked_detector` (their ``meta["input"]["masked_weights"]`` names it) and the
        others by this detector, the results in the batch's order."""
        other = self.masked_detector()
        name = self.masked_weights
        full = kw.pop("full", False)
        for k, r in enumerate(routed):
            if r:
                batch.info[k] = {**batch.info[k], "masked_weights": name}
        if all(routed):
            return other._read(batch, None, opts, full=full, **kw)
        cats, maps, draws, tiles = {}, {}, {}, {}
        for det, want in ((self, False), (other, True)):
            idx = [k for k, r in enumerate(routed) if r == want]
            sub = _Batch(batch.x[idx], [batch.wcs[k] for k in idx], False,
                         [batch.info[k] for k in idx], [batch.masked[k] for k in idx])  # fmt: skip
            c, p, d, t, _ = det._read(sub, None, opts, full=True, **kw)
            for j, k in enumerate(idx):
                if c:
                    cats[k], tiles[k] = c[j], t[j]
                if p is not None:
                    maps[k] = p[j]
                draws[k] = d[j]
        n = len(routed)
        out = (
            [cats[k] for k in range(n)] if cats else [],
            np.stack([maps[k] for k in range(n)]) if maps else None,
            [draws[k] for k in range(n)],
        )
        return (*out, [tiles[k] for k in range(n)] if tiles else [], batch) if full else out

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.survey.band_names)

    @property
    def sky_offset(self):
        """The weights' sky offset per band (noise sigma; None when not recorded): what
        the faint galaxies of a field lift a sky estimate by (:mod:`probcat.background`)."""
        return sky_offset_of(self.manifest, len(self.bands))

    @cached_property
    def density_calibration(self):
        """The weights' :class:`~probcat.infer.density.DensityCalibration` (their manifest's
        ``density_calibration``, at the survey's seeing and depth), or None: probabilities
        for images whose source density differs from the training scenes'
        (:mod:`probcat.infer.density`). Set it to None to read every image at the prior's
        density (at any seeing and depth, and a sky left in with the prior's faint-galaxy
        offset: :attr:`sky_at_density` False does only the latter)."""
        from probcat.infer.density import DensityCalibration

        rec = (self.manifest or {}).get("density_calibration")
        return DensityCalibration.from_dict(rec) if rec else None

    @cached_property
    def density_calibrations(self) -> tuple:
        """The weights' density calibrations at other seeings and depths than the survey's
        (their manifest's ``density_calibrations``; each fitted where the probability
        calibration has a refit: :func:`probcat.infer.reliability.calibration_for`)."""
        from probcat.infer.density import DensityCalibration

        recs = (self.manifest or {}).get("density_calibrations") or ()
        return tuple(DensityCalibration.from_dict(r) for r in recs)

    def _density_for(self, seeing_factor: float, noise_factor: float):
        """The density calibration for probabilities calibrated at ``seeing_factor`` and
        ``noise_factor``: the one fitted there, else :attr:`density_calibration` (which
        then says it does not apply); None when that is None (density calibration off)."""
        from probcat.infer.density import choose

        main = self.density_calibration
        if main is None:
            return None
        return choose((main, *self.density_calibrations), seeing_factor, noise_factor) or main

    def _at_density(self, cat, masked, seeing_factor: float, noise_factor: float, threshold):
        """``cat`` read under its image's source density: :func:`probcat.infer.density.
        at_density` with the density calibration of its seeing and depth
        (:meth:`_density_for`; ``masked``: the image's pixels without data, left out of its
        area)."""
        from probcat.infer.density import at_density

        cal = self._density_for(seeing_factor, noise_factor)
        if cal is None or "prob_raw" not in cat.colnames:
            return cat
        return at_density(cat, cal, _area(cat, masked), threshold, seeing_factor, noise_factor)

    def _thin(self, samples, cat, masked, seeing_factor: float, noise_factor: float, seed: int):
        """Posterior ``samples`` of an image thinned to its source density: :func:`probcat.
        infer.density.thin_samples`, read on its MAP catalogue ``cat`` (calibrated, before
        :meth:`_at_density`)."""
        from probcat.infer.density import thin_samples

        cal = self._density_for(seeing_factor, noise_factor)
        if cal is None or "prob_raw" not in cat.colnames:
            return samples
        area = _area(cat, masked)
        return thin_samples(samples, cat, cal, area, seed, seeing_factor, noise_factor)

    # ---- inputs --------------------------------------------------------------------------
    def _one(self, image, noise_sigma, opts: dict):
        """One image as ``(bands, H, W)`` in sigma units, its WCS, what was done to it and
        its masked pixels (``(H, W)`` or None)."""
        from probcat.weights import coadd_trained

        opts = dict(opts)
        # bands the image lacks or has no data in: with masked weights, read as without data
        image, opts["mask"], absent = with_missing_bands(image, self, opts.get("mask"))
        x, wcs, sigma, info, masked = read_input(
            image,
            self.survey,
            noise_sigma,
            min_size=self.net.receptive_field // 2,
            sky_offset=self.sky_offset,
            correlated_noise_ok=coadd_trained(self.manifest),
            **opts,
        )
        if absent:
            info = no_data_bands(absent, self.bands, x, info)
            names = "".join(absent)
            warn_user(
                f"the image has no data in band {names}: its detections are from "
                f"{self.masked_weights} (trained with bands masked, which reads {names} as "
                "missing; docs/method.md, Bands partly without data)",
            )
        return x, wcs, self._with_depth(x, info, sigma), masked

    def _with_depth(self, x: np.ndarray, info: dict, sigma, planes=None) -> dict:
        """``info`` of an image ``x`` (the detector's bands, noise-sigma units) read with
        noise ``sigma`` (per band of the detector; with ``planes``, per band of the image
        read, the detector's at those indices), with ``noise_over_survey`` where its depth
        is known (its zeropoint or a flux-density unit: :func:`noise_over_survey`): the
        probability calibration of that depth. Where the pixel noise is correlated (a
        coadd's), the noise of the depth is the pixel noise times what the correlation
        multiplies an aperture's noise by (:func:`_aperture_noise_factors`): a coadd's
        pixels are smoother than its depth."""
        read = info
        if planes is not None:
            sigma = np.asarray(sigma)[planes]
            read = {k: [info[k][p] for p in planes] if info.get(k) else info.get(k)
                    for k in ("zeropoint", "noise_correlation")}  # fmt: skip
            read = {**info, **read}
        sigma = np.asarray(sigma, float) * _aperture_noise_factors(x, read)
        ratio = noise_over_survey(self.survey, sigma, read, electrons_as_survey=False)
        if not np.isfinite(ratio).any():
            return info
        lo, hi = DEPTH_PLAUSIBLE
        odd = [f"{v:.3g}" for v in ratio if np.isfinite(v) and not lo <= v <= hi]
        if odd:
            src = info.get("zeropoint_source") or "BUNIT"
            src = "the zeropoint given" if src == "zeropoint" else f"its {src}"
            warn_user(
                f"the image's noise as a flux is {'/'.join(odd)} times the survey's (through "
                f"{src}): "
                "far from any depth of the survey (a single visit is about 14 times); check "
                "the zeropoint and the noise; detection probabilities use the calibration of "
                "the nearest depth the weights carry",
            )
        return {**info, "noise_over_survey": [float(f"{v:.4g}") if np.isfinite(v) else None
                                              for v in ratio]}  # fmt: skip

    def _prepare(self, images, noise_sigma, opts: dict) -> _Batch:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            items, single, what = list(images), False, "the stack"
        elif isinstance(images, (list, tuple)):
            if not images:
                raise ProbcatValueError("no images given")
            items, single = list(images), False
            what = "the list (a list holds several images; give one as a numpy array)"
        else:
            items, single, what = [images], True, ""
        opts = dict(opts)
        masks = _masks(opts.pop("mask", None), len(items), single)
        xs, wcs, info, masked = zip(*(self._item(k, im, what, noise_sigma, {**opts, "mask": m})
                                      for k, (im, m) in enumerate(zip(items, masks))))  # fmt: skip
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise ProbcatValueError(
                f"images of one batch must share one shape, got {sorted(shapes)}: "
                "pass them in separate calls"
            )
        x = xs[0][None] if len(xs) == 1 else np.stack(xs)  # one image: a view, no copy
        return _Batch(x, list(wcs), single, list(info), list(masked))

    def _item(self, k: int, image, what: str, noise_sigma, opts: dict):
        """:meth:`_one` for item ``k`` of several images (``what``: of which; empty for a
        single image); its errors say which (a nested list of numbers is a list of images,
        not one image)."""
        try:
            return self._one(image, noise_sigma, opts)
        except ProbcatValueError as e:
            if not what:
                raise
            raise ProbcatValueError(f"image {k} of {what}: {e}") from None

    def _prepared(
        self, x: np.ndarray, wcs, info: dict, masked=None, sigma=None, planes=None
    ) -> _Batch:
        """One image already read, checked and in noise-sigma units (``read_input``'s ``x``,
        the detector's bands, its ``masked`` pixels and, for its depth, the noise ``sigma``
        of the bands read, the detector's at indices ``planes``), as a batch, without a
        copy; sized for the network."""
        from probcat.infer.detect import check_size

        check_size(x.shape, self.net.receptive_field // 2)
        if sigma is not None:
            info = self._with_depth(x, info, sigma, planes)
        return _Batch(np.asarray(x, np.float32)[None], [wcs], True, [info], [masked])

    @property
    def _seeing_band(self) -> int:
        """The band the seeing is measured in: i when the weights have it, else the first."""
        from probcat.measure import seeing_band

        return seeing_band(self.survey.band_names)

    def _seeing(self, x: np.ndarray, cat) -> tuple[dict, float | None]:
        """The seeing check of one image ``x`` (sigma units) and its MAP catalog
        (:func:`probcat.measure.measure_seeing`, in the i band when the weights have it,
        from sources no mask touches): the catalog's metadata and the ratio. The metadata
        hold ``seeing_ratio``, ``seeing_sources`` and ``seeing_locus`` (the stars it was
        measured on); without a stellar locus, no ratio (None) and ``seeing_locus`` 0 with
        ``seeing_compact``, the most compact sources' width ratio; ``({}, None)`` when the
        image has too few bright, isolated sources to tell."""
        from probcat.measure import measure_seeing, unmasked_positions

        k = self._seeing_band
        xs, ys = unmasked_positions(cat)
        got = measure_seeing(x[k], xs, ys, self.survey.bands[k])
        if got.compact is None:
            return {}, None
        if got.ratio is None:
            return {
                "seeing_sources": got.n, "seeing_locus": 0,
                "seeing_compact": round(got.compact, 3),
            }, None  # fmt: skip
        return {
            "seeing_ratio": round(got.ratio, 3), "seeing_sources": got.n,
            "seeing_locus": got.locus,
        }, got.ratio  # fmt: skip

    def _warn_seeing(
        self, ratio: float | None, matched: bool, factor: float = 1.0, checked=None
    ) -> None:
        """A warning when the measured ``ratio`` is beyond :data:`SEEING_FACTOR` either way
        (``matched``: the image was read at its seeing; ``factor``: the PSF width ratio of
        the probability calibration used), or when there was no stellar locus to measure
        it on, the image is read at the survey's seeing, and the most compact sources
        (``checked``, :meth:`_seeing`'s metadata) are narrower than the PSF by that factor
        or wider than the most compact galaxies are at the survey's seeing
        (:data:`~probcat.measure.SEEING_COMPACT_MAX`): galaxies alone, within that range,
        do not tell the seeing, and a field without stars is no cause for a warning."""
        from probcat.measure import SEEING_COMPACT_MAX, SEEING_FACTOR

        band = self.survey.bands[self._seeing_band]
        compact = (checked or {}).get("seeing_compact")
        if ratio is None and compact is not None:
            # a seeing the caller gave (matched) stands; else say that none was measured
            if matched or 1 / SEEING_FACTOR <= compact <= SEEING_COMPACT_MAX:
                return
            how = "wider than galaxies are" if compact > 1 else "narrower than any source is"
            warn_user(
                f"the image's most compact bright sources are {compact:.2f} times as wide as "
                f"the PSF the weights were trained for (band {band.name}, atmospheric FWHM "
                f'{band.psf_fwhm:.2f}"), {how} under that PSF, but they '
                "are not alike enough to be stars: the seeing was not measured and the "
                "image is read at the weights' survey seeing (give it as seeing= / "
                "--seeing RATIO if it differs; docs/robustness.md, Seeing)",
            )
            return
        if ratio is None or 1 / SEEING_FACTOR <= ratio <= SEEING_FACTOR:
            return
        if not matched:
            what = "detection probabilities and star/galaxy classes assume that seeing"
        elif factor == 1.0:
            what = (
                "detection probabilities assume that seeing (star/galaxy classes were read "
                "from stamps resampled to it)"
            )
        else:
            what = (
                f"detection probabilities use the calibration fitted under a PSF {factor:g} "
                "times as wide, star/galaxy classes were read from stamps resampled to the "
                "survey's seeing, and completeness is the network's at the image's seeing"
            )
        warn_user(
            f"the image's most compact sources are {ratio:.2f} times as wide as the PSF the "
            f"weights were trained for (band {band.name}, atmospheric FWHM "
            f'{band.psf_fwhm:.2f}"): {what} (docs/robustness.md, Seeing)',
        )

    def _threads(self, batch: _Batch) -> int:
        from probcat.runtime import threads_for

        return threads_for(self.threads, int(np.prod(batch.x.shape[:1] + batch.x.shape[2:])))

    def _rescue(self, cat, x, feats, pixels, dec, k, threshold, seeing, meta, masked):
        """``cat`` (the MAP catalog of image ``k`` ``x``, noise units, of the batch decoded
        as ``dec`` from ``feats`` and ``pixels``) with a detection for each bright object it
        leaves without one (:mod:`probcat.infer.bright`): the image decoded again (around
        them) with their tiles decided to hold a source; their ``prob`` the
        probability that their core holds one. Returns the catalog (with ``bright_rescue``)
        and the tiles decided with the positions proposed there, ``(force, force_locs)`` of
        :func:`~probcat.infer.detect.decode`, with ``force_prob``, each such tile's row's
        ``prob`` (0 where its source merged into another), for the posterior samples (None
        where there were none)."""
        import torch

        from probcat.infer.bright import core_probability, decode_forced, force_mask, unclaimed
        from probcat.infer.detect import at_seeing, catalog_from_decisions

        found = unclaimed(np.asarray(x), cat["x"], cat["y"], masked)
        if not len(found):
            return cat.with_columns(bright_rescue=np.zeros(len(cat), bool)), None
        force, at = force_mask(found, self.net.tile_size, tuple(feats.shape[-2:]))
        with at_seeing(self.net, seeing):
            one = decode_forced(self.net, feats, pixels, dec, k, force, at, threshold)
        out = _with_mask(catalog_from_decisions(
            one, 0, one.marginal, cat.image_shape, self.net.tile_size, self.survey.band_names,
            meta,
        ), masked)  # fmt: skip
        tiles = force[0].numpy()
        ty, tx = np.asarray(out["tile_y"], int), np.asarray(out["tile_x"], int)
        rescued = tiles[ty, tx] & (np.asarray(out["prob_conditional"], float) <= threshold)
        prob = np.asarray(out["prob"], float).copy()
        marginal = one.marginal.prob[0].cpu().numpy()
        for i in np.flatnonzero(rescued):
            ox, oy, r = found[
                np.argmin(np.hypot(found[:, 0] - out["x"][i], found[:, 1] - out["y"][i]))
            ]
            prob[i] = max(prob[i], core_probability(marginal, ox, oy, r, self.net.tile_size))
        # the samples hold each forced tile's source as often as its row's probability says
        held = np.zeros(tiles.shape, np.float32)
        on = tiles[ty, tx]
        held[ty[on], tx[on]] = prob[on]
        return out.with_columns(prob=prob, bright_rescue=rescued), (
            force, at, torch.from_numpy(held)[None],
        )  # fmt: skip

    def _check_memory(self, batch: _Batch) -> None:
        """A one-line error where the detection of ``batch``'s largest forward pass (one
        image, or a group of :meth:`_groups`) would need more memory than this process may
        use, on the CPU (a GPU holds the features in its own memory)."""
        if self.device.type != "cpu":
            return
        from probcat.runtime import check_memory

        nb, h, w = batch.x.shape[1:]
        per = DETECT_BYTES_PER_PIXEL + DETECT_BYTES_PER_EXTRA_BAND * (nb - 1)
        n = len(batch.x[self._groups(batch)[0]])  # the first group is the largest
        what = f"detection of a {w}x{h} image" if n == 1 else f"{n} images of {w}x{h} at once"
        check_memory(
            BASE_BYTES + n * h * w * per,
            f"{what} in {nb} band(s)",
            "detect it in overlapping parts (cutouts of a few thousand pixels a side)",
        )

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
    # Every method also takes ``background`` ("auto": subtract a sky left in; "none") and
    # ``gain`` (e-/ADU, for images in ADU): see :mod:`probcat.background`; and ``seeing``
    # ("auto", "none" or a PSF width ratio: the star/galaxy classes' seeing, see detect());
    # and ``mask`` (pixels without data, one per image: see detect() and probcat.masking);
    # and ``zeropoint`` (the image's depth, for the probabilities' calibration: see detect()).
    def catalog(self, images, *, noise_sigma=None, threshold: float = 0.5, **opts):
        """MAP catalog(s): detections with marginal probability > ``threshold`` (paper 000
        section 4.2), with posterior mean centroids and their standard deviations (pixels),
        star/galaxy probabilities; ``ra, dec`` from a celestial WCS."""
        return self._run(images, noise_sigma, opts, threshold=threshold)[0]

    def probability_map(self, images, *, noise_sigma=None, **opts) -> np.ndarray:
        """Per-tile marginal detection probability ``(nty, ntx)`` (``(B, nty, ntx)`` for
        several images)."""
        # the map is the network's marginals, whatever the rescue of bright objects adds
        opts = {"rescue_bright": False, **opts}
        return self._run(images, noise_sigma, opts, threshold=0.5)[1]

    def sample(
        self, images, n: int, *, seed: int = 0, noise_sigma=None, progress: bool = False, **opts
    ):
        """``n`` posterior catalog samples (paper 000 section 4.6) of each image: a list of
        catalogs (a list of such lists for several images). Seeded: the same seed gives the
        same samples, each from a random stream of its own, so that the first ``k`` samples
        of ``n`` are those of ``k``; on another device (a GPU) or CPU the same numbers, and
        where float rounding there moves a draw across its probability, that source and
        the neighbours decided after it differ, not the rest. ``progress``: a progress bar
        over the samples. With ``rescue_bright`` (the default) the MAP decoding and its
        rescue of bright objects run first (at threshold 0.5), and the samples hold the
        rescued objects as :func:`detect`'s do."""
        return self._run(
            images, noise_sigma, opts, samples=n, seed=seed, want_map=False, progress=progress
        )[2]

    def detect(
        self,
        image,
        *,
        noise_sigma=None,
        threshold: float = 0.5,
        samples: int = 0,
        seed: int = 0,
        progress: bool = False,
        **opts,
    ):
        """MAP catalog, probability map and (with ``samples``) posterior samples of one image
        (or a list of results for several); ``progress``: a progress bar over the samples."""
        cats, _, draws, tiles, batch = self._run(
            image, noise_sigma, opts, threshold=threshold, samples=samples, seed=seed,
            full=True, progress=progress,
        )  # fmt: skip
        cats = [cats] if batch.single else cats
        draws = [draws] if batch.single else draws
        out = [DetectionResult(c, t, d, w) for c, t, d, w in zip(cats, tiles, draws, batch.wcs)]
        return out[0] if batch.single else out

    def _run(self, images, noise_sigma, opts: dict, **kw):
        """:meth:`_read` of ``images``, with a warning where a stated ``real_shapes`` met
        images whose calibration has no map for it (once for the whole call)."""
        out = self._read(images, noise_sigma, opts, **kw)
        stated = opts.get("real_shapes")
        if stated is None or isinstance(stated, str) or not kw.get("want_map", True):
            return out
        cats = out[0] if isinstance(out[0], list) else [out[0]]
        unused = sum(1 for c in cats if c is not None and "real_shapes_probability" not in c.meta)
        if unused:
            n = len(cats)
            which = (
                "the image"
                if n == 1
                else "the images"
                if unused == n
                else f"{unused} of the {n} images"
            )
            warn_user(
                f"real_shapes has no effect on {which}: the weights' probability calibration "
                f"at {'its' if n == 1 else 'their'} seeing and depth has no map for galaxies "
                "unlike the prior's (docs/robustness.md, Evidence from many images)"
            )
        return out

    def _read(
        self,
        images,
        noise_sigma,
        opts: dict,
        *,
        threshold=0.5,
        samples=0,
        seed=0,
        want_map=True,
        full=False,
        progress=False,
    ):
        """The work of :meth:`_run`: MAP catalogues, probability maps, posterior samples
        (and, ``full``, the tile marginals and the batch)."""
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float, np.number))
            or not 0.0 <= threshold < 1.0
        ):
            raise ProbcatValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
        check_samples(samples)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ProbcatValueError(f"seed must be an integer, got {seed!r}")
        if not 0 <= seed < 2**63:
            raise ProbcatValueError(f"seed must lie in [0, 2^63), got {seed}")
        from probcat.infer.reliability import EVIDENCE_KINDS, check_evidence

        opts = dict(opts)
        seeing = opts.pop("seeing", "auto")
        rescue = _check_flag(opts.pop("rescue_bright", True), "rescue_bright")
        evidence = {k: check_evidence(opts.pop(k, None), k) for k in EVIDENCE_KINDS}
        source = opts.pop("_evidence_from", "stated")  # where the given weights come from
        unknown = set(opts) - {"background", "gain", "mask", "zeropoint"}
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        fixed = seeing_option(seeing)  # a given ratio; None for "auto" and "none"
        seeing = "auto" if seeing == "auto" else "given"
        # images may be a _Batch already prepared (photoz: the image read once for all bands)
        batch = images if isinstance(images, _Batch) else self._prepare(images, noise_sigma, opts)
        self._check_memory(batch)
        given = {"seeing": fixed if seeing == "given" else seeing, "rescue_bright": rescue}
        if len(batch.x) == 1:  # one image: pooled, its own evidence
            evidence = {k: None if v == "pooled" else v for k, v in evidence.items()}
        if "pooled" in evidence.values():  # read every image's evidence first
            evidence, source = self._pooled_evidence(batch, given, evidence, threshold)
        routed = self._routed(batch)
        if routed is not None:  # bands partly without data: the masked weights read those
            return self._run_routed(
                batch, routed, {**given, **evidence, "_evidence_from": source},
                threshold=threshold, samples=samples, seed=seed, want_map=want_map, full=full,
                progress=progress,
            )  # fmt: skip
        kw = dict(
            fixed=fixed, seeing=seeing, rescue=rescue, threshold=threshold, samples=samples,
            seed=seed, want_map=want_map, full=full, progress=progress,
            evidence={**evidence, "evidence_from": source},
        )  # fmt: skip
        todo = self._sky_candidates(batch)
        if not todo:
            return self._run_batch(batch, **kw)
        # a sky subtracted with the prior's faint-galaxy offset: read the image's density
        # on a MAP catalogue first (the requested one, when it holds no samples), then
        # read again with the sky the density implies where it differs
        probe = kw if not samples else {**kw, "samples": 0, "want_map": True, "full": False}
        got = self._run_batch(batch, **probe)
        cats = [got[0]] if batch.single else got[0]
        shifted = self._sky_at_density(batch, cats, todo)
        if shifted is None and probe is kw:
            for k in todo:  # what was found, where nothing was shifted
                cats[k].meta["input"] = {**cats[k].meta["input"], **batch.info[k]}
            return got
        return self._run_batch(batch if shifted is None else shifted, **kw)

    def _pooled_evidence(self, batch: _Batch, given: dict, evidence: dict, threshold):
        """``(evidence, source)``: ``evidence`` (the ``real_shapes`` and ``cutout`` options)
        with each ``"pooled"`` replaced by what the MAP catalogues of all the images of
        ``batch`` say together (:func:`probcat.infer.reliability.pooled_evidence`; None
        where no image has evidence of that kind), and how many images that was. The
        images are read once for it, as by :meth:`catalog` (``given``: the seeing and
        rescue options), each weighted by its own detections."""
        from probcat.infer.reliability import pooled_evidence

        probe = replace(batch, info=[dict(i) for i in batch.info])  # its records untouched
        own = {k: None if v == "pooled" else v for k, v in evidence.items()}
        cats = self._read(probe, None, {**given, **own}, threshold=threshold)[0]
        got = pooled_evidence(cats)  # several images (one reads its own evidence)
        out = {k: got[k] if v == "pooled" else v for k, v in evidence.items()}
        return out, f"pooled over {got['images']} images"

    def _sky_candidates(self, batch: _Batch) -> list[int]:
        """The images of ``batch`` whose sky :func:`probcat.background.prepare` subtracted
        with the weights' faint-galaxy offset, read at one noise everywhere (a noise map's
        rescaling would scale the shift too), and either large enough for the density
        calibration to read (:data:`~probcat.infer.density.MIN_AREA`) or at another depth
        than the survey's where the weights recorded the offset at other depths: their sky
        depends on their source density and depth
        (:func:`probcat.infer.density.sky_shift`). None of them while
        :attr:`sky_at_density` is False; only the depth's while :attr:`density_calibration`
        is None."""
        from probcat.infer.density import MIN_AREA

        if not self.sky_at_density:
            return []
        dense = self.density_calibration is not None  # off: the prior's density
        deep = bool(((self.manifest or {}).get("sky_offset") or {}).get("depths"))
        h, w = batch.x.shape[-2:]
        out = []
        for k, info in enumerate(batch.info):
            if (
                info.get("background") != "subtracted"
                or not info.get("sky_offset")
                or info.get("noise_map")
                or "sky_density" in info
            ):
                continue
            masked = batch.masked[k]
            bad = 0 if masked is None else int(np.asarray(masked).reshape(-1, h, w).any(0).sum())
            g = _noise_scale(info)  # another depth: the lift recorded there
            other_depth = deep and g is not None and abs(np.log(g)) > 0.01
            if (dense and h * w - bad >= MIN_AREA) or other_depth:
                out.append(k)
        return out

    def _sky_lift(self, noise_factor: float):
        """The faint galaxies' lift of the sky estimate at the prior's density (noise sigma
        per band) that the weights recorded at the depth ``noise_factor`` (a depth their
        probabilities are calibrated at: ``sky_offset["depths"]``), or None: at the
        survey's depth, or where none was recorded (the survey's ``sky_offset`` then)."""
        for rec in ((self.manifest or {}).get("sky_offset") or {}).get("depths") or ():
            lift = rec.get("per_band") or ()
            if np.isclose(rec.get("noise_factor", 0), noise_factor) and len(lift) == len(
                self.bands
            ):
                return np.asarray(lift, float)
        return None

    def _sky_at_density(self, batch: _Batch, cats: list, todo: list[int]) -> _Batch | None:
        """``batch`` with images ``todo`` shifted by :func:`probcat.infer.density.sky_shift`
        at the density their MAP catalogues ``cats`` read and at the depth of their
        probabilities' calibration (:meth:`_sky_lift`; each image's ``info`` records
        ``sky_density``: the mean factor, the depth where it is not the survey's, and the
        shift, noise sigma per band, and its ``sky_median`` the sky now taken off,
        electrons), or None where no shift reaches
        :data:`~probcat.infer.density.SKY_SHIFT_TOL` (the records made all the same)."""
        from probcat.infer.density import SKY_SHIFT_TOL, mean_factor, sky_shift

        x, any_shift = None, False
        for k in todo:
            info = batch.info[k]
            f = mean_factor(cats[k].meta)
            # the depth of the probabilities' calibration, and the lift recorded there
            depth = float(cats[k].meta.get("input", {}).get("calibration_noise", 1.0))
            lift = self._sky_lift(depth)
            if f is None and lift is None:  # no density read, the survey's depth
                batch.info[k] = {**info, "sky_density": {"applied": False}}
                continue
            d = sky_shift(info["sky_offset"], 1.0 if f is None else f, lift)
            big = bool(np.any(np.abs(d) >= SKY_SHIFT_TOL))
            rec = {"applied": big, "factor": 1.0 if f is None else round(f, 4)}
            if f is None:  # the image's density not read: the prior's
                rec["density_read"] = False
            if lift is not None:
                rec["noise_factor"] = depth
            rec["shift_sigma"] = [round(float(v), 5) for v in d]
            new = {**info, "sky_density": rec}
            if big:
                if x is None:
                    x = np.array(batch.x, np.float32, copy=True)
                masked = batch.masked[k]
                keep = 1.0 if masked is None else ~np.broadcast_to(masked, x.shape[1:])
                x[k] -= (d[:, None, None] * keep).astype(np.float32)
                unit = info.get("sigma_e") or ()
                if len(unit) == len(d):  # the sky now taken off, electrons
                    new["sky_median"] = [
                        round(float(m + v * u), 6) for m, v, u in zip(info["sky_median"], d, unit)
                    ]
                any_shift = True
            batch.info[k] = new
        if not any_shift:
            return None
        return replace(batch, x=x, info=list(batch.info))

    def _run_batch(
        self,
        batch: _Batch,
        *,
        fixed,
        seeing: str,
        rescue: bool,
        threshold,
        samples,
        seed,
        want_map,
        full,
        progress,
        evidence,
    ):
        """:meth:`_run` of a prepared ``batch`` (``fixed``: a given seeing ratio or None;
        ``seeing``: ``"auto"`` or ``"given"``; ``rescue``: the rescue of bright objects;
        ``evidence``: the probability calibration's image-level weights, ``real_shapes``
        and ``cutout``, stated or pooled, for :func:`~probcat.infer.reliability.annotate`)."""
        import torch

        from probcat.infer.calibration import CentroidCalibration
        from probcat.infer.detect import (
            at_depth,
            at_seeing,
            catalog_from_decisions,
            decode,
            map_meta,
            matched_scale,
            measured_scale,
            sample_catalogs,
        )
        from probcat.infer.reliability import annotate, calibration_for
        from probcat.runtime import full_float32, thread_limit

        shape = batch.x.shape[-2:]
        bands = self.survey.band_names
        # weights with a second centroid calibration: samples need their image's mixture
        mix = (
            bool(samples)
            and getattr(self.net, "real_shapes_centroid_calibration", None) is not None
        )
        # samples thinned to the image's source density, read on its MAP catalogue
        thin = bool(samples) and self.density_calibration is not None
        cats, maps, draws, tiles = [], [], [], []
        with thread_limit(self._threads(batch)), full_float32(), torch.no_grad():
            for sl in self._groups(batch):
                feats, pixels = self._features(batch.x[sl])
                scales = [fixed] * feats.shape[0]  # the stamp classifier's seeing, per image
                cals = [None] * feats.shape[0]  # the samples' centroid calibration, per image
                held = [{}] * feats.shape[0]  # the samples' rescued tiles, per image
                dens = [None] * feats.shape[0]  # the samples' density thinning, per image
                # auto: seeing measured on the MAP; mix: the samples' positions follow the
                # centroid calibration of the MAP catalogue (its image's mixture); rescue:
                # the samples hold the bright objects the MAP catalogue rescues
                if want_map or (samples and (seeing == "auto" or mix or rescue or thin)):
                    with at_seeing(self.net, fixed):
                        dec = decode(self.net, feats, image=pixels, threshold=threshold)
                    meta = map_meta(self.net, threshold)
                    for k in range(feats.shape[0]):
                        masked = batch.masked[sl.start + k]
                        c = _with_mask(catalog_from_decisions(
                            dec, k, dec.marginal, shape, self.net.tile_size, bands, meta
                        ), masked)  # fmt: skip
                        force = None  # tiles decided to hold a bright object's source
                        if rescue:
                            c, force = self._rescue(
                                c, batch.x[sl.start + k], feats, pixels, dec, k, threshold,
                                fixed, meta, masked,
                            )  # fmt: skip
                        # the decode's arguments for those tiles (and where they are)
                        forced = {} if force is None else dict(zip(("force", "force_locs"), force))
                        if force is not None and samples:
                            held[k] = {
                                "force": force[2] > 0, "force_locs": force[1],
                                "force_prob": force[2],
                            }  # fmt: skip
                        checked, ratio = self._seeing(batch.x[sl.start + k], c)
                        if seeing == "auto":
                            scales[k] = measured_scale(ratio)
                        if want_map and scales[k] != fixed:
                            # the same detections (decisions never read the classes),
                            # classified from stamps at the image's seeing
                            with at_seeing(self.net, ratio):
                                one = decode(
                                    self.net, feats[k : k + 1], image=pixels[k : k + 1],
                                    threshold=threshold, **forced,
                                )  # fmt: skip
                            # the same decisions, the same rows, in order: the rescue's
                            # column and, where it decided tiles, their probabilities
                            kept = {n: c[n] for n in ("bright_rescue",) if n in c.colnames}
                            if force is not None:
                                kept["prob"] = c["prob"]
                            c = _with_mask(catalog_from_decisions(
                                one, 0, one.marginal, shape, self.net.tile_size, bands, meta
                            ), masked).with_columns(**kept)  # fmt: skip
                        if not (want_map or mix or thin):
                            continue
                        used = matched_scale(scales[k])
                        noise = _noise_scale(batch.info[sl.start + k])
                        # the calibration of its seeing and depth
                        with at_seeing(self.net, scales[k]), at_depth(self.net, noise):
                            c = annotate(c, self.net, feats[k], pixels[k], **evidence)
                        if mix and "centroid_calibration" in c.meta:
                            cals[k] = CentroidCalibration.from_dict(c.meta["centroid_calibration"])
                        factor, depth, _ = calibration_for(self.net, used, noise)
                        if thin:
                            dens[k] = (c, masked, factor, depth)
                        if not want_map:
                            continue
                        self._warn_seeing(ratio, used != 1.0, factor, checked)
                        c = self._at_density(c, masked, factor, depth, threshold)
                        info = {
                            **batch.info[sl.start + k],
                            **checked,
                            "seeing_matched": round(used, 3),
                            "calibration_seeing": factor,
                        }
                        if depth != 1.0:  # a calibration fitted at another depth
                            info["calibration_noise"] = depth
                        # each catalog its own metadata (the decoder's dict is shared)
                        c = replace(c, meta={**c.meta, "input": info})
                        cats.append(_with_sky(c, batch.wcs[sl.start + k]))
                        tiles.append(dec.marginal.at(slice(k, k + 1)))
                    if want_map:
                        maps.append(dec.marginal.prob.cpu().numpy())
                for k in range(feats.shape[0]) if samples else ():
                    gen = torch.Generator().manual_seed(seed)
                    wcs = batch.wcs[sl.start + k]
                    with at_seeing(self.net, scales[k]):
                        got = sample_catalogs(
                            self.net,
                            feats[k : k + 1],
                            shape,
                            samples,
                            image=pixels[k : k + 1],
                            generator=gen,
                            bands=bands,
                            progress=progress,
                            centroid_calibration=cals[k],
                            **held[k],
                        )
                    masked = batch.masked[sl.start + k]
                    got = [_with_mask(c, masked) for c in got]
                    if dens[k] is not None:
                        got = self._thin(got, *dens[k], seed=seed)
                    draws.append([_with_sky(c, wcs) for c in got])
                if samples == 0:
                    draws += [[] for _ in range(feats.shape[0])]
        prob = np.concatenate(maps) if maps else None
        if batch.single:
            out = (cats[0] if cats else None, None if prob is None else prob[0], draws[0])
        else:
            out = (cats, prob, draws)
        return (*out, tiles, batch) if full else out


# the noise as a flux over the survey's outside which an image's zeropoint is suspect:
# 1,000 years of LSST and about twice a single visit's noise
DEPTH_PLAUSIBLE = (0.1, 30.0)


def _area(cat, masked) -> int:
    """The pixels with data of a catalogue's image (``masked``: those without, or None)."""
    h, w = cat.image_shape
    return h * w - (0 if masked is None else int(np.sum(masked)))


def _noise_scale(info: dict) -> float | None:
    """The noise as a flux over the survey's of an image read by a detector (the geometric
    mean over its bands of ``info["noise_over_survey"]``); None where its depth is unknown."""
    v = np.asarray([x for x in info.get("noise_over_survey") or () if x is not None], float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.log(v).mean())) if len(v) else None


_KINDS = {"autoencoder": "deblender"}  # autoencoder weights deblend too
_KIND_WORDS = {"detection": "detection", "deblender": "deblender", "photoz": "photo-z"}


def load(name_or_path=None, *, device=None, threads="auto", kind=None):
    """A model from the weights registry: a shipped name (default ``"detection_lsst_i"``;
    :func:`probcat.weights.names` lists them) or a weights file (``detection.pt`` of a
    training run). Checks the file's sha256 against its manifest. Detection weights give a
    :class:`Detector`, deblender (and autoencoder) weights a :class:`Deblender`, photo-z weights a
    :class:`~probcat.redshift.estimator.PhotozEstimator`. ``kind`` (``"detection"``,
    ``"deblender"`` or ``"photoz"``): a clear error for weights of another kind. A model
    already loaded is returned as it is (on its own device and threads), so every
    ``weights=``, ``deblender=``, ``estimator=`` and ``detector=`` argument takes one.

    Example:
        >>> det = probcat.load()                                # doctest: +SKIP
        >>> det.catalog("field.fits")                           # doctest: +SKIP
    """
    from probcat.redshift.estimator import PhotozEstimator
    from probcat.weights import load as load_weights

    loaded = {Detector: "detection", Deblender: "deblender", PhotozEstimator: "photoz"}
    have = next((k for c, k in loaded.items() if isinstance(name_or_path, c)), None)
    w = None if have else load_weights(name_or_path)
    have = have or _KINDS.get(w.kind, w.kind)
    if kind is not None and have != kind:
        if kind not in _KIND_WORDS:
            raise ProbcatValueError(f"kind must be one of {', '.join(_KIND_WORDS)}, got {kind!r}")
        what = name_or_path if w is None else name_or_path or w.path
        raise ProbcatValueError(
            f"{what}: {_KIND_WORDS.get(have, have)} weights, not {_KIND_WORDS[kind]} weights"
        )
    if w is None:
        return name_or_path
    if w.kind in ("deblender", "autoencoder"):
        return Deblender(w.model, w.survey, w.manifest, device=device, threads=threads)
    if w.kind == "photoz":
        return PhotozEstimator(w.model, w.survey, w.manifest, device=device, threads=threads)
    if w.kind != "detection":
        raise ProbcatValueError(f"{w.path}: {w.kind!r} weights have no Python entry point yet")
    return Detector(w.model, w.survey, w.manifest, device=device, threads=threads)


def seeing_option(seeing) -> float | None:
    """The PSF width ratio given by a ``seeing`` option (None for ``"auto"`` and
    ``"none"``/None); a clear error for anything else."""
    from probcat.infer.detect import SEEING_RANGE

    if seeing is None or (isinstance(seeing, str) and seeing in ("auto", "none")):
        return None
    try:
        value = float("nan") if isinstance(seeing, bool) else float(seeing)
    except (TypeError, ValueError):
        value = float("nan")
    lo, hi = SEEING_RANGE
    if not lo <= value <= hi:
        raise ProbcatValueError(
            "seeing must be 'auto', 'none' or the image's PSF width over the weights' survey "
            f"PSF, a number in [{lo:g}, {hi:g}]"
        )
    return value


def detect(
    image,
    survey=None,
    *,
    noise_sigma=None,
    weights=None,
    threshold: float = 0.5,
    samples: int = 0,
    seed: int = 0,
    background: str = "auto",
    gain=None,
    seeing="auto",
    device=None,
    threads="auto",
    progress: bool = False,
    mask=None,
    zeropoint=None,
    rescue_bright: bool = True,
    real_shapes=None,
    cutout=None,
) -> DetectionResult:
    """Detect and classify sources in an image of any size.

    Args:
        image: a FITS path, an :class:`~probcat.io.ImageData` or an array ``(bands, H, W)``
            / ``(H, W)`` in electrons, background-subtracted (a list gives a list).
        survey: the image's survey (band order); default: the weights'.
        noise_sigma: per-band background noise sigma in electrons; default: the FITS
            ``NOISE`` keyword, else the survey's (but a band's measured pixel noise where
            the survey's is more than 5% off it, with a warning); ``"measured"``:
            the image's own pixel noise (sources masked) in every band.
        weights: a registered name, a weights file or a loaded :class:`Detector`; default:
            the shipped LSST-i encoder.
        threshold: detection probability threshold of the MAP catalog.
        samples: number of posterior catalog samples to draw (seeded by ``seed``).
        background: ``"auto"`` subtracts a smooth sky when the image still has one (the
            catalog's metadata says what was done), ``"none"`` leaves the image alone
            (:mod:`probcat.background`).
        gain: e-/ADU for an image in ADU (default: its ``GAIN`` keyword, when ``BUNIT`` is
            not electrons).
        seeing: ``"auto"`` reads the star/galaxy classes at the image's own seeing (its
            PSF width measured on its stellar locus, ``seeing_ratio`` in the catalog's
            metadata; the survey's seeing without enough bright stars; stamps resampled
            to the survey's seeing when it differs by more than 3%); ``"none"`` at the
            weights' survey seeing; a number: the image's
            PSF FWHM over the survey's. The detection probabilities take the calibration
            fitted nearest that seeing and the image's depth, where the weights carry
            several (``docs/robustness.md``, *Seeing* and *Depth*).
        device, threads: see :class:`Detector`.
        progress: a progress bar over the posterior samples.
        mask: pixels without data, ``(H, W)`` or ``(bands, H, W)``, True or nonzero
            masks (a list for a list of images); NaN and inf pixels are masked too. They
            hold no light or noise for the network, and each row's ``mask_fraction`` says
            how much of its 5-px aperture they are (:mod:`probcat.masking`).
        zeropoint: AB magnitude of a flux of 1 in the image's units (one, or one per
            band); default: the file's (a flux-density ``BUNIT`` such as nJy, ``MAGZERO``,
            ``MAGZP``, ``PHOTZP``, ``FLUXMAG0``, or probcat's ``ZEROPT`` and ``EXPTIME``).
            With it the image's depth is known, its noise as a flux over the survey's
            (``noise_over_survey`` in the catalog's metadata), and the probabilities take
            the calibration fitted nearest that depth; pixels in electrons without one are
            read as of an unknown exposure, with the survey's.
        rescue_bright: give a detection to each bright object (SEP, SNR 50 or more, 100 px
            or more) left without one, decided by the network where its centre is
            (``bright_rescue`` column; :mod:`probcat.infer.bright`): the brightest clumpy,
            irregular and real galaxies of a field, which the tile probabilities spread too
            thin, at a small cost in precision (``docs/robustness.md``, *Bright galaxies*).
            Posterior samples hold each such source as often as its ``prob`` before
            calibration says, at the same proposed centre. False: the network's decisions
            alone (as before 0.1.0).
        real_shapes, cutout: the probability calibration's two image-level weights, where
            the weights carry those maps: the share of the image's galaxies unlike the
            prior's (real galaxies: the map fitted on Hubble Deep Field galaxies, each
            detection weighted by how unusual it looks) and the probability that the image
            is a survey cutout (sources beyond its edges) rather than an isolated scene.
            None: each image's own detections decide (``real_shapes_probability`` and
            ``cutout_probability`` in the catalog's metadata; a small image keeps close to
            the prior); ``"pooled"``: for a list of images of one survey, all their
            detections decide together (they are read twice); a number in [0, 1]:
            stated, e.g. ``real_shapes=1`` for real galaxies
            (``docs/robustness.md``, *Evidence from many images*).

    Example:
        >>> res = probcat.detect("field.fits")                    # doctest: +SKIP
        >>> res.catalog.write("catalog.fits", wcs=res.wcs)        # doctest: +SKIP
    """
    det = load(weights, device=device, threads=threads, kind="detection")
    if survey is not None:
        det.survey = survey
    return det.detect(
        image,
        noise_sigma=noise_sigma,
        threshold=threshold,
        samples=samples,
        seed=seed,
        background=background,
        gain=gain,
        seeing=seeing,
        progress=progress,
        mask=mask,
        zeropoint=zeropoint,
        rescue_bright=rescue_bright,
        real_shapes=real_shapes,
        cutout=cutout,
    )


DEFAULT_DEBLENDER = "deblender_lsst_i"


@dataclass
class DeblendResult:
    """Output of :func:`deblend` / :meth:`Deblender.measure`.

    Attributes:
        catalog: the detections with their deblended measurements: ``flux_ap``,
            ``flux_ap_err``, ``mag_ap``, ``mag_ap_err`` (5-px aperture, per band), ``T``,
            ``e1``, ``e2``, ``moments_ok`` (adaptive moments, first band), ``blendedness``
            (per band, on the models: :func:`probcat.infer.deblend.blendedness`), ``edge``
            (aperture leaves the image); with posterior samples the flux posterior per
            band: ``flux_mean``, ``flux_sd``, ``flux_q025, flux_q16, flux_q50, flux_q84,
            flux_q975`` and
            ``p_match`` (fraction of samples that hold the source); ``mask_fraction`` (the
            share of the aperture without data, :mod:`probcat.masking`).
        model: the scene model ``(bands, H, W)`` in electrons (every source's model).
        residual: image minus model ``(bands, H, W)``.
        models: the per-source models (:class:`probcat.infer.deblend.Models`).
        detection: the :class:`DetectionResult` the sources came from (:func:`deblend`).
        wcs: the image's WCS, or None.
    """

    catalog: FullCatalog
    model: np.ndarray
    residual: np.ndarray
    models: object
    detection: DetectionResult | None = None
    wcs: object = None


class Deblender:
    """The deblending encoder and decoder (paper 000 section 3.4), from :func:`load`.

    :meth:`measure` reconstructs every source of a catalog (galaxies through the
    deblender, stars as the PSF), builds the scene model and measures each source on its
    own light; given posterior catalog samples it also gives flux posteriors that carry the
    detection uncertainty (paper 000 section 4.6) and the aperture's pixel noise.

    Args:
        net: the :class:`~probcat.nets.deblend.GalaxyModel`.
        survey: the survey the weights were trained for.
        manifest: the weights' manifest, if any.
        device, threads: as for :class:`Detector`.
    """

    def __init__(self, net, survey, manifest=None, *, device=None, threads="auto"):
        from probcat.runtime import place

        net, self.device = place(net, device, threads)
        self.net, self.survey, self.manifest, self.threads = net, survey, manifest, threads

    def __repr__(self) -> str:
        name = (self.manifest or {}).get("weights", "custom weights")
        return f"Deblender({name}, bands={''.join(self.survey.band_names)!r})"

    def flux_error_scale(self, method: str = DEFAULT_METHOD) -> float:
        """The share of the neighbours' light in an aperture that the flux errors of
        ``method`` add (:func:`probcat.measure.flux_sd`), fitted on validation scenes and
        recorded in the manifest (``flux_error.scales``; weights fitted for ``subtract``
        only record ``scale``, used for both); 0 (pixel noise only) when not recorded."""
        rec = (self.manifest or {}).get("flux_error") or {}
        return float((rec.get("scales") or {}).get(method, rec.get("scale", 0.0)))

    @inference_entry
    def measure(
        self,
        image,
        catalog: FullCatalog,
        *,
        noise_sigma=None,
        samples=None,
        method: str = DEFAULT_METHOD,
        match_px: float = 2.0,
        background: str = "auto",
        gain=None,
        sky_offset=None,
        passes: int | None = None,
        amplitudes: bool = True,
        progress: bool = False,
        mask=None,
        zeropoint=None,
        wings: bool = True,
    ) -> DeblendResult:
        """Deblend the sources of ``catalog`` (``x, y`` and ``galaxy`` or ``galaxy_prob``)
        in ``image`` (FITS path, :class:`~probcat.io.ImageData` or array in electrons) and
        measure them; ``samples``: posterior catalog samples of the same image for flux
        posteriors; ``method``: ``"conserve"`` (the default: the data shared among the
        sources in proportion to their models, as scarlet and SDSS Photo do) or
        ``"subtract"`` (residual images: the data minus the other sources' models, the
        paper's);
        ``passes``: refinement rounds of the galaxy models
        (:func:`probcat.infer.deblend.refine_stamps`; default one, 0 for the paper's single
        pass);
        ``amplitudes``: fit every model's amplitude jointly to the image
        (:func:`probcat.infer.deblend.fit_amplitudes`; default; False for the deblender's
        models as they are, the paper's);
        ``background``, ``gain``: as for detection (:mod:`probcat.background`);
        ``sky_offset``: the one the detector used (:attr:`Detector.sky_offset`, less the
        shift at the image's source density its catalogue's ``meta["input"]["sky_density"]``
        records: :func:`deblend` passes it), so that a sky left in the image is subtracted
        as detection subtracted it;
        ``progress``: a progress bar over the posterior samples;
        ``mask``: pixels without data, as for detection (:mod:`probcat.masking`): they hold
        no light in the measurements, and ``mask_fraction`` says how much of each aperture
        they are;
        ``zeropoint``: the AB magnitude of a flux of 1 in the image's units (a number or
        one per band) for ``mag_ap``; default: the file's (a flux-density ``BUNIT`` such as
        nJy, or a ``MAGZERO``, ``MAGZP``, ``PHOTZP`` or ``FLUXMAG0`` keyword:
        :class:`probcat.io.ImageData`), else, for electrons, the survey's band zeropoint and
        exposure time (``mag_ap`` is NaN for other units without one);
        ``wings``: the light of big galaxies and bright stars beyond their models' stamps
        (fitted: :func:`probcat.infer.deblend.galaxy_wings`; the PSF's:
        :func:`~probcat.infer.deblend.star_wings`) is taken out of the image the sources are
        deblended and measured on (a faint neighbour in a big galaxy's outskirts no longer
        gets that light as its own) and added to the scene model (default; False for the
        models' stamps alone).
        """
        from probcat.infer.deblend import (
            REFINE_PASSES,
            _xyg,
            check_method,
        )
        from probcat.masking import aperture_fraction
        from probcat.measure import APERTURE_RADIUS, flux_posterior, flux_sd
        from probcat.runtime import full_float32, thread_limit, threads_for

        check_method(method)
        if not (match_px > 0 and np.isfinite(match_px)):
            raise ProbcatValueError(f"match_px must be positive, got {match_px}")
        passes = REFINE_PASSES if passes is None else _check_passes(passes)
        amplitudes = _check_flag(amplitudes, "amplitudes")
        for name in ("x", "y"):
            if name not in catalog:
                raise ProbcatValueError(f"the catalog has no {name!r} column")
        if isinstance(image, (str, Path)):
            from probcat.io import read_image

            image = read_image(image)
        # measured on the image as it is (a varying noise not rescaled away: fluxes in the
        # image's units), with each source's error from the noise where it is
        x, wcs, sigma, info, masked = read_input(
            image, self.survey, noise_sigma, background=background, gain=gain,
            sky_offset=sky_offset, mask=mask, whiten=False, zeropoint=zeropoint,
            correlated_noise_ok=True,  # the detector's to say; the errors allow for it
        )  # fmt: skip
        unit = info.get("flux_unit", "electron")
        zps = info.get("zeropoint") or [None] * len(self.survey.bands)
        img = x * sigma[:, None, None]
        nb, h, w = img.shape
        cx, cy, gal = _xyg(catalog)
        ok = np.isfinite(cx) & np.isfinite(cy)
        if not ok.all():
            raise ProbcatValueError("the catalog has non-finite x or y")
        n = len(cx)
        wings = _check_flag(wings, "wings")
        opts = dict(method=method, match_px=match_px, passes=passes, amplitudes=amplitudes,
                    wings=wings, progress=progress)  # fmt: skip
        _check_deblend_memory(cx, cy, img.shape, self.net.out_size, bool(samples))
        with thread_limit(threads_for(self.threads, h * w)), full_float32():
            if max(h, w) <= DEBLEND_WHOLE_PX:
                part = self._deblend_part(img, sigma, cx, cy, gal, masked, samples, opts)
                model = part.pop("model")
            else:
                part, model = self._deblend_in_parts(img, sigma, cx, cy, gal, masked, samples,
                                                     opts)  # fmt: skip
        full = img  # the image: the residual is the data less the scene model
        models, flux, contam, wing_ap = (part[k] for k in ("models", "flux", "contam", "wing_ap"))
        blend, mom = part["blend"], part["mom"]
        area = np.pi * APERTURE_RADIUS**2
        scale = self.flux_error_scale(method)
        local = _local_noise(image, self.survey.band_names, masked, cx, cy)
        correlated = _aperture_noise_factors(x, info)
        noise = sigma * np.sqrt(area) * local * correlated
        flux_err = np.array(flux_sd(noise, contam, scale))
        mags = np.stack(
            [ab_mag(b, flux[:, k], unit, zps[k]) for k, b in enumerate(self.survey.bands)], 1
        ).reshape(n, nb)
        r = APERTURE_RADIUS
        edge = (cx - r < -0.5) | (cy - r < -0.5) | (cx + r > w - 0.5) | (cy + r > h - 0.5)
        cols = dict(
            flux_ap=flux,
            flux_ap_err=flux_err,
            mag_ap=mags,
            mag_ap_err=mag_error(flux, flux_err, mags),
            T=mom["T"],
            e1=mom["e1"],
            e2=mom["e2"],
            moments_ok=mom["ok"],
            blendedness=blend,
            edge=edge,
            mask_fraction=aperture_fraction(masked, cx, cy),
        )
        if samples:
            vals, vcon = part["vals"]
            vcon = vcon + wing_ap[:, None]  # as for contam in _deblend_part
            parts = [
                flux_posterior(vals[:, :, k], noise[:, k], vcon[:, :, k], scale) for k in range(nb)
            ]
            for key in parts[0]:
                if key == "p_match":
                    cols["p_match"] = parts[0][key]
                else:
                    cols[f"flux_{key}"] = np.stack([p[key] for p in parts], 1)
        cat = catalog.with_columns(**cols)
        cat.meta["deblend"] = {  # how the columns were measured, kept in the written file
            "weights": (self.manifest or {}).get("weights", "custom weights"),
            "method": method,
            "refine_passes": passes,
            "amplitudes_fitted": amplitudes,
            "flux_error_scale": scale,
            "posterior_samples": len(samples or ()),
        }
        # the units the fluxes, model and residual are in, for the files they are written to
        cat.meta["deblend"]["noise_sigma"] = [float(v) for v in sigma]
        if np.any(correlated != 1.0):  # the aperture noise of correlated pixel noise
            cat.meta["deblend"]["aperture_noise_factor"] = [round(float(v), 4) for v in correlated]
        cat.meta["deblend"]["flux_unit"] = unit
        if "zeropoint" in info:  # what mag_ap was read with
            cat.meta["deblend"]["zeropoint"] = info["zeropoint"]
            cat.meta["deblend"]["zeropoint_source"] = info["zeropoint_source"]
        if len(part["winged"]) + len(part["stars_winged"]):
            cat.meta["deblend"]["wing_galaxies"] = len(part["winged"])
            cat.meta["deblend"]["wing_stars"] = len(part["stars_winged"])
        return DeblendResult(cat, model, full - model, models, None, wcs)

    def _deblend_part(self, img, sigma, cx, cy, gal, masked, samples, opts: dict) -> dict:
        """The deblending and measurements of :meth:`measure` on ``img`` ``(bands, H, W)``
        in electrons (the whole image, or a window of it) for the sources at ``(cx, cy)``
        (galaxies ``gal``) and the posterior ``samples`` (catalogs or ``(x, y, galaxy)``
        arrays), in the coordinates of ``img``: the models, the scene model (wings
        included), the aperture fluxes, the neighbours' light in each aperture, the wings'
        light there, blendedness, moments, the samples' fluxes and contamination, and how
        many galaxies and stars got a wing."""
        from probcat.baselines.rail import forced_photometry
        from probcat.infer.deblend import (
            aperture_fluxes,
            blendedness,
            fit_amplitudes,
            paste_models,
            reconstruct,
            sample_fluxes,
            source_images,
        )
        from probcat.measure import APERTURE_RADIUS, adaptive_moments

        method, amplitudes = opts["method"], opts["amplitudes"]
        n = len(cx)
        models = reconstruct(
            self.net, img, sigma, cx, cy, gal, survey=self.survey, device=self.device,
            passes=opts["passes"], amplitudes=amplitudes, mask=masked,
        )  # fmt: skip
        wing, winged, stars_winged = None, [], []
        if opts["wings"]:  # the stars' first: their PSF is known, a galaxy's wing is fitted
            wing, winged, stars_winged = _wings(img, models, sigma, self.survey, masked)
        if wing is not None:  # the wings are their sources': the rest share the rest
            img = img - wing
            if amplitudes:
                models = fit_amplitudes(img, models, sigma, mask=masked)
        model = paste_models(models, img.shape[1:])  # the scene model, pasted once
        ap = aperture_fluxes(img, models, np.arange(n), method=(method, "data"), total=model)
        flux = ap[method]
        # the neighbours' light (a wing in the aperture counts, as its source's model
        # would: taken out, but known no better than the models are)
        wing_ap = np.zeros_like(flux)  # the wing's light in each aperture
        if wing is not None:
            wing_ap = forced_photometry(wing, cx, cy, sigma, APERTURE_RADIUS)[0]
        contam = np.maximum(ap["data"] + wing_ap - flux, 0.0)
        own = source_images(img, models, method, total=model)
        if wing is not None:  # the scene model from here on: the wings are light too
            model += wing
        blend = blendedness(models, model)
        half = models.size // 2
        mom = adaptive_moments(own, half + (cx - models.cx), half + (cy - models.cy))
        del own
        vals = None
        if samples:
            vals = sample_fluxes(
                self.net, img, sigma, samples, cx, cy, survey=self.survey, method=method,
                match_px=opts["match_px"], device=self.device, contamination=True,
                passes=opts["passes"], amplitudes=amplitudes, mask=masked,
                progress=opts["progress"],
            )  # fmt: skip
        return dict(
            models=models, model=model, flux=flux, contam=contam, wing_ap=wing_ap,
            blend=blend, mom=mom, vals=vals, winged=np.asarray(winged, np.int64),
            stars_winged=np.asarray(stars_winged, np.int64),
        )  # fmt: skip

    def _deblend_in_parts(self, img, sigma, cx, cy, gal, masked, samples, opts: dict):
        """:meth:`_deblend_part` of a large image core by core (:func:`probcat.tiles.cores`:
        :data:`DEBLEND_CORE_PX` px, each worked on with :data:`DEBLEND_MARGIN_PX` px of
        the image around it and the sources there), keeping each core's sources and scene
        model: ``(part, model)`` as for the whole image, in its coordinates. The memory
        held at once is one window's work, and every source's model."""
        from probcat.infer.deblend import Models, _xyg
        from probcat.tiles import cores

        nb, h, w = img.shape
        n = len(cx)
        draws = [_xyg(c) for c in samples or ()]

        model = np.zeros_like(img)
        out, winged = None, {"winged": [], "stars_winged": []}
        parts = list(cores(h, w, DEBLEND_CORE_PX, DEBLEND_MARGIN_PX))
        for i, (box, win) in enumerate(parts):
            ya, yb, xa, xb = win
            near = np.flatnonzero(_in_box(cx, cy, (h, w), win))
            if not len(near):  # no light of any source in the core
                continue
            if opts["progress"]:
                label = f"deblending samples, part {i + 1} of {len(parts)}"
                opts = {**opts, "progress": label}
            mine = _in_box(cx[near], cy[near], (h, w), box)
            sub = [
                {"x": x[k] - xa, "y": y[k] - ya, "galaxy": g[k]}
                for x, y, g in draws
                for k in [_in_box(x, y, (h, w), win)]
            ]  # fmt: skip
            part = self._deblend_part(
                img[:, ya:yb, xa:xb], sigma, cx[near] - xa, cy[near] - ya, gal[near],
                None if masked is None else masked[ya:yb, xa:xb], sub, opts,
            )  # fmt: skip
            y0, y1, x0, x1 = box
            model[:, y0:y1, x0:x1] = part["model"][:, y0 - ya : y1 - ya, x0 - xa : x1 - xa]
            m = part["models"]
            if out is None:  # every source's row, filled core by core
                stamps = np.zeros((n, *m.stamps.shape[1:]), m.stamps.dtype)
                out = {"models": Models(stamps, np.zeros(n, m.cx.dtype), np.zeros(n, m.cy.dtype),
                                        cx.copy(), cy.copy(), gal.copy())}  # fmt: skip
                for k in ("flux", "contam", "wing_ap", "blend"):
                    out[k] = np.full((n, *part[k].shape[1:]), np.nan, part[k].dtype)
                out["mom"] = {k: np.full(n, np.nan, v.dtype) if v.dtype != bool
                              else np.zeros(n, bool) for k, v in part["mom"].items()}  # fmt: skip
                out["vals"] = None if part["vals"] is None else tuple(
                    np.full((n, *v.shape[1:]), np.nan, v.dtype) for v in part["vals"])  # fmt: skip
            rows = near[mine]
            out["models"].stamps[rows] = m.stamps[mine]
            out["models"].cx[rows] = m.cx[mine] + xa
            out["models"].cy[rows] = m.cy[mine] + ya
            for k in ("flux", "contam", "wing_ap", "blend"):
                out[k][rows] = part[k][mine]
            for k, v in part["mom"].items():
                out["mom"][k][rows] = v[mine]
            if out["vals"] is not None:
                for a, v in zip(out["vals"], part["vals"]):
                    a[rows] = v[mine]
            for k, got in winged.items():  # the core's own sources given a wing
                got.append(near[part[k][mine[part[k]]]])
        if out is None:  # no source at all: the whole image's (empty) measurements
            part = self._deblend_part(img, sigma, cx, cy, gal, masked, samples, opts)
            return part, part.pop("model")
        return {**out, **{k: np.concatenate(v) for k, v in winged.items()}}, model


def _in_box(x, y, shape, box) -> np.ndarray:
    """:func:`probcat.tiles.in_core` of positions on an image of ``shape`` ``(H, W)``, a
    position off the image taken at the image's edge (so each source lies in one core)."""
    from probcat.tiles import in_core

    h, w = shape
    return in_core(np.clip(x, 0, w - 1), np.clip(y, 0, h - 1), box)


def _check_deblend_memory(cx, cy, shape, stamp: int, samples: bool) -> None:
    """A one-line error where deblending the sources at ``(cx, cy)`` in an image of
    ``shape`` ``(bands, H, W)`` with model stamps of ``stamp`` px a side would need more
    memory than this process may use (the stamps are numpy arrays on any device): the
    image's planes, every source's model, and the work on the sources of the whole image,
    or of the largest window where it is deblended in parts."""
    from probcat.infer.deblend import CACHE_BYTES
    from probcat.runtime import check_memory

    nb, h, w = shape
    n = most = len(cx)
    if max(h, w) > DEBLEND_WHOLE_PX:
        from probcat.tiles import cores

        windows = cores(h, w, DEBLEND_CORE_PX, DEBLEND_MARGIN_PX)
        most = max(int(_in_box(cx, cy, (h, w), win).sum()) for _, win in windows)
    one = nb * stamp**2 * 4  # one source's model stamps
    need = BASE_BYTES + nb * h * w * DEBLEND_BYTES_PER_PIXEL + (CACHE_BYTES if samples else 0)
    need += (n - most) * one + most * one * DEBLEND_STAMP_COPIES
    check_memory(
        need,
        f"deblending {n:,} sources in a {w}x{h} image in {nb} band(s)",
        "deblend it in overlapping parts (cutouts of a few thousand pixels a side)",
    )


def _wings(image, models, sigma, survey, mask):
    """The light of bright stars and big galaxies beyond their models' stamps (None if
    none), the galaxies and the stars given a wing: the stars' from the PSF
    (:func:`probcat.infer.deblend.star_wings`), the galaxies' fitted on the image less
    them (:func:`~probcat.infer.deblend.galaxy_wings`), so that a galaxy beside a bright
    star does not take the star's light for its own wing."""
    from probcat.infer.deblend import galaxy_wings, star_wings

    stars, stars_winged = star_wings(models, survey, image.shape[-2:], sigma)
    rest = image if stars is None else image - stars
    wing, winged = galaxy_wings(rest, models, sigma, mask=mask)
    if stars is not None:
        wing = stars if wing is None else wing + stars
    return wing, winged, stars_winged


def _aperture_noise_factors(x: np.ndarray, info: dict) -> np.ndarray:
    """Per band, what correlated pixel noise multiplies the noise of an aperture sum by
    (:func:`probcat.background.aperture_noise_factor`), in the bands whose noise reads as
    correlated (``info["noise_correlation"]`` above
    :data:`~probcat.background.NOISE_CORRELATION_WARN`, as in a coadd); 1 elsewhere (white
    noise: the factor is 1 within its sampling error); never below 1."""
    from probcat.background import NOISE_CORRELATION_WARN, aperture_noise_factor

    out = np.ones(len(x))
    for k, nc in enumerate(info.get("noise_correlation") or ()):
        if nc is not None and nc > NOISE_CORRELATION_WARN:
            f = aperture_noise_factor(x[k])
            out[k] = 1.0 if f is None else max(f, 1.0)
    return out


def whitened(x: np.ndarray, ratio: np.ndarray, info: dict) -> np.ndarray:
    """``x`` (noise-sigma units, sky subtracted) times the noise map's ``ratio``
    (:func:`probcat.background.noise_ratio`): the noise of the median depth everywhere.
    Records the map's 5-95% range of noise / sigma in ``info["noise_map"]``."""
    q = np.percentile(1.0 / ratio[:, ::4, ::4], [5, 95])
    info["noise_map"] = [round(float(v), 4) for v in q]
    return (x * ratio).astype(np.float32, copy=False)


def noise_map_ratio(image, bands, masked=None) -> np.ndarray | None:
    """The :func:`probcat.background.noise_ratio` of an image's noise map
    (``ImageData.variance``: an LSST VARIANCE plane or a weight file) in ``bands``' order,
    ``masked`` pixels left out; None when it has none, or a uniform one."""
    from probcat.background import noise_ratio
    from probcat.io import ImageData

    var = image.variance if isinstance(image, ImageData) else None
    if var is None:
        return None
    names = tuple(bands)
    if len(set(image.bands)) == len(image.bands) and set(names) <= set(image.bands):
        var = var[[image.bands.index(b) for b in names]]
    elif len(var) != len(names):
        return None
    return noise_ratio(var, masked)


def _local_noise(image, bands, masked, cx, cy) -> np.ndarray:
    """``(n, bands)``: the noise at each source ``cx, cy`` over ``sigma`` (the noise of the
    median depth): from the smooth noise map of an image that has one (an LSST VARIANCE
    plane or a weight file: :func:`probcat.background.noise_ratio`), else 1."""
    n, nb = len(cx), len(bands)
    ratio = noise_map_ratio(image, bands, masked)
    if ratio is None:
        return np.ones((n, nb))
    h, w = ratio.shape[1:]
    iy = np.clip(np.round(cy).astype(int), 0, h - 1)
    ix = np.clip(np.round(cx).astype(int), 0, w - 1)
    return 1.0 / ratio[:, iy, ix].T.astype(float)


def ab_mag(band, flux, unit: str = "electron", zeropoint=None) -> np.ndarray:
    """AB magnitudes of fluxes: ``zeropoint`` - 2.5 log10(flux) with a ``zeropoint`` (the
    magnitude of a flux of 1: ``read_input``'s ``info["zeropoint"]``); without one, by
    ``unit``: electrons through the band's zeropoint and exposure time, a flux density
    through :data:`probcat.io.UNIT_ZEROPOINTS` (nJy: 31.4 - 2.5 log10(flux), the Rubin
    pipelines' coadds); NaN for fluxes <= 0 and for any other unit
    (ADU, or a unit probcat cannot calibrate)."""
    from probcat.io import UNIT_ZEROPOINTS

    flux = np.asarray(flux, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = np.maximum(flux, 1e-30)
        if zeropoint is not None and np.isfinite(zeropoint):
            mag = float(zeropoint) - 2.5 * np.log10(pos)
        elif unit == "electron":
            mag = band.flux_to_mag(pos)
        elif unit.lower() in UNIT_ZEROPOINTS:
            mag = UNIT_ZEROPOINTS[unit.lower()] - 2.5 * np.log10(pos)
        else:
            return np.full(flux.shape, np.nan)
        return np.where(flux > 0, mag, np.nan)


def noise_over_survey(survey, sigma, info: dict, electrons_as_survey: bool = True) -> np.ndarray:
    """Per band of ``survey``, an image's noise ``sigma`` (its pixel units, as
    :func:`read_input` gives it) as a flux over the survey's own noise as a flux: below 1 a
    deeper image, above 1 a shallower one (LSST at 1 year against 10: sqrt(10)). Through
    the image's zeropoint (``info["zeropoint"]``), else its pixel unit (a flux density;
    electrons: the survey's zeropoint and exposure, or NaN unless
    ``electrons_as_survey``: electrons of an unknown exposure); NaN where the pixels cannot
    be calibrated (ADU)."""
    unit = info.get("flux_unit", "electron")
    zps = info.get("zeropoint") or [None] * len(survey.bands)
    out = []
    for k, band in enumerate(survey.bands):
        zp = zps[k]
        known = (zp is not None and np.isfinite(zp)) or unit != "electron"
        if not (known or electrons_as_survey):
            out.append(np.nan)
            continue
        mag = ab_mag(band, np.asarray([sigma[k]], float), unit, zp)[0]
        out.append(10.0 ** (-0.4 * (mag - band.flux_to_mag(band.noise_sigma))))
    return np.asarray(out, float)


def mag_error(flux, flux_err, mag) -> np.ndarray:
    """The magnitude error of a flux error to first order, 2.5 / ln 10 x flux_err / flux;
    NaN where the magnitude is."""
    with np.errstate(divide="ignore", invalid="ignore"):
        err = 2.5 / np.log(10.0) * np.asarray(flux_err, float) / np.asarray(flux, float)
    return np.where(np.isfinite(mag), err, np.nan)


def _check_flag(value, name: str) -> bool:
    """``value`` as a bool, or a one-line error when it is not one."""
    if not isinstance(value, (bool, np.bool_)):
        raise ProbcatValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_passes(passes):
    """``passes`` (refinement rounds of the galaxy models), or a one-line error."""
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 0:
        raise ProbcatValueError(f"passes must be a whole number >= 0, got {passes!r}")
    return int(passes)


def check_samples(samples) -> int:
    """``samples`` (a number of posterior catalog samples) as an integer in [0, 100000],
    else a one-line error."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)):
        raise ProbcatValueError(f"samples must be an integer, got {samples!r}")
    if not 0 <= samples <= 100_000:
        raise ProbcatValueError(f"samples must lie in [0, 100000], got {samples}")
    return int(samples)


def check_deblender_bands(dbl, det) -> None:
    """A one-line error when the deblender ``dbl`` reads a band that the detector ``det``
    lacks (the i-band deblender measures a six-band detector's sources in its i plane)."""
    missing = [b for b in dbl.survey.band_names if b not in det.bands]
    if missing:
        raise ProbcatValueError(
            f"the deblender reads band(s) {''.join(missing)}, which the detector's bands "
            f"{''.join(det.bands)} lack"
        )


def deblend(
    image,
    *,
    noise_sigma=None,
    weights=None,
    deblender=None,
    samples: int = 100,
    method: str = DEFAULT_METHOD,
    threshold: float = 0.5,
    seed: int = 0,
    background: str = "auto",
    gain=None,
    device=None,
    threads="auto",
    passes: int | None = None,
    amplitudes: bool = True,
    progress: bool = False,
    mask=None,
    zeropoint=None,
    seeing="auto",
    rescue_bright: bool = True,
    wings: bool = True,
    real_shapes=None,
    cutout=None,
) -> DeblendResult:
    """Detect, deblend and measure every source of an image, with flux posteriors from
    ``samples`` posterior catalog samples (0: point measurements only).

    Args:
        image: as for :func:`detect`.
        weights: detection weights (default the shipped LSST-i encoder), or a loaded
            :class:`Detector`.
        deblender: deblender weights (default ``"deblender_lsst_i"``), or a loaded
            :class:`Deblender`.
        method: ``"conserve"`` (default) or ``"subtract"`` (see :meth:`Deblender.measure`).
        passes: refinement rounds of the galaxy models (see :meth:`Deblender.measure`).
        amplitudes: fit the models' amplitudes jointly (see :meth:`Deblender.measure`).
        wings: the light of big galaxies and bright stars beyond their models (see
            :meth:`Deblender.measure`).
        zeropoint: AB magnitude of a flux of 1 in the image's units, for ``mag_ap`` (see
            :meth:`Deblender.measure`; default: the file's), and the image's depth (see
            :func:`detect`).
        progress: progress bars over the posterior samples (drawing, then deblending).
        seeing, rescue_bright, real_shapes, cutout: the detection's (see :func:`detect`).
        Others: as for :func:`detect`.

    Example:
        >>> res = probcat.deblend("field.fits", samples=100)      # doctest: +SKIP
        >>> res.catalog["flux_q50"]                              # doctest: +SKIP
    """
    from probcat.infer.deblend import check_method

    check_method(method)  # before detection, which may take long
    if passes is not None:
        _check_passes(passes)
    _check_flag(amplitudes, "amplitudes")
    _check_flag(wings, "wings")
    det = load(weights, device=device, threads=threads, kind="detection")
    dbl = load(deblender or DEFAULT_DEBLENDER, device=device, threads=threads, kind="deblender")
    check_deblender_bands(dbl, det)
    if zeropoint is not None:  # before detection
        from probcat.background import per_band_array

        per_band_array(zeropoint, len(det.survey.bands), "zeropoint", positive=False)
    if isinstance(image, (str, Path)):
        from probcat.io import read_image

        image = read_image(image)
    opts = {"background": background, "gain": gain, "mask": mask}
    res = det.detect(
        image, noise_sigma=noise_sigma, threshold=threshold, samples=samples, seed=seed,
        progress=progress, zeropoint=zeropoint, seeing=seeing, rescue_bright=rescue_bright,
        real_shapes=real_shapes, cutout=cutout, **opts,
    )  # fmt: skip
    from probcat.masking import said_once

    with said_once():  # detection said it of the same image
        out = dbl.measure(
            image, res.catalog, noise_sigma=noise_sigma, samples=res.samples, method=method,
            sky_offset=_offset_at_density(det.sky_offset, res.catalog), passes=passes,
            amplitudes=amplitudes, progress=progress, zeropoint=zeropoint, wings=wings, **opts,
        )  # fmt: skip
    out.detection = res
    out.wcs = res.wcs
    return out


DEFAULT_PHOTOZ = "photoz_lsst_ugrizy"
DEFAULT_PHOTOZ_DETECTOR = "detection_lsst_ugrizy"


ABSENT_SEED = 20261205  # the white noise that stands in for an absent band while it is read
# at most this many of the weights' bands may be absent (the masked weights were trained
# with one to three bands masked, three in 6% of the stamps)
MAX_ABSENT = 2


def absent_bands(image, est) -> tuple[str, ...]:
    """The bands of the model ``est`` (a photo-z estimator or a :class:`Detector`) that a
    multi-band ``image`` (:class:`~probcat.io.ImageData` with named bands) lacks, when
    ``est`` has weights that read bands without data (its ``masked_weights``) and the image
    has at least one of its bands: e.g. ``("u",)`` for a grizy image and
    ``photoz_lsst_ugrizy``; at most :data:`MAX_ABSENT`. Otherwise none (the image is then
    read, or refused, as before)."""
    from probcat.io import ImageData

    if not isinstance(image, ImageData) or not image.bands_named:
        return ()
    if len(set(image.bands)) != len(image.bands) or est.masked_weights is None:
        return ()
    absent = tuple(b for b in est.bands if b not in image.bands)
    return absent if 0 < len(absent) <= MAX_ABSENT else ()


def empty_bands(image, mask=None) -> list[int]:
    """The planes of ``image`` (:class:`~probcat.io.ImageData`) without any data: every
    pixel NaN or inf, or set in the file's mask (``image.mask``) or in ``mask`` (``(H, W)``
    or one plane per band of the image; any other shape is left to :func:`read_input`'s
    checks). A plane whose first pixel has data is not looked at further."""
    data = np.asarray(image.image)
    planes = None if image.mask is None else np.asarray(image.mask, bool)
    given = None
    if mask is not None and np.ndim(mask) in (2, 3) and np.shape(mask)[-2:] == data.shape[1:]:
        given = np.asarray(mask) != 0
        if given.ndim == 3 and len(given) != len(data):
            given = None

    def bad(b, at=(Ellipsis,)):
        with np.errstate(invalid="ignore", over="ignore"):
            out = ~np.isfinite(data[b][at]) if data.dtype.kind == "f" else False
        if planes is not None:
            out = out | planes[b][at]
        if given is not None:
            out = out | (given if given.ndim == 2 else given[b])[at]
        return np.asarray(out)

    return [b for b in range(len(data)) if bad(b, (0, 0)) and bad(b).all()]


def _with_bands(image, keep: list[int]):
    """``image`` (:class:`~probcat.io.ImageData`) with only its planes ``keep``."""

    def some(a):
        return None if a is None else np.asarray(a)[keep]

    names = tuple(image.bands[k] for k in keep)
    return replace(
        image,
        image=image.image[keep],
        bands=names,
        noise_sigma=np.asarray(image.noise_sigma)[keep],
        gain=some(image.gain),
        adu_without_gain=tuple(b for b in image.adu_without_gain if b in names),
        mask=some(image.mask),
        variance=some(image.variance),
        zeropoint=some(image.zeropoint),
    )


def with_missing_bands(image, model, mask=None):
    """``(image, mask, absent)``: ``image`` (a path is read) for ``model`` (a photo-z
    estimator or a :class:`Detector` with ``masked_weights``), its bands without any data
    (:func:`empty_bands`) left out, and each of ``model``'s bands it then lacks
    (:func:`absent_bands`) added as a stand-in plane (:func:`with_absent_bands`), which the
    caller reads as a band without data; ``mask`` with the same planes when it has one per
    band. A numpy array of one plane per band of ``model`` is read as an image of those
    bands where one of its planes has no data at all. Anything else is returned as it is,
    with no absent bands."""
    from probcat.io import ImageData, read_image

    if isinstance(image, (str, Path)):
        image = read_image(image)
    if getattr(model, "masked_weights", None) is None:
        return image, mask, ()
    if (
        type(image) is np.ndarray  # not a numpy masked array: read_input reads its mask
        and image.ndim == 3
        and len(image) == len(model.bands)
        and image.dtype.kind == "f"
    ):  # planes in the model's bands: named so where one of them has no data at all
        named = ImageData(image, None, tuple(model.bands), np.full(len(image), np.nan))
        if empty_bands(named, mask):
            image = named
    if not isinstance(image, ImageData):
        return image, mask, ()
    empty = empty_bands(image, mask)
    if empty and len(empty) < len(image.bands):
        keep = [k for k in range(len(image.bands)) if k not in empty]
        thinner = _with_bands(image, keep)
        if absent_bands(thinner, model):  # else: refused as before (every pixel masked)
            image = thinner
            if mask is not None and np.ndim(mask) == 3 and len(mask) == len(empty) + len(keep):
                mask = np.asarray(mask)[keep]
    absent = absent_bands(image, model)
    if absent:  # read as a band like the others, then made a band without data
        image = with_absent_bands(image, model.survey, absent)
        if mask is not None and np.ndim(mask) == 3:  # one plane per band of the image as given
            extra = np.zeros((len(absent), *np.shape(mask)[1:]), bool)
            mask = np.concatenate([np.asarray(mask) != 0, extra])
    return image, mask, absent


def no_data_bands(absent, bands, x, info: dict) -> dict:
    """The ``absent`` bands of ``x`` (``(bands, H, W)`` noise-sigma units of ``bands``, read
    with :func:`with_absent_bands`) made bands without data: their planes 0 in place, no
    zeropoint; ``info`` with ``absent_bands``."""
    k = [list(bands).index(b) for b in absent]
    x[k] = 0.0
    info = {**info, "absent_bands": "".join(absent)}
    zp = info.get("zeropoint")
    if zp is not None:
        info["zeropoint"] = [None if j in k else v for j, v in enumerate(zp)]
    return info


def with_absent_bands(image, survey, absent):
    """``image`` with a plane for each band of ``absent``: white noise of the survey's sigma
    (electrons, seeded), which the sky, noise and unit checks read as a band like any
    other; :func:`photoz` then makes it a band without data (:func:`_no_data_in`)."""
    h, w = image.image.shape[1:]
    k = [survey.band_names.index(b) for b in absent]
    sig = np.asarray(survey.noise_sigma, np.float64)[k]
    noise = np.random.default_rng(ABSENT_SEED).standard_normal((len(k), h, w))
    planes = (noise * sig[:, None, None]).astype(np.float32)

    def more(a, extra):
        return None if a is None else np.concatenate([np.asarray(a), extra])

    flat = np.ones((len(k), h, w), np.float32)
    return replace(
        image,
        image=np.concatenate([image.image, planes]),
        bands=(*image.bands, *absent),
        noise_sigma=more(image.noise_sigma, sig),
        gain=more(image.gain, np.ones(len(k))),
        mask=more(image.mask, np.zeros((len(k), h, w), bool)),
        variance=more(image.variance, flat * (sig**2)[:, None, None]),
        zeropoint=more(image.zeropoint, np.full(len(k), np.nan)),
    )


def _no_data_in(absent, est, det_bands, xs, bands_masked, info, det_masked=None):
    """The absent bands (:func:`with_absent_bands`) as bands without data: their planes 0,
    masked everywhere, no zeropoint (:func:`no_data_bands`); a warning says who reads them
    how (``det_bands``: the detector's bands, if one reads the image; ``det_masked``: its
    masked weights, which then read the image, or None)."""
    info = no_data_bands(absent, est.bands, xs, info)
    if bands_masked is None:
        bands_masked = np.zeros(xs.shape, bool)
    bands_masked[[est.bands.index(b) for b in absent]] = True
    names = "".join(absent)
    read = "".join(b for b in absent if b in det_bands)
    also = ""
    if read:
        also = (f", and the detector reads {read} as no light" if det_masked is None else
                f", and so does the detector, {det_masked}")  # fmt: skip
    warn_user(
        f"photo-z: the image has no data in band {names}: its PDFs are from "
        f"{est.masked_weights} (trained with bands masked, which reads {names} as missing)"
        f"{also} (docs/photoz.md, Bands without data)",
    )
    return xs, bands_masked, info


def read_photoz_input(
    image, est, noise_sigma=None, *, mask=None, det_bands=(), det_masked=None, **kw
):
    """:func:`read_input` of ``image`` for the photo-z estimator ``est``'s bands
    (``band_mask=True``; ``kw`` its other options), the bands it lacks or has no data in
    read as bands without data (:func:`with_missing_bands`; ``det_bands``, ``det_masked``:
    the detector that reads them and its masked weights, for the warning;
    ``info["absent_bands"]``; a ``mask`` of one plane per band is of the image's bands):
    ``(image, x, wcs, sigma, info, bands_masked, masked)``, ``image`` as read (ImageData
    with any absent band's stand-in plane), ``masked`` the ``(H, W)`` pixels without data
    in a band the image has (None: none)."""
    image, mask, absent = with_missing_bands(image, est, mask)
    xs, wcs, sigma, info, bands_masked = read_input(
        image, est.survey, noise_sigma, mask=mask, band_mask=True, **kw
    )
    if absent:
        xs, bands_masked, info = _no_data_in(
            absent, est, det_bands, xs, bands_masked, info, det_masked
        )
    present = [k for k, b in enumerate(est.bands) if b not in absent]
    masked = None if bands_masked is None else bands_masked[present].any(0)
    if masked is not None and not masked.any():
        masked = None
    return image, xs, wcs, sigma, info, bands_masked, masked


def check_photoz_detector(det, est) -> None:
    """A one-line error when the detector ``det`` reads a band the photo-z estimator
    ``est`` lacks."""
    missing = [b for b in det.bands if b not in est.bands]
    if missing:
        raise ProbcatValueError(
            f"the detector needs band(s) {''.join(missing)}, which the photo-z bands "
            f"{''.join(est.bands)} lack"
        )


def photoz(
    image,
    *,
    estimator=None,
    detector=None,
    noise_sigma=None,
    threshold: float = 0.5,
    galaxies_only: bool = True,
    background: str = "auto",
    gain=None,
    seeing="auto",
    device=None,
    threads="auto",
    mask=None,
    zeropoint=None,
    match_depth: bool = False,
    known_redshifts=None,
    width_scale: float = 1.0,
    rescue_bright: bool = True,
    progress: bool = False,
    real_shapes=None,
    cutout=None,
):
    """Detect the sources of a multi-band image and estimate a redshift PDF for each galaxy
    (paper 002): a :class:`~probcat.redshift.estimator.PhotozResult` with the catalog (``z_mode,
    z_median, z_mean``, 68%/95% intervals) and a ``qp`` ensemble.

    Args:
        image: FITS path, :class:`~probcat.io.ImageData` or array ``(bands, H, W)`` in
            electrons with the estimator's bands (ugrizy for the shipped weights); or one
            FITS file per band, a list of paths (``"BAND=FILE"`` where the header does not
            name the band) or a dict ``{band: path}`` (:func:`probcat.io.read_bands`).
        estimator: photo-z weights (default ``"photoz_lsst_ugrizy"``), or a loaded
            :class:`~probcat.redshift.estimator.PhotozEstimator`.
        detector: detection weights (default ``"detection_lsst_ugrizy"``, the six-band
            encoder), or a loaded :class:`Detector`; their bands must be among the image's
            (``"detection_lsst_i"`` reads the i plane).
        noise_sigma: per-band noise sigma (default: FITS ``NOISE`` keywords, else the
            survey's, or a band's measured pixel noise where the survey's is more than 5%
            off it; ``"measured"``: the image's own pixel noise).
        threshold: detection probability threshold of the MAP catalog.
        galaxies_only: PDFs only for objects classified as galaxies (``galaxy`` column).
        background, gain: sky subtraction and ADU conversion (:mod:`probcat.background`).
        seeing: the star/galaxy classes' seeing, as :func:`detect`'s.
        mask: pixels without data, as :func:`detect`'s (the PDFs of galaxies they cut read
            what is left: ``mask_fraction``).
        zeropoint: AB magnitude of a flux of 1 in the image's units, per band or one for
            all (default: the image's flux-density ``BUNIT`` or zeropoint keywords, else
            for electrons the survey's zeropoint and exposure): the image's depth, which
            the PDFs depend on, is checked with it (a deeper image than the weights were
            trained at is warned of; ``meta["photoz"]["noise_over_training"]``).
        match_depth: read such an image at the deepest training depth instead, white noise
            added (calibrated PDFs at that depth's precision; the detections are the
            image's own).
        known_redshifts: objects of the image with known (spectroscopic) redshifts: a
            table (FITS/Parquet path, astropy Table or dict) with ``x, y`` or ``ra, dec``
            and ``redshift``; the PDFs' widths are refit to them, one factor on every width
            (:meth:`~probcat.redshift.estimator.PhotozEstimator.fit_widths`), recorded
            with the number of objects in ``meta["photoz"]``. For galaxies unlike the
            training galaxies: it mends the calibration, not the accuracy.
        width_scale: a factor on every mixture width, e.g. one fitted on another image
            (not with ``known_redshifts``).
        rescue_bright: as :func:`detect`'s: the bright galaxies the detector leaves without
            a detection get one, and their PDFs.
        progress: a progress bar over the PDFs of a field with many galaxies.
        real_shapes, cutout: the detection probabilities' image-level weights, as
            :func:`detect`'s.

    Example:
        >>> res = probcat.photoz("field_ugrizy.fits")                 # doctest: +SKIP
        >>> res.catalog["z_mode"], res.ensemble.npdf                  # doctest: +SKIP
    """
    from probcat.redshift.estimator import check_width_scale, read_known
    from probcat.weights import coadd_trained

    width_scale = check_width_scale(width_scale)
    if known_redshifts is not None:  # a bad table stops the call before any work
        if width_scale != 1.0:
            raise ProbcatValueError("give known_redshifts (to fit widths) or width_scale, not both")
        known_redshifts = read_known(known_redshifts)[0]
    est = load(estimator or DEFAULT_PHOTOZ, device=device, threads=threads, kind="photoz")
    det = load(
        detector or DEFAULT_PHOTOZ_DETECTOR, device=device, threads=threads, kind="detection"
    )
    check_photoz_detector(det, est)
    offset = det.sky_offset if det.bands == est.bands else None
    if isinstance(image, dict) or (
        isinstance(image, (list, tuple)) and image and
        all(isinstance(p, (str, Path, tuple)) for p in image)
    ):  # fmt: skip
        from probcat.io import read_files

        image = read_files(image)  # one file per band (or a list of one file)
    # the PDFs read the image as it is: a noise map would rescale each band differently
    # and change the colours; the detector reads it at the median depth's noise everywhere.
    # masked: the pixels without data in a band the image has (the detector's mask, and
    # where the noise is read); the PDFs also read an absent band as without data
    image, xs, wcs, sigma, info, bands_masked, masked = read_photoz_input(
        image,
        est,
        noise_sigma,
        mask=mask,
        det_bands=det.bands,
        det_masked=det.masked_weights,
        background=background,
        gain=gain,
        sky_offset=offset,
        whiten=False,
        correlated_noise_ok=coadd_trained(det.manifest),  # the detector's warning
        zeropoint=zeropoint,
    )
    ratio = noise_map_ratio(image, est.bands, masked)
    x_all = xs if ratio is None else whitened(xs, ratio, info)
    planes = [est.bands.index(b) for b in det.bands]
    # the detector reads the same sigma-unit planes (sky done above, for every band): no copy
    # when it has every band in order
    x_det = x_all if planes == list(range(len(est.bands))) else x_all[planes]
    # an absent band (info["absent_bands"]) sends the image to the detector's masked
    # weights, as a band partly without data does (Detector._routed)
    batch = det._prepared(x_det, wcs, info, masked, sigma, planes)
    res = det.detect(
        batch, threshold=threshold, seeing=seeing, rescue_bright=rescue_bright,
        real_shapes=real_shapes, cutout=cutout,
    )  # fmt: skip
    res.catalog = _with_sky(res.catalog, wcs)
    res.wcs = wcs
    shift = _sky_shift_of(res.catalog)
    if shift is not None:  # the sky the detector read at the image's density, in every band
        for j, p in enumerate(planes):
            keep = 1.0 if bands_masked is None else ~bands_masked[p]
            xs[p] -= np.float32(shift[j]) * keep
    # at the aperture noise; deeper: warned, or read at the training depth
    xs, meta = est.network_input(xs, sigma, info, match_depth, masked)
    routed = None if bands_masked is None else bands_masked.any(0)
    # widths fitted or given for these weights keep them (no seeing_weights)
    keep = known_redshifts is not None or width_scale != 1.0
    if known_redshifts is not None:
        width_scale, meta["width_fit_objects"] = est._fit_widths(xs, wcs, known_redshifts, routed)
    return est._estimate(
        xs, res.catalog, wcs, galaxies_only, detection=res, meta=meta, width_scale=width_scale,
        band_mask=bands_masked, seeing_route=not keep, progress=progress,
    )  # fmt: skip
