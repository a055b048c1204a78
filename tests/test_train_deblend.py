import numpy as np
import pytest
import torch

from probcat.api import load as load_api
from probcat.config import from_dict
from probcat.errors import ProbcatError, ProbcatValueError
from probcat.infer.deblend import METHODS
from probcat.nets.deblend import CROP
from probcat.train.deblend import (
    DeblendTask,
    DeblendTrainConfig,
    crop_centered,
    fit_flux_error,
    train_deblend,
)
from probcat.weights import load

TINY = {
    "data": {"bank_size": 16, "val_bank_size": 8, "batch_size": 4, "val_images": 4},
    "model": {"channels": 4},
    "phases": [{"name": "main", "steps": 3, "lr": 1e-3, "warmup": 1}],
    "val_every": 3,
    "checkpoint_every": 3,
    "threads": 1,
}


# the flux-error fit after a deblender's training, on two tiny validation scenes
FLUX_ERROR = {"scenes": 2, "samples": 3, "seed": 5, "bank_size": 16}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("deblend_runs")
    ae_cfg = from_dict(DeblendTrainConfig, {**TINY, "stage": "autoencoder"})
    ae = train_deblend(ae_cfg, root / "ae", cache_dir=cache_dir, progress=False)
    db_cfg = from_dict(
        DeblendTrainConfig,
        {
            **TINY,
            "stage": "deblender",
            "autoencoder": str(root / "ae" / "autoencoder.pt"),
            "flux_error": FLUX_ERROR,
        },
    )
    db = train_deblend(db_cfg, root / "db", cache_dir=cache_dir, progress=False)
    return root, ae, db


def test_autoencoder_then_deblender_runs(runs):
    root, ae, db = runs
    assert ae["kind"] == "autoencoder" and db["kind"] == "deblender"
    assert db["autoencoder"]["sha256"] == ae["sha256"]
    a = load(root / "ae" / "autoencoder.pt", kind="autoencoder").model
    d = load(root / "db" / "deblender.pt", kind="deblender").model
    assert a.in_size == 53 and d.in_size == CROP and d.out_size == a.out_size
    # the deblender trains its encoder only: the decoder is the autoencoder's, unchanged
    for k, v in a.decoder.state_dict().items():
        assert torch.equal(v, d.decoder.state_dict()[k]), k
    assert not torch.equal(a.encoder.convs[0].weight, d.encoder.convs[0].weight)


def test_deblender_training_fits_its_flux_error(cache_dir, runs):
    """The flux-error scale is fitted at the end of a deblender's training (one command
    reproduces the shipped record), recorded in its manifest, read by the Deblender, and
    the same as the fit run on its own on the finished weights (seeded)."""
    root, ae, db = runs
    assert "flux_error" not in ae
    rec = db["flux_error"]
    assert rec["detector"] == "detection_lsst_i" and 1 <= rec["n"] <= 2
    assert set(rec["scales"]) == set(METHODS) and rec["scale"] == rec["scales"]["subtract"]
    assert all(np.isfinite(v) and v >= 0 for v in rec["scales"].values())
    assert "2 central validation scenes (split=val, seed 5, 16-galaxy bank)" in rec["source"]
    dbl = load_api(root / "db" / "deblender.pt", kind="deblender")
    for method, scale in rec["scales"].items():
        assert dbl.flux_error_scale(method) == scale
    again = fit_flux_error(
        root / "db" / "deblender.pt", "detection_lsst_i", n_scenes=2, n_samples=3, seed=5,
        bank_size=16, cache_dir=cache_dir, progress=False,
    )  # fmt: skip
    assert again == rec


def test_deblender_batch_is_centred_crop_with_centred_target(cache_dir, runs):
    root = runs[0]
    cfg = from_dict(
        DeblendTrainConfig,
        {**TINY, "stage": "deblender", "autoencoder": str(root / "ae" / "autoencoder.pt")},
    )
    task = DeblendTask(cfg, cache_dir=cache_dir, progress=False)
    rng = np.random.default_rng(4)
    x, t = task.batch(rng)
    assert x.shape == (4, 1, CROP, CROP) and t.shape == (4, 1, 53, 53)
    # the target is one galaxy, exactly centred: its light-weighted centre is the middle
    yy, xx = torch.meshgrid(torch.arange(53.0), torch.arange(53.0), indexing="ij")
    w = t[:, 0]
    cx = (w * xx).sum((1, 2)) / w.sum((1, 2))
    cy = (w * yy).sum((1, 2)) / w.sum((1, 2))
    assert torch.allclose(cx, torch.full_like(cx, 26.0), atol=0.05)
    assert torch.allclose(cy, torch.full_like(cy, 26.0), atol=0.05)


def test_crop_centered_rounds_to_the_nearest_pixel():
    img = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    assert crop_centered(img, 4.4, 5.6, 3)[0, 1, 1] == img[0, 6, 4]
    assert crop_centered(img, 4.6, 5.4, 3)[0, 1, 1] == img[0, 5, 5]


def test_config_errors():
    with pytest.raises(ProbcatValueError, match="channels"):
        from_dict(DeblendTrainConfig, {"model": {"channels": 5}})
    with pytest.raises(ProbcatValueError, match="batch_size"):
        from_dict(DeblendTrainConfig, {"data": {"batch_size": 0}})
    with pytest.raises(ProbcatValueError, match="flux_error.scenes"):
        from_dict(DeblendTrainConfig, {"flux_error": {"scenes": -1}})
    with pytest.raises(ProbcatValueError, match="flux_error.samples"):
        from_dict(DeblendTrainConfig, {"flux_error": {"samples": 0}})
    from_dict(DeblendTrainConfig, {"flux_error": {"scenes": 0, "samples": 0}})  # no fit


def test_a_wrong_flux_error_detector_stops_the_run_before_training(tmp_path):
    """Named weights that are not a detector, or no weights at all: an error before any
    bank is built or step taken, not after the training."""
    for name in ("deblender_lsst_i", "no_such_weights"):
        cfg = from_dict(DeblendTrainConfig, {**TINY, "stage": "deblender",
                                             "flux_error": {"detector": name}})  # fmt: skip
        with pytest.raises(ProbcatError, match=name):
            train_deblend(cfg, tmp_path / name, cache_dir=tmp_path / "cache", progress=False)
        assert not (tmp_path / name).exists() and not (tmp_path / "cache").exists()
    # the autoencoder the deblender starts from, too (it was read after the banks)
    for name in ("detection_lsst_i", "no_such_weights"):
        cfg = from_dict(DeblendTrainConfig, {**TINY, "stage": "deblender", "autoencoder": name,
                                             "flux_error": {"scenes": 0}})  # fmt: skip
        with pytest.raises(ProbcatError, match=name):
            train_deblend(cfg, tmp_path / name, cache_dir=tmp_path / "cache", progress=False)
        assert not (tmp_path / name).exists() and not (tmp_path / "cache").exists()
