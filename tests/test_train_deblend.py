import numpy as np
import pytest
import torch

from probcat.config import from_dict
from probcat.errors import ProbcatValueError
from probcat.nets.deblend import CROP
from probcat.train.deblend import DeblendTask, DeblendTrainConfig, crop_centered, train_deblend
from probcat.weights import load

TINY = {
    "data": {"bank_size": 16, "val_bank_size": 8, "batch_size": 4, "val_images": 4},
    "model": {"channels": 4},
    "phases": [{"name": "main", "steps": 3, "lr": 1e-3, "warmup": 1}],
    "val_every": 3,
    "checkpoint_every": 3,
    "threads": 1,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("deblend_runs")
    ae_cfg = from_dict(DeblendTrainConfig, {**TINY, "stage": "autoencoder"})
    ae = train_deblend(ae_cfg, root / "ae", cache_dir=cache_dir, progress=False)
    db_cfg = from_dict(
        DeblendTrainConfig,
        {**TINY, "stage": "deblender", "autoencoder": str(root / "ae" / "autoencoder.pt")},
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
