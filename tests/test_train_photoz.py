"""The photo-z training task: config checks, the stamp pool, augmentation, a tiny run."""

import json
import math

import numpy as np
import pytest
import torch

from probcat.errors import ProbcatValueError
from probcat.simulate.prior import MAG_GOLD
from probcat.train.photoz import (
    PhotozCalibration,
    PhotozData,
    PhotozModel,
    PhotozPhase,
    PhotozTrainConfig,
    dihedral_batch,
    gold_stamps,
    train_photoz,
)


def _tiny_cfg(**data):
    d = dict(
        years=(10.0,),
        bank_size=48,
        val_bank_size=48,
        scene_size=40,
        train_objects=24,
        val_objects=12,
        batch_size=8,
    )
    d.update(data)
    return PhotozTrainConfig(
        data=PhotozData(**d),
        model=PhotozModel(stamp=11, channels=4),
        phases=(PhotozPhase(steps=3, lr=1e-3, warmup=1),),
        calibration=PhotozCalibration(scenes=2),
        val_every=3,
        checkpoint_every=2,
        threads=1,
    )


def test_a_stamp_pool_beyond_the_memory_is_refused_before_the_banks(tmp_path, monkeypatch):
    from probcat import runtime
    from probcat.train.photoz import POOL_COPIES

    monkeypatch.setattr(runtime, "memory_limit", lambda: (8e9, "this machine has"))
    per = 6 * 11**2 * 4 * POOL_COPIES  # bytes per galaxy of _tiny_cfg's 11-px ugrizy stamps
    fits = int(8e9 / per) - 12  # with the 12 validation galaxies
    with pytest.raises(ProbcatValueError, match=f"{fits + 1:,} training and 12 validation"):
        train_photoz(_tiny_cfg(train_objects=fits + 1), tmp_path / "run",
                     cache_dir=tmp_path / "cache", progress=False)  # fmt: skip
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    import probcat.train.photoz as module

    def stop(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "calibration_detector", stop)  # the next check: passed
    with pytest.raises(KeyboardInterrupt):
        train_photoz(_tiny_cfg(train_objects=fits), tmp_path / "run",
                     cache_dir=tmp_path / "cache", progress=False)  # fmt: skip


def test_config_rejects_bad_values():
    with pytest.raises(ProbcatValueError, match="stamp must be odd"):
        PhotozTrainConfig(model=PhotozModel(stamp=10))
    with pytest.raises(ProbcatValueError, match="include i"):
        PhotozTrainConfig(data=PhotozData(bands="ugr"))
    with pytest.raises(ProbcatValueError, match="years"):
        PhotozTrainConfig(data=PhotozData(years=()))
    with pytest.raises(ProbcatValueError, match="years"):
        PhotozTrainConfig(data=PhotozData(years=(10.0, -1.0)))
    with pytest.raises(ProbcatValueError, match="jitter"):
        PhotozTrainConfig(data=PhotozData(jitter_px=float("nan")))
    with pytest.raises(ProbcatValueError, match="val_to_train"):
        PhotozTrainConfig(data=PhotozData(val_to_train=1.0))
    with pytest.raises(ProbcatValueError, match="symmetries"):
        PhotozTrainConfig(symmetries=3)


def test_a_calibration_detector_of_another_kind_fails_before_training(tmp_path):
    from dataclasses import replace

    cfg = replace(_tiny_cfg(), calibration=PhotozCalibration(detector="photoz_lsst_ugrizy"))
    with pytest.raises(ProbcatValueError, match="^calibration.detector: photoz_lsst_ugrizy: "
                       "photo-z weights, not detection weights$"):  # fmt: skip
        train_photoz(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_training_and_validation_scenes_share_the_split_settings():
    cfg = _tiny_cfg(val_to_train=0.5, keep_gold=True, bank_size=30, val_bank_size=20)
    tr, va = cfg.simulation_config("train", 10.0), cfg.simulation_config("val", 10.0)
    # validation must lose the rows training borrows, or they would be in both
    for c, size in ((tr, 30), (va, 20)):
        b = c.bank_config()
        assert (b.val_to_train, b.keep_gold, b.n_galaxies) == (0.5, True, size)


def test_dihedral_batch_matches_numpy():
    x = np.arange(8 * 2 * 5 * 5, dtype=np.float32).reshape(8, 2, 5, 5)
    got = dihedral_batch(x, np.arange(8))
    for v in range(8):
        want = np.rot90(x[v], k=v % 4, axes=(-2, -1))
        want = want[..., ::-1] if v >= 4 else want
        np.testing.assert_array_equal(got[v], want)


def test_gold_stamps_are_centred_on_gold_galaxies(cache_dir):
    cfg = _tiny_cfg()
    sim = cfg.simulation("train", 10.0, cache_dir, False)
    out = gold_stamps(sim, np.random.default_rng(0), 10, stamp=11, jitter_px=0.0)
    assert out["x"].shape == (10, 6, 11, 11)
    assert np.all(out["mag_i"] < MAG_GOLD) and np.all(np.isfinite(out["z"]))
    # the same draws by hand: scenes until the first gold galaxy, its stamp around its pixel
    from probcat.infer.deblend import crop_at

    rng = np.random.default_rng(0)
    gold = []
    while not len(gold):
        scene = sim.sim.sample(rng, truth=False)
        cat = scene.catalog
        gold = np.flatnonzero(cat["galaxy"] & (cat["mag"][:, 3] < MAG_GOLD))
    k = gold[0]
    cx, cy = int(np.floor(cat["x"][k] + 0.5)), int(np.floor(cat["y"][k] + 0.5))
    want = crop_at(scene.image / sim.survey.noise_sigma[:, None, None], cx, cy, 11)
    np.testing.assert_allclose(out["x"][0], want, rtol=1e-5)
    assert out["z"][0] == pytest.approx(cat["redshift"][k])
    assert np.any(want != 0)


@pytest.mark.slow
def test_tiny_training_run_loads_as_an_estimator(tmp_path, cache_dir):
    import probcat
    from probcat.redshift.estimator import PhotozEstimator

    man = train_photoz(_tiny_cfg(), tmp_path / "run", cache_dir=cache_dir, progress=False)
    assert man["steps"] == 3 and "sigma_iqr" in man["final_val"]
    cal = man["width_calibration"]
    assert cal["n"] > 0 and 0.5 - 1e-9 <= cal["sd_scale"] <= 3.0 + 1e-9
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["kind"] == "photoz"
    est = probcat.load(str(tmp_path / "run" / "photoz.pt"))
    assert isinstance(est, PhotozEstimator) and est.bands == tuple("ugrizy")
    assert float(est.net.sd_scale) == pytest.approx(cal["sd_scale"])
    w, m, s = est.mixture(np.zeros((6, 20, 20), np.float32), [10.0], [10.0])
    assert w.shape == (1, 5) and np.all(s > 0)
    torch.testing.assert_close(torch.tensor(w.sum()), torch.tensor(1.0, dtype=torch.float64))


def test_the_head_is_the_mlp_of_the_hidden_widths_asked(tmp_path):
    from probcat.nets.photoz import PhotozNet, aperture_features
    from probcat.weights import load

    torch.manual_seed(0)
    kw = dict(bands=3, size=9, channels=4, components=2, apertures=(1.0,))
    assert "head" not in PhotozNet(**kw).hparams  # the default keeps older files' hparams
    with pytest.raises(ValueError, match="head"):
        PhotozNet(**kw, head=(8, 0))
    with pytest.raises(ProbcatValueError, match="head"):
        PhotozTrainConfig(model=PhotozModel(head=()))
    net = PhotozNet(**kw, head=(8, 5)).eval()
    x = torch.randn(4, 3, 9, 9)
    enc = net.encoder
    lin = [m for m in enc.fc if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin][1:] == [(8, 5), (5, 6)]
    # brute force: the features through each layer, leaky ReLU between them
    feats = aperture_features(x, net.aperture_kernels)
    h = torch.cat([enc.convs(torch.asinh(x)).flatten(1), feats], 1)
    for m in lin[:-1]:
        h = torch.nn.functional.leaky_relu(h @ m.weight.T + m.bias, 0.1)
    out = h @ lin[-1].weight.T + lin[-1].bias
    with torch.no_grad():
        w, mu, sd = net(x)
        torch.testing.assert_close(w, torch.softmax(out[:, :2], 1))
        torch.testing.assert_close(mu, out[:, 2:4])
    # saved and loaded, and pooled into an ensemble, a net keeps its head
    survey = PhotozTrainConfig().survey().to_dict()
    state = {"kind": "photoz", "hparams": net.hparams, "state_dict": net.state_dict()}
    torch.save({**state, "survey": survey}, tmp_path / "h.pt")
    back = load(str(tmp_path / "h.pt"), kind="photoz").model
    assert back.hparams["head"] == [8, 5]
    with torch.no_grad():
        torch.testing.assert_close(back(x)[1], mu)
    assert PhotozNet.ensemble([net, net]).hparams["head"] == [8, 5]


def test_colour_targets_are_adjacent_colours_then_the_i_magnitude():
    from probcat.train.photoz import colour_targets

    mags = np.array([[25.0, 24.5, 24.0, 23.8, 23.7, 23.5], [22.0, 21.0, 20.5, 20.0, 19.0, 18.8]])
    want = [[0.5, 0.5, 0.2, 0.1, 0.2, 23.8], [1.0, 0.5, 0.5, 1.0, 0.2, 20.0]]
    np.testing.assert_allclose(colour_targets(mags, "ugrizy"), want, atol=1e-5)
    np.testing.assert_allclose(
        colour_targets(mags[:, 1:4], "gri"), [[0.5, 0.2, 23.8], [0.5, 0.5, 20.0]], atol=1e-5
    )


def test_an_auxiliary_head_reads_the_last_hidden_layer_and_leaves_the_mixture_alone(tmp_path):
    from probcat.nets.photoz import PhotozNet, aperture_features
    from probcat.train.photoz import _config_dict
    from probcat.weights import load

    kw = dict(bands=3, size=9, channels=4, components=2, apertures=(1.0,), head=(8, 5))
    torch.manual_seed(0)
    plain = PhotozNet(**kw).eval()
    after_plain = torch.rand(2)
    torch.manual_seed(0)
    net = PhotozNet(**kw, aux=3).eval()
    assert torch.equal(torch.rand(2), after_plain)  # the global stream as without the head
    assert net.hparams["aux"] == 3 and "aux" not in plain.hparams
    for k, v in plain.state_dict().items():  # the same mixture network to start from
        assert torch.equal(net.state_dict()[k], v), k
    x = torch.randn(4, 3, 9, 9)
    enc = net.encoder
    h = torch.cat(
        [enc.convs(torch.asinh(x)).flatten(1), aperture_features(x, net.aperture_kernels)], 1
    )
    lin = [m for m in enc.fc if isinstance(m, torch.nn.Linear)]
    for m in lin[:-1]:
        h = torch.nn.functional.leaky_relu(h @ m.weight.T + m.bias, 0.1)
    with torch.no_grad():
        w, mu, sd, a = net.forward_aux(x)
        torch.testing.assert_close(a, h @ net.aux_head.weight.T + net.aux_head.bias)
        for got, want in zip((w, mu, sd), plain(x)):
            torch.testing.assert_close(got, want)
        for got, want in zip(net(x), plain(x)):
            torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="auxiliary outputs"):
        plain.forward_aux(x)
    with pytest.raises(ValueError, match="0 for ensembles"):
        PhotozNet(**kw, aux=3, members=2)
    # saved and loaded it keeps its head; an ensemble of such nets leaves the heads out
    survey = PhotozTrainConfig().survey().to_dict()
    state = {"kind": "photoz", "hparams": net.hparams, "state_dict": net.state_dict()}
    torch.save({**state, "survey": survey}, tmp_path / "a.pt")
    back = load(str(tmp_path / "a.pt"), kind="photoz").model
    with torch.no_grad():
        torch.testing.assert_close(back.forward_aux(x)[3], a)
    ens = PhotozNet.ensemble([net, plain])
    assert "aux" not in ens.hparams and not hasattr(ens, "aux_head")
    # the config: a weight >= 0, one output per band, recorded only when used
    with pytest.raises(ProbcatValueError, match="colour_aux"):
        PhotozTrainConfig(model=PhotozModel(colour_aux=-0.1))
    cfg = PhotozTrainConfig(model=PhotozModel(colour_aux=0.3))
    assert cfg.net().hparams["aux"] == 6 and "aux" not in PhotozTrainConfig().net().hparams
    assert _config_dict(cfg)["model"]["colour_aux"] == 0.3
    assert "colour_aux" not in _config_dict(PhotozTrainConfig())["model"]


@pytest.mark.slow
def test_a_run_with_the_colour_head_regresses_standardised_colours(tmp_path, cache_dir):
    from probcat.train.photoz import PhotozTask, colour_targets

    cfg = _tiny_cfg()
    cfg = PhotozTrainConfig(
        **{**cfg.__dict__, "model": PhotozModel(stamp=11, channels=4, colour_aux=0.5)}
    )
    task = PhotozTask(cfg, cache_dir=cache_dir, progress=False)
    t = colour_targets(task.pool["mags"], "ugrizy")
    np.testing.assert_allclose(
        task.pool["aux"], (t - t.mean(0)) / (t.std(0) + 1e-6), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(task.pool["mags"][:, 3], task.pool["mag_i"])
    x, z, a = task.batch(np.random.default_rng(0))
    assert a.shape == (8, 6)
    torch.manual_seed(0)
    net = task.build_model()
    parts = task.loss(net, (x, z, a), 0, None)
    torch.testing.assert_close(parts["total"], parts["nll"] + 0.5 * parts["aux_mse"])
    man = train_photoz(cfg, tmp_path / "run", cache_dir=cache_dir, progress=False)
    assert "aux_mse" in man["final_val"] and man["config"]["model"]["colour_aux"] == 0.5


@pytest.mark.parametrize("apertures", [(), (1.0, 2.5)])
def test_an_ensemble_pools_its_members_mixtures_with_equal_weight(apertures):
    from probcat.nets.photoz import PhotozNet

    torch.manual_seed(0)
    nets = [
        PhotozNet(bands=6, size=11, channels=4, components=3, apertures=apertures).eval()
        for _ in range(3)
    ]
    ens = PhotozNet.ensemble(nets).eval()
    assert ens.n_components == 9 and ens.hparams["members"] == 3
    assert ens.hparams.get("apertures", []) == list(apertures)
    x = torch.randn(4, 6, 11, 11)
    with torch.no_grad():
        w, m, s = ens(x)
        for k, net in enumerate(nets):  # member k's components, weights divided by 3
            wk, mk, sk = net(x)
            torch.testing.assert_close(w[:, 3 * k : 3 * k + 3], wk / 3)
            torch.testing.assert_close(m[:, 3 * k : 3 * k + 3], mk)
            torch.testing.assert_close(s[:, 3 * k : 3 * k + 3], sk)
        ens.sd_scale.fill_(2.0)
        torch.testing.assert_close(ens(x)[2], 2 * s)
    torch.testing.assert_close(w.sum(1), torch.ones(4))
    # its (untruncated) density is the members' average
    from probcat.nets.photoz import mixture_nll

    z = torch.rand(4) * 2
    with torch.no_grad():
        dens = torch.stack([torch.exp(-mixture_nll(*n(x), z, False)) for n in nets]).mean(0)
        ens.sd_scale.fill_(1.0)
        torch.testing.assert_close(torch.exp(-mixture_nll(*ens(x), z, False)), dens)
    with pytest.raises(ValueError, match="one architecture"):
        PhotozNet.ensemble([nets[0], PhotozNet(bands=6, size=11, channels=8, components=3)])


def test_symmetries_pool_the_orientations_the_nets_are_trained_with(tmp_path):
    from probcat.errors import ProbcatIOError
    from probcat.nets.photoz import PhotozNet, dihedral, mixture_nll
    from probcat.survey import Survey
    from probcat.train.photoz import dihedral_batch
    from probcat.weights import load

    x = torch.randn(4, 6, 11, 11, generator=torch.Generator().manual_seed(1))
    for v in range(8):  # the inference transforms are the training ones
        want = dihedral_batch(x.numpy(), np.full(4, v))
        torch.testing.assert_close(dihedral(x, v), torch.from_numpy(want))
    assert len({tuple(dihedral(x, v)[0, 0].flatten().tolist()) for v in range(8)}) == 8
    torch.manual_seed(0)
    nets = [PhotozNet(bands=6, size=11, channels=4, components=3, apertures=(1.5,)).eval()
            for _ in range(2)]  # fmt: skip
    ens = PhotozNet.ensemble(nets, symmetries=4).eval()
    assert ens.n_components == 2 * 4 * 3 and ens.hparams["symmetries"] == 4
    z = torch.rand(4) * 2
    with torch.no_grad():  # brute force: the average density over members and rotations
        dens = torch.stack(
            [
                torch.exp(-mixture_nll(*n(torch.rot90(x, v, (-2, -1))), z, False))
                for n in nets
                for v in range(4)
            ]  # fmt: skip
        ).mean(0)
        torch.testing.assert_close(torch.exp(-mixture_nll(*ens(x), z, False)), dens)
        # the pooled density is the same for a rotated stamp (the group is closed)
        torch.testing.assert_close(torch.exp(-mixture_nll(*ens(dihedral(x, 1)), z, False)), dens)
        one = nets[0]
        one.symmetries = 2  # a single net reads two orientations
        d2 = torch.exp(-mixture_nll(*one(x), z, False))
        one.symmetries = 1
        d1 = torch.exp(-mixture_nll(*one(x), z, False))
        d1r = torch.exp(-mixture_nll(*one(dihedral(x, 1)), z, False))
        torch.testing.assert_close(d2, (d1 + d1r) / 2)
        assert "symmetries" not in one.hparams  # 1: hparams as before
    with pytest.raises(ValueError, match="symmetries"):
        PhotozNet(bands=6, size=11, symmetries=3)
    # weights keep the setting; a file with another number is refused in one line
    state = {"kind": "photoz", "hparams": ens.hparams, "state_dict": ens.state_dict(),
             "survey": Survey.lsst(bands="ugrizy").to_dict()}  # fmt: skip
    torch.save(state, tmp_path / "pz.pt")
    back = load(tmp_path / "pz.pt", kind="photoz").model
    assert back.symmetries == 4 and back.n_components == 24
    torch.save({**state, "hparams": {**ens.hparams, "symmetries": 3}}, tmp_path / "bad.pt")
    with pytest.raises(ProbcatIOError, match="photo-z network"):
        load(tmp_path / "bad.pt", kind="photoz")


def test_aperture_features_are_matched_filter_snrs():
    from probcat.nets.photoz import PhotozNet, aperture_features, aperture_kernels

    k = aperture_kernels(9, [1.0, 3.0]).double()
    assert k.shape == (2, 9, 9)
    torch.testing.assert_close(k.square().sum((1, 2)), torch.ones(2, dtype=torch.float64))
    for a, s in enumerate([1.0, 3.0]):  # brute force: the Gaussian on the middle pixel
        i, j = 4 + 2, 4 - 1
        want = (
            math.exp(-0.5 * (2**2 + 1**2) / s**2)
            / float(
                sum(math.exp(-(u**2 + v**2) / s**2) for u in range(-4, 5) for v in range(-4, 5))
            )
            ** 0.5
        )
        assert float(k[a, i, j]) == pytest.approx(want, rel=1e-6)
    # a point source of flux F (sigma units) in the middle: SNR = F * w(0); asinh of it
    x = torch.zeros(2, 3, 9, 9, dtype=torch.float64)
    x[0, 1, 4, 4] = 50.0
    x[1] = torch.randn(3, 9, 9, dtype=torch.float64)
    f = aperture_features(x, k)
    assert f.shape == (2, 6)  # bands x apertures, band-major
    torch.testing.assert_close(f[0, 2:4], torch.asinh(50.0 * k[:, 4, 4]))
    torch.testing.assert_close(f[0, :2], torch.zeros(2, dtype=torch.float64))
    brute = torch.asinh((x[1][:, None] * k[None]).sum((-2, -1))).flatten()
    torch.testing.assert_close(f[1], brute)
    # Gaussian apertures on the middle pixel ignore the dihedral symmetries
    torch.testing.assert_close(aperture_features(torch.rot90(x, 1, (-2, -1)), k), f)
    # the features are not state: a net's state dict is that of a net without them
    net = PhotozNet(bands=3, size=9, channels=4, components=2, apertures=(1.0, 3.0))
    assert "aperture_kernels" not in net.state_dict()
    assert (
        net.encoder.fc[1].in_features
        == PhotozNet(bands=3, size=9, channels=4, components=2).encoder.fc[1].in_features + 6
    )
    with pytest.raises(ValueError, match="positive"):
        PhotozNet(bands=3, size=9, apertures=(0.0,))


@pytest.mark.slow
def test_an_ensemble_run_trains_members_resumably_then_assembles(tmp_path, cache_dir):
    import probcat
    from probcat.weights import sha256

    cfg = _tiny_cfg()
    cfg = PhotozTrainConfig(**{**cfg.__dict__, "members": 2})
    out = tmp_path / "ens"
    one = train_photoz(cfg, out, cache_dir=cache_dir, progress=False, member=1)
    assert one["config"]["seed"] == 1 and "members" not in one["config"]
    assert not (out / "member_0").exists() and not (out / "photoz.pt").exists()
    first = sha256(out / "member_1" / "photoz.pt")
    man = train_photoz(cfg, out, cache_dir=cache_dir, progress=False)
    assert sha256(out / "member_1" / "photoz.pt") == first  # finished: not trained again
    assert [m["seed"] for m in man["members"]] == [0, 1] and man["config"]["members"] == 2
    assert man["steps"] == 6 and man["width_calibration"]["n"] > 0
    est = probcat.load(str(out / "photoz.pt"))
    assert est.net.members == 2
    assert float(est.net.sd_scale) == pytest.approx(man["width_calibration"]["sd_scale"])
    w, m, s = est.mixture(np.zeros((6, 20, 20), np.float32), [10.0], [10.0])
    assert w.shape == (1, 10) and w.sum() == pytest.approx(1.0)
    with pytest.raises(ProbcatValueError, match="member must lie"):
        train_photoz(cfg, out, cache_dir=cache_dir, progress=False, member=2)
    # read in two orientations: the same members (not retrained), assembled again
    sym = PhotozTrainConfig(**{**cfg.__dict__, "symmetries": 2})
    man = train_photoz(sym, out, cache_dir=cache_dir, progress=False)
    assert sha256(out / "member_1" / "photoz.pt") == first
    assert man["config"]["symmetries"] == 2 and "symmetries" not in one["config"]
    est = probcat.load(str(out / "photoz.pt"))
    assert est.net.symmetries == 2
    assert est.mixture(np.zeros((6, 20, 20), np.float32), [10.0], [10.0])[0].shape == (1, 20)
    # trained further under per-band seeing, each member from its own net of the ensemble
    more = PhotozTrainConfig(**{**cfg.__dict__, "init": str(out / "photoz.pt"),
                                "data": PhotozData(**{**cfg.data.__dict__, "seeing_patterns": 1,
                                                      "seeing_bank_size": 40})})  # fmt: skip
    man = train_photoz(more, tmp_path / "more", cache_dir=cache_dir, progress=False)
    sha = sha256(out / "photoz.pt")
    for k, d in enumerate(man["data"]["members"]):
        assert d["init"] == {"weights": str(out / "photoz.pt"), "sha256": sha, "net": k}
        assert "from 1 bank of 40 galaxies" in d["seeing"]
    bad = PhotozTrainConfig(**{**more.__dict__, "members": 3})
    with pytest.raises(ProbcatValueError, match="holds 2 nets, none for member 2"):
        train_photoz(bad, tmp_path / "bad", cache_dir=cache_dir, progress=False)
    assert not (tmp_path / "bad").exists()  # refused before any training


def test_seeing_patterns_are_seeded_per_band_factors_in_range():
    from dataclasses import replace

    from probcat.train.photoz import seeing_patterns

    d = PhotozData(seeing_patterns=5, seeing_range=(0.9, 1.2))
    got = seeing_patterns(d)
    assert got.shape == (5, 6) and np.all((got >= 0.9) & (got <= 1.2))
    np.testing.assert_array_equal(got, seeing_patterns(d))  # fixed by catalog_seed
    assert not np.allclose(got, seeing_patterns(replace(d, catalog_seed=1)))
    assert len({tuple(r) for r in np.round(got, 6)}) == 5  # each band its own factor
    assert seeing_patterns(PhotozData()).shape == (0, 6)
    for bad in ((1.2, 0.9), (0.0, 1.0), (0.9, float("inf"))):
        with pytest.raises(ProbcatValueError, match="seeing_range"):
            PhotozTrainConfig(data=PhotozData(seeing_range=bad))
    with pytest.raises(ProbcatValueError, match="seeing_fraction"):
        PhotozTrainConfig(data=PhotozData(seeing_fraction=1.5))


def test_the_pool_takes_its_seeing_share_from_each_pattern(cache_dir):
    from probcat.survey import Survey
    from probcat.train.photoz import _pool, seeing_patterns

    cfg = _tiny_cfg(seeing_patterns=2, seeing_fraction=0.5, seeing_bank_size=40)
    pool = _pool(cfg, "train", 24, (0, 7), cache_dir, False)
    assert pool["x"].shape == (24, 6, 11, 11)
    base = Survey.lsst(bands="ugrizy")
    parts = [(None, 12, [0, 7, 0]), (0, 6, [0, 7, 0, 1000]), (1, 6, [0, 7, 0, 1001])]
    start = 0
    for pattern, n, key in parts:
        sim = cfg.simulation("train", 10.0, cache_dir, False, pattern)
        factors = np.ones(6) if pattern is None else seeing_patterns(cfg.data)[pattern]
        got = [b.psf_fwhm for b in sim.survey.bands]
        np.testing.assert_allclose(got, [b.psf_fwhm * f for b, f in zip(base.bands, factors)])
        if pattern is not None:
            assert sim.bank.config.n_galaxies == 40
        want = gold_stamps(sim, np.random.default_rng(key), n, stamp=11, jitter_px=0.3)
        np.testing.assert_array_equal(pool["x"][start : start + n], want["x"])
        np.testing.assert_array_equal(pool["z"][start : start + n], want["z"])
        start += n


def test_init_starts_each_member_from_its_net_of_the_ensemble():
    from dataclasses import replace

    from probcat.train.photoz import PhotozTask, init_encoder
    from probcat.weights import load

    model = PhotozModel(stamp=33, channels=32, components=5, apertures=(1.5, 3.0, 6.0))
    cfg = PhotozTrainConfig(model=model, init="photoz_lsst_ugrizy", members=4)
    shipped = load("photoz_lsst_ugrizy").model
    task = PhotozTask.__new__(PhotozTask)  # no pools: only the net is built
    task.cfg, task.member = replace(cfg, members=1), 2
    got = task.build_model().encoder.state_dict()
    want = shipped.encoders[2].state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(got["fc.1.weight"], shipped.encoders[1].state_dict()["fc.1.weight"])
    with pytest.raises(ProbcatValueError, match="holds 4 nets, none for member 4"):
        init_encoder(cfg, 4)
    with pytest.raises(ProbcatValueError, match="does not fit"):
        init_encoder(replace(cfg, model=replace(model, channels=8)), 0)
    with pytest.raises(ProbcatValueError, match="^init: "):
        init_encoder(replace(cfg, init="detection_lsst_i"), 0)


def test_runs_record_the_seeing_and_init_settings_only_when_used():
    from dataclasses import replace

    from probcat.train.photoz import _config_dict

    plain = _config_dict(_tiny_cfg())
    assert "init" not in plain and not any(k.startswith("seeing_") for k in plain["data"])
    cfg = replace(_tiny_cfg(seeing_patterns=2), init="photoz_lsst_ugrizy")
    got = _config_dict(cfg)
    assert got["init"] == "photoz_lsst_ugrizy" and got["data"]["seeing_patterns"] == 2
    assert got["data"]["seeing_range"] == [0.8, 1.3]


@pytest.mark.parametrize(
    "name", ["photoz_lsst_ugrizy", "photoz_lsst_ugrizy_seeing", "photoz_lsst_ugrizy_masked"]
)
def test_shipped_photoz_config_is_the_shipped_weights_config(name):
    from probcat.train.photoz import _config_dict, load_photoz_config
    from probcat.weights import manifest

    got = _config_dict(load_photoz_config(f"configs/{name}.yaml"))
    assert got == manifest(name)["config"]


def _runs(plane: np.ndarray) -> list:
    """Per row of a boolean plane, its masked pixels' run: None (none), or (start, stop)
    when they are one contiguous run; False when they are not."""
    out = []
    for row in plane:
        idx = np.flatnonzero(row)
        ok = len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
        out.append(None if len(idx) == 0 else (idx[0], idx[-1] + 1) if ok else False)
    return out


def test_band_masks_mask_one_to_three_bands_of_the_share_asked():
    from probcat.train.photoz import band_masks

    shape = (400, 6, 33, 33)
    m = band_masks(np.random.default_rng(3), shape, 0.3)
    np.testing.assert_array_equal(m, band_masks(np.random.default_rng(3), shape, 0.3))
    hit = m.any((1, 2, 3))
    assert 0.22 < hit.mean() < 0.38  # binomial(400, 0.3): 0.3 +- 0.023
    n_bands = m.any((2, 3)).sum(1)[hit]
    assert set(np.unique(n_bands)) <= {1, 2, 3} and 1.3 < n_bands.mean() < 1.7  # 1.5 expected
    assert not band_masks(np.random.default_rng(3), shape, 0.0).any()


@pytest.mark.parametrize("kind", ["band", "half-plane", "strip", "disc"])
def test_each_band_mask_shape_is_what_it_says(kind):
    from probcat.train.photoz import band_masks

    m = band_masks(np.random.default_rng(5), (60, 6, 33, 33), 1.0, shapes=(kind,))
    planes = m.reshape(-1, 33, 33)[m.reshape(-1, 33 * 33).any(1)]
    assert len(planes) >= 60
    for p in planes:
        rows, cols = _runs(p), _runs(p.T)
        if kind == "band":
            assert p.all()
        elif kind == "strip":  # every row the same, or every column: a run 2-8 px wide
            same = (p == p[:1]).all() or (p == p[:, :1]).all()
            run = [r for r in (cols if (p == p[:, :1]).all() else rows) if r][0]
            assert same and 1 <= run[1] - run[0] <= 9 and not p.all()
        elif kind == "half-plane":  # each row and column a run from one edge
            for r in rows + cols:
                assert r is None or (r is not False and (r[0] == 0 or r[1] == 33))
            assert not p.all()
        else:  # a disc: convex (one run per row and column), radius <= 15
            assert False not in rows + cols and p.sum() <= math.pi * 15.5**2
            assert max(r[1] - r[0] for r in rows if r) <= 31


def test_training_batches_mask_bands_to_zero_only_when_asked():
    from probcat.train.photoz import PhotozTask

    cfg = _tiny_cfg(mask_fraction=1.0)
    task = PhotozTask.__new__(PhotozTask)
    task.cfg = cfg
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6, 33, 33)).astype(np.float32) + 5.0  # no zero pixel anywhere
    task.pool = {"x": x, "z": np.linspace(0.1, 2.0, 24, dtype=np.float32)}
    xb, _ = task.batch(np.random.default_rng(1))
    zero = (xb == 0).numpy()
    assert zero.any((1, 2, 3)).all()  # every stamp has a masked band
    assert not zero.all((1, 2, 3)).any()  # and never all six everywhere
    task.cfg = _tiny_cfg()
    assert not (task.batch(np.random.default_rng(1))[0] == 0).any()
    with pytest.raises(ProbcatValueError, match="mask_fraction"):
        _tiny_cfg(mask_fraction=1.5)


def test_noiseless_stamps_are_the_noisy_ones_without_their_noise(cache_dir):
    cfg = _tiny_cfg()
    sim = cfg.simulation("train", 10.0, cache_dir, False)
    noisy = gold_stamps(sim, np.random.default_rng(3), 40, stamp=11, jitter_px=0.3)
    clean = gold_stamps(sim, np.random.default_rng(3), 40, stamp=11, jitter_px=0.3,
                        noiseless=True)  # fmt: skip
    np.testing.assert_array_equal(noisy["z"], clean["z"])  # the same draws
    inside = clean["inside"][:, None].repeat(6, 1)
    assert not inside.all()  # some stamps leave their 40-px scene
    noise = (noisy["x"] - clean["x"])[inside]
    assert abs(noise.std() - 1.0) < 0.02 and abs(noise.mean()) < 0.02  # sigma units
    assert not (noisy["x"] - clean["x"])[~inside].any()  # no noise off the scene


def test_fresh_noise_batches_add_unit_noise_on_the_scene_only():
    from probcat.train.photoz import PhotozTask

    task = PhotozTask.__new__(PhotozTask)
    task.cfg = _tiny_cfg(fresh_noise=True, batch_size=64)
    inside = np.zeros((4, 11, 11), bool)
    inside[:, :, :6] = True  # the left part of each stamp is on its scene
    task.pool = {"x": np.zeros((4, 6, 11, 11), np.float32), "inside": inside,
                 "z": np.ones(4, np.float32)}  # fmt: skip
    a, _ = task.batch(np.random.default_rng(1))
    b, _ = task.batch(np.random.default_rng(2))
    assert not torch.equal(a, b)  # a new realisation each batch
    off = (a == 0).numpy()
    # the batch is dihedrally turned: off-scene pixels are 5 of 11 columns or rows, per stamp
    assert np.all(off.sum((2, 3)) == 5 * 11)
    assert abs(float(a[~torch.from_numpy(off)].std()) - 1.0) < 0.03
    task.cfg = _tiny_cfg(batch_size=64)  # without the option the pool is read as it is
    assert not task.batch(np.random.default_rng(1))[0].any()
