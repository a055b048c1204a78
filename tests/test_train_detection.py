import json

import pytest
import torch

from probcat.errors import ProbcatValueError
from probcat.train.detection import DetectionTrainConfig, load_config, train_detection

TINY = dict(
    bank_size=12,
    val_bank_size=6,
    image_size=30,
    margin=2,
    batch_size=4,
    steps=6,
    lr=5e-3,
    warmup=1,
    val_scenes=4,
    val_every=3,
    checkpoint_every=3,
    threads=1,
    stem_channels=4,
    channels=8,
    n_blocks=1,
)


def test_train_writes_weights_manifest_and_resumes(tmp_path, cache_dir):
    cfg = DetectionTrainConfig(**TINY)
    m = train_detection(cfg, tmp_path / "run", cache_dir=cache_dir, progress=False, command="t")
    assert m["steps"] == 6 and len(m["history"]) == 2
    state = torch.load(tmp_path / "run/detection.pt", weights_only=False)
    assert state["kind"] == "detection" and state["hparams"]["channels"] == 8
    assert json.loads((tmp_path / "run/manifest.json").read_text())["command"] == "t"
    # resuming with more steps continues from the checkpoint
    more = DetectionTrainConfig(**{**TINY, "steps": 6})
    m2 = train_detection(more, tmp_path / "run", cache_dir=cache_dir, progress=False)
    assert m2["steps"] == 6 and len(m2["history"]) == 2  # nothing left to do
    with pytest.raises(ProbcatValueError, match="different config"):
        train_detection(
            DetectionTrainConfig(**{**TINY, "lr": 1e-2}),
            tmp_path / "run",
            cache_dir=cache_dir,
            progress=False,
        )


def test_loss_decreases_on_fixed_batch(cache_dir):
    from probcat.train.detection import _Data, checkerboard_loss

    cfg = DetectionTrainConfig(**TINY)
    torch.manual_seed(0)
    data = _Data(cfg, cache_dir=cache_dir, progress=False)
    import numpy as np

    x, truth = data.batch(np.random.default_rng(0), 8)
    net = cfg.net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = checkerboard_loss(net, x, truth, torch.Generator().manual_seed(0))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_config_rejects_unknown_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ProbcatValueError, match="unknown training setting"):
        load_config(p)
    with pytest.raises(ProbcatValueError, match="multiple of tile"):
        DetectionTrainConfig(image_size=33)
