import os

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


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--recipe", "nope"], "unknown recipe"),
        (["-n", "0"], "n must be >= 1"),
        (["-n", "many"], "Invalid value"),
    ],
)
def test_bad_arguments_one_line_error(tmp_path, capsys, args, msg):
    rc = main(["simulate", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert msg in err and len(err.splitlines()) == 1


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
def test_demo_small(tmp_path, cache_dir, capsys, weights):
    rc = main(
        [
            "demo",
            "--out",
            str(tmp_path / "d"),
            "--size",
            "64",
            "--bank-size",
            "24",
            "--cache-dir",
            str(cache_dir),
            "--weights",
            str(weights),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    for name in ("overview.png", "detections.png", "detections_zoom.png"):
        assert (tmp_path / "d" / name).stat().st_size > 10_000
    for name in ("field.fits", "truth.fits", "probcat_catalog.fits", "sep_catalog.fits"):
        assert (tmp_path / "d" / name).exists()
    out = capsys.readouterr().out
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
        ]
    )
    assert rc == 0 and (tmp_path / "e/probcat_catalog.fits").exists()


def test_train_calibrate_needs_a_run_directory(tmp_path, capsys):
    rc = main(["train", "calibrate", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "detection.pt: not found" in err and len(err.splitlines()) == 1


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
