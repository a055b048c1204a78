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
"""

from __future__ import annotations

import numpy as np
import torch

from probcat.population.networks import map_input
from probcat.population.simulator import MAP_SIZE, pix_to_deg

__all__ = ["map_statistics", "predictive_pvalues", "predictive_warning", "STATISTICS"]

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
