import random

import numpy as np
import pytest
import torch

from probcat.nets.detection import DetectionNet
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.survey import Survey


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state (Python, numpy, torch)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def pytest_addoption(parser):
    parser.addoption(
        "--default-device",
        action="store_true",
        help="run every test on probcat's default device (a GPU when present), not the CPU: "
        "to look for GPU bugs (tests of exact values then fail on the GPU's rounding)",
    )


@pytest.fixture(autouse=True)
def _cpu_by_default(request, monkeypatch):
    """Tests run on the CPU unless they name a device, so that their numbers are the same on
    a machine with a GPU (a GPU's float rounding, and its non-deterministic kernels in
    training, differ from the CPU's). The GPU tests name ``"cuda"``; a test marked
    ``device_default`` (every test, with ``--default-device``) sees probcat's own default
    (a GPU when present)."""
    if request.config.getoption("--default-device"):
        return
    if request.node.get_closest_marker("device_default") is not None:
        return
    import probcat.runtime as R

    choose = R.choose_device
    monkeypatch.setattr(
        R, "choose_device", lambda device=None: choose("cpu" if device is None else device)
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bank_cache")


@pytest.fixture(scope="session")
def survey_i():
    return Survey.lsst(bands="i")


@pytest.fixture(scope="session")
def tiny_bank(survey_i, cache_dir):
    cfg = BankConfig(n_galaxies=24, n_star_phases=4, split="train")
    return SourceBank.load_or_build(survey_i, cfg, cache_dir=cache_dir, workers=1, progress=False)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def net():
    """A tiny untrained detection network (tile classifier), eval mode."""
    torch.manual_seed(0)
    return DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2).eval()


@pytest.fixture
def stamp_net():
    """A tiny untrained detection network with the stamp classifier (train mode)."""
    torch.manual_seed(0)
    return DetectionNet(n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier="stamp")


def _write_weights(path, kind: str, net, bands: str):
    """A probcat weights file (format 2) holding ``net``, for the survey's ``bands``."""
    torch.save(
        {
            "kind": kind,
            "format": 2,
            "hparams": net.hparams,
            "state_dict": net.state_dict(),
            "survey": Survey.lsst(bands=bands).to_dict(),
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A tiny untrained detection weights file (shapes and plumbing, not quality)."""
    torch.manual_seed(0)
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2)
    return _write_weights(tmp_path_factory.mktemp("w") / "tiny.pt", "detection", net, "i")


@pytest.fixture(scope="session")
def stamp_weights(tmp_path_factory):
    """Tiny untrained detection weights whose star/galaxy classifier reads stamps."""
    torch.manual_seed(0)
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2, classifier="stamp")
    return _write_weights(tmp_path_factory.mktemp("ws") / "tiny.pt", "detection", net, "i")


@pytest.fixture(scope="session")
def deblender_weights(tmp_path_factory):
    """A tiny untrained deblender weights file (plumbing, not quality)."""
    from probcat.nets.deblend import CROP, STAMP, GalaxyModel

    torch.manual_seed(0)
    net = GalaxyModel(CROP, STAMP, channels=4)
    path = tmp_path_factory.mktemp("wd") / "tiny_deblender.pt"
    return _write_weights(path, "deblender", net, "i")


@pytest.fixture(scope="session")
def photoz_weights(tmp_path_factory):
    """A tiny untrained ugrizy photo-z weights file (plumbing, not quality)."""
    from probcat.nets.photoz import PhotozNet

    torch.manual_seed(0)
    net = PhotozNet(bands=6, size=11, channels=4)
    path = tmp_path_factory.mktemp("wp") / "tiny_photoz.pt"
    return _write_weights(path, "photoz", net, "ugrizy")
