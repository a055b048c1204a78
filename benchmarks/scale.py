"""Survey scale and robustness: chunked inference against whole-image inference, memory and
speed on large images, many images serially and on Dask, resuming after SIGKILL (of the run,
and of one Dask worker), and detection with the sky left in (``--background auto``).
Held-out LSST-i ``blend`` scenes (test galaxies, seed 9090). Writes
``benchmarks/results/scale.json`` and ``scale.png``:

    .venv/bin/python benchmarks/scale.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # first: keeps benchmarks/ off the import path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
PROBCAT = str(Path(PY).with_name("probcat"))
SEED = 9090
ROW_TOL_PX = 1e-3  # compare_rows: the same source in two runs lies this close (or closer)

# a child that detects one image and reports its time and peak memory: VmHWM, the peak
# resident memory of this process image (ru_maxrss would carry over the forking parent's)
CHILD = """
import resource, sys, time
import probcat
from probcat.io import read_image
det = probcat.load(threads=int(sys.argv[2]))  # fixed: "auto" follows the moment's load
data = read_image(sys.argv[1])
det.catalog(data.image[:, :256, :256], noise_sigma=data.noise_sigma)  # warm-up
t0 = time.perf_counter()
cat = det.catalog(data)
dt = time.perf_counter() - t0
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
    rss = int(hwm.split()[1]) / 1024
except (OSError, IndexError):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(dt, len(cat), rss)
"""


def scenes(n: int, size: int, seed: int):
    from probcat.simulate.datasets import Simulation, SimulationConfig

    sim = Simulation(
        SimulationConfig(recipe="blend", n=n, seed=seed, split="test", size=size), progress=False
    )
    return sim, [sim.scene(i)[0] for i in range(n)]


def write_fits(folder: Path, sim, scenes_, prefix="image") -> list[Path]:
    from probcat.io import write_image

    paths = []
    for i, sc in enumerate(scenes_):
        p = folder / f"{prefix}_{i:03d}.fits"
        write_image(p, sc.image, sim.survey, sim.wcs(i))
        paths.append(p)
    return paths


def chunked_vs_whole(det, image) -> dict:
    import torch

    from probcat.api import read_input
    from probcat.infer.detect import decode, features_sigma, pixels_sigma

    x = read_input(image, det.survey, background="none")[0][None]
    out = {}
    with torch.no_grad():
        for name, chunk in (("chunked", 200), ("whole", 10**6)):
            f = features_sigma(det.net, x, chunk_tiles=chunk)
            out[name] = decode(det.net, f, image=pixels_sigma(det.net, x)).marginal.prob.numpy()
    diff = float(np.abs(out["chunked"] - out["whole"]).max())
    n_tiles = out["whole"].size
    return {"equal": diff <= 1e-5, "max_abs_prob_diff": diff, "tiles": n_tiles,
            "chunk_tiles": 200}  # fmt: skip


LINEARITY_THREADS = 2  # torch threads of both timed runs (1k and 4k)


def child_run(path: Path) -> tuple[float, int, float]:
    """Seconds of one detection of the image at ``path`` (a fresh process, warmed up, on
    :data:`LINEARITY_THREADS` threads), its number of detections and peak RSS (MB)."""
    cmd = [PY, "-c", CHILD, str(path), str(LINEARITY_THREADS)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    dt, n, rss = res.stdout.split()[-3:]
    return float(dt), int(n), float(rss)


def catalogs(folder: Path) -> dict:
    from probcat.catalog import FullCatalog

    files = [p for p in sorted(folder.glob("*.parquet")) if not p.name.startswith(".")]
    return {p.name: FullCatalog.read(p) for p in files}


def compare_rows(ref: dict, got: dict, tol: float = ROW_TOL_PX) -> dict:
    """Lost, duplicated and unexpected rows of ``got`` against the reference catalogs (a
    row is an image's source at ``(x, y)``). A row of ``got`` is the reference row within
    ``tol`` px of it: runs with different thread counts (``threads="auto"`` follows the
    machine's load) sum in different orders and move centroids by ~1e-5 px.
    ``duplicated_rows``: rows beyond the first matching one reference row;
    ``extra_catalogs``: files the reference does not have; ``max_matched_offset_px``: the
    largest distance between matched rows."""
    from scipy.spatial import cKDTree

    lost = dup = unexpected = 0
    offset = 0.0
    for name, cat in ref.items():
        want = np.column_stack([np.asarray(cat["x"], float), np.asarray(cat["y"], float)])
        if name not in got or len(got[name]) == 0 or len(want) == 0:
            lost += len(want)
            unexpected += len(got.get(name, ()))
            continue
        rows = np.column_stack(
            [np.asarray(got[name]["x"], float), np.asarray(got[name]["y"], float)]
        )
        d, j = cKDTree(want).query(rows, distance_upper_bound=tol)
        hit = np.isfinite(d)
        counts = np.bincount(j[hit], minlength=len(want))
        lost += int((counts == 0).sum())
        dup += int(np.clip(counts - 1, 0, None).sum())
        unexpected += int((~hit).sum())
        offset = max(offset, float(d[hit].max()) if hit.any() else 0.0)
    return {
        "lost_rows": lost,
        "duplicated_rows": dup,
        "unexpected_rows": unexpected,
        "extra_catalogs": len(set(got) - set(ref)),
        "max_matched_offset_px": offset,
        "reference_rows": sum(len(c) for c in ref.values()),
    }


def same_catalogs(a: dict, b: dict) -> dict:
    """Serial (this process's threads) against Dask (one thread per worker): same files and
    rows, positions equal up to the floating-point order of the convolutions."""
    rows_equal = all(len(a[k]) == len(b.get(k, ())) for k in a) and set(a) == set(b)
    diff = max(
        (float(np.abs(np.asarray(a[k]["x"]) - np.asarray(b[k]["x"])).max(initial=0.0))
         for k in a if k in b and len(a[k]) == len(b[k])),
        default=float("nan"),
    )  # fmt: skip
    return {"same_files_and_row_counts": rows_equal, "max_abs_x_difference_px": diff}


def timed_run(images, out: Path, workers: int, extra=()) -> float:
    """Wall time of ``probcat run`` on ``images`` (process start and, on Dask, the
    cluster's start included)."""
    t0 = time.perf_counter()
    cmd = [PROBCAT, "run", *map(str, images), "-o", str(out), "-q", "--workers", str(workers)]
    cmd += list(extra)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def kill_run(images, out: Path, extra: list[str], kill_worker: bool, after: int) -> str | None:
    """Start ``probcat run``, SIGKILL it (or one of its Dask workers) once ``after``
    catalogs exist, then rerun to completion."""
    import psutil

    cmd = [PROBCAT, "run", *map(str, images), "-o", str(out), "-q", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = None
    while proc.poll() is None:
        if len(list(out.glob("*.parquet"))) >= after:
            if kill_worker:
                kids = psutil.Process(proc.pid).children(recursive=True)
                # Dask's workers: forked by the forkserver (a child of the run, as is the
                # resource tracker), so grandchildren of the run
                workers = [k for k in kids if k.ppid() != proc.pid]
                if workers:
                    workers[0].send_signal(signal.SIGKILL)
                    killed = "worker"
                    break
            else:
                proc.send_signal(signal.SIGKILL)
                killed = "run"
                break
        time.sleep(0.05)
    proc.wait()
    if killed == "run":
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return killed


def background_check(det, sim, scenes_) -> dict:
    from probcat.metrics.detection import match

    sigma = float(sim.survey.noise_sigma[0])
    out = {}
    for label, add_sky in (("subtracted", False), ("unsubtracted_auto", True),
                           ("unsubtracted_none", True)):  # fmt: skip
        tp = n_det = n_true = n_sub = 0
        for sc in scenes_:
            img = sc.image.astype(np.float64)
            if add_sky:  # a sky of sigma^2 e- (sky-limited) with a 2% gradient
                w = img.shape[-1]
                img = img + sigma**2 * (1 + 0.02 * np.arange(w) / w)[None, None, :]
            mode = "none" if label.endswith("none") else "auto"
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cat = det.catalog(img.astype(np.float32), background=mode)
            truth = np.column_stack([sc.catalog["x"], sc.catalog["y"]])
            i, _ = match(truth, np.column_stack([cat["x"], cat["y"]]))
            tp, n_det, n_true = tp + len(i), n_det + len(cat), n_true + len(truth)
            n_sub += cat.meta["input"].get("background") == "subtracted"
        out[label] = {
            "precision": tp / max(n_det, 1),
            "recall": tp / max(n_true, 1),
            "detections": n_det,
            "images_sky_subtracted": int(n_sub),
            "images": len(scenes_),
        }
    out["precision_diff"] = out["unsubtracted_auto"]["precision"] - out["subtracted"]["precision"]
    out["recall_diff"] = out["unsubtracted_auto"]["recall"] - out["subtracted"]["recall"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=40)
    ap.add_argument("--size", type=int, default=1000, help="side of the many-images run")
    ap.add_argument("--fuzz-cases", type=int, default=2000)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    import probcat

    command = " ".join([".venv/bin/python", "benchmarks/scale.py", *sys.argv[1:]])
    from probcat.provenance import reference_speed_s

    speed = reference_speed_s()  # the machine's speed at the start (not in wall_s)
    t_start = time.perf_counter()
    res: dict = {"command": command, "reference_speed_s": speed}
    det = probcat.load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. chunked = whole, on 2000 x 2000
        sim2k, (big,) = scenes(1, 2000, SEED)
        res["chunked_equals_whole"] = chunked_vs_whole(det, big.image)
        print("chunked vs whole:", res["chunked_equals_whole"], flush=True)
        # 2. memory and speed on 1k and 4k (fresh processes)
        sim1k, (one,) = scenes(1, 1000, SEED + 1)
        sim4k, (four,) = scenes(1, 4000, SEED + 2)
        p1 = write_fits(tmp, sim1k, [one], "one_k")[0]
        p4 = write_fits(tmp, sim4k, [four], "four_k")[0]
        # the same treatment for both, the sizes alternating, so that a change in the
        # machine's speed during the measurement falls on both alike
        pairs = [(child_run(p1), child_run(p4)) for _ in range(3)]
        t1, _, rss1 = min(a for a, _ in pairs)
        t4, n4, rss4 = min(b for _, b in pairs)
        res.update(
            peak_rss_mb_1k=round(rss1, 1),
            peak_rss_mb_4k=round(rss4, 1),
            seconds_per_megapixel_1k=round(t1 / 1.0, 3),
            seconds_per_megapixel_4k=round(t4 / 16.0, 3),
            detections_4k=n4,
            linearity_threads=LINEARITY_THREADS,
            linearity_runs="fastest of 3 fresh processes per size, 1k and 4k alternating",
            linearity_seconds={
                "1k": [round(a[0], 3) for a, _ in pairs],
                "4k": [round(b[0], 3) for _, b in pairs],
            },
        )
        res["linearity_4k_over_1k"] = round(
            res["seconds_per_megapixel_4k"] / res["seconds_per_megapixel_1k"], 3
        )
        print(
            {
                k: res[k]
                for k in ("peak_rss_mb_4k", "seconds_per_megapixel_1k", "seconds_per_megapixel_4k")
            },
            flush=True,
        )
        # 3. many images: serial and Dask (2 workers), the same images
        sim_n, many = scenes(args.n_images, args.size, SEED + 3)
        folder = tmp / "images"
        folder.mkdir()
        images = write_fits(folder, sim_n, many)
        # the three modes in turn, twice, each timed at its fastest: a change in the
        # machine's speed during the measurement falls on all of them alike
        modes = {"serial": (0, []), "serial1": (0, ["--threads", "1"]), "dask": (2, [])}
        times = {m: [] for m in modes}
        for r in range(2):
            for m, (workers, extra) in modes.items():
                times[m].append(timed_run(images, tmp / f"{m}_round{r}", workers, extra))
        serial_s, serial1_s, dask_s = (min(times[m]) for m in modes)
        summaries = {  # each mode's fastest round
            m: json.loads(
                (tmp / f"{m}_round{int(np.argmin(times[m]))}" / "run_summary.json").read_text()
            )
            for m in modes
        }
        start_s = summaries["dask"]["cluster_start_s"]
        image_s = {m: summaries[m]["image_seconds_median"] for m in modes}
        for m in modes:  # the first round's catalogs are the references below
            (tmp / f"{m}_round0").rename(tmp / m)
        ref = catalogs(tmp / "serial")
        same = same_catalogs(ref, catalogs(tmp / "dask"))
        res.update(
            n_images=args.n_images,
            image_size=args.size,
            images_per_hour_serial=round(3600 * args.n_images / serial_s, 1),
            images_per_hour_dask_2_workers=round(3600 * args.n_images / dask_s, 1),
            dask_speedup=round(serial_s / dask_s, 3),
            # serial on one torch thread: what one Dask worker runs
            images_per_hour_serial_1_thread=round(3600 * args.n_images / serial1_s, 1),
            dask_speedup_vs_1_thread=round(serial1_s / dask_s, 3),
            # a serial run's torch threads already share the cores: on c cores, Dask's
            # ceiling over the serial run is c / (serial 1 thread / serial)
            serial_threads_speedup=round(serial1_s / serial_s, 3),
            dask_ceiling_vs_serial=round(min(2, os.cpu_count() or 1) / (serial1_s / serial_s), 3),
            cores=os.cpu_count(),
            dask_cluster_start_s=start_s,
            images_per_hour_dask_2_workers_after_start=round(
                3600 * args.n_images / (dask_s - start_s), 1
            ),
            dask_same_rows_as_serial=same,
            # one image's own time (read, detect, write), median: on a Dask worker against
            # alone on one thread (the workers share the machine with each other and with
            # the scheduler); Dask's speed-up over the one-thread run can reach at most
            # 2 / this on two cores, less each worker's first image (its weights) and start
            image_seconds_median=image_s,
            dask_worker_image_s_over_serial_1_thread=round(image_s["dask"] / image_s["serial1"], 3),
            wall_includes="process start, weights loading and (Dask) cluster start",
            many_images_runs="fastest of 2 per mode, the modes in turn",
            many_images_seconds={m: [round(t, 2) for t in v] for m, v in times.items()},
        )
        print(
            {
                k: res[k]
                for k in (
                    "images_per_hour_serial",
                    "images_per_hour_dask_2_workers",
                    "dask_speedup",
                    "images_per_hour_serial_1_thread",
                    "dask_speedup_vs_1_thread",
                    "dask_cluster_start_s",
                )
            },
            flush=True,
        )
        # 4. SIGKILL the run midway, rerun; SIGKILL one Dask worker midway
        killed = kill_run(images, tmp / "killed", ["--workers", "0"], False, args.n_images // 2)
        res["resume"] = {"killed": killed, **compare_rows(ref, catalogs(tmp / "killed"))}
        killed = kill_run(images, tmp / "wkill", ["--workers", "2"], True, args.n_images // 3)
        dask_ref = catalogs(tmp / "dask")  # one torch thread per worker, as in this run
        left = [p.name for p in (tmp / "wkill").glob(".*")]
        res["worker_kill"] = {
            "killed": killed,
            **compare_rows(dask_ref, catalogs(tmp / "wkill")),
            "temporary_files_left": left,
        }
        print(res["resume"], res["worker_kill"], flush=True)
        # 5. sky left in: precision and recall with --background auto
        sim_b, bscenes = scenes(20, 300, SEED + 4)
        res["background"] = background_check(det, sim_b, bscenes)
        print(res["background"], flush=True)
    from probcat.provenance import provenance

    res["targets"] = {
        "chunked_equals_whole": res["chunked_equals_whole"]["equal"],
        "peak_rss_4k_le_2GB": res["peak_rss_mb_4k"] <= 2048,
        "linearity_within_20pct": abs(res["linearity_4k_over_1k"] - 1) <= 0.2,
        "dask_ge_1.7x": res["dask_speedup"] >= 1.7,
        "kill_tests_zero_lost_and_duplicated": all(
            res[k]["lost_rows"] == 0
            and res[k]["duplicated_rows"] == 0
            and res[k]["unexpected_rows"] == 0
            and res[k]["killed"] is not None
            for k in ("resume", "worker_kill")
        ),
        "background_within_0.02": abs(res["background"]["precision_diff"]) <= 0.02
        and abs(res["background"]["recall_diff"]) <= 0.02,
    }
    fuzz = _paths.sibling("_fuzz").fuzz

    with tempfile.TemporaryDirectory() as cache:
        res["fuzz"] = fuzz(args.fuzz_cases, Path(cache))
    print({k: v for k, v in res["fuzz"].items() if k not in ("examples", "kinds")}, flush=True)
    res["targets"]["fuzz_clean"] = res["fuzz"]["cases"] >= 1000 and all(
        res["fuzz"][k] == 0 for k in ("unhandled", "hangs", "partial_outputs", "silent_garbage")
    )
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["machine"] = "2-core CPU, no GPU"
    res.update({k: v for k, v in provenance(command).items() if k != "command"})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from probcat.catalog import atomic_write

    text = json.dumps(res, indent=1, default=float)
    atomic_write(out / "scale.json", lambda t: Path(t).write_text(text))
    figure(res, out / "scale.png")
    print(json.dumps(res["targets"], indent=1))


def figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].bar(["1k", "4k"], [res["seconds_per_megapixel_1k"], res["seconds_per_megapixel_4k"]])
    ax[0].set_ylabel("seconds per megapixel")
    ax[0].set_title(f"peak memory at 4k: {res['peak_rss_mb_4k']:.0f} MB")
    ax[1].bar(["serial", "Dask, 2 workers"],
              [res["images_per_hour_serial"], res["images_per_hour_dask_2_workers"]])  # fmt: skip
    ax[1].set_ylabel(f"{res['image_size']}^2-px images per hour")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
