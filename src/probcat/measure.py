"""Measurements on source images (paper 000 section 4.4): aperture flux with SEP (5-px
radius), adaptive-moments size ``T = |det M|^(1/4)`` and distortion ``e1, e2`` with
``galsim.hsm``.

Positions are in the stamp's pixel coordinates (pixel centres at integers, ``(0, 0)`` the
first pixel), as everywhere in probcat.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "aperture_flux",
    "adaptive_moments",
    "flux_posterior",
    "mixture_quantiles",
    "APERTURE_RADIUS",
]

APERTURE_RADIUS = 5.0  # px, paper 000 section 4.1


def aperture_flux(
    stamps: np.ndarray, x, y, sigma=None, radius: float = APERTURE_RADIUS
) -> tuple[np.ndarray, np.ndarray]:
    """Flux in a circle of ``radius`` around ``(x[i], y[i])`` on each stamp
    ``(N, bands, S, S)``, and its error for background noise ``sigma`` per band (zeros when
    None): ``(N, bands)`` each."""
    import sep

    n, nb = stamps.shape[:2]
    x = np.broadcast_to(np.asarray(x, float), (n,))
    y = np.broadcast_to(np.asarray(y, float), (n,))
    flux = np.zeros((n, nb))
    err = np.zeros((n, nb))
    for k in range(nb):
        e = None if sigma is None else float(np.ravel(sigma)[k])
        for i in range(n):
            f, fe, _ = sep.sum_circle(
                np.ascontiguousarray(stamps[i, k], dtype=np.float64),
                [x[i]],
                [y[i]],
                radius,
                err=e,
            )
            flux[i, k], err[i, k] = f[0], fe[0]
    return flux, err


def adaptive_moments(stamps: np.ndarray, x, y, band: int = 0) -> dict[str, np.ndarray]:
    """Adaptive moments (``galsim.hsm.FindAdaptiveMom``) of band ``band`` of each stamp,
    started at ``(x[i], y[i])``: ``T`` (pixels), ``e1``, ``e2`` (distortion) and ``ok``;
    NaN where the moments do not converge."""
    import galsim

    n = len(stamps)
    x = np.broadcast_to(np.asarray(x, float), (n,))
    y = np.broadcast_to(np.asarray(y, float), (n,))
    out = {k: np.full(n, np.nan) for k in ("T", "e1", "e2")}
    ok = np.zeros(n, bool)
    for i in range(n):
        img = galsim.Image(np.ascontiguousarray(stamps[i, band], dtype=np.float64), xmin=0, ymin=0)
        res = galsim.hsm.FindAdaptiveMom(
            img, guess_centroid=galsim.PositionD(x[i], y[i]), strict=False
        )
        if res.moments_status != 0 or not math.isfinite(res.moments_sigma):
            continue
        out["T"][i] = res.moments_sigma
        out["e1"][i] = res.observed_shape.e1
        out["e2"][i] = res.observed_shape.e2
        ok[i] = True
    out["ok"] = ok
    return out


def mixture_quantiles(means: np.ndarray, sd: float, qs) -> np.ndarray:
    """Quantiles ``qs`` of the equal-weight mixture of normals ``N(means[s], sd^2)``
    (bisection on the mixture CDF; a point mass per sample when ``sd`` is 0)."""
    from scipy.special import ndtr

    means = np.asarray(means, float)
    qs = np.atleast_1d(np.asarray(qs, float))
    if sd <= 0:
        return np.quantile(means, qs)
    lo = np.full(len(qs), means.min() - 10 * sd)
    hi = np.full(len(qs), means.max() + 10 * sd)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        cdf = ndtr((mid[:, None] - means[None]) / sd).mean(1)
        below = cdf < qs
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


POSTERIOR_QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)


def flux_posterior(values: np.ndarray, noise_sd) -> dict[str, np.ndarray]:
    """Summary of per-source flux posteriors from posterior catalog samples.

    ``values`` ``(sources, samples)``: the source's aperture flux in each sample (NaN where
    the sample does not hold it). The posterior is the equal mixture, over the samples
    that hold the source, of ``N(value, noise_sd^2)``: the detection uncertainty (which
    sources exist, where) from the samples, the pixel noise in the aperture from
    ``noise_sd`` (per source; 0 keeps the detection part alone, as paper 000 does).
    Returns ``mean``, ``sd``, ``q025, q16, q50, q84, q975`` and ``p_match`` (the fraction of
    samples holding the source)."""
    values = np.atleast_2d(np.asarray(values, float))
    noise_sd = np.broadcast_to(np.asarray(noise_sd, float), (len(values),))
    n = len(values)
    out = {k: np.full(n, np.nan) for k in ("mean", "sd", "q025", "q16", "q50", "q84", "q975")}
    out["p_match"] = np.isfinite(values).mean(1) if values.shape[1] else np.zeros(n)
    for i in range(n):
        v = values[i][np.isfinite(values[i])]
        if len(v) == 0:
            continue
        out["mean"][i] = v.mean()
        out["sd"][i] = math.sqrt(v.var() + noise_sd[i] ** 2)
        qs = mixture_quantiles(v, float(noise_sd[i]), POSTERIOR_QUANTILES)
        for k, q in zip(("q025", "q16", "q50", "q84", "q975"), qs):
            out[k][i] = q
    return out
