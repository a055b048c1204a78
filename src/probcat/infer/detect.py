"""Detection on any image: tile features, marginal probabilities, MAP catalogs and
posterior catalog samples.

An image of any size is padded (never cropped) to whole tiles plus a halo of blank sky,
and the backbone runs, unpadded, in overlapping chunks whose halo covers the receptive
field, so the stitched tile features equal whole-image inference while memory is bounded
by the chunk.
The cheap tile-resolution heads then run on the whole tile grid, group by group
(checkerboard decoding, see :mod:`probcat.nets.detection`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError, warn_user
from probcat.metrics.detection import aperture_snr
from probcat.nets.detection import N_GROUPS, DetectionNet, TileOutput, tile_groups
from probcat.runtime import trim_heap
from probcat.tiles import pad_to_tiles, tile_to_pixel, window

# Checkerboard sweeps per posterior catalog sample: the first draws every group in turn,
# the next ones re-draw each group given all its neighbours (see decode).
SAMPLE_SWEEPS = 3

__all__ = [
    "SAMPLE_SWEEPS",
    "check_image",
    "check_size",
    "tile_image",
    "tile_features",
    "batch_tile_features",
    "features_sigma",
    "pixels_sigma",
    "predict_tiles",
    "decode",
    "Decisions",
    "map_catalog",
    "sample_catalogs",
    "catalog_from_decisions",
    "at_seeing",
    "at_depth",
    "matched_scale",
    "measured_scale",
    "SEEING_MATCH_TOLERANCE",
]

# a measured seeing ratio within this factor of 1 leaves the stamps as cut (the ratio's
# own scatter on a 1000x1000 field is about 1%)
SEEING_MATCH_TOLERANCE = 1.03
SEEING_RANGE = (0.25, 4.0)  # PSF width ratios the resampling is offered for


def matched_scale(scale: float | None) -> float:
    """The scale :func:`at_seeing` resamples stamps by for a PSF width ratio
    ``scale``: 1 for None or within :data:`SEEING_MATCH_TOLERANCE` of 1."""
    if scale is None:
        return 1.0
    if not (isinstance(scale, (int, float)) and SEEING_RANGE[0] <= scale <= SEEING_RANGE[1]):
        raise ProbcatValueError(
            f"seeing must be a PSF width ratio in [{SEEING_RANGE[0]:g}, {SEEING_RANGE[1]:g}], "
            f"got {scale!r}"
        )
    return 1.0 if abs(math.log(scale)) <= math.log(SEEING_MATCH_TOLERANCE) else float(scale)


def measured_scale(ratio: float | None) -> float | None:
    """The scale to read the classes of an image at, from its measured PSF width
    ``ratio``: None (the stamps as cut) when it was not measured, lies outside
    :data:`SEEING_RANGE` or within :data:`SEEING_MATCH_TOLERANCE` of 1."""
    if ratio is None or not SEEING_RANGE[0] <= ratio <= SEEING_RANGE[1]:
        return None
    return None if matched_scale(ratio) == 1.0 else ratio


@contextmanager
def at_seeing(net, scale: float | None):
    """Within the block, ``net`` reads an image whose PSF is ``scale`` times as wide as the
    weights' survey PSF: its stamp classifier reads stamps resampled to the survey's
    seeing (see :meth:`~probcat.nets.detection.DetectionNet.stamps`), and catalogues get
    the detection-probability calibration fitted nearest that seeing when the weights
    carry several (:func:`probcat.infer.reliability.seeing_calibration`); the network's
    detection probabilities, positions and the location refiner are unchanged. ``None``,
    or a scale within :data:`SEEING_MATCH_TOLERANCE` of 1: the image as at the survey's
    seeing. Without it the classifier, which judges a source's size against the PSF it
    was trained with, calls stars galaxies under wider seeing (star F1 0.906 at the
    survey's seeing, 0.004 at 1.25x), and the calibration reads too high a probability
    (precision 0.93 at ``prob >= 0.9`` at 1.5x)."""
    before = net.seeing_scale
    net.seeing_scale = matched_scale(scale)
    try:
        yield
    finally:
        net.seeing_scale = before


@contextmanager
def at_depth(net, noise: float | None):
    """Within the block, ``net``'s catalogues get the detection-probability calibration
    fitted nearest the image's depth when the weights carry calibrations at other depths
    (:func:`probcat.infer.reliability.calibration_for`): ``noise`` is the image's noise as
    a flux over the survey's (:func:`probcat.api.noise_over_survey`; above 1, a shallower
    image); None (unknown) reads it as at the survey's depth. The network itself reads
    every image in units of its own noise and is unchanged. At other depths the sources
    of an image are spread differently over signal-to-noise than the network learned,
    and its probabilities drift (validation scenes of ``detection_lsst_i`` at 1 year of
    LSST: detection ECE 0.054 with the survey's calibration, 0.008 with one fitted
    there)."""
    before = getattr(net, "noise_scale", None)
    net.noise_scale = None if noise is None or not math.isfinite(noise) or noise <= 0 else noise
    try:
        yield
    finally:
        net.noise_scale = before


def check_image(
    image: np.ndarray, n_bands: int, noise_sigma, min_size: int = 1, warn_sky: bool = True
) -> np.ndarray:
    """Validate an image ``(bands, H, W)`` (or ``(H, W)``) in electrons; return it in units
    of the noise sigma, float32. ``warn_sky``: warn when the sky looks left in (callers that
    subtract it themselves, :mod:`probcat.background`, turn this off)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ProbcatValueError(f"image must be (bands, H, W), got shape {image.shape}")
    if image.dtype.kind not in "fiu":
        raise ProbcatValueError(f"image must be numeric, got dtype {image.dtype}")
    if image.shape[0] != n_bands:
        raise ProbcatValueError(f"image has {image.shape[0]} band(s), the weights expect {n_bands}")
    if min(image.shape[1:]) < 1:
        raise ProbcatValueError(f"image is empty: shape {image.shape}")
    check_size(image.shape, min_size)
    if not np.all(np.isfinite(image)):
        raise ProbcatValueError("image contains NaN or inf pixels: mask or replace them first")
    try:
        if isinstance(noise_sigma, (bool, np.bool_, str, bytes)):
            raise TypeError
        sigma64 = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), (image.shape[0],))
    except (TypeError, ValueError):
        try:
            n = 0 if isinstance(noise_sigma, (str, bytes)) else len(noise_sigma)
        except TypeError:
            n = 0
        count = f" ({n} values for {image.shape[0]} band(s))" if n > 1 else ""
        raise ProbcatValueError(
            f"noise sigma must be a positive number, one for all bands or one per band, "
            f"got {noise_sigma!r}{count}"
        ) from None
    if not np.all(np.isfinite(sigma64) & (sigma64 > 0)):
        raise ProbcatValueError(f"noise sigma must be positive and finite, got {sigma64}")
    if np.any(sigma64 > np.finfo(np.float32).max):  # inf in float32: every pixel would be 0
        raise ProbcatValueError(
            f"noise sigma {sigma64.max():g} is beyond float32's range: check the NOISE value "
            "and the units"
        )
    sigma = sigma64.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        # in float32 (the pixels cast first), straight into one new array
        x = np.divide(image, sigma[:, None, None], dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ProbcatValueError(
            f"pixels / noise sigma overflow float32 (noise sigma {sigma64.min():g}, largest "
            f"|pixel| {float(np.abs(image).max()):g}): check the NOISE value and the units"
        )
    if warn_sky:
        _warn_unsubtracted(x)
    return x


def check_size(shape, min_size: int) -> None:
    """A one-line error when an image of ``shape`` ``(bands, H, W)`` is smaller than
    ``min_size`` px on a side."""
    if min(shape[1:]) < min_size:
        raise ProbcatValueError(
            f"image {shape[1]}x{shape[2]} is smaller than the minimum {min_size}x{min_size} px "
            "(the detector's receptive field): cut a larger image, or pad this one to that "
            "size with NaN (pixels without data)"
        )


def _warn_unsubtracted(x: np.ndarray) -> None:
    """Warn when even the faintest tenth of a band's pixels sits more than 3 noise sigma
    above zero (images of at least 32x32 px): probcat expects sky-subtracted images."""

    if x.shape[1] * x.shape[2] < 1024:  # a stamp filled by one source can sit high
        return
    flat = x.reshape(x.shape[0], -1)
    # the faintest tenth of the pixels is sky: about -1.3 sigma when the sky is subtracted,
    # even when bright sources fill most of the image. Read on every k-th pixel (at least
    # 65,536 of them: the quantile to about 0.01 sigma), which on a 1000x1000 image takes
    # 0.5 ms instead of 7.5 ms
    step = max(1, flat.shape[1] // 65536)
    low = np.percentile(flat[:, ::step], 10, axis=1)
    if np.any(low > 3.0):
        k = int(np.argmax(low))
        warn_user(
            f"image median is {float(np.median(flat[k])):.1f} noise sigma and its faintest "
            f"tenth of pixels {float(low[k]):.1f}: probcat expects background-subtracted "
            "images (subtract the sky first, or check NOISE)",
        )


@torch.no_grad()
def features_sigma(net: DetectionNet, x: np.ndarray, *, chunk_tiles: int = 200) -> torch.Tensor:
    """Backbone features ``(B, C, ceil(H/t), ceil(W/t))`` of images ``x`` ``(B, bands, H, W)``
    already in noise-sigma units (see :func:`check_image`): a single image runs in chunks of
    ``chunk_tiles`` tiles (memory bounded for any size), a batch in one pass. Each is padded
    by the feature halo of blank sky, so the result equals whole-image inference."""
    net.eval()
    t, halo = net.tile_size, net.feature_halo
    if len(x) > 1:
        padded = pad_to_tiles(x, t, halo)
        return net.features(torch.from_numpy(padded).to(net.device), valid=True)
    h, w = x.shape[-2:]
    nty, ntx = math.ceil(h / t), math.ceil(w / t)
    feats = None
    for ty0 in range(0, nty, chunk_tiles):
        for tx0 in range(0, ntx, chunk_tiles):
            ty1, tx1 = min(ty0 + chunk_tiles, nty), min(tx0 + chunk_tiles, ntx)
            # core tiles [ty0, ty1) with a halo of tiles around them, blank beyond the image
            # (the pixels of the image padded to whole tiles plus the halo, one chunk at a
            # time: no padded copy of the whole image)
            crop = window(x[0], (ty0 - halo) * t, (ty1 + halo) * t, (tx0 - halo) * t,
                           (tx1 + halo) * t)  # fmt: skip
            xc = torch.from_numpy(crop)[None].to(net.device)
            f = net.features(xc, valid=True)
            if feats is None:  # channels-last: the layout the heads' convolutions run fastest in
                feats = f.new_zeros(1, f.shape[1], nty, ntx)
                feats = feats.contiguous(memory_format=torch.channels_last)
            feats[:, :, ty0:ty1, tx0:tx1] = f
    return feats


def pixels_sigma(net: DetectionNet, x: np.ndarray) -> torch.Tensor:
    """Images ``x`` ``(B, bands, H, W)`` in noise-sigma units, zero-padded at the bottom and
    right to whole tiles, on the network's device: the pixels the stamp networks read (only
    read: for images of whole tiles already float32 and contiguous, on a CPU, the tensor
    shares ``x``'s memory instead of copying it)."""
    t = net.tile_size
    whole = x.shape[-2] % t == 0 and x.shape[-1] % t == 0
    if whole and x.dtype == np.float32 and x.flags.c_contiguous:
        return torch.from_numpy(x).to(net.device)
    return torch.from_numpy(pad_to_tiles(x, t)).to(net.device)


def _checked(net: DetectionNet, images: np.ndarray, noise_sigma) -> np.ndarray:
    """``(bands, H, W)`` or ``(B, bands, H, W)`` images in electrons, checked, as a batch
    ``(B, bands, H, W)`` in noise-sigma units."""
    images = np.asarray(images)
    batch = images if images.ndim == 4 else images[None]
    return np.stack([check_image(im, net.n_bands, noise_sigma) for im in batch])


def tile_features(
    net: DetectionNet, image: np.ndarray, noise_sigma, *, chunk_tiles: int = 200
) -> torch.Tensor:
    """Backbone features ``(1, C, ceil(H/t), ceil(W/t))`` of an image of any size."""
    return features_sigma(
        net, check_image(image, net.n_bands, noise_sigma)[None], chunk_tiles=chunk_tiles
    )


def tile_image(net: DetectionNet, image: np.ndarray, noise_sigma) -> torch.Tensor:
    """The image in noise-sigma units, ``(B, bands, nty * t, ntx * t)``, zero-padded at the
    bottom and right to whole tiles: the pixels the stamp classifier reads. ``image`` is
    ``(bands, H, W)`` (``B = 1``) or a batch ``(B, bands, H, W)``."""
    return pixels_sigma(net, _checked(net, image, noise_sigma))


def batch_tile_features(net: DetectionNet, images: np.ndarray, noise_sigma) -> torch.Tensor:
    """Features ``(B, C, nty, ntx)`` of a batch of same-size images ``(B, bands, H, W)``,
    equal to :func:`tile_features` image by image (see :func:`features_sigma`)."""
    return features_sigma(net, _checked(net, images, noise_sigma))


@torch.no_grad()
def predict_tiles(net: DetectionNet, image: np.ndarray, noise_sigma, **kw) -> TileOutput:
    """Marginal tile outputs (each tile's own posterior, nothing decided) for any image;
    every tile classified as if it held a source at its posterior mean location."""
    net.eval()
    feats = tile_features(net, image, noise_sigma, **kw)
    return net.heads(feats, image=tile_image(net, image, noise_sigma))


@dataclass
class Decisions:
    """Decoded tile catalogs, ``S`` of them: ``n`` ``(S, nty, ntx)`` bool, ``locs``
    ``(S, nty, ntx, 2)``, ``galaxy`` bool; ``conditional``: the outputs each tile was
    decided with (galaxy logit at the decided location, NaN where no source was decided);
    ``marginal``: the first pass, where nothing is decided, i.e. every tile's marginal
    posterior (its galaxy logit is the decided one). ``loc_sd`` ``(S, nty, ntx, 2)``: the
    refined position posterior's standard deviation (tile units) where a source was decided,
    for weights with a location refiner (else None: the tile posterior's applies).
    ``cond_locs``: the positions the later groups were conditioned on (and merges compared):
    the refined means where a refiner re-drew ``locs``, else ``locs`` itself. ``snr``
    ``(S, nty, ntx)``: each decided source's detection SNR at its refined mean
    (:func:`probcat.metrics.detection.aperture_snr`), for weights with a location refiner
    (else None)."""

    n: torch.Tensor
    locs: torch.Tensor
    galaxy: torch.Tensor
    conditional: TileOutput
    marginal: TileOutput
    loc_sd: torch.Tensor | None = None
    cond_locs: torch.Tensor | None = None
    snr: torch.Tensor | None = None


@torch.no_grad()
def decode(
    net: DetectionNet,
    feats: torch.Tensor,
    *,
    image: torch.Tensor | None = None,
    n_samples: int = 0,
    threshold: float = 0.5,
    generator: torch.Generator | list | None = None,
    row_chunk: int = 100,
    sweeps: int = 1,
    merge_px: float | None = None,
    centroid_calibration=None,
    force: torch.Tensor | None = None,
    force_locs: torch.Tensor | None = None,
    force_prob: torch.Tensor | None = None,
) -> Decisions:
    """Checkerboard decoding. ``n_samples = 0``: MAP (probability > threshold, posterior
    mean location, galaxy if probability > 0.5) for each image of the batch ``feats``;
    else that many posterior samples of the single image ``feats`` ``(1, C, nty, ntx)``.
    Locations are drawn from the normal truncated to the tile, so every drawn source lies
    in its tile; weights with a location refiner then re-draw (or, for MAP, take the mean
    of) each decided source's position from a stamp centred on that draw, which may leave
    the tile (:meth:`~probcat.nets.detection.DetectionNet.refine_at`), and the later groups
    are conditioned on (and the source classified at) the refined mean, as in training.
    Each group is classified in the pass that decides it, at its decided location (the
    conditioning state seen in training), from ``image`` (see :func:`tile_image`; needed
    by the stamp classifier and the refiner). The conditional heads run on ``row_chunk``
    tile rows at a time (same result, bounded memory).

    ``sweeps > 1`` re-decides every group, in turn, given the current decisions of all the
    others (all 8 neighbours decided: the state the last group is trained in), a
    pseudo-Gibbs refinement. The first sweep's neighbours were drawn before seeing this
    tile's decision; later sweeps let a tile switch off when a neighbour's source already
    explains the light at their shared edge (the double detections of the boundary test).

    ``merge_px`` (default: the weights' fitted radius, ``net.merge_px``; 0 for none): a
    claim within that distance of a source held by one of its 8 neighbouring tiles (the
    positions compared are those the later groups are conditioned on: the refined means) is
    read as the same source and dropped, its tile decided empty (:mod:`probcat.infer.merge`).

    ``force``: a boolean ``(B, nty, ntx)`` of tiles decided to hold a source whatever their
    probability (:mod:`probcat.infer.bright`); they are placed (at ``force_locs``
    ``(B, nty, ntx, 2)``, tile units, where given), refined, merged and classified as any
    other. For samples (``(1, nty, ntx)``: the one image) a forced tile holds a source with
    probability ``force_prob`` ``(1, nty, ntx)`` (1 where not given) or the network's, the
    larger, drawn from the tile's own random numbers (so a sample's other tiles keep their
    draws), placed at ``force_locs`` where it does.

    ``centroid_calibration`` (a :class:`~probcat.infer.calibration.CentroidCalibration`;
    default: the weights' own) gives the distribution of the samples' standardised position
    errors (:func:`_standard_errors`); MAP decoding does not read it.

    Samples draw their random numbers from ``generator``: one stream per sample
    (:func:`sample_generators`; or a list of ``n_samples`` generators), the same numbers in
    every pass whatever is decided, so that a sample does not depend on the batch it is
    drawn in, and a decision that float rounding flips on another device or CPU changes
    that tile's source (and the neighbours conditioned on it), not the rest of the sample.
    """
    net.eval()
    radius = net.merge_px if merge_px is None else merge_px
    if not 0.0 <= threshold < 1.0:
        raise ProbcatValueError(f"threshold must lie in [0, 1), got {threshold}")
    if sweeps < 1:
        raise ProbcatValueError(f"sweeps must be >= 1, got {sweeps}")
    if n_samples and feats.shape[0] != 1:
        raise ProbcatValueError("posterior samples are drawn for one image at a time")
    if force is not None and tuple(force.shape) != (feats.shape[0], *feats.shape[2:]):
        raise ProbcatValueError("force is a (B, nty, ntx) mask of the images decoded")
    if force_prob is not None and (force is None or force_prob.shape != force.shape):
        raise ProbcatValueError("force_prob is the probability of the tiles of force")
    if (net.classifier == "stamp" or net.loc_refine) and image is None:
        raise ProbcatValueError("these weights read stamps of the image: pass image=")
    gens = None
    if n_samples:  # a stream per sample: given as a list, or seeded from the generator
        listed = isinstance(generator, (list, tuple))
        gens = list(generator) if listed else sample_generators(generator, n_samples)
        if len(gens) != n_samples:
            raise ProbcatValueError(f"{len(gens)} generators for {n_samples} samples")
    f = feats.expand(n_samples, -1, -1, -1) if n_samples else feats
    img = None if image is None else image.expand(f.shape[0], -1, -1, -1)
    s = f.shape[0]
    _, _, nty, ntx = f.shape
    dev = f.device
    groups = tile_groups(nty, ntx, dev)
    n = torch.zeros(s, nty, ntx, dtype=torch.bool, device=dev)
    locs = torch.zeros(s, nty, ntx, 2, device=dev)
    cond = locs  # what later groups are conditioned on: the refined mean where refined
    decided = torch.zeros(s, nty, ntx, dtype=torch.bool, device=dev)
    loc_sd = torch.zeros(s, nty, ntx, 2, device=dev) if net.loc_refine else None
    snr = torch.zeros(s, nty, ntx, device=dev) if net.loc_refine else None
    fields = marginal = None
    for step in range(sweeps * N_GROUPS):
        g = step % N_GROUPS
        now = (groups == g).expand(s, -1, -1)
        # the first pass is every tile's marginal; later ones need their group's tiles only
        out, h_g = _group_pass(net, f, decided & ~now, n, cond, g, row_chunk, step == 0)
        if n_samples:  # numbers for the group's tiles, the same whatever the pass decides
            mine = (groups == g).cpu()
            prob = out.prob
            if force is not None:  # forced tiles: the forcing's probability where larger
                fp = torch.ones_like(prob) if force_prob is None else force_prob.to(prob)
                prob = torch.where(force.to(dev), torch.maximum(prob, fp), prob)
            on = per_sample(gens, mine, dev, fill=1.0) < prob
            loc = out.sample_locs(u=per_sample(gens, mine, dev, (2,), fill=0.5))
            if force is not None and force_locs is not None:
                loc = torch.where(force.to(dev)[..., None], force_locs.to(loc), loc)
            errors = _error_draws(net, gens, mine, centroid_calibration)
        else:
            on = out.prob > threshold
            loc = out.loc_post_mean
            if force is not None:
                on = on | force.to(on.device)
                if force_locs is not None:
                    loc = torch.where(force.to(dev)[..., None], force_locs.to(loc), loc)
        bi, ty, tx = torch.nonzero(now & on, as_tuple=True)
        loc_cond = loc
        if net.loc_refine and len(bi):
            mean, logvar = net.refine_at(bi, ty, tx, loc[bi, ty, tx], img)
            sd = torch.exp(0.5 * logvar)
            loc_cond = loc.index_put((bi, ty, tx), mean)
            snr_at = aperture_snr(img, bi, *tile_to_pixel(ty, tx, mean, net.tile_size))
            if n_samples:
                z = _standard_errors(net, errors, (bi, ty, tx), centroid_calibration, snr_at)
                mean = mean + sd * z.to(sd)
            loc = loc.index_put((bi, ty, tx), mean)
            loc_sd = loc_sd.index_put((bi, ty, tx), sd)
            snr = snr.index_put((bi, ty, tx), snr_at.to(snr))
        if radius > 0 and len(bi):
            held = decided & n & ~now
            dup = _duplicates(cond, held, loc_cond, (bi, ty, tx), radius / net.tile_size)
            on = on.index_put((bi[dup], ty[dup], tx[dup]), on.new_zeros(()))
            keep = ~dup
            bi, ty, tx = bi[keep], ty[keep], tx[keep]
        out.galaxy_logit = torch.full((s, nty, ntx), float("nan"), device=dev)
        if len(bi) and step >= (sweeps - 1) * N_GROUPS:  # classified in the last sweep
            at = loc_cond[bi, ty, tx]
            logits = net.classify_at(h_g[bi, :, ty // 2, tx // 2], bi, ty, tx, at, img)
            out.galaxy_logit = out.galaxy_logit.index_put((bi, ty, tx), logits)
        if step == 0:
            marginal = out
        n = torch.where(now, on, n)
        locs = torch.where(now[..., None], loc, locs)
        cond = torch.where(now[..., None], loc_cond, cond)
        decided |= now
        fields = out if fields is None else out.where(now, fields)
    # galaxy_logit is NaN wherever no source was decided: each pass classifies only those
    marginal = TileOutput(
        marginal.count_logit, marginal.loc_mean, marginal.loc_logvar, fields.galaxy_logit
    )
    p_gal = fields.galaxy_prob.nan_to_num(0.0)
    if n_samples:
        every = torch.ones(nty, ntx, dtype=torch.bool, device="cpu")
        galaxy = (per_sample(gens, every, dev) < p_gal) & n
    else:
        galaxy = (p_gal > 0.5) & n
    return Decisions(n, locs, galaxy, fields, marginal, loc_sd, cond, snr)


def sample_generators(generator: torch.Generator | None, n: int) -> list:
    """One random stream per posterior sample, seeded from ``generator`` (the first ``n``
    numbers it gives; a CPU generator gives the same streams whatever device the network
    runs on): each sample's draws then depend neither on how many samples are drawn with it
    nor on the device's batch size (:func:`sample_batch`). ``[None] * n`` (torch's global
    stream) without a generator."""
    if generator is None:
        return [None] * n
    seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device)
    return [torch.Generator(device="cpu").manual_seed(int(v)) for v in seeds.tolist()]


def per_sample(
    gens, tiles, device, trailing=(), dtype=torch.float32, normal=False, fill=0.0
) -> torch.Tensor:
    """Uniform (or ``normal``) numbers ``(len(gens), nty, ntx, *trailing)`` on ``device``
    at the ``tiles`` (a boolean ``(nty, ntx)`` mask; ``fill`` elsewhere), each sample's from
    its own stream, drawn on the CPU (or its generator's device)."""
    draw = torch.randn if normal else torch.rand
    shape = (int(tiles.sum()), *trailing)
    vals = [draw(shape, generator=g, device=g.device if g is not None else "cpu", dtype=dtype)
            for g in gens]  # fmt: skip
    grid = torch.full((len(gens), *tiles.shape, *trailing), fill, dtype=dtype, device="cpu")
    grid[:, tiles] = torch.stack(vals).cpu()
    return grid.to(device)


def _error_draws(net: DetectionNet, gens, tiles, cal=None) -> tuple:
    """One pass's random numbers for the samples' position errors: a pair per tile of the
    group (``tiles``), drawn whether or not the tile holds a source, so that a decision that
    float rounding flips (another device, another CPU) changes that tile's source alone and
    not the numbers of every later draw. Standard normal without a calibration; else the
    uniform quantile (float64) and the sign of :func:`_standard_errors`."""
    cal = net.centroid_calibration if cal is None else cal
    if not net.loc_refine:
        return ()
    if cal is None:
        return (per_sample(gens, tiles, "cpu", (2,), normal=True),)
    return (
        per_sample(gens, tiles, "cpu", (2,), torch.float64),
        per_sample(gens, tiles, "cpu", (2,)),
    )


def _standard_errors(net: DetectionNet, draws, index, cal=None, snr=None) -> torch.Tensor:
    """Standardised position errors ``(true - mean) / sd`` ``(N, 2)`` of the posterior
    samples' sources at tiles ``index`` (``(sample, ty, tx)``), from ``draws``
    (:func:`_error_draws`): from the centroid calibration ``cal`` (default: the weights'
    own, the validation errors' distribution, whose core is narrower than the refined
    normal's and whose tails are not) when there is one, else standard normal; a
    calibration binned by detection SNR draws each source's from its own (``snr``,
    ``(N,)``). Samples then agree with the catalogue's calibrated intervals."""
    cal = net.centroid_calibration if cal is None else cal
    index = tuple(i.cpu() for i in index)
    if cal is None:
        return draws[0][index]
    u = draws[0][index].clamp_max(1 - 1e-12)
    sign = torch.where(draws[1][index] < 0.5, -1.0, 1.0)
    per = None
    if snr is not None:
        per = np.broadcast_to(snr.detach().cpu().numpy().reshape(-1, 1), tuple(u.shape))
    return sign * torch.from_numpy(cal.quantile(u.numpy(), per)).float()


def _duplicates(cond, held, loc_new, idx, radius):
    """Which new claims ``idx`` at ``loc_new[idx]`` lie within ``radius`` (tile units) of a
    source ``held`` by one of their 8 neighbouring tiles (at ``cond``)."""
    b, ty, tx = idx
    s, nty, ntx = held.shape
    p = loc_new[b, ty, tx] + torch.stack([tx, ty], 1).to(loc_new.dtype)
    dup = torch.zeros(len(b), dtype=torch.bool, device=held.device)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            ny, nx = ty + dy, tx + dx
            ok = (ny >= 0) & (ny < nty) & (nx >= 0) & (nx < ntx)
            ny, nx = ny.clamp(0, nty - 1), nx.clamp(0, ntx - 1)
            q = cond[b, ny, nx] + torch.stack([nx, ny], 1).to(cond.dtype)
            close = ((p - q) ** 2).sum(1) < radius**2
            dup |= ok & held[b, ny, nx] & close
    return dup


def _group_pass(net, f, decided, n, locs, g: int, row_chunk: int, every_tile: bool = True):
    """Conditional heads given the decisions so far, ``row_chunk`` tile rows at a time with
    a halo covering the conditioning's reach; returns the outputs and the conditioned
    features of the tiles of group ``g`` (a ``[g // 2::2, g % 2::2]`` subgrid). Unless
    ``every_tile``, the heads run on group ``g``'s tiles only (4x less work) and the
    outputs of the other tiles are placeholders (count logit 0, location mid-tile)."""
    s, _, nty, ntx = f.shape
    py, px = g // 2, g % 2
    halo = 2  # 3x3 convolution of the decision channels, proximity to the 8 neighbours
    parts, h_g = [], None
    for r0 in range(0, nty, row_chunk):
        r1 = min(r0 + row_chunk, nty)
        a, b = max(r0 - halo, 0), min(r1 + halo, nty)
        args = (f[:, :, a:b], decided[:, a:b], n[:, a:b], locs[:, a:b])
        first = r0 + (py - r0) % 2  # the first row of parity py in [r0, r1)
        if every_tile:
            h = net.trunk(*args)[:, :, r0 - a : r1 - a]
            parts.append(net.detection_params(h))
            sub = h[:, :, first - r0 :: 2, px::2]  # rows of parity py, columns of parity px
        else:  # the chunk's rows of parity py start at a + (py - a) % 2
            sub = net.trunk(*args, parity=((py - a) % 2, px))
            skip = (first - a - (py - a) % 2) // 2
            sub = sub[:, :, skip : skip + (r1 - first + 1) // 2]
        if h_g is None:
            h_g = sub.new_zeros(s, sub.shape[1], (nty - py + 1) // 2, (ntx - px + 1) // 2)
        h_g[:, :, (first - py) // 2 : (first - py) // 2 + sub.shape[2]] = sub
    if every_tile:
        cl, lm, lv = (torch.cat([p[k] for p in parts], 1) for k in range(3))
    else:
        cl, lv = f.new_zeros(s, nty, ntx), f.new_zeros(s, nty, ntx, 2)
        lm = f.new_full((s, nty, ntx, 2), 0.5)
        gl, gm, gv = net.detection_params(h_g)
        cl[:, py::2, px::2], lm[:, py::2, px::2], lv[:, py::2, px::2] = gl, gm, gv
    return TileOutput(cl, lm, lv, torch.zeros_like(cl)), h_g


def catalog_from_decisions(
    dec: Decisions, k: int, marginal: TileOutput, image_shape, tile_size: int, bands, meta: dict
) -> FullCatalog:
    h, w = image_shape
    ty, tx = torch.nonzero(dec.n[k], as_tuple=True)
    loc = dec.locs[k, ty, tx].double()
    x, y = (v.cpu().numpy() for v in tile_to_pixel(ty, tx, loc, tile_size))
    inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
    c = dec.conditional.at((k, ty, tx))  # derived quantities of the detections only
    m = marginal.at((min(k, marginal.prob.shape[0] - 1), ty, tx))
    sd = c.loc_post_sd if dec.loc_sd is None else dec.loc_sd[k, ty, tx]
    sd = (sd * tile_size).double().cpu().numpy()
    extra = {} if dec.snr is None else {"detection_snr": dec.snr[k, ty, tx].double().cpu().numpy()}
    cols = {
        "x": x,
        "y": y,
        "x_sd": sd[:, 0],
        "y_sd": sd[:, 1],
        "prob": m.prob.double().cpu().numpy(),
        "prob_conditional": c.prob.double().cpu().numpy(),
        "galaxy_prob": c.galaxy_prob.double().cpu().numpy(),
        "galaxy": dec.galaxy[k, ty, tx].cpu().numpy(),
        "tile_x": tx.cpu().numpy(),
        "tile_y": ty.cpu().numpy(),
        **extra,
    }
    return FullCatalog(
        {key: v[inside] for key, v in cols.items()}, tuple(image_shape), tuple(bands), meta
    )


@torch.no_grad()
def map_catalog(
    net: DetectionNet,
    feats: torch.Tensor,
    image_shape,
    *,
    image: torch.Tensor | None = None,
    threshold: float = 0.5,
    bands=("i",),
    sweeps: int = 1,
    merge_px: float | None = None,
) -> FullCatalog:
    """MAP catalog (paper 000 section 4.2): detections with probability > ``threshold``.

    ``image``: see :func:`tile_image`. Columns: ``x, y`` (pixels, posterior mean), ``x_sd,
    y_sd`` (pixels, posterior standard deviation), ``prob`` (the tile's
    marginal detection probability), ``prob_conditional`` (given the neighbouring decisions),
    ``galaxy_prob``, ``galaxy``, ``tile_x, tile_y``, ``detection_snr`` (weights with a
    location refiner: :func:`probcat.metrics.detection.aperture_snr` at the position); with
    weights that carry them, ``prob`` is the calibrated probability, ``prob_raw`` the
    network's and ``ood_score`` says how unlike the training sources each is
    (:mod:`probcat.infer.reliability`). The metadata
    holds the weights' centroid-interval calibration (see
    :func:`probcat.infer.calibration.centroid_interval`).
    """
    from probcat.infer.reliability import annotate

    dec = decode(net, feats, image=image, threshold=threshold, sweeps=sweeps, merge_px=merge_px)
    cat = catalog_from_decisions(
        dec, 0, dec.marginal, image_shape, net.tile_size, bands, map_meta(net, threshold)
    )
    return annotate(cat, net, feats[0], image)


def map_meta(net: DetectionNet, threshold: float) -> dict:
    """Metadata of a MAP catalogue: threshold, and the centroid calibration if any."""
    meta = {"threshold": threshold, "kind": "map"}
    if net.centroid_calibration is not None:
        meta["centroid_calibration"] = net.centroid_calibration.to_dict()
    return meta


SAMPLE_TILES = 2**18  # tiles times samples decoded at once: about 100 MB of decoder state


def sample_batch(n_tiles: int, device=None) -> int:
    """Posterior samples decoded together on an image of ``n_tiles`` tiles: up to 32 on
    cutouts, fewer on large fields, whose decoder state grows with tiles times samples
    (about 360 bytes each). On a 1000x1000 field on this project's 2-core CPU, 4 at a time
    took 0.31 s per sample and a peak of 0.75 GB; 32 at a time, 0.36 s and 1.3 GB. On a GPU
    (``device``), whose throughput needs large batches, the budget is 8 times larger
    (about 0.75 GB): 32 at a time up to 1000x1000 fields, as before (not measured here)."""
    budget = SAMPLE_TILES * (8 if torch.device(device or "cpu").type == "cuda" else 1)
    return int(max(1, min(32, budget // max(n_tiles, 1))))


@torch.no_grad()
def sample_catalogs(
    net: DetectionNet,
    feats: torch.Tensor,
    image_shape,
    n: int,
    *,
    image: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    bands=("i",),
    batch: int | None = None,
    sweeps: int = SAMPLE_SWEEPS,
    progress: bool = False,
    centroid_calibration=None,
    force: torch.Tensor | None = None,
    force_locs: torch.Tensor | None = None,
    force_prob: torch.Tensor | None = None,
) -> list[FullCatalog]:
    """``n`` posterior catalog samples (paper 000 section 4.6), each from ``sweeps``
    checkerboard sweeps (see :func:`decode`), ``batch`` at a time (default
    :func:`sample_batch`); ``progress``: a progress bar over the samples. Positions scatter
    about the refined means as ``centroid_calibration`` says (default: the weights' own),
    which each sample's ``meta["centroid_calibration"]`` records. ``force``,
    ``force_locs``, ``force_prob``: tiles that hold a source with at least that probability
    (the rescue of bright objects, :mod:`probcat.infer.bright`), as :func:`decode`'s."""
    from tqdm.auto import tqdm

    if n < 1:
        raise ProbcatValueError(f"number of samples must be >= 1, got {n}")
    if batch is None:
        batch = sample_batch(feats.shape[-2] * feats.shape[-1], feats.device)
    cal = net.centroid_calibration if centroid_calibration is None else centroid_calibration
    meta = {"kind": "sample"}
    if cal is not None:
        meta["centroid_calibration"] = cal.to_dict()
    out = []
    gens = sample_generators(generator, n)  # sample k's numbers, whatever the batch
    bar = tqdm(total=n, desc="posterior samples", unit="sample", disable=not progress)
    for start in range(0, n, batch):
        dec = decode(
            net,
            feats,
            image=image,
            n_samples=min(batch, n - start),
            generator=gens[start : start + batch],
            sweeps=sweeps,
            centroid_calibration=cal,
            force=force,
            force_locs=force_locs,
            force_prob=force_prob,
        )
        out += [
            catalog_from_decisions(
                dec, k, dec.marginal, image_shape, net.tile_size, bands, dict(meta)
            )
            for k in range(dec.n.shape[0])
        ]
        done = dec.n.shape[0]
        del dec
        trim_heap()  # the batch's decoder state leaves fragments otherwise (memory grows)
        bar.update(done)
    bar.close()
    return out
