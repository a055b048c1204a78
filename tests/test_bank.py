import os

import numpy as np
import pytest

from probcat.simulate.bank import BankConfig, SourceBank, dihedral, dihedral_truth
from probcat.simulate.prior import MORPHOLOGY_COLUMNS
from probcat.simulate.render import draw_stamp, galaxy_profile


def test_bank_shapes_and_flux(tiny_bank):
    b = tiny_bank
    assert len(b) == 24
    assert b.flux.shape == (24, 1) and b.snr.shape == (24, 1)
    for i in range(len(b)):
        st = b.stamp(i)
        assert st.shape[0] == 1 and st.shape[1] == st.shape[2] and st.shape[1] % 2 == 1
        # trimming at 2e-3 sigma loses a negligible fraction of the flux
        assert st.sum() == pytest.approx(b.flux[i, 0], rel=0.01)
    assert np.all(np.abs(b.dx) <= 0.5) and np.all(np.abs(b.dy) <= 0.5)
    assert b.star_stamps.sum(axis=(2, 3)) == pytest.approx(np.ones((4, 1)), rel=0.01)


def test_bank_cache_round_trip(tiny_bank, survey_i, cache_dir):
    again = SourceBank.load_or_build(
        survey_i, tiny_bank.config, cache_dir=cache_dir, progress=False
    )
    assert np.array_equal(np.asarray(again.pixels), tiny_bank.pixels)
    assert np.array_equal(again.dx, tiny_bank.dx)
    assert list(again.table["id"]) == list(tiny_bank.table["id"])
    other = BankConfig(n_galaxies=24, n_star_phases=4, split="val")
    assert SourceBank.cache_key(survey_i, other) != SourceBank.cache_key(survey_i, tiny_bank.config)


def test_corrupt_cache_is_rebuilt(survey_i, tmp_path):
    cfg = BankConfig(n_galaxies=3, n_star_phases=2)
    bank = SourceBank.load_or_build(survey_i, cfg, cache_dir=tmp_path, workers=1, progress=False)
    path = tmp_path / f"bank-{SourceBank.cache_key(survey_i, cfg)}"
    (path / "pixels.npy").write_bytes(b"garbage")
    again = SourceBank.load_or_build(survey_i, cfg, cache_dir=tmp_path, workers=1, progress=False)
    assert np.array_equal(np.asarray(again.pixels), bank.pixels)


def test_an_unwritable_cache_warns_and_still_gives_the_bank(survey_i, tmp_path):
    cfg = BankConfig(n_galaxies=3, n_star_phases=2)
    blocker = tmp_path / "file"  # a file where the cache folder would go
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="the source bank is not cached .*rebuilt next time"):
        bank = SourceBank.load_or_build(survey_i, cfg, cache_dir=blocker, workers=1,
                                        progress=False)  # fmt: skip
    built = SourceBank.load_or_build(survey_i, cfg, cache_dir=tmp_path / "c", workers=1,
                                     progress=False)  # fmt: skip
    assert np.array_equal(np.asarray(bank.pixels), np.asarray(built.pixels))


@pytest.mark.parametrize("variant", range(8))
def test_dihedral_variants_equal_rendering_transformed_truth(tiny_bank, variant):
    b = tiny_bank
    i = int(np.argmax(b.flux[:, 0] * (b.half < 30)))  # a bright, compact-enough galaxy
    row = b.table[i]
    dx, dy, beta = dihedral_truth(b.dx[i], b.dy[i], row["beta"], variant)
    params = [row[c] for c in MORPHOLOGY_COLUMNS]
    params[MORPHOLOGY_COLUMNS.index("beta")] = float(beta)
    band = b.survey["i"]
    n = b.stamp(i).shape[-1]
    direct = (
        draw_stamp(galaxy_profile(*params), band.psf(), band.pixel_scale, n, float(dx), float(dy))
        * b.flux[i, 0]
    )
    got = dihedral(b.stamp(i), variant)[0]
    assert np.abs(got - direct).max() < 1e-3 * band.noise_sigma


def test_keep_gold_bank_holds_every_gold_galaxy_and_draws_in_population_proportions(
    survey_i, tmp_path
):
    from astropy.table import Table

    n = 90  # 30 per third; gold is every third row
    mag = np.where(np.arange(n) % 3 == 0, 23.0, 26.0)
    cat = tmp_path / "cat.fits"
    Table(
        {
            "id": np.arange(n),
            "mag_i": mag,
            "disk_hlr": np.full(n, 0.3),
            "disk_q": np.full(n, 0.8),
            "beta": np.zeros(n),
        }
    ).write(cat)
    cfg = BankConfig(
        population=str(cat), n_galaxies=24, n_star_phases=2, val_to_train=0.5, keep_gold=True
    )
    bank = SourceBank.load_or_build(survey_i, cfg, cache_dir=tmp_path, workers=1, progress=False)
    from probcat.simulate.prior import split_rows

    rows = split_rows(n, "train", 0, 0.5)  # the training third plus half the validation one
    gold_rows = set(np.flatnonzero(mag < 25.3)) & set(rows)
    assert len(bank) == 24 and set(np.asarray(bank.table["id"])) >= gold_rows
    gold = np.asarray(bank.table["mag_i"]) < 25.3
    assert gold.sum() == len(gold_rows)
    # draws restore the population's gold share (a uniform draw would give gold.mean())
    share = len(gold_rows) / len(rows)
    drawn = bank.draw(np.random.default_rng(0), 40000)
    assert gold[drawn].mean() == pytest.approx(share, abs=0.01)
    assert abs(gold.mean() - share) > 0.1
    again = SourceBank.load_or_build(survey_i, cfg, cache_dir=tmp_path, progress=False)
    assert np.array_equal(
        np.asarray(again.table["draw_weight"]), np.asarray(bank.table["draw_weight"])
    )


def test_cache_key_of_older_configs_is_unchanged(survey_i):
    from probcat.simulate.bank import _key_config

    assert "keep_gold" not in _key_config(BankConfig()) and "val_to_train" not in _key_config(
        BankConfig()
    )
    assert _key_config(BankConfig(keep_gold=True))["keep_gold"] is True
    keys = {
        SourceBank.cache_key(survey_i, c)
        for c in (BankConfig(), BankConfig(keep_gold=True), BankConfig(val_to_train=0.5))
    }
    assert len(keys) == 3


def test_a_new_version_of_a_built_in_prior_is_a_new_bank(survey_i, monkeypatch):
    """A cached bank of a built-in population is not reused once its prior's version
    changes (the cww colours once kept a bank drawn before they changed)."""
    from probcat.simulate import prior

    before = {p: SourceBank.cache_key(survey_i, BankConfig(population=p)) for p in ("cww", "dc2")}
    monkeypatch.setitem(prior.PRIOR_VERSIONS, "cww", "cww v0 (test)")
    assert SourceBank.cache_key(survey_i, BankConfig(population="cww")) != before["cww"]
    assert SourceBank.cache_key(survey_i, BankConfig(population="dc2")) == before["dc2"]


def test_a_bank_under_another_psf_profile_is_another_bank(survey_i, tmp_path):
    """A Moffat atmosphere is another bank: another cache key, its own stamps."""
    cfg = BankConfig(n_galaxies=8, n_star_phases=1, split="val")
    moffat = survey_i.with_psf_beta(2.5)
    assert SourceBank.cache_key(moffat, cfg) != SourceBank.cache_key(survey_i, cfg)
    a = SourceBank.load_or_build(survey_i, cfg, cache_dir=tmp_path, progress=False, workers=1)
    b = SourceBank.load_or_build(moffat, cfg, cache_dir=tmp_path, progress=False, workers=1)
    assert len(list(tmp_path.glob("bank-*"))) == 2
    # the same galaxies; a star's peak lower under the broader wings, its flux the same
    np.testing.assert_array_equal(a.flux, b.flux)
    sa, sb = a.star_stamps, b.star_stamps
    assert sb.max() < 0.95 * sa.max()
    assert sb.sum() == pytest.approx(sa.sum(), rel=0.02)


def _build_in_worker(args):
    survey, cfg = args
    return SourceBank.build(survey, cfg, workers=2, progress=False).pixels


@pytest.mark.skipif(os.name == "nt", reason="fork start method")
def test_bank_builds_inside_a_pool_worker(survey_i):
    """A pool's worker may not start a pool of its own: the bank renders serially there,
    the same pixels as in the main process."""
    import multiprocessing as mp

    cfg = BankConfig(n_galaxies=64, n_star_phases=2, split="val")
    serial = SourceBank.build(survey_i, cfg, workers=1, progress=False).pixels
    with mp.get_context("fork").Pool(1) as pool:
        (inside,) = pool.map(_build_in_worker, [(survey_i, cfg)])
    assert np.array_equal(inside, serial)


def test_unknown_population_is_a_clear_error(survey_i, tmp_path):
    from probcat.errors import ProbcatFileError

    for name in ("nonsense", str(tmp_path / "missing.fits")):
        with pytest.raises(ProbcatFileError, match="neither a built-in population"):
            SourceBank.cache_key(survey_i, BankConfig(population=name))


def test_a_bank_beyond_the_memory_is_refused_before_anything_renders(survey_i, monkeypatch):
    """Two checks: the population table of the galaxies asked for (a drawn population has
    that many rows), then the bank of the galaxies there are (a catalog caps them: DC2's
    training third has 29,745)."""
    from probcat import runtime
    from probcat.errors import ProbcatValueError
    from probcat.simulate.bank import BUILD_BYTES_PER_STAMP, TABLE_BYTES_PER_ROW
    from probcat.survey import Survey

    monkeypatch.setattr(runtime, "memory_limit", lambda: (7e9, "this machine has"))
    ugrizy = Survey.lsst(bands="ugrizy")
    n = int(7e9 / TABLE_BYTES_PER_ROW) + 1
    with pytest.raises(ProbcatValueError, match=f"population table of {n:,} galaxies"):
        SourceBank.build(survey_i, BankConfig(n_galaxies=n))
    assert 29_745 * 6 * BUILD_BYTES_PER_STAMP > 7e9  # 7.1 GB
    with pytest.raises(ProbcatValueError, match="a source bank of 29,745 galaxies in 6 band"):
        SourceBank.build(ugrizy, BankConfig(population="dc2", n_galaxies=5_000_000))
    n = int(7e9 / BUILD_BYTES_PER_STAMP) + 1  # a drawn population: the table fits
    with pytest.raises(ProbcatValueError, match=f"a source bank of {n:,} galaxies in 1 band"):
        SourceBank.build(survey_i, BankConfig(n_galaxies=n))
