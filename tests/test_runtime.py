import numpy as np
import pytest
import torch

import probcat.runtime as R
from probcat.errors import ProbcatValueError
from probcat.nets.photoz import PhotozNet


def test_small_work_uses_one_thread_and_explicit_counts_are_kept(monkeypatch):
    monkeypatch.setattr(R, "_others_running", lambda: 0)
    monkeypatch.setattr(R, "_cores", lambda: 8)
    assert R.threads_for("auto", 98 * 98 * 16) == 1
    assert R.threads_for(None, R.SMALL_PIXELS - 1) == 1
    assert R.threads_for("auto", 1000 * 1000) == 8
    assert R.threads_for(3, 10) == 3
    for bad in (0, -1, 1.5, "two", True, 33, 100_000):  # 100,000 crashed OpenMP outright
        with pytest.raises(ProbcatValueError, match="threads"):
            R.threads_for(bad, 10)
    assert R.threads_for(32, 10) == 32  # 4 per core of 8
    monkeypatch.setattr(R, "_cores", lambda: 1)
    assert R.max_threads() == 8 and R.threads_for(8, 10) == 8
    with pytest.raises(ProbcatValueError, match="from 1 to 8"):
        R.threads_for(9, 10)


def test_cli_refuses_threads_beyond_the_machine_on_one_line(tmp_path, capsys):
    from astropy.io import fits

    from probcat.cli import main

    img = tmp_path / "x.fits"
    fits.PrimaryHDU(np.zeros((32, 32), np.float32)).writeto(img)
    assert main(["detect", str(img), "-o", str(tmp_path / "c.fits"), "--threads", "100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "from 1 to" in err[0]
    assert not (tmp_path / "c.fits").exists()


def test_every_config_refuses_threads_beyond_the_machine_when_made():
    """Training and population configs check ``threads`` as the commands do, when the
    config is made: before any bank is rendered or output folder made."""
    from dataclasses import replace

    from probcat.population.chain import PopulationConfig
    from probcat.train.deblend import DeblendTrainConfig
    from probcat.train.detection import DetectionTrainConfig
    from probcat.train.photoz import PhotozTrainConfig

    for cls in (DetectionTrainConfig, DeblendTrainConfig, PhotozTrainConfig, PopulationConfig):
        assert cls(threads=2).threads == 2
        for bad in (0, R.max_threads() + 1):
            with pytest.raises(ProbcatValueError, match="threads must be 'auto' or an integer"):
                replace(cls(), threads=bad)


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


@pytest.mark.device_default
def test_choose_device():
    assert R.choose_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert R.choose_device(None).type == expected
    with pytest.raises(ProbcatValueError, match="not a torch device"):
        R.choose_device("gpu0")
    assert R.device_name("cpu") == "cpu" == R.device_name(torch.device("cpu"))
    if torch.cuda.is_available():
        assert R.device_name("cuda").startswith("cuda (")  # and the card's name
    if not torch.cuda.is_available():  # asked for by name where there is none: one line
        with pytest.raises(ProbcatValueError, match="no CUDA GPU"):
            R.choose_device("cuda")


def test_full_float32_turns_tf32_off_for_the_outermost_block_and_restores_it(monkeypatch):
    """Nested and concurrent blocks: the first sets full float32, the last restores what it
    found; nothing changes without a GPU or after use_tf32(True)."""
    import threading

    cudnn = torch.backends.cudnn
    before = (cudnn.allow_tf32, torch.get_float32_matmul_precision())
    state = lambda: (cudnn.allow_tf32, torch.get_float32_matmul_precision())  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with R.full_float32():
        assert state() == before  # no GPU: torch's settings stay as they are
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")  # a user's own choice, restored after
        inside, other = threading.Event(), []
        with R.full_float32():
            assert state() == (False, "highest")

            def run():
                with R.full_float32():
                    inside.set()
                    other.append(state())

            t = threading.Thread(target=run)
            t.start()
            inside.wait(5)
            t.join(5)
            assert other == [(False, "highest")] and state() == (False, "highest")
            with R.full_float32():
                pass
            assert state() == (False, "highest")  # an inner block leaves it on
        assert state() == (True, "high")
        with pytest.raises(ValueError):
            with R.full_float32():
                raise ValueError("boom")
        assert state() == (True, "high") and R._F32_DEPTH == 0
        assert R.use_tf32(True) is False
        try:
            with R.full_float32():
                assert state() == (True, "high")
        finally:
            assert R.use_tf32(False) is True
    finally:
        cudnn.allow_tf32 = before[0]
        torch.set_float32_matmul_precision(before[1])


# ---- the inference thread ----------------------------------------------------------------
def _where(tag, fail=False):
    import threading

    if fail:
        raise ValueError(f"bad {tag}")
    return tag, threading.current_thread().name


def test_inference_entry_runs_main_thread_calls_in_its_thread_and_others_in_place():
    import contextvars
    import threading

    entry = R.inference_entry(_where)
    assert entry.__name__ == "_where"
    assert entry("a") == ("a", "probcat-inference")
    first = R._THREAD
    assert entry("b") == ("b", "probcat-inference") and R._THREAD is first  # one, kept
    with pytest.raises(ValueError, match="bad c"):  # the exception, unchanged
        entry("c", fail=True)
    assert entry("d")[1] == "probcat-inference"  # the thread survives a failure
    out = []
    other = threading.Thread(target=lambda: out.append(entry("e")), name="users-own")
    other.start()
    other.join()
    assert out == [("e", "users-own")]
    nested = R.inference_entry(lambda: entry("f"))  # an entry point calling another
    assert nested() == ("f", "probcat-inference")
    var = contextvars.ContextVar("var", default="unset")
    var.set("caller's")
    assert R.inference_entry(var.get)() == "caller's"  # the caller's context goes along
    before = R.use_inference_thread(False)
    try:
        assert before is True
        assert entry("g") == ("g", threading.main_thread().name)
    finally:
        R.use_inference_thread(before)


def test_warnings_name_the_callers_line_from_either_thread():
    """probcat's warnings point at the line that called probcat, however deep they arise,
    also when the call ran in probcat's inference thread; they are ProbcatWarnings."""
    import inspect
    import warnings

    from probcat.errors import ProbcatWarning
    from probcat.masking import masked_pixels

    image = np.zeros((8, 8), np.float32)
    image[2, 3] = np.nan
    entry = R.inference_entry(masked_pixels)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        masked_pixels(image)
        entry(image)  # runs in probcat's inference thread
    assert [(w.category, w.filename, w.lineno) for w in got] == [
        (ProbcatWarning, __file__, line),
        (ProbcatWarning, __file__, line + 1),
    ]
    assert all("NaN or inf" in str(w.message) for w in got)
    assert issubclass(ProbcatWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ProbcatWarning)  # silences them, and only them
        entry(image)


def test_warnings_from_code_without_a_source_file_are_shown_not_raised():
    """``python -c`` (and other code whose module loader has no source): the warning names
    ``<string>``; it once raised ImportError from the loader instead."""
    import subprocess
    import sys

    code = (
        "import numpy as np; from probcat.masking import masked_pixels; "
        "masked_pixels(np.array([[np.nan, 0.0]])); print('done')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done"
    assert "<string>:1: ProbcatWarning: 1 pixel(s) are NaN or inf" in out.stderr


def test_photoz_and_deblending_in_the_inference_thread_equal_the_main_thread():
    """The decorated entry points give the same numbers to the bit from either thread."""
    import probcat
    from probcat.redshift.estimator import PhotozEstimator
    from probcat.survey import Survey

    torch.manual_seed(0)
    net = PhotozNet(bands=6, size=11, channels=4).eval()
    est = PhotozEstimator(net, Survey.lsst(bands="ugrizy"), threads=1)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((6, 40, 40)).astype(np.float32)
    x, y = rng.uniform(0, 39, 30), rng.uniform(0, 39, 30)
    image = np.load("tests/data/fixed_scene_v6.npz")["image"][:, :64, :64]
    deb = probcat.load("deblender_lsst_i", device="cpu", threads=1)
    cat = probcat.load("detection_lsst_i", device="cpu", threads=1).catalog(image)

    def both():
        flux = deb.measure(image, cat).catalog["flux_ap"]
        return est._mixture(xs, x, y), np.asarray(flux)

    (a, fa) = both()
    before = R.use_inference_thread(False)
    try:
        (b, fb) = both()
    finally:
        R.use_inference_thread(before)
    assert len(cat) > 3 and np.array_equal(fa, fb) and np.all(np.isfinite(fa))
    for u, v in zip(a, b):
        assert u.shape == (30, 5) and np.array_equal(u, v)


@pytest.fixture
def sigint_raises():
    """Python's own SIGINT handler for the test: a suite started in the background by a
    non-interactive shell inherits SIGINT ignored, and Ctrl-C cannot reach it at all."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("to", ["process", "inference thread"])
def test_an_interrupted_caller_stops_the_job_at_its_next_check(to, sigint_raises):
    """Ctrl-C while the main thread waits: the job stops at its next check_interrupt, the
    caller gets KeyboardInterrupt, and the thread takes the next job as before. The kernel
    may hand a process's SIGINT to any of its threads: sent to the inference thread itself,
    the waiting main thread must still raise (a plain blocking wait sat out the 10 s job)."""
    import os
    import signal
    import threading
    import time

    steps = []

    @R.inference_entry
    def job(n):
        for i in range(n):  # 0.01 s a step
            R.check_interrupt()
            steps.append(i)
            time.sleep(0.01)
        return "finished"

    R.check_interrupt()  # nothing outside the inference thread
    if to == "process":
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    else:
        ident = R._inference_thread().thread.ident
        timer = threading.Timer(0.3, signal.pthread_kill, (ident, signal.SIGINT))
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        job(1000)  # 10 s unless interrupted
    assert time.perf_counter() - t0 < 3 and 5 < len(steps) < 300
    n = len(steps)
    time.sleep(0.1)
    assert len(steps) == n  # stopped, not running on
    steps.clear()
    assert R.inference_entry(lambda: "next")() == "next"
    assert job(20) == "finished" and len(steps) == 20  # the flag was reset
