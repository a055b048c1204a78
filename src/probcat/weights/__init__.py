"""The weights registry: pretrained models shipped inside the package, each with a manifest
(config, data seed, training command, git commit, metrics, sha256).

``load(name_or_path)`` returns any kind of model by its registered name (a
``manifest_<name>.json`` in this folder, e.g. ``detection_lsst_i``) or from a weights file
(a training run's ``<kind>.pt``; its ``manifest.json`` beside it, when present, is checked
too). Files are read with ``torch.load(weights_only=True)`` (no code runs from a weights
file), and the sha256 recorded in the manifest must match. Each kind registers a builder
that turns the file's contents into an ``nn.Module`` (:func:`register_kind`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from probcat.errors import ProbcatFileError, ProbcatIOError, ProbcatValueError

__all__ = [
    "companion",
    "Weights",
    "load",
    "load_detection",
    "load_backbone",
    "names",
    "manifest",
    "manifest_of",
    "shipped",
    "read_weights",
    "register_kind",
    "sha256",
    "DEFAULT_DETECTION",
    "FORMAT",
]

DEFAULT_DETECTION = "detection_lsst_i"
FORMAT = 2  # 1: flat detection module names (upgraded on load); 2: backbone + heads modules


@dataclass(frozen=True)
class Weights:
    """A loaded model: ``kind`` (``"detection"``, ...), the ``model`` (eval mode, ready for
    inference), the ``survey`` it was trained for, its ``manifest`` (None for a bare file),
    the file's ``path`` and ``sha256``."""

    kind: str
    model: object
    survey: object
    manifest: dict | None
    path: Path
    sha256: str


_BUILDERS: dict[str, Callable[[dict, Path], object]] = {}


def register_kind(kind: str, builder: Callable[[dict, Path], object]) -> None:
    """Register how to build a model of ``kind`` from a weights file's contents (a dict with
    ``hparams``, ``state_dict``, ...) and its path (for error messages)."""
    _BUILDERS[kind] = builder


def _folder() -> Path:
    return Path(str(resources.files("probcat.weights")))


def shipped(name: str) -> Path:
    """Path of a file shipped inside the package (``detection_lsst_i.pt``, a manifest...)."""
    return _folder() / name


def names() -> list[str]:
    """Registered (shipped) weight names."""
    return sorted(p.stem[len("manifest_") :] for p in _folder().glob("manifest_*.json"))


def manifest(name: str = DEFAULT_DETECTION) -> dict:
    """The manifest of shipped weights ``name``."""
    path = _folder() / f"manifest_{name}.json"
    if not path.exists():
        raise ProbcatValueError(f"no shipped weights named {name!r}; known: {names()}")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ProbcatIOError(f"{path}: unreadable manifest ({e})") from e


def manifest_of(name_or_path) -> dict:
    """The manifest of shipped weights (by name), of a weights file (its run's
    ``manifest.json`` beside it, sha256 checked) or of a run directory (its
    ``manifest.json`` and the weights file it names). A file without a manifest gets what
    the file itself says: kind, network settings, survey, size and sha256."""
    text = str(name_or_path)
    if not isinstance(name_or_path, Path) and text in names():
        return manifest(text)
    path = Path(text)
    if path.is_dir():
        beside = path / "manifest.json"
        try:
            m = json.loads(beside.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ProbcatFileError(
                f"{path}: no readable manifest.json in the directory ({e})"
            ) from None
        if not isinstance(m, dict) or not isinstance(m.get("weights"), str):
            raise ProbcatIOError(f"{beside}: not a probcat manifest (no weights file named)")
        path = path / m["weights"]
    path, man = _resolve(path)
    if not path.is_file():
        raise ProbcatFileError(f"{path}: not a weights file")
    digest = sha256(path)
    if man is not None:
        _check_digest(path, digest, man)
        return {**man, "sha256": digest, "size_bytes": path.stat().st_size}
    state = read_weights(path)
    return {
        "kind": state["kind"],
        "weights": path.name,
        "hparams": state["hparams"],
        "survey": state.get("survey"),
        "sha256": digest,
        "size_bytes": path.stat().st_size,
        "note": "no manifest.json beside the file: what the file itself records",
    }


def companion(man: dict | None, pairs: dict[str, str]) -> str | None:
    """The shipped weights paired in ``pairs`` (shipped name -> its companion, e.g. weights
    trained further with bands masked) with the weights of manifest ``man``, when these are
    the shipped ones of that name (same sha256) and both are shipped; else None."""
    sha = (man or {}).get("sha256")
    for name, other in pairs.items():
        if sha and {name, other} <= set(names()) and manifest(name).get("sha256") == sha:
            return other
    return None


def coadd_trained(man: dict | None) -> bool:
    """Whether weights with manifest ``man`` were trained on (and calibrated for) the
    correlated noise of coadds as well as white noise (``data.coadd_fraction`` > 0)."""
    data = ((man or {}).get("config") or {}).get("data") or {}
    return bool(data.get("coadd_fraction"))


def coadd_detection_weights(bands) -> list[str]:
    """Shipped detection weights for ``bands`` trained on the noise of coadds."""
    want = "".join(bands)
    out = []
    for name in names():
        man = manifest(name)
        data = (man.get("config") or {}).get("data") or {}
        if man.get("kind") == "detection" and data.get("bands") == want and coadd_trained(man):
            out.append(name)
    return out


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_weights(path: str | Path) -> dict:
    """The contents of a probcat weights file, read with ``weights_only=True``; a clear
    :class:`~probcat.errors.ProbcatIOError` for anything else."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ProbcatFileError(f"{path}: weights file not found")
    with open(path, "rb") as f:
        head = f.read(9)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # zip or pickle
        what = "a FITS file" if head.startswith(b"SIMPLE  =") else "not a PyTorch file"
        raise ProbcatIOError(f"{path}: not a probcat weights file ({what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if first.startswith("Weights only load failed"):  # torch's advice is not ours
            first = "it holds Python objects besides tensors, which probcat does not load"
        raise ProbcatIOError(f"{path}: not a readable probcat weights file ({first})") from e
    if not isinstance(state, dict) or not {"kind", "hparams", "state_dict"} <= set(state):
        raise ProbcatIOError(f"{path}: not a probcat weights file (no kind/hparams/state_dict)")
    if state.get("format", 1) > FORMAT:
        raise ProbcatIOError(
            f"{path}: weights format {state['format']} is newer than this probcat reads "
            f"({FORMAT}); upgrade probcat"
        )
    return state


def _resolve(name_or_path) -> tuple[Path, dict | None]:
    """The weights file and its manifest (if any) of a registered name or a path."""
    if name_or_path is None:
        name_or_path = DEFAULT_DETECTION
    text = str(name_or_path)
    if not isinstance(name_or_path, Path) and text in names():
        m = manifest(text)
        return shipped(m["weights"]), m
    path = Path(text)
    if not path.exists():
        hint = "" if path.suffix else f" and no shipped weights are named so (known: {names()})"
        raise ProbcatFileError(f"{path}: weights file not found{hint}")
    beside = path.parent / "manifest.json"
    if beside.is_file():
        try:
            m = json.loads(beside.read_text())
        except (OSError, json.JSONDecodeError):
            m = None
        if isinstance(m, dict) and m.get("weights") == path.name:
            return path, m
    return path, None


def load(name_or_path=None, kind: str | None = None) -> Weights:
    """Load weights by registered name (default ``detection_lsst_i``) or path, checking the
    sha256 recorded in the manifest and, with ``kind``, that the file holds that kind."""
    path, man = _resolve(name_or_path)
    stat = path.stat()
    return _load_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, kind, _key(man))


def _check_digest(path: Path, digest: str, man: dict | None) -> None:
    expected = None if man is None else man.get("sha256")
    if expected is not None and expected != digest:
        raise ProbcatIOError(
            f"{path}: sha256 {digest[:12]}... does not match its manifest's {expected[:12]}... "
            "(the file was changed or damaged after the manifest was written)"
        )


def _key(man: dict | None) -> str | None:
    return None if man is None else json.dumps(man, sort_keys=True, default=str)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int, kind: str | None, man_key) -> Weights:
    p = Path(path)
    digest = sha256(p)
    man = None if man_key is None else json.loads(man_key)
    _check_digest(p, digest, man)
    state = read_weights(p)
    found = state["kind"]
    if kind is not None and found != kind:
        raise ProbcatValueError(f"{p}: holds {found!r} weights, not {kind!r}")
    if man is not None and man.get("kind", found) != found:
        raise ProbcatIOError(f"{p}: holds {found!r} weights but its manifest says {man['kind']!r}")
    _register_builtin()
    if found not in _BUILDERS:
        raise ProbcatValueError(f"{p}: unknown weights kind {found!r}; known: {sorted(_BUILDERS)}")
    from probcat.survey import Survey

    try:
        survey = Survey.from_dict(state["survey"])
    except Exception as e:  # a malformed survey record
        raise ProbcatIOError(f"{p}: weights carry no valid survey ({e})") from e
    model = _BUILDERS[found](state, p)
    return Weights(found, model, survey, man, p, digest)


def _build_detection(state: dict, path: Path):
    from probcat.nets.detection import DetectionNet, for_inference, upgrade_state_dict

    try:
        net = DetectionNet(**state["hparams"])
        net.load_state_dict(upgrade_state_dict(state["state_dict"]))
    except (TypeError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise ProbcatIOError(f"{path}: weights do not fit the detection network ({first})") from e
    for_inference(net)
    if state.get("centroid_calibration"):
        from probcat.infer.calibration import CentroidCalibration

        net.centroid_calibration = CentroidCalibration.from_dict(state["centroid_calibration"])
        if state.get("real_shapes_centroid_calibration"):
            net.real_shapes_centroid_calibration = CentroidCalibration.from_dict(
                state["real_shapes_centroid_calibration"]
            )
    if state.get("merge"):
        net.merge_px = float(state["merge"]["radius_px"])
    if state.get("prob_calibration") or state.get("feature_density"):
        from probcat.infer.reliability import FeatureDensity, calibration_from_dict

        if state.get("prob_calibration"):
            net.prob_calibration = calibration_from_dict(state["prob_calibration"])
        if state.get("feature_density"):
            net.feature_density = FeatureDensity.from_dict(state["feature_density"])
        net.seeing_calibrations = seeing_calibrations_from(state, path)
        net.depth_calibrations = seeing_calibrations_from(state, path, "depth_calibrations")
    if state.get("pair_rule"):
        from probcat.infer.pairs import PairRule

        net.pair_rule = PairRule.from_dict(state["pair_rule"])
    return net


def seeing_calibrations_from(state: dict, path, key: str = "seeing_calibrations") -> tuple:
    """``((factor, calibration), ...)`` of a detection weights ``state``'s
    ``seeing_calibrations`` (``[{"factor": f, "calibration": {...}}, ...]``; ``key``
    ``"depth_calibrations"``: those fitted at other depths), by factor; ``()`` for weights
    without them."""
    from probcat.infer.reliability import calibration_from_dict

    what = key.split("_")[0]
    try:
        entries = [
            (float(e["factor"]), calibration_from_dict(e["calibration"]))
            for e in state.get(key) or ()
        ]
        out = tuple(sorted(entries, key=lambda fc: fc[0]))
    except (TypeError, ValueError, KeyError) as e:
        raise ProbcatIOError(f"{path}: malformed {what} calibrations ({e})") from e
    if any(not (f > 0 and math.isfinite(f)) for f, _ in out):
        raise ProbcatIOError(f"{path}: {what} calibration factors must be positive")
    return out


def _frozen(cls, state: dict, path: Path, what: str, defaults: dict | None = None):
    """``cls(**hparams)`` with the file's state (``defaults`` fill entries older files lack),
    in eval mode with frozen parameters; a clear error when the file does not fit."""
    try:
        net = cls(**state["hparams"])
        net.load_state_dict({**(defaults or {}), **state["state_dict"]})
    except (TypeError, ValueError, RuntimeError, KeyError) as e:  # ValueError: bad hparams
        first = str(e).strip().splitlines()[0]
        raise ProbcatIOError(f"{path}: weights do not fit the {what} ({first})") from e
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _build_galaxy_model(state: dict, path: Path):
    from probcat.nets.backbone import for_inference
    from probcat.nets.deblend import GalaxyModel

    # in-place activations and channels-last convolutions (the same outputs): a batch of 512
    # crops through encoder and decoder 165 -> 133 ms and 1.6x faster on a CPU
    return for_inference(_frozen(GalaxyModel, state, path, "galaxy model"))


def _build_photoz(state: dict, path: Path):
    import torch

    from probcat.nets.photoz import PhotozNet

    # weights from before the width calibration have no sd_scale: 1
    return _frozen(PhotozNet, state, path, "photo-z network", {"sd_scale": torch.ones(())})


def _register_builtin() -> None:
    _BUILDERS.setdefault("detection", _build_detection)
    _BUILDERS.setdefault("autoencoder", _build_galaxy_model)
    _BUILDERS.setdefault("deblender", _build_galaxy_model)
    _BUILDERS.setdefault("photoz", _build_photoz)


def load_detection(name_or_path=None):
    """The detection encoder and the survey it was trained for (shipped LSST-i by default)."""
    w = load(name_or_path, kind="detection")
    return w.model, w.survey


def load_backbone(name_or_path=None):
    """The trained, trainable backbone (batch norms not folded) of detection weights, to
    start another encoder from (deblending, photo-z, ...); a :class:`Backbone`."""
    from probcat.nets.detection import DetectionNet, upgrade_state_dict

    w = load(name_or_path, kind="detection")  # checks the file and its manifest
    state = read_weights(w.path)
    net = DetectionNet(**state["hparams"])
    net.load_state_dict(upgrade_state_dict(state["state_dict"]))
    return net.backbone
