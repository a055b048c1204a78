"""Posterior predictive check of a population run: does the model, at its posterior, make
maps like the target?

A ratio estimator gives a posterior whatever map it is shown; it cannot say that the map
was made by another model (another flux law, sources spread differently, a background).
The check draws population parameters from the combined posterior, simulates full maps at
them and compares a few summaries of those maps with the target's. A summary far in the
tail of its predictive distribution says the model misses something the summary measures.

Summaries (each a number per map, independent of where single sources fall):

- ``total_flux``: the sum of the map (all sources' light, detected or not);
- ``n_detected``: the number of sure detections by the run's detector (r1);
- ``l_rms``, ``b_rms``: the root-mean-square longitude and latitude of the map's pixels
  weighted by their compressed counts (``asinh`` of the counts over 3, as the networks
  see the map), so that faint sources weigh about as much as bright ones and a few bright
  sources do not decide it (degrees; the model fixes the longitude spread at 20 degrees
  and sets the latitude spread by ``h``);
- ``pixel_999``: the 99.9th percentile of the pixel values (the brightest sources).

**Before any training** (:func:`prior_check`), the same summaries but ``n_detected`` (r1 is
not trained yet) are compared with those of maps drawn from the prior, in seconds. A
summary beyond every one of 1,000 prior maps (for a map the model made, a chance of 2 in
1,001 per summary) says the model hardly makes such a map at any of its parameters (an
empty map, or another kind of sky), an hour before the posterior check would say so. The
model's maps are Poisson counts over 100, so pixel values that are not whole counts over
100 (:func:`off_lattice_fraction`), or that are mostly whole numbers as counts would be
(:func:`whole_number_fraction`), are reported too: a map in other units.
"""

from __future__ import annotations

import numpy as np
import torch

from probcat.population.networks import map_input
from probcat.population.simulator import COUNTS, MAP_SIZE, pix_to_deg, simulate

__all__ = [
    "map_statistics",
    "predictive_pvalues",
    "predictive_warning",
    "prior_check",
    "prior_warning",
    "off_lattice_fraction",
    "whole_number_fraction",
    "STATISTICS",
]

STATISTICS = ("total_flux", "n_detected", "l_rms", "b_rms", "pixel_999")


def map_statistics(maps: np.ndarray, n_detected) -> dict:
    """The summaries of :data:`STATISTICS` for maps ``(B, 128, 128)`` (rows along the
    latitude ``b``, columns along the longitude ``l``) with their numbers of detections
    ``(B,)``; each an array ``(B,)``."""
    maps = np.asarray(maps, float)
    centres = pix_to_deg(np.arange(MAP_SIZE), 0)[0]  # pixel centres (degrees), either axis
    weights = map_input(torch.from_numpy(maps)).numpy()  # the counts as the networks see them
    total_w = weights.sum((1, 2))
    safe = np.where(total_w != 0, total_w, 1.0)
    rows, cols = weights.sum(2), weights.sum(1)  # per latitude row, per longitude column
    return {
        "total_flux": maps.sum((1, 2)),
        "n_detected": np.asarray(n_detected, float),
        "l_rms": np.sqrt(np.abs((cols * centres**2).sum(1) / safe)),
        "b_rms": np.sqrt(np.abs((rows * centres**2).sum(1) / safe)),
        "pixel_999": np.quantile(maps.reshape(len(maps), -1), 0.999, axis=1),
    }


def predictive_pvalues(observed: dict, predicted: dict) -> dict:
    """Per summary: the observed value, the median and central 68% and 95% ranges of its
    predictive draws, and the two-sided predictive p-value ``2 min(P(T > t), P(T < t))``
    with ties counted half on each side (``n_detected`` is a whole number), capped at 1."""
    out = {}
    for name in observed:
        t = float(np.asarray(observed[name]).ravel()[0])
        draws = np.asarray(predicted[name], float)
        upper = (np.sum(draws > t) + 0.5 * np.sum(draws == t)) / len(draws)
        q = np.quantile(draws, [0.025, 0.16, 0.5, 0.84, 0.975])
        out[name] = {
            "observed": t,
            "predictive_median": float(q[2]),
            "predictive_68": [float(q[1]), float(q[3])],
            "predictive_95": [float(q[0]), float(q[4])],
            "p_value": float(min(1.0, 2 * min(upper, 1 - upper))),
        }
    return out


def prior_check(x_o: np.ndarray, rng: np.random.Generator, n: int) -> dict:
    """The map ``x_o`` ``(128, 128)`` against ``n`` maps drawn from the prior: per summary
    of :data:`STATISTICS` but ``n_detected``, :func:`predictive_pvalues`' entries and the
    range ``prior_range`` (smallest and largest) of the prior maps' values; and the map's
    :func:`off_lattice_fraction` and :func:`whole_number_fraction`."""
    _, maps, _ = simulate(rng, n)
    draws = map_statistics(maps, np.zeros(n))
    observed = map_statistics(np.asarray(x_o)[None], [0])
    del draws["n_detected"], observed["n_detected"]  # no detector before the training
    out = predictive_pvalues(observed, draws)
    for name, entry in out.items():
        entry["prior_range"] = [float(draws[name].min()), float(draws[name].max())]
    return {
        "statistics": out,
        "n_maps": n,
        "off_lattice_fraction": off_lattice_fraction(x_o),
        "whole_number_fraction": whole_number_fraction(x_o),
    }


def _whole(v: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """Which values of ``v`` are whole numbers, within ``tol`` and float32's rounding."""
    return np.abs(v - np.round(v)) <= tol + 4 * np.finfo(np.float32).eps * np.abs(v)


def off_lattice_fraction(x: np.ndarray, tol: float = 0.01) -> float:
    """The fraction of pixels of ``x`` that are not whole counts over ``COUNTS`` (the
    model's maps are ``poisson(mean * 100) / 100``), within ``tol`` of a count and float32's
    rounding."""
    return float(np.mean(~_whole(np.asarray(x, np.float64) * COUNTS, tol)))


def whole_number_fraction(x: np.ndarray) -> float:
    """The fraction of the non-zero pixels of ``x`` that are whole numbers (0 for an empty
    map). The model's maps are counts over 100, and on its prior maps at most about 1% of
    the lit pixels are whole numbers; a map in counts has all of them."""
    c = np.asarray(x, np.float64)
    lit = c[c != 0]
    return float(np.mean(_whole(lit))) if len(lit) else 0.0


def prior_warning(check: dict) -> str | None:
    """A one-line warning for a :func:`prior_check`: the summaries beyond every prior map,
    and pixel values unlike the model's (not whole counts over 100, or mostly whole
    numbers, as counts would be); ``None`` when there is nothing to say."""
    out = [
        f"{k} {c['observed']:.4g} (prior maps: {c['prior_range'][0]:.4g} to "
        f"{c['prior_range'][1]:.4g})"
        for k, c in check["statistics"].items()
        if not c["prior_range"][0] <= c["observed"] <= c["prior_range"][1]
    ]
    parts = []
    if out:
        parts.append(
            f"the map lies beyond all {check['n_maps']} maps drawn from the model's prior in "
            + ", ".join(out)
        )
    off, whole = check["off_lattice_fraction"], check["whole_number_fraction"]
    if off > 0.01:
        parts.append(
            f"{off:.0%} of its pixels are not whole counts over {COUNTS:g} as the model's maps are"
        )
    if whole > 0.5:
        parts.append(
            f"{whole:.0%} of its non-zero pixels are whole numbers, as counts would be (the "
            f"model's maps are counts over {COUNTS:g})"
        )
    if not parts:
        return None
    return "; ".join(parts) + ": check the map's units before trusting the posterior"


def predictive_warning(check: dict, alpha: float = 0.01) -> str | None:
    """A one-line warning naming the summaries of a check (:func:`predictive_pvalues`)
    whose p-value is below ``alpha``; ``None`` when there are none."""
    bad = [f"{k} (p = {c['p_value']:.3f})" for k, c in check.items() if c["p_value"] < alpha]
    if not bad:
        return None
    return (
        "the model at its posterior does not make maps like this one in "
        + ", ".join(bad)
        + ": treat the posterior with care (predictive.png)"
    )
