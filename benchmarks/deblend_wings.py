"""Faint galaxies in the outskirts of big bright ones: deblended aperture fluxes with the
big galaxies' wings fitted (``wings=True``, the default) and without, on the same
held-out fields, one run.

The deblender draws each galaxy on a 53-px stamp; a big bright galaxy's light goes on
beyond it (:func:`probcat.infer.deblend.galaxy_wings`). Without a wing that light is left
to whatever source lies there, and a faint neighbour takes it as its own. Here every
galaxy of 1000×1000 LSST-i fields (10-year depth, the prior's counts, test-split galaxies
that no training run saw; the bulge + disk prior and the five morphology families) is
detected and deblended by ``probcat.deblend`` (MAP catalog, the shipped weights), and its
5-px aperture flux compared with that of its own noiseless light. Galaxies are grouped by
``wing``: the light other galaxies put in their aperture from beyond 26 px of those
galaxies' centres (beyond the deblender's stamps), in units of the aperture's noise.
Also the wall time of the deblending (detection excluded) of each field with and without
wings; and, on bulge + disk fields with bright stars added (i = 15-18, brighter than the
prior's), the galaxies grouped by those stars' light beyond their stamps.

Writes ``benchmarks/results/deblend_wings.json`` and ``deblend_wings.png``.

    .venv/bin/python benchmarks/deblend_wings.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
RADIUS = 5.0  # the catalog's aperture (px)
HALF = 26  # half the deblender's stamp (53 px)
EDGE = 30  # galaxies centred this close to a field's edge are left out
WING_BINS = ((0.0, 0.3), (0.3, 1.0), (1.0, 3.0), (3.0, np.inf))  # in aperture noise sigmas
MATCH_PX = 2.0
STAR_MAGS = (15.0, 18.0)  # the bright stars' i magnitudes (the prior's stars: 20-27)
STAR_STAMP = 257  # px: the bright stars drawn out to 128 px


def truth_fluxes(sim, cat, shape) -> tuple[np.ndarray, np.ndarray]:
    """Per true source: the aperture flux of its own noiseless light at its position, and
    the light of the other galaxies beyond ``HALF`` px (Chebyshev) of their centres in
    that aperture."""
    from probcat.measure import aperture_sums
    from probcat.simulate.bank import paste

    h, w = shape
    beyond = np.zeros((1, h, w), np.float32)
    own = np.full(len(cat), np.nan)
    x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    sx, sy = np.asarray(cat["stamp_x"]), np.asarray(cat["stamp_y"])
    for i in range(len(cat)):
        stamp, scale = sim._stamp(cat, i)
        c = stamp.shape[-1] // 2
        own[i] = aperture_sums(stamp[0] * (1.0 if scale is None else scale[0]),
                               [x[i] - sx[i] + c], [y[i] - sy[i] + c], RADIUS)[0][0]  # fmt: skip
        if scale is None and c > HALF:
            cut = stamp[:1].copy()
            ox = int(np.floor(x[i] + 0.5)) - sx[i]
            oy = int(np.floor(y[i] + 0.5)) - sy[i]
            ys = slice(max(c + oy - HALF, 0), max(c + oy + HALF + 1, 0))
            xs = slice(max(c + ox - HALF, 0), max(c + ox + HALF + 1, 0))
            cut[:, ys, xs] = 0.0
            paste(beyond, cut, int(sx[i]), int(sy[i]))
    wing = aperture_sums(beyond[0], x, y, RADIUS)[0]
    # a galaxy's own light beyond its centre's box never reaches its own aperture
    return own, np.asarray(wing, float)


def add_stars(image: np.ndarray, survey, rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with ``n`` bright stars (i uniform in :data:`STAR_MAGS`) at random
    positions, each drawn by GalSim with the survey's PSF on a 257-px stamp, and the
    stars' light beyond ``HALF`` px (Chebyshev) of their centres' pixels."""
    from probcat.simulate.bank import paste

    band, (h, w) = survey.bands[0], image.shape[-2:]
    out, beyond = image.copy(), np.zeros((1, h, w), np.float32)
    for _ in range(n):
        x, y = (
            rng.uniform(EDGE + HALF, w - 1 - EDGE - HALF),
            rng.uniform(EDGE + HALF, h - 1 - EDGE - HALF),
        )
        cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        flux = band.mag_to_flux(rng.uniform(*STAR_MAGS))
        stamp = (
            band.psf()
            .withFlux(flux)
            .drawImage(
                nx=STAR_STAMP, ny=STAR_STAMP, scale=survey.pixel_scale, offset=(x - cx, y - cy)
            )
            .array[None]
            .astype(np.float32)
        )
        c = STAR_STAMP // 2
        paste(out, stamp, cx - c, cy - c)
        stamp[:, c - HALF : c + HALF + 1, c - HALF : c + HALF + 1] = 0.0
        paste(beyond, stamp, cx - c, cy - c)
    return out, beyond


def run_population(det, deb, sim, n_fields: int, seed, stars: int = 0) -> dict:
    """Flux errors with wings and without on ``n_fields`` fields of ``sim``, by the light
    of other galaxies beyond their stamps in each galaxy's aperture; with ``stars``, that
    many bright stars added to each field, and by their light beyond their stamps instead."""
    from probcat.measure import aperture_sums
    from probcat.metrics.detection import match

    sig = float(sim.survey.noise_sigma[0])
    sig_ap = sig * np.sqrt(np.pi * RADIUS**2)
    rows = {"on": [], "off": []}
    seconds = {"on": [], "off": []}
    winged, stars_winged = [], []
    rng = np.random.default_rng(seed)
    for f in range(n_fields):
        scene = sim.sample(rng, truth=False)
        cat, image = scene.catalog, scene.image
        h, w = image.shape[-2:]
        own, wing = truth_fluxes(sim, cat, (h, w))
        x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
        if stars:
            image, beyond = add_stars(image, sim.survey, rng, stars)
            wing = np.asarray(aperture_sums(beyond[0], x, y, RADIUS)[0], float)
        keep = np.asarray(cat["galaxy"], bool) & (own > 0)
        keep &= (x > EDGE) & (x < w - 1 - EDGE) & (y > EDGE) & (y < h - 1 - EDGE)
        gal = np.flatnonzero(keep)
        found = det.catalog(image, noise_sigma=[sig], background="none")
        ti, ej = match(np.stack([x[gal], y[gal]], 1), np.stack([found["x"], found["y"]], 1),
                       MATCH_PX)  # fmt: skip
        for mode in ("off", "on"):
            t0 = time.perf_counter()
            res = deb.measure(image, found, noise_sigma=[sig], background="none",
                              wings=mode == "on")  # fmt: skip
            seconds[mode].append(time.perf_counter() - t0)
            flux = np.asarray(res.catalog["flux_ap"])[:, 0]
            for a, b in zip(gal[ti], ej):
                rows[mode].append((own[a], flux[b], wing[a] / sig_ap))
            if mode == "on":
                winged.append(int(res.catalog.meta["deblend"].get("wing_galaxies", 0)))
                stars_winged.append(int(res.catalog.meta["deblend"].get("wing_stars", 0)))
        print(f"  field {f}: {len(cat)} sources, {len(ti)} galaxies matched, "
              f"{winged[-1]} wings, {seconds['off'][-1]:.2f} / {seconds['on'][-1]:.2f} s",
              flush=True)  # fmt: skip
    out = {"n_fields": n_fields, "wing_galaxies_per_field": float(np.mean(winged)),
           "wing_stars_per_field": float(np.mean(stars_winged))}  # fmt: skip
    if stars:
        out["bright_stars_per_field"] = stars
    for mode in ("off", "on"):
        r = np.array(rows[mode])
        frac = (r[:, 1] - r[:, 0]) / r[:, 0]
        block = {"all": _stats(frac), "by_wing": []}
        for lo, hi in WING_BINS:
            sel = (r[:, 2] >= lo) & (r[:, 2] < hi)
            block["by_wing"].append({"lo": lo, "hi": None if np.isinf(hi) else hi,
                                     **_stats(frac[sel])})  # fmt: skip
        block["wing_ge_1"] = _stats(frac[r[:, 2] >= 1.0])
        block["deblend_s_median"] = float(np.median(seconds[mode]))
        out[mode] = block
    return out


def _stats(frac: np.ndarray) -> dict:
    if not len(frac):
        return {"n": 0, "median": None, "median_abs": None}
    return {"n": int(len(frac)), "median": float(np.median(frac)),
            "median_abs": float(np.median(np.abs(frac)))}  # fmt: skip


def figure(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pops = list(out["populations"])
    fig, axes = plt.subplots(1, len(pops), figsize=(6 * len(pops), 4.2), squeeze=False)
    bins = out["populations"][pops[0]]["on"]["by_wing"]
    labels = [f"{b['lo']:g}–{'' if b['hi'] is None else format(b['hi'], 'g')}" for b in bins]
    for ax, pop in zip(axes[0], pops):
        d = out["populations"][pop]
        for k, (mode, name) in enumerate((("off", "stamps alone"), ("on", "wings fitted"))):
            med = [b["median"] if b["median"] is not None else np.nan for b in d[mode]["by_wing"]]
            mad = [b["median_abs"] if b["median_abs"] is not None else np.nan
                   for b in d[mode]["by_wing"]]  # fmt: skip
            pos = np.arange(len(med)) + (k - 0.5) * 0.3
            ax.bar(pos, med, width=0.3, label=f"{name}: median", alpha=0.8)
            ax.plot(pos, mad, "k_", ms=14, mew=2)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks(np.arange(len(labels)), labels)
        whose = "the bright stars'" if pop == "bright_stars" else "other galaxies'"
        ax.set_xlabel(f"{whose} light beyond their stamps in the aperture (noise σ)")
        ax.set_ylabel("fractional aperture-flux residual")
        ax.set_title(f"{pop} (black: median |residual|)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    from probcat.api import load
    from probcat.catalog import atomic_write
    from probcat.provenance import provenance, reference_speed_s
    from probcat.simulate.bank import BankConfig, SourceBank
    from probcat.simulate.scene import SceneConfig, SceneSimulator
    from probcat.survey import Survey

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=8, help="1000×1000 fields per population")
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--bank-size", type=int, default=5000, help="test galaxies per population")
    ap.add_argument("--populations", default="parametric,morphology")
    ap.add_argument("--stars", type=int, default=4, help="bright stars a field (0: no such part)")
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/deblend_wings.py", *(argv or sys.argv[1:])])
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    det = load("detection_lsst_i", threads=2, kind="detection")
    deb = load("deblender_lsst_i", threads=2, kind="deblender")
    survey = Survey.lsst(bands="i")
    out = {"command": command, "field_size": args.size, "seed": args.seed,
           "reference_speed_s": reference_speed_s(), "populations": {}}  # fmt: skip
    for k, pop in enumerate(p for p in args.populations.split(",") if p):
        print(pop, flush=True)
        bank = SourceBank.load_or_build(
            survey, BankConfig(population=pop, split="test", n_galaxies=args.bank_size)
        )
        sim = SceneSimulator(bank, SceneConfig(args.size, args.size))
        out["populations"][pop] = run_population(det, deb, sim, args.fields, [args.seed, k])
        print(json.dumps(out["populations"][pop], default=float)[:1500], flush=True)
    if args.stars > 0:  # bulge + disk fields with bright stars added
        print("bright_stars", flush=True)
        bank = SourceBank.load_or_build(
            survey, BankConfig(population="parametric", split="test", n_galaxies=args.bank_size)
        )
        sim = SceneSimulator(bank, SceneConfig(args.size, args.size))
        out["populations"]["bright_stars"] = run_population(
            det, deb, sim, args.fields, [args.seed, 99], stars=args.stars
        )
        print(json.dumps(out["populations"]["bright_stars"], default=float)[:1500], flush=True)
    out["definitions"] = {
        "residual": "(flux_ap - true) / true: flux_ap of the MAP detection matched within 2 px "
        "(Hungarian) to a true galaxy centred at least 30 px inside the field; true: the "
        "5-px aperture flux of the galaxy's own noiseless light at its position",
        "wing": "the light of the other galaxies beyond 26 px (Chebyshev) of their centres "
        "(beyond the deblender's 53-px stamps) in the galaxy's aperture, over the "
        "aperture's noise (sigma sqrt(pi 25))",
        "on / off": "Deblender.measure(..., wings=True) (the default) / wings=False, on the "
        "same detections; deblend_s_median: its wall time per field (detection excluded)",
        "wing_galaxies_per_field": "galaxy models given a wing (catalog meta "
        "deblend.wing_galaxies), mean over the fields; wing_stars_per_field: the same for "
        "stars",
        "bright_stars": "bulge + disk fields (test split, their own seed) with bright stars "
        "added (bright_stars_per_field, i uniform in 15-18, drawn by GalSim with the "
        "survey's PSF out to 128 px, at random positions at least 56 px inside); wing: "
        "those stars' light beyond 26 px (Chebyshev) of their centres in the galaxy's "
        "aperture, over the aperture's noise",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure(out, args.out / "deblend_wings.png")
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(out, indent=1, default=float)
    atomic_write(args.out / "deblend_wings.json", lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {args.out / 'deblend_wings.json'} in {out['wall_s']} s")


if __name__ == "__main__":
    main()
