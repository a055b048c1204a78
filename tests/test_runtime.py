import pytest
import torch

import probcat.runtime as R
from probcat.errors import ProbcatValueError


def test_small_work_uses_one_thread_and_explicit_counts_are_kept(monkeypatch):
    monkeypatch.setattr(R, "_others_running", lambda: 0)
    monkeypatch.setattr(R, "_cores", lambda: 8)
    assert R.threads_for("auto", 98 * 98 * 16) == 1
    assert R.threads_for(None, R.SMALL_PIXELS - 1) == 1
    assert R.threads_for("auto", 1000 * 1000) == 8
    assert R.threads_for(3, 10) == 3
    for bad in (0, -1, 1.5, "two", True):
        with pytest.raises(ProbcatValueError, match="threads"):
            R.threads_for(bad, 10)


def test_auto_threads_leave_the_busy_cores(monkeypatch):
    monkeypatch.setattr(R, "_cores", lambda: 2)
    monkeypatch.setattr(R, "_others_running", lambda: 1)
    assert R.auto_threads() == 1
    monkeypatch.setattr(R, "_others_running", lambda: 5)
    assert R.auto_threads() == 1
    monkeypatch.setattr(R, "_others_running", lambda: 0)
    assert R.auto_threads() == 2
    monkeypatch.setattr(R, "_others_running", lambda: None)  # unreadable: be safe
    assert R.auto_threads() == 1


def test_run_queue_reading(monkeypatch, tmp_path):
    readings = iter(["0.5 0.4 0.3 3/200 1\n", "0.5 0.4 0.3 2/200 1\n", "0.5 0.4 0.3 4/200 1\n"])
    real_open = open

    def fake_open(path, *a, **k):
        if path == "/proc/loadavg":
            f = tmp_path / "loadavg"
            f.write_text(next(readings))
            return real_open(f, *a, **k)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    assert R._others_running(readings=3, pause_s=0) == 1  # fewest 2, minus this process


def test_thread_limit_restores():
    from threadpoolctl import threadpool_info

    def blas():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before, blas_before = torch.get_num_threads(), blas()
    with R.thread_limit(1):
        assert torch.get_num_threads() == 1
        assert blas() and all(n == 1 for n in blas())  # numpy's BLAS off torch's cores
    assert torch.get_num_threads() == before
    assert blas() == blas_before


def test_choose_device():
    assert R.choose_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert R.choose_device(None).type == expected
    with pytest.raises(ProbcatValueError, match="not a torch device"):
        R.choose_device("gpu0")
