import numpy as np
import pytest

from probcat.simulate.bank import BankConfig, SourceBank
from probcat.survey import Survey


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
