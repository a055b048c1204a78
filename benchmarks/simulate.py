"""Simulator benchmark: composed vs direct GalSim scenes (speed and agreement), prior densities.

Writes ``benchmarks/results/simulate.json`` and PNG figures next to it. Held-out galaxies
(the ``test`` split). Run from the repository root:

    .venv/bin/python benchmarks/simulate.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np

from probcat.provenance import provenance
from probcat.simulate.bank import BankConfig, SourceBank, default_cache_dir
from probcat.simulate.datasets import Simulation, SimulationConfig
from probcat.simulate.render import render_direct
from probcat.simulate.scene import SceneConfig, SceneSimulator
from probcat.survey import Survey

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank-size", type=int, default=20000)
    ap.add_argument("--n-direct", type=int, default=40, help="scenes rendered directly")
    ap.add_argument("--n-composed", type=int, default=3000, help="scenes for timing")
    ap.add_argument("--n-density", type=int, default=5000, help="scenes for densities")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/simulate.py", *sys.argv[1:]])
    RESULTS.mkdir(parents=True, exist_ok=True)

    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma[0]
    cfg = BankConfig(split="test", n_galaxies=args.bank_size)
    t0 = time.perf_counter()
    bank = SourceBank.load_or_build(survey, cfg, cache_dir=args.cache_dir or default_cache_dir())
    bank_s = time.perf_counter() - t0
    sim = SceneSimulator(bank, SceneConfig(98, 98))

    # 1-2. composed vs direct on the same catalogs; composition speed, one core
    scenes, direct, direct_s, diffs, composed_rate, composed_truth_rate = compare(sim, args)
    # the same for the morphology-rich prior (five families)
    t0 = time.perf_counter()
    morph_bank = SourceBank.load_or_build(
        survey,
        BankConfig(population="morphology", split="test", n_galaxies=args.bank_size),
        cache_dir=args.cache_dir or default_cache_dir(),
    )
    morph_s = time.perf_counter() - t0
    m_scenes, m_direct, m_direct_s, m_diffs, m_rate, m_truth_rate = compare(
        SceneSimulator(morph_bank, SceneConfig(98, 98)), args
    )

    # 3. densities and SNR from the prior, as drawn into scenes
    r = np.random.default_rng([args.seed, 3])
    cats = [sim.sample_catalog(r) for _ in range(args.n_density)]
    area = args.n_density * (98 * survey.pixel_scale / 60) ** 2
    mags = np.concatenate([c["mag"][c["galaxy"], 0] for c in cats])
    n_star = sum(int((~c["galaxy"]).sum()) for c in cats)
    near27 = np.abs(bank.mag_i - 27.0) < 0.1
    pair = Simulation(SimulationConfig(recipe="pair", n=1), progress=False).scene(0)[0].catalog

    result = {
        "command": command,
        "machine": "2-core CPU (probcat dev machine), one process",
        "bank": {
            "n_galaxies": len(bank),
            "split": "test",
            "build_s": round(bank_s, 1),
            "pixels_mb": round(bank.pixels.nbytes / 1e6, 1),
            "median_stamp_px": int(2 * np.median(bank.half) + 1),
        },
        "direct_scenes_per_s": round(args.n_direct / direct_s, 2),
        "composed_scenes_per_s": round(composed_rate, 1),
        "composed_scenes_per_s_with_truth": round(composed_truth_rate, 1),
        "speedup": round(composed_rate / (args.n_direct / direct_s), 1),
        "max_abs_diff_over_sigma": float(diffs.max()),
        "median_max_abs_diff_over_sigma": float(np.median(diffs)),
        "n_direct_scenes": args.n_direct,
        "morphology": {
            "bank_build_s": round(morph_s, 1),
            "direct_scenes_per_s": round(args.n_direct / m_direct_s, 2),
            "composed_scenes_per_s": round(m_rate, 1),
            "composed_scenes_per_s_with_truth": round(m_truth_rate, 1),
            "max_abs_diff_over_sigma": float(m_diffs.max()),
            "median_max_abs_diff_over_sigma": float(np.median(m_diffs)),
        },
        "density_i_lt_27_per_arcmin2": round(float(np.sum(mags < 27.0) / area), 2),
        "density_i_lt_25_3_per_arcmin2": round(float(np.sum(mags < 25.3) / area), 2),
        "star_density_per_arcmin2": round(n_star / area, 2),
        "median_snr_i_27": round(float(np.median(bank.snr[near27, 0])), 2),
        "n_galaxies_i_27": int(near27.sum()),
        "pair_snr_eq12": [round(float(v), 1) for v in pair["snr"][:, 0]],
        "pair_snr_paper": [120, 70],
        "targets": {
            "composed_scenes_per_s": ">= 1000 (both priors)",
            "max_abs_diff_over_sigma": "<= 0.1",
            "density_i_lt_27_per_arcmin2": "160 +- 10%",
            "density_i_lt_25_3_per_arcmin2": "55 +- 10%",
            "median_snr_i_27": "~3",
        },
        **{k: v for k, v in provenance(command).items() if k != "command"},
    }
    (RESULTS / "simulate.json").write_text(json.dumps(result, indent=2) + "\n")
    figures(scenes[0], direct[0], sigma, mags, area, bank)
    gallery(morph_bank, sigma)
    print(json.dumps(result, indent=2))


def gallery(bank, sigma, per_family=5):
    """Bright galaxies of each family as the bank renders them (PSF-convolved, noiseless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probcat.plots import asinh_stretch
    from probcat.simulate.prior import FAMILIES

    fam = np.asarray(bank.table["family"])
    fig, axes = plt.subplots(
        len(FAMILIES), per_family, figsize=(1.8 * per_family, 1.8 * len(FAMILIES))
    )
    for r, name in enumerate(FAMILIES):
        idx = np.flatnonzero((fam == r) & (bank.mag_i < 22.5) & (bank.half >= 10))
        pick = idx[np.argsort(bank.mag_i[idx])][: 4 * per_family : 4]
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(pick):
                st = bank.stamp(int(pick[c]))[0]
                h = st.shape[-1] // 2
                w = min(h, 20)
                ax.imshow(
                    asinh_stretch(st[h - w : h + w + 1, h - w : h + w + 1], sigma),
                    origin="lower",
                    cmap="gray_r",
                )
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle('morphology prior: bright galaxies of each family (LSST i, 0.2"/px)', fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "simulate_morphology_gallery.png", dpi=90)
    plt.close(fig)


def compare(sim, args):
    """Composed vs direct GalSim rendering of the same catalogs, and composition speed on
    one core (numpy, single thread)."""
    rng = np.random.default_rng([args.seed, 1])
    scenes = [sim.sample(rng, keep_noiseless=True) for _ in range(args.n_direct)]
    t0 = time.perf_counter()
    direct = [render_direct(s.catalog, sim.survey, (98, 98)) for s in scenes]
    direct_s = time.perf_counter() - t0
    sigma = sim.survey.noise_sigma[0]
    diffs = np.array([np.abs(d - s.noiseless).max() / sigma for d, s in zip(direct, scenes)])

    def rate(truth):
        r = np.random.default_rng([args.seed, 2])
        t0 = time.perf_counter()
        for _ in range(args.n_composed):
            sim.sample(r, truth=truth)
        return args.n_composed / (time.perf_counter() - t0)

    return scenes, direct, direct_s, diffs, rate(False), rate(True)


def figures(scene, direct, sigma, mags, area, bank):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probcat.plots import asinh_stretch
    from probcat.simulate.prior import COUNT_SLOPE, GALAXY_DENSITY

    fig, ax = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    for a, img, title in (
        (ax[0], scene.noiseless[0], "composed (bank)"),
        (ax[1], direct[0], "direct GalSim"),
    ):
        a.imshow(asinh_stretch(img, sigma), origin="lower", cmap="gray_r")
        a.set_title(title)
    d = ax[2].imshow((scene.noiseless[0] - direct[0]) / sigma, origin="lower", cmap="RdBu_r")
    ax[2].set_title("(composed - direct) / noise sigma")
    fig.colorbar(d, ax=ax[2])
    fig.savefig(RESULTS / "simulate_composed_vs_direct.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    edges = np.arange(18, 27.01, 0.25)
    cum = np.array([np.sum(mags < m) for m in edges[1:]]) / area
    ax[0].semilogy(edges[1:], cum, "o-", ms=3, label="probcat scenes")
    ax[0].semilogy(
        edges[1:],
        GALAXY_DENSITY * 10 ** (COUNT_SLOPE * (edges[1:] - 27)),
        "k--",
        label="power law through (27, 160) and (25.3, 55)",
    )
    ax[0].semilogy(
        edges[1:],
        46 * 2.0 ** (edges[1:] - 25),
        ":",
        c="gray",
        label="LSST Science Book 46 x 2^(i-25)",
    )
    ax[0].axhline(160, c="tab:red", lw=0.5)
    ax[0].axhline(55, c="tab:red", lw=0.5)
    ax[0].set_xlabel("i")
    ax[0].set_ylabel("N(< i) [arcmin^-2]")
    ax[0].legend(fontsize=8)
    ax[1].scatter(bank.mag_i, bank.snr[:, 0], s=1, alpha=0.3)
    ax[1].set_yscale("log")
    ax[1].axhline(3, c="k", lw=0.5)
    ax[1].axvline(27, c="k", lw=0.5)
    ax[1].set_xlabel("i")
    ax[1].set_ylabel("SNR (eq. 12, noiseless, 5 px)")
    fig.savefig(RESULTS / "simulate_prior.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
