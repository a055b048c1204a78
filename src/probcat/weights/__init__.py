"""Pretrained weights shipped with probcat, each with a manifest (config, data seed,
training command, git commit, metrics). Loading validates the file and says what is wrong.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

from probcat.errors import ProbcatFileError, ProbcatIOError
from probcat.nets.detection import DetectionNet, for_inference
from probcat.survey import Survey

__all__ = ["load_detection", "shipped", "DEFAULT_DETECTION"]

DEFAULT_DETECTION = "detection_lsst_i.pt"


def shipped(name: str) -> Path:
    """Path of a weight file shipped inside the package."""
    return Path(str(resources.files("probcat.weights") / name))


def _read(path: Path) -> dict:
    if not path.exists():
        raise ProbcatFileError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for corrupt files
        raise ProbcatIOError(f"{path}: not a readable probcat weights file ({e})") from e
    if not isinstance(state, dict) or "state_dict" not in state or "hparams" not in state:
        raise ProbcatIOError(f"{path}: not a probcat weights file (missing state_dict/hparams)")
    return state


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float):
    state = _read(Path(path))
    if state.get("kind") != "detection":
        raise ProbcatIOError(f"{path}: holds {state.get('kind')!r} weights, not detection")
    try:
        net = DetectionNet(**state["hparams"])
        net.load_state_dict(state["state_dict"])
    except (TypeError, RuntimeError) as e:
        raise ProbcatIOError(f"{path}: weights do not fit the detection network ({e})") from e
    for_inference(net)
    if state.get("centroid_calibration"):
        from probcat.infer.calibration import CentroidCalibration

        net.centroid_calibration = CentroidCalibration.from_dict(state["centroid_calibration"])
    if state.get("merge"):
        net.merge_px = float(state["merge"]["radius_px"])
    return net, Survey.from_dict(state["survey"])


def load_detection(path: str | Path | None = None) -> tuple[DetectionNet, Survey]:
    """The detection encoder and the survey it was trained for (shipped LSST-i by default)."""
    p = Path(path) if path is not None else shipped(DEFAULT_DETECTION)
    if not p.exists():
        raise ProbcatFileError(f"{p}: weights file not found")
    return _load_cached(str(p.resolve()), p.stat().st_mtime)


def manifest(name: str = "manifest_detection_lsst_i.json") -> dict:
    return json.loads(shipped(name).read_text())
