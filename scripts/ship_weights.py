"""Copy a finished training run into the package with its manifest, or refresh the shipped
manifest's benchmark numbers.

    .venv/bin/python scripts/ship_weights.py runs/detection_lsst_i          # ship a run
    .venv/bin/python scripts/ship_weights.py runs/deblender_lsst_i deblender_lsst_i
    .venv/bin/python scripts/ship_weights.py --benchmark detection_lsst_i   # record numbers
    .venv/bin/python scripts/ship_weights.py --sky-offset detection_lsst_i  # fit, record
    .venv/bin/python scripts/ship_weights.py --flux-error deblender_lsst_i detection_lsst_i
    .venv/bin/python scripts/ship_weights.py --density detection_lsst_i 60     # fit, record
    .venv/bin/python scripts/ship_weights.py --population runs/pop_s117        # population

The manifest gets the training manifest (config, data seeds, command, commit, validation
history), the weight file's sha256 and, when ``benchmarks/results/detection.json`` was
measured with these very weights (same sha256), its headline numbers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "probcat" / "weights"
HEADLINE = (
    "probcat",
    "sep",
    "boundary_min_prob_one_match",
    "galaxy_f1_snr_gt_10",
    "star_f1_snr_gt_12",
    "detection_ece",
    "centroid_coverage_68",
    "centroid_coverage_95",
    "centroid_intervals",
    "centroid_coverage_uncalibrated_truncated",
    "centroid_coverage_gaussian_mean_sd",
    "sample_counts",
    "speed",
    "n_images",
    "command",
    "git_commit",
)


DEBLEND_HEADLINE = (
    "flux_residual_top_bin",
    "ratios_top_bin",
    "deblended_flux_bias_max_abs_snr_gt_10",
    "scatter_ratio_deblended_vs_none",
    "size_bias_max_abs",
    "e_bias_max_abs",
    "flux_posterior_coverage_68",
    "flux_posterior_coverage_95",
    "speed",
    "n_images_central",
    "command",
    "git_commit",
)
PHOTOZ_HEADLINE = (
    "probcat",
    "flexzboost",
    "bpz",
    "pit_coverage_68",
    "pit_coverage_95",
    "secondary_peak_recovery",
    "ratios",
    "ensemble_size",
    "sigma_iqr_y5_over_y10",
    "n_train_galaxies",
    "n_test_galaxies",
    "speed",
    "command",
    "git_commit",
)
# kind -> (benchmark result, its key holding the weights' sha256, numbers to record)
BENCHMARKS = {
    "detection": ("detection.json", "weights_sha256", HEADLINE),
    "deblender": ("deblend.json", "deblender_sha256", DEBLEND_HEADLINE),
    "photoz": ("photoz.json", "photoz_sha256", PHOTOZ_HEADLINE),
}
# further benchmarks of a kind: kind -> [(result, sha key, numbers, manifest key)]
EXTRA = {
    "detection": [
        (
            "robustness.json",
            "weights_sha256",
            ("in_distribution", "left_out", "targets_met", "command", "git_commit"),
            "robustness",
        )
    ],
}
# weights measured by another capability's benchmark: name -> (result, sha key, numbers)
BY_NAME = {
    "detection_lsst_i_coadd": (
        "correlated_noise.json",
        "coadd_weights_sha256",
        (
            "probcat_coadd_weights_white",
            "probcat_coadd_weights_coadd",
            "probcat_coadd_weights_coadd_lanczos3",
            "command",
            "git_commit",
        ),
    ),
    "photoz_lsst_ugrizy_seeing": (
        "depth.json",
        "seeing_weights_sha256",
        ("seeing_weights", "photoz_seeing", "photoz_band_seeing", "command", "git_commit"),
    ),
    "photoz_lsst_ugrizy_masked": (
        "photoz_masks.json",
        "masked_weights_sha256",
        ("results", "fields", "command", "git_commit"),
    ),
    "detection_lsst_ugrizy_masked": (
        "detection_masks.json",
        "masked_weights_sha256",
        ("results", "fields", "command", "git_commit"),
    ),
    "detection_lsst_ugrizy": (
        "photoz.json",
        "detector_ugrizy_sha256",
        ("detection_ugrizy", "n_test_galaxies", "command", "git_commit"),
    ),
}


def _record(manifest: dict, result_name: str, key: str, headline, field: str) -> None:
    """Copy the ``headline`` numbers of ``benchmarks/results/<result_name>`` into
    ``manifest[field]`` when they were measured with these weights (``result[key]`` is their
    sha256); otherwise drop ``field``: numbers of other weights do not stay in a manifest."""
    bench = ROOT / "benchmarks" / "results" / result_name
    result = json.loads(bench.read_text()) if bench.exists() else {}
    if result.get(key) == manifest["sha256"]:
        manifest[field] = {k: result.get(k) for k in headline}
    else:
        manifest.pop(field, None)
        print(
            f"benchmarks/results/{result_name} was not measured with these weights: "
            "run its benchmark, then record its numbers with --benchmark"
        )


def _with_benchmark(manifest: dict, shipped_name: str) -> dict:
    spec = BY_NAME.get(shipped_name) or BENCHMARKS.get(manifest["kind"])
    if spec is None:
        return manifest  # e.g. the autoencoder: measured through the deblender
    _record(manifest, *spec, "benchmark")
    if shipped_name not in BY_NAME:
        for name, key, headline, field in EXTRA.get(manifest["kind"], []):
            _record(manifest, name, key, headline, field)
    return manifest


def _write(name: str, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1) + "\n"
    path = WEIGHTS / f"manifest_{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: a failed write leaves the old manifest


def _portable(command: str | None) -> str | None:
    """The training command with an absolute run directory (a path of the machine that
    trained) written as ``runs/<its name>``, as in the configs' comments."""
    if not command:
        return command
    words = command.split()
    for i, w in enumerate(words[:-1]):
        if w in ("--out", "-o") and Path(words[i + 1]).is_absolute():
            words[i + 1] = f"runs/{Path(words[i + 1]).name}"
    return " ".join(words)


def ship(run: str, name: str = "detection_lsst_i") -> None:
    run_dir = Path(run)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    target = WEIGHTS / f"{name}.pt"
    shutil.copyfile(run_dir / manifest["weights"], target)
    manifest["weights"] = target.name
    manifest["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    manifest["size_bytes"] = target.stat().st_size
    manifest["training_command"] = _portable(manifest.pop("command"))
    _write(name, _with_benchmark(manifest, name))
    print(f"shipped {target} ({manifest['size_bytes'] / 1e6:.2f} MB)")


def record_benchmark(name: str = "detection_lsst_i") -> None:
    path = WEIGHTS / f"manifest_{name}.json"
    _write(name, _with_benchmark(json.loads(path.read_text()), name))
    print(f"updated {path}")


def record_sky_offset(name: str = "detection_lsst_i") -> None:
    """Fit the sky offset of shipped detection weights (``probcat.background``) into their
    manifest; the weights file is untouched."""
    from probcat.train.detection import record_sky_offset as fit_and_record

    rec = fit_and_record(WEIGHTS / f"{name}.pt", WEIGHTS / f"manifest_{name}.json")
    print(f"{name}: sky offset {rec['per_band']} noise sigma ({rec['source']})")


def record_flux_error(name: str = "deblender_lsst_i", detector: str = "detection_lsst_i") -> None:
    """Fit the deblender's flux-error scale (``probcat.measure.flux_sd``) with ``detector``'s
    posterior samples into its manifest; the weights file is untouched."""
    from probcat.train.deblend import record_flux_error as fit_and_record

    command = f".venv/bin/python scripts/ship_weights.py --flux-error {name} {detector}"
    rec = fit_and_record(name, WEIGHTS / f"manifest_{name}.json", detector, command=command)
    for m, scale in rec["scales"].items():
        cov = rec["validation_coverage_68_95"][m]
        cov0 = rec["validation_coverage_68_95_without"][m]
        print(f"{name} ({m}): flux-error scale {scale:.3f}; validation coverage 68/95 {cov} "
              f"(without: {cov0})")  # fmt: skip


def record_density(name: str = "detection_lsst_i", n_fields: str = "60") -> None:
    """Fit the density calibrations of shipped detection weights (``probcat.infer.density``;
    at the survey's seeing and depth and at each other its probability calibration has)
    into their manifest; the weights file is untouched."""
    from probcat.train.detection import record_density_calibration

    command = f".venv/bin/python scripts/ship_weights.py --density {name} {n_fields}"
    rec = record_density_calibration(
        name, WEIGHTS / f"manifest_{name}.json", n_fields=int(n_fields), command=command
    )
    for one in (rec["density_calibration"], *rec["density_calibrations"]):
        at = f"seeing x{one['seeing_factor']:g}, noise x{one['noise_factor']:.3g}"
        for f, r, n in zip(one["factors"], one["rates_per_mpx"], one["n"]):
            print(f"{name} ({at}): density x{f:g}: {r:.1f} bright detections per Mpx, "
                  f"{n} detections")  # fmt: skip


def ship_population(run: str, name: str = "population_default") -> None:
    """Pack the networks of a finished population run that do not depend on the target
    (r1, r2, r4, the plain NRE) and its pool's detected sources into one shipped file
    (``probcat.population.shipped``), with a manifest: the run's settings and command, each
    network's training in brief and, when ``benchmarks/results/population.json`` was
    measured on this run, its coverage and timing."""
    from probcat.population.shipped import pack

    run_dir = Path(run)
    summary = json.loads((run_dir / "summary.json").read_text())
    target = WEIGHTS / f"{name}.pt"
    packed = pack(run_dir, target)
    nets = packed["networks"]
    manifest = {
        "kind": "population",
        "weights": target.name,
        "config": summary["config"],
        "data": {
            "seed": summary["config"]["seed"],
            "networks": "r1, r2, r4 and the plain NRE with its head: the networks of the "
            "chain that do not depend on the target map (r3 trains for each map)",
            "pool": f"{packed['pool_maps']} full-model maps through r1; its "
            f"{packed['pool_detected_sources']} detected sources shipped (what the posteriors "
            "read once r2 and r4 are trained)",
        },
        "networks": {k: {f: v for f, v in n.items() if f != "command"} for k, n in nets.items()},
        "training_s": round(sum(n["training_s"] or 0 for n in nets.values()), 1),
        "steps": sum(n["steps"] or 0 for n in nets.values()),
        "training_command": _portable(summary.get("command")),
        "git_commit": nets["r1"]["git_commit"],
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "size_bytes": target.stat().st_size,
    }
    bench = ROOT / "benchmarks" / "results" / "population.json"
    result = json.loads(bench.read_text()) if bench.exists() else {}
    if result.get("config") == summary["config"] and result.get("git_commit") == summary.get(
        "git_commit"
    ):  # this run's numbers
        manifest["benchmark"] = {
            "command": result["command"],
            "coverage": {k: result["coverage"][k] for k in ("r4", "plain_nre")},
            "n_coverage_sims": result["n_coverage_sims"],
            "stage_s": {k: result["stage_s"].get(k) for k in ("r1", "pool", "r2_r4", "plain_nre")},
            "reference_speed_s": result.get("reference_speed_s"),
        }
    else:
        print("benchmarks/results/population.json was not measured on this run: no numbers")
    _write(name, manifest)
    print(f"shipped {target} ({manifest['size_bytes'] / 1e6:.2f} MB)")


def _main() -> None:
    if sys.argv[1:2] == ["--population"]:
        ship_population(*sys.argv[2:])
    elif sys.argv[1:2] == ["--benchmark"]:
        record_benchmark(*sys.argv[2:])
    elif sys.argv[1:2] == ["--sky-offset"]:
        record_sky_offset(*sys.argv[2:])
    elif sys.argv[1:2] == ["--density"]:
        record_density(*sys.argv[2:])
    elif sys.argv[1:2] == ["--flux-error"]:
        record_flux_error(*sys.argv[2:])
    else:
        ship(*sys.argv[1:])


if __name__ == "__main__":
    if not sys.argv[1:] or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if sys.argv[1:] else 2)
    try:
        _main()
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as err:
        sys.exit(f"error: {type(err).__name__}: {err}")
