"""How the head stage of a population map ratio estimator should train: the plain NRE's
head (``probcat.population.tasks.HeadTask``) trained several ways on the frozen embedding
of one network, each scored on validation maps (seeds of their own, never the benchmark's).
Writes ``benchmarks/results/population_heads.json`` and ``population_heads.png``:

    .venv/bin/python benchmarks/population_heads.py --run DIR

``DIR`` is a population run folder (``benchmarks/population.py --run DIR``): its plain NRE's
first stage is reused when its settings match, trained there otherwise (about 10 minutes
here). The variants: plain NRE (``balance`` 0), balanced NRE (Delaunoy et al. 2022) with
weights 10 and 100, fewer head steps, and a head bank twice as large. Each is scored by
its held-out NRE loss (fresh joint and marginal pairs; lower is sharper), its expected
coverage on 1,000 fresh prior maps (marginals and joint regions, with the binomial
standard error) and its mean 68% widths. The variant with balance 100 and the default
budget is what ``probcat population`` trains.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
import torch

from probcat.catalog import atomic_write
from probcat.config import load_yaml
from probcat.population.chain import Chain, PopulationConfig, _settings, _theta_tensor
from probcat.population.inference import Grid, Posterior, expected_coverage
from probcat.population.simulator import PARAM_NAMES, simulate
from probcat.population.tasks import HeadTask, pair_loss
from probcat.provenance import provenance
from probcat.train.loop import fit

RESULTS = Path(__file__).resolve().parent / "results"
VAL_SEED = 4242  # validation banks and maps: seeds no training and no benchmark draws from
LEVELS_CURVE = np.linspace(0.02, 0.98, 49)

# name -> (balance, head steps and bank maps as multiples of the config's, bank seed);
# bank seed 6 is the chain's own
VARIANTS = {
    "nre": (0.0, 1, 1, 6),
    "bnre_10": (10.0, 1, 1, 6),
    "bnre_100": (100.0, 1, 1, 6),
    "nre_short": (0.0, 0.25, 1, 6),
    "nre_bank_x2": (0.0, 1, 2, 7),
}


def embeddings(net, seed: tuple, n: int, progress: bool):
    """Embeddings ``(n, E)`` and parameters of ``n`` fresh prior maps (rng ``seed``)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    embs, thetas = [], []
    with torch.no_grad():
        for i in tqdm(range(0, n, 500), desc=f"embeddings {seed}", disable=not progress):
            theta, maps, _ = simulate(rng, min(500, n - i))
            embs.append(net.embedding(torch.from_numpy(maps)))
            thetas.append(theta)
    return torch.cat(embs), np.concatenate(thetas)


def held_out_loss(head, emb: torch.Tensor, theta: np.ndarray) -> float:
    """The NRE loss (no balance term) on held-out pairs, in batches of 2,000."""
    gen, t = torch.Generator().manual_seed(0), _theta_tensor(theta)
    with torch.no_grad():
        parts = [float(pair_loss(head, emb[i : i + 2000], t[i : i + 2000], gen, 0.0))
                 for i in range(0, len(t), 2000)]  # fmt: skip
    return float(np.mean(parts))


def score(head, grid: Grid, val: dict) -> dict:
    log_r = head.on_grid(val["cov_emb"], _theta_tensor(grid.points))
    with torch.no_grad():
        at = head(val["cov_emb"], _theta_tensor(val["cov_theta"])).numpy().astype(np.float64)
    posts = [Posterior(grid, v) for v in log_r]
    cov = expected_coverage(posts, val["cov_theta"], log_density_at_truth=at)
    hpd = np.array([p.hpd_level(t, a) for p, t, a in zip(posts, val["cov_theta"], at)])
    dev = {f"{k}.{lv}": round((v[lv] - float(lv)) / v[f"{lv}_se"], 2)
           for k, v in cov.items() for lv in ("0.683", "0.954")}  # fmt: skip
    return {
        "held_out_loss": held_out_loss(head, val["loss_emb"], val["loss_theta"]),
        "coverage": cov,
        "coverage_deviation_in_standard_errors": dev,
        "max_abs_deviation_in_standard_errors": max(abs(v) for v in dev.values()),
        "widths_68": {
            p: float(np.mean([q.width(k) for q in posts])) for k, p in enumerate(PARAM_NAMES)
        },  # fmt: skip
        "joint_curve": [float(np.mean(hpd < a)) for a in LEVELS_CURVE],
    }


def run(run_dir: Path, cfg: PopulationConfig, n_val: int, n_loss: int, progress: bool):
    net = Chain(cfg, run_dir, progress).plain_first_stage().model
    grid = Grid.default(cfg.grid_sigma, cfg.grid_h, cfg.grid_n_step)
    val = {}
    val["loss_emb"], val["loss_theta"] = embeddings(net, (cfg.seed, VAL_SEED, 31), n_loss,
                                                    progress)  # fmt: skip
    val["cov_emb"], val["cov_theta"] = embeddings(net, (VAL_SEED + 1, 1), n_val, progress)
    banks, out = {}, {"first_stage_head": score(net.head, grid, val)}
    for name, (balance, x_steps, x_maps, bank_seed) in VARIANTS.items():
        h = replace(cfg.head, balance=balance, steps=max(round(x_steps * cfg.head.steps), 1))
        n_maps = x_maps * cfg.head_maps
        key = (bank_seed, n_maps)
        if key not in banks:  # the chain's head bank: rng (seed, 6, 31), head_maps maps
            banks[key] = embeddings(net, (cfg.seed, bank_seed, 31), n_maps, progress)
        t0 = time.perf_counter()
        ht = HeadTask(f"plain_{name}", h.steps, h.lr, cfg.seed + 6, net.head,
                      lambda k=key: banks[k], n_maps, h.batch, h.balance)  # fmt: skip
        settings = _settings(cfg, h.steps, 16)  # those of the chain's plain NRE head stage
        config = {"task": ht.kind, "head": asdict(h), "maps": n_maps, "bank_seed": bank_seed}
        fit(ht, run_dir / "heads" / name, config=config, settings=settings, progress=progress)
        ht.model.eval()
        out[name] = {"balance": balance, "head_steps": h.steps, "head_maps": n_maps,
                     "training_s": round(time.perf_counter() - t0, 1),
                     **score(ht.model, grid, val)}  # fmt: skip
        print(name, json.dumps({k: out[name][k] for k in ("held_out_loss", "widths_68",
              "coverage_deviation_in_standard_errors")}, default=float), flush=True)  # fmt: skip
    return out


def figure(res: dict, n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    for name, r in res.items():
        ax.plot(LEVELS_CURVE, np.array(r["joint_curve"]) - LEVELS_CURVE, label=name)
    se = np.sqrt(LEVELS_CURVE * (1 - LEVELS_CURVE) / n)
    ax.fill_between(LEVELS_CURVE, -2 * se, 2 * se, color="0.85", label="±2 binomial SE")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("credibility level")
    ax.set_ylabel("joint expected coverage − level")
    ax.legend(frameon=False, fontsize=7)
    ax = axes[1]
    names = [k for k in res if k != "first_stage_head"]
    x = np.arange(len(names))
    ratios = [[res[k]["widths_68"][p] / res["nre"]["widths_68"][p] for k in names]
              for p in PARAM_NAMES]  # fmt: skip
    for j, (p, r) in enumerate(zip(PARAM_NAMES, ratios)):
        ax.bar(x + (j - 1) * 0.25, r, 0.25, label=p)
    ax.axhline(1, color="k", lw=0.6)
    ax.set_ylim(min(0.9, np.min(ratios) - 0.02), max(1.1, np.max(ratios) + 0.02))
    ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax.set_ylabel("mean 68% width / plain NRE's")
    ax.legend(frameon=False, fontsize=8)
    fig.suptitle("plain NRE head stage: validation maps", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def replot(out: Path) -> None:
    """Redraw ``population_heads.png`` from the JSON in ``out``."""
    s = json.loads((out / "population_heads.json").read_text())
    figure(s["variants"], s["n_coverage_maps"], out / "population_heads.png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a population run folder (reused or made)")
    ap.add_argument("--config", default=None, help="the run's YAML budget, if not the default")
    ap.add_argument("--n-val", type=int, default=1000, help="validation maps for coverage")
    ap.add_argument("--n-loss", type=int, default=20000, help="validation maps for the loss")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(Path(args.out))
    command = " ".join([".venv/bin/python", "benchmarks/population_heads.py", *sys.argv[1:]])
    if not args.run:
        ap.error("--run is required")
    t0 = time.perf_counter()
    cfg = load_yaml(PopulationConfig, args.config)
    torch.set_num_threads(cfg.threads)
    res = run(Path(args.run), cfg, args.n_val, args.n_loss, not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure(res, args.n_val, out / "population_heads.png")
    s = {"command": command, "n_coverage_maps": args.n_val, "n_loss_maps": args.n_loss,
         "variants": res}  # fmt: skip
    s["wall_s"] = round(time.perf_counter() - t0, 1)
    s.update({k: v for k, v in provenance(command).items() if k != "command"})
    s["definitions"] = {
        "held_out_loss": "NRE binary cross-entropy on fresh prior maps' embeddings, joint "
        "pairs and as many marginal ones (no balance term); lower is sharper",
        "coverage": "expected coverage on fresh prior maps: central intervals per parameter, "
        "joint highest-density regions with the head's own density at the truth; _se the "
        "binomial standard error",
        "joint_curve": "the joint expected coverage at each level of LEVELS_CURVE "
        "(0.02 to 0.98 in steps of 0.02)",
        "widths_68": "mean over the coverage maps of each marginal's central 68.3% width",
    }
    text = json.dumps(s, indent=1, default=float)
    atomic_write(out / "population_heads.json", lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
