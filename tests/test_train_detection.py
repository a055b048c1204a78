import json
import platform

import numpy as np
import pytest
import torch

from probcat.config import from_dict, to_dict
from probcat.errors import ProbcatValueError
from probcat.train.detection import (
    DetectionTask,
    DetectionTrainConfig,
    checkerboard_loss,
    describe_data,
    load_config,
    train_detection,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:no centroid calibration"),
    pytest.mark.filterwarnings("ignore:no probability calibration"),
]

TINY = {
    "data": {
        "bank_size": 12,
        "val_bank_size": 6,
        "image_size": 30,
        "margin": 2,
        "batch_size": 4,
        "val_scenes": 4,
    },
    "model": {"stem_channels": 4, "channels": 8, "n_blocks": 1},
    "phases": [{"name": "main", "steps": 6, "lr": 5e-3, "warmup": 1}],
    "fits": {
        "calibration_scenes": 4,
        "reliability_scenes": 4,
        "merge_scenes": 2,
        "sky_scenes": 2,
        "pair_scenes": 4,
    },
    "val_every": 3,
    "checkpoint_every": 3,
    "threads": 1,
}


def _cfg(**changes) -> DetectionTrainConfig:
    data = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        node = data
        *path, last = key.split("__")
        for k in path:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        node[last] = value
    return from_dict(DetectionTrainConfig, data)


REFINE = [
    {"name": "main", "steps": 3, "lr": 5e-3, "warmup": 1},
    {"name": "finetune", "steps": 2, "lr": 1e-3, "warmup": 1, "cond_locs": "sampled"},
    {"name": "refine", "steps": 2, "lr": 2e-3, "warmup": 1, "train": "refiner"},
]


def _batch_and_net(cache_dir, **changes):
    """A TINY config, a seeded batch of 4 scenes and a fresh network."""
    cfg = _cfg(**changes)
    task = DetectionTask(cfg, cache_dir=cache_dir, progress=False)
    x, truth = task.batch(np.random.default_rng(1))
    torch.manual_seed(0)
    return cfg, x, truth, cfg.net().eval()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_a_run_on_a_gpu_trains_like_on_the_cpu_and_writes_cpu_weights(tmp_path, cache_dir):
    """Every kind of phase and the validation on the GPU; the fits and the weights file on
    the CPU."""
    from probcat.weights import read_weights

    cfg = _cfg(model__loc_refine=True, phases=REFINE)
    runs = {d: train_detection(cfg, tmp_path / d, cache_dir=cache_dir, progress=False, device=d)
            for d in ("cpu", "cuda")}  # fmt: skip
    assert runs["cuda"]["device"].startswith("cuda") and runs["cpu"]["device"] == "cpu"
    state = read_weights(tmp_path / "cuda/detection.pt")
    assert all(v.device.type == "cpu" for v in state["state_dict"].values())
    # the same batches: the same validation losses but for float rounding that Adam's
    # first steps amplify
    for h_cpu, h_gpu in zip(runs["cpu"]["history"], runs["cuda"]["history"]):
        for k, v in h_cpu["val"].items():
            assert abs(h_gpu["val"][k] - v) <= 0.25 * abs(v) + 1.0, k


@pytest.mark.slow
def test_train_writes_weights_manifest_and_resumes(tmp_path, cache_dir):
    from probcat.weights import load, read_weights

    with pytest.warns(UserWarning, match="no centroid calibration"):  # untrained: no matches
        m = train_detection(
            _cfg(), tmp_path / "run", cache_dir=cache_dir, progress=False, command="t"
        )
    assert m["steps"] == 6 and len(m["history"]) == 2 and m["centroid_calibration"] is None
    state = read_weights(tmp_path / "run/detection.pt")  # weights_only=True
    assert state["kind"] == "detection" and state["hparams"]["channels"] == 8
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    want = to_dict(_cfg())
    assert want["data"].pop("mask_fraction") == 0.0  # left out without masks: old runs resume
    assert manifest["command"] == "t" and manifest["config"] == want
    assert load(tmp_path / "run/detection.pt").sha256 == manifest["sha256"]
    sky = manifest["sky_offset"]  # what the prior's faint galaxies lift a sky estimate by
    assert sky["n_scenes"] == 2 and len(sky["per_band"]) == 1
    assert 0.0 < sky["per_band"][0] < 1.0
    # a finished run resumes to nothing left to do; another config is refused
    m2 = train_detection(_cfg(), tmp_path / "run", cache_dir=cache_dir, progress=False)
    assert m2["steps"] == 6 and len(m2["history"]) == 2
    with pytest.raises(ProbcatValueError, match="different config"):
        train_detection(
            _cfg(phases__0__lr=1e-2), tmp_path / "run", cache_dir=cache_dir, progress=False
        )


def test_a_run_under_a_moffat_psf_records_it_in_its_weights(tmp_path, cache_dir):
    """data.psf_beta: the banks are drawn under a Moffat atmosphere (a bank of their own),
    and the weights' survey says so, so that the detector measures seeing against that PSF;
    a bad index stops the run before any bank is built."""
    import probcat

    with pytest.warns(UserWarning):  # untrained: too few matches for some fits
        m = train_detection(_cfg(data__psf_beta=3.0), tmp_path / "run", cache_dir=cache_dir,
                            progress=False)  # fmt: skip
    assert "beta 3" in m["data"]["psf_profile"]
    det = probcat.load(tmp_path / "run/detection.pt")
    assert det.survey.bands[0].psf_beta == 3.0
    assert det.survey.bands[0].psf_fwhm == _cfg().survey().bands[0].psf_fwhm
    cache = tmp_path / "cache"
    with pytest.raises(ProbcatValueError, match=r"^data.psf_beta: PSF beta must be"):
        train_detection(_cfg(data__psf_beta=1.0), tmp_path / "bad", cache_dir=cache,
                        progress=False)  # fmt: skip
    assert not cache.exists() and not (tmp_path / "bad").exists()


def test_init_weights_of_another_kind_fail_before_any_bank_is_built(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ProbcatValueError, match="^init: .*photoz_lsst_ugrizy.pt: holds "
                       "'photoz' weights, not 'detection'$"):  # fmt: skip
        train_detection(_cfg(init="photoz_lsst_ugrizy"), tmp_path / "run", cache_dir=cache,
                        progress=False)  # fmt: skip
    assert not cache.exists() and not (tmp_path / "run").exists()


def _trainer(train: str):
    """The training function of ``train`` and a default config for it."""
    from probcat.train.deblend import DeblendTrainConfig, train_deblend
    from probcat.train.photoz import PhotozTrainConfig, train_photoz

    return {
        "detection": (train_detection, _cfg()),
        "deblend": (train_deblend, DeblendTrainConfig()),
        "photoz": (train_photoz, PhotozTrainConfig()),
    }[train]


@pytest.mark.parametrize("train", ["detection", "deblend", "photoz"])
def test_seeds_outside_what_numpy_and_torch_take_are_config_errors(train):
    """A negative seed went through the config and crashed numpy with a traceback once a
    photo-z run had rendered its 20,000-galaxy bank (minutes)."""
    _, cfg = _trainer(train)
    cls, base = type(cfg), to_dict(cfg)

    def with_seed(key, value):
        d = json.loads(json.dumps(base))
        *section, name = key.split(".")
        (d[section[0]] if section else d)[name] = value
        return d

    keys = ["seed", "data.catalog_seed"] + ["flux_error.seed"] * (train == "deblend")
    for key in keys:
        for bad in (-1, 2**63):
            with pytest.raises(ProbcatValueError, match=rf"^{key} must lie in"):
                from_dict(cls, with_seed(key, bad))
        from_dict(cls, with_seed(key, 2**63 - 1))  # the largest seed numpy and torch both take
    if train == "photoz":  # member k trains with seed + k
        with pytest.raises(ProbcatValueError, match=r"^seed \+ members - 1 must lie in"):
            from_dict(cls, {**base, "seed": 2**63 - 3, "members": 4})


@pytest.mark.parametrize("train", ["detection", "deblend", "photoz"])
def test_a_device_that_is_not_there_fails_before_any_bank_is_built(tmp_path, train):
    cache = tmp_path / "cache"
    fn, cfg = _trainer(train)
    with pytest.raises(ProbcatValueError, match="device 'gpu0'"):
        fn(cfg, tmp_path / "run", cache_dir=cache, progress=False, device="gpu0")
    assert not cache.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("train", ["detection", "deblend", "photoz"])
def test_a_run_directory_that_cannot_be_made_fails_before_any_bank_is_built(tmp_path, train):
    """``--out`` naming a file stopped training only once the banks were built (minutes)."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    run.write_text("a file, not a directory")
    fn, cfg = _trainer(train)
    with pytest.raises(ProbcatValueError, match="run: cannot create the run directory"):
        fn(cfg, run, cache_dir=cache, progress=False)
    assert not cache.exists() and run.read_text() == "a file, not a directory"


def test_detection_resume_is_exact(tmp_path, cache_dir):
    """3 steps, stop, resume to 6 gives the same weights as 6 steps straight."""
    cfg = _cfg(checkpoint_every=100)
    straight, parts = tmp_path / "a", tmp_path / "b"
    train_detection(cfg, straight, cache_dir=cache_dir, progress=False)
    assert train_detection(cfg, parts, cache_dir=cache_dir, progress=False, stop_after=3) is None
    assert torch.load(parts / "checkpoint.pt", weights_only=False)["step"] == 3
    train_detection(cfg, parts, cache_dir=cache_dir, progress=False)
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(parts / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert [h["val"] for h in a["history"]] == [h["val"] for h in b["history"]]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_loss_decreases_on_fixed_batch(cache_dir):
    cfg, x, truth, net = _batch_and_net(cache_dir)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = checkerboard_loss(net, x, truth, torch.Generator().manual_seed(0))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_config_rejects_typos_before_any_work(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  stem: patchfy\n")
    with pytest.raises(
        ProbcatValueError, match=r"model\.stem: 'patchfy' is not one of 'conv', 'patchify'"
    ):
        load_config(p)
    p.write_text("phases:\n  - steps: 3\n    learning_rate: 0.1\n")
    with pytest.raises(ProbcatValueError, match=r"unknown setting 'phases\[0\]\.learning_rate'"):
        load_config(p)
    p.write_text("data:\n  batch_size: 3.5\n")
    with pytest.raises(ProbcatValueError, match=r"data\.batch_size: expected an integer"):
        load_config(p)
    with pytest.raises(ProbcatValueError, match="multiple of model.tile_size"):
        _cfg(data__image_size=33)
    with pytest.raises(ProbcatValueError, match="set model.loc_refine"):
        _cfg(phases=[{"train": "refiner"}])
    for bad in ([0.8, 1.2], [1.0, 0.0], [1.0, 12.0]):
        with pytest.raises(ProbcatValueError, match="data.psf_scales must hold 1.0"):
            _cfg(data__psf_scales=bad)
    for bands, frac in (("i", 0.5), ("gri", 0.5), ("ugrizy", 1.5), ("ugrizy", -0.1)):
        with pytest.raises(ProbcatValueError, match="data.mask_fraction must lie in"):
            _cfg(data__bands=bands, data__mask_fraction=frac)
    # each of these went through and failed (or fitted on nothing) after training
    for key, bad, msg in (
        ("data__image_size", 0, r"data\.image_size must be >= 1"),
        ("data__margin", -1, r"data\.margin and model\.n_blocks must be >= 0"),
        ("model__n_blocks", -1, r"data\.margin and model\.n_blocks must be >= 0"),
        ("phases__0__warmup", -1, r"phases\[0\]\.warmup must be >= 0"),
        ("fits__merge_scenes", 0, r"fits\.merge_scenes must be >= 1"),
        ("fits__calibration_scenes", -1, r"fits\.calibration_scenes must be >= 1"),
        ("fits__reliability_scenes", 0, r"fits\.reliability_scenes must be >= 1"),
        ("fits__sky_scenes", 0, r"fits\.sky_scenes must be >= 1"),
    ):
        with pytest.raises(ProbcatValueError, match=msg):
            _cfg(**{key: bad})
    _cfg(data__margin=0, model__n_blocks=0, phases__0__warmup=0)  # the edges of what is valid


def test_a_batch_beyond_the_machines_memory_is_refused_before_the_banks(tmp_path, monkeypatch):
    from probcat import runtime
    from probcat.train.detection import STEP_BYTES_PER_PIXEL

    monkeypatch.setattr(runtime, "memory_limit", lambda: (8e9, "this machine has"))
    cfg = _cfg(data__image_size=400, data__batch_size=32)  # 7.7 GB: fits
    big = _cfg(data__image_size=420, data__batch_size=32)  # 8.5 GB: does not
    assert 32 * 400**2 * STEP_BYTES_PER_PIXEL < 8e9 < 32 * 420**2 * STEP_BYTES_PER_PIXEL
    with pytest.raises(ProbcatValueError, match="batch of 32 scenes of 420x420 px needs about"):
        train_detection(big, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                        device="cpu")  # fmt: skip
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    import probcat.train.detection as module

    monkeypatch.setattr(module, "DetectionTask", _stop)
    with pytest.raises(_Stopped):  # past the check, at the task (which builds the banks)
        train_detection(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                        device="cpu")  # fmt: skip


class _Stopped(Exception):
    pass


def _stop(*args, **kw):
    raise _Stopped


def test_masked_bands_zero_pixels_of_one_to_three_bands_and_keep_the_truth(cache_dir):
    plain = DetectionTask(_cfg(data__bands="ugrizy"), cache_dir=cache_dir, progress=False)
    cfg = _cfg(data__bands="ugrizy", data__mask_fraction=1.0)
    task = DetectionTask(cfg, cache_dir=cache_dir, progress=False)
    x0, truth0 = plain.batch(np.random.default_rng(1))
    x1, truth1 = task.batch(np.random.default_rng(1))  # the same scenes, then the masks
    torch.testing.assert_close(truth1.locs, truth0.locs)
    torch.testing.assert_close(truth1.n_sources, truth0.n_sources)
    changed = x1 != x0
    assert (x1[changed] == 0).all()  # masked pixels read 0 (no light, no noise)
    per_band = changed.flatten(2).any(-1)  # (scenes, bands): a band with pixels masked
    assert ((per_band.sum(1) >= 1) & (per_band.sum(1) <= 3)).all()  # fraction 1: every scene
    assert "masks" in describe_data(cfg) and "masks" not in describe_data(plain.cfg)
    # validation: the clean scenes and the same scenes masked; the loss of both reported
    torch.testing.assert_close(task.val[0], plain.val[0])
    assert (task.val_masked != task.val[0]).flatten(1).any(1).all()
    torch.manual_seed(0)
    parts = task.validate(cfg.net().eval())
    assert parts["total_masked"] != parts["total"] and np.isfinite(parts["total_masked"])


def test_psf_scales_train_on_a_seeing_mixture_of_their_banks(cache_dir):
    from probcat.simulate.scene import SeeingMixture

    cfg = _cfg(data__psf_scales=[1.0, 1.5])
    task = DetectionTask(cfg, cache_dir=cache_dir, progress=False)
    for sim in (task.train_sim, task.val_sim):
        assert isinstance(sim, SeeingMixture) and sim.scales == (1.0, 1.5)
        fwhm = [s.bank.survey.bands[0].psf_fwhm for s in sim.sims]
        assert fwhm == pytest.approx([cfg.survey().bands[0].psf_fwhm * k for k in (1.0, 1.5)])
    assert "x [1.0, 1.5]" in describe_data(cfg)["seeing"]
    plain = DetectionTask(_cfg(), cache_dir=cache_dir, progress=False)
    assert not isinstance(plain.train_sim, SeeingMixture)


@pytest.mark.parametrize(
    "name",
    [
        "detection_lsst_i",
        "detection_lsst_i_bulgedisk",
        "detection_lsst_i_coadd",
        "detection_lsst_ugrizy",
        "detection_lsst_ugrizy_bulgedisk",
        "detection_lsst_ugrizy_masked",
    ],
)
def test_shipped_config_is_the_shipped_weights_config(name):
    from probcat.weights import manifest

    got, want = to_dict(load_config(f"configs/{name}.yaml")), manifest(name)["config"]
    if "init" not in want:  # weights trained before runs could start from others
        assert got.pop("init") is None
    if "sky_scenes" not in want["fits"]:  # trained before the sky offset was fitted
        assert got["fits"].pop("sky_scenes") == 32
    if "reliability_scenes" not in want["fits"]:  # before it had scenes of its own
        assert got["fits"].pop("reliability_scenes") == got["fits"]["calibration_scenes"]
    if "psf_scales" not in want["data"]:  # trained before the seeing could vary
        assert got["data"].pop("psf_scales") == [1.0]
    if "psf_beta" not in want["data"]:  # trained before the PSF profile could be chosen
        assert got["data"].pop("psf_beta") is None
    if "reliability_inside_fraction" not in want["fits"]:  # calibrated on cutouts only
        assert got["fits"].pop("reliability_inside_fraction") == 0.0
    if "pair_scenes" not in want["fits"]:  # calibrated before the pair rule
        assert got["fits"].pop("pair_scenes") == 1024
    if "population" not in want["fits"]:  # fitted before the fits could have galaxies of
        assert got["fits"].pop("population") is None  # their own
    if "seeing_factors" not in want["fits"]:  # calibrated before other seeing had its own
        assert got["fits"].pop("seeing_factors") == []
        assert got["fits"].pop("seeing_scenes") == 1024
    if "depth_years" not in want["fits"]:  # calibrated before other depths had their own
        assert got["fits"].pop("depth_years") == []
        assert got["fits"].pop("depth_scenes") == 1024
    if "real_shapes_population" not in want["fits"]:  # before the second calibration
        assert got["fits"].pop("real_shapes_population") is None
        assert got["fits"].pop("real_shapes_scenes") == 1024
        assert got["fits"].pop("real_shapes_prior") == 0.1
    if "coadd_fraction" not in want["data"]:  # trained before coadd noise was simulated
        assert got["data"].pop("coadd_fraction") == 0.0
        assert got["data"].pop("coadd_visits") == 16
        assert got["data"].pop("coadd_kernels") == ["lanczos3", "bilinear"]
    if "mask_fraction" not in want["data"]:  # trained without bands masked
        assert got["data"].pop("mask_fraction") == 0.0
    if "coadd_fraction" not in want["fits"]:  # fitted on the training data's noise
        assert got["fits"].pop("coadd_fraction") is None
        assert got["fits"].pop("coadd_kernels") is None
    assert got == want
    assert load_config(f"configs/{name}.yaml", steps=7).phases[0].steps == 7


def test_init_starts_from_the_given_weights_and_is_recorded(tmp_path, cache_dir):
    first = train_detection(_cfg(), tmp_path / "a", cache_dir=cache_dir, progress=False)
    start = tmp_path / "a" / "detection.pt"
    task = DetectionTask(_cfg(init=str(start)), cache_dir=cache_dir, progress=False)
    net = task.build_model()
    from probcat.weights import read_weights

    saved = read_weights(start)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    assert task.describe_data()["init"]["sha256"] == first["sha256"]
    other = _cfg(init=str(start), model__channels=16)
    with pytest.raises(ProbcatValueError, match="does not fit"):
        DetectionTask(other, cache_dir=cache_dir, progress=False).build_model()


@pytest.mark.slow
def test_three_phases_freeze_all_but_the_refiner_last(tmp_path, cache_dir):
    """The refiner-only phase changes the refiner and nothing else (batch-norm statistics
    included); the merge rule is fitted after it."""
    run = tmp_path / "run"
    cfg = _cfg(model__loc_refine=True, phases=REFINE)
    train_detection(cfg, run, cache_dir=cache_dir, progress=False, stop_after=5)
    before = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    m = train_detection(cfg, run, cache_dir=cache_dir, progress=False)
    assert m["steps"] == 7 and "refine" in m["history"][-1]["val"]
    # validated at each phase end (steps 3, 5, 7) and every 3 steps (3, 6)
    assert [h["phase"] for h in m["history"]] == ["main", "finetune", "refine", "refine"]
    from probcat.weights import read_weights

    state = read_weights(run / "detection.pt")
    after = state["state_dict"]
    moved = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert moved and all(k.startswith("refiner.") for k in moved)
    assert after["refiner.out.weight"].abs().sum() > 0  # moved from its zero start
    assert "merge" in state and "merge" in m


@pytest.mark.slow
def test_later_phases_may_change_before_they_start(tmp_path, cache_dir):
    run = tmp_path / "run"
    cfg = _cfg(model__loc_refine=True, phases=REFINE)
    train_detection(cfg, run, cache_dir=cache_dir, progress=False, stop_after=3)
    other = json.loads(json.dumps(REFINE))
    other[2]["lr"] = 1e-3  # the refine phase has not started: allowed
    train_detection(
        _cfg(model__loc_refine=True, phases=other),
        run,
        cache_dir=cache_dir,
        progress=False,
        stop_after=5,
    )
    other[1]["lr"] = 5e-4  # the finetune phase has run: refused
    with pytest.raises(ProbcatValueError, match="different config"):
        train_detection(
            _cfg(model__loc_refine=True, phases=other), run, cache_dir=cache_dir, progress=False
        )


def test_refine_loss_is_the_normal_nll_of_the_true_positions(cache_dir):
    import math

    from probcat.nets.stamps import REFINE_SD0
    from probcat.train.detection import refiner_loss

    cfg, x, truth, net = _batch_and_net(cache_dir, model__loc_refine=True)
    with torch.no_grad():
        loss = refiner_loss(net, x, truth, torch.Generator().manual_seed(0))
    n = int((truth.n_sources > 0).sum())
    assert n > 0 and float(loss["total"]) == float(loss["refine"])
    # a fresh refiner returns the jittered proposal with sd REFINE_SD0 px: the NLL per
    # source and axis is at least that of a perfect mean
    sd = REFINE_SD0 / cfg.model.tile_size
    floor = 2 * n * (math.log(sd) + 0.5 * math.log(2 * math.pi)) / x.shape[0]
    assert float(loss["refine"]) > floor


def test_sampled_conditioning_locations_change_the_loss(cache_dir):
    """With sampled conditioning locations the later groups see other inputs than the
    truth (so another loss), while the marginal pass is the same."""
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
    import probcat.infer.calibration as C
    from probcat.train.detection import calibrate_run
    from probcat.weights import load_detection

    run = tmp_path / "run"
    train_detection(_cfg(), run, cache_dir=cache_dir, progress=False, command="train cmd")
    assert load_detection(run / "detection.pt")[0].centroid_calibration is None
    seen = {}

    def fake_fit(net, sim, noise_sigma, *, n_scenes, rng, source, progress):
        seen.update(n_scenes=n_scenes, val=sim.bank.config.split, size=sim.config.shape)
        z = np.abs(np.random.default_rng(0).standard_normal(1000))
        return C.calibration_from_errors(z, source)

    monkeypatch.setattr(C, "fit_centroid_calibration", fake_fit)
    trained = json.loads((run / "manifest.json").read_text())
    trained["versions"], trained["python"] = {"torch": "0.0+training"}, "3.0.0"
    (run / "manifest.json").write_text(json.dumps(trained))
    m = calibrate_run(run, n_scenes=7, cache_dir=cache_dir, progress=False)
    # the refit keeps the training's environment and records its own beside it
    assert m["versions"] == {"torch": "0.0+training"} and m["python"] == "3.0.0"
    from importlib.metadata import version

    assert m["recalibration_versions"]["torch"] == version("torch")  # the distribution's
    assert m["recalibration_python"] == platform.python_version()
    assert seen == {"n_scenes": 7, "val": "val", "size": (30, 30)}
    net, _ = load_detection(run / "detection.pt")  # the manifest's new sha256 matches
    assert net.centroid_calibration.factor(0.6827) == pytest.approx(1.0, abs=0.1)
    assert m["centroid_calibration"] == net.centroid_calibration.to_dict()
    assert m["command"] == "train cmd"


def test_calibrate_run_records_reliability_and_catalogs_use_it(tmp_path, cache_dir, monkeypatch):
    import probcat
    import probcat.infer.reliability as R
    from probcat.train.detection import calibrate_run
    from probcat.weights import read_weights

    run = tmp_path / "run"
    train_detection(_cfg(), run, cache_dir=cache_dir, progress=False)
    rng = np.random.default_rng(0)
    cal = R.ProbabilityCalibration((0.0, 1.0), (0.0, 0.5), 500, "test")
    dens = R.fit_feature_density(rng.standard_normal((100, 8)))  # 8 channels: TINY's

    def fake_fit(net, sim, noise_sigma, *, n_scenes, rng, source, inside_fraction):
        assert sim.bank.config.split == "val" and n_scenes == 9 and inside_fraction == 0.25
        assert "2 of them with every source inside" in source  # round(9 * 0.25)
        return cal, dens

    monkeypatch.setattr(R, "fit_reliability", fake_fit)
    m = calibrate_run(
        run,
        n_scenes=7,
        reliability_scenes=9,
        inside_fraction=0.25,
        cache_dir=cache_dir,
        progress=False,
    )
    assert m["prob_calibration"] == cal.to_dict()
    fits = read_weights(run / "detection.pt")["config"]["fits"]
    assert fits == m["config"]["fits"]  # the scenes used are recorded
    assert fits["calibration_scenes"] == 7 and fits["reliability_scenes"] == 9
    assert fits["reliability_inside_fraction"] == 0.25
    with pytest.raises(ProbcatValueError, match="reliability_inside_fraction"):
        calibrate_run(run, inside_fraction=1.5, cache_dir=cache_dir, progress=False)
    assert m["pair_rule"] is None  # 4 scenes of a barely trained net: too few pairs
    assert m["feature_density"] == {"n": 100, "source": ""}  # the manifest: its size only
    assert m["data"]["prior"] == "bulge+disk v1"
    det = probcat.load(run / "detection.pt", device="cpu", threads=1)
    image = rng.standard_normal((1, 30, 30)).astype(np.float32) * 5
    image[0, 15, 15] += 2000.0
    cat = det.catalog(image, noise_sigma=5.0, threshold=0.0)
    assert len(cat) > 0
    assert np.asarray(cat["prob"]) == pytest.approx(0.5 * np.asarray(cat["prob_raw"]))
    assert np.all((cat["ood_score"] >= 0) & (cat["ood_score"] <= 1))


def test_reliability_only_refits_nothing_else(tmp_path, cache_dir, monkeypatch):
    import probcat.infer.calibration as C
    import probcat.infer.reliability as R
    from probcat.train.detection import calibrate_run
    from probcat.weights import read_weights

    run = tmp_path / "run"
    train_detection(_cfg(), run, cache_dir=cache_dir, progress=False, command="train cmd")
    before = read_weights(run / "detection.pt")
    cal = R.ProbabilityCalibration((0.0, 1.0), (0.0, 0.5), 500, "test")
    dens = R.fit_feature_density(np.random.default_rng(1).standard_normal((100, 8)))

    def no_refit(*args, **kwargs):
        raise AssertionError("reliability_only refitted the decoding")

    monkeypatch.setattr(C, "fit_centroid_calibration", no_refit)
    monkeypatch.setattr("probcat.infer.merge.fit_merge_radius", no_refit)
    monkeypatch.setattr(R, "fit_reliability", lambda *a, **k: (cal, dens))
    m = calibrate_run(run, n_scenes=7, cache_dir=cache_dir, progress=False, reliability_only=True)
    after = read_weights(run / "detection.pt")
    # the centroid calibration was not refitted: its recorded scenes stay
    assert (
        after["config"]["fits"]["calibration_scenes"]
        == before["config"]["fits"]["calibration_scenes"]
    )
    assert m["prob_calibration"] == after["prob_calibration"] == cal.to_dict()
    for key in ("centroid_calibration", "merge", "sky_offset"):
        assert after.get(key) == before.get(key), key
    for k, v in before["state_dict"].items():
        assert torch.equal(after["state_dict"][k], v)
    assert m["command"] == "train cmd"


def _recalibrated_run(tmp_path, cache_dir, monkeypatch, **changes):
    """A TINY run (config ``changes``) refitted with a hand-made probability calibration
    (prob x 0.9) and a feature density: ``(run, that calibration, its weights)``."""
    import probcat.infer.reliability as R
    from probcat.train.detection import calibrate_run
    from probcat.weights import read_weights

    run = tmp_path / "run"
    train_detection(_cfg(**changes), run, cache_dir=cache_dir, progress=False, command="train cmd")
    own = R.ProbabilityCalibration((0.0, 1.0), (0.0, 0.9), 500, "own")
    dens = R.fit_feature_density(np.random.default_rng(1).standard_normal((100, 8)))
    monkeypatch.setattr(R, "fit_reliability", lambda *a, **k: (own, dens))
    calibrate_run(run, cache_dir=cache_dir, progress=False, reliability_only=True)
    return run, own, read_weights(run / "detection.pt")


def test_seeing_only_fits_calibrations_under_wider_psfs_and_the_detector_picks_one(
    tmp_path, cache_dir, monkeypatch
):
    """--seeing-only refits the probability calibration on validation scenes rendered under
    each factor's PSF, with the run's own calibration and density set, touches nothing else,
    and records its command beside the training's; catalogs of an image read at 1.5x the
    seeing get that calibration."""
    import probcat
    import probcat.infer.reliability as R
    from probcat.cli import main
    from probcat.train.detection import calibrate_run
    from probcat.weights import read_weights

    run, own, before = _recalibrated_run(tmp_path, cache_dir, monkeypatch, fits__seeing_scenes=3)
    manifest = json.loads((run / "manifest.json").read_text())
    base = _cfg().survey()["i"].psf_fwhm
    seen = []

    def fake(net, sim, noise_sigma, *, n_scenes, rng, inside_fraction, source):
        factor = sim.bank.survey["i"].psf_fwhm / base
        seen.append(round(factor, 6))
        assert net.prob_calibration.to_dict() == own.to_dict()  # the run's, as recorded
        assert net.feature_density is not None and sim.bank.config.split == "val"
        assert n_scenes == 3 and f"under a PSF {factor:g} times" in source
        return R.ProbabilityCalibration((0.0, 1.0), (0.0, 1.0 / factor), 300, source)

    monkeypatch.setattr(R, "fit_seeing_calibration", fake)
    m = calibrate_run(
        run, cache_dir=cache_dir, progress=False, seeing_only=True, seeing_factors=(2.0, 1.5)
    )
    assert seen == [2.0, 1.5]
    after = read_weights(run / "detection.pt")
    assert [e["factor"] for e in after["seeing_calibrations"]] == [2.0, 1.5]
    assert after["config"]["fits"]["seeing_factors"] == [2.0, 1.5]
    for key in ("prob_calibration", "feature_density", "pair_rule", "merge", "sky_offset"):
        assert after.get(key) == before.get(key), key
    for k, v in before["state_dict"].items():
        assert torch.equal(after["state_dict"][k], v)
    assert m["command"] == "train cmd" and m["git_commit"] == manifest["git_commit"]
    assert m["seeing_calibration_command"].startswith("probcat")
    assert [e["factor"] for e in m["seeing_calibrations"]] == [2.0, 1.5]
    det = probcat.load(run / "detection.pt", device="cpu", threads=1)
    assert [f for f, _ in det.net.seeing_calibrations] == [1.5, 2.0]
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 30, 30)).astype(np.float32) * 5
    image[0, 15, 15] += 2000.0
    for seeing, scale, factor in (("none", 0.9, 1.0), (1.5, 1 / 1.5, 1.5), (1.9, 0.5, 2.0)):
        cat = det.catalog(image, noise_sigma=5.0, threshold=0.0, seeing=seeing)
        assert len(cat) > 0, seeing
        assert np.asarray(cat["prob"]) == pytest.approx(scale * np.asarray(cat["prob_raw"]))
        assert cat.meta["input"]["calibration_seeing"] == factor
    with pytest.raises(ProbcatValueError, match="seeing_factors"):
        calibrate_run(run, cache_dir=cache_dir, progress=False, seeing_only=True,
                      seeing_factors=(1.0,))  # fmt: skip
    assert main(["train", "calibrate", str(run), "--seeing-only", "--reliability-only"]) == 2
    assert main(["train", "calibrate", str(run), "--seeing-factors", "wide"]) == 2


def test_depth_only_fits_calibrations_at_other_depths_and_the_detector_picks_by_zeropoint(
    tmp_path, cache_dir, monkeypatch
):
    """--depth-only refits the probability calibration on validation scenes rendered at each
    depth (factor: the noise as a flux over the training depth's, sqrt(10 / years) for
    LSST), touches nothing else; a catalog gets the calibration of its image's depth where
    that is known (a zeropoint given, or a file's ZEROPT and EXPTIME) and the survey's
    where it is not (electrons of an unknown exposure)."""
    import probcat
    import probcat.infer.reliability as R
    from probcat.cli import main
    from probcat.io import write_image
    from probcat.survey import Survey
    from probcat.train.detection import calibrate_run
    from probcat.weights import read_weights

    run, own, before = _recalibrated_run(tmp_path, cache_dir, monkeypatch, fits__depth_scenes=3)
    seen = []

    def fake(net, sim, noise_sigma, *, n_scenes, rng, inside_fraction, source):
        years = sim.bank.survey.depth_years
        seen.append(years)
        assert net.prob_calibration.to_dict() == own.to_dict()  # the run's, as recorded
        assert noise_sigma == pytest.approx(sim.bank.survey.noise_sigma)
        assert n_scenes == 3 and f"at {years:g} years' depth" in source
        return R.ProbabilityCalibration((0.0, 1.0), (0.0, min(years / 10, 1.0)), 300, source)

    monkeypatch.setattr(R, "fit_seeing_calibration", fake)
    m = calibrate_run(
        run, cache_dir=cache_dir, progress=False, depth_only=True, depth_years=(2.5, 40.0)
    )
    assert seen == [2.5, 40.0]
    after = read_weights(run / "detection.pt")
    got = [(e["years"], e["factor"]) for e in after["depth_calibrations"]]
    assert got == [(2.5, pytest.approx(2.0)), (40.0, pytest.approx(0.5))]
    assert after["config"]["fits"]["depth_years"] == [2.5, 40.0]
    for key in ("prob_calibration", "feature_density", "pair_rule", "merge",
                "seeing_calibrations"):  # fmt: skip
        assert after.get(key) == before.get(key), key
    assert m["depth_calibration_command"].startswith("probcat")
    assert [e["years"] for e in m["depth_calibrations"]] == [2.5, 40.0]
    # the sky offsets at those depths with them (sky_offset["depths"]), the survey's as it was
    sky = m["sky_offset"]
    assert [e["noise_factor"] for e in sky["depths"]] == [pytest.approx(2.0), pytest.approx(0.5)]
    assert sky["per_band"] == before["sky_offset"]["per_band"]
    assert all(len(e["per_band"]) == 1 and "noise as a flux" in e["source"] for e in sky["depths"])
    det = probcat.load(run / "detection.pt", device="cpu", threads=1)
    assert [round(f, 6) for f, _ in det.net.depth_calibrations] == [0.5, 2.0]
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 30, 30)).astype(np.float32) * 5
    image[0, 15, 15] += 2000.0
    band = det.survey.bands[0]
    survey_noise_mag = band.flux_to_mag(band.noise_sigma)
    for ratio, scale, factor in ((2.0, 0.25, 2.0), (0.5, 1.0, 0.5), (1.1, 0.9, None)):
        # the zeropoint at which a noise of 5 in the pixels' units is `ratio` times the
        # survey's noise as a flux
        zp = survey_noise_mag - 2.5 * np.log10(ratio) + 2.5 * np.log10(5.0)
        cat = det.catalog(image, noise_sigma=5.0, threshold=0.0, seeing="none", zeropoint=zp)
        assert len(cat) > 0
        # (1.1: nearer the training depth, its own calibration)
        assert np.asarray(cat["prob"]) == pytest.approx(scale * np.asarray(cat["prob_raw"]))
        assert cat.meta["input"]["noise_over_survey"] == [pytest.approx(ratio, rel=1e-3)]
        assert cat.meta["input"].get("calibration_noise") == (factor and pytest.approx(factor))
    # electrons without a zeropoint: an unknown exposure, the survey's calibration
    cat = det.catalog(image, noise_sigma=5.0, threshold=0.0, seeing="none")
    assert np.asarray(cat["prob"]) == pytest.approx(0.9 * np.asarray(cat["prob_raw"]))
    assert "noise_over_survey" not in cat.meta["input"]
    # a file written at 2.5 years (ZEROPT and EXPTIME in its header) reads as twice the noise
    shallow = Survey.lsst(bands="i", years=2.5)
    path = write_image(tmp_path / "shallow.fits", image, shallow)
    cat = det.catalog(path, threshold=0.0, seeing="none")
    assert cat.meta["input"]["noise_over_survey"] == [pytest.approx(2.0, rel=1e-3)]
    assert np.asarray(cat["prob"]) == pytest.approx(0.25 * np.asarray(cat["prob_raw"]))
    with pytest.raises(ProbcatValueError, match="depth_years"):
        calibrate_run(run, cache_dir=cache_dir, progress=False, depth_only=True,
                      depth_years=(10.0,))  # fmt: skip
    assert main(["train", "calibrate", str(run), "--depth-only", "--seeing-only"]) == 2
    assert main(["train", "calibrate", str(run), "--depth-years", "deep"]) == 2


def test_real_shapes_only_fits_a_second_calibration_and_the_detector_mixes_the_two(
    tmp_path, cache_dir, monkeypatch
):
    """--real-shapes-only fits the second calibration on validation scenes of the population
    given, with the run's calibration and density set, touches nothing else and records its
    command; an image's catalog gets both maps, weighted by its share of real shapes."""
    import probcat
    import probcat.infer.reliability as R
    from probcat.cli import main
    from probcat.train.detection import calibrate_run
    from probcat.weights import read_weights

    run = tmp_path / "run"
    train_detection(_cfg(fits__real_shapes_scenes=3), run, cache_dir=cache_dir,
                    progress=False, command="train cmd")  # fmt: skip
    own = R.ProbabilityCalibration((0.0, 1.0), (0.0, 0.9), 500, "own")
    dens = R.fit_feature_density(np.random.default_rng(1).standard_normal((100, 8)))
    monkeypatch.setattr(R, "fit_reliability", lambda *a, **k: (own, dens))
    calibrate_run(run, cache_dir=cache_dir, progress=False, reliability_only=True)
    before = read_weights(run / "detection.pt")
    with pytest.raises(ProbcatValueError, match="real-shapes-population"):
        calibrate_run(run, cache_dir=cache_dir, progress=False, shapes_only=True)
    seen = {}

    def fake(net, sim_real, sim_prior, noise_sigma, *, n_scenes, rng, inside_fraction, prior,
             population, source):  # fmt: skip
        seen.update(real=sim_real.bank.config.population, prior=sim_prior.bank.config.population)
        assert net.prob_calibration.to_dict() == own.to_dict()  # the run's, as recorded
        assert net.feature_density is not None and sim_real.bank.config.split == "val"
        assert n_scenes == 3 and prior == 0.1 and "validation scenes of morphology" in source
        real = R.ProbabilityCalibration((0.0, 1.0), (0.0, 0.5), 300, source)
        return R.ShapesCalibration(own, real, (0.0,) * 20, 0.25, population, 300, source)

    monkeypatch.setattr(R, "fit_shapes_calibration", fake)
    import probcat.infer.calibration as C

    own_c = C.calibration_from_errors(np.abs(np.random.default_rng(2).standard_normal(500)), "o")
    real_c = C.CentroidCalibration(own_c.levels, tuple(2.5 * k for k in own_c.k), 400, "")

    def fake_centroids(net, sim, noise_sigma, *, n_scenes, rng, source, progress):
        seen.update(centroids=sim.bank.config.population, centroid_scenes=n_scenes)
        return C.CentroidCalibration(real_c.levels, real_c.k, real_c.n, source)

    monkeypatch.setattr(C, "fit_centroid_calibration", fake_centroids)
    # the run's own centroid calibration, as a trained run would carry (a tiny net may not)
    w0 = read_weights(run / "detection.pt")
    w0["centroid_calibration"] = own_c.to_dict()
    torch.save(w0, run / "detection.pt")
    before = read_weights(run / "detection.pt")
    m = calibrate_run(run, cache_dir=cache_dir, progress=False, shapes_only=True,
                      real_shapes_population="morphology")  # fmt: skip
    assert seen == {"real": "morphology", "prior": "parametric", "centroids": "morphology",
                    "centroid_scenes": _cfg().fits.calibration_scenes}  # fmt: skip
    after = read_weights(run / "detection.pt")
    assert after["prob_calibration"]["kind"] == "shapes"
    got_c = after["real_shapes_centroid_calibration"]
    assert got_c["k"] == list(real_c.k) and "validation scenes of morphology" in got_c["source"]
    assert m["real_shapes_centroid_calibration"] == got_c
    assert after["centroid_calibration"] == own_c.to_dict()  # the run's own stays
    assert after["config"]["fits"]["real_shapes_population"] == "morphology"
    for key in ("feature_density", "pair_rule", "merge", "sky_offset", "seeing_calibrations"):
        assert after.get(key) == before.get(key), key
    for k, v in before["state_dict"].items():
        assert torch.equal(after["state_dict"][k], v)
    assert m["command"] == "train cmd" and m["shapes_calibration_command"].startswith("probcat")
    det = probcat.load(run / "detection.pt", device="cpu", threads=1)
    image = np.random.default_rng(0).standard_normal((1, 30, 30)).astype(np.float32) * 5
    image[0, 15, 15] += 2000.0
    cat = det.catalog(image, noise_sigma=5.0, threshold=0.0, seeing="none")
    # no evidence either way (equal densities): the share is the prior's mean
    assert len(cat) > 0 and cat.meta["real_shapes_probability"] == pytest.approx(0.25)
    want = (0.75 * 0.9 + 0.25 * 0.5) * np.asarray(cat["prob_raw"])
    assert np.asarray(cat["prob"]) == pytest.approx(want)
    mixed = C.mix_centroid_calibrations(own_c, real_c, 0.25)
    assert cat.meta["centroid_calibration"]["k"] == pytest.approx(list(mixed.k))
    assert main(["train", "calibrate", str(run), "--real-shapes-only", "--seeing-only"]) == 2
    # --centroid-only: both centroid calibrations refitted (each on its population, the
    # scenes given), nothing else touched
    seen.clear()
    fitted = iter((own_c, real_c))

    def fake_both(net, sim, noise_sigma, *, n_scenes, rng, source, progress):
        seen.setdefault("populations", []).append((sim.bank.config.population, n_scenes))
        c = next(fitted)
        return C.CentroidCalibration(c.levels, tuple(1.1 * k for k in c.k), c.n, source)

    monkeypatch.setattr(C, "fit_centroid_calibration", fake_both)
    before = read_weights(run / "detection.pt")
    m = calibrate_run(run, cache_dir=cache_dir, progress=False, centroid_only=True, n_scenes=4)
    after = read_weights(run / "detection.pt")
    assert seen["populations"] == [("parametric", 4), ("morphology", 4)]
    assert after["centroid_calibration"]["k"] == pytest.approx([1.1 * k for k in own_c.k])
    got_c = after["real_shapes_centroid_calibration"]
    assert got_c["k"] == pytest.approx([1.1 * k for k in real_c.k])
    assert m["centroid_calibration"] == after["centroid_calibration"]
    assert after["config"]["fits"]["calibration_scenes"] == 4
    for key in ("prob_calibration", "feature_density", "pair_rule", "merge", "sky_offset",
                "seeing_calibrations"):  # fmt: skip
        assert after.get(key) == before.get(key), key
    assert m["centroid_calibration_command"].startswith("probcat")
    assert main(["train", "calibrate", str(run), "--centroid-only", "--seeing-only"]) == 2
    bad_fits = ({"fits__real_shapes_prior": 0.75}, {"fits__real_shapes_prior": 0.0},
                {"fits__real_shapes_scenes": 0}, {"fits__real_shapes_population": " "})  # fmt: skip
    for bad in bad_fits:
        with pytest.raises(ProbcatValueError, match="fits.real_shapes"):
            _cfg(**bad)


def test_a_second_calibration_whose_galaxies_are_missing_stops_training_before_it_starts(
    tmp_path, cache_dir, monkeypatch
):
    """Population hdf needs scikit-image: without it, training a config that fits the second
    calibration on it stops at once with the one-line error, not after training."""
    import probcat.simulate.hubble as H
    from probcat.train.detection import DetectionTask

    def no_skimage():
        raise ProbcatValueError("population 'hdf' reads ... pip install -e \".[hubble]\"")

    def no_training(self):
        raise AssertionError("training started")

    monkeypatch.setattr(H, "hdf_path", no_skimage)
    if hasattr(H.hdf_stamps, "cache_clear"):
        H.hdf_stamps.cache_clear()  # stamps read by another test would hide the error
    monkeypatch.setattr(DetectionTask, "build_model", no_training)
    with pytest.raises(ProbcatValueError, match="hubble"):
        train_detection(_cfg(fits__real_shapes_population="hdf"), tmp_path / "run",
                        cache_dir=cache_dir / "fresh", progress=False)  # fmt: skip
    assert not (tmp_path / "run" / "detection.pt").exists()


def test_sky_offset_only_records_into_the_manifest_and_the_detector_uses_it(
    tmp_path, cache_dir, monkeypatch
):
    import probcat
    import probcat.background as B
    from probcat.cli import main

    run = tmp_path / "run"
    train_detection(_cfg(), run, cache_dir=cache_dir, progress=False)
    before = json.loads((run / "manifest.json").read_text())
    weights_bytes = (run / "detection.pt").read_bytes()
    monkeypatch.setattr(B, "sky_offset", lambda images: np.array([0.25 + 0 * len(list(images))]))
    assert main(["train", "calibrate", str(run), "--sky-offset-only", "-q",
                 "--cache-dir", str(cache_dir)]) == 0  # fmt: skip
    after = json.loads((run / "manifest.json").read_text())
    assert after["sky_offset"]["per_band"] == [0.25] and after["sha256"] == before["sha256"]
    assert (run / "detection.pt").read_bytes() == weights_bytes  # the weights are untouched
    det = probcat.load(run / "detection.pt")
    assert det.sky_offset.tolist() == [0.25]
    # a sky left in: the offset is taken off the estimate, so the field keeps 0.25 sigma
    x = np.random.default_rng(3).standard_normal((1, 64, 64)).astype(np.float32)
    sigma = float(det.survey.noise_sigma[0])
    info = det.catalog((x + 40.0) * sigma).meta["input"]
    assert info["background"] == "subtracted" and info["sky_offset"] == [0.25]
    assert info["sky_median"][0] == pytest.approx((40.0 - 0.25) * sigma, abs=0.05 * sigma)


def test_calibrate_run_fits_the_pair_rule_first_and_catalogs_apply_it(
    tmp_path, cache_dir, monkeypatch
):
    """The pair rule is fitted before the probability calibration (which then sees the
    vetoed catalogues), recorded in the weights and manifest, loaded with the weights and
    applied to their MAP catalogues; ``fits.pair_scenes: 0`` fits none, a negative count is
    refused."""
    import probcat
    import probcat.infer.pairs as P
    import probcat.infer.reliability as R
    from probcat.train.detection import calibrate_run

    run = tmp_path / "run"
    train_detection(_cfg(), run, cache_dir=cache_dir, progress=False)
    d = len(P.FEATURES)
    # every paired detection is a piece of its neighbour: the less probable one goes
    rule = P.PairRule((0.0,) * d, (1.0,) * d, (0.0,) * d, -5.0, n=200, source="test")
    order = []

    def fake_pairs(net, sim, noise_sigma, *, n_scenes, rng, source, inside_fraction):
        order.append("pairs")
        assert n_scenes == 4 and sim.bank.config.split == "val"
        return rule

    def fake_fit(net, sim, noise_sigma, **kw):
        order.append("calibration")
        assert net.pair_rule is rule  # the calibration decodes with the rule in place
        dens = R.fit_feature_density(np.random.default_rng(0).standard_normal((100, 8)))
        return R.ProbabilityCalibration((0.0, 1.0), (0.0, 1.0), 500), dens

    monkeypatch.setattr(P, "fit_pair_rule", fake_pairs)
    monkeypatch.setattr(R, "fit_reliability", fake_fit)
    m = calibrate_run(run, cache_dir=cache_dir, progress=False, reliability_only=True)
    assert order == ["pairs", "calibration"]
    assert m["pair_rule"] == rule.to_dict()
    det = probcat.load(run / "detection.pt", device="cpu", threads=1)
    assert det.net.pair_rule == rule
    image = np.random.default_rng(0).standard_normal((1, 40, 40)).astype(np.float32) * 5
    image[0, 20, 12] += 3000.0
    cat = det.catalog(image, noise_sigma=5.0, threshold=0.0, background="none")
    det.net.pair_rule = None
    full = det.catalog(image, noise_sigma=5.0, threshold=0.0, background="none")
    keep, _ = rule.keep(image / 5.0, full["x"], full["y"], full["prob_raw"], P.catalog_sd(full))
    assert 1 <= cat.meta["pair_vetoed"] == int((~keep).sum())
    np.testing.assert_allclose(cat["x"], np.asarray(full["x"])[keep])
    with pytest.raises(ProbcatValueError, match="pair_scenes"):
        _cfg(fits__pair_scenes=-1)
    assert _cfg(fits__pair_scenes=0).fits.pair_scenes == 0


def test_fits_on_another_population_are_made_and_recorded(tmp_path, cache_dir, monkeypatch):
    """fits.population: training and calibrate_run fit on validation scenes of that
    population, and the config and manifest say so; the training population stays."""
    import probcat.infer.reliability as R
    from probcat.train.detection import calibrate_run
    from probcat.weights import read_weights

    cal = R.ProbabilityCalibration((0.0, 1.0), (0.0, 0.5), 500, "test")
    dens = R.fit_feature_density(np.random.default_rng(1).standard_normal((100, 8)))
    seen = []

    def fake_fit(net, sim, noise_sigma, **kwargs):
        seen.append(sim.bank.config.population)
        return cal, dens

    monkeypatch.setattr(R, "fit_reliability", fake_fit)
    run = tmp_path / "run"
    train_detection(_cfg(fits__population="morphology:sersic"), run, cache_dir=cache_dir,
                    progress=False)  # fmt: skip
    assert seen == ["morphology:sersic"]
    m = calibrate_run(run, cache_dir=cache_dir, progress=False, reliability_only=True)
    assert seen[-1] == "morphology:sersic"  # the recorded one, by default
    m = calibrate_run(
        run, cache_dir=cache_dir, progress=False, reliability_only=True, population="parametric"
    )
    assert seen[-1] == "parametric"
    w = read_weights(run / "detection.pt")
    assert w["config"]["fits"]["population"] == m["config"]["fits"]["population"] == "parametric"
    assert w["config"]["data"]["population"] == "parametric"  # TINY's training galaxies
    assert m["data"]["fits"] == "validation scenes of population parametric"
    with pytest.raises(ProbcatValueError, match="fits.population"):
        _cfg(fits__population=" ")


def test_coadd_noise_in_training_and_fits_of_their_own(tmp_path, cache_dir, monkeypatch):
    """data.coadd_fraction gives the training scenes coadd noise; fits.coadd_fraction and
    fits.coadd_kernels, when set, give every fit's scenes theirs (else the training data's);
    the manifest says so."""
    import probcat.infer.reliability as R
    from probcat.train.detection import _simulator

    cfg = _cfg(data__coadd_fraction=0.5, fits__coadd_fraction=1.0, fits__coadd_kernels=["lanczos3"])
    train = _simulator(cfg, "train", cache_dir, False)
    fits = _simulator(cfg, "val", cache_dir, False, fits=True)
    assert train.config.coadd_fraction == 0.5
    assert train.config.coadd_kernels == ("lanczos3", "bilinear")
    assert fits.config.coadd_fraction == 1.0 and fits.config.coadd_kernels == ("lanczos3",)
    plain = _cfg(data__coadd_fraction=0.25)  # no fits settings: the training data's noise
    assert _simulator(plain, "val", cache_dir, False, fits=True).config.coadd_fraction == 0.25
    with pytest.raises(ProbcatValueError, match="fits: coadd_kernels"):
        _cfg(fits__coadd_kernels=["cubic"])
    cal = R.ProbabilityCalibration((0.0, 1.0), (0.0, 0.5), 500, "test")
    dens = R.fit_feature_density(np.random.default_rng(1).standard_normal((100, 8)))
    seen = []

    def fake_fit(net, sim, noise_sigma, **kwargs):
        seen.append((sim.config.coadd_fraction, sim.config.coadd_kernels))
        return cal, dens

    monkeypatch.setattr(R, "fit_reliability", fake_fit)
    m = train_detection(cfg, tmp_path / "run", cache_dir=cache_dir, progress=False)
    assert seen == [(1.0, ("lanczos3",))]
    assert "coadd in 0.5 of the scenes" in m["data"]["noise"]
    assert m["data"]["fits_noise"] == (
        "the fits after training: the correlated noise of a coadd in every scene "
        "(1-16 visits resampled by lanczos3)"
    )


def test_density_calibrations_are_fitted_at_each_seeing_and_depth_the_run_calibrates(
    tmp_path, cache_dir, monkeypatch
):
    """The density calibration is fitted at the survey's seeing and depth and again under
    each seeing and at each depth the probability calibration has a refit for: fields under
    that PSF read at that seeing, fields with that depth's noise read with the survey's
    zeropoints (so at that depth's calibration); each recorded with its seeing and depth,
    and a detector reads each image with the one of its calibration."""
    import probcat
    import probcat.infer.density as D
    import probcat.infer.reliability as R
    from probcat.train.detection import calibrate_run, record_density_calibration

    run, _, _ = _recalibrated_run(
        tmp_path, cache_dir, monkeypatch, fits__seeing_scenes=3, fits__depth_scenes=3
    )

    def fake_cal(net, sim, noise_sigma, *, n_scenes, rng, inside_fraction, source):
        return R.ProbabilityCalibration((0.0, 1.0), (0.0, 0.8), 300, source)

    monkeypatch.setattr(R, "fit_seeing_calibration", fake_cal)
    calibrate_run(run, cache_dir=cache_dir, progress=False, seeing_only=True, seeing_factors=(1.5,))
    calibrate_run(run, cache_dir=cache_dir, progress=False, depth_only=True, depth_years=(2.5,))
    sigma = float(_cfg().survey().noise_sigma[0])
    seen = []

    def fake_fit(detect, sample, *, factors, n_fields, progress, source):
        scene = sample(0.0, 0)  # noise alone: its scatter is the noise read
        info = detect(scene.image).meta["input"]
        seen.append((info["calibration_seeing"], info.get("calibration_noise"),
                     round(float(np.std(scene.image)) / sigma, 1), n_fields))  # fmt: skip
        return D.DensityCalibration((0.0, 1.0), (0.0, 100.0), (((0.5, 1.0), (0.0, 0.0)), None))

    monkeypatch.setattr(D, "fit_density_calibration", fake_fit)
    rec = record_density_calibration(
        run / "detection.pt", run / "manifest.json", n_fields=2, cache_dir=cache_dir,
        progress=False, command="density cmd",
    )  # fmt: skip
    assert seen == [(1.0, None, 1.0, 2), (1.5, None, 1.0, 2), (1.0, pytest.approx(2.0), 2.0, 2)]
    assert rec["density_calibration"]["command"] == "density cmd"
    got = [(r["seeing_factor"], round(r["noise_factor"], 6)) for r in rec["density_calibrations"]]
    assert got == [(1.5, 1.0), (1.0, 2.0)]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["density_calibrations"] == rec["density_calibrations"]
    det = probcat.load(run / "detection.pt", device="cpu", threads=1)
    det.manifest = manifest
    assert det._density_for(1.5, 1.0).seeing_factor == 1.5
    assert det._density_for(1.0, 2.0).noise_factor == pytest.approx(2.0)
    assert det._density_for(2.0, 1.0).seeing_factor == 1.0  # none there: says it won't apply


def test_density_calibration_of_coadd_weights_is_fitted_on_coadd_noise(
    tmp_path, cache_dir, monkeypatch
):
    """Weights whose fits read coadds (fits.coadd_fraction) get their density calibration
    fitted on fields with a coadd's correlated noise, said in its source; white-noise
    weights on white noise."""
    import probcat.infer.density as D
    from probcat.train.detection import record_density_calibration

    run, _, _ = _recalibrated_run(
        tmp_path, cache_dir, monkeypatch, fits__coadd_fraction=1.0,
        fits__coadd_kernels=("lanczos3",),
    )  # fmt: skip
    got = []

    def fake_fit(detect, sample, *, factors, n_fields, progress, source):
        x = sample(0.0, 0).image[0]  # noise alone
        got.append((float(np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1]), source))
        return D.DensityCalibration((0.0, 1.0), (0.0, 100.0), (((0.5, 1.0), (0.0, 0.0)), None))

    monkeypatch.setattr(D, "fit_density_calibration", fake_fit)
    record_density_calibration(
        run / "detection.pt", run / "manifest.json", n_fields=1, cache_dir=cache_dir,
        progress=False,
    )  # fmt: skip
    corr, source = got[0]
    assert corr > 0.03 and "coadd" in source and "lanczos3" in source  # white: 0.002
    white = tmp_path / "white"
    white.mkdir()
    run2, _, _ = _recalibrated_run(white, cache_dir, monkeypatch)
    record_density_calibration(
        run2 / "detection.pt", run2 / "manifest.json", n_fields=1, cache_dir=cache_dir,
        progress=False,
    )  # fmt: skip
    corr, source = got[1]
    assert abs(corr) < 0.01 and "coadd" not in source
