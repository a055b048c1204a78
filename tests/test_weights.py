import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from probcat.errors import ProbcatFileError, ProbcatIOError, ProbcatValueError
from probcat.nets.detection import DetectionNet
from probcat.survey import Survey
from probcat.weights import load, manifest, names, read_weights, sha256, shipped


def _run_dir(tmp_path, name="detection_lsst_i"):
    """A copy of shipped weights as a training run: detection.pt + manifest.json."""
    m = manifest(name)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(shipped(m["weights"]), run / "detection.pt")
    (run / "manifest.json").write_text(json.dumps({**m, "weights": "detection.pt"}))
    return run


def test_registry_lists_and_loads_the_shipped_detection_weights():
    assert "detection_lsst_i" in names()
    w = load("detection_lsst_i")
    assert w.kind == "detection" and isinstance(w.model, DetectionNet)
    assert w.sha256 == manifest("detection_lsst_i")["sha256"] == sha256(w.path)
    assert w.survey.band_names == ["i"] or tuple(w.survey.band_names) == ("i",)
    assert not w.model.training and w.model.merge_px > 0
    assert w.model.centroid_calibration is not None
    assert read_weights(w.path)["format"] == 2  # readable with weights_only=True


@pytest.mark.parametrize("name", ["detection_lsst_i", "detection_lsst_ugrizy"])
def test_shipped_seeing_calibrations_match_manifest_and_config(name):
    """A shipped detection file carries the seeing calibrations its manifest lists, at the
    factors its training config asks for (a refit left unshipped, or a config left behind,
    fails here)."""
    listed = [e["factor"] for e in manifest(name).get("seeing_calibrations") or ()]
    net = load(name).model
    assert listed and [f for f, _ in net.seeing_calibrations] == sorted(listed)
    config = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    assert sorted(yaml.safe_load(config.read_text())["fits"]["seeing_factors"]) == sorted(listed)


@pytest.mark.parametrize("name", ["detection_lsst_i", "detection_lsst_ugrizy"])
def test_shipped_centroid_calibrations_are_binned_by_snr_as_listed(name):
    """The shipped weights with a location refiner carry centroid intervals binned by
    detection SNR, the calibration their manifest lists, fitted on as many scenes as their
    training config asks for (a refit left unshipped, or a config left behind, fails)."""
    from probcat.infer.calibration import CentroidCalibration

    m = manifest(name)
    net = load(name).model
    assert net.loc_refine
    cal = net.centroid_calibration
    assert cal.binned and len(cal.snr) >= 6 and np.all(np.diff(cal.snr) > 0)
    assert cal == CentroidCalibration.from_dict(m["centroid_calibration"])
    config = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    scenes = yaml.safe_load(config.read_text())["fits"]["calibration_scenes"]
    assert cal.source.startswith(f"{scenes} validation scenes")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ProbcatFileError, match="detection_lsst_i"):
        load("detection_lsst_q")


def test_changed_file_fails_its_manifest_sha256(tmp_path):
    run = _run_dir(tmp_path)
    assert load(run / "detection.pt").manifest is not None  # intact: loads and checks
    data = bytearray((run / "detection.pt").read_bytes())
    data[-100] ^= 0xFF
    (run / "detection.pt").write_bytes(bytes(data))
    with pytest.raises(ProbcatIOError, match="does not match its manifest"):
        load(run / "detection.pt")


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ProbcatIOError, match=r"not a probcat weights file \(not a PyTorch file\)"):
        load(bad)
    image = tmp_path / "image.fits"  # an image given where weights go
    image.write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    with pytest.raises(ProbcatIOError, match=r"not a probcat weights file \(a FITS file\)"):
        load(image)
    broken = tmp_path / "broken.pt"  # a zip header and nothing else
    broken.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(ProbcatIOError, match="not a readable probcat weights file"):
        load(broken)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(3)}, foreign)
    with pytest.raises(ProbcatIOError, match="not a probcat weights file"):
        load(foreign)
    code = tmp_path / "code.pt"  # an arbitrary object: refused by weights_only=True
    torch.save({"kind": "detection", "hparams": {}, "state_dict": {}, "x": Survey.lsst()}, code)
    with pytest.raises(ProbcatIOError, match="holds Python objects besides tensors"):
        load(code)


def test_mismatched_weights_and_kinds(tmp_path, weights):
    state = torch.load(weights, weights_only=True)
    state["hparams"] = {**state["hparams"], "channels": 16}
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(ProbcatIOError, match="do not fit the detection network"):
        load(tmp_path / "mismatch.pt")
    with pytest.raises(ProbcatValueError, match="holds 'detection' weights, not 'photoz'"):
        load(weights, kind="photoz")
    state = torch.load(weights, weights_only=True)
    torch.save({**state, "kind": "photoz"}, tmp_path / "relabelled.pt")
    with pytest.raises(ProbcatIOError, match="do not fit the photo-z network"):
        load(tmp_path / "relabelled.pt")
    torch.save({**state, "kind": "spectra"}, tmp_path / "unknown.pt")
    with pytest.raises(ProbcatValueError, match="unknown weights kind 'spectra'"):
        load(tmp_path / "unknown.pt")
    torch.save({**state, "format": 99}, tmp_path / "future.pt")
    with pytest.raises(ProbcatIOError, match="newer than this probcat reads"):
        load(tmp_path / "future.pt")


def test_malformed_seeing_calibrations_are_clear_errors(tmp_path, weights):
    state = torch.load(weights, weights_only=True)
    cal = {"x": [0.0, 1.0], "y": [0.0, 0.5], "n": 300, "source": "x1.5"}
    state["prob_calibration"] = {**cal, "source": "own"}  # they refine the weights' own
    good = [{"factor": 2.0, "calibration": cal}, {"factor": 1.5, "calibration": cal}]
    torch.save({**state, "seeing_calibrations": good}, tmp_path / "good.pt")
    net = load(tmp_path / "good.pt").model
    assert [f for f, _ in net.seeing_calibrations] == [1.5, 2.0]  # sorted by factor
    for bad, why in (
        ([{"factor": 1.5}], "malformed seeing calibrations"),
        ([{"factor": "wide", "calibration": cal}], "malformed seeing calibrations"),
        ([{"factor": -1.0, "calibration": cal}], "factors must be positive"),
    ):
        torch.save({**state, "seeing_calibrations": bad}, tmp_path / "bad.pt")
        with pytest.raises(ProbcatIOError, match=why):
            load(tmp_path / "bad.pt")


def test_first_format_weights_are_upgraded_to_the_same_network(tmp_path, weights):
    """Weights written before the backbone and heads became modules (flat names) load
    into the same network."""
    state = torch.load(weights, weights_only=True)
    renames = {"backbone.": "", "detection_head.": ""}
    old = {}
    for k, v in state["state_dict"].items():
        for new, flat in renames.items():
            if k.startswith(new):
                k = flat + k[len(new) :]
        old[k] = v
    assert "stem.0.weight" in old and "det_head.weight" in old
    v1 = {k: v for k, v in state.items() if k != "format"}
    torch.save({**v1, "state_dict": old}, tmp_path / "v1.pt")
    a, b = load(weights).model, load(tmp_path / "v1.pt").model
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, 40, 40))).float()
    with torch.no_grad():
        assert torch.equal(a(x).count_logit, b(x).count_logit)


def test_trained_backbone_for_other_encoders():
    """The detection weights' backbone, trainable, gives the shipped network's features."""
    from probcat.weights import load_backbone

    bb = load_backbone("detection_lsst_i")
    net = load("detection_lsst_i").model
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())  # not folded
    bb.eval()
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 1, 60, 60))).float()
    with torch.no_grad():
        assert torch.allclose(bb(x), net.features(x), atol=1e-4)
    assert bb.receptive_field == net.receptive_field and bb.feature_halo == net.feature_halo
