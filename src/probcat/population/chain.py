"""The whole chain for one target observation: r1 (detection), r2 (sensitivity), the
truncated simulator, r3 (sub-threshold information), r4 (detected sources), their
combination, a plain NRE at the same simulation budget, and the coverage of each.

Every network trains through :func:`probcat.train.loop.fit` in its own folder of the run
directory (checkpoints, exact resume, manifest), so an interrupted run resumes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from probcat.catalog import atomic_write, check_writable_dir
from probcat.config import to_dict
from probcat.errors import ProbcatValueError, warn_user
from probcat.population.detection import (
    MIN_MASS,
    THRESHOLDS_LOG10,
    Detections,
    find_detections,
    match_detections,
    prior_map,
)
from probcat.population.inference import (
    Grid,
    Posterior,
    box_edge_mass,
    expected_coverage,
    logmeanexp,
    truncation_bounds,
    weighted_interval,
    weighted_samples,
)
from probcat.population.predictive import (
    map_statistics,
    predictive_pvalues,
    predictive_warning,
    prior_check,
    prior_warning,
)
from probcat.population.simulator import (
    EXTENT_DEG,
    MAP_SIZE,
    PARAM_NAMES,
    PRIOR_HIGH,
    PRIOR_LOW,
    Sources,
    normalise_theta,
    simulate,
    trunc_lognormal,
)
from probcat.population.tasks import (
    R1_HALO,
    HeadTask,
    MapRatioTask,
    R1Task,
    R2Task,
    SetRatioTask,
    pad_lists,
)
from probcat.population.truncated import TruncatedSimulator, region_positions
from probcat.runtime import check_memory, threads_for
from probcat.train.loop import LoopSettings, check_seeds, fit, manifest_of_run

__all__ = [
    "PopulationConfig",
    "run_chain",
    "check_target_map",
    "simulated_target",
    "Chain",
    "PixelDetector",
    "NetworkDetector",
    "detections_factor",
    "train_targeted",
    "train_in_two_processes",
]

# E[r4]'s log-ratios of every detected list at every grid point (float64) and their
# log-mean-exp: 25 bytes per pair measured, the chain's largest array at the default grid
E_R4_BYTES_PER_PAIR = 32


@dataclass(frozen=True)
class NetConfig:
    """Training budget of one network: ``steps`` of ``batch`` examples at ``lr``;
    ``balance`` > 0 trains a ratio estimator as balanced NRE."""

    steps: int = 2000
    batch: int = 64
    lr: float = 1e-3
    balance: float = 0.0


@dataclass(frozen=True)
class PopulationConfig:
    """Simulation budget and settings of the chain (strict YAML: ``probcat population -c``).

    ``pool_maps`` full-model maps, run through r1, train r2 (their sources) and r4 (their
    detected lists). r3 and the plain NRE train in two stages: the whole network
    (``r3``), then its head alone (``head``) on the frozen embeddings of ``head_maps`` fresh
    simulations (see :class:`~probcat.population.tasks.HeadTask`). The plain NRE gets as
    many fresh full-model maps as r3 and r4 saw together (``r3.steps * r3.batch +
    pool_maps`` and r3's round heads' maps for its first stage, in batches of ``r3.batch``,
    and ``head_maps``). r3's first stage takes 8,000 steps: with 4,000 its map summary,
    not the head, limited the posterior (4,000 more steps in the last box narrowed r3's
    mean 68% widths of N and sigma by 11% and 19% on validation maps, coverage unchanged;
    ``docs/population.md``).

    r3's first stage runs in ``r3_rounds`` truncation rounds (TMNRE, as paper 001 uses it),
    its ``r3.steps`` shared between them: each round after the first continues the last
    round's network on targeted maps whose ``theta`` is drawn from the prior truncated to
    the box where the last round's posterior of the target has mass
    (:func:`~probcat.population.inference.truncation_bounds`: marginal cells above
    ``r3_bound_eps`` of the largest, and a cell more). The head stage trains on maps of the
    last box, and r3 and the combined posterior live in it. Each box comes from a copy of
    the last round's network given a head stage of its own (``round_head`` on
    ``round_head_maps`` maps of the last round's box; 0 maps: none): a first stage alone
    gives posteriors too wide (see ``docs/population.md``), and so boxes two to five times
    as large. The next round continues the network without that head.

    The head stages train as balanced NRE (``head.balance`` = 100, the weight of Delaunoy
    et al. 2022): with plain NRE the heads covered a little under nominal, and the balance
    term moves them up towards it (joint coverage at 68.3% 0.666 -> 0.677 on validation
    maps) for 0.7-2.6% more width (``benchmarks/population_heads.py``). ``coverage_sims`` maps per
    estimator check the coverage (binomial standard error 0.015 at 68.3% for 1,000).
    ``predictive_maps`` maps simulated at the combined posterior make the posterior
    predictive check of the target (:mod:`probcat.population.predictive`; 0: none), and
    ``prior_check_maps`` maps drawn from the prior the check of the map before any training
    (:func:`~probcat.population.predictive.prior_check`; 0: none).

    ``parallel`` (with ``threads`` >= 2): train r3 and the plain NRE in two processes at
    once, each with half the threads (:func:`train_in_two_processes`), after r1, the pool,
    r2 and r4. A step of either is a simulation in single-threaded numpy and a network
    update that two threads speed up by less than two: two processes of one thread each
    trained the plain NRE's first stage 1.4x faster than one process of two threads, one
    after the other, on this project's 2-core CPU (r1 and the pool, convolutions nearly
    throughout, gained nothing from a second process). The networks differ from a
    one-process run's in the last bits (the thread count orders the sums), not otherwise;
    a run is reproduced to the bit by the same settings.
    """

    seed: int = 0
    detect_threshold_log10: float = float(THRESHOLDS_LOG10[8])
    detect_min_mass: float = MIN_MASS
    r1: NetConfig = field(default_factory=lambda: NetConfig(3000, 16, 2e-3))
    r1_crop: int = 64
    r1_channels: int = 32
    pool_maps: int = 8000
    r2: NetConfig = field(default_factory=lambda: NetConfig(1500, 512, 2e-3))
    r3: NetConfig = field(default_factory=lambda: NetConfig(8000, 64, 1e-3))
    r3_rounds: int = 2
    r3_bound_eps: float = 1e-6
    r4: NetConfig = field(default_factory=lambda: NetConfig(12000, 128, 1e-3))
    head: NetConfig = field(default_factory=lambda: NetConfig(30000, 64, 1e-3, 100.0))
    head_maps: int = 60000
    round_head: NetConfig = field(default_factory=lambda: NetConfig(15000, 64, 1e-3, 100.0))
    round_head_maps: int = 20000
    r4_draws: int = 512
    r4_rounds: int = 3
    prior_draws: int = 4000
    coverage_sims: int = 1000
    predictive_maps: int = 500
    prior_check_maps: int = 1000
    grid_n_step: int = 5
    grid_sigma: int = 41
    grid_h: int = 39
    threads: int = 2
    parallel: bool = True

    def __post_init__(self):
        if not any(np.isclose(self.detect_threshold_log10, THRESHOLDS_LOG10)):
            raise ProbcatValueError(
                "detect_threshold_log10 must be one of the r1 thresholds "
                f"{[round(float(t), 3) for t in THRESHOLDS_LOG10]}"
            )
        for name in ("pool_maps", "head_maps", "r4_draws", "r4_rounds", "prior_draws",
                     "coverage_sims", "r3_rounds", "r1_channels", "grid_n_step"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ProbcatValueError(f"{name} must be >= 1")
        threads_for(self.threads, 0)  # the bound of every command, before the map is read
        check_seeds({"seed": self.seed}, bits=62)  # the networks' seeds add small offsets
        if self.predictive_maps < 0:
            raise ProbcatValueError("predictive_maps must be >= 0 (0: no predictive check)")
        if self.prior_check_maps < 0:
            raise ProbcatValueError("prior_check_maps must be >= 0 (0: no prior check)")
        if self.round_head_maps < 0:
            raise ProbcatValueError("round_head_maps must be >= 0 (0: no round heads)")
        for name in ("r1", "r2", "r3", "r4", "head", "round_head"):
            c = getattr(self, name)
            if c.steps < 1 or c.batch < 2 or not 0 < c.lr < math.inf:
                raise ProbcatValueError(f"{name}: steps >= 1, batch >= 2 and lr > 0 needed")
            if not 0 <= c.balance < math.inf:
                raise ProbcatValueError(
                    f"{name}.balance must be >= 0 (0: plain NRE), got {c.balance}"
                )
        if self.grid_sigma < 2 or self.grid_h < 2:
            raise ProbcatValueError(
                f"grid_sigma and grid_h must be >= 2 points, got {self.grid_sigma}, {self.grid_h}"
            )
        if self.r3.steps < self.r3_rounds:
            raise ProbcatValueError("r3.steps must be at least r3_rounds (steps per round)")
        if not 0 < self.r3_bound_eps < 1:
            raise ProbcatValueError("r3_bound_eps must lie in (0, 1)")
        if not 0 < self.detect_min_mass <= 1:
            raise ProbcatValueError("detect_min_mass must lie in (0, 1]")
        if self.r1_crop <= 2 * R1_HALO:
            raise ProbcatValueError(f"r1_crop must exceed {2 * R1_HALO}")

    @property
    def k_detect(self) -> int:
        return int(np.argmin(np.abs(THRESHOLDS_LOG10 - self.detect_threshold_log10)))

    @property
    def plain_steps(self) -> int:
        """The plain NRE's first-stage steps: as many maps as r3's first stage, its round
        heads and the pool (r4, r2) use together."""
        maps = self.r3.steps * self.r3.batch + self.pool_maps + self.round_head_total
        return math.ceil(maps / self.r3.batch)

    @property
    def round_head_total(self) -> int:
        """Maps simulated for r3's round heads (one per round after the first)."""
        return (self.r3_rounds - 1) * self.round_head_maps


class PixelDetector(Protocol):
    """What can fill r1's role: per-pixel posterior probabilities that a source brighter
    than each threshold of ``THRESHOLDS_LOG10`` lies in the pixel, ``(B, K, H, W)`` for
    maps ``(B, H, W)`` (r1 divides them by the exact prior map)."""

    def posterior(self, maps: np.ndarray) -> np.ndarray: ...


class NetworkDetector:
    """The r1 network as a :class:`PixelDetector` (maps padded by its reach, in batches)."""

    def __init__(self, net, batch: int = 64):
        self.net, self.batch = net, batch

    @torch.no_grad()
    def posterior(self, maps: np.ndarray) -> np.ndarray:
        out, h = [], R1_HALO
        for i in range(0, len(maps), self.batch):
            m = np.pad(maps[i : i + self.batch], ((0, 0), (h, h), (h, h)))
            logit = self.net(torch.from_numpy(m), -h, -h)[:, :, h:-h, h:-h]
            out.append(torch.sigmoid(logit).numpy())
        return np.concatenate(out)


def _settings(cfg: PopulationConfig, steps: int, seed_offset: int) -> LoopSettings:
    every = max(steps // 4, 1)
    return LoopSettings(cfg.seed + seed_offset, every, max(steps // 10, 50), cfg.threads)


class Chain:
    """The trained pieces of a run, and the posteriors they give."""

    def __init__(self, cfg: PopulationConfig, out: Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.prior = None  # (K, H, W) prior map of r1
        self.r1 = self.r2 = self.r3 = self.r4 = self.plain = None
        self.detector = None  # a PixelDetector replacing the r1 network, if given
        self.detected_fluxes = None  # the pool's detected fluxes: p(F | detected)
        self.target_lists = []  # E[r4]'s draws of the detected list
        self.e_r4_change, self.e_r4_fallbacks = [], 0
        self.n_simulations = {}

    # ---- r1: detection -------------------------------------------------------------------
    def train_r1(self):
        c = self.cfg
        task = R1Task(c.r1.steps, c.r1.lr, c.seed + 1, c.r1.batch, c.r1_crop, c.r1_channels)
        self._fit(task, c.r1.steps, 1, self._keys("r1"))
        self.r1 = task.model
        self.n_simulations["r1"] = task.n_simulations
        path = self.prior_map_path()
        if path.exists():
            self.prior = np.load(path)
        else:
            self.prior = prior_map(c.prior_draws, seed=c.seed)
            atomic_write(path, lambda tmp: np.save(tmp, self.prior))

    def prior_map_path(self) -> Path:
        """Where the run caches r1's prior map (it depends on ``seed`` and ``prior_draws``)."""
        return self.out / f"prior_map_seed{self.cfg.seed}_draws{self.cfg.prior_draws}.npy"

    def posterior_maps(self, maps: np.ndarray) -> np.ndarray:
        """The detector's posterior ``p(source above F_th in s | x)`` ``(B, K, 128, 128)``
        for the thresholds :data:`~probcat.population.detection.THRESHOLDS_LOG10`: the r1
        network's, or that of any :class:`PixelDetector` set as ``self.detector``."""
        return (self.detector or NetworkDetector(self.r1)).posterior(maps)

    def detect(self, maps: np.ndarray) -> list[Detections]:
        k = self.cfg.k_detect
        post = self.posterior_maps(maps)[:, k]
        thr = float(THRESHOLDS_LOG10[k])
        return [find_detections(p, self.prior[k], thr, self.cfg.detect_min_mass) for p in post]

    # ---- the pool: r2 and r4 -------------------------------------------------------------
    def pool(self):
        """Full-model maps run through r1: their sources (detected or not) and detected
        lists (true ``log10 F, l, b`` of the detected sources), cached in the run."""
        path = self.out / "pool.npz"
        key = json.dumps(self._keys("pool"), sort_keys=True)
        if path.exists():
            data = dict(np.load(path))
            # the shipped pool holds the detected sources only: enough once r2 and r4 are
            # trained (the posteriors read its detected fluxes), not to train them
            partial = bool(data.pop("detected_only", False))
            if str(data.pop("key", "")) == key and not (partial and not self._r2_r4_done()):
                return data
        c = self.cfg
        rng = np.random.default_rng([c.seed, 5])
        thetas, srcs, n_done = [], [], 0
        from tqdm.auto import tqdm

        bar = tqdm(total=c.pool_maps, desc="pool maps through r1", disable=not self.progress)
        while n_done < c.pool_maps:
            n = min(256, c.pool_maps - n_done)
            theta, maps, src = simulate(rng, n)
            src = match_detections(src, self.detect(maps))
            src.map = src.map + n_done
            thetas.append(theta)
            srcs.append(src)
            n_done += n
            bar.update(n)
        bar.close()
        src = Sources.concat(srcs)
        data = {
            "theta": np.concatenate(thetas),
            "map": src.map,
            "flux": src.flux,
            "l": src.l,
            "b": src.b,
            "detected": src.detected,
        }
        atomic_write(path, lambda tmp: np.savez(tmp, key=key, **data))
        return data

    def _r2_r4_done(self) -> bool:
        """Whether the run holds r2 and r4 finished with this config's settings."""
        return all(
            manifest_of_run(self.out / name, {"task": f"population_{name}", **self._keys(name)})
            for name in ("r2", "r4")
        )

    def train_r2_r4(self, pool: dict):
        c = self.cfg
        feats = source_features(pool["flux"], pool["l"], pool["b"])
        with_theta = sensitivity_features(feats, pool["theta"][pool["map"]])
        task = R2Task(c.r2.steps, c.r2.lr, c.seed + 2, with_theta, pool["detected"], c.r2.batch)
        self._fit(task, c.r2.steps, 2, self._keys("r2"))
        self.r2 = task.model
        det = pool["detected"]
        lists = split_lists(feats[det], pool["map"][det], len(pool["theta"]))
        task = SetRatioTask(
            c.r4.steps, c.r4.lr, c.seed + 4, pool["theta"], lists, c.r4.batch, c.r4.balance
        )
        self._fit(task, c.r4.steps, 4, self._keys("r4"))
        self.r4 = task.model
        self.detected_fluxes = pool["flux"][det]
        self.n_simulations["pool"] = len(pool["theta"])

    @torch.no_grad()
    def sensitivity(self, flux, l, b, theta) -> np.ndarray:
        """``S(F, s | theta)``: r2's probability that a source would be detected."""
        x = sensitivity_features(source_features(flux, l, b), theta)
        return torch.sigmoid(self.r2(torch.from_numpy(x))).numpy()

    # ---- r3 and the plain NRE ------------------------------------------------------------
    def train_r3(self, det: Detections, x_o: np.ndarray | None = None):
        """r3 for the detections ``det`` of the target map ``x_o`` (needed for truncation
        rounds: their boxes come from its posterior), in ``r3_rounds`` rounds and a head
        stage; sets ``truncated`` (the last round's simulator) and ``r3_rounds_log``."""
        c = self.cfg
        if c.r3_rounds > 1 and x_o is None:
            raise ProbcatValueError("r3's truncation rounds need the target map")
        self.truncated = TruncatedSimulator(det, self.sensitivity)
        target = self._r3_target(det)
        digest = self.r3_folder(det).removeprefix("r3_")
        steps = [c.r3.steps // c.r3_rounds + (k < c.r3.steps % c.r3_rounds)
                 for k in range(c.r3_rounds)]  # fmt: skip
        grid = Grid.default(c.grid_sigma, c.grid_h, c.grid_n_step)
        net, n_sims, self.r3_rounds_log = None, 0, []
        keys = folder = None
        for k, n_steps in enumerate(steps):
            if k:  # the box where the last round's posterior of the target has mass
                box_net = net
                if c.round_head_maps:  # a head of its own, on a copy of the last network
                    box_net = copy.deepcopy(net)
                    self._fit_head(box_net, f"r3 round {k}", self.truncated.simulate, 50 + k,
                                   keys, f"{folder}_boxhead", "round_head")  # fmt: skip
                    n_sims += c.round_head_maps
                log_r = self.log_r_map(box_net, x_o[None], grid)[0]
                post = Posterior(grid, log_r + self.truncated.log_prior(grid.points))
                box = truncation_bounds(post, c.r3_bound_eps)
                self.truncated = TruncatedSimulator(det, self.sensitivity, box)
            keys = dict(target)
            if k:
                keys.update(round=k + 1, bounds=self.truncated.bounds.tolist())
            b = self.truncated.bounds
            self.r3_rounds_log.append({
                "steps": n_steps,
                "bounds": {p: b[i].tolist() for i, p in enumerate(PARAM_NAMES)},
                "prior_fraction": float(np.prod((b[:, 1] - b[:, 0]) / (PRIOR_HIGH - PRIOR_LOW))),
                "box_head_maps": c.round_head_maps if k else 0,  # maps of the box's head
            })  # fmt: skip
            task = MapRatioTask("r3", n_steps, c.r3.lr, c.seed + (3 if k == 0 else 20 + k),
                                self.truncated.simulate, c.r3.batch, c.r3.balance,
                                init=None if net is None else net.state_dict())  # fmt: skip
            folder = f"r3_{digest}" + (f"_round{k + 1}" if k else "")  # one per target
            self._fit(task, n_steps, 3 if k == 0 else 20 + k, keys, folder=folder)
            net, n_sims = task.model, n_sims + task.n_simulations
        self.r3 = net
        self._fit_head(self.r3, "r3", self.truncated.simulate, 3, keys, f"r3_{digest}_head")
        self.n_simulations["r3"] = n_sims + c.head_maps

    def _r3_target(self, det: Detections) -> dict:
        """What r3 depends on: its settings and the target's detections ``det``."""
        return {**self._keys("r3"), "target": det.to_dict()}

    def r3_folder(self, det: Detections) -> str:
        """The folder of r3's first round for the detections ``det`` (its other stages
        add a suffix), named by :meth:`_r3_target`."""
        text = json.dumps(self._r3_target(det), sort_keys=True)
        return "r3_" + hashlib.sha256(text.encode()).hexdigest()[:10]

    def r3_config(self, det: Detections) -> PopulationConfig | None:
        """The config (its ``threads``) with which r3 trains for the detections ``det`` in
        the chain's own process, or None: in a process of its own beside the plain NRE's,
        with half the threads (:func:`train_in_two_processes`). Alone, with every thread,
        when the plain NRE has finished before r3 starts (a run that reuses an earlier one,
        :func:`reuse_run`), and in any run without ``parallel``. The choice is recorded in
        the run (``<r3 folder>_threads.json``), so a resumed r3 continues as it began: its
        truncation boxes, read from its own network, would differ in the last bits at
        another thread count."""
        c, folder = self.cfg, self.r3_folder(det)
        path = self.out / f"{folder}_threads.json"
        if path.exists():
            return replace(c, threads=int(json.loads(path.read_text())["threads"]))
        if c.parallel and c.threads >= 2:
            started = (self.out / folder).exists()  # in a process of its own
            done = all((self.out / f / "manifest.json").exists() for f in ("plain", "plain_head"))
            if started or not done:
                return None
        text = json.dumps({"threads": c.threads})
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return c

    def train_plain(self):
        c = self.cfg
        task = self.plain_first_stage()
        self.plain = task.model
        self._fit_head(self.plain, "plain", simulate, 6, self._keys("plain"), "plain_head")
        self.n_simulations["plain"] = task.n_simulations + c.head_maps

    def plain_first_stage(self) -> MapRatioTask:
        """The plain NRE's first stage (the whole network), trained or resumed in the run's
        ``plain`` folder; its task, with the network on ``task.model``."""
        c = self.cfg
        steps = c.plain_steps
        task = MapRatioTask("plain", steps, c.r3.lr, c.seed + 6, simulate, c.r3.batch, c.r3.balance)
        self._fit(task, steps, 6, self._keys("plain"))
        return task

    def _fit_head(self, net, name: str, simulator, offset: int, keys: dict, folder: str,
                  stage: str = "head"):  # fmt: skip
        """The head stage of map ratio network ``net`` (trained in place): :class:`HeadTask`
        with the settings ``stage`` (``head`` or ``round_head``) on the embeddings of
        ``<stage>_maps`` fresh maps from ``simulator``; its checkpoint depends on ``keys``
        and those two settings."""
        c = self.cfg
        h, n_maps = getattr(c, stage), getattr(c, f"{stage}_maps")
        keys = {**keys, stage: to_dict(c)[stage], f"{stage}_maps": n_maps}

        def bank():
            from tqdm.auto import tqdm

            rng = np.random.default_rng([c.seed, offset, 31])
            embs, thetas = [], []
            bar = tqdm(total=n_maps, desc=f"{name}: head bank", disable=not self.progress)
            with torch.no_grad():
                for i in range(0, n_maps, 500):
                    theta, maps, _ = simulator(rng, min(500, n_maps - i))
                    embs.append(net.embedding(torch.from_numpy(maps)))
                    thetas.append(theta)
                    bar.update(len(theta))
            bar.close()
            return torch.cat(embs), np.concatenate(thetas)

        task = HeadTask(name, h.steps, h.lr, c.seed + offset, net.head, bank, n_maps,
                        h.batch, h.balance)  # fmt: skip
        self._fit(task, h.steps, 10 + offset, keys, folder=folder)
        net.head = task.model

    def _keys(self, stage: str) -> dict:
        """The settings that stage ``stage`` depends on (its checkpoint resumes under any
        change of the others)."""
        d = to_dict(self.cfg)
        pick = {
            "r1": ["seed", "r1", "r1_crop", "r1_channels"],
            "pool": ["seed", "r1", "r1_crop", "r1_channels", "pool_maps", "prior_draws",
                     "detect_threshold_log10", "detect_min_mass"],
        }  # fmt: skip
        pick["r2"] = pick["pool"] + ["r2"]
        pick["r4"] = pick["pool"] + ["r4"]
        pick["r3"] = pick["pool"] + ["r2", "r3", "r3_rounds", "r3_bound_eps"]
        pick["plain"] = ["seed", "r3", "pool_maps"]
        if self.cfg.round_head_maps and self.cfg.r3_rounds > 1:  # r3's boxes; plain's budget
            pick["r3"] += ["round_head", "round_head_maps"]
            pick["plain"] += ["r3_rounds", "round_head_maps"]
        return {k: d[k] for k in pick[stage]}

    def _fit(self, task, steps: int, offset: int, config: dict, folder: str | None = None):
        # on the CPU, a GPU or not: the chain's networks are small, its tasks keep their data
        # on the CPU, and a rerun gives the same networks to the bit (the run folders reuse
        # them)
        where = self.out / (folder or task.kind.removeprefix("population_"))
        config = {"task": task.kind, **config}
        if not finished_network(task, where, config):
            fit(task, where, config=config, settings=_settings(self.cfg, steps, offset),
                progress=self.progress, device="cpu")  # fmt: skip
        task.model.eval()

    # ---- posteriors on a grid ------------------------------------------------------------
    @torch.no_grad()
    def _map_embeddings(self, net, maps: np.ndarray, chunk: int = 256) -> torch.Tensor:
        """Embeddings ``(B, E)`` of maps by map-ratio network ``net``, in chunks."""
        maps = np.asarray(maps, np.float32)
        parts = [net.embedding(torch.from_numpy(maps[i : i + chunk]))
                 for i in range(0, len(maps), chunk)]  # fmt: skip
        return torch.cat(parts)

    @torch.no_grad()
    def _list_embeddings(self, lists: list[np.ndarray], chunk: int = 64) -> torch.Tensor:
        """r4's embeddings ``(B, E)`` of detected-source lists, in chunks."""
        parts = [self.r4.embedding(*pad_lists(lists[i : i + chunk]))
                 for i in range(0, len(lists), chunk)]  # fmt: skip
        return torch.cat(parts)

    def log_r_map(self, net, maps: np.ndarray, grid: Grid) -> np.ndarray:
        """``log r(theta; x)`` ``(B, G)`` of map-ratio network ``net`` on the grid."""
        return net.head.on_grid(self._map_embeddings(net, maps), _theta_tensor(grid.points))

    def log_r4(self, lists: list[np.ndarray], grid: Grid) -> np.ndarray:
        """``log r4(theta; S)`` ``(B, G)`` of detected-source lists on the grid."""
        return self.r4.head.on_grid(self._list_embeddings(lists), _theta_tensor(grid.points))

    @torch.no_grad()
    def log_r_map_at(self, net, maps: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """``log r(theta_i; x_i)`` ``(B,)`` of map-ratio network ``net``: each map at its
        own parameters ``theta`` ``(B, 3)`` (not on a grid)."""
        out = net.head(self._map_embeddings(net, maps), _theta_tensor(theta))
        return out.numpy().astype(np.float64)

    @torch.no_grad()
    def log_r4_at(self, lists: list[np.ndarray], theta: np.ndarray) -> np.ndarray:
        """``log r4(theta_i; S_i)`` ``(B,)``: each detected list at its own parameters."""
        out = self.r4.head(self._list_embeddings(lists), _theta_tensor(theta))
        return out.numpy().astype(np.float64)

    def log_e_r4_at(self, lists: list[np.ndarray], theta: np.ndarray) -> np.ndarray:
        """``log mean_j r4(theta_i; S_j)`` ``(B,)`` over draws ``S_j`` of the detected
        list (:meth:`detections_factor`), at points ``theta`` ``(B, 3)``."""
        draws = self.r4.head.on_grid(self._list_embeddings(lists), _theta_tensor(theta))
        return logmeanexp(draws, axis=0)

    def draw_detected_lists(self, rng, det: Detections, theta: np.ndarray) -> list[np.ndarray]:
        """One detected list ``S ~ p(S_det | theta_j, I = 1)`` per row of ``theta``
        ``(n, 3)``: each detected source in its region ``R_i``, with a position and a flux
        from the population model ``theta_j`` kept with r2's probability that such a source
        is detected, ``S(F, s | theta_j)`` (rejection sampling). The sources of one list
        share its ``theta_j``, as those of a detected list share their map's population."""
        theta = np.atleast_2d(np.asarray(theta, float))
        n, k = len(theta), len(det)
        if k == 0:
            return [np.zeros((0, 3), np.float32) for _ in range(n)]
        idx = np.repeat(np.arange(n), k)
        l0, b0 = np.tile(det.l, n), np.tile(det.b, n)
        f_th = 10.0**det.threshold_log10
        pool_f = self.detected_fluxes
        # proposals above the faintest 1% of the pool's detected fluxes (fainter ones are
        # almost never detected, and would only slow the rejection down)
        f_min = f_th / 10
        if pool_f is not None and len(pool_f):
            f_min = min(float(np.quantile(pool_f, 0.01)), f_th)
        flux, l, b = np.full(n * k, np.nan), np.zeros(n * k), np.zeros(n * k)
        todo = np.arange(n * k)
        for _ in range(200):
            t = theta[idx[todo]]
            lt, bt = region_positions(rng, l0[todo], b0[todo], t[:, 2])
            ft = trunc_lognormal(rng, t[:, 1], f_min)
            keep = rng.random(len(todo)) < self.sensitivity(ft, lt, bt, t)
            flux[todo[keep]], l[todo[keep]], b[todo[keep]] = ft[keep], lt[keep], bt[keep]
            todo = todo[~keep]
            if not len(todo):
                break
        # sources the sensitivity (almost) never keeps: above the threshold, unselected
        self.e_r4_fallbacks += len(todo)
        if len(todo):
            t = theta[idx[todo]]
            l[todo], b[todo] = region_positions(rng, l0[todo], b0[todo], t[:, 2])
            flux[todo] = trunc_lognormal(rng, t[:, 1], f_th)
        feats = source_features(flux, l, b)
        return [feats[i * k : (i + 1) * k] for i in range(n)]

    def detections_factor(self, rng, det: Detections, grid: Grid) -> np.ndarray:
        """``log E[r4]`` on the grid for the detections ``det``, by r4
        (:func:`detections_factor`); keeps the last round's lists (``target_lists``) and the
        change between rounds (``e_r4_change``)."""
        self.e_r4_fallbacks = 0
        log_e, self.target_lists, self.e_r4_change = detections_factor(
            rng, det, grid, self.draw_detected_lists, self.log_r4, self.cfg.r4_draws,
            self.cfg.r4_rounds, self.progress,
        )  # fmt: skip
        return log_e

    def posteriors(self, x_o: np.ndarray, det: Detections, grid: Grid, rng) -> dict:
        """The four posteriors of the target: ``r3``, ``r4`` (detected sources),
        ``combined`` and ``plain_nre``, and the log ``E[r4]`` on the grid
        (:meth:`detections_factor`)."""
        feasible = self.truncated.log_prior(grid.points)  # N >= N_det, in r3's box
        log_r3 = self.log_r_map(self.r3, x_o[None], grid)[0]
        log_e_r4 = self.detections_factor(rng, det, grid)
        log_plain = self.log_r_map(self.plain, x_o[None], grid)[0]
        return {
            "r3": Posterior(grid, log_r3 + feasible),
            "r4": Posterior(grid, log_e_r4),
            "combined": Posterior(grid, log_r3 + log_e_r4 + feasible),
            "plain_nre": Posterior(grid, log_plain),
            "log_e_r4": log_e_r4,
        }

    def box_edge_mass(self, post: dict) -> dict:
        """:func:`~probcat.population.inference.box_edge_mass` of r3's and the combined
        posterior (of :meth:`posteriors`) in r3's last box: about 0 unless the box cut them."""
        return {k: box_edge_mass(post[k], self.truncated.bounds) for k in ("r3", "combined")}

    def log_densities_at(self, x_o: np.ndarray, theta) -> dict:
        """:meth:`log_densities_on` at one point ``theta`` (3 parameters), as floats."""
        return {k: float(v[0]) for k, v in self.log_densities_on(x_o, theta).items()}

    def log_densities_on(self, x_o: np.ndarray, theta: np.ndarray) -> dict:
        """Each estimator's log density of the target (the grid's units: what
        :meth:`posteriors` holds at its points) at many points ``theta`` ``(n, 3)``, after
        :meth:`posteriors`; ``-inf`` where an estimator's posterior is zero (``N`` below
        the number of detections; r3 and combined outside r3's box)."""
        t = np.atleast_2d(np.asarray(theta, float))
        tt = _theta_tensor(t)
        feasible = self.truncated.log_prior(t)
        log_r3 = self.r3.head.on_grid(self._map_embeddings(self.r3, x_o[None]), tt)[0]
        log_r3 = log_r3 + feasible
        log_e_r4 = self.log_e_r4_at(self.target_lists, t)
        log_e_r4 = np.where(t[:, 0] >= self.truncated.n_det, log_e_r4, -np.inf)
        plain = self.plain.head.on_grid(self._map_embeddings(self.plain, x_o[None]), tt)[0]
        return {"r3": log_r3, "r4": log_e_r4, "combined": log_r3 + log_e_r4, "plain_nre": plain}


def finished_network(task, where: Path, config: dict) -> bool:
    """Load into ``task`` (as :meth:`fit` leaves it: ``task.model``) the finished network in
    the folder ``where`` when it holds the weights and ``manifest.json`` of a network
    trained with ``config`` and no checkpoint: one of the shipped networks
    (:mod:`probcat.population.shipped`). With a checkpoint, the training loop resumes or
    reloads as usual; with another config, or weights that do not fit the network, it
    trains."""
    man = None if (where / "checkpoint.pt").exists() else manifest_of_run(where, config)
    if man is None:
        return False
    try:
        state = torch.load(where / man["weights"], map_location="cpu", weights_only=True)
        model = task.build_model()
        model.load_state_dict(state["state_dict"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError):
        return False
    task.finish(model.eval(), False)
    return True


def _theta_tensor(theta: np.ndarray) -> torch.Tensor:
    """Population parameters ``(n, 3)`` normalised for the ratio heads."""
    return torch.from_numpy(normalise_theta(np.asarray(theta, float))).float()


def simulated_target(seed: int) -> tuple[np.ndarray, dict]:
    """The simulated target observation of ``seed``: its map ``(128, 128)`` and its true
    parameters by name."""
    theta_o, maps, _ = simulate(np.random.default_rng([seed, 1234]), 1)
    return maps[0], dict(zip(PARAM_NAMES, theta_o[0].tolist()))


def source_features(flux, l, b) -> np.ndarray:
    """Per-source network inputs ``(n, 3)``: ``log10 F``, ``l / 40``, ``b / 40``."""
    return np.stack(
        [np.log10(flux), np.asarray(l) / EXTENT_DEG, np.asarray(b) / EXTENT_DEG], 1
    ).astype(np.float32)


def sensitivity_features(feats: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """r2's inputs ``(n, 6)``: :func:`source_features` and the normalised population
    parameters ``theta`` ``(n, 3)`` of each source's map."""
    return np.concatenate([feats, normalise_theta(theta).astype(np.float32)], 1)


def split_lists(feats: np.ndarray, maps: np.ndarray, n_maps: int) -> list[np.ndarray]:
    order = np.argsort(maps, kind="stable")
    starts = np.searchsorted(maps[order], np.arange(n_maps + 1))
    return [feats[order[starts[i] : starts[i + 1]]] for i in range(n_maps)]


def detections_factor(rng, det: Detections, grid: Grid, draw, on_grid, n_draws: int,
                      rounds: int, progress: bool = False):  # fmt: skip
    """``log E[r4](theta) = log p(I = 1 | theta) / p(I = 1)`` on the grid (``-inf`` where
    ``N < N_det``): the mean of ``r4(S; theta)`` over ``S ~ p(S_det | I = 1)``.

    That distribution mixes ``p(S | theta', I = 1)`` over ``theta' ~ p(theta' | I = 1)``,
    which is the r4 route's own posterior ``p(theta') E[r4](theta')``: the estimate is the
    fixed point of ``E <- mean_j r4(S_j; .)`` with ``S_j`` drawn at ``theta'_j ~ p E``, reached
    in ``rounds`` rounds of ``n_draws`` lists, each round drawing ``theta'`` from the previous
    round's estimate (the first: the prior with ``N >= N_det``) and one list at each
    (``draw(rng, det, theta)``, e.g. :meth:`Chain.draw_detected_lists`). The map is an
    averaging operator whose only fixed point is the answer, so each round shrinks the
    first round's error. Drawing each source's flux on its own from the detected fluxes
    of all maps instead would mix lists no population makes and tilt the estimate in
    ``sigma`` (fluxes above the threshold say nothing about ``I``; see
    ``tests/test_population_inference.py``).

    ``on_grid(lists, grid)`` gives ``log r4(S_j; theta)`` ``(M, G)``. Returns ``log E[r4]``
    ``(G,)``, the last round's lists, and the total-variation distance between the r4-route
    posteriors of consecutive rounds (convergence and Monte Carlo noise together)."""
    from tqdm.auto import tqdm

    feasible = np.where(grid.points[:, 0] >= len(det), 0.0, -np.inf)
    log_e, change, before = feasible, [], None
    for _ in tqdm(range(rounds), desc="E[r4] rounds", disable=not progress):
        theta = Posterior(grid, log_e).sample(rng, n_draws)
        lists = draw(rng, det, theta)
        log_e = logmeanexp(on_grid(lists, grid), axis=0) + feasible
        now = Posterior(grid, log_e).w
        if before is not None:
            change.append(float(0.5 * np.abs(now - before).sum()))
        before = now
    return log_e, lists, change


def coverage(chain: Chain, det: Detections, log_e_r4: np.ndarray, grid: Grid, rng):
    """Expected coverage of each estimator's marginals and joint regions (see docs): r3 on
    targeted maps with ``theta`` from the truncated prior; combined on targeted maps with
    ``theta`` drawn from the r4-route posterior (prior x ``p(I = 1 | theta)``); r4 on
    full-model maps with their true detected lists; the plain NRE on full-model maps. The
    joint regions compare the grid with each estimator's own density at the truth. The
    posteriors are on ``grid``, the one the target's posteriors are reported on (``log_e_r4``
    is E[r4] there): a coarser grid widens the narrow ``N`` marginals by its cells and
    over-covers.

    Also returns, on the combined check's maps (drawn like the target: its detections, and
    ``theta`` from the r4-route posterior), the mean 68% marginal widths and joint 68%
    region volumes of r3 alone and of the combination: whether adding the detected
    sources narrows the posterior on average, not on one map only."""
    from tqdm.auto import tqdm

    c = chain.cfg
    n = c.coverage_sims
    bar = tqdm(total=4, desc=f"coverage checks ({n} maps each)", disable=not chain.progress)
    feasible = chain.truncated.log_prior(grid.points)  # N >= N_det, in r3's box
    out = {}
    # Memory: each check's log ratios on the grid hold 1.3 GB (1,000 maps, the default
    # grid), freed before the next check's; its posteriors are built one map at a time (a
    # list of them held 4 GB). Peak resident memory 4.6 GB before, 10.5 GB before that.
    # r3: targeted maps, theta from the truncated prior (in r3's box)
    theta, maps, _ = chain.truncated.simulate(rng, n)
    lr = chain.log_r_map(chain.r3, maps, grid)
    at = chain.log_r_map_at(chain.r3, maps, theta)
    out["r3"] = expected_coverage((Posterior(grid, v + feasible) for v in lr), theta,
                                  log_density_at_truth=at)  # fmt: skip
    del lr
    bar.update()
    # combined: theta ~ truncated prior x p(I=1 | theta) (the r4-route posterior, in r3's box)
    theta = Posterior(grid, log_e_r4 + feasible).sample(rng, n)
    theta[:, 0] = np.clip(np.round(theta[:, 0]), *chain.truncated.n_range)
    _, maps, _ = chain.truncated.simulate(rng, n, theta)
    lr = chain.log_r_map(chain.r3, maps, grid)
    at = chain.log_r_map_at(chain.r3, maps, theta) + chain.log_e_r4_at(chain.target_lists, theta)
    spread = {"r3": [], "combined": []}  # per map: 68% widths and joint 68% volume

    def combined(lr):
        for v in lr:
            alone, both = Posterior(grid, v + feasible), Posterior(grid, v + log_e_r4 + feasible)
            for name, q in (("r3", alone), ("combined", both)):
                spread[name].append([*(q.width(k) for k in range(3)), q.hpd_volume(0.683)])
            yield both

    out["combined"] = expected_coverage(combined(lr), theta, log_density_at_truth=at)
    del lr
    same_maps = {}
    for name, rows in spread.items():
        cols = list(zip(*rows))
        same_maps[name] = {
            **{p: float(np.mean(cols[k])) for k, p in enumerate(PARAM_NAMES)},
            "joint_volume_68": float(np.mean(cols[3])),
        }
    bar.update()
    # r4: full-model maps with their true detected lists
    theta, maps, src = simulate(rng, n)
    src = match_detections(src, chain.detect(maps))
    feats = source_features(src.flux, src.l, src.b)
    lists = split_lists(feats[src.detected], src.map[src.detected], n)
    lr4 = chain.log_r4(lists, grid)
    at = chain.log_r4_at(lists, theta)
    out["r4"] = expected_coverage((Posterior(grid, v) for v in lr4), theta,
                                  log_density_at_truth=at)  # fmt: skip
    del lr4
    bar.update()
    # plain NRE: prior draws
    theta, maps, _ = simulate(rng, n)
    lp = chain.log_r_map(chain.plain, maps, grid)
    at = chain.log_r_map_at(chain.plain, maps, theta)
    out["plain_nre"] = expected_coverage((Posterior(grid, v) for v in lp), theta,
                                         log_density_at_truth=at)  # fmt: skip
    bar.update()
    bar.close()
    return out, same_maps


def check_target_map(target_map) -> np.ndarray:
    """A target map as float32 ``(128, 128)``; a clear error for another shape, for
    non-finite pixels, for negative ones and for an empty map (no light at all)."""
    x_o = np.asarray(target_map, np.float32)
    if x_o.shape != (MAP_SIZE, MAP_SIZE):
        shape = "x".join(map(str, x_o.shape)) or "a scalar"
        raise ProbcatValueError(f"the map must be {MAP_SIZE}x{MAP_SIZE} pixels, not {shape}")
    if not np.isfinite(x_o).all():
        raise ProbcatValueError("the map has NaN or infinite pixels")
    if (x_o < 0).any():
        raise ProbcatValueError(
            f"the map has {int((x_o < 0).sum())} negative pixel(s) (lowest {x_o.min():.4g}): "
            "the model's maps are Poisson counts over 100, never negative"
        )
    if not (x_o > 0).any():  # under the prior: at most a few in a million maps, at N = 10
        raise ProbcatValueError(
            "the map is empty (every pixel 0): the model's maps hold the light of 10 to 500 "
            "sources; check the file (its HDU, its units)"
        )
    return x_o


def run_chain(
    cfg: PopulationConfig,
    out: str | Path,
    *,
    target_seed: int | None = None,
    target_map: np.ndarray | None = None,
    progress: bool = True,
    command: str | None = None,
    reuse: str | Path | None = None,
    shipped: bool | Path = True,
) -> dict:
    """Run the chain for a target (a simulated one from ``target_seed``, or ``target_map``)
    into ``out``; returns the summary (also written as ``summary.json``). ``reuse``: an
    earlier run whose networks that do not depend on the target are copied in first
    (:func:`reuse_run`); else, with ``shipped``, the shipped ones that ``cfg`` would train
    the same way (:func:`probcat.population.shipped.install`; a path: those of a file
    :func:`~probcat.population.shipped.pack` wrote). ``shipped=False`` and no ``reuse``:
    every network trains."""
    from probcat.population.figures import predictive_plot, write_figures
    from probcat.provenance import provenance

    t0 = time.perf_counter()
    truth = None
    if target_map is None:
        if target_seed is None:
            raise ProbcatValueError("give a target seed or a target map")
        x_o, truth = simulated_target(target_seed)
    else:
        x_o = check_target_map(target_map)
    n_grid = len(Grid.default(cfg.grid_sigma, cfg.grid_h, cfg.grid_n_step).points)
    check_memory(
        cfg.r4_draws * n_grid * E_R4_BYTES_PER_PAIR,
        f"E[r4] of {cfg.r4_draws:,} detected lists on {n_grid:,} grid points",
        "lower r4_draws or the grid's points (grid_sigma, grid_h, more grid_n_step)",
    )  # before anything trains: it comes after the networks
    reused = None if reuse is None else reuse_run(cfg, out, reuse)  # checks ``reuse`` first
    out = check_writable_dir(out)  # a clear error for a file there or no permission
    if reuse is None and shipped:
        from probcat.population.shipped import NAME, install

        reused = install(cfg, out, NAME if shipped is True else Path(shipped))
    torch.set_num_threads(threads_for(cfg.threads, 0))
    prior = None
    if cfg.prior_check_maps:  # seconds, before the training: can the model make this map?
        prior = prior_check(x_o, np.random.default_rng([cfg.seed, 7]), cfg.prior_check_maps)
        warning = prior_warning(prior)
        if warning:
            warn_user(warning)
    stage_s, last = {}, [time.perf_counter()]  # seconds per stage; when the last ended

    def stage(name: str) -> None:
        now = time.perf_counter()
        stage_s[name], last[0] = round(now - last[0], 1), now

    chain = Chain(cfg, out, progress)
    det = train_targeted(chain, x_o, stage, r3=False)
    alone = chain.r3_config(det)
    if alone is None:  # r3 and the plain NRE in two processes, then loaded from ``out``
        half = replace(cfg, threads=cfg.threads // 2)
        stage_s.update(train_in_two_processes(half, out, x_o, det, progress))
        chain.cfg = half  # loaded at their processes' threads: r3's boxes as they were
        chain.train_r3(det, x_o)
        chain.train_plain()
        chain.cfg = cfg
        torch.set_num_threads(threads_for(cfg.threads, 0))
        stage("r3_plain_wall")
    else:
        chain.cfg = alone  # r3 at the threads it began with
        torch.set_num_threads(threads_for(alone.threads, 0))
        chain.train_r3(det, x_o)
        chain.cfg = cfg
        torch.set_num_threads(threads_for(cfg.threads, 0))
        stage("r3")
        chain.train_plain()
        stage("plain_nre")
    rng = np.random.default_rng([cfg.seed, 99])
    grid = Grid.default(cfg.grid_sigma, cfg.grid_h, cfg.grid_n_step)
    post = chain.posteriors(x_o, det, grid, rng)
    stage("posteriors")
    cov, same_maps = coverage(chain, det, post["log_e_r4"], grid, rng)
    stage("coverage")
    names = ("r3", "r4", "combined", "plain_nre")
    if truth is not None:
        t_o = [truth[p] for p in PARAM_NAMES]
        at_o = chain.log_densities_at(x_o, t_o)
    summary = {
        "command": command,
        "wall_s": None,
        "n_simulations": int(sum(chain.n_simulations.values())),
        "simulations": chain.n_simulations,
        "truth": truth,
        "n_detected": len(det),
        "detections": det.to_dict(),
        # r3's truncation rounds: each round's steps and the box its theta was drawn from
        "r3_rounds": chain.r3_rounds_log,
        # the marginal mass in the box's outermost cells inside the prior: ~0 unless the box
        # cut the posterior
        "r3_box_edge_mass": chain.box_edge_mass(post),
        # E[r4]'s rounds of draws of p(S_det | I = 1): the total-variation distance
        # between consecutive rounds' r4-route posteriors, and the sources (all rounds)
        # drawn without the sensitivity, which never kept them
        "detections_factor": {
            "rounds": cfg.r4_rounds,
            "draws": cfg.r4_draws,
            "change_between_rounds": [round(c, 4) for c in chain.e_r4_change],
            "fallback_sources": chain.e_r4_fallbacks,
        },
        "posterior": {k: post[k].summary() for k in names},
        "widths_68": {k: {p: post[k].width(i) for i, p in enumerate(PARAM_NAMES)} for k in names},
        # the fraction of the prior box inside each joint 68% highest-density region
        "joint_volume_68": {k: post[k].hpd_volume(0.683) for k in names},
        # the credibility of the joint highest-density region whose edge passes the truth
        "truth_hpd_level": None
        if truth is None
        else {k: post[k].hpd_level(t_o, at_o[k]) for k in names},
        "coverage": cov,
        # mean 68% widths and joint 68% volumes of r3 alone and combined, over the maps of
        # the combined coverage check (drawn like the target)
        "widths_68_target_like_maps": same_maps,
        "n_coverage_sims": cfg.coverage_sims,
        "config": to_dict(cfg),
        # the networks copied from an earlier run (``reuse``), and why others were not
        "reused": reused,
        # the target's map summaries against maps of the prior, before any training
        "prior_check": prior,
    }
    samples = write_samples(out, post, rng, lambda t: chain.log_densities_on(x_o, t))
    det.write(out / "detections.fits")
    write_figures(out, chain, x_o, det, post, cov, truth)
    if cfg.predictive_maps:
        check, draws = posterior_predictive(
            chain, x_o, det, samples["theta"], samples["w_combined"], rng, cfg.predictive_maps
        )
        # the target's summaries against maps simulated at the combined posterior
        summary["posterior_predictive"] = check
        predictive_plot(out / "predictive.png", check, draws)
        warning = predictive_warning(check)
        if warning:
            warn_user(warning)
    stage("samples_and_figures")
    summary["samples"] = "posterior_samples.parquet"
    # the effective number of independent draws each estimator's weights are worth, and
    # the intervals read from the weighted samples (no grid in them: a check of the grid's)
    summary["samples_ess"] = samples["ess"]
    summary["samples_intervals"] = samples["intervals"]
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    # seconds per stage; a stage found finished in ``out`` (resumed) costs only its loading.
    # With ``parallel``, r3 (one process) overlaps the plain NRE (the other), and
    # ``r3_plain_wall`` is the wall time of the two together and of loading their networks
    summary["stage_s"] = stage_s
    summary.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(summary, indent=1, default=float)
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))
    return summary


# the parts of a run that do not depend on its target map: folders of trained networks, and
# the files r1's prior map and the pool are cached in
REUSABLE_NETWORKS = ("r1", "r2", "r4", "plain", "plain_head")


def _changed_settings(config: dict, current: dict) -> list[str]:
    """The settings (top-level fields of :class:`PopulationConfig`) that a stage's recorded
    ``config`` holds with other values than ``current`` (``to_dict`` of a config)."""
    return [k for k, v in config.items() if k in current and v != current[k]]


def reuse_run(cfg: PopulationConfig, out: str | Path, run: str | Path) -> dict:
    """Copy into the run folder ``out`` what the earlier run ``run`` trained that does not
    depend on its target map and that ``cfg`` would train the same way: r1 (and its prior
    map), the pool of full-model maps, r2, r4 and the plain NRE. A network is taken when it
    finished training and every setting it depends on is ``cfg``'s; one that ``out``
    already holds stays as it is. r3 depends on the target's detections: it trains anew.
    So a second map costs r3, the posteriors and the coverage checks, not the whole chain.

    Returns ``{"run": ..., "reused": [...], "not_reused": {name: why}}``, and warns when
    nothing was taken."""
    import shutil
    import zipfile

    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise ProbcatValueError(f"{run}: not a folder (--reuse takes an earlier population run)")
    if not any((run / n / "manifest.json").exists() for n in REUSABLE_NETWORKS):
        raise ProbcatValueError(
            f"{run}: holds no trained network of a population run (r1, r2, r4, plain)"
        )
    out = check_writable_dir(out)
    result = {"run": str(run), "reused": [], "not_reused": {}}
    if run.resolve() == out.resolve():
        return result  # the run itself: it resumes
    current, chain = to_dict(cfg), Chain(cfg, out, False)

    def copy(src: Path, name: str) -> None:
        tmp = out / f".reuse_{name}.tmp"  # a copy cut short leaves no half folder or file
        if tmp.is_dir():
            shutil.rmtree(tmp)
        if src.is_dir():
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.tmp"))
        else:
            shutil.copyfile(src, tmp)
        tmp.replace(out / name)

    for name in REUSABLE_NETWORKS:
        src = run / name
        if (out / name).exists():
            result["not_reused"][name] = f"{out / name} exists"
            continue
        if not (src / "manifest.json").exists():
            result["not_reused"][name] = "not finished there"
            continue
        try:
            config = json.loads((src / "manifest.json").read_text())["config"]
            changed = _changed_settings(config, current)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            result["not_reused"][name] = "its manifest.json is unreadable there"
            continue
        if changed:
            result["not_reused"][name] = f"of other settings there ({', '.join(changed)})"
            continue
        copy(src, name)
        result["reused"].append(name)
        if name == "r1":  # the prior map r1's detections are read against
            prior = chain.prior_map_path().name
            if (run / prior).exists() and not (out / prior).exists():
                copy(run / prior, prior)
    pool, key = run / "pool.npz", json.dumps(chain._keys("pool"), sort_keys=True)
    if (out / "pool.npz").exists():
        result["not_reused"]["pool"] = f"{out / 'pool.npz'} exists"
    elif pool.exists():
        try:
            with np.load(pool) as data:
                same = "key" in data.files and str(data["key"]) == key
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            same = None
        if same:
            copy(pool, "pool.npz")
            result["reused"].append("pool")
        else:
            why = "unreadable" if same is None else "of other settings"
            result["not_reused"]["pool"] = f"{why} there"
    else:
        result["not_reused"]["pool"] = "not there"
    if not result["reused"]:
        why = "; ".join(f"{k}: {v}" for k, v in result["not_reused"].items())
        warn_user(f"{run}: nothing reused ({why})")
    return result


def train_targeted(chain: Chain, x_o: np.ndarray, stage=None, r3: bool = True) -> Detections:
    """r1, the pool, r2 and r4, and (``r3``) r3 for the target map ``x_o`` (trained, or
    loaded from the run); returns the target's detections. ``stage(name)`` is called as
    each stage ends."""
    stage = stage or (lambda name: None)
    chain.train_r1()
    det = chain.detect(x_o[None])[0]
    stage("r1")
    pool = chain.pool()
    stage("pool")
    chain.train_r2_r4(pool)
    stage("r2_r4")
    if r3:
        chain.train_r3(det, x_o)
        stage("r3")
    return det


def train_in_two_processes(cfg: PopulationConfig, out: Path, x_o: np.ndarray,
                           det: Detections, progress: bool) -> dict:  # fmt: skip
    """Train r3 for the target map ``x_o`` and its detections ``det`` (r1, the pool, r2 and r4
    already trained in ``out``) and the plain NRE in two processes at once (``python -m
    probcat.population.worker``), each with ``cfg.threads`` threads, into the run ``out``;
    returns the seconds each took in its own process. The r3 process shows its progress
    bars; the plain NRE's writes its messages to ``out/workers/plain.log``. A failed
    process stops the other; its error is raised here."""
    import os
    import pickle
    import site
    import subprocess
    import sys

    import probcat

    work = out / "workers"
    work.mkdir(exist_ok=True)
    target = pickle.dumps({"x_o": x_o, "det": det})
    atomic_write(work / "target.pkl", lambda tmp: Path(tmp).write_bytes(target))
    env = dict(os.environ)
    src = str(Path(probcat.__file__).resolve().parents[1])  # this probcat, in the children
    installed = [*site.getsitepackages(), site.getusersitepackages()]
    if src not in {str(Path(d).resolve()) for d in installed}:  # a source tree: put it first
        env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in [env.get("PYTHONPATH")] if p])
    procs, log = {}, None
    try:
        log = open(work / "plain.log", "w")
        for part in ("plain", "r3"):
            spec = {"config": to_dict(cfg), "out": str(out), "part": part,
                    "progress": progress and part == "r3"}  # fmt: skip
            path = work / f"{part}.json"
            atomic_write(path, lambda tmp, d=spec: Path(tmp).write_text(json.dumps(d)))
            for old in (work / f"{part}.error", work / f"{part}_stages.json"):
                old.unlink(missing_ok=True)
            procs[part] = subprocess.Popen(
                [sys.executable, "-m", "probcat.population.worker", str(path)], env=env,
                stdout=subprocess.DEVNULL, stderr=log if part == "plain" else None,
            )  # fmt: skip
        told = False
        # until both finish, or one fails (the other is stopped below)
        while None in (codes := {k: p.poll() for k, p in procs.items()}).values():
            if any(c not in (None, 0) for c in codes.values()):
                break
            if progress and not told and codes["r3"] == 0:
                told = True
                print(f"r3 done; the plain NRE is still training in its own process "
                      f"(messages: {work / 'plain.log'})", file=sys.stderr)  # fmt: skip
            time.sleep(0.5)
        for part, code in codes.items():
            if code not in (None, 0):
                err = work / f"{part}.error"
                if err.exists():
                    raise ProbcatValueError(err.read_text().strip())
                where = "its messages above" if part == "r3" else work / "plain.log"
                what = "r3" if part == "r3" else "the plain NRE"
                raise RuntimeError(
                    f"the process training {what} stopped (exit {code}); see {where}"
                )
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if log is not None:
            log.close()
    times = {}
    for part in ("r3", "plain"):
        times.update(json.loads((work / f"{part}_stages.json").read_text()))
    return times


def write_samples(out: Path, post: dict, rng, log_density, n: int = 20000) -> dict:
    """Weighted posterior samples (``posterior_samples.parquet``): ``n`` points shared by
    the four estimators, drawn where their posteriors put mass, with each estimator's
    importance weights from its own density at the points (``log_density``, e.g.
    :meth:`Chain.log_densities_on`; :func:`~probcat.population.inference.weighted_samples`).
    Returns, per estimator, the samples' effective size (``ess``) and the central 68% and
    95% intervals of each parameter read from them (``intervals``): with no grid in them,
    they check the grid's intervals."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ("r3", "r4", "combined", "plain_nre")
    theta, weights, ess = weighted_samples({k: post[k] for k in names}, log_density, rng, n)
    cols = {name: theta[:, k] for k, name in enumerate(PARAM_NAMES)}
    cols.update({f"w_{k}": weights[k] for k in names})
    table = pa.table(cols)
    atomic_write(out / "posterior_samples.parquet", lambda tmp: pq.write_table(table, tmp))
    intervals = {
        k: {
            p: {
                "interval_68": list(weighted_interval(theta[:, i], weights[k], 0.683)),
                "interval_95": list(weighted_interval(theta[:, i], weights[k], 0.954)),
            }
            for i, p in enumerate(PARAM_NAMES)
        }
        for k in names
    }
    return {
        "ess": {k: round(v, 1) for k, v in ess.items()},
        "intervals": intervals,
        "theta": theta,
        "w_combined": weights["combined"],
    }


def posterior_predictive(chain, x_o, det, theta, weights, rng, n: int, chunk: int = 64):
    """Posterior predictive check (:mod:`probcat.population.predictive`): ``n`` populations
    drawn from weighted samples ``theta`` ``(m, 3)`` (weights summing to 1; the combined
    posterior's), a full-model map simulated at each and run through the chain's detector,
    and the target's summaries ``x_o``, ``det`` compared with theirs. Returns the check (per
    summary: observed value, predictive ranges, p-value) and the predictive draws."""
    pick = theta[rng.choice(len(theta), size=n, p=weights)]
    pick[:, 0] = np.round(pick[:, 0])  # whole numbers of sources
    _, maps, _ = simulate(rng, n, pick)
    n_det = [len(d) for i in range(0, n, chunk) for d in chain.detect(maps[i : i + chunk])]
    draws = map_statistics(maps, n_det)
    return predictive_pvalues(map_statistics(x_o[None], [len(det)]), draws), draws
