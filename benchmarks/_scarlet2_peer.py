"""Run scarlet2 on scenes saved by ``benchmarks/deblend.py`` (its peer deblender).

Needs the ``peer`` extra (``pip install -e ".[peer]"``: scarlet2 brings JAX, kept out of
probcat's own dependencies). Input: an ``.npz`` with ``images`` ``(n, 1, H, W)``
electrons, ``sigma`` (noise per band), ``psf`` ``(1, P, P)`` unit flux and
``centers_<i>`` ``(k, 2)`` (x, y) initial positions per scene. Output: an ``.npz`` with
``models_<i>`` ``(k, 1, H, W)``, each source's model rendered in the observation frame
(the PSF applied), and ``seconds`` per scene (set-up, compilation and fit: what a user
waits for).

    python benchmarks/_scarlet2_peer.py scenes.npz out.npz [--max-iter 200]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import _paths  # noqa: F401  (first: keeps benchmarks/platform.py from shadowing the stdlib)
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints
from scarlet2 import init
from scarlet2.frame import Frame
from scarlet2.module import Parameter, Parameters, relative_step
from scarlet2.observation import Observation
from scarlet2.psf import ArrayPSF
from scarlet2.scene import Scene
from scarlet2.source import Source
from scarlet2.validation_utils import set_validation


def fit_scene(image, sigma, psf, centers, max_iter):
    """Per-source models ``(k, 1, H, W)`` of one scene (centres as (x, y))."""
    weights = jnp.full(image.shape, 1.0 / float(sigma[0]) ** 2)
    obs = Observation(jnp.asarray(image), weights, psf=ArrayPSF(jnp.asarray(psf)))
    frame = Frame.from_observations(obs)
    with Scene(frame) as scene:
        for x, y in centers:
            centre = jnp.array([y, x])  # scarlet2 takes (y, x)
            try:
                spectrum, morph = init.from_gaussian_moments(obs, centre, min_corr=0.99)
            except (ValueError, IndexError):
                spectrum = init.pixel_spectrum(obs, centre)
                morph = init.compact_morphology()
            Source(centre, spectrum, morph)
    with Parameters(scene):
        for i, src in enumerate(scene.sources):
            Parameter(
                src.spectrum,
                name=f"spectrum:{i}",
                constraint=constraints.positive,
                stepsize=partial(relative_step, factor=0.05),
            )
            Parameter(
                src.morphology, name=f"morph:{i}", constraint=constraints.positive, stepsize=0.1
            )
    fitted = scene.fit(obs, max_iter=max_iter, progress_bar=False)
    return np.stack(
        [np.asarray(obs.render(fitted.evaluate_source(s))) for s in fitted.sources]
    ).astype(np.float32)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenes")
    p.add_argument("out")
    p.add_argument("--max-iter", type=int, default=200)
    a = p.parse_args()
    set_validation(False)
    data = np.load(a.scenes)
    images, sigma, psf = data["images"], data["sigma"], data["psf"]
    out, seconds = {}, []
    for i in range(len(images)):
        centers = data[f"centers_{i}"]
        t = time.perf_counter()
        if len(centers):
            out[f"models_{i}"] = fit_scene(images[i], sigma, psf, centers, a.max_iter)
        else:
            out[f"models_{i}"] = np.zeros((0, *images[i].shape), np.float32)
        seconds.append(time.perf_counter() - t)
        print(f"scene {i}: {len(centers)} sources, {seconds[-1]:.2f} s", flush=True)
    np.savez(a.out, seconds=np.array(seconds), **out)


if __name__ == "__main__":
    main()
