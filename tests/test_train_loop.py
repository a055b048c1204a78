"""The generic training loop on a toy task (linear regression with a batch norm)."""

import collections

import numpy as np
import pytest
import torch
from torch import nn

from probcat.errors import ProbcatValueError
from probcat.tiles import TileCatalog
from probcat.train.loop import LoopSettings, Phase, fit, model_device, phase_lr, to_device


class Toy:
    kind = "toy"

    def __init__(self, phases):
        self._phases = phases
        self.w = torch.tensor([[2.0], [-1.0]])

    def build_model(self):
        return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def phases(self):
        return self._phases

    def batch(self, rng):
        x = torch.from_numpy(rng.standard_normal((16, 2))).float()
        return x, x @ self.w + 0.1 * torch.randn(
            16, 1, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30)))
        )

    def loss(self, model, batch, phase, gen):
        x, y = batch
        noise = 1e-3 * torch.randn(y.shape, generator=gen).to(y.device)  # resumed too
        mse = ((model(x) - y - noise) ** 2).mean()
        return {"mse": mse, "total": mse}

    def validate(self, model):
        x = torch.linspace(-1, 1, 20)[:, None].repeat(1, 2)
        pred = model(x.to(model_device(model))).cpu()
        return {"total": float(((pred - x @ self.w) ** 2).mean())}

    def finish(self, model, progress):
        return {"fitted": 1.0}

    def weights(self, model):
        return {"kind": "toy", "hparams": {}, "state_dict": model.state_dict(), "survey": {}}

    def describe_data(self):
        return {"train": "toy"}


PHASES = [Phase("a", 4, 0.05, warmup=2), Phase("b", 4, 0.02, warmup=1, trainable=("2.",))]


def _fit(out, stop=None, phases=PHASES, seed=0, device="cpu", fits=None):
    cfg = {"phases": [p.__dict__ for p in phases], "seed": seed}
    if fits is not None:
        cfg["fits"] = fits
    return fit(
        Toy(phases),
        out,
        config=cfg,
        settings=LoopSettings(seed, 3, 100, 1),
        progress=False,
        stop_after=stop,
        device=device,
    )


def test_resume_is_exact_at_any_step(tmp_path):
    straight = _fit(tmp_path / "straight")
    want = torch.load(tmp_path / "straight/checkpoint.pt", weights_only=False)["model"]
    for k in (1, 3, 4, 6):
        run = tmp_path / f"stop{k}"
        assert _fit(run, stop=k) is None
        m = _fit(run)
        got = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
        assert all(torch.equal(v, got[name]) for name, v in want.items()), k
        assert [h["val"] for h in m["history"]] == [h["val"] for h in straight["history"]]
        # the logged training loss (a moving average, started afresh in each phase) too
        assert [h["train_loss"] for h in m["history"]] == [
            h["train_loss"] for h in straight["history"]
        ], k
    assert straight["fitted"] == 1.0 and straight["steps"] == 8
    assert (tmp_path / "straight/toy.pt").exists()


def test_phase_trains_only_its_parameters(tmp_path):
    _fit(tmp_path / "run", stop=4)
    before = torch.load(tmp_path / "run/checkpoint.pt", weights_only=False)["model"]
    _fit(tmp_path / "run")
    after = torch.load(tmp_path / "run/checkpoint.pt", weights_only=False)["model"]
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    # phase b trains layer 2 only; the batch norm still updates its running statistics
    assert {"2.weight", "2.bias"} <= moved
    assert not moved & {"0.weight", "0.bias", "1.weight", "1.bias"}


def test_checkpoint_refuses_another_config_but_not_unstarted_phases(tmp_path):
    _fit(tmp_path / "run", stop=2)
    later = [PHASES[0], Phase("b", 6, 0.01)]  # phase b has not started: may change
    assert _fit(tmp_path / "run", phases=later)["steps"] == 10
    with pytest.raises(ProbcatValueError, match=r"different config \(phases changed\)"):
        _fit(tmp_path / "run", phases=[Phase("a", 4, 0.1), Phase("b", 6, 0.01)])
    with pytest.raises(ProbcatValueError, match=r"different config \(seed changed\)"):
        _fit(tmp_path / "run", phases=later, seed=1)
    # the fits after training never change the steps: new or changed ones resume
    assert _fit(tmp_path / "run2", stop=2) is None
    assert _fit(tmp_path / "run2", fits={"depth_years": [1.0]})["steps"] == 8


def test_a_finished_run_loaded_again_keeps_who_trained_it(tmp_path, monkeypatch):
    """Loading a finished run again (a resumed chain, a reused network) rewrites its files,
    but its manifest keeps the command, commit and time of the training, not the loader's;
    an unfinished run resumed records the command that finished it."""
    import json

    import probcat.provenance as provenance

    monkeypatch.setattr(provenance, "git_commit", lambda: "aaaa")
    first = _fit(tmp_path / "run")
    assert first["git_commit"] == "aaaa" and first["command"].startswith("probcat")
    monkeypatch.setattr(provenance, "git_commit", lambda: "bbbb")
    again = fit(Toy(PHASES), tmp_path / "run", config={"phases": [p.__dict__ for p in PHASES],
                "seed": 0}, settings=LoopSettings(0, 3, 100, 1), progress=False,
                command="the loader")  # fmt: skip
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    for m in (again, on_disk):
        assert (m["git_commit"], m["command"]) == ("aaaa", first["command"])
        assert m["training_s"] == first["training_s"]
    assert _fit(tmp_path / "half", stop=3) is None
    resumed = _fit(tmp_path / "half")
    assert resumed["git_commit"] == "bbbb"


def test_loss_decreases(tmp_path):
    m = _fit(tmp_path / "run", phases=[Phase("a", 60, 0.05, warmup=5)])
    vals = [h["val"]["total"] for h in m["history"]]
    assert vals[-1] < 0.2 * vals[0]


def test_phase_lr_warms_up_then_decays_to_zero():
    p = Phase("a", 100, 1e-2, warmup=10)
    assert phase_lr(p, 0) == pytest.approx(1e-3)
    assert phase_lr(p, 9) == pytest.approx(1e-2)
    assert phase_lr(p, 10) == pytest.approx(1e-2)
    assert phase_lr(p, 55) == pytest.approx(0.5e-2)
    assert phase_lr(p, 99) < 1e-5
    lrs = [phase_lr(p, k) for k in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert np.isfinite(phase_lr(Phase("b", 1, 1.0, warmup=5), 0))


def test_to_device_moves_every_tensor_of_a_batch():
    cat = TileCatalog(
        torch.ones(2, 3, 3, dtype=torch.long), torch.zeros(2, 3, 3, 2),
        {"flux": torch.ones(2, 3, 3, 1)}, 4, (12, 12), 0,
    )  # fmt: skip
    batch = (torch.ones(2, 1, 12, 12), cat, [torch.zeros(1)], {"z": torch.zeros(3)}, 5)
    meta = torch.device("meta")  # a device every machine has
    x, c, lst, d, n = to_device(batch, meta)
    assert x.device == meta and c.n_sources.device == meta and c.locs.device == meta
    assert c.params["flux"].device == meta and lst[0].device == meta and d["z"].device == meta
    assert (c.tile_size, c.image_shape, n) == (4, (12, 12), 5) and isinstance(lst, list)
    assert to_device(batch, "cpu")[0] is batch[0]  # already there: the same tensor
    pair = to_device(collections.namedtuple("Pair", "x y")(torch.ones(2), 3), meta)
    assert pair.x.device == meta and pair.y == 3 and type(pair).__name__ == "Pair"


def test_run_records_its_device_and_writes_cpu_tensors(tmp_path):
    m = _fit(tmp_path / "run")
    assert m["device"] == "cpu"
    w = torch.load(tmp_path / "run/toy.pt", weights_only=False)
    assert all(v.device.type == "cpu" for v in w["state_dict"].values())
    with pytest.raises(ProbcatValueError, match="device"):
        _fit(tmp_path / "bad", device="gpu0")


class ConvToy(Toy):
    """The toy on 24x24 images, through convolutions whose weight gradients cuDNN may sum
    in any order."""

    def build_model(self):
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1),
        )  # fmt: skip

    def batch(self, rng):
        x = torch.from_numpy(rng.standard_normal((64, 1, 24, 24))).float()
        return x, x.mean((1, 2, 3))[:, None] * 10

    def validate(self, model):
        x = torch.linspace(-1, 1, 20 * 576).reshape(20, 1, 24, 24)
        pred = model(x.to(model_device(model))).cpu()
        return {"total": float(((pred - x.mean((1, 2, 3))[:, None] * 10) ** 2).mean())}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_two_trainings_on_a_gpu_give_the_same_weights(tmp_path):
    phases = [Phase("a", 30, 0.05)]
    cfg = {"phases": [p.__dict__ for p in phases], "seed": 0}
    runs = []
    for name in ("a", "b"):
        fit(ConvToy(phases), tmp_path / name, config=cfg, settings=LoopSettings(0, 10, 100, 1),
            progress=False, device="cuda")  # fmt: skip
        runs.append(torch.load(tmp_path / name / "toy.pt", weights_only=False)["state_dict"])
    assert all(torch.equal(v, runs[1][k]) for k, v in runs[0].items())
    assert not torch.backends.cudnn.deterministic  # torch's settings restored


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_training_on_a_gpu_matches_the_cpu_and_resumes_on_either(tmp_path):
    cpu = _fit(tmp_path / "cpu")
    gpu = _fit(tmp_path / "gpu", device="cuda")
    assert gpu["device"].startswith("cuda")
    # the same batches and draws (made on the CPU): the same losses but for float rounding,
    # which Adam's first steps (about lr times the gradient's sign) amplify to a few percent
    for a, b in zip(cpu["history"], gpu["history"]):
        assert b["val"]["total"] == pytest.approx(a["val"]["total"], rel=0.1, abs=1e-3)
    w = torch.load(tmp_path / "gpu/toy.pt", weights_only=False)  # no map_location needed
    assert all(v.device.type == "cpu" for v in w["state_dict"].values())
    assert _fit(tmp_path / "mixed", stop=3, device="cuda") is None
    mixed = _fit(tmp_path / "mixed", device="cpu")  # a GPU checkpoint resumes on the CPU
    assert mixed["history"][-1]["val"]["total"] == pytest.approx(
        cpu["history"][-1]["val"]["total"], rel=0.1, abs=1e-3
    )
