"""Figures of a population run: the detection map, targeted against full simulations
(paper 001 Fig. 2), the corner plot of the posteriors (Fig. 3) and their coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probcat.population.detection import REGION_DEG, THRESHOLDS_LOG10
from probcat.population.simulator import EXTENT_DEG, PARAM_NAMES, simulate

__all__ = ["write_figures"]

COLOURS = {"r3": "C4", "r4": "C1", "combined": "C2", "plain_nre": "0.5"}
LABELS = {
    "r3": "sub-threshold (r3)",
    "r4": "detected (r4)",
    "combined": "combined",
    "plain_nre": "plain NRE",
}
EXTENT = (-EXTENT_DEG, EXTENT_DEG, -EXTENT_DEG, EXTENT_DEG)


def _show(ax, m, title=""):
    ax.imshow(np.arcsinh(m * 33), origin="lower", extent=EXTENT, cmap="magma")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def write_figures(out: Path, chain, x_o, det, post, cov, truth) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    names = []
    # detection map: the target, r1 at the detection threshold, the regions R_i
    k = chain.cfg.k_detect
    post_map = chain.posterior_maps(x_o[None])[0, k]
    r1 = post_map / np.maximum(chain.prior[k], 1e-12)
    fig, ax = plt.subplots(1, 2, figsize=(9, 4.4))
    _show(ax[0], x_o, f"target: {len(det)} detected (log10 F_th = {THRESHOLDS_LOG10[k]:.2f})")
    im = ax[1].imshow(
        np.log10(np.maximum(r1, 1e-3)),
        origin="lower",
        extent=EXTENT,
        cmap="viridis",
        vmin=-1,
        vmax=3,
    )
    ax[1].set_title("log10 r1 (detection ratio)", fontsize=9)
    fig.colorbar(im, ax=ax[1], fraction=0.046)
    for a in ax:
        for lx, by in zip(det.l, det.b):
            a.add_patch(
                Rectangle(
                    (lx - REGION_DEG, by - REGION_DEG),
                    2 * REGION_DEG,
                    2 * REGION_DEG,
                    fill=False,
                    ec="cyan",
                    lw=0.8,
                )
            )
    fig.tight_layout()
    fig.savefig(out / "detection_map.png", dpi=80)
    plt.close(fig)
    names.append("detection_map.png")
    # Fig. 2: full-model maps (top) against targeted ones (bottom)
    rng = np.random.default_rng(7)
    _, full, _ = simulate(rng, 4)
    _, targeted, _ = chain.truncated.simulate(rng, 4)
    fig, ax = plt.subplots(2, 5, figsize=(12, 5))
    _show(ax[0, 0], x_o, "target x_o")
    ax[1, 0].axis("off")
    for i in range(4):
        _show(ax[0, i + 1], full[i], "full model")
        _show(ax[1, i + 1], targeted[i], "truncated model")
    fig.tight_layout()
    fig.savefig(out / "targeted_vs_full.png", dpi=80)
    plt.close(fig)
    names.append("targeted_vs_full.png")
    names.append(corner(out / "corner.png", post, truth))
    names.append(coverage_plot(out / "coverage.png", cov))
    return names


def corner(path: Path, post: dict, truth) -> str:
    import matplotlib.pyplot as plt

    grid = post["combined"].grid
    fig, ax = plt.subplots(3, 3, figsize=(8, 8))
    for i in range(3):
        for j in range(3):
            a = ax[i, j]
            if j > i:
                a.axis("off")
                continue
            if i == j:
                for key in ("r3", "r4", "combined", "plain_nre"):
                    p = post[key].marginal(i)
                    a.plot(grid.axes[i], p / p.max(), color=COLOURS[key], label=LABELS[key])
                if truth:
                    a.axvline(truth[PARAM_NAMES[i]], color="k", ls="--", lw=1)
                a.set_yticks([])
            else:
                for key in ("r3", "r4", "combined"):
                    m = post[key].marginal2(j, i)  # x: parameter j, y: parameter i
                    levels = _levels(m, (0.954, 0.683))
                    a.contour(
                        grid.axes[j],
                        grid.axes[i],
                        m.T,
                        levels=levels,
                        colors=COLOURS[key],
                        linestyles=("--", "-"),
                    )
                if truth:
                    a.plot(truth[PARAM_NAMES[j]], truth[PARAM_NAMES[i]], "k+", ms=10)
            if i == 2:
                a.set_xlabel(PARAM_NAMES[j])
            if j == 0 and i > 0:
                a.set_ylabel(PARAM_NAMES[i])
    handles, labels = ax[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name


def _levels(m: np.ndarray, masses) -> list[float]:
    """Density levels enclosing the given masses (increasing levels)."""
    flat = np.sort(m.ravel())[::-1]
    cum = np.cumsum(flat) / flat.sum()
    lv = sorted({float(flat[min(np.searchsorted(cum, q), len(flat) - 1)]) for q in masses})
    return lv if len(lv) > 1 else [lv[0] * 0.999, lv[0]]


def coverage_plot(path: Path, cov: dict) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = list(cov)
    for a, level in zip(ax, ("0.683", "0.954")):
        for i, key in enumerate(keys):
            vals = [cov[key][p][level] for p in PARAM_NAMES]
            errs = [cov[key][p][f"{level}_se"] for p in PARAM_NAMES]
            x = np.arange(3) + (i - 1.5) * 0.2
            a.errorbar(x, vals, yerr=errs, fmt="o", color=COLOURS[key], label=LABELS[key])
        a.axhline(float(level), color="k", lw=1)
        a.set_xticks(range(3), PARAM_NAMES)
        a.set_ylabel(f"empirical coverage of the {float(level):.1%} interval")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name


def predictive_plot(path: Path, check: dict, draws: dict) -> str:
    """The posterior predictive check: per summary, the histogram of its values on maps
    simulated at the combined posterior, the target's value and its p-value. The light
    (``total_flux``, ``pixel_999``) is heavy-tailed: its axis is logarithmic when every
    value is positive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, len(check), figsize=(3 * len(check), 2.8))
    for a, (name, c) in enumerate(check.items()):
        v = np.asarray(draws[name], float)
        bins = 30
        if name in ("total_flux", "pixel_999") and v.min() > 0 and c["observed"] > 0:
            lo, hi = min(v.min(), c["observed"]), max(v.max(), c["observed"])
            bins = np.geomspace(lo, hi * 1.0001, 31)
            ax[a].set_xscale("log")
        ax[a].hist(v, bins=bins, color=COLOURS["combined"], alpha=0.6)
        ax[a].axvline(c["observed"], color="k", lw=1.5)
        ax[a].set_title(f"{name}: p = {c['p_value']:.2f}", fontsize=9)
        ax[a].set_yticks([])
    ax[0].set_ylabel("maps at the combined posterior")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name
