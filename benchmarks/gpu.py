"""GPU benchmark: the same images and the same training steps on the CPU and on a GPU, in
one run on one machine.

Inference: MAP detection of a 1000x1000 and a 4000x4000 LSST-i scene, 16 posterior catalog
samples of the 1000x1000 one, detection + photo-z PDFs of a 1000x1000 ugrizy scene, and
deblending + measurement of the 1000x1000 i scene's detections, each with the shipped
weights, timed on both devices (median of runs after a warm-up; CPU: every core, as
``threads="auto"`` gives) and compared: the two devices' catalogs matched within 0.5 px,
the largest differences of probability, position, redshift and flux.

Training: seconds per step of the detection and photo-z training loops
(:func:`probcat.train.loop.fit`, the shipped configs' networks and batch sizes, smaller
banks), on each device, and the seconds per step spent making the batches on the CPU
alone: what a GPU can gain while the data are simulated on the CPU.

Needs a CUDA GPU (a one-line error without one). Writes ``benchmarks/results/gpu.json`` and
``gpu.png``:

    .venv/bin/python benchmarks/gpu.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LABELS = ("cpu", "gpu")


def _timed(fn, runs: int) -> tuple[float, object]:
    out = fn()  # warm-up (and the result compared)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def _match(a, b, radius: float = 0.5):
    """Indices of ``a``'s and ``b``'s rows matched one to one within ``radius`` px: nearest
    neighbours (``probcat.metrics.detection.match``'s Hungarian matching holds an n × m
    distance matrix, too large for 25,000 sources a side)."""
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d, j = cKDTree(np.stack([b["x"], b["y"]], 1)).query(np.stack([a["x"], a["y"]], 1))
    i = np.flatnonzero(d <= radius)
    j = j[i]
    _, first = np.unique(j, return_index=True)
    return i[first], j[first]


def _compare(cpu, gpu, columns) -> dict:
    i, j = _match(cpu, gpu)
    out = {
        "n_cpu": len(cpu),
        "n_gpu": len(gpu),
        "matched_fraction": len(i) / max(len(cpu), len(gpu), 1),
        "position_max_abs_px": float(
            np.max(np.hypot(cpu["x"][i] - gpu["x"][j], cpu["y"][i] - gpu["y"][j]), initial=0)
        ),
    }
    for c in columns:
        d = np.abs(np.asarray(cpu[c][i], float) - np.asarray(gpu[c][j], float))
        d = d[np.isfinite(d)]
        out[f"{c}_max_abs"] = float(d.max(initial=0))
        out[f"{c}_median_abs"] = float(np.median(d)) if len(d) else None
    return out


def _scenes(seed: int):
    from probcat.simulate.datasets import Simulation, SimulationConfig
    from probcat.simulate.scene import SceneConfig, SceneSimulator

    def sim(**kw):
        cfg = SimulationConfig(recipe="blend", n=1, seed=seed, split="test", **kw)
        return Simulation(cfg, progress=False)

    i_bank = sim(bank_size=4000).bank
    rng = np.random.default_rng(seed)
    one_k = SceneSimulator(i_bank, SceneConfig(1000, 1000)).sample(rng).image
    four_k = SceneSimulator(i_bank, SceneConfig(4000, 4000)).sample(rng).image
    six = sim(bands="ugrizy", population="dc2", size=1000, bank_size=3000)
    scene, _ = six.scene(0)
    return one_k, four_k, scene.image, six.survey.noise_sigma.astype(np.float32)


def inference(args) -> dict:
    import probcat

    one_k, four_k, ugrizy, sigma = _scenes(args.seed)
    res: dict = {"seconds": {}, "agreement": {}}
    got: dict = {}
    for lab, dev in zip(LABELS, args.devices):
        det = probcat.load(device=dev)
        det6 = probcat.load("detection_lsst_ugrizy", device=dev)
        est = probcat.load("photoz_lsst_ugrizy", device=dev)
        deb = probcat.load("deblender_lsst_i", device=dev)
        planes = [est.bands.index(b) for b in det6.bands]
        xs = ugrizy / sigma[:, None, None]

        def photoz(det6=det6, est=est, planes=planes, xs=xs):
            cat = det6.catalog(ugrizy[planes], noise_sigma=sigma[planes])
            return est._estimate(xs, cat, None, True).catalog

        s = res["seconds"][lab] = {}
        s["detect_1k"], got[lab, "1k"] = _timed(lambda det=det: det.catalog(one_k), args.runs)
        s["detect_4k"], got[lab, "4k"] = _timed(lambda det=det: det.catalog(four_k), 1)
        s["samples_16_1k"], got[lab, "samples"] = _timed(
            lambda det=det: det.sample(one_k, 16, seed=0), 1
        )
        s["photoz_1k"], got[lab, "pz"] = _timed(photoz, args.runs)
        cat = got["cpu", "1k"]  # both devices deblend the same (CPU) detections
        s["deblend_measure_1k"], got[lab, "deb"] = _timed(
            lambda deb=deb, cat=cat: deb.measure(one_k, cat), args.runs
        )
        print(lab, json.dumps(s), flush=True)
    a = res["agreement"]
    a["detect_1k"] = _compare(got["cpu", "1k"], got["gpu", "1k"], ["prob", "galaxy_prob"])
    a["detect_4k"] = _compare(got["cpu", "4k"], got["gpu", "4k"], ["prob"])
    same = [
        len(c) == len(g) and np.allclose(c["x"], g["x"], atol=0.01)
        for c, g in zip(got["cpu", "samples"], got["gpu", "samples"])
    ]
    pairs = [_compare(c, g, []) for c, g in zip(got["cpu", "samples"], got["gpu", "samples"])]
    a["samples_16_1k"] = {
        "identical_fraction": float(np.mean(same)),
        "matched_fraction_mean": float(np.mean([q["matched_fraction"] for q in pairs])),
        "count_diff_max": int(max(abs(q["n_cpu"] - q["n_gpu"]) for q in pairs)),
        "n_samples": len(same),
    }
    pc, pg = got["cpu", "pz"], got["gpu", "pz"]
    a["photoz_1k"] = _compare(pc, pg, ["z_mode", "z_mean", "z_hi95"])
    dc, dg = got["cpu", "deb"], got["gpu", "deb"]
    a["deblend_measure_1k"] = {}
    for c in ("flux_ap", "T", "e1", "e2"):  # relative to the CPU's value
        rel = np.abs(dg.catalog[c] - dc.catalog[c]) / np.maximum(np.abs(dc.catalog[c]), 1e-3)
        a["deblend_measure_1k"][f"{c}_max_rel"] = float(np.nanmax(rel, initial=0))
        if c in ("flux_ap", "T"):
            a["deblend_measure_1k"][f"{c}_median_rel"] = float(np.nanmedian(rel))
    a["deblend_measure_1k"]["model_max_abs_over_peak"] = float(
        np.abs(dg.model - dc.model).max() / np.abs(dc.model).max()
    )
    if args.devices[1] == "cuda":  # TF32 convolutions (torch's default; probcat's are not)
        from probcat.runtime import use_tf32

        det = probcat.load(device="cuda")
        before = use_tf32(True)
        try:
            t1, c1 = _timed(lambda: det.catalog(one_k), args.runs)
            t4, c4 = _timed(lambda: det.catalog(four_k), 1)
        finally:
            use_tf32(before)
        res["seconds_tf32"] = {"detect_1k": t1, "detect_4k": t4}
        a["detect_1k_tf32"] = _compare(got["cpu", "1k"], c1, ["prob", "galaxy_prob"])
        a["detect_4k_tf32"] = _compare(got["cpu", "4k"], c4, ["prob"])
    res["speedup"] = {
        k: res["seconds"]["cpu"][k] / res["seconds"]["gpu"][k] for k in res["seconds"]["cpu"]
    }
    return res


def _step_seconds(task, cfg_dict, settings, device, steps: int, out: Path) -> float:
    from probcat.train.loop import fit

    fit(task, out / "warm", config=cfg_dict, settings=settings, progress=False,
        stop_after=2, device=device)  # fmt: skip
    t = time.perf_counter()
    fit(task, out / "run", config=cfg_dict, settings=settings, progress=False,
        stop_after=steps, device=device)  # fmt: skip
    return (time.perf_counter() - t) / steps


def training(args, tmp: Path) -> dict:
    from probcat.config import to_dict
    from probcat.train.detection import DetectionTask, load_config
    from probcat.train.photoz import PhotozTask, _config_dict, load_photoz_config

    det = load_config(ROOT / "configs" / "detection_lsst_i.yaml")
    det = dataclasses.replace(
        det,
        init=None,
        data=dataclasses.replace(det.data, bank_size=3000, val_bank_size=500, val_scenes=32),
        fits=dataclasses.replace(det.fits, real_shapes_population=None),
        val_every=10**6,
        checkpoint_every=10**6,
    )
    pz = load_photoz_config(ROOT / "configs" / "photoz_lsst_ugrizy.yaml")
    pz = dataclasses.replace(
        pz,
        members=1,
        symmetries=1,
        data=dataclasses.replace(
            pz.data,
            bank_size=2000,
            val_bank_size=500,
            train_objects=2048,
            val_objects=256,
            keep_gold=False,
            val_to_train=0.0,
        ),
        val_every=10**6,
        checkpoint_every=10**6,
    )
    out = {}
    for name, task, cfg_dict, settings in (
        ("detection", DetectionTask(det, cache_dir=tmp, progress=False), to_dict(det),
         det.settings()),
        ("photoz", PhotozTask(pz, cache_dir=tmp, progress=False), _config_dict(pz),
         pz.settings()),
    ):  # fmt: skip
        rng = np.random.default_rng(0)
        task.batch(rng)
        t = time.perf_counter()
        for _ in range(args.steps):
            task.batch(rng)
        data_s = (time.perf_counter() - t) / args.steps
        row = {"batch_s": data_s, "batch_size": task.cfg.data.batch_size,
               "threads": settings.threads}  # fmt: skip
        for lab, dev in zip(LABELS, args.devices):
            run = tmp / f"{name}_{lab}"
            row[f"step_{lab}_s"] = _step_seconds(task, cfg_dict, settings, dev, args.steps, run)
        row["speedup"] = row["step_cpu_s"] / row["step_gpu_s"]
        row["gpu_share_beyond_batches"] = 1 - data_s / row["step_gpu_s"]
        print(name, json.dumps(row), flush=True)
        out[name] = row
    return out


def figure(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sec = r["inference"]["seconds"]
    keys = list(sec["cpu"])
    x = np.arange(len(keys))
    for k, lab in enumerate(LABELS):
        axes[0].bar(x + (k - 0.5) * 0.4, [sec[lab][q] for q in keys], 0.4, label=lab.upper())
    axes[0].set_xticks(x, keys, rotation=20, ha="right")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds")
    axes[0].set_title("inference, same images")
    axes[0].legend()
    tr = r["training"]
    names = list(tr)
    x = np.arange(len(names))
    for k, (key, lab) in enumerate(
        (("step_cpu_s", "CPU step"), ("step_gpu_s", "GPU step"), ("batch_s", "batch alone"))
    ):
        axes[1].bar(x + (k - 1) * 0.27, [tr[n][key] for n in names], 0.27, label=lab)
    axes[1].set_xticks(x, names)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("seconds per step")
    axes[1].set_title("training (batches made on the CPU)")
    axes[1].legend()
    fig.suptitle(r["machine"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from probcat.catalog import atomic_write
    from probcat.provenance import json_safe, provenance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="timed runs per inference task")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per device")
    p.add_argument("--seed", type=int, default=9101)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--gpu-device", default="cuda", help=argparse.SUPPRESS)  # "cpu": a dry run
    args = p.parse_args(argv)
    args.devices = ("cpu", args.gpu_device)
    if args.gpu_device == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no CUDA GPU is available to torch here", file=sys.stderr)
        return 2
    from probcat.runtime import auto_threads

    t0 = time.perf_counter()
    command = " ".join([".venv/bin/python", "benchmarks/gpu.py", *(argv or sys.argv[1:])])
    r = {
        "command": command,
        "machine": f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}"
        f", {os.cpu_count()} CPU cores",
        "torch": torch.__version__,
        # the CPU's inference threads: probcat's default, one per idle core
        "cpu_threads": auto_threads(),
    }
    r["inference"] = inference(args)
    with tempfile.TemporaryDirectory() as tmp:
        r["training"] = training(args, Path(tmp))
    r["definitions"] = {
        "seconds": "median wall time of --runs calls after a warm-up (1 for detect_4k and "
        "samples_16_1k); CPU with probcat's default threads (one per idle core)",
        "agreement": "CPU and GPU catalogs matched one to one within 0.5 px; *_max_abs, "
        "*_median_abs: differences of a column over the matched rows; samples: the share of "
        "the 16 seeded samples with the same sources on both devices (within 0.01 px), and "
        "the share of each sample's sources matched within 0.5 px (each sample's own random "
        "stream, the same on both devices; float rounding can move a draw across its "
        "probability, which changes that source and the neighbours decided after it); "
        "probcat's inference runs the GPU's convolutions and "
        "matrix products in full float32 (probcat.runtime.full_float32); *_tf32: the GPU "
        "with TF32 convolutions, torch's default (probcat.runtime.use_tf32(True)); "
        "deblend: the same CPU detections measured on both devices",
        "training": "seconds per fit() step (after 2 warm-up steps, no validation or "
        "checkpoints inside the timed steps) with the shipped configs' networks and batch "
        "sizes (smaller banks); batch_s: making one batch on the CPU alone",
    }
    r["wall_s"] = round(time.perf_counter() - t0, 1)
    r.update({k: v for k, v in provenance(command).items() if k != "command"})
    r = json_safe(r)
    args.out.mkdir(parents=True, exist_ok=True)
    figure(r, args.out / "gpu.png")
    text = json.dumps(r, indent=1)
    atomic_write(args.out / "gpu.json", lambda tmp: Path(tmp).write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
