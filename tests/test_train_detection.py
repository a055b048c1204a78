import json

import pytest
import torch

from probcat.errors import ProbcatValueError
from probcat.train.detection import DetectionTrainConfig, load_config, train_detection

pytestmark = pytest.mark.filterwarnings("ignore:no centroid calibration")

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
    calibration_scenes=4,
    merge_scenes=2,
)


def _batch_and_net(cache_dir, **settings):
    """A TINY config with ``settings``, a seeded batch of 4 scenes and a fresh network."""
    import numpy as np

    from probcat.train.detection import _Data

    cfg = DetectionTrainConfig(**{**TINY, **settings})
    data = _Data(cfg, cache_dir=cache_dir, progress=False)
    x, truth = data.batch(np.random.default_rng(1), 4)
    torch.manual_seed(0)
    return cfg, x, truth, cfg.net().eval()


def test_train_writes_weights_manifest_and_resumes(tmp_path, cache_dir):
    cfg = DetectionTrainConfig(**TINY)
    with pytest.warns(UserWarning, match="no centroid calibration"):  # untrained: no matches
        m = train_detection(cfg, tmp_path / "run", cache_dir=cache_dir, progress=False, command="t")
    assert m["steps"] == 6 and len(m["history"]) == 2 and m["centroid_calibration"] is None
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


def test_finetune_phase_resumes_first_phase_checkpoint(tmp_path, cache_dir):
    run = tmp_path / "run"
    train_detection(DetectionTrainConfig(**TINY), run, cache_dir=cache_dir, progress=False)
    first = torch.load(run / "checkpoint.pt", weights_only=False)
    assert first["step"] == 6
    cfg = DetectionTrainConfig(**{**TINY, "finetune_steps": 3, "finetune_lr": 1e-3})
    m = train_detection(cfg, run, cache_dir=cache_dir, progress=False)
    assert m["steps"] == 9 and m["config"]["finetune_cond_locs"] == "sampled"
    assert len(m["history"]) == 3  # steps 3 and 6 of the first phase, then step 9
    after = torch.load(run / "checkpoint.pt", weights_only=False)
    moved = [not torch.equal(first["model"][k], v) for k, v in after["model"].items()]
    assert any(moved)
    # a finished fine-tuning run does not resume under other fine-tuning settings
    with pytest.raises(ProbcatValueError, match="different config"):
        train_detection(
            DetectionTrainConfig(**{**TINY, "finetune_steps": 3, "finetune_lr": 2e-3}),
            run,
            cache_dir=cache_dir,
            progress=False,
        )


def test_location_refiner_joins_in_the_finetune_phase(tmp_path, cache_dir):
    """A first-phase checkpoint without the location refiner resumes into a config that
    adds it for the fine-tuning phase; the refiner (zero last layer at first) is trained
    there, with a parameter group of its own."""
    run = tmp_path / "run"
    train_detection(DetectionTrainConfig(**TINY), run, cache_dir=cache_dir, progress=False)
    cfg = DetectionTrainConfig(**{**TINY, "finetune_steps": 3, "loc_refine": True})
    m = train_detection(cfg, run, cache_dir=cache_dir, progress=False)
    assert m["steps"] == 9
    state = torch.load(run / "detection.pt", weights_only=False)
    assert state["hparams"]["loc_refine"]
    head = state["state_dict"]["refiner.out.weight"]
    assert head.abs().sum() > 0  # moved from its zero start
    first = {k: v for k, v in state["state_dict"].items() if not k.startswith("refiner.")}
    assert len(first) < len(state["state_dict"])
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert len(ckpt["optimizer"]["param_groups"]) == 2
    # and that fine-tuning checkpoint resumes (two parameter groups)
    more = DetectionTrainConfig(**{**TINY, "finetune_steps": 3, "loc_refine": True})
    assert train_detection(more, run, cache_dir=cache_dir, progress=False)["steps"] == 9
    with pytest.raises(ProbcatValueError, match="finetune_steps"):
        DetectionTrainConfig(loc_refine=True)


def test_refiner_alone_in_a_third_phase_on_the_frozen_network(tmp_path, cache_dir):
    """A finished two-phase run without a refiner resumes into a config that adds one in a
    third, refiner-only phase: every other weight (batch-norm statistics included) stays
    as it was, the refiner moves, and the rule that merges duplicate claims is fitted."""
    run = tmp_path / "run"
    two = {**TINY, "finetune_steps": 3}
    train_detection(DetectionTrainConfig(**two), run, cache_dir=cache_dir, progress=False)
    before = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    cfg = DetectionTrainConfig(**{**two, "loc_refine": True, "refine_steps": 3})
    assert not cfg.joint_refiner and cfg.total_steps == 12
    m = train_detection(cfg, run, cache_dir=cache_dir, progress=False)
    assert m["steps"] == 12 and "refine" in m["history"][-1]["val"]
    state = torch.load(run / "detection.pt", weights_only=False)
    after = state["state_dict"]
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert after["refiner.out.weight"].abs().sum() > 0  # moved from its zero start
    assert "merge" in state and "merge" in m
    # the refiner-only phase does not resume into other settings of the first two phases
    with pytest.raises(ProbcatValueError, match="different config"):
        other = {**two, "finetune_lr": 1e-3, "loc_refine": True, "refine_steps": 3}
        train_detection(DetectionTrainConfig(**other), run, cache_dir=cache_dir, progress=False)
    with pytest.raises(ProbcatValueError, match="set loc_refine"):
        DetectionTrainConfig(refine_steps=5)


def test_refiner_phase_learning_rate_restarts():
    from probcat.train.detection import _lr

    cfg = DetectionTrainConfig(
        **{**TINY, "steps": 100, "finetune_steps": 300, "loc_refine": True, "refine_steps": 300}
    )
    assert _lr(cfg, 399) < 1e-7  # the fine-tuning phase has decayed
    assert _lr(cfg, 400) == pytest.approx(cfg.refine_lr / 100)
    assert _lr(cfg, 499) == pytest.approx(cfg.refine_lr)
    assert _lr(cfg, 699) < 1e-6


def test_refine_loss_is_the_normal_nll_of_the_true_positions(cache_dir):
    import math

    from probcat.nets.stamps import REFINE_SD0
    from probcat.train.detection import checkerboard_loss

    cfg, x, truth, net = _batch_and_net(cache_dir, finetune_steps=1, loc_refine=True)
    with torch.no_grad():
        plain = checkerboard_loss(net, x, truth, torch.Generator().manual_seed(0))
        loss = checkerboard_loss(
            net, x, truth, torch.Generator().manual_seed(0), cond_locs="sampled", refine=True
        )
    n = int((truth.n_sources > 0).sum())
    assert n > 0 and "refine" in loss and "refine" not in plain
    # a fresh refiner returns the jittered proposal with sd REFINE_SD0 px: the NLL per
    # source and axis is at least that of a perfect mean
    sd = REFINE_SD0 / cfg.tile_size
    floor = 2 * n * (math.log(sd) + 0.5 * math.log(2 * math.pi)) / x.shape[0]
    assert float(loss["refine"]) > floor
    assert float(loss["total"]) == pytest.approx(
        float(loss["count"] + loss["loc"] + loss["type"] + loss["refine"]), rel=1e-5
    )


def test_finetune_learning_rate_restarts():
    from probcat.train.detection import _lr

    cfg = DetectionTrainConfig(**{**TINY, "steps": 100, "finetune_steps": 300, "finetune_lr": 1e-3})
    assert _lr(cfg, 99) < 1e-3 * cfg.lr  # first phase decays to ~0
    assert _lr(cfg, 100) == pytest.approx(1e-3 / 100)  # warm-up restarts
    assert _lr(cfg, 199) == pytest.approx(1e-3)
    assert _lr(cfg, 399) < 1e-7
    with pytest.raises(ProbcatValueError, match="finetune_cond_locs"):
        DetectionTrainConfig(finetune_cond_locs="jitter")


def test_sampled_conditioning_locations_change_the_loss(cache_dir):
    """With sampled conditioning locations the later groups see other inputs than the
    truth (so another loss), while the marginal pass is the same."""
    from probcat.train.detection import checkerboard_loss

    _, x, truth, net = _batch_and_net(cache_dir)
    with torch.no_grad():
        a = checkerboard_loss(net, x, truth, torch.Generator().manual_seed(0))
        b = checkerboard_loss(net, x, truth, torch.Generator().manual_seed(0), cond_locs="sampled")
        c = checkerboard_loss(net, x, truth, torch.Generator().manual_seed(0), cond_locs="sampled")
    assert truth.n_sources.sum() > 0
    assert float(a["count"]) != float(b["count"])
    assert float(b["total"]) == float(c["total"])  # seeded draws


def test_calibrate_run_records_calibration_in_weights_and_manifest(
    tmp_path, cache_dir, monkeypatch
):
    import numpy as np

    import probcat.infer.calibration as C
    from probcat.train.detection import calibrate_run
    from probcat.weights import load_detection

    run = tmp_path / "run"
    train_detection(DetectionTrainConfig(**TINY), run, cache_dir=cache_dir, progress=False)
    assert load_detection(run / "detection.pt")[0].centroid_calibration is None
    seen = {}

    def fake_fit(net, sim, noise_sigma, *, n_scenes, rng, source, progress):
        seen.update(n_scenes=n_scenes, val=sim.bank.config.split, size=sim.config.shape)
        z = np.abs(np.random.default_rng(0).standard_normal(1000))
        return C.calibration_from_errors(z, source)

    monkeypatch.setattr(C, "fit_centroid_calibration", fake_fit)
    m = calibrate_run(run, n_scenes=7, cache_dir=cache_dir, progress=False)
    assert seen == {"n_scenes": 7, "val": "val", "size": (30, 30)}
    net, _ = load_detection(run / "detection.pt")
    assert net.centroid_calibration.factor(0.6827) == pytest.approx(1.0, abs=0.1)
    assert m["centroid_calibration"] == net.centroid_calibration.to_dict()
