"""Copy a finished training run into the package with its manifest.

    .venv/bin/python scripts/ship_weights.py runs/detection_lsst_i

The manifest gets the training manifest (config, data seeds, command, commit, validation
history), the weight file's sha256 and, when present, the headline numbers of
``benchmarks/results/detection.json`` measured with these weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "probcat" / "weights"
HEADLINE = ("probcat", "sep", "boundary_min_prob_one_match", "galaxy_f1_snr_gt_10",
            "star_f1_snr_gt_12", "detection_ece", "centroid_coverage_68", "centroid_coverage_95",
            "centroid_intervals", "centroid_coverage_uncalibrated_truncated",
            "centroid_coverage_gaussian_mean_sd", "sample_counts",
            "speed", "n_images", "command", "git_commit")


def main(run: str, name: str = "detection_lsst_i") -> None:
    run_dir = Path(run)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    target = WEIGHTS / f"{name}.pt"
    shutil.copyfile(run_dir / "detection.pt", target)
    manifest["weights"] = target.name
    manifest["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    manifest["size_bytes"] = target.stat().st_size
    manifest["training_command"] = manifest.pop("command")
    bench = ROOT / "benchmarks" / "results" / "detection.json"
    result = json.loads(bench.read_text()) if bench.exists() else {}
    if result.get("weights_sha256") == manifest["sha256"]:
        manifest["benchmark"] = {k: result.get(k) for k in HEADLINE}
    else:
        print("benchmarks/results/detection.json was not measured with these weights: "
              "run benchmarks/detection.py, then ship again to record its numbers")
    (WEIGHTS / f"manifest_{name}.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"shipped {target} ({manifest['size_bytes'] / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
