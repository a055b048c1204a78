"""Detection probabilities that stay calibrated, and a score for sources unlike the
training data.

Two post-hoc fits on validation scenes, made after training and shipped inside the
weights file (``probcat train calibrate RUN`` refits them):

* :class:`ProbabilityCalibration` maps the network's detection probability (the tile's
  marginal probability, ``prob_raw`` in a catalogue) to the observed fraction of MAP
  detections that are real (matched to a true source within 2 px). It is a monotone
  (isotonic) regression: quantile bins of the raw probability, pooled where the observed
  fraction would decrease (pool-adjacent-violators), read between bin centres. MAP
  decisions stay the network's; the catalogue's ``prob`` becomes the calibrated one, so a
  cut ``prob >= 0.9`` keeps detections of which about 90% or more are real. A calibrated
  network gives the identity (within the bins' noise). The map is fitted separately for
  detections whose ``ood_score`` (below) is ordinary, high (0.9-0.99) or extreme (> 0.99),
  where the validation scenes hold enough of them: unusual-looking detections are more
  often false, and on shapes the prior lacks most detections look unusual. Before the
  ``ood_score`` bins, the map is split by the detection's distance to its nearest
  neighbour (:data:`NEIGHBOUR_ZONES`: under and over 5 px to the nearest other detection of
  raw probability >= 0.5), then by its distance to the nearest image edge
  (:data:`EDGE_ZONES`: under 2, 2-4, 4-8 and over 8 px); a zone with fewer than
  :data:`MIN_BIN` validation detections uses the map of the split above it. A detection
  within 5 px of another is more often one of two pieces of a single galaxy (validation
  scenes of the shipped weights, 8 px or more inside the image: 79% real under 4 px, 84%
  at 4-6 px, 95% beyond 8 px), and galaxies with bright clumps or irregular light make
  such pairs more often. The validation scenes have sources up to 8 px beyond their
  edges, as any image cut from a survey does, and a detection within 2 px of the edge is
  as often the light of a source outside the image (then farther than 2 px from the
  catalogue position, so not real) as a source inside. Fitted on all detections at once,
  that edge zone pulled the map down for every detection and left the interior ones
  under-confident (validation scenes of the shipped weights: detections over 8 px inside
  were 94% real at a mean calibrated 0.86, ECE 0.08; with the zones, ECE 0.005-0.015
  there). In an image whose sources all lie inside it (an isolated simulated scene) the
  detections within 2 px of an edge are real as often as the interior ones, so a map
  fitted on cutouts alone makes their probabilities too low. The fits after training
  therefore draw half of the validation scenes with every source inside
  (``inside_fraction`` of :func:`fit_reliability`) and fit a map for each kind of image
  (:class:`LayoutCalibration`); an image's detections get both, weighted by the
  probability that it is a cutout, which its own detections near its edges tell: on
  validation scenes of the shipped network (maps fitted on 2048 scenes, scored on 512
  others of each kind), ECE 0.015 on cutouts and 0.013 on isolated scenes, against 0.008
  and 0.035 with cutouts alone and 0.017 and 0.021 with one map fitted on both. The
  splits were chosen on validation scenes only (2048 scenes of the shipped weights, maps
  fitted on one half and scored on the other): ECE 0.0081 with the edge zones alone,
  0.0058 with the neighbour split first; fitted on 512 scenes, 0.0140 (the splits need
  the scenes: 2048 by default, ``fits.reliability_scenes`` of the training config).
  Under a PSF wider than the survey's, the network's probabilities are too high for
  that map (precision 0.93 at ``prob >= 0.9`` at 1.5 times the FWHM). Weights may
  therefore carry maps refitted, by the same recipe, on validation scenes rendered under
  other PSFs (``seeing_calibrations``: ``fits.seeing_factors`` of the training config),
  each detection's ``ood_score`` from the weights' own density as on a new image; an
  image gets the map whose PSF is nearest in log to its own (:func:`seeing_calibration`,
  the seeing the detector measures or is given).
  Galaxies whose shapes the prior lacks make the network's probabilities too high for a
  map fitted on the prior's galaxies (on validation scenes of Hubble Deep Field galaxies,
  ECE 0.07-0.09 with the map of the training galaxies). Weights may therefore carry a
  second map, fitted by the same recipe on validation scenes of real galaxies
  (``fits.real_shapes_population``: the Hubble Deep Field stamps of
  :mod:`probcat.simulate.hubble`), and an image's detections get both, weighted by the
  share of its galaxies that are of that other kind (:class:`ShapesCalibration`). Its
  detections' ``ood_score`` values tell: each is a little more often high among real
  galaxies, and over the thousands of detections of a survey image the evidence measures
  the share; a small image keeps close to the prior's map.
* :class:`FeatureDensity` describes the encoder's tile features at real detections of the
  validation scenes: the distance of a source's features to the nearest of
  :data:`OOD_NEIGHBOURS` of them (whitened by their covariance; weights of v7: the
  Mahalanobis distance of one Gaussian). ``ood_score`` is the fraction of other real
  validation detections whose distance is smaller than the source's: near 1 for a
  source unlike anything in training (a galaxy shape, artefact or noise level the prior
  lacks), uniform on [0, 1] for sources like the training ones. Sources with
  ``ood_score > 0.99`` deserve a look before their probabilities are trusted; the
  robustness benchmark reports how well the score separates false from real detections
  on a galaxy family left out of training (``ood_flag_auc``).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch

from probcat.errors import ProbcatValueError

__all__ = [
    "ProbabilityCalibration",
    "LayoutCalibration",
    "ShapesCalibration",
    "calibration_from_dict",
    "FeatureDensity",
    "fit_probability_calibration",
    "fit_feature_density",
    "annotate",
    "calibrate",
    "pooled_evidence",
    "pool_records",
    "check_evidence",
    "posterior_probability",
    "share_posterior",
    "share_log_likelihood",
    "ood_bins",
    "SHARE_GRID",
    "seeing_calibration",
    "calibration_for",
    "fit_seeing_calibration",
    "fit_shapes_calibration",
    "ood_log_ratio",
    "veto_pairs",
    "scene_layouts",
    "fit_reliability",
    "reliability_detections",
    "calibration_from_detections",
    "OOD_FLAG",
    "OOD_NEIGHBOURS",
    "nearest_distance2",
    "EDGE_ZONES",
    "NEIGHBOUR_ZONES",
    "edge_distance",
    "neighbour_distance",
]

OOD_FLAG = 0.99  # ood_score above which a source is flagged unlike the training data
OOD_NEIGHBOURS = 1000  # reference vectors of the nearest-neighbour ood_score of new fits


OOD_EDGES = (0.9, 0.99)  # ood_score bins of the calibration: [0, 0.9), [0.9, 0.99), [0.99, 1]
EDGE_ZONES = (2.0, 4.0, 8.0)  # px to the nearest image edge: [0, 2), [2, 4), [4, 8), [8, inf)
NEIGHBOUR_ZONES = (5.0,)  # px to the nearest other detection: [0, 5), [5, inf)
NEIGHBOUR_PROB = 0.5  # raw probability a detection needs to count as a neighbour
CONTEXTS = ("neighbour", "edge")  # the splits of the fitted maps, outermost first
ZONES = {"edge": EDGE_ZONES, "neighbour": NEIGHBOUR_ZONES}
MIN_BIN = 200  # detections an ood_score bin or edge zone needs for a map of its own


def edge_distance(x, y, image_shape) -> np.ndarray:
    """Distance (px) of positions ``x, y`` (pixel centres at integers) to the nearest edge of
    an image of ``image_shape`` ``(H, W)``; negative outside it."""
    h, w = image_shape[-2:]
    x, y = np.asarray(x, float), np.asarray(y, float)
    return np.minimum(np.minimum(x + 0.5, w - 0.5 - x), np.minimum(y + 0.5, h - 0.5 - y))


def neighbour_distance(x, y, prob_raw=None) -> np.ndarray:
    """Distance (px) of each position ``x, y`` to the nearest other one whose raw detection
    probability ``prob_raw`` is at least :data:`NEIGHBOUR_PROB` (every one when not given);
    infinite when there is none."""
    from scipy.spatial import cKDTree

    xy = np.stack([np.asarray(x, float).ravel(), np.asarray(y, float).ravel()], 1)
    keep = np.ones(len(xy), bool) if prob_raw is None else np.asarray(prob_raw) >= NEIGHBOUR_PROB
    out = np.full(len(xy), np.inf)
    if keep.sum() < 1 or len(xy) < 2:
        return out
    d, j = cKDTree(xy[keep]).query(xy, k=min(2, int(keep.sum())))
    d, j = d.reshape(len(xy), -1), j.reshape(len(xy), -1)
    own = np.flatnonzero(keep)[j] == np.arange(len(xy))[:, None]  # a point is not its neighbour
    d = np.where(own, np.inf, d)
    return d.min(1)


def posterior_probability(prior: float, log_ratio: float | None) -> float:
    """Bayes' rule for an image-level choice between two kinds: the probability of the
    first, of ``prior``, after evidence of log likelihood ratio ``log_ratio`` (first over
    second; None: no evidence, ``prior`` itself)."""
    if log_ratio is None:
        return float(prior)
    z = math.log(prior / (1.0 - prior)) + log_ratio
    return float(1.0 / (1.0 + math.exp(-min(max(z, -500.0), 500.0))))


@dataclass(frozen=True)
class ProbabilityCalibration:
    """Monotone maps ``raw -> calibrated``: the pooled one through the points ``(x[i],
    y[i])`` (raw probabilities increasing, calibrated non-decreasing; linear from ``(0, 0)``
    below the first point, flat above the last), and, where the validation scenes held
    enough detections, one per ``ood_score`` bin (edges ``ood_edges``; ``by_ood[k]`` is
    ``(x, y)`` or None for the pooled map). Sources that look unlike the training data are
    then calibrated with the validation detections that looked equally unusual, which are
    more often false. ``by_zone[k]`` is a calibration of the same kind (itself possibly
    split further) for the detections whose context ``axis`` (one of :data:`CONTEXTS`:
    ``"edge"``, px to the nearest image edge, or ``"neighbour"``, px to the nearest other
    detection) lies in zone ``k`` of ``zones``, or None where that zone uses this one. The
    fitted maps split by edge zone, then by neighbour zone, then by ``ood_score``."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    n: int
    source: str = ""
    ood_edges: tuple[float, ...] = ()
    by_ood: tuple = ()
    axis: str = ""
    zones: tuple[float, ...] = ()
    by_zone: tuple = ()

    def __post_init__(self):
        if self.by_zone and self.axis not in CONTEXTS:
            raise ProbcatValueError(
                f"calibration axis must be one of {CONTEXTS}, got {self.axis!r}"
            )

    def __call__(
        self, p, ood=None, edge=None, neighbour=None, *, shape=None, cutout=None
    ) -> np.ndarray:
        """Calibrated probabilities of raw ``p``, given (when known) each detection's
        ``ood_score``, ``edge`` distance (px, :func:`edge_distance`) and ``neighbour``
        distance (px, :func:`neighbour_distance`); ``shape``, the image's, and ``cutout``,
        a stated cutout probability, are not needed (the interface of
        :class:`LayoutCalibration`)."""
        p = np.asarray(p, float)
        out = _interp(p, self.x, self.y)
        if ood is not None and self.by_ood:
            k = np.searchsorted(np.asarray(self.ood_edges), np.asarray(ood, float), side="right")
            for b, xy in enumerate(self.by_ood):
                if xy is not None:
                    out = np.where(k == b, _interp(p, *xy), out)
        v = {"edge": edge, "neighbour": neighbour}.get(self.axis)
        if v is not None and self.by_zone:
            k = np.searchsorted(np.asarray(self.zones), np.asarray(v, float), side="right")
            for b, sub in enumerate(self.by_zone):
                if sub is not None:
                    out = np.where(k == b, sub(p, ood, edge, neighbour), out)
        return out

    def to_dict(self) -> dict:
        return {
            "x": list(self.x),
            "y": list(self.y),
            "n": self.n,
            "source": self.source,
            "ood_edges": list(self.ood_edges),
            "by_ood": [None if xy is None else [list(xy[0]), list(xy[1])] for xy in self.by_ood],
            "axis": self.axis,
            "zones": list(self.zones),
            "by_zone": [None if sub is None else sub.to_dict() for sub in self.by_zone],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ProbabilityCalibration:
        by = tuple(
            None if xy is None else (tuple(xy[0]), tuple(xy[1])) for xy in d.get("by_ood", ())
        )
        if "by_edge" in d:  # weights of v7: one split, by edge zone
            axis, zones, subs = "edge", d.get("edge_zones", ()), d["by_edge"]
        else:
            axis, zones, subs = d.get("axis", ""), d.get("zones", ()), d.get("by_zone", ())
        return cls(
            tuple(d["x"]),
            tuple(d["y"]),
            int(d["n"]),
            d.get("source", ""),
            tuple(d.get("ood_edges", ())),
            by,
            axis if subs else "",
            tuple(zones),
            tuple(None if e is None else cls.from_dict(e) for e in subs),
        )


def _interp(p, x, y):
    return np.interp(p, _knots(tuple(x)), _knots(tuple(y)))


@lru_cache(maxsize=512)
def _knots(v: tuple) -> np.ndarray:
    """A map's knots with the origin first (a map's tuples are fixed: built once; every
    image's detections are mapped through the same few)."""
    return np.r_[0.0, v]


def edge_counts(edge, prob_raw, shape) -> tuple[int, int, float, float]:
    """Detections (raw probability >= :data:`NEIGHBOUR_PROB`) within the first edge zone
    (under ``EDGE_ZONES[0]`` px of an edge) and in the interior (``EDGE_ZONES[-1]`` px or
    more inside), and the areas (px^2) of those zones in an image of ``shape`` ``(H, W)``."""
    h, w = (int(v) for v in shape[-2:])
    e = np.asarray(edge, float)
    keep = np.asarray(prob_raw, float) >= NEIGHBOUR_PROB
    a, b = 2 * EDGE_ZONES[0], 2 * EDGE_ZONES[-1]
    area_edge = h * w - max(h - a, 0) * max(w - a, 0)
    area_int = max(h - b, 0) * max(w - b, 0)
    n_edge = int(np.sum(keep & (e < EDGE_ZONES[0])))
    n_int = int(np.sum(keep & (e >= EDGE_ZONES[-1])))
    return n_edge, n_int, float(area_edge), float(area_int)


@dataclass(frozen=True)
class LayoutCalibration:
    """Probability calibration for images of either layout: a survey ``cutout``, whose
    edges cut through sources beyond them (their light, detected just inside the edge, makes
    about half of its edge detections false), or an ``isolated`` scene, whose sources all
    lie inside it (its edge detections as real as the interior ones). Each has its own
    :class:`ProbabilityCalibration`; an image's detections get their mixture, weighted by
    the probability that the image is a cutout, inferred from the image's own detections:
    a cutout has more of them within ``EDGE_ZONES[0]`` px of its edges. On validation
    scenes the density of detections there, over the interior density, was ``edge_excess``
    (cutout, isolated); the number an image has is Poisson with the interior density
    times that factor times the zone's area, and Bayes' rule with ``prior`` (the
    probability of a cutout) gives the weight (:meth:`cutout_probability`). A large image
    is classified with certainty and has few edge detections anyway; a small one is
    weighted by what its edges show."""

    cutout: ProbabilityCalibration
    isolated: ProbabilityCalibration
    edge_excess: tuple[float, float]
    prior: float = 0.5
    n: int = 0
    source: str = ""

    def __post_init__(self):
        if not (0.0 < self.prior < 1.0 and all(v > 0 for v in self.edge_excess)):
            raise ProbcatValueError(
                "a layout calibration needs 0 < prior < 1 and positive edge_excess factors"
            )

    def evidence(self, edge, prob_raw, shape=None) -> float | None:
        """The log likelihood ratio, cutout over isolated scene, of an image of ``shape``
        whose detections have edge distances ``edge`` and raw probabilities ``prob_raw``
        (the evidence :meth:`cutout_probability` adds to ``prior``); None without a shape
        or without an interior."""
        if shape is None or edge is None:
            return None
        n_edge, n_int, area_edge, area_int = edge_counts(edge, prob_raw, shape)
        if area_int <= 0 or area_edge <= 0:
            return None
        k_cut, k_iso = self.edge_excess
        mu = n_int / area_int * area_edge  # expected edge detections at the interior density
        return float(n_edge * np.log(k_cut / k_iso) - mu * (k_cut - k_iso))

    def cutout_probability(self, edge, prob_raw, shape=None) -> float:
        """Posterior probability that an image of ``shape`` whose detections have edge
        distances ``edge`` and raw probabilities ``prob_raw`` is a cutout (``prior``
        without a shape or without an interior)."""
        return posterior_probability(self.prior, self.evidence(edge, prob_raw, shape))

    def __call__(
        self, p, ood=None, edge=None, neighbour=None, *, shape=None, cutout=None
    ) -> np.ndarray:
        """Calibrated probabilities of raw ``p`` (every detection of one image, for the
        image's weight; ``cutout``, a probability that the image is a cutout, instead when
        given: stated, or read on many images, :func:`pooled_evidence`), as
        :meth:`ProbabilityCalibration.__call__`."""
        w = self.cutout_probability(edge, p, shape) if cutout is None else float(cutout)
        return self.mix(p, ood, edge, neighbour, w)

    def mix(self, p, ood, edge, neighbour, w: float) -> np.ndarray:
        """The two maps' probabilities weighted ``w`` (cutout) and ``1 - w`` (isolated)."""
        a = self.cutout(p, ood, edge, neighbour)
        b = self.isolated(p, ood, edge, neighbour)
        return w * a + (1.0 - w) * b

    def to_dict(self) -> dict:
        return {
            "kind": "layout",
            "cutout": self.cutout.to_dict(),
            "isolated": self.isolated.to_dict(),
            "edge_excess": list(self.edge_excess),
            "prior": self.prior,
            "n": self.n,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LayoutCalibration:
        return cls(
            ProbabilityCalibration.from_dict(d["cutout"]),
            ProbabilityCalibration.from_dict(d["isolated"]),
            tuple(float(v) for v in d["edge_excess"]),
            float(d.get("prior", 0.5)),
            int(d.get("n", 0)),
            d.get("source", ""),
        )


SHAPES_BINS = 20  # equal ood_score bins of the evidence of ShapesCalibration
SHARE_GRID = np.linspace(0.0, 1.0, 201)  # shares of an image's galaxies unlike the prior's
MAX_SHARE_PRIOR = 0.75  # the largest prior mean share whose prior keeps mass on a share of 0


def ood_bins(ood) -> np.ndarray:
    """The :data:`SHAPES_BINS` equal bin on [0, 1] of each ``ood_score``."""
    k = (np.asarray(ood, float) * SHAPES_BINS).astype(int)
    return np.clip(k, 0, SHAPES_BINS - 1)


def share_log_likelihood(counts, log_ratio) -> np.ndarray:
    """On :data:`SHARE_GRID`, the log likelihood (up to a constant) of a share ``w`` of an
    image's galaxies unlike the prior's, given its detections' ``counts`` per ``ood_score``
    bin and the bins' ``log_ratio`` (:class:`ShapesCalibration`): the sum over the
    detections of ``log(1 + w (e - 1))``, ``e`` the density ratio in the detection's bin."""
    c = np.asarray(counts, float)
    if not c.size:
        return np.zeros(len(SHARE_GRID))
    return np.log1p(SHARE_GRID[:, None] * np.expm1(np.asarray(log_ratio, float))[None, :]) @ c


def share_posterior(prior: float, loglik) -> np.ndarray:
    """Posterior probabilities on :data:`SHARE_GRID` from log likelihood ``loglik`` (an
    array on the grid, or 0) and the prior of :class:`ShapesCalibration`, of mean
    ``prior``: ``1 - 4 prior / 3`` on a share of 0, ``2 prior / 3`` on 1 and ``2 prior / 3``
    spread evenly between (its mean, ``2 prior / 3 + prior / 3``)."""
    n = len(SHARE_GRID)
    lp = np.full(n, math.log(2.0 * prior / 3.0 / (n - 2)))
    lp[0], lp[-1] = math.log(1.0 - 4.0 * prior / 3.0), math.log(2.0 * prior / 3.0)
    z = lp + np.asarray(loglik, float)
    z = np.exp(z - z.max())
    return z / z.sum()


def mean_share(posterior) -> float:
    """The mean share of a posterior on :data:`SHARE_GRID` (:func:`share_posterior`)."""
    return float(np.asarray(posterior, float) @ SHARE_GRID)


@dataclass(frozen=True)
class ShapesCalibration:
    """Probability calibration for images whose galaxies may look unlike the prior's:
    ``prior_shapes``, the weights' calibration (fitted on validation scenes of the training
    population), and ``real_shapes``, fitted by the same recipe on validation scenes of
    other galaxies (real ones: ``population``), on which the network's probabilities are
    too high for the first.

    An image's sky is read as a mixture: a share ``w`` of its detections drawn from the
    galaxies of the second kind, the rest from the prior's. Each detection's ``ood_score``
    is a draw from the density of its kind (histograms of :data:`SHAPES_BINS` equal bins on
    [0, 1] measured on validation scenes of each; ``log_ratio[k]`` is the log of their
    ratio, second kind over the prior's, in bin ``k``), so the image's scores give a
    posterior over ``w`` (:meth:`share_posterior`, on :data:`SHARE_GRID`) from a prior
    whose mean is ``prior``: ``1 - 4 prior / 3`` on ``w = 0`` (a sky like the training's),
    ``2 prior / 3`` on ``w = 1`` and ``2 prior / 3`` spread evenly between. A detection of
    score ``s`` then is of the second kind with probability ``w e / (w e + 1 - w)``, ``e``
    the density ratio at ``s`` (:meth:`responsibility`), and gets the two maps mixed by
    that, averaged over the posterior. One detection says little (the two densities
    differ most above 0.85), so a small image keeps close to the prior; a survey image,
    with thousands of detections, or many images pooled (:func:`pooled_evidence`), measure
    the share. Where a sky holds both kinds, or galaxies between them, the share lands
    between 0 and 1 instead of being forced to either map."""

    prior_shapes: ProbabilityCalibration | LayoutCalibration
    real_shapes: ProbabilityCalibration | LayoutCalibration
    log_ratio: tuple[float, ...]
    prior: float = 0.1
    population: str = ""
    n: int = 0
    source: str = ""

    def __post_init__(self):
        if not (0.0 < self.prior < MAX_SHARE_PRIOR) or len(self.log_ratio) != SHAPES_BINS:
            raise ProbcatValueError(
                f"a shapes calibration needs 0 < prior < {MAX_SHARE_PRIOR} and "
                f"{SHAPES_BINS} log ratios"
            )

    @property
    def description(self) -> str:
        """What a catalogue's ``prob_calibration`` says: both maps' fits."""
        return (
            f"{self.prior_shapes.source}; for galaxies like {self.population or 'another kind'}: "
            f"{self.source}; mixed by the share of the image's galaxies of that kind "
            "(real_shapes_probability)"
        )

    def counts(self, ood) -> np.ndarray | None:
        """The number of an image's detections in each ``ood_score`` bin; None without
        scores."""
        if ood is None:
            return None
        return np.bincount(ood_bins(ood), minlength=SHAPES_BINS)

    def evidence_record(self, ood) -> dict:
        """What a catalogue records of its image's evidence (``calibration_evidence``):
        ``prior``, the bins' ``counts`` and the weights' ``bin_log_ratio``, from which
        :func:`pooled_evidence` reads many images together."""
        c = self.counts(ood)
        return {
            "prior": float(self.prior),
            "counts": [] if c is None else [int(v) for v in c],
            "bin_log_ratio": [round(float(v), 6) for v in self.log_ratio],
        }

    def share_posterior(self, ood) -> np.ndarray:
        """Posterior probabilities, on :data:`SHARE_GRID`, of the share of an image's
        galaxies of the second kind, given its detections' ``ood_score`` values ``ood``
        (the prior alone without scores)."""
        c = self.counts(ood)
        loglik = 0.0 if c is None else share_log_likelihood(c, self.log_ratio)
        return share_posterior(self.prior, loglik)

    def real_shapes_probability(self, ood) -> float:
        """The posterior mean share of an image's galaxies of the second kind, from its
        detections' ``ood_score`` values ``ood`` (``prior`` without scores); the
        catalogue's ``real_shapes_probability``."""
        return mean_share(self.share_posterior(ood))

    def responsibility(self, ood, share) -> np.ndarray:
        """Per detection (``ood_score`` values ``ood``; None: no scores, the share itself),
        the probability that it is of the second kind in a sky where a share ``share``
        of the galaxies are: a scalar share, or one row per share of a grid."""
        share = np.asarray(share, float)
        if ood is None:
            return share
        return self._bin_responsibility(share)[..., ood_bins(ood)]

    def _bin_responsibility(self, share) -> np.ndarray:
        """:meth:`responsibility` of a detection in each ``ood_score`` bin (last axis)."""
        e = np.exp(np.asarray(self.log_ratio, float))
        w = np.asarray(share, float)[..., None]
        return w * e / (w * e + 1.0 - w)

    def __call__(
        self,
        p,
        ood=None,
        edge=None,
        neighbour=None,
        *,
        shape=None,
        cutout=None,
        real_shapes=None,
        posterior=None,
    ) -> np.ndarray:
        """Calibrated probabilities of raw ``p`` (every detection of one image, for the
        image's weights): the two maps mixed by each detection's :meth:`responsibility`,
        averaged over the posterior of the image's share of galaxies of the second kind
        (``posterior``, where the caller has it already: :meth:`share_posterior`), or at
        ``real_shapes``, a share stated, or read on many images (:func:`pooled_evidence`),
        when given; otherwise as :meth:`ProbabilityCalibration.__call__`."""
        if real_shapes is not None:
            return self.mix(p, ood, edge, neighbour, float(real_shapes), shape=shape, cutout=cutout)
        post = self.share_posterior(ood) if posterior is None else posterior
        if ood is None:
            r = mean_share(post)
        else:  # averaged over the posterior bin by bin, then read at each detection's bin
            r = (post @ self._bin_responsibility(SHARE_GRID))[ood_bins(ood)]
        return self._mixed(p, ood, edge, neighbour, r, shape, cutout)

    def mix(self, p, ood, edge, neighbour, w: float, *, shape=None, cutout=None) -> np.ndarray:
        """The two maps' probabilities in a sky where a share ``w`` of the galaxies are of
        the second kind (each detection weighted by its :meth:`responsibility`)."""
        return self._mixed(p, ood, edge, neighbour, self.responsibility(ood, w), shape, cutout)

    def _mixed(self, p, ood, edge, neighbour, r, shape, cutout) -> np.ndarray:
        a = self.prior_shapes(p, ood, edge, neighbour, shape=shape, cutout=cutout)
        b = self.real_shapes(p, ood, edge, neighbour, shape=shape, cutout=cutout)
        return r * b + (1.0 - r) * a

    def to_dict(self) -> dict:
        return {
            "kind": "shapes",
            "prior_shapes": self.prior_shapes.to_dict(),
            "real_shapes": self.real_shapes.to_dict(),
            "log_ratio": list(self.log_ratio),
            "prior": self.prior,
            "population": self.population,
            "n": self.n,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ShapesCalibration:
        return cls(
            calibration_from_dict(d["prior_shapes"]),
            calibration_from_dict(d["real_shapes"]),
            tuple(float(v) for v in d["log_ratio"]),
            float(d.get("prior", 0.1)),
            d.get("population", ""),
            int(d.get("n", 0)),
            d.get("source", ""),
        )


def calibration_from_dict(d: dict):
    """A stored probability calibration: :class:`ShapesCalibration`,
    :class:`LayoutCalibration` or :class:`ProbabilityCalibration`."""
    if d.get("kind") == "shapes":
        return ShapesCalibration.from_dict(d)
    if d.get("kind") == "layout":
        return LayoutCalibration.from_dict(d)
    return ProbabilityCalibration.from_dict(d)


def ood_log_ratio(ood_real, ood_prior) -> tuple[float, ...]:
    """Per bin of :data:`SHAPES_BINS` equal ``ood_score`` bins, the log of the ratio of the
    two samples' densities (real shapes over prior shapes; each histogram given one more
    count per bin, so an empty bin stays finite)."""
    edges = np.linspace(0.0, 1.0, SHAPES_BINS + 1)
    dens = []
    for v in (ood_real, ood_prior):
        v = np.clip(np.asarray(v, float), 0.0, 1.0)
        if not len(v):
            raise ProbcatValueError("no detections to measure an ood_score density on")
        h = np.histogram(v, edges)[0] + 1.0
        dens.append(h / h.sum())
    return tuple(float(v) for v in np.log(dens[0] / dens[1]))


def edge_excess(edge, prob_raw, shape) -> float:
    """Density of detections within the first edge zone over the interior density, in
    images of one ``shape`` whose detections (of all of them, concatenated) have edge
    distances ``edge`` and raw probabilities ``prob_raw`` (the images' number cancels)."""
    n_e, n_i, a_e, a_i = edge_counts(edge, prob_raw, shape)
    if n_i <= 0 or a_e <= 0:
        raise ProbcatValueError("no interior detections: cannot measure the edge excess")
    return float(max(n_e, 0.5) / a_e / (n_i / a_i))


def _pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit to ``y`` (the isotonic regression)."""
    vals, wts, sizes = [], [], []
    for yi, wi in zip(y, w):
        vals.append(float(yi))
        wts.append(float(wi))
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v, ww, s = vals.pop(), wts.pop(), sizes.pop()
            vals[-1] = (vals[-1] * wts[-1] + v * ww) / (wts[-1] + ww)
            wts[-1] += ww
            sizes[-1] += s
    return np.repeat(vals, sizes)


def _isotonic_points(prob, real, n_bins):
    n_bins = int(max(1, min(n_bins, len(prob) // 50)))
    parts = np.array_split(np.argsort(prob, kind="stable"), n_bins)
    x = np.array([prob[p].mean() for p in parts])
    f = np.array([real[p].mean() for p in parts])
    y = _pool_adjacent_violators(f, np.array([len(p) for p in parts], float))
    return tuple(float(v) for v in x), tuple(float(v) for v in y)


def _fit_map(prob, real, ood, n_bins, source) -> ProbabilityCalibration:
    x, y = _isotonic_points(prob, real, n_bins)
    if ood is None:
        return ProbabilityCalibration(x, y, int(len(prob)), source)
    k = np.searchsorted(np.asarray(OOD_EDGES), ood, side="right")
    by = tuple(
        _isotonic_points(prob[k == b], real[k == b], n_bins) if np.sum(k == b) >= MIN_BIN else None
        for b in range(len(OOD_EDGES) + 1)
    )
    return ProbabilityCalibration(x, y, int(len(prob)), source, OOD_EDGES, by)


def _fit_tree(prob, real, ood, context, n_bins, source) -> ProbabilityCalibration:
    """The map of these detections, split by the first context's zones (each zone with at
    least :data:`MIN_BIN` detections gets a tree of the remaining contexts)."""
    node = _fit_map(prob, real, ood, n_bins, source)
    if not context:
        return node
    (axis, v), rest = context[0], context[1:]
    k = np.searchsorted(np.asarray(ZONES[axis]), v, side="right")
    subs = []
    for b in range(len(ZONES[axis]) + 1):
        m = k == b
        subs.append(
            _fit_tree(
                prob[m],
                real[m],
                None if ood is None else ood[m],
                [(a, w[m]) for a, w in rest],
                n_bins,
                "",
            )
            if m.sum() >= MIN_BIN
            else None
        )
    return replace(node, axis=axis, zones=ZONES[axis], by_zone=tuple(subs))


def fit_probability_calibration(
    prob, real, *, ood=None, edge=None, neighbour=None, n_bins: int = 20, source: str = ""
) -> ProbabilityCalibration:
    """Isotonic calibration from raw probabilities ``prob`` and outcomes ``real`` (bool):
    ``n_bins`` quantile bins of ``prob`` (each at least 50 detections), their observed
    fractions made non-decreasing by pool-adjacent-violators, placed at the bins' mean
    raw probabilities. With ``ood`` (the detections' ``ood_score``, from a density fitted
    on other scenes), also one map per bin of :data:`OOD_EDGES` holding at least
    :data:`MIN_BIN` detections. With ``edge`` (px to the image edge) and/or ``neighbour``
    (px to the nearest other detection), all of that again for each zone of
    :data:`NEIGHBOUR_ZONES`, and within it each zone of :data:`EDGE_ZONES` (the order of
    :data:`CONTEXTS`), holding at least :data:`MIN_BIN` detections."""
    prob = np.asarray(prob, float).ravel()
    real = np.asarray(real, bool).ravel()
    if prob.shape != real.shape:
        raise ProbcatValueError("prob and real must have the same length")
    ok = np.isfinite(prob)
    extra = {}
    for name, v in (("ood", ood), ("edge", edge), ("neighbour", neighbour)):
        if v is not None:
            v = np.asarray(v, float).ravel()
            if v.shape != prob.shape:
                raise ProbcatValueError(f"{name} must have the length of prob")
            ok &= ~np.isnan(v) if name == "neighbour" else np.isfinite(v)  # no neighbour: inf
            extra[name] = v
    extra = {k: v[ok] for k, v in extra.items()}
    prob, real = prob[ok], real[ok]
    if len(prob) < 100:
        raise ProbcatValueError(f"only {len(prob)} detections: too few to calibrate")
    context = [(a, extra[a]) for a in CONTEXTS if a in extra]
    return _fit_tree(prob, real, extra.get("ood"), context, n_bins, source)


@dataclass(frozen=True)
class FeatureDensity:
    """How unusual feature vectors are, against those of real detections in validation
    scenes. ``mean`` (C,) and ``precision`` (C, C) are their Gaussian's (shrunk covariance).
    Without ``reference`` vectors the score is the Mahalanobis distance; with them
    (:data:`OOD_NEIGHBOURS`) it is the distance to the nearest of those vectors in the
    whitened space (``(x - mean) @ cholesky(precision)``; ``reference`` holds them,
    whitened), which follows the sample's shape instead of one ellipsoid. ``quantiles``:
    sorted distances of other real validation detections (not among ``reference``), so
    that :meth:`score` is uniform on [0, 1] for sources like them."""

    mean: np.ndarray
    precision: np.ndarray
    quantiles: np.ndarray
    n: int
    source: str = ""
    reference: np.ndarray | None = None

    @cached_property
    def _whitener(self) -> np.ndarray:
        return np.linalg.cholesky(self.precision)

    def _whiten(self, feats) -> np.ndarray:
        return (np.asarray(feats, float) - self.mean) @ self._whitener

    def distance2(self, feats) -> np.ndarray:
        """Squared distance of each row of ``feats`` (``(n, C)``): Mahalanobis, or to the
        nearest reference vector (whitened) when the density has them."""
        if self.reference is None:
            d = np.asarray(feats, float) - self.mean
            return np.einsum("ni,ij,nj->n", d, self.precision, d)
        return nearest_distance2(self.reference, self._whiten(feats), norms=self._norms)

    @cached_property
    def _norms(self) -> np.ndarray | None:
        return None if self.reference is None else reference_norms(self.reference)

    def score(self, feats) -> np.ndarray:
        """Fraction of the validation detections closer than each row of ``feats``."""
        d2 = self.distance2(np.atleast_2d(feats))
        return np.searchsorted(self.quantiles, d2, side="right") / len(self.quantiles)

    def to_dict(self) -> dict:
        out = {
            "mean": self.mean.tolist(),
            "precision": self.precision.tolist(),
            "reference": self.quantiles.tolist(),  # the quantiles: the key of v7's files
            "n": self.n,
            "source": self.source,
        }
        if self.reference is not None:  # float16, base64: compact, and safe to load
            ref = np.ascontiguousarray(self.reference, "<f2")
            out["neighbours"] = {
                "shape": list(ref.shape),
                "float16_base64": base64.b64encode(ref.tobytes()).decode("ascii"),
            }
        return out

    @classmethod
    def from_dict(cls, d: dict) -> FeatureDensity:
        ref = None
        if d.get("neighbours"):
            nb = d["neighbours"]
            raw = np.frombuffer(base64.b64decode(nb["float16_base64"]), "<f2")
            ref = raw.reshape(nb["shape"]).astype(np.float32)
        return cls(
            np.asarray(d["mean"], float),
            np.asarray(d["precision"], float),
            np.asarray(d["reference"], float),
            int(d["n"]),
            d.get("source", ""),
            ref,
        )


def reference_norms(reference) -> np.ndarray:
    """Squared norms of the rows of ``reference`` (float32), as :func:`nearest_distance2`
    uses them."""
    return (np.asarray(reference, np.float64) ** 2).sum(1).astype(np.float32)


def nearest_distance2(reference, x, chunk: int = 2048, norms=None) -> np.ndarray:
    """Squared Euclidean distance of each row of ``x`` to its nearest row of ``reference``
    (brute force, ``chunk`` rows at a time: the nearest found in float32, its distance
    recomputed in float64). ``norms``: :func:`reference_norms` of ``reference``, when kept."""
    ref = np.asarray(reference, np.float32)
    x = np.asarray(x, np.float64)
    if not len(ref):
        return np.full(len(x), np.inf)
    rn = reference_norms(ref) if norms is None else norms
    out = np.empty(len(x))
    for a in range(0, len(x), chunk):
        q = x[a : a + chunk]
        j = np.argmin(rn[None] - 2.0 * (q.astype(np.float32) @ ref.T), axis=1)
        out[a : a + chunk] = ((q - ref[j].astype(np.float64)) ** 2).sum(1)
    return out


def fit_feature_density(
    feats,
    *,
    shrinkage: float = 0.05,
    source: str = "",
    neighbours: int = 0,
    seed=0,
) -> FeatureDensity:
    """Mean and shrunk covariance (``(1 - s) C + s tr(C)/d I``) of ``feats`` ``(n, d)``.
    ``neighbours`` 0: a Gaussian density, whose quantiles are 201 quantiles of the sample's
    own squared distances. Otherwise a nearest-neighbour score: ``neighbours`` of the
    vectors (at most half of them, drawn with ``seed``) become the reference, and the
    quantiles are those of the others' distances to it."""
    feats = np.asarray(feats, float)
    if feats.ndim != 2 or len(feats) < 2 * feats.shape[1]:
        raise ProbcatValueError(
            f"need at least {2 * feats.shape[-1]} feature vectors, got {len(feats)}"
        )
    mean = feats.mean(0)
    cov = np.cov(feats, rowvar=False)
    d = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
    prec = np.linalg.inv(cov)
    probe = np.linspace(0, 1, 201)
    dens = FeatureDensity(mean, prec, np.zeros(1), len(feats), source)
    if not neighbours:
        return replace(dens, quantiles=np.quantile(dens.distance2(feats), probe))
    order = np.random.default_rng(seed).permutation(len(feats))
    n_ref = min(int(neighbours), len(feats) // 2)
    white = dens._whiten(feats)
    ref = white[order[:n_ref]].astype(np.float16).astype(np.float32)  # as stored
    rest = nearest_distance2(ref, white[order[n_ref:]])
    return replace(dens, quantiles=np.quantile(rest, probe), reference=ref)


def _tile_feats(feats_k: torch.Tensor, tx, ty) -> np.ndarray:
    """Feature vectors ``(n, C)`` of tiles ``(ty, tx)`` of one image's ``(C, nty, ntx)``."""
    tx = torch.as_tensor(np.asarray(tx, np.int64), device=feats_k.device)
    ty = torch.as_tensor(np.asarray(ty, np.int64), device=feats_k.device)
    return feats_k[:, ty, tx].T.double().cpu().numpy()


def veto_pairs(cat, net, pixels):
    """The MAP catalogue ``cat`` of ``net`` less the detections its pair rule reads as a
    piece of a neighbouring source (:mod:`probcat.infer.pairs`), with their ``pair_prob``
    (NaN for a detection without a neighbour within the rule's radius); unchanged when the
    weights carry no rule or ``pixels`` (the image in noise-sigma units, ``(bands, H, W)``
    or a batch of one, possibly padded at the bottom and right) is None."""
    from probcat.infer.pairs import catalog_sd

    rule = getattr(net, "pair_rule", None)
    if rule is None or pixels is None or not len(cat):
        return cat
    img = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    if img.ndim == 4:
        img = img[0]
    h, w = cat.image_shape[-2:]
    raw = np.asarray(cat["prob"], float)
    keep, p = rule.keep(img[..., :h, :w], cat["x"], cat["y"], raw, catalog_sd(cat))
    out = cat.with_columns(pair_prob=p).select(np.flatnonzero(keep))
    return replace(out, meta={**out.meta, "pair_vetoed": int((~keep).sum())})


def seeing_calibration(net, scale: float | None = None) -> tuple:
    """``(factor, calibration)``: of the probability calibration of ``net``'s weights (fitted
    at the survey's seeing, factor 1) and those of its ``seeing_calibrations`` (fitted under
    a PSF ``factor`` times as wide), the one whose factor is nearest in log to ``scale``
    (default ``net.seeing_scale``, the PSF width ratio the image is read at:
    :func:`probcat.infer.detect.at_seeing`); the survey's own on a tie. ``(1.0, None)``
    for weights without a calibration. At the survey's depth: :func:`calibration_for`
    chooses among the depth calibrations too."""
    factor, _, cal = calibration_for(net, scale, 1.0)
    return factor, cal


def calibration_for(net, scale: float | None = None, noise: float | None = None) -> tuple:
    """``(seeing_factor, noise_factor, calibration)``: of the probability calibration of
    ``net``'s weights (the survey's seeing and depth: factors 1, 1), its
    ``seeing_calibrations`` (under a PSF ``seeing_factor`` times as wide, at the survey's
    depth) and its ``depth_calibrations`` (at the survey's seeing, on images whose noise as
    a flux is ``noise_factor`` times the survey's: shallower above 1), the one nearest to
    the image's ``scale`` (default ``net.seeing_scale``) and ``noise`` (default
    ``net.noise_scale``: :func:`probcat.infer.detect.at_depth`; None, an unknown depth, is
    the survey's) by the sum of the two log distances; the survey's own on a tie, then
    the seeing's. ``(1.0, 1.0, None)`` for weights without a calibration."""
    own = getattr(net, "prob_calibration", None)
    scale = getattr(net, "seeing_scale", 1.0) if scale is None else scale
    noise = getattr(net, "noise_scale", None) if noise is None else noise
    scale = float(scale) if scale is not None and scale > 0 else 1.0
    noise = float(noise) if noise is not None and noise > 0 and math.isfinite(noise) else 1.0
    if own is None:
        return 1.0, 1.0, own
    options = [(1.0, 1.0, own)]
    options += [(f, 1.0, c) for f, c in getattr(net, "seeing_calibrations", ())]
    options += [(1.0, g, c) for g, c in getattr(net, "depth_calibrations", ())]
    return min(options, key=lambda o: abs(math.log(o[0] / scale)) + abs(math.log(o[1] / noise)))


def annotate(
    cat,
    net,
    feats_k: torch.Tensor,
    pixels=None,
    *,
    real_shapes=None,
    cutout=None,
    evidence_from: str = "stated",
):
    """A MAP catalogue of ``net`` with the weights' reliability columns: ``prob_raw`` (the
    network's probability), ``prob`` (calibrated, :func:`calibrate`) and ``ood_score`` (see
    the module docstring); unchanged when the weights carry neither fit. With ``pixels``
    (the image in noise-sigma units) and weights with a pair rule, the detections it vetoes
    are dropped first (:func:`veto_pairs`). ``real_shapes``, ``cutout``,
    ``evidence_from``: as :func:`calibrate`'s."""
    cat = veto_pairs(cat, net, pixels)
    dens = getattr(net, "feature_density", None)
    if calibration_for(net)[2] is None and dens is None:
        return cat
    meta = {**cat.meta, "ood_flag": OOD_FLAG}
    if dens is not None:
        ood = dens.score(_tile_feats(feats_k, cat["tile_x"], cat["tile_y"])) if len(cat) else []
        cat = cat.with_columns(ood_score=np.asarray(ood, float))
    cat = replace(cat, meta=meta)
    return calibrate(cat, net, real_shapes=real_shapes, cutout=cutout, evidence_from=evidence_from)


def calibrate(cat, net, *, real_shapes=None, cutout=None, evidence_from: str = "stated"):
    """A MAP catalogue of ``net`` (raw probabilities ``prob_raw``, else ``prob``; its
    ``ood_score``, where the weights give one) with ``prob_raw`` and ``prob`` calibrated;
    unchanged when the weights carry no calibration. The calibration is the one for the
    seeing and depth ``net`` reads the image at (:func:`calibration_for`). Where the
    probabilities mix two maps by the share of the image's galaxies unlike the prior's
    (:class:`ShapesCalibration`; its posterior mean: ``real_shapes_probability``), the
    metadata's ``centroid_calibration`` mixes the weights' two centroid calibrations by
    that mean too.

    ``real_shapes`` and ``cutout`` (numbers in [0, 1], or None: the image's own detections
    decide) state the weights of the maps instead: the share of the image's galaxies
    unlike the prior's, and the probability that it is a survey cutout (for the maps of
    either layout, :class:`LayoutCalibration`). The metadata record the weights used
    (``real_shapes_probability``, ``cutout_probability``) and, in
    ``calibration_evidence``, the image's own evidence for each (the ``ood_score`` bins'
    counts; the edges' log likelihood ratio), from which :func:`pooled_evidence` reads
    many images together, and ``from``: ``"image"``, or ``evidence_from`` where a weight
    was given."""
    cal = calibration_for(net)[2]
    if cal is None:
        return cat
    raw = np.asarray(cat["prob_raw" if "prob_raw" in cat.colnames else "prob"], float)
    edge = edge_distance(cat["x"], cat["y"], cat.image_shape)
    near = neighbour_distance(cat["x"], cat["y"], raw)
    ood = np.asarray(cat["ood_score"], float) if "ood_score" in cat.colnames else None
    meta = {**cat.meta, "prob_calibration": getattr(cal, "description", cal.source)}
    evidence, kw, base = {}, {}, cal
    if isinstance(cal, ShapesCalibration):  # the image's share, as the map uses it
        evidence["real_shapes"] = cal.evidence_record(ood)
        if real_shapes is None:  # one posterior for the record and the probabilities
            kw["posterior"] = post = cal.share_posterior(ood)
            w_real = mean_share(post)
        else:
            kw["real_shapes"] = w_real = real_shapes
        meta["real_shapes_probability"] = round(w_real, 4)
        meta.update(_mixed_centroid_calibration(net, w_real))
        base = cal.prior_shapes
    if isinstance(base, LayoutCalibration):
        own = base.evidence(edge, raw, cat.image_shape)
        evidence["cutout"] = _evidence_record(base.prior, own)
        w = posterior_probability(base.prior, own) if cutout is None else cutout
        meta["cutout_probability"] = round(w, 4)
    if evidence:
        stated = {"real_shapes": real_shapes, "cutout": cutout}
        given = any(stated[k] is not None for k in evidence)
        meta["calibration_evidence"] = {**evidence, "from": evidence_from if given else "image"}
    prob = cal(raw, ood, edge, near, shape=cat.image_shape, cutout=cutout, **kw)
    return replace(cat.with_columns(prob_raw=raw, prob=prob), meta=meta)


def _evidence_record(prior: float, log_ratio: float | None) -> dict:
    return {"prior": float(prior), "log_ratio": round(float(log_ratio or 0.0), 6)}


EVIDENCE_KINDS = ("real_shapes", "cutout")


def pooled_evidence(cats) -> dict:
    """What the MAP catalogues ``cats`` of many images (catalogues or their files; their
    ``calibration_evidence``, :func:`annotate`) say together: the share of their galaxies
    unlike the prior's (``real_shapes``: the posterior mean of :class:`ShapesCalibration`'s
    share, from every image's detections' ``ood_score`` bins) and the probability that
    they are survey cutouts (``cutout``: Bayes' rule with the first one's prior and the sum
    of every image's log likelihood ratio). Images of one survey share their galaxies and
    the way they were cut, and the thousands of detections of many small images decide
    what the dozens of one cannot (each alone keeps close to the prior). ``{"real_shapes":
    w, "cutout": p, "images": n}``, with None for a kind that no catalogue has evidence of
    and ``n`` the catalogues that have some."""
    from probcat.catalog import FullCatalog

    cats = [FullCatalog.read(c) if isinstance(c, (str, Path)) else c for c in cats]
    out = pool_records([c.meta.get("calibration_evidence") for c in cats])
    return {k: out[k] for k in ("images", *EVIDENCE_KINDS)}


def pool_records(recs) -> dict:
    """:func:`pooled_evidence` of the images' ``calibration_evidence`` records ``recs``
    (None for an image without one), with ``own``: the mean over the images of the weight
    each one's own evidence gives (None for a kind none has)."""
    recs = [r for r in recs if r]
    out: dict = {"images": len(recs), "own": {}}
    for kind in EVIDENCE_KINDS:
        got = [r[kind] for r in recs if kind in r and _record_ok(kind, r[kind])]
        if kind == "real_shapes":  # the share's log likelihoods add up over the images
            ll = [share_log_likelihood(g["counts"], g["bin_log_ratio"]) for g in got]
            mean = [mean_share(share_posterior(g["prior"], v)) for g, v in zip(got, ll)]
            out[kind] = mean_share(share_posterior(got[0]["prior"], sum(ll))) if got else None
        else:
            mean = [posterior_probability(g["prior"], g["log_ratio"]) for g in got]
            total = sum(g["log_ratio"] for g in got)
            out[kind] = posterior_probability(got[0]["prior"], total) if got else None
        out["own"][kind] = float(np.mean(mean)) if mean else None
    return out


def _record_ok(kind: str, rec) -> bool:
    """An image's evidence record of ``kind`` in the form this version reads (a catalogue
    written before the share of real shapes, 0.1.0 development, holds a log ratio instead:
    left out of the pool)."""
    keys = ("counts", "bin_log_ratio") if kind == "real_shapes" else ("log_ratio",)
    return isinstance(rec, dict) and "prior" in rec and all(k in rec for k in keys)


def check_evidence(value, name: str, pooled: bool = True):
    """An image-level weight option (``real_shapes``, ``cutout``) checked: None (each
    image's own detections decide), ``"pooled"`` (with ``pooled``: all the images of one
    call together, :func:`pooled_evidence`) or a probability in [0, 1]; a one-line error
    otherwise."""
    if value is None or (pooled and isinstance(value, str) and value == "pooled"):
        return value
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
    if not ok or not 0.0 <= float(value) <= 1.0:
        also = ", 'pooled' or None" if pooled else ""
        raise ProbcatValueError(f"{name} must be a probability in [0, 1]{also}, got {value!r}")
    return float(value)


def _mixed_centroid_calibration(net, w: float) -> dict:
    """``{"centroid_calibration": ...}``: the weights' two centroid calibrations mixed by an
    image's ``real_shapes_probability`` ``w``
    (:func:`~probcat.infer.calibration.mix_centroid_calibrations`); ``{}`` for weights
    without a second one."""
    from probcat.infer.calibration import mix_centroid_calibrations

    a = getattr(net, "centroid_calibration", None)
    b = getattr(net, "real_shapes_centroid_calibration", None)
    if a is None or b is None:
        return {}
    source = f"{a.source}; for galaxies unlike the prior's: {b.source}; mixed with weight {w:.4f}"
    return {"centroid_calibration": mix_centroid_calibrations(a, b, w, source).to_dict()}


@torch.no_grad()
def detections_with_outcomes(net, sim, noise_sigma, *, n_scenes: int, rng, batch: int = 32):
    """MAP detections of ``n_scenes`` scenes of ``sim`` (after the pair veto of weights that
    carry one), a dict of arrays: ``prob`` (raw),
    ``real`` (matched to a true source within 2 px), ``feats`` (tile feature vectors),
    ``scene`` (index), ``edge`` (px to the image edge) and ``neighbour`` (px to the nearest
    other detection, :func:`neighbour_distance`)."""
    from probcat.infer.calibration import map_catalogs_of_scenes
    from probcat.metrics.detection import matched_detections

    rows = {k: [] for k in ("prob", "real", "feats", "scene", "edge", "neighbour")}
    scenes = map_catalogs_of_scenes(net, sim, noise_sigma, n_scenes, rng, batch)
    sig = np.asarray(noise_sigma, float).reshape(-1, 1, 1)
    for k, (scene, c, feats_k) in enumerate(scenes):
        c = veto_pairs(c, net, scene.image / sig)
        ok = matched_detections(scene.catalog, c)
        prob = np.asarray(c["prob"], float)
        rows["prob"].append(prob)
        rows["real"].append(ok)
        rows["feats"].append(_tile_feats(feats_k, c["tile_x"], c["tile_y"]))
        rows["scene"].append(np.full(len(c), k))
        rows["edge"].append(edge_distance(c["x"], c["y"], scene.image.shape))
        rows["neighbour"].append(neighbour_distance(c["x"], c["y"], prob))
    return {k: np.concatenate(v) for k, v in rows.items()}


def scene_layouts(sim, n_scenes: int, inside_fraction: float) -> list:
    """``[(simulator, n), ...]``: ``n_scenes`` scenes of ``sim``, ``inside_fraction`` of
    them (rounded) drawn with every source inside the image (``sim``'s layout with no margin:
    an isolated scene), the rest in ``sim``'s own layout (a survey cutout); layouts with no
    scene left out. A ``sim`` without a margin has only the one layout."""
    if not 0.0 <= inside_fraction <= 1.0:
        raise ProbcatValueError(f"inside_fraction must be in [0, 1], got {inside_fraction}")
    n_in = int(round(n_scenes * inside_fraction)) if sim.config.margin > 0 else 0
    layouts = [(sim, n_scenes - n_in)]
    if n_in:
        layouts.append((sim.with_layout(replace(sim.config, margin=0)), n_in))
    return [(s, n) for s, n in layouts if n > 0]


def reliability_detections(
    net,
    sim,
    noise_sigma,
    *,
    n_scenes: int = 512,
    rng=None,
    inside_fraction: float = 0.0,
    neighbours: int = OOD_NEIGHBOURS,
    density: FeatureDensity | None = None,
) -> tuple[dict, list]:
    """The detections :func:`fit_reliability` fits on: ``(d, layouts)``, ``d`` the arrays of
    :func:`detections_with_outcomes` over ``n_scenes`` fresh scenes of ``sim`` (scene indices
    distinct across layouts) plus ``layout`` (index into ``layouts``, those of
    :func:`scene_layouts`) and ``ood`` (each detection's ``ood_score`` out of fold: from the
    density of the real detections of the other half of the scenes, even/odd, as
    ``ood_score`` is on new images; ``neighbours``: see :func:`fit_feature_density`), or,
    with ``density`` given, its ``ood_score`` of each detection."""
    layouts = scene_layouts(sim, n_scenes, inside_fraction)
    gen = np.random.default_rng(rng) if len(layouts) > 1 else rng  # drawn in turn
    parts, first = [], 0
    for k, (s, n) in enumerate(layouts):
        part = detections_with_outcomes(net, s, noise_sigma, n_scenes=n, rng=gen)
        part["scene"] = part["scene"] + first  # scene indices of all parts distinct
        part["layout"] = np.full(len(part["prob"]), k)
        parts.append(part)
        first += n
    d = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    feats, real, scene = d["feats"], d["real"], d["scene"]
    if density is not None:
        d["ood"] = density.score(feats) if len(feats) else np.zeros(0)
        return d, layouts
    d["ood"] = np.zeros(len(real))
    for half in (scene % 2 == 0, scene % 2 == 1):
        dens = fit_feature_density(feats[half & real], neighbours=neighbours)
        d["ood"][~half] = dens.score(feats[~half])
    return d, layouts


def calibration_from_detections(
    d: dict, layouts: list, *, contexts=("ood", "edge", "neighbour"), source: str = ""
):
    """The probability calibration of :func:`fit_reliability` from the output of
    :func:`reliability_detections`: one map per layout (a :class:`LayoutCalibration` when
    there are two), split by the ``contexts`` named (any of ``"ood"``, ``"edge"``,
    ``"neighbour"``; none: one isotonic map per layout)."""
    unknown = set(contexts) - {"ood", "edge", "neighbour"}
    if unknown:
        raise ProbcatValueError(f"unknown calibration context(s) {sorted(unknown)}")
    cals = []
    for k in range(len(layouts)):
        m = d["layout"] == k
        extra = {c: d[c][m] for c in contexts}
        cals.append(fit_probability_calibration(d["prob"][m], d["real"][m], source=source, **extra))
    if len(cals) == 1:
        return cals[0]
    # cutouts and isolated scenes: each its own map, weighted per image
    excess = tuple(
        edge_excess(d["edge"][d["layout"] == k], d["prob"][d["layout"] == k], s.config.shape)
        for k, (s, _) in enumerate(layouts)
    )
    n_scenes = sum(n for _, n in layouts)
    return LayoutCalibration(
        cals[0],
        cals[1],
        excess,
        1.0 - layouts[1][1] / n_scenes,
        n=int(len(d["real"])),
        source=source,
    )


def fit_reliability(
    net,
    sim,
    noise_sigma,
    *,
    n_scenes: int = 512,
    rng=None,
    source: str = "",
    inside_fraction: float = 0.0,
    neighbours: int = OOD_NEIGHBOURS,
):
    """Both fits on ``n_scenes`` fresh scenes of ``sim`` (validation galaxies):
    ``(ProbabilityCalibration, FeatureDensity)``. The density is fitted on every real
    detection; the calibration sees each detection's ``ood_score`` out of fold (from the
    density of the real detections of the other half of the scenes: even/odd), as
    ``ood_score`` is on new images), and each detection's distances to the image edge and to
    its nearest neighbour. ``inside_fraction`` of the scenes (rounded) are drawn with every
    source inside the image (``sim``'s layout with no margin: an isolated simulated scene),
    the rest in ``sim``'s own layout (with a margin: a survey cutout, whose edges cut
    sources off); with both, the calibration is a :class:`LayoutCalibration` of a map for
    each, with ``1 - inside_fraction`` as the prior probability of a cutout. The density
    scores by the nearest of ``neighbours`` reference vectors (0: a Gaussian density; see
    :func:`fit_feature_density`)."""
    d, layouts = reliability_detections(
        net,
        sim,
        noise_sigma,
        n_scenes=n_scenes,
        rng=rng,
        inside_fraction=inside_fraction,
        neighbours=neighbours,
    )
    cal = calibration_from_detections(d, layouts, source=source)
    dens = fit_feature_density(d["feats"][d["real"]], source=source, neighbours=neighbours)
    return cal, dens


def fit_seeing_calibration(
    net, sim, noise_sigma, *, n_scenes: int = 1024, rng=None, inside_fraction=0.0, source=""
):
    """The probability calibration of :func:`fit_reliability` refitted on ``n_scenes`` fresh
    scenes of ``sim`` (validation galaxies rendered under another PSF), for the
    ``seeing_calibrations`` of ``net``'s weights: each detection's ``ood_score`` comes from
    ``net``'s own feature density (the one every image is scored with), so that its bins
    split detections as they will on an image of that seeing; without a density, the map
    is split by edge and neighbour zones only."""
    dens = getattr(net, "feature_density", None)
    d, layouts = reliability_detections(
        net,
        sim,
        noise_sigma,
        n_scenes=n_scenes,
        rng=rng,
        inside_fraction=inside_fraction,
        density=dens,
    )
    contexts = ("ood", "edge", "neighbour") if dens is not None else ("edge", "neighbour")
    return calibration_from_detections(d, layouts, contexts=contexts, source=source)


def fit_shapes_calibration(
    net,
    sim_real,
    sim_prior,
    noise_sigma,
    *,
    n_scenes: int = 1024,
    rng=None,
    inside_fraction: float = 0.0,
    prior: float = 0.1,
    population: str = "",
    source: str = "",
) -> ShapesCalibration:
    """:class:`ShapesCalibration` of ``net``: its calibration (``net.prob_calibration``, the
    prior shapes' map, kept as it is) and one refitted by the same recipe on ``n_scenes``
    fresh scenes of ``sim_real`` (validation scenes of other galaxies, ``population``),
    each detection's ``ood_score`` from ``net``'s density as on a new image; the evidence
    (the ``ood_score`` densities of both kinds) measured on those detections and on those of
    ``n_scenes // 2`` fresh scenes of ``sim_prior`` (validation scenes of the training
    population), both in the layouts of ``inside_fraction``."""
    base = net.prob_calibration
    dens = getattr(net, "feature_density", None)
    if base is None or dens is None:
        raise ProbcatValueError(
            "a shapes calibration needs weights with a probability calibration and a "
            "feature density (probcat train calibrate RUN --reliability-only first)"
        )
    if isinstance(base, ShapesCalibration):  # a refit: the prior shapes' map stays
        base = base.prior_shapes
    gen = np.random.default_rng(rng)
    kw = {"inside_fraction": inside_fraction, "density": dens}
    d, layouts = reliability_detections(
        net, sim_real, noise_sigma, n_scenes=n_scenes, rng=gen, **kw
    )
    real = calibration_from_detections(d, layouts, source=source)
    ref, _ = reliability_detections(
        net, sim_prior, noise_sigma, n_scenes=max(n_scenes // 2, 1), rng=gen, **kw
    )
    return ShapesCalibration(
        base,
        real,
        ood_log_ratio(d["ood"], ref["ood"]),
        prior,
        population,
        n=int(len(d["real"])),
        source=source,
    )
