"""FITS images with WCS and band metadata.

Layout: an empty primary HDU (``NBANDS``, ``BANDS``, ``SURVEY``), then one 2-D image
HDU per band named after the band (``EXTNAME = 'I'``), each with the celestial WCS and
``BAND``, ``NOISE`` (sigma, electrons), ``ZEROPT`` (mag for 1 e-/s), ``EXPTIME``,
``BUNIT = 'electron'``. Extra images (e.g. the ``tiles`` recipe's centred redraw) follow
as ``<NAME>_<BAND>`` HDUs.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from probcat.catalog import atomic_write
from probcat.errors import ProbcatFileError, ProbcatIOError, ProbcatValueError, warn_user
from probcat.survey import Survey

# what opening a file that is not FITS raises: astropy reads a file whose first bytes say
# zip, gzip, bzip2 or xz as compressed, and a truncated or corrupt one fails in that library
UNREADABLE = (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError)

__all__ = ["ImageData", "write_image", "read_image", "read_bands", "read_files"]


@dataclass(frozen=True)
class ImageData:
    """An image read from disk: ``image`` ``(bands, H, W)`` float32, its WCS (or None),
    band names, per-band noise sigma (NaN if unknown) and any extra images."""

    image: np.ndarray
    wcs: WCS | None
    bands: tuple[str, ...]
    noise_sigma: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    header: dict = field(default_factory=dict)
    gain: np.ndarray | None = None  # e-/ADU per band when the pixels are not in electrons
    # bands whose BUNIT says ADU (counts, DN) and that have no GAIN: read as electrons
    adu_without_gain: tuple[str, ...] = ()
    # (bands, H, W) bool: pixels the file itself marks as no data (an LSST MASK/VARIANCE)
    mask: np.ndarray | None = None
    noise_from: str = "NOISE"  # where noise_sigma came from: NOISE keywords or VARIANCE
    # the pixels' BUNIT as written ("": electrons or absent, read as electrons; "mixed":
    # the bands differ)
    unit: str = ""
    # (bands, H, W) float32: an LSST VARIANCE plane, in the pixels' units squared
    variance: np.ndarray | None = None
    # per band: the AB magnitude of a flux of 1 in the pixels' units (NaN: not in the file;
    # see _zeropoint_keyword), and the keyword that gave it
    zeropoint: np.ndarray | None = None
    zeropoint_from: str = ""
    # whether the file named its bands (False: one plane, no band keyword, read as "i")
    bands_named: bool = True


def write_image(
    path: str | Path,
    image: np.ndarray,
    survey: Survey,
    wcs: WCS | None = None,
    extras: dict[str, np.ndarray] | None = None,
    header: dict | None = None,
    band_cards: list[dict] | None = None,
) -> Path:
    """Write ``image`` ``(bands, H, W)`` atomically as a multi-extension FITS file;
    ``band_cards``: per band, header cards that replace the survey's (``BUNIT``, ``NOISE``,
    ``MAGZERO`` of an image in other units than the survey's electrons; None removes one)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != survey.n_bands:
        raise ProbcatValueError(
            f"image must be (bands={survey.n_bands}, H, W), got shape {image.shape}"
        )
    primary = fits.PrimaryHDU()
    primary.header["NBANDS"] = survey.n_bands
    primary.header["BANDS"] = "".join(survey.band_names)
    primary.header["SURVEY"] = survey.name
    primary.header["DEPTHYR"] = (survey.depth_years, "coadd depth, years")
    for k, v in (header or {}).items():
        primary.header[k] = v
    wcs_header = wcs.to_header() if wcs is not None else fits.Header()
    hdus = [primary]

    def band_hdu(data, name, k):
        b = survey.bands[k]
        h = fits.Header(wcs_header)
        h["BAND"] = b.name
        h["NOISE"] = (b.noise_sigma, "background noise sigma, electrons")
        h["ZEROPT"] = (b.zeropoint, "AB mag giving 1 e-/s")
        h["EXPTIME"] = (b.exposure_time, "s")
        h["PIXSCALE"] = (b.pixel_scale, "arcsec / pixel")
        h["BUNIT"] = "electron"
        for key, value in (band_cards[k] if band_cards else {}).items():
            if value is None:
                h.remove(key, ignore_missing=True)
            else:
                h[key] = value
        return fits.ImageHDU(data, header=h, name=name)

    for k, b in enumerate(survey.bands):
        hdus.append(band_hdu(image[k], b.name.upper(), k))
    for name, extra in (extras or {}).items():
        extra = np.asarray(extra, dtype=np.float32)
        for k, b in enumerate(survey.bands):
            hdus.append(band_hdu(extra[k], f"{name.upper()}_{b.name.upper()}", k))
    return atomic_write(path, lambda tmp: fits.HDUList(hdus).writeto(tmp, overwrite=True))


def read_image(
    path: str | Path, mask_planes=None, weight=None, weight_type: str = "weight", hdu=None
) -> ImageData:
    """Read a probcat multi-extension image, or any FITS with a 2-D/3-D image in the
    primary HDU or the first image HDU (one band per plane; band names from
    ``BANDS``/``FILTER`` if present). NaN and inf pixels (and values beyond float32's range)
    are kept as they are: the detectors read them as masked, no data
    (:mod:`probcat.masking`).

    An LSST (afw) image file, ``IMAGE`` with ``MASK`` and ``VARIANCE`` HDUs (a calexp or a
    coadd written by the Rubin pipelines), also gives ``mask``: the pixels set in the mask
    planes ``mask_planes`` (default :data:`probcat.masking.NO_DATA_PLANES`; ``()`` reads
    none), found by the ``MP_<NAME>`` bit keywords, and those without a positive finite
    variance; and, when the image has no ``NOISE`` keyword, ``noise_sigma``: the square root
    of the median variance of its unmasked pixels (``noise_from = "VARIANCE"``), in the
    pixels' units (nJy for a coadd: fluxes then come out in nJy).

    ``weight``: a FITS weight map of the image (``(H, W)`` or one plane per band), by
    ``weight_type`` as SExtractor reads them: ``"weight"``, inverse variance
    (``MAP_WEIGHT``, as SWarp writes it); ``"variance"`` (``MAP_VAR``); ``"rms"``, the noise
    sigma (``MAP_RMS``). ``variance`` is the variance it gives, the noise map the detectors
    read the image against where it varies (:func:`probcat.background.noise_ratio`; only
    its shape counts, so relative weights do), and its pixels of value 0 (or not finite)
    are masked.

    ``hdu``: the HDU to read (index or ``EXTNAME``) of a file with several images, such as
    a mosaic camera's one CCD per HDU; by default the first HDU holding an image, with a
    warning naming the others."""
    path = Path(path)
    file_mask, noise_from, variance, bands_named = None, "NOISE", None, True
    if not path.exists():
        raise ProbcatFileError(f"{path}: no such file")
    if not path.is_file():  # a directory, a device (/dev/zero), a pipe: never read unbounded
        raise ProbcatIOError(f"{path}: not a regular file")
    try:
        with _quiet_astropy(), fits.open(path, memmap=False) as hdul:
            hdul.verify("silentfix")
            primary = hdul[0].header
            if "NBANDS" in primary and hdu is not None:
                raise ProbcatValueError(
                    f"{path}: a probcat image (one HDU per band) is read whole: no hdu to choose"
                )
            if "NBANDS" in primary:
                bands = tuple(primary["BANDS"])
                noise, gains, in_adu, wcs, units, zps = [], [], [], None, [], []
                extras: dict[str, list] = {}
                names = {b.upper(): b for b in bands}
                found = []  # the bands in the order of their HDUs (which may differ from BANDS)
                n_planes = sum(hdu.name in names for hdu in hdul[1:])
                image = None
                for hdu in hdul[1:]:
                    name = hdu.name
                    if name in names:
                        # each plane straight into one float32 cube, its HDU's copy dropped
                        # at once: a peak of one plane over the cube, not three cubes
                        plane = hdu.data
                        if plane is None:
                            raise ValueError(f"band HDU {name} has no data")
                        if image is None:
                            image = np.empty((n_planes, *np.shape(plane)), np.float32)
                        if np.shape(plane) != image.shape[1:]:  # no broadcasting
                            raise ValueError(
                                f"band planes differ in shape: {image.shape[1:]} and "
                                f"{np.shape(plane)} ({name})"
                            )
                        image[len(noise)] = plane
                        found.append(names[name])
                        del hdu.data, plane
                        noise.append(hdu.header.get("NOISE", np.nan))
                        gains.append(_gain_keyword(path, hdu.header))
                        in_adu.append(_in_adu(hdu.header))
                        units.append(str(hdu.header.get("BUNIT", "")).strip())
                        zps.append(_zeropoint_keyword(path, hdu.header, own_format=True))
                        if wcs is None and hdu.header.get("CTYPE1"):
                            wcs = _wcs(path, hdu.header)
                    elif "_" in name:
                        extras.setdefault(name.rsplit("_", 1)[0].lower(), []).append(
                            np.asarray(hdu.data, dtype=np.float32)
                        )
                if image is None:
                    raise ValueError(f"no image HDU named after the bands {''.join(bands)}")
                if sorted(found) != sorted(bands):
                    raise ValueError(
                        f"BANDS is {''.join(bands)} but the file has image HDUs for "
                        f"{''.join(found)}"
                    )
                bands = tuple(found)
                extra_arrays = {k: np.stack(v) for k, v in extras.items()}
            else:
                idx = image_hdu(path, hdul, hdu)
                data = hdul[idx].data
                hdr = hdul[idx].header
                with np.errstate(over="ignore", invalid="ignore"):
                    image = np.asarray(data, dtype=np.float32)
                # leading axes of length 1 (radio style, NAXIS3 = NAXIS4 = 1) dropped; the
                # WCS reads the first two axes
                while image.ndim > 3 and image.shape[0] == 1:
                    image = image[0]
                if image.ndim == 2:
                    image = image[None]
                if image.ndim != 3:
                    raise ProbcatValueError(
                        f"{path}: image has {image.ndim} dimensions, "
                        "expected 2 (one band) or 3 (bands, H, W)"
                    )
                # BANDS, else a filter keyword of the image's header or the primary's (an
                # LSST file's IMAGE HDU leaves it to the primary header)
                keys = [str(h.get(k, "")).strip() for h in (hdr, primary) for k in _BAND_KEYWORDS]
                filt = str(hdr.get("BANDS", "")).strip() or next((v for v in keys if v), "")
                if len(filt) == image.shape[0]:
                    bands = tuple(filt)
                elif image.shape[0] == 1:
                    bands = (filt or "i",)
                    bands_named = bool(filt)
                else:
                    bands = tuple(f"b{k}" for k in range(image.shape[0]))
                wcs = _wcs(path, hdr) if hdr.get("CTYPE1") else None
                noise = [hdr.get("NOISE", np.nan)] * image.shape[0]
                gains = [_gain_keyword(path, hdr)] * image.shape[0]
                in_adu = [_in_adu(hdr)] * image.shape[0]
                units = [str(hdr.get("BUNIT", "")).strip()]
                zp = _zeropoint_keyword(path, hdr)
                if idx and not zp[1]:  # an afw file's zeropoint is in its primary header
                    zp = _zeropoint_keyword(path, primary)
                zps = [zp] * image.shape[0]
                extra_arrays = {}
                if hdul[idx].name == "IMAGE" and ("MASK" in hdul or "VARIANCE" in hdul):
                    file_mask, variance, variance_noise = _afw_planes(
                        path, hdul, image, mask_planes
                    )
                    if "NOISE" not in hdr and variance_noise is not None:
                        noise, noise_from = [variance_noise] * image.shape[0], "VARIANCE"
    except UNREADABLE as e:
        raise ProbcatIOError(f"{path}: not a readable FITS file ({e})") from e
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, ProbcatValueError):
            raise
        raise ProbcatIOError(f"{path}: malformed FITS image ({e})") from e
    noise = np.array([_noise_keyword(path, v) for v in noise], dtype=float)
    g = np.array(gains, dtype=float)
    gain = np.where(np.isfinite(g), g, 1.0) if np.isfinite(g).any() else None
    no_gain = tuple(b for b, a, v in zip(bands, in_adu, g) if a and not np.isfinite(v))
    if weight is not None:
        variance, no_weight = _read_weight(path, weight, image.shape, weight_type, hdu)
        file_mask = no_weight if file_mask is None else (file_mask | no_weight)
        if not file_mask.any():
            file_mask = None
    kinds = {"electron" if u.lower() in _ELECTRONS or not u else u for u in units}
    unit = kinds.pop() if len(kinds) == 1 else "mixed"
    zp = np.array([v for v, _ in zps], dtype=float)
    zp_from = ", ".join(sorted({k for _, k in zps if k}))
    return ImageData(
        image, wcs, bands, noise, extra_arrays, dict(primary), gain, no_gain, file_mask,
        noise_from, "" if unit == "electron" else unit, variance,
        zp if np.isfinite(zp).any() else None, zp_from, bands_named,
    )  # fmt: skip


GRID_TOLERANCE_PX = 0.05  # the most two bands' pixel grids may differ by to make one image


def read_bands(
    paths, mask_planes=None, weight=None, weight_type: str = "weight", hdu=None
) -> ImageData:
    """One multi-band image from one file per band (e.g. the six ugrizy coadds of an LSST
    patch), on one pixel grid: an :class:`ImageData` with a plane per file, in the order
    given, as :func:`read_image` reads a multi-band file.

    ``paths``: file names, or ``"BAND=FILE"`` strings (``"u=deepCoadd_u.fits"``), or
    ``(band, file)`` pairs (band None: from the header), or a dict ``{band: file}``. A
    file's band is the one given, else the single letter its image or primary header names
    (``BAND``, ``FILTER``, ``FILTNAM``, ``FILTER1``: ``HSC-I`` and ``LSST-i`` read as i,
    ``r_DECam_SDSS`` or ``r DECam SDSS c0002`` as r); a one-line error when it names none,
    or two files name one band. Each file is read as :func:`read_image` reads it (its
    ``NOISE`` or LSST ``VARIANCE``, ``MASK`` planes by ``mask_planes``, gain, unit and
    zeropoint), with ``hdu`` chosen in every file; each must hold one plane. The files must
    share their size and pixel grid (their WCSs within 0.05 px of each other over the image;
    the first file's WCS is the image's). ``weight``: a weight map of ``(H, W)`` or one
    plane per band, as for :func:`read_image`."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    items = list(paths.items()) if isinstance(paths, dict) else [band_and_path(p) for p in paths]
    if not items:
        raise ProbcatValueError("no image files given")
    planes, bands = [], []
    for band, path in items:
        data = read_image(path, mask_planes=mask_planes, hdu=hdu)
        if data.image.shape[0] != 1:
            raise ProbcatValueError(
                f"{path}: holds {data.image.shape[0]} planes; give one file per band, or "
                "the multi-band file alone"
            )
        if band is not None:  # as given ("U" read as u)
            band = band_letter(band) or str(band)
        elif data.bands_named:  # as its header names it
            band = band_letter(data.bands[0])
        if band is None:
            raise ProbcatValueError(
                f"{path}: no band in its header (BAND or FILTER): give it as BAND=FILE, "
                f"e.g. i={path}"
            )
        if band in bands:
            raise ProbcatValueError(f"{path}: band {band} given twice")
        if planes and data.image.shape != planes[0].image.shape:
            raise ProbcatValueError(
                f"{path}: {data.image.shape[2]}x{data.image.shape[1]} px, but "
                f"{items[0][1]} is {planes[0].image.shape[2]}x{planes[0].image.shape[1]}: "
                "the bands must share one pixel grid"
            )
        planes.append(data)
        bands.append(band)
    first = planes[0]
    shape = (len(planes), *first.image.shape[1:])
    wcs = next((d.wcs for d in planes if d.wcs is not None), None)
    for (_, path), d in zip(items, planes):
        off = _grid_offset(wcs, d.wcs, shape[1:])
        if off > GRID_TOLERANCE_PX:
            raise ProbcatValueError(
                f"{path}: its WCS puts the pixels {off:.2g} px from those of {items[0][1]}: "
                "the bands must share one pixel grid (resample them onto one first)"
            )
    image = np.empty(shape, np.float32)
    for k, d in enumerate(planes):
        image[k] = d.image[0]
    noise = np.array([d.noise_sigma[0] for d in planes], float)
    gains = [None if d.gain is None else float(d.gain[0]) for d in planes]
    gain = None if all(g is None for g in gains) else np.array([g or 1.0 for g in gains])
    no_gain = tuple(b for b, d in zip(bands, planes) if d.adu_without_gain)
    masks = [d.mask for d in planes]
    file_mask = None
    if any(m is not None for m in masks):
        file_mask = np.zeros(shape, bool)
        for k, m in enumerate(masks):
            if m is not None:
                file_mask[k] = m[0]
    variance = None
    if any(d.variance is not None for d in planes):  # a band without: its NOISE everywhere
        variance = np.empty(shape, np.float32)
        for k, d in enumerate(planes):
            level = noise[k] ** 2 if np.isfinite(noise[k]) else 1.0
            variance[k] = d.variance[0] if d.variance is not None else level
    if weight is not None:
        variance, no_weight = _read_weight(Path(items[0][1]), weight, shape, weight_type, hdu)
        file_mask = no_weight if file_mask is None else (file_mask | no_weight)
        if not file_mask.any():
            file_mask = None
    units = {d.unit or "electron" for d in planes}
    unit = units.pop() if len(units) == 1 else "mixed"
    zps = [np.nan if d.zeropoint is None else float(d.zeropoint[0]) for d in planes]
    zp_from = ", ".join(sorted({d.zeropoint_from for d in planes if d.zeropoint_from}))
    noise_from = "VARIANCE" if any(d.noise_from == "VARIANCE" for d in planes) else "NOISE"
    return ImageData(
        image, wcs, tuple(bands), noise, {}, dict(first.header), gain, no_gain, file_mask,
        noise_from, "" if unit == "electron" else unit, variance,
        np.array(zps) if np.isfinite(zps).any() else None, zp_from,
    )  # fmt: skip


def read_files(paths, **kw) -> ImageData:
    """One image from one file or one file per band: a single file named without a band
    as :func:`read_image` reads it (a multi-band file whole), else :func:`read_bands`."""
    items = list(paths.items()) if isinstance(paths, dict) else [band_and_path(p) for p in paths]
    if len(items) == 1 and items[0][0] is None:
        return read_image(items[0][1], **kw)
    return read_bands(items, **kw)


def check_planes_found(paths, mask_planes, mask=None) -> None:
    """Warn when mask planes were named (``mask_planes`` a non-empty tuple, as
    ``--mask-planes`` gives it) but nothing holds them: no ``mask`` file was given and no
    image file in ``paths`` (names, ``"BAND=FILE"`` strings or ``(band, file)`` pairs) has
    a ``MASK`` HDU, so no pixel is masked by plane. Call it after the files were read."""
    if not mask_planes or mask is not None:
        return
    items = list(paths.items()) if isinstance(paths, dict) else [band_and_path(p) for p in paths]
    for _, path in items:
        try:
            with fits.open(path) as hdul:
                if "MASK" in hdul:
                    return
        except (OSError, ValueError):
            return  # read_image has said what is wrong with it
    names = [Path(p).name for _, p in items]
    which = f"{names[0]} has no" if len(names) == 1 else f"none of {', '.join(names)} has a"
    warn_user(
        f"mask planes {','.join(mask_planes)} named, but {which} MASK HDU and no mask "
        "file was given (--mask): no pixel is masked by plane"
    )


_BAND_KEYWORDS = ("BAND", "FILTER", "FILTNAM", "FILTER1")


def band_and_path(item) -> tuple[str | None, str]:
    """``(band, path)`` of ``"BAND=FILE"`` (a short name before ``=``, and no file named
    so) or of a ``(band, path)`` pair, else ``(None, item)``."""
    if isinstance(item, tuple) and len(item) == 2:  # (band, file), the band None or a name
        return item[0], str(item[1])
    text = str(item)
    head, sep, tail = text.partition("=")
    if sep and tail and 0 < len(head) <= 8 and head.isalnum() and not Path(text).exists():
        return head, tail
    return None, text


def band_letter(value) -> str | None:
    """The band a filter name names: a single letter, alone or at either end of the name
    after a separator (``i``, ``HSC-I``, ``LSST-i``, ``i_sim_1.4``, ``r DECam SDSS
    c0002``), lower case; None when it names none (``F814W``, ``N921``, "")."""
    words = [w for w in re.split(r"[\s_\-.:/]+", str(value).strip()) if w]
    for word in (words[:1] + words[-1:]) if words else []:
        if len(word) == 1 and word.isalpha():
            return word.lower()
    return None


SEPARATORS = r"[\s_\-.]+"  # between the words of a file name


def without_band(path: Path, band: str) -> tuple:
    """``(key, stem)``: ``path`` with the words and directories that are ``band``'s letter
    taken out, and the file's stem without them (a separator beside each dropped too);
    ``(None, None)`` when the band's letter is no word of the path."""
    stem = image_stem(path)
    pieces = re.split(f"({SEPARATORS})", stem)  # words and separators, alternating
    at = [i for i, piece in enumerate(pieces) if piece.lower() == band]
    parts = ["\0" if part.lower() == band else part for part in path.parent.parts]
    if not at and "\0" not in parts:
        return None, None
    key = "".join("\0" if i in at else piece for i, piece in enumerate(pieces))
    kept = list(pieces)
    for i in reversed(at):  # the word, and a separator beside it (before, else after)
        lo, hi = (i - 1, i + 1) if i > 0 else (i, i + 2)
        kept[lo:hi] = []
    return (*parts, key), "".join(kept)


def files_stem(files: dict) -> str:
    """The catalog name of an image given as ``{band: file}``: its files' name less the
    band where that is one name for all (``patch`` of ``patch_u.fits``...), else their
    common beginning."""
    stems = {without_band(Path(f), str(b).lower())[1] for b, f in files.items()}
    if len(stems) == 1 and None not in stems:
        return stems.pop() or "".join(files)
    names = [image_stem(f) for f in files.values()]
    return os.path.commonprefix(names).rstrip("_-. ") or names[0]


def band_of_file(path) -> tuple[str, tuple[int, int], WCS | None] | None:
    """``(band, (H, W), wcs)`` of a single-band image file whose header names its band (as
    :func:`read_image` reads it: the first image HDU's ``BAND``, ``FILTER``, ``FILTNAM`` or
    ``FILTER1``, else the primary header's; a single letter, :func:`band_letter`), read from
    its headers only; None for any other file (a multi-band or probcat file, several images,
    no band named, unreadable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file says its own when it is read
        try:
            return _band_of_file(path)
        except Exception:  # noqa: BLE001 - not a file to group: read (and judged) on its own
            return None


def _band_of_file(path):
    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        primary = hdul[0].header
        if "NBANDS" in primary:
            return None
        images = [i for i in _images(hdul) if hdul[i].name not in _AFW_PLANES]
        if len(images) != 1:
            return None
        hdr = hdul[images[0]].header
        naxis = int(hdr.get("NAXIS", 0))
        if not (naxis == 2 or (naxis == 3 and int(hdr.get("NAXIS3", 0)) == 1)):
            return None
        keys = [str(h.get(k, "")).strip() for h in (hdr, primary) for k in _BAND_KEYWORDS]
        band = band_letter(str(hdr.get("BANDS", "")).strip() or next((v for v in keys if v), ""))
        if band is None:
            return None
        shape = (int(hdr["NAXIS2"]), int(hdr["NAXIS1"]))
        wcs = _wcs(path, hdr) if hdr.get("CTYPE1") else None
    return band, shape, wcs


def same_grid(a: tuple, b: tuple) -> bool:
    """Whether two ``((H, W), wcs)`` images share their pixel grid: one size, and WCSs
    (where both have one) within 0.05 px of each other, as :func:`read_bands` needs."""
    return a[0] == b[0] and _grid_offset(a[1], b[1], a[0]) <= GRID_TOLERANCE_PX


def _grid_offset(ref: WCS | None, wcs: WCS | None, shape: tuple[int, int]) -> float:
    """The largest distance, pixels of ``ref``, between where ``ref`` and ``wcs`` put the
    corners and centre of an image of ``shape`` on the sky (0 when either is None or has
    no celestial axes)."""
    if ref is None or wcs is None or ref is wcs:
        return 0.0
    if not (ref.has_celestial and wcs.has_celestial):
        return 0.0
    h, w = shape
    x = np.array([0.0, w - 1, 0.0, w - 1, (w - 1) / 2])
    y = np.array([0.0, 0.0, h - 1, h - 1, (h - 1) / 2])
    try:
        sky = wcs.celestial.pixel_to_world(x, y)
        bx, by = ref.celestial.world_to_pixel(sky)
    except Exception:  # noqa: BLE001 - frames that do not convert: not the same grid
        return float("inf")
    return float(np.max(np.hypot(np.asarray(bx) - x, np.asarray(by) - y)))


_AFW_PLANES = ("MASK", "VARIANCE")  # an LSST image's companions of its IMAGE HDU


def _holds_image(h) -> bool:
    """Whether an HDU is an image of at least 2 dimensions (read from its header: no data
    is loaded)."""
    return bool(h.is_image) and int(h.header.get("NAXIS", 0) or 0) >= 2


def _hdu_label(hdul, i: int) -> str:
    """``3`` or ``3 (CCD12)``: an HDU's index and its EXTNAME when it has one."""
    return f"{i} ({hdul[i].name})" if hdul[i].name and hdul[i].name != "PRIMARY" else str(i)


def _images(hdul) -> list[int]:
    """The indices of the HDUs of ``hdul`` that hold an image."""
    return [i for i, h in enumerate(hdul) if _holds_image(h)]


def image_hdu(path: Path, hdul, hdu=None, what: str = "", companion: bool = False) -> int:
    """The index of the image HDU to read in ``hdul``: ``hdu`` (an index or an ``EXTNAME``)
    when given, else the first that holds an image, with a warning naming the others (an
    LSST image's ``MASK`` and ``VARIANCE`` aside); one-line errors for a file without
    images, or without ``hdu``. ``what``: the file's role in messages ("weight map ").
    ``companion``: a weight map or mask of the image read at ``hdu``, which applies only
    where this file holds several images too (one map per CCD); a single map serves any."""
    images = _images(hdul)
    if companion and len(images) <= 1:
        hdu = None
    if hdu is not None:
        return _chosen_hdu(path, hdul, hdu, images)
    if not images:
        raise ProbcatValueError(
            f"{path}: no image data in any HDU{' of the ' + what if what else ''}"
        )
    others = [i for i in images[1:] if hdul[i].name not in _AFW_PLANES]
    if others:
        names = ", ".join(_hdu_label(hdul, i) for i in others[:6])
        more = f" and {len(others) - 6} more" if len(others) > 6 else ""
        warn_user(
            f"{path}: reading {what}HDU {_hdu_label(hdul, images[0])} only; {len(others)} "
            f"more hold images ({names}{more}): choose one with --hdu (hdu=)",
        )
    return images[0]


def image_hdu_names(path) -> list[str]:
    """The image HDUs of a FITS file (an LSST image's ``MASK`` and ``VARIANCE`` aside), by
    ``EXTNAME`` where each has a distinct one, else by index: the ``hdu`` values that read
    each (headers only; one-line errors for a file that cannot be read or has none)."""
    path = Path(path)
    try:
        with _quiet_astropy(), fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            if "NBANDS" in hdul[0].header:
                raise ProbcatValueError(
                    f"{path}: a probcat image (one HDU per band) is read whole: no hdu to choose"
                )
            found = [(i, hdul[i].name) for i in _images(hdul) if hdul[i].name not in _AFW_PLANES]
    except UNREADABLE as e:
        raise ProbcatIOError(f"{path}: not a readable FITS file ({e})") from e
    if not found:
        raise ProbcatValueError(f"{path}: no image data in any HDU")
    names = [n for _, n in found]
    by_name = all(n and n != "PRIMARY" for n in names) and len(set(names)) == len(names)
    return names if by_name else [str(i) for i, _ in found]


def _chosen_hdu(path: Path, hdul, hdu, images: list[int]) -> int:
    """The index of ``hdu`` (an index, or an ``EXTNAME``, any case) in ``hdul``; a one-line
    error when the file has no such HDU or it holds no image."""
    if isinstance(hdu, (bool, np.bool_)):
        raise ProbcatValueError(f"hdu must be an index or an EXTNAME, got {hdu!r}")
    if isinstance(hdu, str) and hdu.strip().lstrip("-").isdigit():
        hdu = int(hdu)
    if isinstance(hdu, (int, np.integer)):
        idx = int(hdu)
        if not 0 <= idx < len(hdul):
            raise ProbcatValueError(f"{path}: no HDU {idx} (the file has {len(hdul)})")
    else:
        name = str(hdu).strip().upper()
        idx = next((i for i, h in enumerate(hdul) if h.name.upper() == name), None)
        if idx is None:
            have = ", ".join(_hdu_label(hdul, i) for i in images[:8]) or "none"
            raise ProbcatValueError(f"{path}: no HDU named {hdu!r} (images: {have})")
    if idx not in images:
        have = ", ".join(_hdu_label(hdul, i) for i in images[:8]) or "none"
        raise ProbcatValueError(
            f"{path}: HDU {_hdu_label(hdul, idx)} holds no image (images: {have})"
        )
    return idx


def image_stem(path) -> str:
    """An image file's name without its FITS suffixes: ``field`` of ``field.fits``,
    ``field.fits.fz`` or ``field.fit.gz`` (any other name: its stem)."""
    name = Path(path).name
    low = name.lower()
    for outer in (".fz", ".gz", ""):
        for inner in (".fits", ".fit", ".fts"):
            if low.endswith(inner + outer) and len(name) > len(inner + outer):
                return name[: -len(inner + outer)]
    return Path(path).stem


WEIGHT_TYPES = ("weight", "variance", "rms")  # SExtractor's MAP_WEIGHT, MAP_VAR, MAP_RMS


def check_weight_type(kind: str, name: str = "weight type") -> None:
    """A one-line error unless ``kind`` is one of :data:`WEIGHT_TYPES` (``name``: what the
    message calls it, e.g. the command-line option)."""
    if kind not in WEIGHT_TYPES:
        raise ProbcatValueError(f"{name} must be one of {', '.join(WEIGHT_TYPES)}, got {kind!r}")


def _read_weight(
    path: Path, weight, shape: tuple, kind: str = "weight", hdu=None
) -> tuple[np.ndarray, np.ndarray]:
    """``(variance, no_weight)`` of the weight map file ``weight`` for the image ``path``
    of ``shape`` ``(bands, H, W)``: the variance its values give (``kind``: ``"weight"``,
    inverse variance; ``"variance"``; ``"rms"``, the noise sigma), inf where there is
    none, float32, and the pixels without a positive finite value, both
    ``(bands, H, W)``. ``hdu``: the image's HDU, read from a weight file that has several
    images too (one weight map per CCD, as the image has one CCD per HDU)."""
    check_weight_type(kind)
    weight = Path(weight)
    if not weight.is_file():
        raise ProbcatFileError(f"{weight}: weight map file not found")
    try:
        with _quiet_astropy(), fits.open(weight, memmap=False) as hdul:
            idx = image_hdu(weight, hdul, hdu, "weight map ", companion=True)
            w = np.array(hdul[idx].data, dtype=np.float32)  # (float64 would double a 6-band map)
    except UNREADABLE as e:
        raise ProbcatIOError(f"{weight}: not a readable FITS weight map ({e})") from e
    except (TypeError, ValueError) as e:
        if isinstance(e, ProbcatValueError):
            raise
        raise ProbcatValueError(f"{weight}: a weight map must be numeric ({e})") from e
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3 or w.shape[1:] != tuple(shape[1:]) or w.shape[0] not in (1, shape[0]):
        raise ProbcatValueError(
            f"{weight}: weight map of shape {w.shape} does not match the image {path.name}'s "
            f"{tuple(shape[1:])} ((H, W), or one plane per band: {shape[0]})"
        )
    w = np.broadcast_to(w, shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        none = ~(np.isfinite(w) & (w > 0))
        v = np.where(none, 1.0, w)
        v = 1.0 / v if kind == "weight" else (v * v if kind == "rms" else v)
        variance = np.where(none, np.inf, v).astype(np.float32)
    return variance, none


def _afw_planes(path: Path, hdul, image: np.ndarray, planes) -> tuple:
    """``(mask, variance, noise)`` of an LSST (afw) image file's ``MASK`` and ``VARIANCE``
    HDUs for its ``image`` ``(1, H, W)``: the no-data pixels (``(1, H, W)`` bool, or None
    when none is), the variance plane (``(1, H, W)`` float32) and the noise sigma of the
    unmasked pixels (both None without a usable ``VARIANCE``)."""
    from probcat.masking import plane_mask

    shape = image.shape[1:]
    bad = np.zeros(shape, bool)
    if (planes is None or len(planes)) and "MASK" in hdul:
        m = hdul["MASK"]
        if m.data is None or np.shape(m.data) != shape:
            raise ValueError(f"MASK HDU of shape {np.shape(m.data)}, the image {shape}")
        bits = plane_mask(m.data, m.header, planes, where=f"{path}: ")
        if bits is None:
            warn_user(
                f"{path}: the MASK HDU names no mask planes (no MP_ keywords): not read "
                "(give the mask with mask=, --mask)",
            )
        else:
            bad |= bits
    noise = plane = None
    if "VARIANCE" in hdul and hdul["VARIANCE"].data is not None:
        var = hdul["VARIANCE"].data
        if np.shape(var) != shape:
            raise ValueError(f"VARIANCE HDU of shape {np.shape(var)}, the image {shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            var = np.asarray(var, np.float64)
            bad |= ~(np.isfinite(var) & (var > 0))
        good = var[~bad & np.isfinite(image[0])]
        if good.size:
            noise = float(np.sqrt(np.median(good)))
            plane = np.repeat(var.astype(np.float32)[None], len(image), 0)
    # one plane per band of the image (an afw IMAGE is one band; a cube gets each its own)
    return (np.repeat(bad[None], len(image), 0) if bad.any() else None), plane, noise


@contextlib.contextmanager
def _quiet_astropy():
    """astropy's notes on what ``silentfix`` repairs, or on a file it then fails to read,
    are not the user's business: the error (if any) says what is wrong."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        yield


def _wcs(path: Path, header) -> WCS | None:
    """The celestial WCS of an image header; an invalid one is a warning (the catalog then
    has pixel positions only), not a reason to refuse the image."""
    try:
        with _quiet_astropy():
            return WCS(header, naxis=2)
    except Exception as e:  # wcslib raises several types for bad CTYPE/projection cards
        reason = " ".join(str(e).split())
        warn_user(f"{path}: invalid WCS ({reason}): pixel positions only")
        return None


_ELECTRONS = {"electron", "electrons", "e-", "e", "electron/s", "e-/s"}
_ADU = {"adu", "adus", "count", "counts", "ct", "cts", "dn", "adu/s", "count/s", "counts/s",
        "ct/s", "dn/s"}  # fmt: skip


def _unit(header) -> str:
    """The header's ``BUNIT``, lower case ("" when absent)."""
    return str(header.get("BUNIT", "")).strip().lower()


def _in_adu(header) -> bool:
    """Whether ``BUNIT`` says the pixels are in ADU (counts, DN) rather than electrons."""
    return _unit(header) in _ADU


def _gain_keyword(path: Path, header) -> float:
    """``GAIN`` (e-/ADU) of an image whose ``BUNIT`` is not electrons; NaN when absent or
    when the pixels are already electrons; a value that is not a positive finite number is
    an error."""
    from probcat.background import plausible_gain

    value = header.get("GAIN")
    if value is None or _unit(header) in _ELECTRONS:
        return np.nan
    return float(plausible_gain(_positive_keyword(path, "GAIN", value), f"{path}: GAIN"))


# AB magnitude of a flux of 1 in a flux-density BUNIT: -2.5 log10(unit / 3631 Jy)
UNIT_ZEROPOINTS = {"njy": 31.4, "ujy": 23.9, "microjy": 23.9, "mjy": 16.4, "jy": 8.9}
# keywords that give the AB magnitude of a flux of 1 in the pixels' units (as written:
# counts of the whole exposure, not per second), most common first
ZEROPOINT_KEYWORDS = ("MAGZERO", "MAGZP", "PHOTZP")


# the largest |AB zeropoint| read as one (a pixel value of 1 of 1e40 Jy or 1e-40 Jy): beyond
# it the flux scale is 0 or infinite in floats, and the number a mistake
ZEROPOINT_PLAUSIBLE = 100.0


def plausible_zeropoint(value: float, what: str) -> float:
    """``value``, an AB zeropoint named ``what`` in the error, if within
    :data:`ZEROPOINT_PLAUSIBLE` of 0 (NaN passes: unknown); else a one-line error."""
    if np.isfinite(value) and not abs(value) <= ZEROPOINT_PLAUSIBLE:
        raise ProbcatValueError(
            f"{what} {value:g} is not a plausible AB magnitude of a pixel value of 1 "
            f"(expected within +-{ZEROPOINT_PLAUSIBLE:g})"
        )
    return value


def _zeropoint_keyword(path: Path, header, own_format: bool = False) -> tuple[float, str]:
    """The AB magnitude of a flux of 1 in an image's pixel units and where it came from:
    a flux-density ``BUNIT`` (nJy, uJy, mJy, Jy); else ``MAGZERO``, ``MAGZP`` or ``PHOTZP``;
    else ``FLUXMAG0`` (the flux of magnitude 0, older LSST/HSC images: 2.5 log10
    FLUXMAG0); else, in probcat's own files, ``ZEROPT`` (magnitude of 1 e-/s) plus 2.5 log10
    ``EXPTIME``. ``(NaN, "")`` when none is there; a keyword that is not a finite number
    (FLUXMAG0: a positive one) is an error."""
    unit = _unit(header).replace("μ", "u").replace("µ", "u")
    if unit in UNIT_ZEROPOINTS:
        return UNIT_ZEROPOINTS[unit], "BUNIT"
    zp, key = np.nan, ""
    for name in ZEROPOINT_KEYWORDS:
        if name in header:
            zp, key = _finite_keyword(path, name, header[name]), name
            break
    else:
        if "FLUXMAG0" in header:
            zp = 2.5 * np.log10(_positive_keyword(path, "FLUXMAG0", header["FLUXMAG0"]))
            key = "FLUXMAG0"
        elif own_format and "ZEROPT" in header and "EXPTIME" in header:
            zp = _finite_keyword(path, "ZEROPT", header["ZEROPT"])
            zp += 2.5 * np.log10(_positive_keyword(path, "EXPTIME", header["EXPTIME"]))
            key = "ZEROPT"
    return plausible_zeropoint(zp, f"{path}: {key} keyword's zeropoint"), key


def _finite_keyword(path: Path, name: str, value, what: str = "finite number") -> float:
    """A keyword that must be a finite number (a boolean or a string is an error)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ProbcatValueError(f"{path}: {name} keyword {value!r} is not a number")
    if not np.isfinite(value):
        raise ProbcatValueError(f"{path}: {name} keyword {value!r} is not a {what}")
    return float(value)


def _noise_keyword(path: Path, value) -> float:
    """A ``NOISE`` keyword's value: NaN when absent, else a positive finite number."""
    if isinstance(value, float) and np.isnan(value):
        return value
    return _positive_keyword(path, "NOISE", value)


def _positive_keyword(path: Path, name: str, value) -> float:
    """A keyword that must be a positive finite number (a boolean, a string or a
    non-positive value is an error, not a guess)."""
    if not _finite_keyword(path, name, value, "positive finite number") > 0:
        raise ProbcatValueError(f"{path}: {name} keyword {value!r} is not a positive finite number")
    return float(value)
