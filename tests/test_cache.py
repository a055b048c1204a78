"""The source bank cache: listing, pruning by age and by size (least recently used first),
and a load marking its bank used."""

import json
import os
import time

import pytest

from probcat.cli import main
from probcat.errors import ProbcatValueError
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.cache import STALE_TMP_S, cached_banks, prune

DAY = 86400.0


def _fake(root, key, size, days_ago, population="parametric", now=None):
    """A bank directory: a bank.json (last used ``days_ago``) and ``size`` bytes of pixels."""
    now = time.time() if now is None else now
    d = root / f"bank-{key}"
    d.mkdir(parents=True)
    (d / "pixels.npy").write_bytes(b"\0" * size)
    meta = {"format": 1, "survey": {"bands": [{"name": "i"}], "depth_years": 10.0},
            "config": {"population": population, "split": "test", "n_galaxies": 9}}  # fmt: skip
    (d / "bank.json").write_text(json.dumps(meta))
    t = now - days_ago * DAY
    os.utime(d / "bank.json", (t, t))
    return d


@pytest.fixture
def cache(tmp_path):
    now = time.time()
    root = tmp_path / "cache"
    # a: used an hour ago, 3000 bytes; b: 2 days, 2000; c: 10 days, 1000; d: 5 days, 4000
    for key, size, days in (("a", 3000, 1 / 24), ("b", 2000, 2), ("c", 1000, 10), ("d", 4000, 5)):
        _fake(root, key, size, days, now=now)
    return root, now


def _sizes(root):
    return {b.key: b.size for b in cached_banks(root)}


def test_the_list_is_most_recently_used_first_with_sizes_and_what_they_hold(cache):
    root, _ = cache
    banks = cached_banks(root)
    assert [b.key for b in banks] == ["a", "b", "d", "c"]
    assert [b.size - len((b.path / "bank.json").read_bytes()) for b in banks] == [
        3000, 2000, 4000, 1000,
    ]  # fmt: skip
    assert banks[0].describe() == "parametric, split test, bands i, 10 yr, 9 galaxies"
    assert cached_banks(root / "none") == []


def test_broken_banks_are_listed_as_such_and_pruned_by_their_age(cache):
    """A bank without bank.json (interrupted before it was written) is as old as its
    directory; one whose bank.json does not parse is listed as unreadable; a stray file
    named like a bank is no bank."""
    root, now = cache
    half = root / "bank-half"
    half.mkdir()
    (half / "pixels.npy").write_bytes(b"\0" * 10)
    os.utime(half, (now - 20 * DAY, now - 20 * DAY))
    junk = _fake(root, "junk", 10, 1)
    (junk / "bank.json").write_text("{not json")
    os.utime(junk / "bank.json", (now - DAY, now - DAY))
    (root / "bank-file").write_text("not a directory")
    banks = {b.key: b for b in cached_banks(root)}
    assert set(banks) == {"a", "b", "c", "d", "half", "junk"}
    assert banks["half"].last_used == pytest.approx(now - 20 * DAY)
    assert banks["half"].config is None and banks["junk"].config is None
    assert banks["junk"].describe() == "unreadable (rebuilt when next needed)"
    assert [b.key for b in prune(root, older_than_days=15, now=now)] == ["half"]
    assert (root / "bank-file").exists() and (root / "bank-junk").exists()


def test_prune_by_age_removes_exactly_the_banks_unused_that_long(cache):
    root, now = cache
    gone = prune(root, older_than_days=3, dry_run=True, now=now)
    assert sorted(b.key for b in gone) == ["c", "d"] and set(_sizes(root)) == set("abcd")
    gone = prune(root, older_than_days=3, now=now)
    assert sorted(b.key for b in gone) == ["c", "d"]
    assert set(_sizes(root)) == {"a", "b"}
    assert not list(root.glob(".bank-*"))  # nothing left half-removed


def test_prune_to_a_size_removes_the_least_recently_used_until_it_fits(cache):
    root, now = cache
    meta = len((root / "bank-a" / "bank.json").read_bytes())
    # 10000 bytes of pixels in all: down to 6000 takes c (oldest) then d; 5000 too
    gone = prune(root, max_bytes=6000 + 4 * meta, now=now)
    assert [b.key for b in gone] == ["c", "d"]
    assert set(_sizes(root)) == {"a", "b"}
    assert [b.key for b in prune(root, max_bytes=0, now=now)] == ["b", "a"]
    assert cached_banks(root) == []


def test_prune_everything_and_stale_half_written_banks(cache):
    root, now = cache
    stale = root / ".bank-x.tmp123"
    fresh = root / ".bank-y.tmp456"
    for d, age in ((stale, STALE_TMP_S + 60), (fresh, 60)):
        d.mkdir()
        os.utime(d, (now - age, now - age))
    assert len(prune(root, everything=True, now=now)) == 4
    assert not stale.exists() and fresh.exists()  # a bank being written now stays


def test_prune_needs_a_rule_and_sane_numbers(cache):
    root, _ = cache
    with pytest.raises(ProbcatValueError, match="say what"):
        prune(root)
    for bad in (-1, float("nan"), "3"):
        with pytest.raises(ProbcatValueError, match="older_than_days"):
            prune(root, older_than_days=bad)
    assert set(_sizes(root)) == set("abcd")


def test_loading_a_cached_bank_marks_it_used(survey_i, tmp_path):
    cfg = BankConfig(n_galaxies=3, n_star_phases=2)
    SourceBank.load_or_build(survey_i, cfg, cache_dir=tmp_path, workers=1, progress=False)
    (bank,) = cached_banks(tmp_path)
    old = time.time() - 30 * DAY
    os.utime(bank.path / "bank.json", (old, old))
    assert prune(tmp_path, older_than_days=7, dry_run=True) == [cached_banks(tmp_path)[0]]
    SourceBank.load_or_build(survey_i, cfg, cache_dir=tmp_path, workers=1, progress=False)
    assert prune(tmp_path, older_than_days=7, dry_run=True) == []


def test_the_cache_command_lists_prunes_and_refuses_bad_options(cache, capsys):
    root, _ = cache
    assert main(["cache", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:4]] == ["a", "b", "d", "c"]
    assert out[-1].startswith("4 banks")
    assert main(["cache", "--cache-dir", str(root), "--older-than", "3", "--dry-run"]) == 0
    assert "would remove 2 banks" in capsys.readouterr().out
    assert set(_sizes(root)) == set("abcd")
    assert main(["cache", "--cache-dir", str(root), "--older-than", "3"]) == 0
    assert "removed 2 banks" in capsys.readouterr().out
    assert set(_sizes(root)) == {"a", "b"}
    for bad in (["--max-size", "-1"], ["--older-than", "-2"], ["--dry-run"]):
        assert main(["cache", "--cache-dir", str(root), *bad]) == 2
        assert capsys.readouterr().err.startswith("probcat: error:")
    assert set(_sizes(root)) == {"a", "b"}


def test_a_cache_path_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "cache"
    f.write_text("not a directory")
    with pytest.raises(ProbcatValueError, match="not a directory"):
        cached_banks(f)
    assert main(["cache", "--cache-dir", str(f)]) == 2
    assert capsys.readouterr().err.startswith("probcat: error:")
    assert f.read_text() == "not a directory"
