"""The whole population chain on a tiny budget (plumbing, not quality), and its CLI."""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import benchmark_module

from probcat.cli import main
from probcat.config import from_dict
from probcat.errors import ProbcatValueError
from probcat.population.chain import (
    Chain,
    NetConfig,
    PopulationConfig,
    run_chain,
    simulated_target,
)
from probcat.weights import sha256

# the chain on a budget of seconds (also read by benchmarks/_fuzz.py)
TINY_YAML = (
    Path(__file__).parents[1] / "benchmarks" / "configs" / "population_tiny.yaml"
).read_text()


@pytest.mark.slow
def test_chain_writes_every_output_and_resumes(tmp_path, monkeypatch):
    cfg = PopulationConfig(
        r1=NetConfig(6, 2, 2e-3), r1_crop=40, r1_channels=4, pool_maps=24,
        r2=NetConfig(5, 32, 2e-3), r3=NetConfig(5, 4, 1e-3), r4=NetConfig(5, 8, 1e-3),
        head=NetConfig(5, 8, 1e-3), head_maps=16, round_head=NetConfig(50, 8, 1e-2),
        round_head_maps=16, r3_bound_eps=0.5,  # a box narrower than the prior, even here
        r4_draws=2, prior_draws=50, coverage_sims=6, predictive_maps=20, prior_check_maps=50,
        grid_n_step=50,
        grid_sigma=5, grid_h=5, threads=2,  # r3 and the plain NRE: two processes of 1
    )  # fmt: skip
    out = tmp_path / "population_run"  # the folder docs/population.md reads
    s = run_chain(cfg, out, target_seed=3, progress=False, command="test")
    for name in ("summary.json", "posterior_samples.parquet", "detections.fits",
                 "detection_map.png", "corner.png", "coverage.png",
                 "targeted_vs_full.png", "predictive.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert set(s["posterior"]) == {"r3", "r4", "combined", "plain_nre"}
    ppc = s["posterior_predictive"]  # the target against maps at the combined posterior
    assert set(ppc) == {"total_flux", "n_detected", "l_rms", "b_rms", "pixel_999"}
    assert all(0.0 <= c["p_value"] <= 1.0 for c in ppc.values())
    assert ppc["total_flux"]["observed"] == pytest.approx(float(simulated_target(3)[0].sum()))
    prior = s["prior_check"]  # the target against prior maps, before the training
    assert prior["n_maps"] == 50 and prior["off_lattice_fraction"] == 0.0
    assert prior["statistics"]["total_flux"]["observed"] == ppc["total_flux"]["observed"]
    for est in s["posterior"].values():
        for p in ("N", "sigma", "h"):
            lo, hi = est[p]["interval_95"]
            assert lo <= est[p]["mean"] <= hi
    assert set(s["coverage"]["combined"]["N"]) >= {"0.683", "0.954"}
    budget = s["simulations"]
    assert budget["plain"] == budget["r3"] + budget["pool"]  # equal simulation budget
    assert budget["r3"] == 5 * 4 + 16 + 16  # first stage, round head, head
    assert s["n_simulations"] == sum(budget.values())
    assert json.loads((out / "summary.json").read_text())["truth"] == s["truth"]
    # every stage timed once, in order; r3 (one process) and the plain NRE (the other)
    # overlap, within the wall time of the two (r3_plain_wall), and the rest adds up
    stages = s["stage_s"]
    assert list(stages) == ["r1", "pool", "r2_r4", "r3", "plain_nre", "r3_plain_wall",
                            "posteriors", "coverage", "samples_and_figures"]  # fmt: skip
    assert min(stages.values()) >= 0
    assert max(stages["r3"], stages["plain_nre"]) <= stages["r3_plain_wall"] + 0.5
    rest = [v for k, v in stages.items() if k not in ("r3", "plain_nre")]
    assert sum(rest) <= s["wall_s"] + 0.5
    # a rerun resumes: no network trains again
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")}
    names = {p.parent.name for p in before}
    # r1, r2, r4, r3 (two truncation rounds, the first round's box head, its head) and
    # plain (two stages)
    assert len(before) == 9 and "plain_head" in names
    assert sum(n.startswith("r3_") for n in names) == 4
    assert sum(n.endswith("_boxhead") for n in names) == 1
    # the second round drew theta inside the box of the first round's posterior, which r3
    # and the combined posterior are confined to
    rounds = s["r3_rounds"]
    assert [r["steps"] for r in rounds] == [3, 2] and rounds[0]["prior_fraction"] == 1.0
    box = rounds[1]["bounds"]
    for est in ("r3", "combined"):
        for p in ("N", "sigma", "h"):
            lo, hi = s["posterior"][est][p]["interval_95"]
            assert box[p][0] <= lo <= hi <= box[p][1]
    # the weighted samples: each estimator's weights sum to 1, and r3's and the
    # combination's vanish outside r3's box (N: r3 draws whole numbers, each standing for
    # its unit interval)
    samples = pd.read_parquet(out / "posterior_samples.parquet")
    assert len(samples) == 20000
    for est in s["posterior"]:
        assert samples[f"w_{est}"].sum() == pytest.approx(1.0)
        assert s["samples_ess"][est] >= 1
        for p in ("N", "sigma", "h"):
            lo, hi = s["samples_intervals"][est][p]["interval_95"]
            assert samples[p].min() <= lo <= hi <= samples[p].max()
    slack = {"N": 0.5, "sigma": 0.0, "h": 0.0}
    outside = np.zeros(len(samples), bool)
    for p in ("N", "sigma", "h"):
        outside |= (samples[p] < box[p][0] - slack[p]) | (samples[p] > box[p][1] + slack[p])
    assert outside.any()  # r4 and the plain NRE put mass there
    for est in ("r3", "combined"):
        assert samples[f"w_{est}"][outside].sum() == 0.0
    # docs/population.md's snippet reads them
    monkeypatch.chdir(tmp_path)
    doc = Path(__file__).resolve().parents[1] / "docs" / "population.md"
    (code,) = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    namespace = {}
    exec(compile(code, str(doc), "exec"), namespace)
    lo, hi = s["posterior"]["combined"]["N"]["interval_95"]
    assert lo <= namespace["n_mean"] <= hi and len(namespace["draws"]) == 4000
    assert namespace["ess"] == s["samples_ess"]["combined"]
    # that box is the posterior of the target by the first round's network with the head of
    # its box stage (recomputed here from their checkpoints), not by its own head
    assert box_from_checkpoints(cfg, out, s, "_boxhead") == box
    assert box_from_checkpoints(cfg, out, s, None) != box  # (the two differ on this target)
    run_chain(cfg, out, target_seed=3, progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")} == before
    # the same command in a fresh folder reproduces every network and number to the bit
    again = run_chain(cfg, tmp_path / "again", target_seed=3, progress=False, command="test")
    assert again["posterior"] == s["posterior"] and again["coverage"] == s["coverage"]
    for path in before:
        twin = tmp_path / "again" / path.relative_to(out)
        a, b = (torch.load(p, weights_only=False)["model"] for p in (path, twin))
        assert all(torch.equal(v, b[k]) for k, v in a.items()), path.parent.name
    # the plain NRE's process trained what one process of its one thread trains
    one = replace(cfg, threads=1, parallel=False)
    a = Chain(one, tmp_path / "one", progress=False).plain_first_stage().model.state_dict()
    b = torch.load(out / "plain" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.slow
def test_chain_process_error_is_one_clear_line(tmp_path):
    # a probcat error in one of the two training processes (here: the run's plain NRE was
    # trained with other settings) reaches the caller as that one-line error, and the other
    # process stops
    cfg = replace(from_dict(PopulationConfig, yaml.safe_load(TINY_YAML)), threads=2)
    out = tmp_path / "run"
    Chain(cfg, out, progress=False).plain_first_stage()
    other = replace(cfg, r3=replace(cfg.r3, lr=cfg.r3.lr / 2))
    with pytest.raises(ProbcatValueError, match="plain.*checkpoint of a different config"):
        run_chain(other, out, target_seed=3, progress=False)
    assert "\n" not in (out / "workers" / "plain.error").read_text()


def box_from_checkpoints(cfg, out, s, head_suffix, seed=3):
    """The truncation box of the target of ``s`` from r3's first-round network in run
    ``out``, with the head of folder ``<round 1>{head_suffix}`` (None: its own head)."""
    import numpy as np

    from probcat.population.chain import Chain, Grid, simulated_target
    from probcat.population.inference import Posterior, truncation_bounds
    from probcat.population.networks import MapRatioNet
    from probcat.population.simulator import PARAM_NAMES

    (first,) = [p for p in out.glob("r3_*") if p.name.count("_") == 1]
    net = MapRatioNet()
    net.load_state_dict(torch.load(first / "checkpoint.pt", weights_only=False)["model"])
    if head_suffix is not None:
        head = out / (first.name + head_suffix) / "checkpoint.pt"
        net.head.load_state_dict(torch.load(head, weights_only=False)["model"])
    net.eval()
    grid = Grid.default(cfg.grid_sigma, cfg.grid_h, cfg.grid_n_step)
    x_o, _ = simulated_target(seed)
    log_r = Chain(cfg, out, progress=False).log_r_map(net, x_o[None], grid)[0]
    n_ok = grid.points[:, 0] >= s["n_detected"]
    box = truncation_bounds(Posterior(grid, np.where(n_ok, log_r, -np.inf)), cfg.r3_bound_eps)
    return {p: box[i].tolist() for i, p in enumerate(PARAM_NAMES)}


@pytest.mark.slow
def test_population_cli(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    rc = main(["population", "--seed", "4", "-c", str(cfg), "-o", str(tmp_path / "o"), "-q"])
    assert rc == 0, capsys.readouterr().err
    assert "combined posterior" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, msg",
    [
        ([], "exactly one of --seed"),
        (["--seed", "1", "--image", "x.fits"], "exactly one of --seed"),
        (["--seed", "-1"], "--seed must lie"),
        (["--seed", "1", "-c", "BAD"], "r3.stpes"),
        (["--seed", "1", "-o", "FILE"], "FILE: is a file; give a directory for the output"),
    ],
)
def test_population_cli_errors(tmp_path, capsys, args, msg):
    bad = tmp_path / "bad.yaml"
    bad.write_text("r3: {stpes: 5}\n")
    (tmp_path / "FILE").write_text("x")
    args = [str(bad) if a == "BAD" else str(tmp_path / a) if a == "FILE" else a for a in args]
    msg = msg.replace("FILE", str(tmp_path / "FILE"))
    out = [] if "-o" in args else ["-o", str(tmp_path / "o")]
    rc = main(["population", *args, *out])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1


def test_any_pixel_detector_can_fill_r1s_role(tmp_path):
    """A detector with per-pixel probabilities (here an oracle made from the truth)
    replaces the r1 network: detections come from its probabilities."""
    import numpy as np

    from probcat.population.chain import Chain
    from probcat.population.detection import THRESHOLDS_LOG10, pixel_labels, prior_map
    from probcat.population.simulator import Sources, render

    src = Sources(np.zeros(3, int), np.array([100.0, 0.5, 300.0]), np.array([0.0, 10.0, -20.0]),
                  np.array([0.0, 5.0, 3.0]))  # fmt: skip
    maps = render(np.random.default_rng(0), src, 1)

    class Oracle:
        def posterior(self, m):
            return pixel_labels(src, len(m)).astype(float) * 0.99

    chain = Chain(PopulationConfig(), tmp_path, progress=False)
    chain.detector = Oracle()
    chain.prior = prior_map(50)
    det = chain.detect(maps)[0]
    assert len(det) == 2 and THRESHOLDS_LOG10[chain.cfg.k_detect] < 2  # the two bright ones
    assert sorted(np.round(det.l).tolist()) == [-20.0, 0.0]


@pytest.mark.slow
def test_population_cli_reads_a_fits_map(tmp_path, capsys):
    import numpy as np
    from astropy.io import fits

    from probcat.population.simulator import simulate

    _, maps, _ = simulate(np.random.default_rng(0), 1)
    fits.PrimaryHDU(maps[0]).writeto(tmp_path / "map.fits")
    fits.PrimaryHDU(maps[0][:100]).writeto(tmp_path / "small.fits")
    rc = main(["population", "--image", str(tmp_path / "small.fits"), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "small.fits: the map must be 128x128 pixels, not 100x128" in err
    assert not (tmp_path / "o").exists()
    fits.PrimaryHDU(np.stack([maps[0], maps[0]])).writeto(tmp_path / "cube.fits")
    rc = main(["population", "--image", str(tmp_path / "cube.fits"), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "cube.fits: holds 2 image planes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    args = ["population", "--image", str(tmp_path / "map.fits"), "-c", str(cfg), "-q"]
    rc = main([*args, "-o", str(tmp_path / "o")])
    assert rc == 0 and "model's prior" not in capsys.readouterr().err  # a map it made
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["truth"] is None and "combined" in summary["posterior"]
    # negative pixels: the model never makes them
    fits.PrimaryHDU(maps[0] - 0.5).writeto(tmp_path / "neg.fits")
    rc = main(["population", "--image", str(tmp_path / "neg.fits"), "-o", str(tmp_path / "n")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "neg.fits: the map has" in err and "negative pixel(s)" in err
    assert not (tmp_path / "n").exists()
    # an empty map: refused before an hour of training, not only warned of
    fits.PrimaryHDU(np.zeros_like(maps[0])).writeto(tmp_path / "zero.fits")
    rc = main(["population", "--image", str(tmp_path / "zero.fits"), "-o", str(tmp_path / "z")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "zero.fits: the map is empty (every pixel 0)" in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "z").exists()
    # the map in counts instead of counts over 100: said before the training starts
    fits.PrimaryHDU(maps[0] * 100).writeto(tmp_path / "counts.fits")
    args = ["population", "--image", str(tmp_path / "counts.fits"), "-c", str(cfg), "-q"]
    assert main([*args, "-o", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: 100% of its non-zero pixels are whole numbers" in err
    assert "check the map's units" in err


@pytest.mark.slow
def test_a_new_target_retrains_only_what_depends_on_it(tmp_path):
    """r1, the pool, r2, r4 and the plain NRE do not depend on the target: a run for
    another target in the same folder reuses them and retrains r3 (targeted)."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = tmp_path / "o"
    assert main(["population", "--seed", "4", "-c", str(cfg), "-o", str(out), "-q"]) == 0
    stamp = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")}
    assert main(["population", "--seed", "5", "-c", str(cfg), "-o", str(out), "-q"]) == 0
    again = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")}
    assert {k: again[k] for k in stamp} == stamp  # nothing retrained...
    new = set(again) - set(stamp)  # ...but r3 (two rounds, box head, head), for the new target
    assert len(new) == 4 and all(k.startswith("r3_") for k in new)


@pytest.mark.slow
def test_reuse_takes_what_does_not_depend_on_the_target(tmp_path, capsys):
    """--reuse: a second map's run, in its own folder, copies r1 (and its prior map), the
    pool, r2, r4 and the plain NRE of an earlier run, the very networks a fresh run would
    train; r3 trains anew, alone, with every thread (recorded, so a resumed run continues
    so). A network trained with other settings is not taken, and a path that holds no run
    is a one-line error."""
    from probcat.config import load_yaml
    from probcat.population.chain import reuse_run

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML + "threads: 2\n")  # r3 and the plain NRE: two processes
    cfg = load_yaml(PopulationConfig, path)
    assert cfg.threads == 2 and cfg.parallel
    a, b = tmp_path / "a", tmp_path / "b"
    run_chain(cfg, a, target_seed=4, progress=False)
    args = ["population", "--seed", "5", "-c", str(path), "-q"]
    assert main([*args, "-o", str(b), "--reuse", str(a)]) == 0
    assert "reused from" in capsys.readouterr().out
    s = json.loads((b / "summary.json").read_text())
    copied = ["r1", "r2", "r4", "plain", "plain_head"]
    assert s["reused"] == {"run": str(a), "reused": [*copied, "pool"], "not_reused": {}}
    for name in copied:  # the same training states: copied, not trained again
        ckpt = Path(name, "checkpoint.pt")
        assert (b / ckpt).read_bytes() == (a / ckpt).read_bytes(), name
    assert (b / "pool.npz").read_bytes() == (a / "pool.npz").read_bytes()
    r3 = [p.name for p in b.iterdir() if p.name.startswith("r3_") and p.is_dir()]
    assert len(r3) == 4 and not set(r3) & {p.name for p in a.iterdir()}  # this target's own
    # r3 alone in this process, with both threads: what a one-process run trains
    assert list(s["stage_s"])[:5] == ["r1", "pool", "r2_r4", "r3", "plain_nre"]
    (record,) = b.glob("r3_*_threads.json")
    assert json.loads(record.read_text()) == {"threads": 2}
    one = run_chain(replace(cfg, parallel=False), tmp_path / "one", target_seed=5,
                    progress=False)  # fmt: skip
    for key in ("posterior", "coverage"):
        for est in ("r3", "r4", "combined"):  # (its plain NRE trained with 2 threads, not 1)
            assert s[key][est] == json.loads(json.dumps(one[key][est], default=float))
    # a rerun resumes at the recorded threads: nothing trains again, the same numbers
    before = {p: p.stat().st_mtime_ns for p in b.glob("*/checkpoint.pt")}
    again = run_chain(cfg, b, target_seed=5, progress=False, reuse=b)  # (the run itself)
    assert {p: p.stat().st_mtime_ns for p in b.glob("*/checkpoint.pt")} == before
    assert json.loads(json.dumps(again["posterior"], default=float)) == s["posterior"]
    # r4 of other settings (and so nothing else) trains anew; a folder's own networks stay
    other = replace(cfg, r4=NetConfig(6, 8, 1e-3))
    got = reuse_run(other, tmp_path / "c", a)
    assert got["reused"] == ["r1", "r2", "plain", "plain_head", "pool"]
    assert got["not_reused"] == {"r4": "of other settings there (r4)"}
    assert not (tmp_path / "c" / "r4").exists()
    again = reuse_run(cfg, tmp_path / "c", a)
    assert again["reused"] == ["r4"] and again["not_reused"]["r1"].endswith("exists")
    assert not list((tmp_path / "c").glob(".reuse_*"))  # no temporary copy left behind
    with pytest.warns(UserWarning, match="nothing reused .*r1: of other settings there .seed"):
        got = reuse_run(replace(cfg, seed=1), tmp_path / "d", a)  # every network reads it
    assert got["reused"] == [] and set(got["not_reused"]) == {*copied, "pool"}
    assert reuse_run(cfg, a, a)["reused"] == []  # the run itself: it resumes
    (a / "r2" / "manifest.json").write_text("{")  # damaged files are not taken
    (a / "pool.npz").write_bytes(b"PK not a zip")
    got = reuse_run(cfg, tmp_path / "f", a)
    assert got["reused"] == ["r1", "r4", "plain", "plain_head"]
    assert got["not_reused"] == {"r2": "its manifest.json is unreadable there",
                                 "pool": "unreadable there"}  # fmt: skip
    for bad, msg in ((tmp_path / "none", "not a folder"), (tmp_path / "d", "holds no trained")):
        rc = main([*args, "-o", str(tmp_path / "e"), "--reuse", str(bad)])
        assert rc == 2 and msg in capsys.readouterr().err
        assert not (tmp_path / "e").exists()  # nothing written before the check


def test_a_budget_beyond_the_machines_memory_is_refused_before_anything_runs(tmp_path):
    from probcat.population.chain import E_R4_BYTES_PER_PAIR, PopulationConfig, run_chain
    from probcat.runtime import memory_limit

    draws = int(memory_limit()[0] / (158_301 * E_R4_BYTES_PER_PAIR)) + 1  # the default grid
    with pytest.raises(ValueError, match=f"E\\[r4\\] of {draws:,} detected lists on 158,301"):
        run_chain(PopulationConfig(r4_draws=draws), tmp_path / "run", target_seed=1)
    assert not (tmp_path / "run").exists()
    cfg = PopulationConfig(r4_draws=draws - 1)  # fits: on to the next check
    with pytest.raises(ValueError, match="nowhere: not a folder"):
        run_chain(cfg, tmp_path / "run", target_seed=1, reuse=tmp_path / "nowhere")


def test_config_sections_keep_their_defaults(tmp_path):
    from probcat.config import load_yaml

    p = tmp_path / "c.yaml"
    p.write_text("r1: {steps: 100}\npool_maps: 50\n")
    cfg = load_yaml(PopulationConfig, p)
    assert cfg.r1 == NetConfig(100, PopulationConfig().r1.batch, PopulationConfig().r1.lr)
    maps = cfg.r3.steps * cfg.r3.batch + 50 + cfg.round_head_maps  # round heads: one round
    assert cfg.pool_maps == 50 and cfg.plain_steps == -(-maps // 64)
    p.write_text("detect_threshold_log10: 1.0\n")
    with pytest.raises(ValueError, match="one of the r1 thresholds"):
        load_yaml(PopulationConfig, p)
    # a negative seed crashed numpy with a traceback once r1 had trained (minutes)
    for bad in (-1, 2**62):
        p.write_text(f"seed: {bad}\n")
        with pytest.raises(ValueError, match=r"c.yaml: seed must lie in \[0, 2\^62\)"):
            load_yaml(PopulationConfig, p)
    p.write_text(f"seed: {2**62 - 1}\n")
    assert load_yaml(PopulationConfig, p).seed == 2**62 - 1
    # each of these went through and failed (or trained on NaN) hours later
    for text, msg in (
        ("r3: {lr: .inf}", "r3: steps >= 1, batch >= 2 and lr > 0 needed"),
        ("head: {balance: .nan}", r"head\.balance must be >= 0"),
        ("r4: {balance: -1.0}", r"r4\.balance must be >= 0"),
        ("r1_channels: 0", "r1_channels must be >= 1"),
        ("grid_n_step: 0", "grid_n_step must be >= 1"),
        ("grid_sigma: 1", "grid_sigma and grid_h must be >= 2 points"),
        ("predictive_maps: -1", "predictive_maps must be >= 0"),
        ("prior_check_maps: -1", "prior_check_maps must be >= 0"),
        ("round_head_maps: -1", "round_head_maps must be >= 0"),
        ("r3: {steps: 1}\nr3_rounds: 2", "r3.steps must be at least r3_rounds"),
        ("r3_bound_eps: 1.0", r"r3_bound_eps must lie in \(0, 1\)"),
        ("detect_min_mass: 0.0", r"detect_min_mass must lie in \(0, 1\]"),
        ("r1_crop: 4", "r1_crop must exceed"),
    ):
        p.write_text(text + "\n")
        with pytest.raises(ValueError, match=msg):
            load_yaml(PopulationConfig, p)


def test_detected_lists_lie_in_their_regions_with_the_population_s_fluxes(tmp_path):
    """Chain.draw_detected_lists with a step sensitivity (detected iff F >= F_th): every
    source inside its +-1 degree region, fluxes logNormal(1, sigma) above F_th for the
    list's own sigma; a sensitivity that never detects falls back to F >= F_th and is
    counted."""
    import numpy as np
    from scipy import stats

    from probcat.population.chain import Chain
    from probcat.population.detection import Detections

    det = Detections(np.zeros(3), np.zeros(3), np.array([-30.0, 0.0, 10.0]),
                     np.array([5.0, 15.0, -2.0]), np.ones(3), np.ones(3), 1.18)  # fmt: skip
    f_th = 10**1.18
    chain = Chain(PopulationConfig(), tmp_path, progress=False)
    chain.detected_fluxes = np.geomspace(2.0, 500.0, 1000)
    chain.sensitivity = lambda f, l, b, theta: (f >= f_th).astype(float)
    rng = np.random.default_rng(0)
    theta = np.repeat([[100.0, 1.2, 1.0], [100.0, 2.8, 19.0]], 2000, axis=0)
    lists = np.stack(chain.draw_detected_lists(rng, det, theta))  # (4000, 3, 3)
    l, b = lists[..., 1] * 40, lists[..., 2] * 40
    assert (np.abs(l - det.l) <= 1 + 1e-6).all() and (np.abs(b - det.b) <= 1 + 1e-6).all()
    assert (lists[..., 0] >= 1.18 - 1e-6).all() and chain.e_r4_fallbacks == 0
    for rows, sigma in ((slice(0, 2000), 1.2), (slice(2000, 4000), 2.8)):
        ref = stats.truncnorm((np.log(f_th) - 1) / sigma, np.inf, loc=1, scale=sigma).mean()
        assert np.mean(lists[rows, :, 0] * np.log(10)) == pytest.approx(ref, abs=0.03)
    chain.sensitivity = lambda f, l, b, theta: np.zeros(len(f))
    lists = np.stack(chain.draw_detected_lists(rng, det, theta[:5]))
    assert chain.e_r4_fallbacks == 15 and (lists[..., 0] >= 1.18 - 1e-6).all()


def test_population_targets_resume_only_targets_of_the_same_budget_and_networks(tmp_path):
    bench = benchmark_module("population_targets")
    cfg = PopulationConfig()
    shared = {"r1": "a" * 64, "r4": "b" * 64}
    row = {"seed": 4, "truth": {"N": 12.0}, "wall_s": 3.5, "r3": {"inside": [True, False]}}
    assert bench.cached_target(tmp_path, 4, cfg, shared) is None  # nothing finished yet
    bench.save_target(tmp_path, 4, cfg, shared, row)
    assert bench.cached_target(tmp_path, 4, cfg, shared) == row
    assert bench.cached_target(tmp_path, 5, cfg, shared) is None  # another target
    other = PopulationConfig(r4_draws=cfg.r4_draws + 1)
    assert bench.cached_target(tmp_path, 4, other, shared) is None  # another budget
    assert bench.cached_target(tmp_path, 4, cfg, {**shared, "r4": "c" * 64}) is None  # retrained
    (tmp_path / "targets" / "seed_4.json").write_text("{truncated")
    assert bench.cached_target(tmp_path, 4, cfg, shared) is None  # unreadable: run it again

    # the networks' key is their values: a copy (as a resumed run reloads them) keeps it
    from probcat.population.chain import Chain
    from probcat.population.networks import DetectionNet as R1Net
    from probcat.population.networks import MapRatioNet, SensitivityNet, SetRatioNet

    def chain_with(seed):
        torch.manual_seed(seed)
        c = Chain(cfg, tmp_path, progress=False)
        c.r1, c.r2, c.r4, c.plain = (
            R1Net(channels=4),
            SensitivityNet(8),
            SetRatioNet(8, 8),
            MapRatioNet(4, 8),
        )
        return c

    a, b, other = chain_with(0), chain_with(0), chain_with(1)
    assert bench.shared_networks(a) == bench.shared_networks(b)
    assert set(bench.shared_networks(a)) == {"r1", "r2", "r4", "plain"}
    assert all(bench.shared_networks(a)[k] != v for k, v in bench.shared_networks(other).items())


@pytest.mark.device_default  # what a machine with a GPU would do
def test_the_chain_trains_on_the_cpu_even_where_a_gpu_is_the_default(tmp_path, monkeypatch):
    import probcat.population.chain as C

    seen = {}
    monkeypatch.setattr(C, "fit", lambda *a, **kw: seen.update(kw))

    class Task:
        kind = "population_r2"
        model = torch.nn.Linear(1, 1)

    C.Chain(PopulationConfig(), tmp_path)._fit(Task(), 3, 2, {})
    assert seen["device"] == "cpu" and seen["settings"].seed is not None


@pytest.mark.slow
def test_shipped_networks_give_what_reuse_gives(tmp_path):
    """The networks that do not depend on the target, packed as probcat ships its own (here
    those of a tiny run), go into a run as finished networks (weights and manifest, no
    checkpoint) with the pool's detected sources only; the run then gets the very r3,
    posteriors and coverage that ``reuse`` of the packed run gives. Settings they were not
    trained with train anew, and a detected-only pool is drawn whole again where r2 must
    train on it."""
    import shutil

    from probcat.config import load_yaml
    from probcat.population.shipped import NETWORKS, install, pack

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    cfg = load_yaml(PopulationConfig, path)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run_chain(cfg, a, target_seed=4, progress=False, shipped=False)["reused"] is None
    packed = tmp_path / "population.pt"
    pack(a, packed)
    sb = run_chain(cfg, b, target_seed=5, progress=False, shipped=packed)
    assert sb["reused"]["reused"] == [*NETWORKS, "pool"] and not sb["reused"]["not_reused"]
    assert not [p for p in b.glob("*/checkpoint.pt") if p.parent.name in NETWORKS]
    sc = run_chain(cfg, c, target_seed=5, progress=False, reuse=a)
    for key in ("posterior", "coverage"):
        for est in ("r3", "r4", "combined", "plain_nre"):
            assert sb[key][est] == sc[key][est], (key, est)
    with np.load(b / "pool.npz") as pool, np.load(a / "pool.npz") as whole:
        assert pool["detected_only"] and pool["detected"].all()
        det = whole["detected"]
        assert np.array_equal(pool["flux"], whole["flux"][det]) and det.sum() < len(det)
    # the manifests the run holds name the files beside them
    for name in NETWORKS:
        man = json.loads((b / name / "manifest.json").read_text())
        assert man["sha256"] == sha256(b / name / man["weights"])
    # r2 of other settings: it trains, and the detected-only pool is not taken for it
    got = install(replace(cfg, r2=NetConfig(7, 32, 2e-3)), tmp_path / "d", packed)
    assert got["reused"] == ["r1", "r4", "plain", "plain_head"]
    assert got["not_reused"]["r2"] == "of other settings (r2)" and "pool" in got["not_reused"]
    e = tmp_path / "e"
    e.mkdir()
    shutil.copyfile(b / "pool.npz", e / "pool.npz")
    chain = Chain(cfg, e, progress=False)
    chain.train_r1()
    assert not chain.pool()["detected"].all()  # the whole pool, drawn again


def test_the_shipped_networks_are_those_of_the_default_settings(tmp_path):
    """A run at the default settings takes every shipped network and the pool; they load
    into the chain's networks without training (no checkpoint appears)."""
    from probcat.population.shipped import NETWORKS, install

    cfg = PopulationConfig()
    got = install(cfg, tmp_path)
    assert got["reused"] == [*NETWORKS, "pool"], got["not_reused"]
    chain = Chain(cfg, tmp_path, progress=False)
    chain.train_r2_r4(chain.pool())
    chain.train_plain()
    assert chain.r2 is not None and chain.plain is not None
    assert not list(tmp_path.glob("*/checkpoint.pt"))
    assert chain.detected_fluxes.size > 0 and np.isfinite(chain.detected_fluxes).all()
