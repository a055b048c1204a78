"""Images as users have them: pixels in ADU with a gain, a sky left in, a NOISE keyword
that does not describe the pixels.

probcat's networks expect background-subtracted images in electrons with a known noise
sigma per band. :func:`prepare` brings an image there and says what it did (recorded in
the catalog's metadata):

- **Units.** With a gain (e-/ADU: the ``gain`` argument, ``--gain``, or the ``GAIN``
  keyword of an image whose ``BUNIT`` is not electrons), the pixels are converted to
  electrons. A ``NOISE`` keyword is in the pixels' own units (so it needs no conversion); a
  ``noise_sigma`` argument and the survey's default are in electrons.
- **Background** (``"auto"``, the default): a first sky per band from ``sep.Background``
  (64-px boxes, 3x3 median filter, SExtractor's estimator) tells whether the image is
  already background-subtracted: it is not when that sky's median over the image is more
  than :data:`SKY_LEVEL` noise sigma from zero, or when it varies across the image by more
  than :data:`SKY_RANGE` sigma (a gradient). An image that is already subtracted is left
  exactly as it was. Otherwise the sky that is subtracted is refined
  (:func:`masked_sky`): sources are masked (SEP segmentation above :data:`MASK_SIGMA`
  sigma, grown by :data:`MASK_GROW` px), a plane is fitted to the unmasked pixels with
  clipping, and ``sep.Background`` of what remains (masked) adds the small-scale structure;
  twice. Even so, the light of galaxies too faint to mask lifts any sky estimate: by
  ``sky_offset`` noise sigma in a field of the prior's density, which the detection
  weights record in their manifest (measured by :func:`sky_offset` on simulated sky-free
  scenes after training) and which is taken off the estimate before it is subtracted.
  ``"none"`` skips all this.
- **Noise.** The pixel noise is measured (the robust rms about the sky); a NOISE value (or
  the survey's default, when there is none) that differs from it by more than a factor of
  :data:`NOISE_FACTOR` is reported as a warning with the measured value. The quick
  measurement counts the light of sources that fill much of a small image as noise (a
  98-px scene with a bright galaxy reads 2-15 times its noise), so before warning the noise
  is measured again with the sources masked (:func:`masked_noise`).

- **A noise that varies across the image** (an LSST image's ``VARIANCE`` plane, or a
  weight map: a coadd is deeper where more visits overlap): the image is read against one
  noise sigma per band, so where the noise is higher the network would see more of it than
  it was trained for, and detect it. :func:`noise_ratio` smooths the variance map (its
  median in 16-px blocks) and, where that noise varies by more than :data:`WHITEN_TOL`
  about its median, the detectors read the image scaled by ``noise(median) / noise(x,
  y)``: its noise is then ``sigma`` (that of the median depth) everywhere, and a source's
  detection probability is read from its local signal-to-noise (scaled after the sky is
  subtracted). Deblended fluxes and photo-z PDFs read the image as it is (the fluxes'
  errors the local noise).

Images smaller than 32 x 32 px are too small to tell sky from source: they are left alone.
"""

from __future__ import annotations

import numpy as np

from probcat.errors import ProbcatValueError, warn_user

__all__ = [
    "prepare",
    "aperture_noise_factor",
    "sky",
    "data_noise",
    "masked_sky",
    "masked_noise",
    "sky_offset",
    "noise_ratio",
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
# a noise map (VARIANCE) that stays within this fraction of its median over 5-95% of the
# image is read as uniform: the image is not rescaled
WHITEN_TOL = 0.05
VARIANCE_BLOCK = 16  # px: the blocks in which a variance map's median is taken
MIN_SIZE = 32
BOX = 64
MASK_SIGMA = 1.5  # sources: SEP segmentation above this many sigma (3x3 filtered)...
MASK_GROW = 3  # ...grown by this many px
PASSES = 2  # mask, fit; mask again with the better sky, fit again
PLANE_PIXELS = 250_000  # at most this many pixels in the plane fit
NOISE_PASSES = 10  # masked_noise: sky, mask, noise, again with the new noise; at most 10 times
NOISE_TOL = 0.02  # ... until the noise changes by less than this fraction
NOISE_MIN_PIXELS = 200
DATA_NOISE_CROP = 512  # px: the central crop data_noise measures on
DATA_NOISE_MIN_PIXELS = 10_000  # ... unless it holds fewer pixels of data: the whole band
NOISE_PIXELS = 250_000  # noise measured on at most about this many pixels (every step-th)


def _box(shape) -> int:
    return int(min(BOX, max(16, min(shape) // 2)))


def _step(size: int) -> int:
    """Every ``step``-th pixel along each axis keeps at most about :data:`NOISE_PIXELS` of
    ``size``: the median absolute deviation of that many noise pixels is within about 0.3%
    of the whole image's, at a quarter of the cost on a 1000 x 1000 image."""
    return max(1, int(np.ceil(np.sqrt(size / NOISE_PIXELS))))


def _mad_sigma(r: np.ndarray) -> float:
    """The Gaussian sigma of ``r`` from its median absolute deviation (1.4826 MAD)."""
    r = np.asarray(r, np.float64)
    return 1.4826 * float(np.median(np.abs(r - np.median(r))))


def sky(band: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The smooth sky of one band ``(H, W)`` (``sep.Background``, boxes of 64 px or half the
    image, 3x3 median filter) and the noise of its pixels about it: 1.4826 times their
    median absolute deviation (robust to sources; 0 for a constant image, where sep would
    report 1), on at most about :data:`NOISE_PIXELS` of them. ``mask``: pixels without data
    (``(H, W)``, True), left out of both (their sky interpolated from the others')."""
    import sep

    box = _box(band.shape)
    data = np.ascontiguousarray(band, dtype=np.float32)
    if mask is not None:
        data = np.ascontiguousarray(np.where(mask, 0.0, data), dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=bool)
    back = sep.Background(data, mask=mask, bw=box, bh=box, fw=3, fh=3).back()
    step = _step(data.size)
    r = data[::step, ::step] - back[::step, ::step]
    rms = _mad_sigma(r if mask is None else r[~mask[::step, ::step]])
    return back, rms


def noise_ratio(variance, bad=None, tol: float = WHITEN_TOL) -> np.ndarray | None:
    """``(bands, H, W)`` float32: per band, the noise at the median depth over the noise at
    each pixel, from a variance (or inverse-weight) map ``variance`` ``(bands, H, W)``: the
    square root of the map's median over its smooth value there (the median in blocks of
    :data:`VARIANCE_BLOCK` px, interpolated bilinearly: a step in depth stays a step,
    spread over a block, with no spline's overshoot; the pixels in ``bad`` and those
    without a positive finite variance left out), kept within a factor 10. Only the map's
    shape counts, not its scale (a weight map may be relative): the image times this ratio
    has, everywhere, the noise it has at its median depth. None when the noise stays
    within ``tol`` of that over 5-95% of every band's pixels (uniform: nothing to
    rescale)."""
    variance = np.asarray(variance)
    ratios, uniform = [], True
    for k in range(len(variance)):
        with np.errstate(invalid="ignore", over="ignore"):
            v = np.asarray(variance[k], np.float64)
            skip = ~(np.isfinite(v) & (v > 0))
        if bad is not None:
            skip |= np.asarray(bad[k] if np.ndim(bad) == 3 else bad, bool)
        if skip.all():
            ratios.append(np.ones(v.shape, np.float32))
            continue
        level = float(np.median(v[~skip]))
        smooth = np.maximum(_block_median(v, skip), 1e-300)
        r = np.clip(np.sqrt(level / smooth), 0.1, 10.0).astype(np.float32)
        step = _step(r.size)
        lo, hi = np.percentile(r[::step, ::step], [5, 95])
        uniform &= bool(1 - tol <= lo and hi <= 1 + tol)
        ratios.append(r)
    return None if uniform else np.stack(ratios)


def _block_median(v: np.ndarray, skip: np.ndarray, block: int | None = None) -> np.ndarray:
    """``v`` ``(H, W)`` smoothed: the median of its pixels outside ``skip`` in blocks of
    ``block`` px (a block without any: its nearest block's), interpolated bilinearly between
    the block centres (constant beyond the outer ones)."""
    from scipy.ndimage import distance_transform_edt

    b = VARIANCE_BLOCK if block is None else block
    h, w = v.shape
    ny, nx = -(-h // b), -(-w // b)
    a = np.full((ny * b, nx * b), np.nan)
    a[:h, :w] = np.where(skip, np.nan, v)
    blocks = a.reshape(ny, b, nx, b).transpose(0, 2, 1, 3).reshape(ny, nx, b * b)
    nan = np.isnan(blocks)
    some, empty = nan.any(2), nan.all(2)
    med = np.zeros((ny, nx))
    med[~some] = np.median(blocks[~some], axis=1)  # (nanmedian is slow: the full blocks)
    part = some & ~empty
    if part.any():
        med[part] = np.nanmedian(blocks[part], axis=1)
    if empty.any():
        idx = distance_transform_edt(empty, return_distances=False, return_indices=True)
        med = med[idx[0], idx[1]]

    def axis(n, m):
        t = np.clip((np.arange(n) + 0.5) / b - 0.5, 0.0, m - 1.0)
        i0 = np.floor(t).astype(int)
        return i0, np.minimum(i0 + 1, m - 1), t - i0

    y0, y1, fy = axis(h, ny)
    x0, x1, fx = axis(w, nx)
    rows = med[y0] * (1 - fy)[:, None] + med[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def _source_mask(resid: np.ndarray, rms: float) -> np.ndarray:
    """Pixels of sources in ``resid`` (sky removed): SEP's segmentation above
    :data:`MASK_SIGMA` sigma (no deblending), grown by :data:`MASK_GROW` px; a plain
    threshold of the 3x3-smoothed image when SEP gives up (too many active pixels)."""
    import sep
    from scipy.ndimage import binary_dilation, uniform_filter

    rms = max(float(rms), 1e-30)
    stack = sep.get_extract_pixstack()
    try:
        sep.set_extract_pixstack(max(stack, resid.size // 2))
        _, seg = sep.extract(
            resid, MASK_SIGMA, err=rms, minarea=5, deblend_cont=1.0, segmentation_map=True
        )
        mask = seg > 0
    except Exception:  # sep's buffers overflow on pathological images: a cruder mask
        mask = uniform_filter(resid, 3) > MASK_SIGMA * rms / 3
    finally:
        sep.set_extract_pixstack(stack)
    return binary_dilation(mask, iterations=MASK_GROW)


def _plane(data: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """A plane fitted to the unmasked pixels of ``data`` (least squares, 3-sigma clipped
    three times, on at most :data:`PLANE_PIXELS` of them); None when too few are left."""
    h, w = data.shape
    step = max(1, int(np.ceil(np.sqrt(data.size / PLANE_PIXELS))))
    yy, xx = np.mgrid[0:h:step, 0:w:step]
    z = data[::step, ::step].astype(np.float64).ravel()
    design = np.column_stack([np.ones(z.size), xx.ravel() / w - 0.5, yy.ravel() / h - 0.5])
    ok = ~mask[::step, ::step].ravel() & np.isfinite(z)
    keep = ok
    coef = None
    for _ in range(3):
        if keep.sum() < 100:
            return None
        coef = np.linalg.lstsq(design[keep], z[keep], rcond=None)[0]
        r = z - design @ coef
        scale = _mad_sigma(r[keep])
        keep = ok & (np.abs(r) < 3 * max(scale, 1e-30))
    x = np.arange(w) / w - 0.5
    y = np.arange(h) / h - 0.5
    return (coef[0] + coef[1] * x[None, :] + coef[2] * y[:, None]).astype(np.float32)


def masked_sky(band: np.ndarray, back: np.ndarray, rms: float) -> np.ndarray:
    """The refined sky of one band ``(H, W)`` from a first estimate ``back`` and the pixel
    noise ``rms``: mask the sources, fit a plane to the rest, add ``sep.Background`` of the
    masked residual (small-scale structure); :data:`PASSES` times. ``back`` is returned
    when nearly everything is masked."""
    import sep

    box = _box(band.shape)
    data = np.ascontiguousarray(band, dtype=np.float32)
    for _ in range(PASSES):
        mask = _source_mask(data - back, rms)
        plane = _plane(data, mask)
        if plane is None or mask.mean() > 0.9:
            return back
        resid = np.ascontiguousarray(data - plane)
        back = plane + sep.Background(resid, mask=mask, bw=box, bh=box, fw=3, fh=3).back()
    return back


def masked_noise(band: np.ndarray, back: np.ndarray, rms: float) -> float:
    """The pixel noise of one band ``(H, W)`` measured with its sources masked, from a first
    sky ``back`` and noise ``rms`` (:func:`sky`): the sky refined by :func:`masked_sky`,
    sources masked above it (:func:`_source_mask`), 1.4826 times the median absolute
    deviation of the other pixels; again with each pass's noise (a lower noise masks more
    of the sources' wings) until it changes by less than :data:`NOISE_TOL`, at most
    :data:`NOISE_PASSES` times. On pure noise it equals the quick estimate; where bright
    sources fill much of the image it is not lifted by their light (a 98-px ugrizy scene
    that an i = 16.5 galaxy fills read up to 2.1 times its noise after two passes, at most
    1.29 times at convergence). ``rms`` is returned when fewer than
    :data:`NOISE_MIN_PIXELS` pixels are left unmasked."""
    data = np.ascontiguousarray(band, dtype=np.float32)
    step = _step(data.size)
    for _ in range(NOISE_PASSES):
        back = masked_sky(data, back, rms)
        resid = np.ascontiguousarray(data - back)
        keep = ~_source_mask(resid, rms)
        r = resid[::step, ::step][keep[::step, ::step]]
        if r.size < NOISE_MIN_PIXELS:
            return float(rms)
        rms, last = _mad_sigma(r), rms
        if abs(rms - last) <= NOISE_TOL * last:
            break
    return float(rms)


def data_noise(
    band: np.ndarray, back: np.ndarray, rms: float, mask: np.ndarray, crop: int | None = None
) -> float:
    """The pixel noise of the pixels of one band ``(H, W)`` that are not in ``mask`` (no
    data), from its sky ``back`` and the noise about it ``rms`` (:func:`sky` with the mask):
    on the central ``crop`` x ``crop`` (default :data:`DATA_NOISE_CROP`; the whole band
    where that holds fewer than :data:`DATA_NOISE_MIN_PIXELS` pixels of data), sources
    masked at the noise as it stands (:func:`_source_mask`), 1.4826 times the median
    absolute deviation of the other pixels about the sky, again with each pass's noise
    until it changes by less than :data:`NOISE_TOL` (at most :data:`NOISE_PASSES` times);
    ``rms`` where fewer than :data:`NOISE_MIN_PIXELS` pixels are left. ``rms`` counts the
    light of the field's faint sources as noise (on a 1000 x 1000 LSST-i field 19% above
    the noise with sources masked); the sky-like noise that fills pixels without data
    (:func:`probcat.masking.fill_masked`) is this one, so that the noise estimates that
    read the filled pixels read the data's."""
    h, w = band.shape
    crop = DATA_NOISE_CROP if crop is None else int(crop)
    y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    sl = (slice(y0, y0 + crop), slice(x0, x0 + crop))
    if (~np.asarray(mask[sl], bool)).sum() < DATA_NOISE_MIN_PIXELS:  # the centre masked
        sl = (slice(0, h), slice(0, w))
    masked = np.asarray(mask[sl], bool)
    r = np.ascontiguousarray(np.where(masked, 0.0, band[sl] - back[sl]), dtype=np.float32)
    data = ~masked
    noise = float(rms)
    for _ in range(NOISE_PASSES):
        if not noise > 0:
            return float(rms)
        keep = data & ~_source_mask(r, noise)
        if keep.sum() < NOISE_MIN_PIXELS:
            return float(rms)
        noise, last = _mad_sigma(r[keep]), noise
        if abs(noise - last) <= NOISE_TOL * last:
            break
    return noise if noise > 0 else float(rms)


def wants_measured_noise(noise_sigma) -> bool:
    """Whether ``noise_sigma`` asks for the image's own noise (``"measured"``); any other
    string is a one-line error (numbers are checked with the image)."""
    if not isinstance(noise_sigma, str):
        return False
    if noise_sigma != "measured":
        raise ProbcatValueError(
            f"noise_sigma must be a number, one per band or 'measured', got {noise_sigma!r}"
        )
    return True


def measured_noise(x: np.ndarray, sigma) -> np.ndarray:
    """The pixel noise of each band of ``x`` ``(bands, H, W)``, in units of ``sigma`` (per
    band; the result is in ``sigma``'s units, electrons): :func:`masked_noise` about the
    sky of :func:`sky`. A band whose noise cannot be measured (a constant image) is an
    error that says to give the noise instead."""
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (x.shape[0],))
    out = []
    for k in range(x.shape[0]):
        back, rms = sky(x[k])
        value = (masked_noise(x[k], back, rms) if rms > 0 else 0.0) * float(sigma[k])
        if not (np.isfinite(value) and value > 0):
            raise ProbcatValueError(
                f"band {k}: its pixel noise cannot be measured (a constant image?): "
                "give the noise sigma instead (NOISE keyword, noise_sigma, --noise VALUE)"
            )
        out.append(value)
    return np.asarray(out, np.float32)


def sky_offset(images) -> np.ndarray:
    """How far :func:`masked_sky` lifts the sky of sky-free ``images`` (an iterable of
    ``(bands, H, W)`` arrays in noise-sigma units, e.g. simulated scenes of the prior): the
    mean of the estimate over pixels and images, per band, in noise sigma. The faint
    galaxies every field holds cause it; :func:`prepare` takes it off the estimate."""
    sums, n = None, 0
    for x in images:
        x = np.asarray(x, np.float32)
        est = []
        for band in x:
            back, rms = sky(band)
            est.append(float(np.mean(masked_sky(band, back, rms))))
        sums = np.asarray(est) if sums is None else sums + np.asarray(est)
        n += 1
    if not n:
        raise ProbcatValueError("no images to measure the sky offset on")
    return sums / n


def check_mode(background) -> None:
    """A one-line error unless ``background`` is one of :data:`BACKGROUND_MODES`."""
    if background not in BACKGROUND_MODES:
        raise ProbcatValueError(
            f"background must be one of {', '.join(BACKGROUND_MODES)}, got {background!r}"
        )


# gains (e-/ADU) read as one: CCDs and CMOS sensors have 0.1-10, a coadd's or a binned
# image's effective gain can be thousands; beyond this the pixels in electrons overflow or
# underflow float32's range (GAIN = 1e-45 read every pixel as 0), and the number a mistake
GAIN_PLAUSIBLE = (1e-6, 1e6)


def plausible_gain(gain: np.ndarray, what: str = "gain") -> np.ndarray:
    """``gain`` if every value lies in :data:`GAIN_PLAUSIBLE`; else a one-line error."""
    lo, hi = GAIN_PLAUSIBLE
    bad = [float(g) for g in np.atleast_1d(gain) if not lo <= g <= hi]
    if bad:
        raise ProbcatValueError(
            f"{what} {bad[0]:g} e-/ADU is not a plausible gain ({lo:g} to {hi:g}): check it"
        )
    return gain


def gain_array(gain, n: int) -> np.ndarray:
    """A gain (e-/ADU) per band from a number or a sequence; a one-line error otherwise
    (and for a gain outside :data:`GAIN_PLAUSIBLE`)."""
    return plausible_gain(per_band_array(gain, n, "gain"))


def per_band_array(value, n: int, name: str, positive: bool = True) -> np.ndarray:
    """``n`` values, one per band, from a number or a sequence of ``n``, each finite (and
    positive when ``positive``); a one-line error naming ``name`` otherwise."""
    what = "a positive finite number" if positive else "a finite number"
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ProbcatValueError(f"{name} must be {what}, got {value!r}")
    try:
        arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
    except (TypeError, ValueError):
        raise ProbcatValueError(f"{name} must be a number or one per band, got {value!r}") from None
    if not np.all(np.isfinite(arr) & ((arr > 0) | (not positive))):
        raise ProbcatValueError(f"{name} must be {what}, got {value!r}")
    return arr


NOISE_CORRELATION_CROP = 256  # px: the central crop the noise correlation is measured on
NOISE_CORRELATION_WARN = 0.08  # noise_correlation above which probcat warns
NOISE_CORRELATION_MIN_PIXELS = 2000
NOISE_CORRELATION_MIN_SIZE = 128  # px: smaller images (cutouts) are not measured


def _sky_crop(band: np.ndarray, crop: int):
    """``(r, keep)``: the central ``crop`` x ``crop`` of ``band`` (float32) and its sky
    pixels (data, sources masked at the crop's own pixel noise, :func:`_source_mask`); None
    for images smaller than :data:`NOISE_CORRELATION_MIN_SIZE` or with fewer than
    :data:`NOISE_CORRELATION_MIN_PIXELS` pixels of data."""
    h, w = band.shape
    if min(h, w) < NOISE_CORRELATION_MIN_SIZE:
        return None
    y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    r = np.ascontiguousarray(band[y0 : y0 + crop, x0 : x0 + crop], dtype=np.float32)
    keep = (r != 0) & np.isfinite(r)
    if keep.sum() < NOISE_CORRELATION_MIN_PIXELS:
        return None
    rms = _mad_sigma(r[keep])  # the crop's own noise: a stated sigma may be off
    if not rms > 0:
        return None
    keep &= ~_source_mask(np.where(keep, r, 0).astype(np.float32), rms)
    return r, keep


def crop_noise(band: np.ndarray, crop: int = NOISE_CORRELATION_CROP) -> float | None:
    """A quick pixel noise of one band ``(H, W)`` (sky subtracted, 0: no data): 1.4826 times
    the median absolute deviation of the sky pixels of its central ``crop`` x ``crop``,
    sources masked once (:func:`_sky_crop`; about 10 ms). The faint wings left unmasked lift
    it 1-2% above :func:`masked_noise` on LSST-depth fields. None where :func:`_sky_crop` is
    (small images)."""
    sky = _sky_crop(band, crop)
    if sky is None:
        return None
    r, keep = sky
    return _mad_sigma(r[keep])


def noise_correlation(band: np.ndarray, crop: int = NOISE_CORRELATION_CROP) -> float | None:
    """How much more the noise of adjacent pixels is correlated than that of pixels 2 px
    apart, in one band ``(H, W)`` in noise-sigma units with its sky subtracted (0: masked,
    no data): on the central ``crop`` x ``crop`` pixels, sources masked
    (:func:`_source_mask`, at the crop's own pixel noise), the mean correlation of
    horizontally and vertically adjacent pixels minus that of pixels 2 px apart. Light of
    faint sources left unmasked, smooth on the scale of the PSF, correlates both nearly
    alike; a resampling kernel correlates neighbours and not (or negatively) pixels 2 px
    apart. About 0 for white noise (-0.03 to 0.04 on 100-px LSST-i scenes, -0.005 to 0.02
    on 400-px fields); 0.15-0.25 for a coadd of visits resampled by a cubic spline. None where
    fewer than :data:`NOISE_CORRELATION_MIN_PIXELS` sky pixels are left, and for images
    smaller than :data:`NOISE_CORRELATION_MIN_SIZE` on a side (cutouts: too few sky pixels
    for a steady estimate, and batches of them are read fast)."""
    sky = _sky_crop(band, crop)
    if sky is None:
        return None
    r, keep = sky

    def corr(dy: int, dx: int) -> float:
        hh, ww = r.shape
        m = keep[: hh - dy, : ww - dx] & keep[dy:, dx:]
        if m.sum() < NOISE_CORRELATION_MIN_PIXELS:
            return np.nan
        a = r[: hh - dy, : ww - dx][m].astype(np.float64)
        b = r[dy:, dx:][m].astype(np.float64)
        a -= a.mean()
        b -= b.mean()
        return float((a * b).mean() / max(np.sqrt((a * a).mean() * (b * b).mean()), 1e-30))

    lag1 = [c for c in (corr(0, 1), corr(1, 0)) if np.isfinite(c)]
    lag2 = [c for c in (corr(0, 2), corr(2, 0)) if np.isfinite(c)]
    if not lag1 or not lag2:
        return None
    return float(np.mean(lag1) - np.mean(lag2))


APERTURE_NOISE_BAND = (0.1, 0.2)  # cycles/px: where the noise power at low frequency is read


def aperture_noise_factor(band: np.ndarray, crop: int = NOISE_CORRELATION_CROP) -> float | None:
    """How much more noise a sum over an aperture of a few pixels' radius carries than it
    would were the pixels' noise independent (``sigma sqrt(area)``), in one band ``(H, W)``
    in noise-sigma units, sky subtracted (0: no data), for noise correlated over a pixel or
    two (a coadd of resampled visits): ``sqrt(P_low / P_mean)``, the noise power at low
    spatial frequencies (which such an aperture sums) over its mean over all frequencies
    (the pixel variance). ``P_low`` is read at :data:`APERTURE_NOISE_BAND` (0.1-0.2
    cycles/px), where the interpolation kernels that resample visits pass the noise nearly
    unchanged and the light of faint sources left unmasked, blurred by the PSF, adds little;
    the power spectrum is that of the central ``crop``'s sky pixels (sources masked, as
    :func:`noise_correlation` masks them). About 1 for white noise (1.01-1.04 on 400-px
    LSST-i fields of galaxies); 1.1-1.2 for six visits resampled by Lanczos-3 or a cubic
    spline, 1.2-1.4 by bilinear interpolation. The correlation of the sky pixels
    themselves, summed over an aperture's pixel pairs, is not used: the faint light
    correlates them out to 8 px and more (1.4-2.0 on the same white fields). None where
    :func:`noise_correlation` is."""
    sky = _sky_crop(band, crop)
    if sky is None:
        return None
    r, keep = sky
    v = np.where(keep, r - r[keep].mean(), 0.0).astype(np.float64)
    power = np.abs(np.fft.fft2(v)) ** 2
    k = np.hypot(np.fft.fftfreq(v.shape[0])[:, None], np.fft.fftfreq(v.shape[1])[None, :])
    lo, hi = APERTURE_NOISE_BAND
    low = power[(k >= lo) & (k <= hi)].mean()
    return float(np.sqrt(low / max(power.mean(), 1e-300)))


def _noise_mismatch(sigma, noise) -> np.ndarray:
    """Bands whose stated noise ``sigma`` and measured ``noise`` differ by more than a factor
    :data:`NOISE_FACTOR`."""
    ratio = np.asarray(sigma, float) / np.maximum(np.asarray(noise, float), 1e-30)
    return np.flatnonzero((ratio > NOISE_FACTOR) | (ratio < 1 / NOISE_FACTOR))


def prepare(
    x: np.ndarray,
    sigma: np.ndarray,
    *,
    background: str = "auto",
    sigma_source: str = "NOISE",
    offset=None,
) -> tuple[np.ndarray, dict]:
    """``(x, info)``: the checked image ``x`` ``(bands, H, W)`` in units of the noise sigma
    ``sigma`` (per band, electrons), background subtracted as the module says, and what
    was done: ``background`` = ``"subtracted"``, ``"kept"`` (already subtracted), ``"none"``
    (not asked) or ``"too small"``; the subtracted ``sky_median`` and the measured
    ``pixel_noise`` per band, in electrons; where a sky was subtracted, ``sigma_e``, the
    noise sigma per band (electrons) that ``x`` and ``offset`` are in units of.
    ``sigma_source`` names where ``sigma`` came from, for the warning; ``offset`` (per band,
    noise sigma; None: 0) is the weights' :func:`sky_offset`, taken off a sky before it is
    subtracted. ``x`` itself is never modified."""
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
        # the sky map is smooth (splines through 64-px boxes): its level and 5-95% range
        # read on every k-th pixel (at most about NOISE_PIXELS of them) to within rounding
        step = _step(back.size)
        lvl = np.percentile(back[::step, ::step], [50, 95, 5])
        med, spread = float(lvl[0]), float(lvl[1] - lvl[2])
        if abs(med) > SKY_LEVEL or spread > SKY_RANGE:
            if out is None:
                out = np.array(x, dtype=np.float32, copy=True)
            back = masked_sky(x[k], back, rms) - (0.0 if offset is None else float(offset[k]))
            med = float(np.median(back))
            out[k] -= back.astype(np.float32)  # rms is already about this new zero
        else:
            med = 0.0
        medians.append(med * float(sigma[k]))
        noise.append(rms * float(sigma[k]))
    if out is not None and offset is not None:
        info["sky_offset"] = [round(float(v), 6) for v in offset]
    if out is not None:  # the unit of the sky and its offset: the noise sigma, electrons
        info["sigma_e"] = [round(float(v), 6) for v in sigma]
    info.update(
        background="kept" if out is None else "subtracted",
        sky_median=[round(v, 6) for v in medians],
    )
    bad = _noise_mismatch(sigma, noise)
    for k in bad:  # before warning, measure again without the sources' light
        back, rms = sky(x[k])
        noise[k] = masked_noise(x[k], back, rms) * float(sigma[k])
    bad = _noise_mismatch(sigma, noise)
    info["pixel_noise"] = [round(v, 6) for v in noise]
    if len(bad):
        k = int(bad[0])
        warn_user(
            f"{sigma_source} {float(sigma[k]):.4g} differs from the measured pixel noise "
            f"{noise[k]:.4g} (band {k}) by more than a factor {NOISE_FACTOR}: detection "
            "probabilities assume the former (check NOISE, noise_sigma or the gain, or use "
            "the measured noise: noise_sigma='measured', --noise measured)",
        )
    return (x if out is None else out), info
