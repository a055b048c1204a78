"""Close pairs of detections: one source or two? A learned split veto for MAP catalogues.

Most false detections of the encoder sit next to another detection: a bright clump, a
spiral arm or an off-centre knot of one galaxy read as a source of its own (validation
scenes of the shipped LSST-i weights: 28% of the MAP detections lie within 10 px of
another, and hold 55% of the false ones; 60% of those within 4 px are real, 96% at
8-10 px). The network decides each tile from its own receptive field and learns the
shapes of its prior; galaxies whose light is lumpier than the prior's are split more
often. SExtractor's deblender answers the same question with the light between the two
peaks (a branch is a separate object if it holds enough of the flux above the saddle,
Bertin & Arnouts 1996, A&AS 117, 393, sec. 3.3); the dip between two peaks does not depend
on how the galaxy looks otherwise, so it carries over to shapes the prior lacks.

:class:`PairRule` is a logistic regression for "this detection is real" from
:data:`FEATURES` of a detection and its nearest neighbour within :data:`PAIR_RADIUS`
(the network's raw probabilities of both and their position uncertainties, the
detection's SNR, the profile of the image, smoothed over ``smooth_px``, along the segment
joining them: the detection's peak over the lowest point (the saddle) in noise units and as
a ratio, and the two peaks' ratio; the distance). The features were chosen on validation
scenes of the shipped weights (rules fitted on half the scenes, scored on the other half):
the position uncertainties raised the area under the ROC curve for "real" among paired
detections from 0.77 to 0.89; the stamp classifier's galaxy probabilities added nothing,
and vetoing again after a first veto changed nothing. It is fitted on MAP detections of
validation scenes after training (:func:`fit_pair_rule`); :meth:`PairRule.keep` then drops
from a MAP catalogue each paired detection the rule gives a probability below 0.5 of being
real, when its neighbour is the more probable of the two (so a pair never loses both). The
probability calibration is fitted on the catalogues after the veto. Posterior samples are
not vetoed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from probcat.errors import ProbcatValueError

__all__ = [
    "PAIR_RADIUS",
    "FEATURES",
    "PairRule",
    "pair_features",
    "catalog_sd",
    "fit_pair_rule",
    "logistic_fit",
]

PAIR_RADIUS = 10.0  # px: a detection's nearest neighbour within this distance makes a pair
SMOOTH_PX = 1.5  # px: Gaussian smoothing of the image profile (about the LSST PSF's sigma)
FEATURES = (
    "logit_prob",  # the detection's raw probability
    "log_snr",  # its detected SNR (probcat.metrics.detection.detected_snr)
    "contrast",  # (peak - saddle) of the smoothed profile, in smoothed-noise units
    "saddle_over_peak",  # saddle / peak
    "log_peak_ratio",  # log(peak / neighbour's peak)
    "distance",  # px to the neighbour
    "logit_prob_neighbour",  # the neighbour's raw probability
    "log_contrast",  # log(max(contrast, 0.1))
    "log_sd",  # log of the detection's position sd, x_sd + y_sd (px)
    "log_sd_neighbour",  # the same of its neighbour
)
N_PROFILE = 25  # points sampled along the segment


def _kept(p: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """Keep mask: a detection with a partner (``partner >= 0``) goes when its probability
    ``p`` is below 0.5 and below its partner's (on a tie, the later of the two)."""
    keep = np.ones(len(p), bool)
    a = np.flatnonzero(partner >= 0)
    pk = p[partner[a]]
    worse = (p[a] < pk) | ((p[a] == pk) & (a > partner[a]))
    keep[a[(p[a] < 0.5) & worse]] = False
    return keep


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def pair_features(pixels, x, y, prob_raw, sd, *, radius: float = PAIR_RADIUS, smooth_px=SMOOTH_PX):
    """Features (:data:`FEATURES`) of each detection ``x, y`` (px; ``prob_raw`` its raw
    probability, ``sd`` its position sd ``x_sd + y_sd`` in px) with its nearest other
    detection within ``radius`` px, on ``pixels`` ``(H, W)`` (or ``(bands, H, W)``, summed
    over bands and divided by sqrt(bands)) in units of the noise sigma: ``(feats (n, 10),
    partner (n,))``, ``partner`` -1 and the features NaN for a detection without one."""
    from scipy.ndimage import gaussian_filter, map_coordinates
    from scipy.spatial import cKDTree

    from probcat.metrics.detection import detected_snr

    img = np.asarray(pixels)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else img.sum(0) / np.sqrt(img.shape[0])
    if img.ndim != 2:
        raise ProbcatValueError(f"pixels must be (H, W) or (bands, H, W), got {img.shape}")
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    prob_raw = np.asarray(prob_raw, float).ravel()
    sd = np.asarray(sd, float).ravel()
    n = len(x)
    feats = np.full((n, len(FEATURES)), np.nan)
    partner = np.full(n, -1)
    if n < 2:
        return feats, partner
    d, j = cKDTree(np.stack([x, y], 1)).query(np.stack([x, y], 1), k=2)
    d, j = d[:, 1], j[:, 1]
    has = d <= radius
    if not has.any():
        return feats, partner
    partner[has] = j[has]
    sm = gaussian_filter(
        img.astype(np.float32, copy=False), smooth_px, mode="nearest", truncate=3.0
    )
    noise_sm = 1.0 / (2.0 * np.sqrt(np.pi) * smooth_px)  # sd of white unit noise, smoothed
    a = np.flatnonzero(has)
    k = j[a]
    t = np.linspace(0.0, 1.0, N_PROFILE)
    px = x[a, None] + t * (x[k] - x[a])[:, None]
    py = y[a, None] + t * (y[k] - y[a])[:, None]
    prof = map_coordinates(sm, [py.ravel(), px.ravel()], order=1, mode="nearest").reshape(
        len(a), N_PROFILE
    )
    peak, peak_k, saddle = prof[:, 0], prof[:, -1], prof.min(1)
    contrast = (peak - saddle) / noise_sm
    snr = detected_snr(img, x[a], y[a], 1.0)
    feats[a] = np.stack(
        [
            _logit(prob_raw[a]),
            np.log(np.maximum(snr, 1.0)),
            contrast,
            saddle / np.maximum(peak, 1e-3),
            np.log(np.clip(np.maximum(peak, 1e-3) / np.maximum(peak_k, 1e-3), 1e-3, 1e3)),
            d[a],
            _logit(prob_raw[k]),
            np.log(np.maximum(contrast, 0.1)),
            np.log(np.maximum(sd[a], 1e-3)),
            np.log(np.maximum(sd[k], 1e-3)),
        ],
        1,
    )
    return feats, partner


def catalog_sd(cat) -> np.ndarray:
    """``x_sd + y_sd`` (px) of a MAP catalogue's detections."""
    return np.asarray(cat["x_sd"], float) + np.asarray(cat["y_sd"], float)


def logistic_fit(X, y, *, ridge: float = 1e-3, iters: int = 50) -> tuple[np.ndarray, float]:
    """Ridge-penalised logistic regression by Newton's method (IRLS): ``(coef, intercept)``
    maximising ``sum log p(y | X) - ridge * n * |coef|^2 / 2`` (the intercept unpenalised)."""
    from scipy.special import expit

    X = np.asarray(X, float)
    y = np.asarray(y, float)
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    w = np.zeros(d + 1)
    pen = np.full(d + 1, ridge * n)
    pen[-1] = 0.0
    for _ in range(iters):
        p = expit(A @ w)
        g = A.T @ (y - p) - pen * w
        h = (A * (p * (1 - p))[:, None]).T @ A + np.diag(pen) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(h, g)
        w = w + step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w[:-1], float(w[-1])


@dataclass(frozen=True)
class PairRule:
    """Logistic model of "real" for paired detections on standardised :data:`FEATURES`
    (``(f - mean) / scale``); the methods' ``sd`` is ``x_sd + y_sd`` (:func:`catalog_sd`).
    ``check``: the veto's effect on held-out validation scenes (precision and recall of the
    MAP catalogues before and after)."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    radius_px: float = PAIR_RADIUS
    smooth_px: float = SMOOTH_PX
    n: int = 0
    source: str = ""
    check: dict | None = None

    def probability(self, feats) -> np.ndarray:
        """P(real) of detections with features ``feats`` ``(n, len(FEATURES))`` (NaN rows: NaN)."""
        from scipy.special import expit

        f = (np.asarray(feats, float) - np.asarray(self.mean)) / np.asarray(self.scale)
        return expit(f @ np.asarray(self.coef) + self.intercept)

    def pair_probability(self, pixels, x, y, prob_raw, sd) -> tuple[np.ndarray, np.ndarray]:
        """``(P(real), partner)`` of each detection (NaN and -1 without a neighbour)."""
        feats, partner = pair_features(
            pixels, x, y, prob_raw, sd, radius=self.radius_px, smooth_px=self.smooth_px
        )
        return self.probability(feats), partner

    def keep(self, pixels, x, y, prob_raw, sd) -> tuple[np.ndarray, np.ndarray]:
        """``(keep (n,) bool, pair_prob (n,))``: a detection is dropped when its pair
        probability is below 0.5 and below its neighbour's (ties: the later one goes)."""
        p, partner = self.pair_probability(pixels, x, y, prob_raw, sd)
        return _kept(p, partner), p

    def to_dict(self) -> dict:
        return {
            "kind": "pair_logistic",
            "features": list(FEATURES),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "radius_px": self.radius_px,
            "smooth_px": self.smooth_px,
            "n": self.n,
            "source": self.source,
            "check": self.check,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PairRule:
        if list(d.get("features", FEATURES)) != list(FEATURES):
            raise ProbcatValueError("pair rule: stored features differ from this version's")
        return cls(
            tuple(float(v) for v in d["mean"]),
            tuple(float(v) for v in d["scale"]),
            tuple(float(v) for v in d["coef"]),
            float(d["intercept"]),
            float(d.get("radius_px", PAIR_RADIUS)),
            float(d.get("smooth_px", SMOOTH_PX)),
            int(d.get("n", 0)),
            d.get("source", ""),
            d.get("check"),
        )


def rule_from_rows(feats, real, *, source: str = "", ridge: float = 1e-3) -> PairRule:
    """:class:`PairRule` fitted on the paired detections' features ``feats`` and outcomes
    ``real`` (rows with NaN features are skipped)."""
    feats = np.asarray(feats, float)
    real = np.asarray(real, bool)
    ok = np.isfinite(feats).all(1)
    feats, real = feats[ok], real[ok]
    if len(real) < 100 or real.all() or not real.any():
        raise ProbcatValueError(
            f"{len(real)} paired detections ({int(real.sum())} real): too few to fit a pair rule"
        )
    mean = feats.mean(0)
    scale = np.where(feats.std(0) > 0, feats.std(0), 1.0)
    coef, b = logistic_fit((feats - mean) / scale, real, ridge=ridge)
    return PairRule(
        tuple(float(v) for v in mean),
        tuple(float(v) for v in scale),
        tuple(float(v) for v in coef),
        b,
        n=int(len(real)),
        source=source,
    )


def _scene_rows(net, sim, noise_sigma, n_scenes, rng):
    """Per MAP detection of fresh scenes: pair features, partner (index among these rows),
    real, scene index; and the number of true sources of each scene."""
    from probcat.infer.calibration import map_catalogs_of_scenes
    from probcat.metrics.detection import matched_detections

    sig = np.asarray(noise_sigma, float).reshape(-1, 1, 1)
    rows = {"feats": [], "partner": [], "real": [], "scene": []}
    n_true, first = [], 0
    for s, (scene, c, _) in enumerate(map_catalogs_of_scenes(net, sim, noise_sigma, n_scenes, rng)):
        real = matched_detections(scene.catalog, c)
        prob = np.asarray(c["prob"], float)
        f, partner = pair_features(scene.image / sig, c["x"], c["y"], prob, catalog_sd(c))
        rows["feats"].append(f)
        rows["partner"].append(np.where(partner >= 0, partner + first, -1))
        rows["real"].append(real)
        rows["scene"].append(np.full(len(c), s))
        n_true.append(len(scene.catalog))
        first += len(c)
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in rows.items()}
    out["feats"] = out["feats"].reshape(-1, len(FEATURES))
    out["n_true"] = np.asarray(n_true)
    return out


def _veto(rule: PairRule, d: dict, sel: np.ndarray) -> np.ndarray:
    """Keep mask of the detections ``sel`` of the rows ``d`` under ``rule`` (as
    :meth:`PairRule.keep`, from the stored features)."""
    return _kept(rule.probability(d["feats"]), np.where(sel, d["partner"], -1))


def fit_pair_rule(
    net,
    sim,
    noise_sigma,
    *,
    n_scenes: int = 1024,
    rng=None,
    source: str = "",
    inside_fraction: float = 0.0,
):
    """:class:`PairRule` of ``net`` on MAP detections of ``n_scenes`` fresh scenes of
    ``sim`` (validation galaxies), ``inside_fraction`` of them (rounded) with every source
    inside the image, the rest in ``sim``'s layout (as
    :func:`probcat.infer.reliability.fit_reliability`). Its ``check`` is measured out of
    fold: a rule fitted on the even scenes vetoes the odd ones' catalogues (precision and
    recall against every true source, matched within 2 px, before and after); the
    returned rule is fitted on all."""
    from probcat.infer.reliability import scene_layouts

    gen = np.random.default_rng(rng)
    layouts = scene_layouts(sim, n_scenes, inside_fraction)
    parts = [_scene_rows(net, s, noise_sigma, n, gen) for s, n in layouts]
    first, scenes = 0, 0
    for p in parts:
        p["partner"] = np.where(p["partner"] >= 0, p["partner"] + first, -1)
        p["scene"] = p["scene"] + scenes
        first += len(p["real"])
        scenes += len(p["n_true"])
    d = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    even = d["scene"] % 2 == 0
    held = _veto(rule_from_rows(d["feats"][even], d["real"][even]), d, ~even)
    odd_true = int(d["n_true"][1::2].sum())
    tp0, n0 = int(d["real"][~even].sum()), int((~even).sum())
    tp1, n1 = int((d["real"] & held)[~even].sum()), int((held & ~even).sum())
    check = {
        "scenes": "odd validation scenes, rule fitted on the even ones",
        "precision_before": tp0 / max(n0, 1),
        "precision_after": tp1 / max(n1, 1),
        "recall_before": tp0 / max(odd_true, 1),
        "recall_after": tp1 / max(odd_true, 1),
        "dropped": n0 - n1,
        "dropped_real": tp0 - tp1,
    }
    return replace(rule_from_rows(d["feats"], d["real"], source=source), check=check)
