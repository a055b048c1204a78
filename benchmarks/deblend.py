"""Deblending benchmark: reconstructions, deblended measurements and flux posteriors
(paper 000 sections 4.4-4.6, Figs. 6-11), with SEP detections and scarlet2 as peers.

Parts, all on held-out data (test-split galaxies, disjoint from training; scene seeds
that training never uses):

- ``blend`` scenes (Fig. 6): every galaxy deblended at its true centroid; aperture flux,
  adaptive-moments size and distortion on its residual image, against no deblending and
  the truth (the image minus every other source's true model);
- ``central`` scenes (Figs. 9-10): the central galaxy's aperture flux from MAP
  detections, SEP detections and posterior catalog samples (each deblended), and
  scarlet2 on a subset; the flux posterior's calibration;
- the Table 1 ``pair`` (Figs. 7, 8, 11);
- speed on a 1000x1000 field and per 98x98 scene (probcat vs scarlet2).

scarlet2 (the ``peer`` extra; it brings JAX) runs in a subprocess, through
``benchmarks/_scarlet2_peer.py``, so its JAX compilation never shares a process with
torch. Writes ``benchmarks/results/deblend.json`` and
``deblend_fig*.png``:

    .venv/bin/pip install -e ".[peer]"     # scarlet2, once
    .venv/bin/python benchmarks/deblend.py
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
import torch

from probcat.api import DEFAULT_METHOD, Deblender, load
from probcat.baselines.sep import sep_detect
from probcat.catalog import atomic_write
from probcat.infer.deblend import (
    REFINE_DAMPING,
    REFINE_PASSES,
    Models,
    aperture_fluxes,
    crop_at,
    fit_amplitudes,
    galaxy_stamps,
    match_nearest,
    psf_stamp,
    reconstruct,
    refine_stamps,
    sample_fluxes,
    source_images,
)
from probcat.measure import APERTURE_RADIUS, adaptive_moments, aperture_sums, flux_posterior
from probcat.provenance import json_safe, provenance, reference_speed_s
from probcat.simulate.datasets import Simulation, SimulationConfig
from probcat.simulate.prior import FAMILIES
from probcat.simulate.scene import SceneConfig, SceneSimulator

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("subtract", "conserve")
N_BLEND_BINS = 20


# ---- helpers -------------------------------------------------------------------------------
def aperture(img2d, x, y, r=APERTURE_RADIUS):
    return float(aperture_sums(img2d, x, y, r)[0][0])


def equal_count_bins(values, n):
    """Edges of ``n`` equal-count bins (first and last open-ended)."""
    edges = np.quantile(values, np.linspace(0, 1, n + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def binned_median(x, v, edges, boot=200, seed=0):
    """Median of ``v`` per bin of ``x`` and its bootstrap standard error."""
    rng = np.random.default_rng(seed)
    med, err, centre = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (x >= lo) & (x < hi) & np.isfinite(v)
        vals = v[sel]
        if len(vals) == 0:
            med.append(float("nan"))
            err.append(float("nan"))
            centre.append(float("nan"))
            continue
        med.append(float(np.median(vals)))
        bs = np.median(rng.choice(vals, (boot, len(vals))), 1)
        err.append(float(np.std(bs)))
        centre.append(float(np.median(x[sel])))
    return np.array(med), np.array(err), np.array(centre)


def width68(v):
    v = v[np.isfinite(v)]
    q16, q84 = np.quantile(v, [0.16, 0.84])
    return float((q84 - q16) / 2)


# ---- part 1: blend scenes, true centroids (Fig. 6) ------------------------------------------
def blend_part(deb: Deblender, args, *, population="parametric", n=None, seed=None, psf_beta=None):
    """Every galaxy of ``n`` blend scenes (test-split galaxies of ``population``) deblended
    at its true centroid: aperture flux, size and distortion of each variant. ``psf_beta``:
    scenes under a Moffat atmosphere (``SimulationConfig.psf_beta``)."""
    n = args.n_blend if n is None else n
    sim = Simulation(
        SimulationConfig(
            recipe="blend",
            n=n,
            seed=args.seed + 1 if seed is None else seed,
            split="test",
            population=population,
            psf_beta=psf_beta,
        ),
        progress=False,
    )
    survey = deb.survey
    sigma = survey.noise_sigma.astype(np.float32)
    rows = {k: [] for k in ("snr", "blend", "flux", "T", "e1", "e2", "family")}
    for i in range(n):
        scene, _ = sim.scene(i)
        cat, image = scene.catalog, scene.image
        h, w = image.shape[1:]
        inside = (cat["x"] >= 0) & (cat["x"] < w) & (cat["y"] >= 0) & (cat["y"] < h)
        gal = np.flatnonzero(cat["galaxy"] & inside)
        if len(gal) == 0:
            continue
        rest = np.setdiff1d(np.arange(len(cat)), gal)
        others_true = sim.sim.compose(cat.select(rest)) if len(rest) else np.zeros_like(image)
        data = image - others_true  # stars and sources outside the image: true models
        x, y = cat["x"][gal], cat["y"][gal]
        single = galaxy_stamps(deb.net, image, sigma, x, y)
        stamps = refine_stamps(deb.net, image, sigma, x, y, single)
        centres = np.floor(np.stack([x, y]) + 0.5).astype(int)
        models = Models(stamps, *centres, x, y, np.ones(len(gal), bool))
        models = fit_amplitudes(data, models, sigma)  # as reconstruct does
        own = {m: source_images(data, models, m) for m in METHODS}
        own["subtract_single_pass"] = source_images(
            data, Models(single, *centres, x, y, np.ones(len(gal), bool)), "subtract"
        )
        half = models.size // 2
        for j, k in enumerate(gal):
            truth_img = image - sim.sim.compose(cat.select(np.delete(np.arange(len(cat)), k)))
            cx, cy = int(models.cx[j]), int(models.cy[j])

            variants = {
                "truth": crop_at(truth_img, cx, cy, models.size),
                "none": crop_at(data, cx, cy, models.size),
                "subtract": own["subtract"][j],
                "conserve": own["conserve"][j],
                "subtract_single_pass": own["subtract_single_pass"][j],
            }
            px, py = half + x[j] - cx, half + y[j] - cy
            stack = np.stack(list(variants.values()))
            mom = adaptive_moments(stack, px, py)
            rows["snr"].append(float(cat["snr"][k, 0]))
            rows["blend"].append(float(cat["blendedness"][k, 0]))
            rows["family"].append(int(cat["family"][k]) if "family" in cat else -1)
            rows["flux"].append([aperture(v[0], px, py) for v in variants.values()])
            rows["T"].append(mom["T"].tolist())
            rows["e1"].append(mom["e1"].tolist())
            rows["e2"].append(mom["e2"].tolist())
    r = {k: np.array(v, float) for k, v in rows.items()}
    r["variants"] = ["truth", "none", "subtract", "conserve", "subtract_single_pass"]
    return r


def flux_fraction(r, variant: str) -> np.ndarray:
    """Fractional aperture-flux residual of ``variant`` against the truth (NaN where the
    true flux is not positive)."""
    t = r["variants"].index("truth")
    true = np.where(r["flux"][:, t] > 0, r["flux"][:, t], np.nan)
    return (r["flux"][:, r["variants"].index(variant)] - r["flux"][:, t]) / true


def blend_summary(r, variant: str):
    """Fig. 6 keys for one variant (index into r['variants'])."""
    v = r["variants"].index(variant)
    t = r["variants"].index("truth")
    frac, frac_none = flux_fraction(r, variant), flux_fraction(r, "none")
    snr = r["snr"]
    hi = snr > 10
    edges = equal_count_bins(snr[hi], 8)
    med, _, _ = binned_median(snr[hi], frac[hi], edges)
    size = (r["T"][:, v] - r["T"][:, t]) / r["T"][:, t]
    e1 = r["e1"][:, v] - r["e1"][:, t]
    e2 = r["e2"][:, v] - r["e2"][:, t]
    all_edges = equal_count_bins(snr, 10)
    size_med, _, _ = binned_median(snr, size, all_edges)
    e1_med, _, _ = binned_median(snr, e1, all_edges)
    e2_med, _, _ = binned_median(snr, e2, all_edges)
    return {
        "deblended_flux_bias_max_abs_snr_gt_10": float(np.nanmax(np.abs(med))),
        "flux_bias_by_snr_gt_10": med.tolist(),
        "scatter_ratio_deblended_vs_none": width68(frac) / width68(frac_none),
        "flux_residual_width68": width68(frac),
        "size_bias_max_abs": float(np.nanmax(np.abs(size_med))),
        "e_bias_max_abs": float(np.nanmax(np.abs(np.r_[e1_med, e2_med]))),
        "moments_failed_fraction": float(np.mean(~np.isfinite(r["T"][:, v]))),
    }


def morphology_summary(r) -> dict:
    """Deblended flux residuals on morphology-rich blends, overall and per galaxy family:
    68% width and median of the fractional aperture-flux residual, deblended (``subtract``;
    ``conserve`` under ``conserved``) and not."""
    frac = {
        "deblended": flux_fraction(r, "subtract"),
        "conserved": flux_fraction(r, "conserve"),
        "none": flux_fraction(r, "none"),
    }
    out = {"n_galaxies": int(len(r["snr"])), **blend_summary(r, "subtract"), "by_family": {}}
    out["conserve"] = blend_summary(r, "conserve")
    for code, fam in enumerate(FAMILIES):
        sel = (r["family"] == code) & (r["snr"] > 10)
        if sel.sum() < 20:
            continue
        out["by_family"][fam] = {
            "n_snr_gt_10": int(sel.sum()),
            **{f"width68_{k}": width68(v[sel]) for k, v in frac.items()},
            **{f"median_{k}": float(np.nanmedian(v[sel])) for k, v in frac.items()},
        }
    return out


# ---- part 2: central scenes (Figs. 9-10) ---------------------------------------------------
def _central_sim(args, progress: bool) -> Simulation:
    cfg = SimulationConfig(
        recipe="central",
        n=args.n_central,
        seed=args.seed,
        split="test",
        population=args.population,
    )
    return Simulation(cfg, progress=progress)


def _central_worker(job):
    start, stop, args = job
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    det = load(args.weights, device="cpu", threads=1)
    deb = load(args.deblender, device="cpu", threads=1)
    sim = _central_sim(args, progress=False)
    survey = deb.survey
    sigma = survey.noise_sigma.astype(np.float32)
    noise_sd = float(sigma[0]) * np.sqrt(np.pi * APERTURE_RADIUS**2)
    out = []
    for i in range(start, stop):
        scene, _ = sim.scene(i)
        cat, image = scene.catalog, scene.image
        tx, ty = float(cat["x"][0]), float(cat["y"][0])
        others = sim.sim.compose(cat.select(np.arange(1, len(cat)))) if len(cat) > 1 else 0.0
        central = sim.csim.compose(cat.select([0]))
        row = {
            "i": i,
            "snr": float(cat["snr"][0, 0]),
            "blend": float(cat["blendedness"][0, 0]),
            "true": aperture((image - others)[0], tx, ty),
            "true_noiseless": aperture(central[0], tx, ty),
            "map0_subtract": float("nan"),
            "family": int(cat["family"][0]) if "family" in cat else -1,
        }
        res = det.detect(image, samples=args.samples, seed=i)
        row["map_centers"] = np.stack([res.catalog["x"], res.catalog["y"]], 1).tolist()
        sp = sep_detect(image, sigma)
        for name, c in (("map", res.catalog), ("sep", sp)):
            x, y = np.asarray(c["x"], float), np.asarray(c["y"], float)
            j = match_nearest(x, y, [tx], [ty], 2.0)[0]
            for m in METHODS:
                row[f"{name}_{m}"] = float("nan")
            if j < 0:
                continue
            # everything is a galaxy in these scenes (as in paper 000 section 4.6)
            models = reconstruct(deb.net, image, sigma, x, y, np.ones(len(x), bool))

            for m in METHODS:
                row[f"{name}_{m}"] = float(aperture_fluxes(image, models, [j], method=m)[0, 0])
            if name == "map":  # the paper's single pass, for comparison
                single = reconstruct(
                    deb.net, image, sigma, x, y, np.ones(len(x), bool), passes=0, amplitudes=False
                )
                row["map0_subtract"] = float(aperture_fluxes(image, single, [j])[0, 0])
        gal_samples = [
            {"x": s["x"], "y": s["y"], "galaxy": np.ones(len(s), bool)} for s in res.samples
        ]
        vals, contam = sample_fluxes(
            deb.net, image, sigma, gal_samples, [tx], [ty], method=METHODS, contamination=True
        )
        single = sample_fluxes(
            deb.net, image, sigma, gal_samples, [tx], [ty], passes=0, amplitudes=False
        )[0, :, 0]
        row["samples0_subtract"] = (
            float(np.nanmean(single)) if np.isfinite(single).any() else np.nan
        )
        for m in METHODS:
            v, c = vals[m][0, :, 0], contam[m][0, :, 0]
            post = flux_posterior(v[None], noise_sd, c[None], deb.flux_error_scale(m))
            noise_only = flux_posterior(v[None], noise_sd)
            det_only = flux_posterior(v[None], 0.0)
            row[f"samples_{m}"] = float(post["mean"][0])
            row[f"p_match_{m}"] = float(post["p_match"][0])
            for q in ("q025", "q16", "q84", "q975"):
                row[f"{q}_{m}"] = float(post[q][0])
                row[f"noise_{q}_{m}"] = float(noise_only[q][0])
                row[f"det_{q}_{m}"] = float(det_only[q][0])
        out.append(row)
    return out


def central_part(args):
    n, w = args.n_central, max(1, args.workers)
    cuts = np.linspace(0, n, w * 4 + 1).astype(int)
    jobs = [(int(a), int(b), args) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    rows = []
    # the scenes' source banks are rendered (or loaded) here, where rendering may use a
    # pool of its own, so that the workers load them from the cache
    _central_sim(args, progress=True)
    # fork before this process has run any torch computation (see main)
    with mp.get_context("fork").Pool(w) as pool:
        for _k, part in enumerate(pool.imap(_central_worker, jobs)):
            rows += part
            print(f"  central: {len(rows)}/{n} images", flush=True)
    return sorted(rows, key=lambda r: r["i"])


def _estimates(rows, method) -> dict:
    return {k: np.array([r[f"{k}_{method}"] for r in rows]) for k in ("samples", "map", "sep")}


def _kept(rows, method) -> np.ndarray:
    """The images of the headline bins: every method matched the central galaxy (the
    paper's rule) and its true aperture flux is positive."""
    true = np.array([r["true"] for r in rows])
    return np.all([np.isfinite(v) for v in _estimates(rows, method).values()], 0) & (true > 0)


def central_summary(rows, method, scarlet=None):
    true = np.array([r["true"] for r in rows])
    blend = np.array([r["blend"] for r in rows])
    snr = np.array([r["snr"] for r in rows])
    est = _estimates(rows, method)
    keep = _kept(rows, method)
    edges = equal_count_bins(blend[keep], N_BLEND_BINS)
    snr_edges = equal_count_bins(snr[keep], 10)
    by_blend, by_blend_err, by_snr, by_snr_err = {}, {}, {}, {}
    for name, v in est.items():
        frac = np.abs((v - true) / true)
        med, err, centre = binned_median(blend[keep], frac[keep], edges)
        by_blend[name], by_blend_err[name] = med.tolist(), err.tolist()
        med_s, err_s, centre_s = binned_median(snr[keep], frac[keep], snr_edges)
        by_snr[name], by_snr_err[name] = med_s.tolist(), err_s.tolist()
    if scarlet is not None:
        idx = {r["i"]: k for k, r in enumerate(rows)}
        sc = np.full(len(rows), np.nan)
        for i, f in scarlet.items():
            if i in idx:
                sc[idx[i]] = f
        sel = keep & np.isfinite(sc)
        frac = np.abs((sc - true) / true)
        # scarlet2 ran on a subset: its own equal-count bins would differ, so it is binned
        # on the same edges (fewer galaxies per bin) and compared on the same subset below
        med, err, _ = binned_median(blend[sel], frac[sel], edges)
        by_blend["scarlet2"], by_blend_err["scarlet2"] = med.tolist(), err.tolist()
        med_s, err_s, _ = binned_median(snr[sel], frac[sel], snr_edges)
        by_snr["scarlet2"], by_snr_err["scarlet2"] = med_s.tolist(), err_s.tolist()
    top = {k: v[-1] for k, v in by_blend.items()}
    return {
        "n_used": int(keep.sum()),
        "n_excluded_unmatched": int((~keep).sum()),
        "blendedness_bin_edges": edges[1:-1].tolist(),
        "blendedness_bin_centres": binned_median(blend[keep], blend[keep], edges)[2].tolist(),
        "flux_residual_by_blendedness": by_blend,
        "flux_residual_by_blendedness_err": by_blend_err,
        "flux_residual_top_bin": top,
        "flux_residual_by_snr": by_snr,
        "flux_residual_by_snr_err": by_snr_err,
        "snr_bin_centres": binned_median(snr[keep], snr[keep], snr_edges)[2].tolist(),
        "median_abs_frac_residual_all": {
            k: float(np.median(np.abs((v[keep] - true[keep]) / true[keep]))) for k, v in est.items()
        },
    }


PAPER_TOP_EDGE = 0.376  # paper 000 section 4.6: its last blendedness bin is B > 0.376


def _abs_frac(rows, key):
    true = np.array([r["true"] for r in rows])
    v = np.array([r.get(key, np.nan) for r in rows], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(true > 0, np.abs((v - true) / true), np.nan)


def _median_or_none(v):
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else None


def paper_top_bin(rows) -> dict:
    """The central galaxies in the paper's last blendedness bin (B > 0.376), over all
    images: how often each method matches the central galaxy there, and its median
    absolute fractional flux residual where it does. The headline bins follow the paper's
    rule of dropping an image where any method misses the central galaxy; the paper
    dropped 0.2% of its images that way, here SEP misses most of these heavy blends, so
    they are in no headline bin."""
    sel = [r for r in rows if r["blend"] > PAPER_TOP_EDGE]
    out = {"blendedness_above": PAPER_TOP_EDGE, "n_images": len(sel)}
    if not sel:
        return out
    keys = {"samples": "samples_subtract", "map": "map_subtract", "sep": "sep_subtract"}
    fr = {k: _abs_frac(sel, v) for k, v in keys.items()}
    out["matched"] = {k: int(np.isfinite(v).sum()) for k, v in fr.items()}
    out["median_abs_frac_residual_where_matched"] = {k: _median_or_none(v) for k, v in fr.items()}
    both = np.isfinite(fr["samples"]) & np.isfinite(fr["map"])
    out["samples_and_map_matched"] = {
        "n": int(both.sum()),
        "samples": _median_or_none(fr["samples"][both]),
        "map": _median_or_none(fr["map"][both]),
    }
    return out


def refinement_summary(rows, central, blend) -> dict:
    """The galaxy models as probcat makes them by default (refined, their amplitudes then
    fitted jointly) against the paper's single pass (``passes=0``, no amplitude fit), on
    the same central images (median absolute fractional flux residual:
    over the images of the headline bins, in their top bin and in the paper's last bin)
    and on the blend scenes (true centroids: Fig. 6's keys)."""
    blend_c = np.array([r["blend"] for r in rows])
    keep = _kept(rows, "subtract")
    top = keep & (blend_c >= central["blendedness_bin_edges"][-1])
    heavy = blend_c > PAPER_TOP_EDGE
    out = {"passes": REFINE_PASSES, "damping": REFINE_DAMPING, "amplitudes_fitted": True}
    for name, key in (
        ("samples", "samples_subtract"),
        ("samples_single_pass", "samples0_subtract"),
        ("map", "map_subtract"),
        ("map_single_pass", "map0_subtract"),
    ):
        f = _abs_frac(rows, key)
        out[name] = {
            "all": _median_or_none(f[keep]),
            "top_bin": _median_or_none(f[top]),
            "paper_top_bin_where_matched": _median_or_none(f[heavy]),
        }
    out["blend_true_centroids"] = {
        v: {
            k: blend_summary(blend, v)[k]
            for k in (
                "flux_residual_width68",
                "deblended_flux_bias_max_abs_snr_gt_10",
                "scatter_ratio_deblended_vs_none",
            )
        }
        for v in ("subtract", "subtract_single_pass")
    }
    return out


def coverage(rows, method):
    """Coverage of the true aperture flux by the flux posterior's central intervals."""
    out = {}
    sel = [r for r in rows if np.isfinite(r[f"q16_{method}"])]
    tn = np.array([r["true_noiseless"] for r in sel])
    tnoisy = np.array([r["true"] for r in sel])
    for level, lo, hi in (("68", "q16", "q84"), ("95", "q025", "q975")):
        a = np.array([r[f"{lo}_{method}"] for r in sel])
        b = np.array([r[f"{hi}_{method}"] for r in sel])
        out[level] = float(np.mean((tn >= a) & (tn <= b)))
        a = np.array([r[f"noise_{lo}_{method}"] for r in sel])
        b = np.array([r[f"noise_{hi}_{method}"] for r in sel])
        out[f"pixel_noise_only_{level}"] = float(np.mean((tn >= a) & (tn <= b)))
        a = np.array([r[f"det_{lo}_{method}"] for r in sel])
        b = np.array([r[f"det_{hi}_{method}"] for r in sel])
        out[f"detection_only_{level}_vs_noisy_truth"] = float(
            np.mean((tnoisy >= a) & (tnoisy <= b))
        )
    out["n"] = len(sel)
    return out


def morphology_central_summary(rows) -> dict:
    """The central scenes' measures on galaxies of the morphology families, overall and
    per family of the central galaxy: the flux posterior's coverage of the true aperture
    flux (68% and 95%) and the median absolute fractional flux residual of its mean
    (samples) and of the MAP catalogue's flux, for both ways of sharing the light."""

    def block(sel):
        out = {"n": len(sel)}
        for m in METHODS:
            cov = coverage(sel, m)
            out[m] = {
                "n_with_posterior": cov["n"],
                "coverage_68": cov["68"],
                "coverage_95": cov["95"],
                "samples": _median_or_none(_abs_frac(sel, f"samples_{m}")),
                "map": _median_or_none(_abs_frac(sel, f"map_{m}")),
            }
        return out

    out = {"all": block(rows), "by_family": {}}
    for code, fam in enumerate(FAMILIES):
        sel = [r for r in rows if r["family"] == code]
        if len(sel) >= 20:
            out["by_family"][fam] = block(sel)
    return out


# ---- scarlet2 --------------------------------------------------------------------------------
def run_scarlet(args, images, centers, survey, tmp):
    """Per-source models from scarlet2 (in its own environment), or None with a reason."""
    if not args.scarlet_python:
        return None, "not run: pass --scarlet-python (an environment with the peer extra)"
    scenes = Path(tmp) / f"scenes_{len(list(Path(tmp).iterdir()))}.npz"
    out = scenes.with_suffix(".out.npz")
    np.savez(
        scenes,
        images=np.stack(images),
        sigma=survey.noise_sigma,
        psf=psf_stamp(survey, 41),
        **{f"centers_{i}": np.asarray(c, float).reshape(-1, 2) for i, c in enumerate(centers)},
    )
    here = Path(__file__).resolve().parent
    cmd = [
        args.scarlet_python,
        str(here / "_scarlet2_peer.py"),
        str(scenes),
        str(out),
        "--max-iter",
        str(args.scarlet_iter),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return None, f"scarlet2 failed: {p.stderr.strip().splitlines()[-1:]}"
    d = np.load(out)
    return ([d[f"models_{i}"] for i in range(len(images))], d["seconds"]), None


def scarlet_central(args, rows, survey, tmp):
    if args.scarlet_scenes <= 0:
        return None, "scarlet2 not run (--scarlet-scenes 0)"
    sim = _central_sim(args, progress=False)
    pick = rows[: args.scarlet_scenes]
    images, truth_xy = [], []
    for r in pick:
        scene, _ = sim.scene(r["i"])
        images.append(scene.image)
        truth_xy.append(np.stack([scene.catalog["x"], scene.catalog["y"]], 1))
    result = {}
    for init in ("map", "true"):
        centers = (
            truth_xy if init == "true" else [np.reshape(r["map_centers"], (-1, 2)) for r in pick]
        )
        # scarlet2 needs its centres inside the image (truth holds sources in the margin)
        h, w = images[0].shape[1:]
        centers = [
            c[(c[:, 0] >= 0) & (c[:, 0] <= w - 1) & (c[:, 1] >= 0) & (c[:, 1] <= h - 1)]
            for c in centers
        ]
        got, why = run_scarlet(args, images, centers, survey, tmp)
        if got is None:
            return None, why
        models, seconds = got
        fluxes = {}
        for r, img, c, m, t in zip(pick, images, centers, models, truth_xy):
            j = match_nearest(c[:, 0], c[:, 1], [t[0, 0]], [t[0, 1]], 2.0)[0]
            if j < 0 or len(m) == 0:
                continue
            others = m.sum(0) - m[j]
            fluxes[r["i"]] = aperture((img - others)[0], c[j, 0], c[j, 1])
        result[init] = {"fluxes": fluxes, "seconds": seconds.tolist()}
    return result, None


# ---- part 3: the pair (Figs. 7, 8, 11) -------------------------------------------------------
def pair_part(det, deb, args):
    sim = Simulation(SimulationConfig(recipe="pair", n=201, seed=args.seed), progress=False)
    rows, panels = [], {}
    for i in range(201):
        scene, _ = sim.scene(i)
        c = scene.catalog
        res = det.detect(scene.image)
        pm = res.probability_map()
        prob = [
            float(pm[int((c["y"][k] + 0.5) // 5), int((c["x"][k] + 0.5) // 5)]) for k in range(2)
        ]
        mc = res.catalog
        row = {"separation": float(c["separation"][0]), "prob": prob, "dx": [], "x_sd": []}
        for k in range(2):
            j = match_nearest(mc["x"], mc["y"], [c["x"][k]], [c["y"][k]], 2.0)[0]
            row["dx"].append(float(mc["x"][j] - c["x"][k]) if j >= 0 else float("nan"))
            row["x_sd"].append(float(mc["x_sd"][j]) if j >= 0 else float("nan"))
        rows.append(row)
        sep_px = round(float(c["separation"][0]), 1)
        if sep_px in (5.0, 10.0, 15.0):
            out = deb.measure(scene.image, res.catalog)
            sp = sep_detect(scene.image, deb.survey.noise_sigma)
            panels[sep_px] = {
                "image": scene.image[0],
                "model": out.model[0],
                "residual": out.residual[0] / float(deb.survey.noise_sigma[0]),
                "true": np.stack([c["x"], c["y"]], 1),
                "probcat": np.stack([mc["x"], mc["y"]], 1),
                "sep": np.stack([sp["x"], sp["y"]], 1),
            }
    return rows, panels


# ---- part 4: speed ---------------------------------------------------------------------------
def speed_part(det, deb, args, tmp):
    bank = Simulation(
        SimulationConfig(recipe="blend", n=1, seed=args.seed + 2, split="test"), progress=False
    ).bank
    big = SceneSimulator(bank, SceneConfig(1000, 1000)).sample(np.random.default_rng(args.seed))
    # the machine's speed at the time (about 2.5 s on a normal day): a slow hour reads here
    reference = reference_speed_s()
    times = []
    for _ in range(args.speed_runs):
        t = time.perf_counter()
        cat = det.catalog(big.image)
        deb.measure(big.image, cat)
        times.append(time.perf_counter() - t)
    small = Simulation(
        SimulationConfig(recipe="blend", n=args.speed_scenes, seed=args.seed + 3, split="test"),
        progress=False,
    )
    images, centers, per = [], [], []
    for i in range(args.speed_scenes):
        scene, _ = small.scene(i)
        t = time.perf_counter()
        cat = det.catalog(scene.image)
        deb.measure(scene.image, cat)
        per.append(time.perf_counter() - t)
        images.append(scene.image)
        centers.append(np.stack([cat["x"], cat["y"]], 1))
    got, why = run_scarlet(args, images, centers, deb.survey, tmp)
    return {
        "deblend_1k_s": float(np.median(times)),
        "probcat_per_scene_s": float(np.median(per)),
        "scarlet2_per_scene_s": float(np.median(got[1])) if got else None,
        "scarlet2_note": why,
        "scenes": args.speed_scenes,
        "reference_speed_s": reference,
        "method": DEFAULT_METHOD,
        "what": "MAP detection + deblending + aperture flux + adaptive moments; scarlet2: "
        "set-up, compilation and fit from the same MAP detections (its wall time per scene)",
    }


# ---- figures ---------------------------------------------------------------------------------
def figures(blend, central, pair_rows, panels, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Fig. 6: residuals vs SNR and blendedness
    fig, axes = plt.subplots(3, 2, figsize=(10, 10))
    t = blend["variants"].index("truth")
    for col, (xname, x) in enumerate((("true SNR", blend["snr"]), ("blendedness", blend["blend"]))):
        edges = equal_count_bins(x, 10)
        for row, (qname, q) in enumerate((("flux", "flux"), ("size T", "T"), ("e1", "e1"))):
            ax = axes[row, col]
            for v, colour in (("subtract", "C4"), ("none", "C2"), ("conserve", "C1")):
                k = blend["variants"].index(v)
                if q == "e1":
                    res = blend[q][:, k] - blend[q][:, t]
                else:
                    res = (blend[q][:, k] - blend[q][:, t]) / blend[q][:, t]
                med, _, centre = binned_median(x, res, edges, boot=2)
                q16 = [
                    np.nanquantile(res[(x >= a) & (x < b)], 0.16)
                    for a, b in zip(edges[:-1], edges[1:])
                ]
                q84 = [
                    np.nanquantile(res[(x >= a) & (x < b)], 0.84)
                    for a, b in zip(edges[:-1], edges[1:])
                ]
                label = {
                    "subtract": "deblended",
                    "none": "no deblending",
                    "conserve": "flux-conserving",
                }[v]
                ax.plot(centre, med, color=colour, label=label)
                ax.fill_between(centre, q16, q84, color=colour, alpha=0.2)
            ax.axhline(0, color="k", lw=0.5)
            if col == 0:
                ax.set_xscale("log")
            ax.set_xlabel(xname)
            ax.set_ylabel(f"{qname} residual" + ("" if q == "e1" else " (fractional)"))
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Fig. 6: deblended measurements at true centroids (blend scenes)")
    fig.tight_layout()
    fig.savefig(out / "deblend_fig6.png", dpi=110)
    plt.close(fig)

    # Fig. 7: reconstructions of the pair
    if panels:
        fig, axes = plt.subplots(len(panels), 3, figsize=(10, 3.3 * len(panels)))
        axes = np.atleast_2d(axes)
        for r, (sep_px, p) in enumerate(sorted(panels.items())):
            for c, (name, img) in enumerate(
                (
                    ("image", p["image"]),
                    ("reconstruction", p["model"]),
                    ("residual / sigma", p["residual"]),
                )
            ):
                ax = axes[r, c]
                if c == 2:
                    ax.imshow(img, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
                else:
                    ax.imshow(np.arcsinh(img / 400.0), origin="lower", cmap="gray_r")
                ax.plot(*p["true"].T, "g+", ms=10, label="truth")
                if len(p["probcat"]):
                    ax.plot(*p["probcat"].T, "rx", ms=8, label="probcat")
                if len(p["sep"]):
                    ax.plot(*p["sep"].T, "bo", mfc="none", ms=8, label="SEP")
                ax.set_title(f"{name}, separation {sep_px:g} px", fontsize=9)
                ax.set_xlim(30, 75)
                ax.set_ylim(30, 72)
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "deblend_fig7.png", dpi=110)
        plt.close(fig)

    # Fig. 8 and 11: the pair's detection probabilities and centroid residuals
    s = np.array([r["separation"] for r in pair_rows])
    prob = np.array([r["prob"] for r in pair_rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(s, prob[:, 0], label="galaxy 1")
    ax.plot(s, prob[:, 1], label="galaxy 2")
    for b in np.arange(0, 21, 5):
        ax.axvline(b + 2.5, color="k", ls="--", lw=0.5)
    ax.set_xlabel("separation (px)")
    ax.set_ylabel("tile detection probability")
    ax.legend()
    ax.set_title("Fig. 8: detection probability vs separation")
    fig.tight_layout()
    fig.savefig(out / "deblend_fig8.png", dpi=110)
    plt.close(fig)
    dx = np.array([r["dx"] for r in pair_rows])
    sd = np.array([r["x_sd"] for r in pair_rows])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for g in range(2):
        ax = axes[g]
        ax.plot(s, dx[:, g], ".", ms=3, label="x residual")
        ax.fill_between(s, -sd[:, g], sd[:, g], alpha=0.3, label="predicted ±1 sd")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("separation (px)")
        ax.set_ylabel("x estimate - truth (px)")
        ax.set_title(f"Fig. 11: galaxy {g + 1}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "deblend_fig11.png", dpi=110)
    plt.close(fig)

    # Figs. 9-10: central galaxy flux residuals
    for key, fname, xlabel, centres in (
        (
            "flux_residual_by_blendedness",
            "deblend_fig9.png",
            "blendedness",
            "blendedness_bin_centres",
        ),
        ("flux_residual_by_snr", "deblend_fig10.png", "true SNR", "snr_bin_centres"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = np.array(central[centres])
        for name, colour in (("samples", "C3"), ("map", "C0"), ("sep", "k"), ("scarlet2", "C2")):
            if name not in central[key]:
                continue
            m = np.array(central[key][name])
            e = np.array(central[key + "_err"][name])
            ax.plot(xs, m, "-o", ms=3, color=colour, label=name)
            ax.fill_between(xs, m - e, m + e, color=colour, alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("median |fractional flux residual|")
        ax.legend()
        ax.set_title(f"{'Fig. 9' if 'blend' in key else 'Fig. 10'}: central galaxy, aperture flux")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="detection weights (default: shipped)")
    ap.add_argument("--deblender", default="deblender_lsst_i")
    ap.add_argument("--n-central", type=int, default=2000)
    ap.add_argument("--n-blend", type=int, default=300)
    ap.add_argument(
        "--n-morph", type=int, default=600, help="blend scenes of the morphology-rich prior"
    )
    ap.add_argument(
        "--n-morph-central",
        type=int,
        default=300,
        help="central scenes of the morphology-rich prior, with posterior samples (0: none)",
    )
    ap.add_argument(
        "--baseline-deblender",
        default=None,
        help="a second deblender (name or .pt) measured on the morphology-rich blends too",
    )
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=3031)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--scarlet-python",
        default=None,
        help="python of an environment with scarlet2 (default: this one, when it has the "
        "peer extra: pip install -e '.[peer]')",
    )
    ap.add_argument("--scarlet-scenes", type=int, default=120)
    ap.add_argument("--scarlet-iter", type=int, default=200)
    ap.add_argument("--speed-runs", type=int, default=3)
    ap.add_argument("--speed-scenes", type=int, default=20)
    ap.add_argument("--out", default=str(RESULTS))
    ap.set_defaults(population="parametric")  # the central scenes' (morphology_central's own)
    args = ap.parse_args(argv)
    if args.scarlet_python is None:
        import importlib.util

        if importlib.util.find_spec("scarlet2") is not None:
            args.scarlet_python = sys.executable
    command = " ".join([".venv/bin/python", "benchmarks/deblend.py", *sys.argv[1:]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    print("central scenes ...", flush=True)
    rows = central_part(args)  # workers fork first: torch has computed nothing here yet
    morph_central = None
    if args.n_morph_central > 0:
        print("morphology-rich central scenes ...", flush=True)
        morph_args = argparse.Namespace(
            **{
                **vars(args),
                "n_central": args.n_morph_central,
                "seed": args.seed + 4,
                "population": "morphology",
            }
        )
        morph_central = {
            **morphology_central_summary(central_part(morph_args)),
            "what": f"{args.n_morph_central} central scenes of test-split galaxies of every "
            f"morphology family (seed {args.seed + 4}), measured as the central scenes above "
            f"({args.samples} posterior samples each); by_family: by the central galaxy's family",
        }
    det = load(args.weights, device="cpu")
    deb = load(args.deblender, device="cpu")
    tmp = tempfile.mkdtemp(prefix="probcat_deblend_")
    print("scarlet2 ...", flush=True)
    sc, sc_why = scarlet_central(args, rows, deb.survey, tmp)
    print("blend scenes ...", flush=True)
    blend = blend_part(deb, args)
    print("morphology-rich blend scenes ...", flush=True)

    def on_morphology(d):
        return morphology_summary(
            blend_part(d, args, population="morphology", n=args.n_morph, seed=args.seed + 2)
        )

    morph = {"deblender": on_morphology(deb)}
    if args.baseline_deblender:
        base = load(args.baseline_deblender, device="cpu")
        morph["baseline"] = on_morphology(base)
        morph["baseline_name"] = args.baseline_deblender
        morph["baseline_sha256"] = (base.manifest or {}).get("sha256")
    print("pair ...", flush=True)
    pair_rows, panels = pair_part(det, deb, args)
    print("speed ...", flush=True)
    speed = speed_part(det, deb, args, tmp)
    scarlet_map = sc["map"]["fluxes"] if sc else None
    central = central_summary(rows, "subtract", scarlet_map)
    conserve = central_summary(rows, "conserve")
    scarlet_block = None
    if sc:
        by = {r["i"]: r for r in rows}
        top_edge = central["blendedness_bin_edges"][-1]
        top5_edge = central["blendedness_bin_edges"][-4]  # the top 4 of 20 bins: top 20%
        scarlet_block = {}
        for init in ("map", "true"):
            ids = sorted(set(sc[init]["fluxes"]) & set(by))
            tr = np.array([by[i]["true"] for i in ids])
            bl = np.array([by[i]["blend"] for i in ids])
            f = np.abs((np.array([sc[init]["fluxes"][i] for i in ids]) - tr) / tr)
            mine = np.abs((np.array([by[i]["samples_subtract"] for i in ids]) - tr) / tr)
            mine_map = np.abs((np.array([by[i]["map_subtract"] for i in ids]) - tr) / tr)
            block = {"n": len(ids), "seconds_per_scene": float(np.median(sc[init]["seconds"]))}
            for name, sel in (
                ("all", np.ones(len(ids), bool)),
                ("top_bin", bl >= top_edge),
                ("top_20pc", bl >= top5_edge),
            ):
                block[name] = {
                    "n": int(sel.sum()),
                    "scarlet2": float(np.nanmedian(f[sel])) if sel.any() else None,
                    "probcat_samples": float(np.nanmedian(mine[sel])) if sel.any() else None,
                    "probcat_map": float(np.nanmedian(mine_map[sel])) if sel.any() else None,
                }
            scarlet_block[init] = block
    b_sub = blend_summary(blend, "subtract")
    b_con = blend_summary(blend, "conserve")
    top = central["flux_residual_top_bin"]
    result = {
        "command": command,
        "machine": "2-core CPU, no GPU",
        "detection_weights": str(args.weights or "detection_lsst_i"),
        "deblender": args.deblender,
        "deblender_sha256": (deb.manifest or {}).get("sha256"),
        "held_out": "test-split galaxies (disjoint from training), scene seeds "
        f"{args.seed} (central), {args.seed + 1} (blend): never used in training",
        "n_images_central": args.n_central,
        "n_samples": args.samples,
        "n_galaxies_blend": int(len(blend["snr"])),
        "n_images_blend": args.n_blend,
        "blendedness_bins": f"{N_BLEND_BINS} equal-count bins of the central galaxies' "
        "blendedness (the paper's fixed edges came from its own data)",
        "flux_residual_by_blendedness": central["flux_residual_by_blendedness"],
        "flux_residual_top_bin": top,
        "ratios_top_bin": {
            "samples_over_map": top["samples"] / top["map"],
            "samples_over_sep": top["samples"] / top["sep"],
            "samples_over_scarlet2": top["samples"] / top["scarlet2"]
            if "scarlet2" in top
            else None,
        },
        "central": central,
        "deblended_flux_bias_max_abs_snr_gt_10": b_sub["deblended_flux_bias_max_abs_snr_gt_10"],
        "scatter_ratio_deblended_vs_none": b_sub["scatter_ratio_deblended_vs_none"],
        "size_bias_max_abs": b_sub["size_bias_max_abs"],
        "e_bias_max_abs": b_sub["e_bias_max_abs"],
        "blend": b_sub,
        "morphology": {
            **morph,
            "what": f"{args.n_morph} blend scenes of test-split galaxies of every morphology "
            f"family (seed {args.seed + 2}), each galaxy deblended at its true centroid, as "
            "in 'blend'; by_family: galaxies of true SNR > 10",
        },
        "morphology_central": morph_central,
        "flux_posterior_coverage_68": coverage(rows, "subtract")["68"],
        "flux_posterior_coverage_95": coverage(rows, "subtract")["95"],
        "flux_posterior_coverage": coverage(rows, "subtract"),
        "flux_error_scale": load(args.deblender).flux_error_scale("subtract"),
        "flux_error_scale_conserve": load(args.deblender).flux_error_scale("conserve"),
        "flux_posterior_note": "posterior = mixture over detection samples of N(aperture flux, "
        "sigma^2 x aperture area + (scale x neighbours' light in the aperture)^2), scale the "
        "deblender manifest's flux_error (fitted on validation scenes); pixel_noise_only: "
        "scale 0; coverage of the noiseless galaxy's aperture flux. The "
        "detection-only intervals (paper 000) are checked against the noisy truth (image "
        "minus the other sources' true models), whose noise they share.",
        "default_method": DEFAULT_METHOD,
        "flux_conserving": {
            "flux_residual_by_blendedness": conserve["flux_residual_by_blendedness"],
            "flux_residual_top_bin": conserve["flux_residual_top_bin"],
            "deblended_flux_bias_max_abs_snr_gt_10": b_con["deblended_flux_bias_max_abs_snr_gt_10"],
            "scatter_ratio_deblended_vs_none": b_con["scatter_ratio_deblended_vs_none"],
            "size_bias_max_abs": b_con["size_bias_max_abs"],
            "e_bias_max_abs": b_con["e_bias_max_abs"],
            "flux_posterior_coverage": coverage(rows, "conserve"),
        },
        "paper_top_bin": paper_top_bin(rows),
        "refinement": refinement_summary(rows, central, blend),
        "scarlet2": scarlet_block,
        "scarlet2_note": sc_why
        or f"scarlet2 0.5.1 on the first {args.scarlet_scenes} central scenes, "
        f"{args.scarlet_iter} iterations, initialised at probcat's MAP detections ('map') and at "
        "the true positions ('true'); fluxes measured like probcat's (5-px aperture on the "
        "image minus the other sources' models)",
        "pair": {
            "separations": [r["separation"] for r in pair_rows],
            "prob": [r["prob"] for r in pair_rows],
            "x_residual": [r["dx"] for r in pair_rows],
            "x_sd": [r["x_sd"] for r in pair_rows],
        },
        "speed": speed,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        **provenance(command),
    }
    figures(blend, central, pair_rows, panels, out)
    text = json.dumps(json_safe(result), indent=1, default=float)
    atomic_write(out / "deblend.json", lambda p: Path(p).write_text(text))
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "flux_residual_top_bin",
                    "ratios_top_bin",
                    "deblended_flux_bias_max_abs_snr_gt_10",
                    "scatter_ratio_deblended_vs_none",
                    "size_bias_max_abs",
                    "e_bias_max_abs",
                    "flux_posterior_coverage_68",
                    "flux_posterior_coverage_95",
                    "speed",
                    "paper_top_bin",
                    "refinement",
                )
            },
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
