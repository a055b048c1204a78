"""Detection probabilities for images whose source density is not the prior's.

The detection network's probabilities are posterior probabilities under its training
prior, and that prior has a source density (paper 000 section 2: 160 galaxies and 15.5
stars per arcmin^2 to i = 27). A faint bump that is a real source most of the time at
that density is a noise peak most of the time on an emptier sky: on 500x500 LSST i
fields of held-out galaxies at 3% of the prior's density, the shipped weights' MAP
detections were real 0.60 of the time at a mean calibrated probability of 0.91, and on
noise alone they reported about 30 detections per Mpx at a mean of 0.85
(``benchmarks/density.py``, without this calibration). In a field twice as crowded they
were too low instead (0.87 for 0.96 real).

:class:`DensityCalibration` corrects that, after the weights' own calibration
(:mod:`probcat.infer.reliability`). It holds, for a grid of density ``factors`` (times the
prior's), the rate of bright MAP detections (``detection_snr`` of at least ``snr``: real
sources at any density, never noise peaks) per Mpx, and a monotone map from the
calibrated probability to the fraction of detections that were real, one for the
fainter detections and one for the bright (none where the fields had no bright
detection: one bright galaxy on an empty sky keeps its probability), all from
validation scenes at that density (``scripts/ship_weights.py --density NAME``:
:func:`probcat.train.detection.record_density_calibration`; the factor 1 map is the
identity, the weights' calibration being fitted there). An image's bright detections per
unmasked area then weigh the densities from the smallest calibrated factor to the
largest, :data:`REFINE` steps between neighbouring factors, at rates interpolated
between theirs (a negative binomial count: Poisson with :data:`DISPERSION` extra
scatter; prior :data:`PRIOR_SAME` on the training density, the rest shared by the
others), and each detection's probability is the mixture, under those weights, of what
the maps give at each density: between two calibrated factors, the two maps' log odds
interpolated by its place between them in log density (a source's odds scale with the
density; between noise alone and the first density, that density's odds scaled);
detections it moves below the MAP threshold leave the MAP catalogue
(:func:`at_density`). An image at about the prior's density keeps its probabilities (the
weight of factor 1 stays near 1); a large empty or crowded one gets the map of its
density (beyond the largest factor, up to :data:`EXTEND` times it, that factor's). Only
on images of :data:`MIN_AREA` unmasked pixels or more (a cutout around a target says
little about the sky's density) and at a seeing and depth the calibration was fitted at
(a shallower or blurrier image has fewer bright detections at the same density, which
would read as an emptier sky): :func:`applies`. Weights carry one at the survey's seeing
and depth and one for each seeing and depth their probability calibration has a refit
for (:func:`choose`). Below a map's first knot (the faintest MAP detections, and the
fainter bumps that posterior samples hold) the odds are scaled as at that knot, as a
density scales a source's prior odds (:func:`mapped`).

The faint galaxies below detection lift any estimate of a sky left in the image, by the
weights' ``sky_offset`` (:mod:`probcat.background`) at the prior's density, which
:func:`probcat.background.prepare` takes off the estimate. That lift scales with the
density: on held-out 500x500 LSST i fields it was about 0.11 noise sigma at the prior's
density, 0 on noise alone and 0.23 at twice the density, so the prior's offset left an
emptier image 0.11 sigma too bright (with a sky of 50 sigma left in, 55.2 false
detections per Mpx against 5.8 without a sky, at 3% of the prior's density:
``benchmarks/density.py --sky 50``, the ``sky_at_prior_density`` reading).
:func:`sky_shift` gives the image's share of it: the offset times one minus the density
read from the image's bright detections (:func:`mean_factor`), which the detector takes
off the image before reading it again.

Posterior catalogue samples, drawn at the prior's density, are thinned to the image's:
each source kept with its mapped probability over its probability, the MAP catalogue's
where the MAP catalogue has a detection in its tile (:func:`thin_samples`), so that a
source turns up in the samples about as often as the MAP catalogue calls it real. Where
a density raises probabilities (a crowded field), thinning cannot, and the samples stay
as drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from probcat.errors import ProbcatValueError

__all__ = [
    "DensityCalibration",
    "FACTORS",
    "SNR",
    "PRIOR_SAME",
    "DISPERSION",
    "RATE_FLOOR",
    "REFINE",
    "EXTEND",
    "MIN_AREA",
    "applies",
    "choose",
    "at_density",
    "bright_count",
    "keep_probability",
    "mapped",
    "mean_factor",
    "sky_shift",
    "SKY_SHIFT_TOL",
    "thin_samples",
    "fit_density_calibration",
]

FACTORS = (0.0, 0.03, 0.1, 0.3, 1.0, 2.0)  # densities over the prior's, fitted by default
SNR = 10.0  # detections at least this bright (detection_snr) count an image's density
PRIOR_SAME = 0.5  # prior probability that an image has the training scenes' density
DISPERSION = 0.1  # count scatter beyond Poisson, as a fraction of the mean
RATE_FLOOR = 0.5  # bright detections per Mpx at least (noise alone has about none)
MIN_AREA = 100_000  # px: smaller images (cutouts around a target) keep the prior's density
# noise sigma: a sky shift (sky_shift) smaller than this in every band is not made (the
# detections are not read again): 0.01 sigma moves the flux SNR in a 5-px-radius aperture
# (79 px) by 0.09
SKY_SHIFT_TOL = 0.01
# densities read between neighbouring calibrated factors (DensityCalibration.grid): an
# image's bright count reads its density to about 10% on a 500x500 field, finer than the
# calibrated grid's steps of 2-3.3 times
REFINE = 12
# densities read beyond the largest calibrated factor, up to this many times it (its map)
EXTEND = 2.0


@dataclass(frozen=True)
class DensityCalibration:
    """Per density factor (``factors``, times the prior's): ``rates``, bright detections
    (``detection_snr >= snr``) per Mpx in validation scenes, and ``maps``, the knots
    ``(x, y)`` of the monotone map from calibrated to observed probability of the fainter
    detections (None: the identity, at factor 1); ``bright_maps`` the same for the bright
    ones (None where there were none: noise alone). ``seeing_factor``, ``noise_factor``:
    the seeing and depth of the scenes it was fitted on, those of the probability
    calibration it follows (:func:`probcat.infer.reliability.calibration_for`)."""

    factors: tuple[float, ...]
    rates: tuple[float, ...]
    maps: tuple
    snr: float = SNR
    n: tuple[int, ...] = ()
    source: str = ""
    bright_maps: tuple = ()
    seeing_factor: float = 1.0
    noise_factor: float = 1.0
    refine: int = REFINE
    extend: float = EXTEND

    def __post_init__(self):
        if not (len(self.factors) == len(self.rates) == len(self.maps)) or not self.factors:
            raise ProbcatValueError("a density calibration needs a rate and a map per factor")
        if 1.0 not in self.factors:
            raise ProbcatValueError("a density calibration needs the prior's density (1)")
        if self.bright_maps and len(self.bright_maps) != len(self.factors):
            raise ProbcatValueError("a density calibration's bright maps need one per factor")
        if np.any(np.diff(self.factors) <= 0) or self.factors[0] < 0 or self.refine < 1:
            raise ProbcatValueError(
                "a density calibration's factors must increase from 0 or more (refine >= 1)"
            )
        if not (math.isfinite(self.extend) and self.extend >= 1.0):
            raise ProbcatValueError("a density calibration's extend must be 1 or more")

    def grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_grid`, made once per calibration (its fields are frozen)."""
        return self._grid

    @cached_property
    def _grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The densities an image is read at: ``(f, rate, lo, u)``, :attr:`refine` steps
        across each interval between neighbouring calibrated factors (log-spaced; linear
        from 0), with bright-detection rates interpolated linearly in the density (the
        fitted rates grow in proportion to it), and each density's share ``u`` of the
        calibrated factor ``lo + 1`` above it (``1 - u`` of ``lo``): in log density, as
        a detection's odds scale with the density (linear from 0, where odds vanish).
        Beyond the largest factor, up to :attr:`extend` times it, the rates of the last
        interval extrapolated and that factor's map (``u`` 0): a crowded image's density
        is read, for its sky (:func:`sky_shift`), without a map fitted there."""
        f = np.asarray(self.factors, float)
        rate = np.asarray(self.rates, float)
        fs, rs, lo, us = [f[:1]], [rate[:1]], [np.zeros(1, int)], [np.zeros(1)]
        for k in range(len(f) - 1):
            t = np.arange(1, self.refine + 1) / self.refine
            a, b = f[k], f[k + 1]
            x = a + (b - a) * t if a <= 0 else a * (b / a) ** t
            x[-1] = b  # the calibrated factor itself, exactly
            u = t if a <= 0 else np.log(x / a) / np.log(b / a)
            w = (x - a) / (b - a)  # rates: linear in the density
            fs.append(x)
            rs.append(rate[k] + (rate[k + 1] - rate[k]) * w)
            lo.append(np.where(t < 1, k, k + 1))
            us.append(np.where(t < 1, u, 0.0))
        if self.extend > 1.0 and len(f) > 1 and f[-1] > 0:
            t = np.arange(1, self.refine + 1) / self.refine
            x = f[-1] * self.extend**t
            slope = (rate[-1] - rate[-2]) / (f[-1] - f[-2])
            fs.append(x)
            rs.append(rate[-1] + slope * (x - f[-1]))
            lo.append(np.full(len(x), len(f) - 1))
            us.append(np.zeros(len(x)))
        out = tuple(np.concatenate(v) for v in (fs, rs, lo, us))
        for v in out:
            v.setflags(write=False)  # shared by every reading of this calibration
        return out

    def posterior(self, n_bright: int, area_px: float) -> tuple[np.ndarray, np.ndarray]:
        """``(f, w)``: the densities of :meth:`grid` and their posterior weights for an
        image with ``n_bright`` bright detections on ``area_px`` unmasked pixels (a
        negative binomial count). Prior: :data:`PRIOR_SAME` on the prior's density; where
        0 is a calibrated factor (noise alone: no source at all, a hypothesis of its
        own), a calibrated factor's share on it, as if the grid were not refined; the
        rest shared equally by the others, so by each calibrated interval alike."""
        from scipy.special import gammaln

        f, rate, _, _ = self.grid()
        share = (1.0 - PRIOR_SAME) / max(len(self.factors) - 1, 1)
        point = np.where(f == 1.0, PRIOR_SAME, np.where(f == 0.0, share, 0.0))
        rest = (1.0 - point.sum()) / max(int(np.sum(point == 0)), 1)
        prior = np.where(point > 0, point, rest)
        mean = np.maximum(rate, RATE_FLOOR) * max(area_px, 0.0) / 1e6
        mean = np.maximum(mean, 1e-12)
        r = 1.0 / DISPERSION**2  # negative binomial: variance mean + (DISPERSION mean)^2
        k = float(n_bright)
        logp = (
            gammaln(k + r) - gammaln(r) - gammaln(k + 1.0)
            + r * np.log(r / (r + mean)) + k * np.log(mean / (r + mean))
        )  # fmt: skip
        logp = logp + np.log(prior)
        w = np.exp(logp - logp.max())
        return f, w / w.sum()

    def weights(self, n_bright: int, area_px: float) -> np.ndarray:
        """Posterior weights of the calibrated factors for an image with ``n_bright``
        bright detections on ``area_px`` unmasked pixels: each density of
        :meth:`posterior` shares its weight between the two calibrated factors around it
        by its place between them (:meth:`grid`), a summary of where the image's density
        lies (what the catalogues record)."""
        return self._shares(self.posterior(n_bright, area_px)[1])

    def _shares(self, w) -> np.ndarray:
        """The grid's weights ``w`` shared between the calibrated factors (:meth:`weights`)."""
        _, _, lo, u = self.grid()
        out = np.zeros(len(self.factors))
        np.add.at(out, lo, w * (1.0 - u))
        np.add.at(out, np.minimum(lo + 1, len(out) - 1), w * u)
        return out

    def mean(self, n_bright: int, area_px: float) -> float:
        """The posterior mean density (times the prior's) of :meth:`posterior`."""
        f, w = self.posterior(n_bright, area_px)
        return float(np.sum(f * w))

    def __call__(self, p, n_bright: int, area_px: float, snr=None) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, weights)``: calibrated probabilities ``p`` of an image's
        detections mapped under its density (:meth:`mapped_at` each density of
        :meth:`posterior`, mixed by its weights; ``weights``: :meth:`weights`); with their
        ``snr`` (``detection_snr``), the bright ones (``snr >= self.snr``) by
        :attr:`bright_maps` (where a factor has none, as noise alone has no bright
        detection, they keep theirs)."""
        p = np.asarray(p, float)
        f, w = self.posterior(n_bright, area_px)
        _, _, lo, u = self.grid()
        keep = w > 1e-9 * w.max()  # densities of no weight: not evaluated

        def mixed(maps):
            out = np.zeros_like(p)
            for fk, wk, k, uk in zip(f[keep], w[keep], lo[keep], u[keep]):
                out += wk * self.mapped_at(p, maps, int(k), float(uk), float(fk))
            return out / w[keep].sum()

        out = mixed(self.maps)
        if snr is not None:
            bright = mixed(self.bright_maps or (None,) * len(self.factors))
            out = np.where(np.asarray(snr, float) >= self.snr, bright, out)
        return out, self._shares(w)

    def mapped_at(self, p, maps, k: int, u: float, f: float) -> np.ndarray:
        """Probabilities ``p`` under ``maps`` (one per calibrated factor; None: the
        identity) at density ``f``, a share ``u`` of the way (:meth:`grid`) from factor
        ``k`` to the next: the two maps' log odds interpolated (a source's odds scale with
        the density); from noise alone (factor 0) the next map's odds scaled by ``f`` over
        its factor, since noise alone is no density to interpolate from (where noise alone
        has a map: the bright detections have none there, and keep theirs)."""
        here = p if maps[k] is None else mapped(p, maps[k])
        if u <= 0.0:
            return here
        nxt = p if maps[k + 1] is None else mapped(p, maps[k + 1])
        if self.factors[k] <= 0.0 and maps[k] is not None:
            return _odds_scaled(nxt, f / self.factors[k + 1])
        z = (1.0 - u) * _logit(here) + u * _logit(nxt)
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict:
        return {
            "kind": "density",
            "factors": list(self.factors),
            "rates_per_mpx": [round(float(v), 3) for v in self.rates],
            "maps": [None if xy is None else [list(xy[0]), list(xy[1])] for xy in self.maps],
            "bright_maps": [
                None if xy is None else [list(xy[0]), list(xy[1])] for xy in self.bright_maps
            ],
            "snr": self.snr,
            "n": list(self.n),
            "source": self.source,
            "seeing_factor": self.seeing_factor,
            "noise_factor": self.noise_factor,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DensityCalibration:
        if d.get("kind") != "density":
            raise ProbcatValueError("not a density calibration")

        def knots(v):
            return tuple(None if xy is None else (tuple(xy[0]), tuple(xy[1])) for xy in v)

        maps = knots(d["maps"])
        return cls(
            tuple(float(v) for v in d["factors"]),
            tuple(float(v) for v in d["rates_per_mpx"]),
            maps,
            float(d.get("snr", SNR)),
            tuple(int(v) for v in d.get("n", ())),
            d.get("source", ""),
            knots(d.get("bright_maps") or ()),
            float(d.get("seeing_factor", 1.0)),
            float(d.get("noise_factor", 1.0)),
        )


def _logit(p) -> np.ndarray:
    q = np.clip(np.asarray(p, float), 1e-12, 1.0 - 1e-12)
    return np.log(q) - np.log1p(-q)


def _odds_scaled(p, g: float) -> np.ndarray:
    """Probabilities ``p`` with their odds times ``g``."""
    p = np.asarray(p, float)
    return g * p / np.maximum(g * p + 1.0 - p, 1e-12)


def bright_count(cat, snr: float = SNR) -> int:
    """How many of a MAP catalogue's detections have ``detection_snr >= snr``."""
    if "detection_snr" not in cat.colnames or not len(cat):
        return 0
    return int(np.sum(np.asarray(cat["detection_snr"], float) >= snr))


def applies(cal: DensityCalibration, seeing_factor: float, noise_factor: float) -> bool:
    """Whether ``cal`` reads an image whose probabilities come from the calibration at
    ``seeing_factor`` and ``noise_factor`` (:func:`probcat.infer.reliability.
    calibration_for`): only at the seeing and depth it was fitted at."""
    return math.isclose(seeing_factor, cal.seeing_factor) and math.isclose(
        noise_factor, cal.noise_factor
    )


def choose(cals, seeing_factor: float, noise_factor: float) -> DensityCalibration | None:
    """Of ``cals``, the one fitted at ``seeing_factor`` and ``noise_factor`` (:func:`applies`),
    or None."""
    return next((c for c in cals if applies(c, seeing_factor, noise_factor)), None)


def at_density(
    cat,
    cal: DensityCalibration,
    area_px: float,
    threshold: float = 0.5,
    seeing_factor: float = 1.0,
    noise_factor: float = 1.0,
):
    """A MAP catalogue ``cat`` (calibrated ``prob``, ``detection_snr``) of an image of
    ``area_px`` unmasked pixels, read under that image's source density: ``prob`` mapped
    by ``cal``, and the detections whose probability it moved from ``threshold`` or more to
    below it dropped (the MAP catalogue under the density the image shows; detections
    below ``threshold`` before keep their place, as in any catalogue). The metadata's
    ``density`` records it: ``applied``; the image's bright detections and area; the
    factors' ``weights``; ``factor``, the likeliest; ``dropped``. Not applied (the
    catalogue unchanged but for ``density``) at another seeing or depth than ``cal``'s
    (:func:`applies`; ``seeing_factor`` and ``noise_factor`` of the probabilities'
    calibration) or on an image under :data:`MIN_AREA` pixels: a cutout around a target,
    whose count says little about the sky's density."""
    why = _not_applied(cat, cal, seeing_factor, noise_factor, area_px)
    if why is not None:
        return replace(cat, meta={**cat.meta, "density": {"applied": False, "reason": why}})
    n = bright_count(cat, cal.snr)
    before = np.asarray(cat["prob"], float)
    prob, _ = cal(before, n, area_px, cat["detection_snr"])
    drop = (prob < threshold) & (before >= threshold)
    rec = {
        **_record(cal, n, area_px),
        "bright_detections": n,
        "area_px": int(area_px),
        "dropped": int(drop.sum()),
    }
    out = cat.with_columns(prob=prob).select(~drop)
    return replace(out, meta={**cat.meta, "density": rec})


def mean_factor(meta: dict) -> float | None:
    """The posterior mean of the density factor that a catalogue's ``density`` metadata
    (:func:`at_density`) records, or None where the calibration was not applied (a record
    without ``mean_factor``: the mean of its factors' weights)."""
    rec = (meta or {}).get("density") or {}
    w = rec.get("weights")
    if not rec.get("applied") or not w:
        return None
    if rec.get("mean_factor") is not None:
        return float(rec["mean_factor"])
    total = sum(float(v) for v in w.values())
    return sum(float(f) * float(v) for f, v in w.items()) / total if total > 0 else None


def sky_shift(offset, factor: float, lift=None) -> np.ndarray:
    """What to take off an image (per band, noise sigma) whose sky estimate had the
    weights' ``offset`` (the faint galaxies' lift at the prior's density and the survey's
    depth) taken off, when its density is ``factor`` times the prior's and the lift at the
    prior's density is ``lift`` at its depth (None: ``offset``, the survey's depth): the
    lift is ``lift * factor`` there, so the image is ``offset - lift * factor`` too bright
    (negative: too faint)."""
    offset = np.asarray(offset, float)
    lift = offset if lift is None else np.asarray(lift, float)
    return offset - lift * float(factor)


def keep_probability(
    cal: DensityCalibration, p, n_bright: int, area_px: float, snr=None
) -> np.ndarray:
    """The probability that a posterior sample keeps a source of calibrated probability
    ``p`` (and ``snr``, its ``detection_snr``: the bright ones by :attr:`DensityCalibration.
    bright_maps`) on an image with ``n_bright`` bright detections on ``area_px`` pixels:
    the density's mapped probability (:func:`mapped`) over ``p``, at most 1. A sample drawn
    at the prior's density whose sources are kept so then holds each as often as the
    density says it is real; where the density raises a probability, thinning cannot, and
    the source is kept."""
    p = np.clip(np.asarray(p, float), 1e-6, 1.0)
    return np.clip(cal(p, n_bright, area_px, snr)[0] / p, 0.0, 1.0)


def mapped(p, xy) -> np.ndarray:
    """Probabilities ``p`` through a map with knots ``xy``; below its first knot, the odds
    scaled as at that knot (a density multiplies a source's prior odds)."""
    from probcat.infer.reliability import _interp

    p = np.asarray(p, float)
    x0, y0 = float(xy[0][0]), float(xy[1][0])
    if x0 <= 0.0:  # a map from the origin: nothing below its first knot
        return _interp(p, *xy)
    g = (y0 / max(1.0 - y0, 1e-9)) / (x0 / max(1.0 - x0, 1e-9))
    low = _odds_scaled(p, g)
    return np.where(p < x0, low, _interp(p, *xy))


def _uniform(seed: int, k: int, ty, tx) -> np.ndarray:
    """Uniform numbers in [0, 1) fixed by ``(seed, k, ty, tx)`` (a splitmix64 hash): a
    sample's number for a tile is the same whatever else the sample holds."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the hash wants
        key = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        key ^= np.uint64(k + 1) * np.uint64(0xBF58476D1CE4E5B9)
        z = np.asarray(ty, np.uint64) * np.uint64(0x100000001B3) ^ np.asarray(tx, np.uint64)
        z = (z ^ key) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def thin_samples(
    samples: list,
    cat,
    cal: DensityCalibration,
    area_px: float,
    seed: int = 0,
    seeing_factor: float = 1.0,
    noise_factor: float = 1.0,
) -> list:
    """Posterior catalogue samples of an image (drawn at the prior's density; columns
    ``tile_x, tile_y, prob``), thinned to the density the image shows: each source kept
    with :func:`keep_probability` of its probability, the MAP catalogue ``cat``'s
    calibrated ``prob`` (and ``detection_snr``) for a source in a tile of a MAP detection
    (``cat`` before :func:`at_density`, whose bright detections count the density), the
    sample's own otherwise. Sample ``k``'s numbers are fixed by ``(seed, k)`` and the tile.
    Each sample's ``meta["density"]`` records it (``thinned``: the sources left out), or
    why not, under the same conditions as :func:`at_density`."""
    why = _not_applied(cat, cal, seeing_factor, noise_factor, area_px)
    if why is not None:
        rec = {"applied": False, "reason": why}
        return [replace(s, meta={**s.meta, "density": rec}) for s in samples]
    n = bright_count(cat, cal.snr)
    rec0 = _record(cal, n, area_px)
    key = np.asarray(cat["tile_y"], np.int64) * 2**31 + np.asarray(cat["tile_x"], np.int64)
    order = np.argsort(key)
    key = key[order]
    prob = np.asarray(cat["prob"], float)[order]
    snr = np.asarray(cat["detection_snr"], float)[order]
    if not samples:
        return []
    tiles, ps, bs = [], [], []
    for s in samples:
        ty, tx = np.asarray(s["tile_y"], np.int64), np.asarray(s["tile_x"], np.int64)
        p = np.asarray(s["prob"], float)
        b = np.asarray(s["detection_snr"], float) if "detection_snr" in s.colnames else 0 * p
        if len(key):  # sources in a MAP detection's tile: its probability and SNR
            mine = ty * 2**31 + tx
            at = np.minimum(np.searchsorted(key, mine), len(key) - 1)
            hit = key[at] == mine
            p, b = np.where(hit, prob[at], p), np.where(hit, snr[at], b)
        tiles.append((ty, tx))
        ps.append(p)
        bs.append(b)
    # every sample's sources mapped at once (the same density for all)
    kept = keep_probability(cal, np.concatenate(ps), n, area_px, np.concatenate(bs))
    kp = np.split(kept, np.cumsum([len(p) for p in ps])[:-1])
    out = []
    for k, (s, (ty, tx), q) in enumerate(zip(samples, tiles, kp)):
        keep = _uniform(seed, k, ty, tx) < q
        rec = {**rec0, "thinned": int(np.sum(~keep))}
        out.append(replace(s.select(keep), meta={**s.meta, "density": rec}))
    return out


def _record(cal: DensityCalibration, n_bright: int, area_px: float) -> dict:
    """The ``density`` metadata an applied calibration writes for an image with
    ``n_bright`` bright detections on ``area_px`` pixels: the likeliest calibrated factor,
    the calibrated factors' weights (:meth:`DensityCalibration.weights`) and the posterior
    mean density (:meth:`DensityCalibration.mean`)."""
    grid, post = cal.posterior(n_bright, area_px)
    w = cal._shares(post)
    return {
        "applied": True,
        "factor": float(cal.factors[int(np.argmax(w))]),
        "weights": {f"{f:g}": round(float(v), 4) for f, v in zip(cal.factors, w)},
        "mean_factor": round(float(np.sum(grid * post)), 4),
    }


def _not_applied(cat, cal, seeing_factor: float, noise_factor: float, area_px: float):
    """Why the density calibration ``cal`` leaves an image's catalogue alone, or None."""
    if "detection_snr" not in cat.colnames:
        return "no detection_snr column to count bright detections by"
    if not applies(cal, seeing_factor, noise_factor):
        return "no density calibration at the seeing and depth the image is read at"
    if area_px < MIN_AREA:
        return f"image under {MIN_AREA} unmasked pixels"
    return None


def fit_density_calibration(
    detect,
    sample,
    *,
    factors=FACTORS,
    n_fields: int = 60,
    progress: bool = False,
    source: str = "",
    n_bins: int = 20,
) -> DensityCalibration:
    """Fit a :class:`DensityCalibration`: ``sample(factor, i)`` gives validation scene
    ``i`` (an object with ``image`` and ``catalog``) at ``factor`` times the prior's
    density, ``detect(image)`` the MAP catalogue the product makes of it (before any
    density calibration); ``n_fields`` scenes per factor. Detections are real when matched
    to a true source within 2 px; ``maps`` are fitted on the detections fainter than
    :data:`SNR`, ``bright_maps`` on the others."""
    from tqdm.auto import tqdm

    from probcat.infer.reliability import _isotonic_points
    from probcat.metrics.detection import matched_detections

    factors = tuple(sorted({float(f) for f in factors} | {1.0}))
    if any(not math.isfinite(f) or f < 0 for f in factors):
        raise ProbcatValueError(f"density factors must be >= 0, got {factors}")
    rates, maps, bright_maps, ns = [], [], [], []
    bar = tqdm(total=len(factors) * n_fields, desc="density calibration", disable=not progress)
    with bar:
        for f in factors:
            prob, real, snr, area = [], [], [], 0.0
            for i in range(n_fields):
                scene = sample(f, i)
                cat = detect(scene.image)
                if "detection_snr" not in cat.colnames:
                    raise ProbcatValueError(
                        "a density calibration counts bright detections by detection_snr: "
                        "these weights' catalogues have none"
                    )
                ok = matched_detections(scene.catalog, cat)
                prob.append(np.asarray(cat["prob"], float))
                snr.append(np.asarray(cat["detection_snr"], float))
                real.append(ok)
                area += float(np.prod(scene.image.shape[-2:]))
                bar.update(1)
            prob, snr = np.concatenate(prob), np.concatenate(snr)
            real = np.concatenate(real).astype(float)
            bright = snr >= SNR
            rates.append(bright.sum() / area * 1e6)
            ns.append(int(len(prob)))
            for out, use in ((maps, ~bright), (bright_maps, bright)):
                # the prior's density: the identity; none of a kind: nothing to map
                if f == 1.0 or not use.any():
                    out.append(None)
                else:
                    out.append(_isotonic_points(prob[use], real[use], n_bins))
    return DensityCalibration(
        factors, tuple(rates), tuple(maps), SNR, tuple(ns), source, tuple(bright_maps)
    )
