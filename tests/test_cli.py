import json
import os
import re

import numpy as np
import pytest

from probcat.cli import main


def test_simulate_cli_writes_outputs(tmp_path, cache_dir, capsys):
    rc = main(
        [
            "simulate",
            "--recipe",
            "blend",
            "-n",
            "2",
            "--seed",
            "1",
            "--bank-size",
            "24",
            "--cache-dir",
            str(cache_dir),
            "--out",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    assert rc == 0
    assert (tmp_path / "out/images/image_00001.fits").exists()
    assert (tmp_path / "out/truth.fits").exists() and (tmp_path / "out/config.yaml").exists()
    assert "wrote 2 blend images" in capsys.readouterr().out


def test_simulate_under_other_seeing_and_a_moffat_psf(tmp_path, cache_dir, capsys):
    """--seeing widens the PSF, --psf-beta gives it Moffat wings: the headers say so, the
    bank's star has a lower peak and more light in its wings, the same flux; another
    profile in the same folder is refused; a bad one is a one-line error."""
    from astropy.io import fits

    from probcat.simulate.datasets import Simulation, SimulationConfig

    base = ["simulate", "--recipe", "single", "-n", "1", "--bank-size", "8", "--cache-dir",
            str(cache_dir), "-q"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--seeing", "1.5", "--psf-beta", "2.5"]) == 0
    ha = fits.getheader(tmp_path / "a/images/image_00000.fits")
    hb = fits.getheader(tmp_path / "b/images/image_00000.fits")
    assert ha["PSFPROF"] == "kolmogorov" and "PSFBETA" not in ha
    assert hb["PSFPROF"] == "moffat" and hb["PSFBETA"] == 2.5
    assert hb["PSFFWHM0"] == pytest.approx(1.5 * ha["PSFFWHM0"])

    def star(cfg):  # the bank's unit-flux star: its peak, its light beyond 5 px (1"), flux
        s = Simulation(cfg, cache_dir=cache_dir, progress=False).centered_bank.star_stamps[0, 0]
        yy, xx = np.mgrid[: s.shape[0], : s.shape[1]] - (s.shape[0] - 1) / 2
        return s.max(), s[np.hypot(xx, yy) > 5].sum() / s.sum(), s.sum()

    cfg = dict(recipe="single", n=1, bank_size=8)
    (p0, w0, f0), (p1, w1, f1), (p2, w2, f2) = (
        star(SimulationConfig(**cfg, **kw))
        for kw in ({}, {"seeing": 1.5}, {"seeing": 1.5, "psf_beta": 2.5})
    )
    assert p1 < 0.6 * p0 and w1 > 2 * w0  # wider seeing (1.5^2: the peak 0.44 times)
    assert w2 > 1.3 * w1 and p2 < p1  # broader wings at the same FWHM
    assert f1 == pytest.approx(f0, rel=0.01) and f2 == pytest.approx(f0, rel=0.01)
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "b"), "--seeing", "1.5"]) == 2
    assert "psf_beta 2.5 (now None)" in capsys.readouterr().err
    for bad, msg in ((["--psf-beta", "1.0"], "PSF beta must be a number from 2 to 100"),
                     (["--seeing", "0"], "seeing must be a factor from 0.1 to 10")):  # fmt: skip
        assert main([*base, "--out", str(tmp_path / "c"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err, err


def test_simulate_resumes_refuses_other_settings_and_overwrites(tmp_path, cache_dir, capsys):
    """A run killed midway (images missing, a temporary file left) resumes to the same files
    and the same truth; other settings or a smaller -n are refused; --overwrite replaces."""
    from probcat.catalog import FullCatalog

    out = tmp_path / "out"
    base = ["simulate", "-n", "3", "--seed", "1", "--bank-size", "24",
            "--cache-dir", str(cache_dir), "--out", str(out), "-q"]  # fmt: skip
    assert main(base) == 0
    images = sorted((out / "images").glob("image_*.fits"))
    first = {p.name: p.read_bytes() for p in images}
    truth = FullCatalog.read(out / "truth.fits")
    # "killed" after the first image: later images and the truth missing, a temporary left
    for p in images[1:]:
        p.unlink()
    (out / "truth.fits").unlink()
    (out / "config.yaml").unlink()
    (out / "images" / ".image_00001.fits.abc123.fits").write_bytes(b"")
    mtime = images[0].stat().st_mtime_ns
    assert main(base) == 0
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in sorted((out / "images").iterdir())} == first
    assert images[0].stat().st_mtime_ns == mtime  # not rewritten
    again = FullCatalog.read(out / "truth.fits")
    assert len(again) == len(truth)
    np.testing.assert_array_equal(again["x"], truth["x"])
    # other settings, or fewer images than the directory holds: refused, nothing touched
    for change, msg in ((["--seed", "2"], "seed 1 (now 2)"), (["-n", "2"], "more than -n 2")):
        args = [a for a in base]
        k = args.index(change[0])
        args[k + 1] = change[1]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err, err
        assert {p.name: p.read_bytes() for p in sorted((out / "images").iterdir())} == first
    # a larger -n extends the dataset; --overwrite replaces it with the new settings
    assert main([*base[:2], "4", *base[3:]]) == 0
    assert len(list((out / "images").glob("image_*.fits"))) == 4
    args = [a if a != "1" else "2" for a in base]  # seed 2
    assert main([*args, "--overwrite"]) == 0
    assert len(list((out / "images").glob("image_*.fits"))) == 3
    assert FullCatalog.read(out / "truth.fits").meta["seed"] == 2


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--recipe", "nope"], "unknown recipe"),
        (["-n", "0"], "n must be >= 1"),
        (["-n", "many"], "Invalid value"),
        (["-n", "1e30"], "Invalid value"),
        (["--seed", "-1"], "seed must be >= 0"),
        (["--years", "inf"], "positive finite number"),
        (["--years", "nan"], "positive finite number"),
        (["--population", "/nonexistent/pop.fits"], "population catalog not found"),
    ],
)
def test_bad_arguments_one_line_error(tmp_path, capsys, args, msg):
    rc = main(["simulate", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert msg in err and len(err.splitlines()) == 1


def test_simulate_refusing_a_catalog_leaves_no_folder(tmp_path, capsys):
    """The output folder is made before the population catalog is read; a catalog that
    cannot be read removes again the folders made for it (not the ones that were there)."""
    bad = tmp_path / "pop.fits"
    bad.write_text("id mag_i\n1 20\n")
    (tmp_path / "there").mkdir()
    for out in (tmp_path / "a" / "b" / "c", tmp_path / "there" / "new"):
        rc = main(["simulate", "-n", "1", "--population", str(bad), "--out", str(out), "-q"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "not a readable FITS or Parquet population catalog" in err, err
        assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pop.fits", "there"]
    assert not any((tmp_path / "there").iterdir())


def test_version_and_bare_commands_print_help(capsys):
    import probcat
    import probcat.runtime as R

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    device = R.device_name(R.choose_device())  # the CPU, as tests run unless --default-device
    assert out.startswith(f"probcat {probcat.__version__} (") and f"device {device})" in out
    for argv, first in (([], "Usage: probcat [OPTIONS] COMMAND"),
                        (["train"], "Usage: probcat train [OPTIONS] COMMAND")):  # fmt: skip
        assert main(argv) == 0
        got = capsys.readouterr()
        assert got.out.startswith(first) and "Commands:" in got.out  # the help, as written
        assert got.err == "" and len(got.out.splitlines()) > 5


def test_python_dash_m_probcat_is_the_command(tmp_path):
    """``python -m probcat`` runs the command line: its version, and a bad input's one-line
    error and exit status 2, as the ``probcat`` script gives them."""
    import subprocess
    import sys

    import probcat

    def run(*args):
        return subprocess.run([sys.executable, "-m", "probcat", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)  # fmt: skip

    ok = run("--version")
    assert ok.returncode == 0 and ok.stdout.startswith(f"probcat {probcat.__version__} (")
    bad = run("detect", "missing.fits")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("probcat: error:") and "missing.fits" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_output_to_a_closed_pipe_is_not_a_traceback():
    import subprocess
    import sys

    # `probcat | head -1`: the reader is gone (closed here, long before the child has
    # imported probcat and writes its help)
    child = subprocess.Popen([sys.executable, "-m", "probcat.cli"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 1 and "Traceback" not in err and "Error" not in err


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--seed", "-1"], "seed must lie in [0, 2^63), got -1"),
        (["--seed", "-1", "--bands", "ugrizy"], "seed must lie in [0, 2^63), got -1"),
        (["--size", "5"], "demo field size must be >= 16 px"),
        (["--size", "5", "--bands", "ugrizy"], "demo field size must be >= 16 px"),
        (["--size", "100000"], "demo field size must be <= 8192 px"),
    ],
)
def test_demo_bad_field_one_line_error(tmp_path, capsys, args, msg):
    rc = main(["demo", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, msg",
    [
        (["simulate", "--size", "200000"], "a 200000x200000 image in 1 band(s) needs about"),
        (["simulate", "--bank-size", "1000000000"], "population table of 1,000,000,000 galaxies"),
        (["demo", "--bank-size", "1000000000"], "population table of 1,000,000,000 galaxies"),
        (["demo", "--bank-size", "10000000000", "--bands", "ugrizy"], "10,000,000,000 galaxies"),
    ],
)
def test_work_beyond_this_machines_memory_is_refused_before_it_starts(tmp_path, capsys, args, msg):
    rc = main([*args, "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1, err
    assert re.search(
        r"GB of memory and (this machine has|its control group .* allows) [0-9,]+ GB; use", err
    )
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("c/bank-*"))


def test_check_memory_compares_the_need_with_the_memory_this_process_may_use(monkeypatch):
    from probcat import runtime
    from probcat.errors import ProbcatValueError

    assert 1e9 < runtime.physical_memory() < 1e14  # read on Linux and macOS
    monkeypatch.setattr(runtime, "physical_memory", lambda: 8e9)
    monkeypatch.setattr(runtime, "cgroup_memory_limit", lambda: None)
    runtime.check_memory(8e9, "this", "hint")  # exactly all of it: allowed
    with pytest.raises(
        ProbcatValueError,
        match=r"^this needs about 8\.6 GB of memory and this machine has 8 GB; hint$",
    ):
        runtime.check_memory(8.6e9, "this", "hint")
    monkeypatch.setattr(runtime, "cgroup_memory_limit", lambda: 4.5e8)  # a container's limit
    with pytest.raises(ProbcatValueError, match=r"needs about 0\.5 GB .* group .* allows 0\.45 GB"):
        runtime.check_memory(5e8, "this", "hint")  # 0.50 against 0.45
    with pytest.raises(ProbcatValueError, match=r"needs about 12 GB "):
        runtime.check_memory(12.4e9, "this", "hint")
    monkeypatch.setattr(runtime, "cgroup_memory_limit", lambda: 2**63 - 4096)  # v1: no limit
    assert runtime.memory_limit() == (8e9, "this machine has")
    monkeypatch.setattr(runtime, "physical_memory", lambda: None)
    monkeypatch.setattr(runtime, "cgroup_memory_limit", lambda: None)
    runtime.check_memory(1e30, "this", "hint")  # unknown memory: no refusal


def test_the_control_groups_memory_limit_is_the_tightest_on_its_path(tmp_path):
    from probcat.runtime import cgroup_memory_limit

    proc = tmp_path / "cgroup"
    root = tmp_path / "sys"
    # v2: a SLURM job's limit two levels above the task's group, which has none ("max")
    leaf = root / "system.slice" / "job_7" / "step_0"
    leaf.mkdir(parents=True)
    (root / "system.slice" / "job_7" / "memory.max").write_text("8000000000\n")
    (leaf / "memory.max").write_text("max\n")
    proc.write_text("0::/system.slice/job_7/step_0\n")
    assert cgroup_memory_limit(proc, root) == 8_000_000_000
    (leaf / "memory.max").write_text("6000000000\n")
    assert cgroup_memory_limit(proc, root) == 6_000_000_000
    # v1 (Docker): the memory controller's line; a path the mount does not show, then its root
    (root / "memory").mkdir()
    (root / "memory" / "memory.limit_in_bytes").write_text("4000000000\n")
    proc.write_text("9:cpu,cpuacct:/docker/abc\n7:memory:/docker/abc\n")
    assert cgroup_memory_limit(proc, root) == 4_000_000_000
    proc.write_text("7:cpu:/x\n")  # no memory controller
    assert cgroup_memory_limit(proc, root) is None
    assert cgroup_memory_limit(tmp_path / "none", root) is None  # not Linux


def test_unwritable_output_directory(tmp_path, capsys, cache_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(
        [
            "simulate",
            "-n",
            "1",
            "--bank-size",
            "24",
            "--cache-dir",
            str(cache_dir),
            "--out",
            str(blocker / "sub"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not writable" in err and len(err.splitlines()) == 1
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(["simulate", "-n", "1", "--out", str(ro / "x")]) == 2


@pytest.mark.slow
def test_demo_small(tmp_path, cache_dir, capsys, weights, deblender_weights):
    rc = main(
        [
            "demo",
            "--out",
            str(tmp_path / "d"),
            "--size",
            "64",
            "--bank-size",
            "23",  # a bank no other test builds: rendered here, without a progress bar
            "--cache-dir",
            str(cache_dir),
            "--weights",
            str(weights),
            "--deblender",
            str(deblender_weights),
            "-q",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0 and "rendering" not in err and "it/s" not in err, err
    for name in ("overview.png", "detections.png", "detections_zoom.png", "deblend.png"):
        assert (tmp_path / "d" / name).stat().st_size > 10_000
    for name in ("field.fits", "truth.fits", "probcat_catalog.fits", "sep_catalog.fits"):
        assert (tmp_path / "d" / name).exists()
    assert "probcat" in out and "SEP" in out and "recall" in out
    # and on a given image
    rc = main(
        [
            "demo",
            "--out",
            str(tmp_path / "e"),
            "--image",
            str(tmp_path / "d/field.fits"),
            "--weights",
            str(weights),
            "--deblender",
            str(deblender_weights),
        ]
    )
    assert rc == 0 and (tmp_path / "e/probcat_catalog.fits").exists()


def test_train_calibrate_needs_a_run_directory(tmp_path, capsys):
    rc = main(["train", "calibrate", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "detection.pt: not found" in err and len(err.splitlines()) == 1


def test_train_calibrate_reports_the_pair_rules_held_out_check(tmp_path, capsys, monkeypatch):
    import probcat.train.detection as T

    for name in ("detection.pt", "manifest.json"):
        (tmp_path / name).write_text("")
    check = {"dropped": 12, "dropped_real": 3, "precision_before": 0.9, "precision_after": 0.92,
             "recall_before": 0.7, "recall_after": 0.695}  # fmt: skip
    seen = {}

    def fake(run, **kw):
        seen.update(kw)
        return {"pair_rule": {"n": 400, "check": check}, "prob_calibration": {"n": 900}}

    monkeypatch.setattr(T, "calibrate_run", fake)
    rc = main(["train", "calibrate", str(tmp_path), "--reliability-only", "-q"])
    out = capsys.readouterr().out
    assert rc == 0 and seen["reliability_only"] is True
    assert "pair rule from 400 paired detections" in out
    assert "drops 12 detections (3 real): precision 0.900 -> 0.920, recall 0.700 -> 0.695" in out
    assert "probability calibration from 900 detections" in out


def test_train_calibrate_centroid_only_reports_the_intervals_by_snr(tmp_path, capsys, monkeypatch):
    import numpy as np

    import probcat.train.detection as T
    from probcat.infer.calibration import calibration_from_errors

    for name in ("detection.pt", "manifest.json"):
        (tmp_path / name).write_text("")
    rng = np.random.default_rng(0)
    snr = np.exp(rng.uniform(np.log(3), np.log(3000), 20_000))
    z = np.abs(rng.standard_normal(20_000)) * np.where(snr > 100, 0.3, 1.0)
    cal = calibration_from_errors(z, snr=snr).to_dict()
    seen = {}

    def fake(run, **kw):
        seen.update(kw)
        return {"centroid_calibration": cal, "prob_calibration": {"n": 900, "kind": "shapes",
                "population": "hdf"}, "seeing_calibrations": [{"factor": 2.0, "n": 5}]}  # fmt: skip

    monkeypatch.setattr(T, "calibrate_run", fake)
    rc = main(["train", "calibrate", str(tmp_path), "--centroid-only", "--scenes", "64", "-q"])
    out = capsys.readouterr().out
    assert rc == 0 and seen["centroid_only"] is True and seen["n_scenes"] == 64
    assert out.startswith("centroid intervals from 20000 matched coordinates: 68% ±")
    assert "SNR bins: 1.0" in out and "/ 0.6" in out  # faint ~1.0 / 2.0, bright ~0.3 / 0.6
    assert "probability" not in out and "seeing" not in out  # nothing else was refitted


def test_ctrl_c_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    import probcat.train.detection as T

    for name in ("detection.pt", "manifest.json"):
        (tmp_path / name).write_text("")

    def interrupted(run, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "calibrate_run", interrupted)
    rc = main(["train", "calibrate", str(tmp_path), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and err == "probcat: interrupted"


def test_train_config_typo_is_one_line_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  stem: patchfy\n")
    rc = main(["train", "detection", "-c", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "model.stem: 'patchfy' is not one of 'conv', 'patchify'" in err
    assert not (tmp_path / "run").exists()  # nothing built, nothing written


def test_detect_threads_option(tmp_path, capsys, weights):
    rc = main(["detect", str(tmp_path / "x.fits"), "--threads", "zero", "--weights", str(weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--threads must be 'auto' or an integer >= 1" in err


def _scene_file(tmp_path, with_galaxy=True):
    import numpy as np

    from probcat.catalog import make_wcs
    from probcat.io import write_image
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    rng = np.random.default_rng(0)
    img = rng.normal(0, survey.noise_sigma[0], (1, 40, 40)).astype(np.float32)
    if with_galaxy:
        yy, xx = np.mgrid[:40, :40]
        img[0] += 3e4 * np.exp(-((xx - 20.3) ** 2 + (yy - 18.7) ** 2) / 8) / (8 * np.pi)
    path = tmp_path / "img.fits"
    write_image(path, img, survey, make_wcs((40, 40), 0.2, 56.0, -30.0))
    return path


def test_detect_real_shapes_and_cutout_options(tmp_path, capsys):
    """The probability calibration's weights stated on the command line are the
    catalog's (and said to be stated); a value that is not a probability is a one-line
    error before any work, with nothing written."""
    from probcat.catalog import FullCatalog

    path = _scene_file(tmp_path)
    out = tmp_path / "c.fits"
    base = ["detect", str(path), "-o", str(out), "-q"]
    assert main([*base, "--real-shapes", "1", "--cutout", "0"]) == 0
    meta = FullCatalog.read(out).meta
    assert (meta["real_shapes_probability"], meta["cutout_probability"]) == (1.0, 0.0)
    assert meta["calibration_evidence"]["from"] == "stated"
    out.unlink()
    capsys.readouterr()
    for option, bad in (("--real-shapes", "1.5"), ("--cutout", "-0.2"), ("--cutout", "nan")):
        rc = main([*base, option, bad])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and f"{option} must be a probability in [0, 1], got" in err
        assert "\n" not in err and not out.exists()


def test_detect_deblend_writes_catalog_model_and_residual(
    tmp_path, capsys, weights, deblender_weights
):
    from astropy.io import fits
    from astropy.table import Table

    path = _scene_file(tmp_path)
    out = tmp_path / "cat.fits"
    args = ["detect", str(path), "-o", str(out), "--weights", str(weights), "--deblend"]
    args += ["--deblender", str(deblender_weights), "--samples", "4", "--threshold", "0.0"]
    assert main(args) == 0
    got = capsys.readouterr()
    assert "model and residual" in got.out
    # progress bars (stderr) over the samples drawn, then deblended; none with --quiet
    assert "posterior samples" in got.err and "deblending samples" in got.err
    assert "4/4" in got.err
    assert main([*args, "-o", str(tmp_path / "quiet.fits"), "-q"]) == 0
    assert "samples" not in capsys.readouterr().err
    t = Table.read(out)
    for col in (
        "flux_ap",
        "mag_ap",
        "mag_ap_err",
        "T",
        "e1",
        "e2",
        "flux_mean",
        "flux_sd",
        "flux_q16",
        "flux_q50",
        "flux_q84",
        "p_match",
    ):
        assert col in t.colnames, col
    with (
        fits.open(tmp_path / "cat_model.fits") as m,
        fits.open(path) as d,
        fits.open(tmp_path / "cat_residual.fits") as r,
    ):
        import numpy as np

        np.testing.assert_allclose(m[1].data + r[1].data, d[1].data, rtol=1e-5, atol=1e-2)


def test_detect_deblend_with_nothing_detected_is_not_an_error(
    tmp_path, capsys, weights, deblender_weights
):
    from astropy.table import Table

    path = _scene_file(tmp_path, with_galaxy=False)
    out = tmp_path / "cat.fits"
    args = ["detect", str(path), "-o", str(out), "--weights", str(weights), "--deblend"]
    args += ["--deblender", str(deblender_weights), "--samples", "2", "--threshold", "0.999999"]
    assert main(args) == 0
    assert len(Table.read(out)) == 0
    assert (tmp_path / "cat_model.fits").exists()


def test_detect_deblender_needs_deblend_and_right_kind(tmp_path, capsys, weights):
    path = _scene_file(tmp_path)
    rc = main(["detect", str(path), "--weights", str(weights), "--deblender", str(weights)])
    assert rc == 2 and "--deblender needs --deblend" in capsys.readouterr().err
    rc = main(
        ["detect", str(path), "--weights", str(weights), "--deblend", "--deblender", str(weights)]
    )
    assert rc == 2 and "not deblender weights" in capsys.readouterr().err
    out = tmp_path / "never.fits"
    rc = main(["detect", str(path), "-o", str(out), "--weights", str(tmp_path / "none.pt"),
               "--deblend", "--method", "nope"])  # fmt: skip  # checked before loading weights
    err = capsys.readouterr().err
    assert rc == 2 and "method must be one of subtract, conserve" in err and not out.exists()


def test_detect_seeing_option(tmp_path, capsys, stamp_weights):
    path = _scene_file(tmp_path)
    out = tmp_path / "cat.fits"
    rc = main(["detect", str(path), "-o", str(out), "--weights", str(stamp_weights),
               "--seeing", "wide"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "seeing must be 'auto'" in err
    assert not out.exists()
    rc = main(["detect", str(path), "-o", str(out), "--weights", str(stamp_weights),
               "--seeing", "1.3", "--threshold", "0.0"])  # fmt: skip
    said = capsys.readouterr().out
    assert rc == 0 and "star/galaxy classes read at 1.3x the survey's PSF" in said
    assert "probabilities calibrated" not in said  # these weights carry no seeing calibration
    from probcat.cli import _input_note

    note = _input_note({"seeing_matched": 1.48, "calibration_seeing": 1.5})
    assert (
        note == " [star/galaxy classes read at 1.48x the survey's PSF, probabilities "
        "calibrated at 1.5x]"
    )


def _plain_fits(path, data, **keywords):
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.asarray(data))
    for k, v in keywords.items():
        hdu.header[k] = v
    hdu.writeto(path)
    return path


@pytest.mark.parametrize(
    "keywords, data_fn, message",
    [
        ({"NOISE": "abc"}, None, "NOISE keyword 'abc' is not a number"),
        ({"NOISE": True}, None, "NOISE keyword True is not a number"),
        ({"NOISE": -3.0}, None, "not a positive finite number"),
        ({"NOISE": 1e-45}, None, "overflow float32"),
        ({"NOISE": 1e39}, None, "beyond float32's range"),  # else every pixel reads 0
        (
            {},
            "huge",
            "every pixel of band 0 is masked (NaN, inf, the mask, a weight map's weights of 0 "
            "or less, or the file's MASK or VARIANCE planes): no data",
        ),
    ],
)
def test_bad_image_values_are_one_line_errors(
    tmp_path, capsys, weights, keywords, data_fn, message
):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((40, 40)).astype(np.float64) * 400
    if data_fn == "huge":
        data[:] = 1e39  # finite in float64, inf in float32: masked, and nothing is left
    path = _plain_fits(tmp_path / "x.fits", data, **keywords)
    rc = main(["detect", str(path), "--weights", str(weights), "-o", str(tmp_path / "c.fits")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err, err
    assert not (tmp_path / "c.fits").exists()


def test_bad_outputs_are_refused_before_any_work(tmp_path, capsys, weights):
    rng = np.random.default_rng(0)
    path = _plain_fits(tmp_path / "x.fits", rng.standard_normal((40, 40)) * 400, NOISE=400.0)
    before = path.read_bytes()
    (tmp_path / "adir").mkdir()
    cases = [
        (["-o", str(tmp_path / "adir")], "is a directory"),
        (["-o", str(path)], "would overwrite the input"),
        (
            ["-o", str(tmp_path / "c.fits"), "--plot", str(tmp_path / "nowhere" / "p.png")],
            "does not exist",
        ),
        (["-o", str(tmp_path / "c.fits"), "--plot", str(tmp_path / "p.txt")], "must end in"),
        (["-o", str(path / "c.fits")], f"{path} is a file, not a directory"),
        (["-o", str(tmp_path / "c.txt")], "must end in"),
    ]
    for extra, message in cases:
        rc = main(["detect", str(path), "--weights", str(weights), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err, (extra, err)
        assert not (tmp_path / "c.fits").exists()
    assert path.read_bytes() == before  # the input is untouched
    rc = main(["detect", "/dev/zero", "--weights", str(weights), "-o", str(tmp_path / "z.fits")])
    assert rc == 2 and "not a regular file" in capsys.readouterr().err
    nope = str(tmp_path / "nope.fits")  # missing: said so, even with itself as the output
    assert main(["detect", nope, "--weights", str(weights), "-o", nope]) == 2
    assert capsys.readouterr().err.strip() == f"probcat: error: {nope}: no such file"


def test_warnings_for_unsubtracted_sky_and_galactic_wcs(tmp_path, capsys, weights):
    from probcat.catalog import FullCatalog, make_wcs, sky_positions

    rng = np.random.default_rng(0)
    sky = rng.standard_normal((64, 64)) * 400 + 435 * 400  # sky left in: median 435 sigma
    path = _plain_fits(tmp_path / "sky.fits", sky, NOISE=400.0)
    base = ["detect", str(path), "--weights", str(weights), "-o", str(tmp_path / "a.fits")]
    rc = main([*base, "--background", "none"])
    err = capsys.readouterr().err
    assert rc == 0 and "probcat: warning: image median is 435" in err
    rc = main(base)  # --background auto (the default): subtracted, said, recorded
    out, err = capsys.readouterr()
    assert rc == 0 and "warning" not in err and "sky subtracted" in out
    done = FullCatalog.read(tmp_path / "a.fits").meta["input"]
    assert done["background"] == "subtracted"
    assert done["sky_median"][0] == pytest.approx(435 * 400, rel=0.01)
    rc = main([*base, "--background", "maybe"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "background must be one of auto, none" in err and "\n" not in err
    header = make_wcs((64, 64), 0.2, 56.0, -30.0).to_header()
    header["CTYPE1"], header["CTYPE2"] = "GLON-TAN", "GLAT-TAN"
    from astropy.io import fits

    fits.PrimaryHDU(rng.standard_normal((64, 64)) * 400, header=header).writeto(tmp_path / "g.fits")
    rc = main(
        [
            "detect",
            str(tmp_path / "g.fits"),
            "--weights",
            str(weights),
            "--threshold",
            "0",
            "-o",
            str(tmp_path / "g_cat.fits"),
        ]
    )
    assert rc == 0 and "GLON" not in capsys.readouterr().err  # converted, nothing to say
    cat = FullCatalog.read(tmp_path / "g_cat.fits")
    assert len(cat) > 0
    # galactic (l, b) of the pixels -> ICRS, against astropy's transformation of the header's
    # own galactic coordinates
    from astropy.coordinates import SkyCoord
    from astropy.wcs import WCS

    lb = WCS(header).pixel_to_world_values(cat["x"], cat["y"])
    icrs = SkyCoord(lb[0], lb[1], unit="deg", frame="galactic").icrs
    sep = icrs.separation(SkyCoord(cat["ra"], cat["dec"], unit="deg")).arcsec
    assert np.max(sep) < 1e-6
    # the galactic centre's ICRS position, as the IAU defines it (RA 266.405, Dec -28.936)
    zero = make_wcs((64, 64), 0.2, 0.0, 0.0).to_header()
    zero["CTYPE1"], zero["CTYPE2"] = "GLON-TAN", "GLAT-TAN"
    ra, dec = sky_positions(WCS(zero), [31.5], [31.5])
    assert ra[0] == pytest.approx(266.405, abs=1e-3) and dec[0] == pytest.approx(-28.936, abs=1e-3)


def test_noise_option_measured_value_and_bad(tmp_path, capsys, weights):
    from probcat.catalog import FullCatalog

    rng = np.random.default_rng(4)
    path = _plain_fits(tmp_path / "deep.fits", rng.standard_normal((64, 64)) * 40.0)
    base = ["detect", str(path), "--weights", str(weights), "-o", str(tmp_path / "a.fits")]
    rc = main(base)  # no NOISE, the survey's 10 times off: read at the measured noise, said
    out, err = capsys.readouterr()
    assert rc == 0 and "read at the measured noise (band 0: 39" in err
    assert "noise sigma measured: " in out
    assert FullCatalog.read(tmp_path / "a.fits").meta["input"]["noise_source"] == "measured"
    rc = main([*base, "--noise", "434.5"])  # a stated noise is read as stated, with a warning
    out, err = capsys.readouterr()
    assert rc == 0 and "434.5 differs from the measured pixel noise 39" in err
    rc = main([*base, "--noise", "measured"])
    out, err = capsys.readouterr()
    assert rc == 0 and "warning" not in err and "noise sigma measured: " in out
    done = FullCatalog.read(tmp_path / "a.fits").meta["input"]
    assert done["noise_source"] == "measured"
    assert done["noise_sigma"][0] == pytest.approx(40.0, rel=0.05)
    rc = main([*base, "--noise", "40"])
    out, err = capsys.readouterr()
    assert rc == 0 and "warning" not in err
    for bad, msg in (("abc", "--noise must be auto, measured"), ("-1", "must be positive")):
        rc = main([*base, "--noise", bad])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and msg in err and "\n" not in err


def test_out_of_memory_is_a_one_line_error(monkeypatch, capsys):
    """A MemoryError anywhere in a command (an image too large to allocate) ends with one
    line that keeps numpy's account of what did not fit, and status 2."""
    import probcat.cli as cli

    def app(**kwargs):
        raise MemoryError("Unable to allocate 37.3 GiB for an array with shape\n(1, 100000)")

    monkeypatch.setattr(cli, "app", app)
    rc = main(["simulate", "--size", "100000"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("probcat: error: out of memory (Unable to allocate 37.3 GiB")


@pytest.mark.parametrize(
    "command, msg",
    [
        (["detect", "IMG", "--weights", "photoz_lsst_ugrizy"],
         "photoz_lsst_ugrizy: photo-z weights, not detection weights"),
        (["detect", "IMG", "--weights", "autoencoder_lsst_i"],
         "autoencoder_lsst_i: deblender weights, not detection weights"),
        (["detect", "IMG", "--deblend", "--deblender", "detection_lsst_i"],
         "detection_lsst_i: detection weights, not deblender weights"),
        (["run", "IMG", "--workers", "0", "--weights", "photoz_lsst_ugrizy"],
         "photoz_lsst_ugrizy: photo-z weights, not detection weights"),
        (["photoz", "IMG", "--weights", "detection_lsst_ugrizy"],
         "detection_lsst_ugrizy: detection weights, not photo-z weights"),
        (["demo", "--weights", "photoz_lsst_ugrizy"],  # a registered name, then its kind
         "photoz_lsst_ugrizy: photo-z weights, not detection weights"),
        (["demo", "--deblender", "detection_lsst_i"],
         "detection_lsst_i: detection weights, not deblender weights"),
        (["demo", "--bands", "ugrizy", "--photoz-weights", "detection_lsst_i"],
         "detection_lsst_i: detection weights, not photo-z weights"),
    ],
)  # fmt: skip
def test_weights_of_another_kind_are_a_one_line_error(tmp_path, capsys, command, msg):
    """Every command that loads weights names the kind it got and the kind it needs, before
    any work (the demo simulates nothing), instead of an AttributeError."""
    img = str(_scene_file(tmp_path))
    out = tmp_path / ("out.fits" if command[0] in ("detect", "photoz") else "out")
    rc = main([img if a == "IMG" else a for a in command] + ["-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and msg in err, err
    assert not out.exists()


def test_load_checks_the_kind(weights):
    import probcat

    assert isinstance(probcat.load(weights, kind="detection"), probcat.Detector)
    with pytest.raises(ValueError, match="detection weights, not deblender weights"):
        probcat.load(weights, kind="deblender")
    with pytest.raises(ValueError, match="kind must be one of detection, deblender, photoz"):
        probcat.load(weights, kind="sed")


def test_weights_command_reads_a_trained_run_and_a_bare_weights_file(tmp_path, capsys, weights):
    """`probcat weights` took shipped names only: a run's own weights were 'no shipped
    weights named ...'."""
    import json
    import shutil

    from probcat.weights import sha256

    bare = tmp_path / "bare" / "detection.pt"
    bare.parent.mkdir()
    shutil.copy(weights, bare)
    assert main(["weights", str(bare)]) == 0
    rows = dict(ln.split(":", 1) for ln in capsys.readouterr().out.splitlines())
    assert rows["kind"].strip() == "detection" and rows["bands"].strip().startswith("i (depth")
    assert "'channels': 8" in rows["network"] and "no manifest.json" in rows["note"]
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(weights, run / "detection.pt")
    man = {"kind": "detection", "weights": "detection.pt", "sha256": sha256(run / "detection.pt"),
           "steps": 7, "command": "probcat train detection -c tiny.yaml --out run",
           "final_val": {"total": 1.25, "f1": 0.5}}  # fmt: skip
    (run / "manifest.json").write_text(json.dumps(man))
    for where in (run, run / "detection.pt"):
        assert main(["weights", str(where)]) == 0
        rows = dict(ln.split(":", 1) for ln in capsys.readouterr().out.splitlines())
        assert rows["command"].strip() == man["command"]
        assert rows["validation"].strip() == "total 1.25, f1 0.5"
    assert main(["weights", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["final_val"] == man["final_val"]
    (run / "manifest.json").write_text(json.dumps({**man, "sha256": "0" * 64}))
    for args, message in (
        ([str(run)], "does not match its manifest's 000000000000"),
        ([str(tmp_path)], "no readable manifest.json in the directory"),
        ([str(tmp_path / "nope.pt")], "nope.pt: weights file not found"),
    ):
        assert main(["weights", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_weights_command_lists_the_shipped_weights_and_their_manifests(capsys):
    import json

    from probcat import weights as registry

    assert main(["weights"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == registry.names()
    m = registry.manifest("detection_lsst_i")
    row = next(ln for ln in lines if ln.startswith("detection_lsst_i "))
    want = m["benchmark"]["probcat"]
    assert f"precision {want['precision']:.3f}, recall {want['recall']:.3f}" in row
    assert row.split()[1:3] == ["detection", "i"]
    assert main(["weights", "photoz_lsst_ugrizy"]) == 0
    out = capsys.readouterr().out
    pz = registry.manifest("photoz_lsst_ugrizy")
    assert (
        pz["training_command"] in out
        and f"sigma_IQR {pz['benchmark']['probcat']['sigma_iqr']:.4f}" in out
    )
    seeing = registry.manifest("photoz_lsst_ugrizy_seeing")["benchmark"]
    row = next(ln for ln in lines if ln.startswith("photoz_lsst_ugrizy_seeing "))
    k = next(iter(seeing["photoz_band_seeing"]))  # the depth benchmark's first pattern
    got = seeing["seeing_weights"]["photoz_band_seeing"][k]["pit_coverage_68"]
    assert f"per-band seeing: 68% coverage {got:.3f}" in row
    masked = registry.manifest("photoz_lsst_ugrizy_masked")["benchmark"]["results"]["defects"]
    row = next(ln for ln in lines if ln.startswith("photoz_lsst_ugrizy_masked "))
    got = masked["default"]["affected"]["sigma_iqr"]
    assert f"bands masked: sigma_IQR {got:.4f}" in row
    masked = registry.manifest("detection_lsst_ugrizy_masked")["benchmark"]["results"]["defects"]
    row = next(ln for ln in lines if ln.startswith("detection_lsst_ugrizy_masked "))
    got = masked["default"]["zone"]
    assert f"bands masked: recall {got['recall']:.3f}, precision {got['precision']:.3f}" in row
    assert main(["weights", "detection_lsst_i"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("source densities:"))
    assert "0, 0.03, 0.1, 0.3, 1, 2 times the prior's" in row
    assert "PSF x 0.8, 1.25, 1.5, 2" in row and "noise x 0.707, 2.24, 3.16, 4.47" in row
    assert main(["weights", "detection_lsst_ugrizy"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if "source densities" in ln)
    assert "PSF x 0.8, 1.25, 1.5, 2" in row and "noise x" not in row
    assert main(["weights", "deblender_lsst_i", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == registry.manifest("deblender_lsst_i")
    for args, message in (
        (["weights", "nope"], "nope: weights file not found and no shipped weights are named so"),
        (["weights", "--json"], "--json needs a weights NAME"),
    ):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def _yaml(path, cfg):
    import yaml

    from probcat.config import to_dict

    path.write_text(yaml.safe_dump(cfg if isinstance(cfg, dict) else to_dict(cfg)))
    return path


@pytest.mark.slow
def test_train_deblend_command_takes_the_steps_and_resumes(tmp_path, cache_dir, capsys):
    from test_train_deblend import TINY

    cfg = _yaml(tmp_path / "ae.yaml", {**TINY, "stage": "autoencoder"})
    argv = ["train", "deblend", "-c", str(cfg), "-o", str(tmp_path / "ae"), "--steps", "2", "-q",
            "--cache-dir", str(cache_dir)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'ae' / 'autoencoder.pt'}" in out and "after 2 steps" in out
    man = json.loads((tmp_path / "ae" / "manifest.json").read_text())
    assert man["kind"] == "autoencoder" and man["steps"] == 2
    assert man["config"]["phases"][0]["steps"] == 2  # the override, recorded
    assert main(argv) == 0 and "after 2 steps" in capsys.readouterr().out  # finished: loaded
    assert main([*argv[:-3], "--steps", "0"]) == 2  # checked before any work
    assert "phases[0].steps must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_train_photoz_command_runs_and_refuses_a_member_without_an_ensemble(
    tmp_path, cache_dir, capsys
):
    from test_train_photoz import _tiny_cfg

    cfg = _yaml(tmp_path / "pz.yaml", _tiny_cfg())
    base = ["train", "photoz", "-c", str(cfg), "-o", str(tmp_path / "pz"), "-q",
            "--cache-dir", str(cache_dir)]  # fmt: skip
    assert main([*base, "--member", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "probcat: error: --member applies to ensembles (members > 1 in the config)"
    assert not (tmp_path / "pz").exists()
    assert main(base) == 0
    assert "after 3 steps" in capsys.readouterr().out
    assert json.loads((tmp_path / "pz" / "manifest.json").read_text())["kind"] == "photoz"
