"""Cross-check of one population ratio estimator against ``sbi``: r4 (detected-source lists)
retrained as ``sbi``'s NRE_A on the same simulations, compared on the same held-out lists
and on the benchmark target. Needs a finished population run (``benchmarks/population.py
--run DIR``) and ``sbi`` (``pip install -e ".[crosscheck]"``). Writes
``benchmarks/results/population_sbi.json`` and ``population_sbi.png``:

    .venv/bin/python benchmarks/population_sbi.py --run DIR

Both estimators see the pool's detected-source lists of the run, each in its four sign
flips of ``(l, b)`` (probcat's r4 draws them at random per batch; ``sbi`` trains on a fixed
set, so it gets all four), with the same permutation-invariant embedding architecture and
as many training examples in all (epochs x lists = steps x batch). ``sbi`` supplies the
classifier head (its MLP), the loss (NRE_A: the same binary classification), the z-scoring
of ``theta``, the optimiser loop and early stopping.
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
from torch import nn

from probcat.catalog import atomic_write
from probcat.config import load_yaml
from probcat.errors import ProbcatValueError
from probcat.population.chain import (
    Chain,
    PopulationConfig,
    detections_factor,
    simulated_target,
    source_features,
    split_lists,
)
from probcat.population.detection import match_detections
from probcat.population.inference import Grid, Posterior, expected_coverage
from probcat.population.networks import SetRatioNet
from probcat.population.simulator import PARAM_NAMES, PRIOR_HIGH, PRIOR_LOW, simulate
from probcat.population.tasks import pad_lists
from probcat.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"


class ListEmbedding(nn.Module):
    """probcat's r4 embedding (:class:`SetRatioNet`) on flattened padded lists
    ``(B, M * 4)``: per source ``(log10 F, l, b, real)``."""

    def __init__(self, m: int):
        super().__init__()
        self.m = m
        self.net = SetRatioNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), self.m, 4)
        return self.net.embedding(x[..., :3], x[..., 3] > 0.5)


class _Quiet:
    """A tracker for ``sbi`` that keeps nothing (no TensorBoard folder in the run)."""

    log_dir = ""

    def log_metric(self, *a, **k): ...

    def log_metrics(self, *a, **k): ...

    def log_params(self, *a, **k): ...

    def add_figure(self, *a, **k): ...

    def flush(self): ...


def encode(lists: list[np.ndarray], m: int) -> torch.Tensor:
    feats, mask = pad_lists(lists)
    x = torch.zeros(len(lists), m, 4)
    x[:, : feats.shape[1], :3] = feats
    x[:, : feats.shape[1], 3] = mask.float()
    return x.reshape(len(lists), m * 4)


def flips(lists: list[np.ndarray], theta: np.ndarray):
    out_l, out_t = [], []
    for sl, sb in ((1, 1), (-1, 1), (1, -1), (-1, -1)):
        s = np.array([1.0, sl, sb], np.float32)
        out_l += [a * s for a in lists]
        out_t.append(theta)
    return out_l, np.concatenate(out_t)


class SbiRatio:
    """``log r(theta; S)`` of a trained ``sbi`` ratio estimator, on a grid or pointwise,
    with the list embedding computed once per list."""

    def __init__(self, estimator, m: int):
        self.est, self.m = estimator.eval(), m

    @torch.no_grad()
    def _net(self, emb_x: torch.Tensor, theta: np.ndarray) -> torch.Tensor:
        t = self.est.embedding_net_theta(torch.as_tensor(theta, dtype=torch.float32))
        return self.est.net(torch.cat([t, emb_x], 1))[:, 0]

    @torch.no_grad()
    def grid(self, lists, grid: Grid) -> np.ndarray:
        emb = self.est.embedding_net_x(encode(lists, self.m))
        pts = grid.points
        return np.stack([self._net(e[None].expand(len(pts), -1), pts).numpy() for e in emb])

    @torch.no_grad()
    def at(self, lists, theta: np.ndarray) -> np.ndarray:
        emb = self.est.embedding_net_x(encode(lists, self.m))
        return self._net(emb, theta).numpy()


def train_sbi(theta: np.ndarray, lists: list[np.ndarray], m: int, epochs: int, seed: int):
    from sbi.inference import NRE_A
    from sbi.neural_nets import classifier_nn
    from sbi.utils import BoxUniform

    torch.manual_seed(seed)
    prior = BoxUniform(torch.tensor(PRIOR_LOW, dtype=torch.float32),
                       torch.tensor(PRIOR_HIGH, dtype=torch.float32))  # fmt: skip
    build = classifier_nn("mlp", z_score_x="none", hidden_features=128,
                          embedding_net_x=ListEmbedding(m))  # fmt: skip
    inference = NRE_A(prior=prior, classifier=build, show_progress_bars=True, tracker=_Quiet())
    inference.append_simulations(torch.as_tensor(theta, dtype=torch.float32), encode(lists, m))
    est = inference.train(training_batch_size=128, learning_rate=1e-3, max_num_epochs=epochs,
                          stop_after_epochs=10)  # fmt: skip
    return est, inference.summary


def compare(run: Path, cfg: PopulationConfig, target_seed: int, n_eval: int, epochs: int):
    chain = Chain(cfg, run, progress=False)
    for name in ("r1", "r2", "r4"):
        if not (run / name / "checkpoint.pt").exists():
            raise ProbcatValueError(f"{run} holds no finished population run (no {name})")
    chain.train_r1()
    pool = chain.pool()
    chain.train_r2_r4(pool)  # resumes: loads the run's r2 and r4
    x_o, truth = simulated_target(target_seed)
    det = chain.detect(x_o[None])[0]
    feats = source_features(pool["flux"], pool["l"], pool["b"])
    d = pool["detected"]
    train_lists, train_theta = flips(split_lists(feats[d], pool["map"][d], len(pool["theta"])),
                                     pool["theta"])  # fmt: skip
    rng = np.random.default_rng([cfg.seed, 4242])  # held out: not a seed the run used
    theta_e, maps, src = simulate(rng, n_eval)
    src = match_detections(src, chain.detect(maps))
    f = source_features(src.flux, src.l, src.b)
    eval_lists = split_lists(f[src.detected], src.map[src.detected], n_eval)
    m = max([len(a) for a in train_lists + eval_lists] + [len(det)])
    epochs = epochs or round(cfg.r4.steps * cfg.r4.batch / len(train_lists))
    t0 = time.perf_counter()
    est, summary = train_sbi(train_theta, train_lists, m, epochs, cfg.seed + 40)
    sbi_s = time.perf_counter() - t0
    sbi_r = SbiRatio(est, m)
    grid = Grid.default(cfg.grid_sigma, cfg.grid_h, cfg.grid_n_step)  # the run's posterior grid
    routes = {
        "probcat": (lambda ls, g: chain.log_r4(ls, g), chain.log_r4_at),
        "sbi_nre_a": (sbi_r.grid, sbi_r.at),
    }
    out, posts = {}, {}
    for name, (on_grid, at) in routes.items():
        log_at = at(eval_lists, theta_e)
        cov = expected_coverage([Posterior(grid, v) for v in on_grid(eval_lists, grid)],
                                theta_e, log_density_at_truth=log_at)  # fmt: skip
        # the target's r4 route, E[r4] from this route's own ratio (same draws' seed)
        log_e, _, _ = detections_factor(np.random.default_rng([cfg.seed, 4243]), det, grid,
                                        chain.draw_detected_lists, on_grid, cfg.r4_draws,
                                        cfg.r4_rounds)  # fmt: skip
        post = Posterior(grid, log_e)
        posts[name] = post
        out[name] = {
            "coverage": cov,
            "mean_log_ratio_at_truth": float(np.mean(log_at)),
            "target_posterior": post.summary(),
            "target_widths_68": {p: post.width(k) for k, p in enumerate(PARAM_NAMES)},
        }
    manifest = json.loads((run / "r4" / "manifest.json").read_text())
    out["probcat"]["training_s"] = manifest.get("training_s")
    out["sbi_nre_a"]["training_s"] = round(sbi_s, 1)
    out["sbi_nre_a"]["epochs"] = int(summary["epochs_trained"][-1])
    a, b = out["probcat"]["target_posterior"], out["sbi_nre_a"]["target_posterior"]
    out["target_mean_difference_in_68_widths"] = {
        p: abs(a[p]["mean"] - b[p]["mean"]) / out["probcat"]["target_widths_68"][p]
        for p in PARAM_NAMES
    }
    out["n_training_lists"] = len(train_lists)
    out["n_eval_lists"] = n_eval
    out["epochs_budget"] = epochs
    out["truth"] = truth
    return out, posts


def figure(posts: dict, path: Path, truth: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for k, (ax, p) in enumerate(zip(axes, PARAM_NAMES)):
        for name, post in posts.items():
            ax.plot(post.grid.axes[k], post.marginal(k), label=name)
        ax.axvline(truth[p], color="k", lw=0.8, ls="--")
        ax.set_xlabel(p)
    axes[0].set_ylabel("target posterior (r4)")
    fig.suptitle("detected sources only: probcat r4 vs sbi NRE_A, same simulations", fontsize=10)
    axes[0].legend(frameon=False)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished benchmarks/population.py --run")
    ap.add_argument("--seed", type=int, default=1, help="seed of the run's simulated target")
    ap.add_argument("--config", default=None, help="the run's YAML budget, if not the default")
    ap.add_argument("--n-eval", type=int, default=300, help="held-out detected lists")
    ap.add_argument("--epochs", type=int, default=0, help="sbi epochs (0: r4's budget)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/population_sbi.py", *sys.argv[1:]])
    try:
        import sbi
    except ImportError:
        sys.exit('population_sbi.py needs sbi: pip install -e ".[crosscheck]"')

    t0 = time.perf_counter()
    cfg = load_yaml(PopulationConfig, args.config)
    torch.set_num_threads(cfg.threads)
    res, posts = compare(Path(args.run), cfg, args.seed, args.n_eval, args.epochs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure(posts, out / "population_sbi.png", res["truth"])
    s = {"command": command, **res, "sbi_version": sbi.__version__}
    s["wall_s"] = round(time.perf_counter() - t0, 1)
    s.update({k: v for k, v in provenance(command).items() if k != "command"})
    s["definitions"] = {
        "coverage": "held-out full-model maps (fresh seed) through the run's r1, their true "
        "detected lists; central intervals per parameter, joint regions with each "
        "estimator's own density at the truth",
        "mean_log_ratio_at_truth": "mean log r(theta_true; S) over the held-out lists: the "
        "expected log posterior-to-prior density at the truth, higher is sharper",
        "target_posterior": "the benchmark target's r4 route, E[r4] of each estimator by "
        "probcat.population.chain.detections_factor (r4_rounds rounds of r4_draws draws of "
        "the detected list, same seed for both)",
    }
    text = json.dumps(s, indent=1, default=float)
    atomic_write(out / "population_sbi.json", lambda tmp: Path(tmp).write_text(text))
    show = {k: res[k] for k in ("target_mean_difference_in_68_widths",)}
    for n in ("probcat", "sbi_nre_a"):
        show[n] = {k: res[n][k] for k in ("mean_log_ratio_at_truth", "target_widths_68")}
        show[n]["joint"] = res[n]["coverage"]["joint"]
    print(json.dumps(show, indent=1, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
