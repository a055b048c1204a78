"""Many images: the resumable runner (serial and Dask), deduplication by core region and
the HATS catalog read back with LSDB."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import benchmark_module

import probcat.runtime as runtime
from probcat.catalog import FullCatalog, make_wcs
from probcat.cli import main
from probcat.errors import ProbcatValueError
from probcat.scale import build_hats, dedup_by_core, plan, run

STEP_DEG = 24 * 0.2 / 3600  # images 48 px wide, centres 24 px apart: they overlap by half


def _images(folder, n=4, size=48):
    from probcat.io import write_image
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        img = rng.normal(0, survey.noise_sigma[0], (1, size, size)).astype(np.float32)
        ra = 56.0 + k * STEP_DEG / np.cos(np.radians(30.0))
        path = folder / f"im{k}.fits"
        write_image(path, img, survey, make_wcs((size, size), 0.2, ra, -30.0))
        paths.append(path)
    return paths


def _rows(folder):
    return {p.name: FullCatalog.read(p) for p in sorted(folder.glob("*.parquet"))}


def test_runner_resumes_without_losing_or_duplicating_rows(tmp_path, weights):
    images = _images(tmp_path)
    out = tmp_path / "cats"
    s = run(images, out, weights=str(weights), threshold=0.0, workers=0, progress=False)
    assert s["processed"] == 4 and s["failed"] == [] and s["rows"] > 0
    first = _rows(out)
    assert sum(len(c) for c in first.values()) == s["rows"]
    assert json.loads((out / "run_summary.json").read_text())["rows"] == s["rows"]
    # one image's own time: a median of the images', so at most the run's whole time
    assert 0 < s["image_seconds_median"] <= s["seconds"] / 2
    # "killed" midway: one catalog missing, a temporary file left behind
    (out / "im2.parquet").unlink()
    (out / ".im2.parquet.x1y2.parquet").write_bytes(b"")
    mtime = (out / "im0.parquet").stat().st_mtime_ns
    s = run(images, out, weights=str(weights), threshold=0.0, workers=0, progress=False)
    assert (s["processed"], s["skipped"]) == (1, 3)
    assert (out / "im0.parquet").stat().st_mtime_ns == mtime
    again = _rows(out)
    assert set(again) == set(first) and not list(out.glob(".*"))
    for name, cat in first.items():
        np.testing.assert_array_equal(again[name]["x"], cat["x"])
    dry = run(images, out, weights=str(weights), threshold=0.0, dry_run=True)
    assert dry["to_process"] == 0 and dry["skipped"] == 4


def test_a_rerun_with_other_options_is_refused_before_any_work(tmp_path, weights, capsys):
    """The finished catalogs a rerun skips were made with the options in run_options.json:
    a rerun asking for other ones (threshold, noise, photo-z...) is a one-line error, not
    stale catalogs; the same options resume; a new directory takes any."""
    images = _images(tmp_path, n=2)
    out = tmp_path / "cats"
    base = dict(weights=str(weights), threshold=0.0, workers=0, progress=False)
    run(images[:1], out, **base)
    recorded = json.loads((out / "run_options.json").read_text())
    assert recorded["threshold"] == 0.0 and recorded["weights"] == str(weights)
    before = (out / "im0.parquet").read_bytes()
    for other in ({"threshold": 0.3}, {"noise_sigma": "measured"}, {"seeing": "none"},
                  {"real_shapes": 1.0}):  # fmt: skip
        with pytest.raises(ProbcatValueError, match=f"{list(other)[0]} .* -> "):
            run(images, out, **{**base, **other})
        with pytest.raises(ProbcatValueError, match="finished catalogs were made with other"):
            run(images, out, **{**base, **other}, dry_run=True)
    assert not (out / "im1.parquet").exists()  # nothing done, nothing changed
    assert (out / "im0.parquet").read_bytes() == before
    with pytest.raises(ProbcatValueError, match="its 1 finished catalogs"):  # other images
        run(images[1:], out, **{**base, "threshold": 0.3})  # into a folder of other options
    s = run(images, out, **base)  # the same options: resumed
    assert (s["processed"], s["skipped"]) == (1, 1)
    assert run(images, tmp_path / "other", **{**base, "threshold": 0.3})["processed"] == 2
    with pytest.raises(ProbcatValueError, match=r"cutout must be a probability in \[0, 1\], got"):
        run(images, tmp_path / "bad", **{**base, "cutout": "pooled"})  # stated ones only
    assert not (tmp_path / "bad").exists()
    args = ["run", *map(str, images), "-o", str(out), "--weights", str(weights), "--workers",
            "0", "-q", "--threshold", "0.2"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "threshold 0.0 -> 0.2" in err and "\n" not in err
    (tmp_path / "file").write_text("")
    assert main([*args[:-2], "-o", str(tmp_path / "file")]) == 2
    assert "is a file; give a directory" in capsys.readouterr().err


def test_a_bad_image_is_reported_and_the_others_are_done(tmp_path, weights, capsys):
    images = _images(tmp_path, n=2)
    bad = [tmp_path / f"broken{k}.fits" for k in (3, 1, 6, 2, 5, 4, 0)]  # listed out of order
    for b in bad:
        b.write_text("not a FITS file")
    out = tmp_path / "cats"
    rc = main(["run", *map(str, [images[0], *bad, images[1]]), "-o", str(out), "--weights",
               str(weights), "--workers", "0", "-q"])  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 1 and "2 images processed" in cap.out and "7 failed" in cap.out
    lines = cap.err.strip().splitlines()
    # the first five in the list's order, each path said once, then where the rest are
    for line, b in zip(lines[:5], bad):
        assert line.startswith(f"probcat: failed: {b}: not a readable FITS file (")
        assert line.count(b.name) == 1
    assert (
        lines[5]
        == f"probcat: ... and 2 more failed: every image's error is in {out}/run_summary.json"
    )
    summary = json.loads((out / "run_summary.json").read_text())
    assert [f["image"] for f in summary["failed"]] == list(map(str, bad))
    assert {p.name for p in out.glob("*.parquet")} == {"im0.parquet", "im1.parquet"}


def test_plan_refuses_colliding_names_and_missing_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "x.fits").write_bytes(b"")
    with pytest.raises(ProbcatValueError, match="share the name 'x'"):
        plan([tmp_path / "a/x.fits", tmp_path / "b/x.fits"], tmp_path / "o")
    with pytest.raises(ProbcatValueError, match="no such image file"):
        plan([tmp_path / "nope.fits"], tmp_path / "o")
    with pytest.raises(ProbcatValueError, match="a directory; give its images"):
        plan([tmp_path / "a"], tmp_path / "o")


def test_a_bad_file_list_or_plan_is_a_clear_error_before_any_work(tmp_path):
    from probcat.errors import ProbcatFileError, ProbcatIOError
    from probcat.scale import read_list

    with pytest.raises(ProbcatFileError, match="nope.txt: no such file list"):
        read_list(tmp_path / "nope.txt")
    binary = tmp_path / "list.bin"
    binary.write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(ProbcatIOError, match="not a readable text file list"):
        read_list(binary)
    lst = tmp_path / "list.txt"
    for line in ("mask=m.fits", "a.fits mask=m.fits mask=n.fits", "u=a.fits u=b.fits",
                 "a.fits u=b.fits", "a.fits weight="):  # fmt: skip
        lst.write_text(f"# a comment\n\n{line}\n")
        with pytest.raises(ProbcatValueError, match=re.escape(f"{lst}: {line!r}: ")):
            read_list(lst)
    lst.write_text("u=a.fits g=b.fits mask=m.fits hdu=2\nc.fits d.fits weight=w.fits\n")
    assert read_list(lst) == [
        ({"u": Path("a.fits"), "g": Path("b.fits")}, Path("m.fits"),
         None, "2"),
        (Path("c.fits"), Path("d.fits"), Path("w.fits"), None),
    ]  # fmt: skip
    with pytest.raises(ProbcatValueError, match="no images given"):
        plan([], tmp_path / "o")
    image = tmp_path / "x.fits"
    image.write_bytes(b"")
    with pytest.raises(ProbcatValueError, match="catalog format must be one of"):
        plan([image], tmp_path / "o", suffix=".csv")
    with pytest.raises(ProbcatValueError, match="an image entry is a path or"):
        plan([(image, None, None, None, None)], tmp_path / "o")
    with pytest.raises(ProbcatValueError, match="would overwrite an input image"):
        plan([image], tmp_path, suffix=".fits")


def test_an_unreachable_scheduler_is_a_one_line_error(tmp_path, weights, capsys):
    import dask
    import distributed  # noqa: F401  (its settings loaded first: leaving the block below
    # restores them; loaded inside it, they would be dropped whole for later tests)

    (img,) = _images(tmp_path, n=1)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        rc = main(["run", str(img), "-o", str(tmp_path / "o"), "-q", "--weights", weights,
                   "--scheduler", "tcp://127.0.0.1:1"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "cannot reach the Dask scheduler tcp://127.0.0.1:1" in err
    assert not (tmp_path / "o").exists()  # nothing ran: no folder, no run_options.json
    (tmp_path / "there").mkdir()  # a folder that was there stays, empty
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        rc = main(["run", str(img), "-o", str(tmp_path / "there"), "-q", "--weights", weights,
                   "--scheduler", "tcp://127.0.0.1:1"])  # fmt: skip
    assert rc == 2 and not list((tmp_path / "there").iterdir())


def test_dedup_keeps_each_source_in_the_image_with_the_nearest_centre():
    from astropy.coordinates import SkyCoord

    rng = np.random.default_rng(1)
    centres = np.column_stack([rng.uniform(10, 10.2, 5), rng.uniform(-5, -4.8, 5)])
    ra, dec = rng.uniform(10, 10.2, 300), rng.uniform(-5, -4.8, 300)
    own = rng.integers(0, 5, 300)
    keep = dedup_by_core(ra, dec, own, centres)
    c = SkyCoord(centres[:, 0], centres[:, 1], unit="deg")
    brute = [
        int(np.argmin(SkyCoord(r, d, unit="deg").separation(c).deg)) == o
        for r, d, o in zip(ra, dec, own)
    ]
    np.testing.assert_array_equal(keep, brute)


@pytest.mark.slow
def test_dask_run_and_hats_catalog_read_back_with_lsdb(tmp_path, weights, capsys):
    """Two Dask workers give the serial run's catalogs; the HATS catalog holds each source
    once (overlaps deduplicated) and an LSDB cone search returns the same sources as the
    per-image catalogs."""
    lsdb = pytest.importorskip("lsdb", reason="the scale extra: pip install -e '.[scale]'")
    from astropy.coordinates import SkyCoord

    images = _images(tmp_path)
    serial = run(images, tmp_path / "s", weights=str(weights), threshold=0.0, workers=0,
                 progress=False)  # fmt: skip
    hats = tmp_path / "hats" / "probcat_test"
    rc = main(["run", *map(str, images), "-o", str(tmp_path / "d"), "--weights", str(weights),
               "--threshold", "0", "--workers", "2", "--hats", str(hats), "-q"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    dask_cats, serial_cats = _rows(tmp_path / "d"), _rows(tmp_path / "s")
    assert set(dask_cats) == set(serial_cats) and serial["rows"] > 0
    for name, cat in serial_cats.items():
        np.testing.assert_array_equal(dask_cats[name]["prob"], cat["prob"])

    # the sources HATS should hold: each image's, kept where its centre is nearest
    centres = np.array([c.meta["centre"] for c in serial_cats.values()])
    expect = []
    for k, c in enumerate(serial_cats.values()):
        keep = dedup_by_core(c["ra"], c["dec"], k, centres)
        expect += [(c.meta["image"], int(r)) for r in np.flatnonzero(keep)]
    df = lsdb.open_catalog(hats).compute()
    got = sorted(zip(df["image"], df["row"].astype(int)))
    assert got == sorted(expect) and len(got) < serial["rows"]  # overlaps removed, once each
    ra0, dec0, radius = 56.0 + 0.004, -30.0, 5.0
    cone = lsdb.open_catalog(hats).cone_search(ra0, dec0, radius_arcsec=radius).compute()
    sep = SkyCoord(df["ra"], df["dec"], unit="deg").separation(SkyCoord(ra0, dec0, unit="deg"))
    inside = df[sep.arcsec <= radius]
    assert 0 < len(cone) < len(df)
    assert sorted(zip(cone["image"], cone["row"])) == sorted(zip(inside["image"], inside["row"]))


@pytest.mark.slow
def test_dask_run_from_an_unguarded_script_runs(tmp_path, weights):
    """Local workers start without importing the calling script (they would run it again,
    its run included): a script that starts a Dask run at its top level, without
    ``if __name__ == "__main__":``, gets the serial run's catalogs and prints nothing."""
    import subprocess
    import sys

    images = _images(tmp_path, n=2)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import probcat.scale\n"
        f"probcat.scale.run({[str(p) for p in images]!r}, {str(tmp_path / 'out')!r}, "
        f"weights={str(weights)!r}, threshold=0.0, workers=2, progress=False)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    serial = run(images, tmp_path / "s", weights=str(weights), threshold=0.0, workers=0,
                 progress=False)  # fmt: skip
    assert serial["rows"] > 0
    for a, b in zip(_rows(tmp_path / "s").values(), _rows(tmp_path / "out").values(),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a["x"], b["x"], atol=1e-4)


@pytest.mark.slow
def test_hats_keeps_array_columns_as_lists(tmp_path):
    lsdb = pytest.importorskip("lsdb", reason="the scale extra: pip install -e '.[scale]'")

    rng = np.random.default_rng(2)
    folder = tmp_path / "cats"
    for k in range(2):
        n = 5
        cat = FullCatalog(
            {"x": rng.uniform(0, 40, n), "y": rng.uniform(0, 40, n),
             "ra": 56.0 + rng.uniform(-1e-3, 1e-3, n) + k, "dec": np.full(n, -30.0),
             "flux": rng.uniform(1, 2, (n, 2))},
            (40, 40), ("g", "i"), {"image": f"im{k}.fits", "centre": [56.0 + k, -30.0]},
        )  # fmt: skip
        cat.write(folder / f"im{k}.parquet")
    assert build_hats(folder, tmp_path / "h" / "cat") == 10
    df = lsdb.open_catalog(tmp_path / "h" / "cat").compute()
    for k in range(2):
        cat = FullCatalog.read(folder / f"im{k}.parquet")
        rows = df[df["image"] == f"im{k}.fits"].sort_values("row")
        np.testing.assert_allclose(np.stack(rows["flux"].to_numpy()), cat["flux"])


def test_hats_target_is_checked_and_an_earlier_catalog_replaced(tmp_path):
    """A file, or a directory of other files, is refused before anything is written; an
    earlier HATS catalog at the path is replaced by the new one, which lsdb reads."""
    lsdb = pytest.importorskip("lsdb", reason="the scale extra: pip install -e '.[scale]'")
    from probcat.scale import check_hats_target

    folder = tmp_path / "cats"
    for k, n in enumerate((3, 4)):
        FullCatalog(
            {"x": np.zeros(n), "y": np.zeros(n), "ra": np.full(n, 56.0 + k),
             "dec": np.linspace(-30, -30.001, n)},
            (40, 40), ("i",), {"image": f"im{k}.fits", "centre": [56.0 + k, -30.0]},
        ).write(folder / f"im{k}.parquet")  # fmt: skip
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ProbcatValueError, match="afile: exists and is not a directory"):
        build_hats(folder, tmp_path / "afile")
    with pytest.raises(ProbcatValueError, match="cats: a directory of other files"):
        check_hats_target(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["im0.parquet", "im1.parquet"]
    out = tmp_path / "h"
    assert build_hats(folder, out) == 7
    (folder / "im1.parquet").unlink()
    assert build_hats(folder, out) == 3  # replaced: the second catalog only
    assert len(lsdb.open_catalog(out).compute()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "cats", "h"]  # no leftovers


def test_serial_threads_option(tmp_path, weights):
    images = _images(tmp_path, n=2)
    one = run(images, tmp_path / "a", weights=str(weights), workers=0, threads=1, progress=False)
    auto = run(images, tmp_path / "b", weights=str(weights), workers=0, progress=False)
    assert one["rows"] == auto["rows"] and one["cluster_start_s"] == 0.0
    for a, b in zip(_rows(tmp_path / "a").values(), _rows(tmp_path / "b").values()):
        np.testing.assert_allclose(a["x"], b["x"], atol=1e-4)
    from probcat.runtime import max_threads

    for bad in (0, max_threads() + 1):  # the bound of every command: 4 per core, at least 8
        with pytest.raises(ProbcatValueError, match="threads must be 'auto' or an integer"):
            run(images, tmp_path / "c", weights=str(weights), workers=0, threads=bad)
    assert not (tmp_path / "c").exists()
    with pytest.raises(ProbcatValueError, match="serial runs"):
        run(images, tmp_path / "c", weights=str(weights), workers=2, threads=2)
    with pytest.raises(ProbcatValueError, match="one per band or 'measured'"):
        run(images, tmp_path / "c", weights=str(weights), workers=0, noise_sigma="guess")
    measured = run(
        images, tmp_path / "d", weights=str(weights), workers=0, noise_sigma="measured",
        progress=False,
    )  # fmt: skip
    assert measured["processed"] == 2 and not measured["failed"]
    meta = FullCatalog.read(sorted((tmp_path / "d").glob("*.parquet"))[0]).meta["input"]
    assert meta["noise_source"] == "measured" and meta["noise_sigma"][0] > 0


def test_local_workers_bounded_and_no_more_than_the_images(tmp_path, weights, monkeypatch):
    """A worker count beyond 4 per core (each worker a process with its own networks) is a
    one-line error before anything is written; a local cluster starts no more workers than
    there are images to process."""
    import probcat.scale as scale
    from probcat.errors import ProbcatError
    from probcat.runtime import max_threads

    images = _images(tmp_path, n=2)
    for bad in (-1, max_threads() + 1, True, 2.0):
        with pytest.raises(ProbcatValueError, match="workers must be an integer from 0 to"):
            run(images, tmp_path / "c", weights=str(weights), workers=bad)
    rc = main(["run", *map(str, images), "-o", str(tmp_path / "c"), "--weights", str(weights),
               "--workers", "100000", "-q"])  # fmt: skip
    assert rc == 2 and not (tmp_path / "c").exists()
    started = []

    def cluster(n):  # the size asked for; no cluster is started
        started.append(n)
        raise ProbcatError("no cluster in this test")

    monkeypatch.setattr(scale, "_local_cluster", cluster)
    monkeypatch.setattr(scale, "_start_forkserver", lambda: None)
    monkeypatch.setattr(scale.os, "cpu_count", lambda: 6)
    for workers, want in ((max_threads(), 2), (None, 2), (1, 1)):
        with pytest.raises(ProbcatError, match="no cluster"):
            run(images, tmp_path / f"w{workers}", weights=str(weights), workers=workers,
                progress=False)  # fmt: skip
        assert started.pop() == want
    with pytest.raises(ProbcatError, match="no cluster"):  # one image left to do
        run(images[:1], tmp_path / "one", weights=str(weights), progress=False)
    assert started == [1]


def test_device_of_a_run_serial_runs_default_workers_use_the_cpu(tmp_path, weights):
    from probcat.scale import run_device

    assert run_device(None, serial=True) is None  # probcat's default: a GPU when present
    assert run_device(None, serial=False) == "cpu"  # a worker per core: not one GPU each
    assert run_device("cuda:1", serial=False) == "cuda:1"
    images = _images(tmp_path, n=1)
    got = run(images, tmp_path / "a", weights=str(weights), workers=0, device="cpu",
              progress=False)  # fmt: skip
    assert got["processed"] == 1 and not got["failed"]
    with pytest.raises(ProbcatValueError, match="device 'gpu0'"):
        run(images, tmp_path / "b", weights=str(weights), workers=0, device="gpu0")
    assert not (tmp_path / "b").exists()


def test_run_reads_classes_at_the_seeing_given(tmp_path, stamp_weights):
    images = _images(tmp_path, n=1)
    with pytest.raises(ProbcatValueError, match="seeing must be"):
        run(images, tmp_path / "x", weights=str(stamp_weights), workers=0, seeing="wide")
    assert not (tmp_path / "x").exists()  # refused before any work
    cats = {}
    for seeing in ("none", "1.3"):
        s = run(images, tmp_path / seeing, weights=str(stamp_weights), threshold=0.0,
                workers=0, seeing=seeing, progress=False)  # fmt: skip
        assert s["processed"] == 1 and not s["failed"]
        cats[seeing] = FullCatalog.read(next((tmp_path / seeing).glob("*.parquet")))
    assert cats["1.3"].meta["input"]["seeing_matched"] == 1.3
    assert cats["none"].meta["input"]["seeing_matched"] == 1.0
    np.testing.assert_array_equal(cats["none"]["x"], cats["1.3"]["x"])
    assert not np.allclose(cats["none"]["galaxy_prob"], cats["1.3"]["galaxy_prob"])


def test_benchmark_row_comparison_counts_lost_duplicated_and_unexpected_rows():
    """benchmarks/scale.py's kill tests: a row within the tolerance of a reference row is
    that row (thread counts move centroids by ~1e-5 px); the counts on a hand-built case."""
    compare = benchmark_module("scale").compare_rows
    ref = {"a": {"x": np.array([1.0, 5.0, 9.0]), "y": np.array([1.0, 5.0, 9.0])},
           "b": {"x": np.array([2.0]), "y": np.array([3.0])}}  # fmt: skip
    got = {
        "a": {"x": np.array([1.00001, 5.0, 5.0, 20.0]), "y": np.array([1.0, 5.0, 5.00002, 1.0])},
        "c": {"x": np.array([1.0]), "y": np.array([1.0])},
    }
    out = compare(ref, got)
    # a: (9, 9) lost, (5, 5) twice, (20, 1) unknown; b: missing (1 lost); c: extra file
    assert out["lost_rows"] == 2 and out["duplicated_rows"] == 1
    assert out["unexpected_rows"] == 1 and out["extra_catalogs"] == 1
    assert out["max_matched_offset_px"] == pytest.approx(2e-5)
    assert compare(ref, {k: dict(v) for k, v in ref.items()})["lost_rows"] == 0
    moved = {"a": {"x": ref["a"]["x"] + 0.01, "y": ref["a"]["y"]}, "b": ref["b"]}
    assert compare(ref, moved)["lost_rows"] == 3  # 0.01 px is another source


def test_a_file_list_gives_each_image_its_mask(tmp_path, weights, capsys):
    from astropy.io import fits

    import probcat
    from probcat.io import read_image
    from probcat.masking import aperture_fraction

    images = _images(tmp_path, n=2)
    m = np.zeros((48, 48), np.uint8)
    m[10:30, 5:25] = 1
    fits.PrimaryHDU(m).writeto(tmp_path / "m0.fits")
    spaced = tmp_path / "with space.fits"  # a path with a space, alone on its line
    spaced.write_bytes(images[1].read_bytes())
    lst = tmp_path / "images.txt"
    lst.write_text(f"# image [mask]\n{images[0]}  {tmp_path / 'm0.fits'}\n\n{spaced}\n")
    out = tmp_path / "cats"
    args = ["run", str(lst), "-o", str(out), "--weights", str(weights), "--workers", "0", "-q",
            "--threshold", "0"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    got = FullCatalog.read(out / "im0.parquet")
    want = probcat.load(str(weights), threads=1).detect(read_image(images[0]), threshold=0.0,
                                                        mask=m).catalog  # fmt: skip
    np.testing.assert_array_equal(got["x"], want["x"])
    np.testing.assert_allclose(got["mask_fraction"], aperture_fraction(m != 0, got["x"], got["y"]))
    assert got["mask_fraction"].max() > 0 and got.meta["input"]["masked_pixels"] == 400
    other = FullCatalog.read(out / "with space.parquet")
    assert np.all(other["mask_fraction"] == 0)
    bad_lists = ((f"{images[0]} {tmp_path / 'nope.fits'}\n", "no such mask file"),
                 ("a.fits b.fits c.fits\n", "each at most once"),
                 (f"{images[0]} colour=x.fits\n", "weight map (weight=PATH)"))  # fmt: skip
    for text, message in bad_lists:
        lst.write_text(text)
        rc = main([*args[:3], str(tmp_path / "o2"), *args[4:]])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and "\n" not in err, err
        assert not (tmp_path / "o2").exists()


def test_run_reads_the_lsst_mask_planes_asked_for(tmp_path, capsys):
    from test_masking import _afw_file

    path, want, sat_cr = _afw_file(tmp_path / "calexp.fits")
    args = ["run", str(path), "--workers", "0", "-q", "--threshold", "0"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "b"), "--mask-planes", "NO_DATA,SAT,CR"]) == 0
    a = FullCatalog.read(tmp_path / "a" / "calexp.parquet")
    b = FullCatalog.read(tmp_path / "b" / "calexp.parquet")
    assert a.meta["input"]["masked_pixels"] == int(want.sum())
    assert b.meta["input"]["masked_pixels"] == int((want | sat_cr).sum())
    rc = main([*args, "-o", str(tmp_path / "c"), "--mask-planes", "NOPE"])
    summary = json.loads((tmp_path / "c" / "run_summary.json").read_text())
    assert rc == 1 and "NOPE not in the MASK header" in summary["failed"][0]["error"]
    # planes named for a file without a MASK HDU: its summary says nothing was masked
    from astropy.io import fits

    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.nan_to_num(fits.getdata(path, "IMAGE"))).writeto(plain)
    rc = main(["run", str(plain), "--workers", "0", "-q", "--noise", "22", "--mask-planes", "SAT",
               "-o", str(tmp_path / "d")])  # fmt: skip
    warned = json.loads((tmp_path / "d" / "run_summary.json").read_text())["warnings"]
    assert rc == 0 and "plain.fits has no MASK HDU" in " ".join(warned[str(plain)]), warned


def test_a_file_list_line_names_a_mask_and_a_weight_map(tmp_path, weights, capsys):
    from astropy.io import fits

    import probcat
    from probcat.io import read_image
    from probcat.scale import read_list

    (img,) = _images(tmp_path, n=1)
    m = np.zeros((48, 48), np.uint8)
    m[:8] = 1
    w = np.ones((48, 48), np.float32)
    w[:, 24:] = 0.3  # the right half noisier
    fits.PrimaryHDU(m).writeto(tmp_path / "m.fits")
    fits.PrimaryHDU(w).writeto(tmp_path / "w.fits")
    lst = tmp_path / "images.txt"
    lst.write_text(f"{img} weight={tmp_path / 'w.fits'} mask={tmp_path / 'm.fits'}\n")
    assert read_list(lst) == [(img, tmp_path / "m.fits", tmp_path / "w.fits", None)]
    out = tmp_path / "cats"
    assert main(["run", str(lst), "-o", str(out), "--weights", str(weights), "--workers", "0",
                 "-q", "--threshold", "0"]) == 0, capsys.readouterr().err  # fmt: skip
    got = FullCatalog.read(out / "im0.parquet")
    data = read_image(img, weight=tmp_path / "w.fits")
    want = probcat.load(str(weights), threads=1).detect(data, threshold=0.0, mask=m).catalog
    np.testing.assert_array_equal(got["x"], want["x"])
    assert got.meta["input"]["noise_map"] == want.meta["input"]["noise_map"]
    assert got.meta["input"]["masked_pixels"] == 8 * 48
    # the same map as noise sigma (SExtractor's MAP_RMS)
    fits.PrimaryHDU((1.0 / np.sqrt(w)).astype(np.float32)).writeto(tmp_path / "rms.fits")
    lst.write_text(f"{img} mask={tmp_path / 'm.fits'} weight={tmp_path / 'rms.fits'}\n")
    rms_args = ["run", str(lst), "-o", str(tmp_path / "rms"), "--weights", str(weights),
                "--workers", "0", "-q", "--threshold", "0", "--weight-type", "rms"]  # fmt: skip
    assert main(rms_args) == 0
    again = FullCatalog.read(tmp_path / "rms" / "im0.parquet")
    np.testing.assert_allclose(again["x"], got["x"], atol=1e-5)
    assert again.meta["input"]["noise_map"] == pytest.approx(got.meta["input"]["noise_map"])


def _mosaic(path):
    """A file of two 48-px CCD images (CCD1, CCD2) of noise 5, each with a bright source."""
    from astropy.io import fits

    rng = np.random.default_rng(4)
    hdus = [fits.PrimaryHDU()]
    for k in (1, 2):
        img = (rng.standard_normal((48, 48)) * 5).astype(np.float32)
        img[10 + 10 * k : 14 + 10 * k, 20:24] += 300.0  # a source at a different place
        hdus.append(fits.ImageHDU(img, name=f"CCD{k}"))
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.mark.slow
def test_dask_workers_run_each_ccd_of_a_mosaic(tmp_path, weights):
    """The Dask path passes each job's HDU: the same catalogs as the serial run."""
    _mosaic(tmp_path / "m.fits")
    entries = [(tmp_path / "m.fits", None, None, "all")]
    kw = dict(weights=str(weights), noise_sigma="measured", threshold=0.0, progress=False)
    serial = run(entries, tmp_path / "s", workers=0, **kw)
    dask = run(entries, tmp_path / "d", workers=1, **kw)
    assert serial["processed"] == dask["processed"] == 2 and not dask["failed"]
    for name in ("m_CCD1.parquet", "m_CCD2.parquet"):
        a = FullCatalog.read(tmp_path / "s" / name)
        b = FullCatalog.read(tmp_path / "d" / name)
        assert len(a) >= 1 and a.meta["image"] == b.meta["image"]
        # exact on the CPU; with --default-device the serial run reads on a GPU, the worker
        # on its CPU (1.2e-6 px apart on an H200)
        atol = 0 if runtime.choose_device().type == "cpu" else 1e-4
        np.testing.assert_allclose(a["x"], b["x"], rtol=0, atol=atol)


def test_a_mosaic_file_runs_one_catalog_per_ccd(tmp_path, weights, capsys):
    """``hdu=all`` on a file-list line: one job, and one catalog, per image HDU, each the
    detector's catalog of that HDU; ``hdu=NAME`` one of them; the run summary names the
    HDU of a failure."""
    import probcat
    from probcat.io import read_image
    from probcat.scale import read_list

    _mosaic(tmp_path / "m.fits")
    lst = tmp_path / "images.txt"
    lst.write_text(f"{tmp_path / 'm.fits'} hdu=all\n")
    assert read_list(lst) == [(tmp_path / "m.fits", None, None, "all")]
    jobs = plan(read_list(lst), tmp_path / "o")
    assert [(j.hdu, j.output.name) for j in jobs] == [("CCD1", "m_CCD1.parquet"),
                                                       ("CCD2", "m_CCD2.parquet")]  # fmt: skip
    out = tmp_path / "cats"
    args = ["run", str(lst), "-o", str(out), "--weights", str(weights), "--workers", "0", "-q",
            "--noise", "measured", "--threshold", "0"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    det = probcat.load(str(weights), threads=1)
    for name in ("CCD1", "CCD2"):
        got = FullCatalog.read(out / f"m_{name}.parquet")
        data = read_image(tmp_path / "m.fits", hdu=name)
        want = det.detect(data, noise_sigma="measured", threshold=0.0)
        assert len(got) >= 1
        np.testing.assert_array_equal(got["x"], want.catalog["x"])
        assert got.meta["image"] == f"m.fits[{name}]"
    # one HDU by index; a missing one fails that job, named, and not the others
    lst.write_text(f"{tmp_path / 'm.fits'} hdu=2\n{tmp_path / 'm.fits'} hdu=5\n")
    names = [j.output.name for j in plan(read_list(lst), tmp_path / "o")]
    assert names == ["m_2.parquet", "m_5.parquet"]
    rc = main([*args[:3], str(tmp_path / "c2"), *args[4:]])
    summary = json.loads((tmp_path / "c2" / "run_summary.json").read_text())
    assert rc == 1 and summary["processed"] == 1
    assert summary["failed"][0]["image"].endswith("m.fits[5]")
    assert "no HDU 5 (the file has 3)" in summary["failed"][0]["error"]
    lst.write_text(f"{tmp_path / 'm.fits'} hdu=2\n{tmp_path / 'm.fits'} hdu=2\n")
    with pytest.raises(ProbcatValueError, match="share the name 'm_2'"):
        plan(read_list(lst), tmp_path / "o")
    with pytest.raises(ProbcatValueError, match="an entry's hdu is an index"):
        plan([(tmp_path / "m.fits", None, None, 2.5)], tmp_path / "o")


def test_run_with_photoz_writes_the_pdfs_beside_each_catalog(tmp_path, weights, photoz_weights,
                                                            capsys):  # fmt: skip
    """--photoz: each catalog carries its galaxies' photo-z columns, as probcat.photoz
    gives them, and its PDFs go to <stem>_pz.hdf5 (one per PDF row); a rerun skips the
    image; bad photo-z options are one-line errors before anything is written."""
    import qp

    import probcat
    from probcat.io import write_image
    from probcat.survey import Survey

    survey = Survey.lsst(bands="ugrizy")
    rng = np.random.default_rng(4)
    images = []
    for k in range(2):
        img = rng.standard_normal((6, 40, 40)) * survey.noise_sigma[:, None, None]
        img[:, 18:23, 10 + 10 * k : 15 + 10 * k] += 30 * survey.noise_sigma[:, None, None]
        images.append(write_image(tmp_path / f"f{k}.fits", img.astype(np.float32), survey,
                                  make_wcs((40, 40), 0.2, 56.0 + 0.001 * k, -30.0)))  # fmt: skip
    out = tmp_path / "cats"
    kw = dict(weights=str(weights), photoz=str(photoz_weights), threshold=0.0, workers=0,
              progress=False)  # fmt: skip
    s = run(images, out, **kw)
    assert s["processed"] == 2 and s["failed"] == []
    for k, path in enumerate(images):
        cat = FullCatalog.read(out / f"f{k}.parquet")
        ens = qp.read(str(out / f"f{k}_pz.hdf5"))
        assert ens.npdf == int(np.sum(cat["has_pz"])) > 0
        direct = probcat.photoz(path, estimator=str(photoz_weights), detector=str(weights),
                                threshold=0.0)  # fmt: skip
        np.testing.assert_allclose(cat["z_mode"], direct.catalog["z_mode"])
        np.testing.assert_array_equal(ens.ancil["row"], direct.ensemble.ancil["row"])
    assert run(images, out, **kw)["skipped"] == 2
    # an image without galaxies: no PDF file, nor a stale one of a killed earlier run
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "f0_pz.hdf5").write_bytes((out / "f0_pz.hdf5").read_bytes())  # left behind
    s = run(images[:1], empty, **{**kw, "threshold": 0.999999})
    assert s["processed"] == 1 and len(FullCatalog.read(empty / "f0.parquet")) == 0
    assert not (empty / "f0_pz.hdf5").exists() and (out / "f0_pz.hdf5").exists()
    argv = ["run", str(images[0]), "-o", str(tmp_path / "x"), "--workers", "0", "-q"]
    # a width factor: the same PDFs' widths times it, recorded
    s = run(images[1:], tmp_path / "wide", **{**kw, "width_scale": 1.5})
    wide = FullCatalog.read(tmp_path / "wide" / "f1.parquet")
    plain = FullCatalog.read(out / "f1.parquet")
    assert wide.meta["photoz"]["width_scale"] == 1.5
    wide_pz, plain_pz = (qp.read(str(d / "f1_pz.hdf5")).objdata for d in (tmp_path / "wide", out))
    np.testing.assert_allclose(wide_pz["means"], plain_pz["means"])
    np.testing.assert_allclose(wide_pz["stds"], 1.5 * plain_pz["stds"], rtol=1e-6)
    assert np.all(wide["z_hi95"] - wide["z_lo95"] > plain["z_hi95"] - plain["z_lo95"])
    assert main([*argv, "--photoz-weights", str(photoz_weights)]) != 0
    assert main([*argv, "--photoz", "--photoz-weights", str(weights)]) != 0  # not photo-z
    assert main([*argv, "--width-scale", "2"]) != 0
    assert main([*argv, "--width-scale", "1"]) != 0  # given without --photoz, even 1
    assert main([*argv, "--photoz", "--width-scale", "nan"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and "--photoz-weights needs --photoz" in err[0]
    assert "photo-z" in err[1] and not (tmp_path / "x").exists()
    assert all("--width-scale needs --photoz" in e for e in err[2:4])
    assert "positive number" in err[4]


def test_run_with_deblend_gives_each_catalog_probcat_deblends_columns(
    tmp_path, weights, deblender_weights, capsys
):
    """--deblend: each catalog carries every source's deblended measurements and flux
    posteriors, as probcat.deblend gives them for the image (the same samples, the same
    numbers); the options are recorded (a rerun with other samples is refused) and bad
    ones are one-line errors before anything is written."""
    import probcat
    from probcat.io import write_image
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    rng = np.random.default_rng(7)
    images = []
    for k in range(2):
        img = rng.standard_normal((1, 48, 48)) * survey.noise_sigma[0]
        img[0, 20:25, 12 + 12 * k : 17 + 12 * k] += 40 * survey.noise_sigma[0]
        images.append(write_image(tmp_path / f"d{k}.fits", img.astype(np.float32), survey,
                                  make_wcs((48, 48), 0.2, 56.0 + 0.001 * k, -30.0)))  # fmt: skip
    out = tmp_path / "cats"
    kw = dict(weights=str(weights), deblend=str(deblender_weights), samples=3, threshold=0.2,
              workers=0, progress=False)  # fmt: skip
    s = run(images, out, **kw)
    assert s["processed"] == 2 and s["failed"] == [] and s["rows"] > 0
    recorded = json.loads((out / "run_options.json").read_text())
    assert (recorded["samples"], recorded["method"]) == (3, "conserve")
    for k, path in enumerate(images):
        cat = FullCatalog.read(out / f"d{k}.parquet")
        direct = probcat.deblend(path, weights=str(weights), deblender=str(deblender_weights),
                                 samples=3, threshold=0.2).catalog  # fmt: skip
        cols = [c for c in direct.colnames if c.startswith(("flux_", "mag_ap"))]
        assert {"flux_ap", "flux_ap_err", "p_match"} <= set(cat.colnames) and len(cols) > 4
        assert len(cat) == len(direct) > 0
        for c in cols:
            np.testing.assert_allclose(cat[c], direct[c], rtol=1e-5, err_msg=c)
    with pytest.raises(ProbcatValueError, match="samples 3 -> 5"):
        run(images, out, **{**kw, "samples": 5})
    with pytest.raises(ProbcatValueError, match="need deblend"):
        run(images, tmp_path / "x", weights=str(weights), samples=3, workers=0)
    with pytest.raises(ProbcatValueError, match="method must be one of"):
        run(images, tmp_path / "x", **{**kw, "method": "nope"})
    with pytest.raises(ProbcatValueError, match="samples must lie in"):
        run(images, tmp_path / "x", **{**kw, "samples": -1})
    argv = ["run", str(images[0]), "-o", str(tmp_path / "x"), "--workers", "0", "-q"]
    assert main([*argv, "--samples", "4"]) != 0
    assert main([*argv, "--deblend", "--photoz"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--samples needs --deblend" in err[0]
    assert "run them separately" in err[1] and not (tmp_path / "x").exists()


def test_a_run_pools_its_images_evidence_and_says_how_to_read_them_so(tmp_path, tiny_bank, capsys):
    """The run summary holds what the images' detections say together
    (``pooled_evidence``: the images' records pooled, as probcat.pooled_evidence of the
    catalogs), and the command line says how to read them so where that is far from what
    each image said alone (not where the weight was stated)."""
    from probcat.cli import _evidence_note
    from probcat.infer.reliability import pooled_evidence
    from probcat.io import write_image
    from probcat.simulate.scene import SceneConfig, SceneSimulator

    sim = SceneSimulator(tiny_bank, SceneConfig(48, 48))
    rng = np.random.default_rng(2)
    images = []
    for k in range(3):
        path = tmp_path / f"s{k}.fits"
        wcs = make_wcs((48, 48), 0.2, 56.0 + k, -30.0)
        write_image(path, sim.sample(rng).image, tiny_bank.survey, wcs)
        images.append(path)
    out = tmp_path / "cats"
    s = run(images, out, workers=0, progress=False)
    ev = s["pooled_evidence"]
    want = pooled_evidence(sorted(out.glob("*.parquet")))
    assert ev["images"] == 3 and {k: ev[k] for k in want} == pytest.approx(want)
    own = [FullCatalog.read(p).meta["cutout_probability"] for p in sorted(out.glob("*.parquet"))]
    assert ev["own"]["cutout"] == pytest.approx(np.mean(own), abs=1e-4)
    assert json.loads((out / "run_summary.json").read_text())["pooled_evidence"] == ev
    far = {**ev, "cutout": 0.0, "own": {**ev["own"], "cutout": 0.4}}
    line = _evidence_note(far, None, None)
    assert "the 3 images' detections give" in line and "--cutout 0 " in line
    assert _evidence_note(far, None, 0.4) is None  # stated: nothing to say
    both = {**far, "real_shapes": 1.0, "own": {**far["own"], "real_shapes": 0.2}}
    assert "--cutout" not in _evidence_note(both, None, 0.4)  # nor of what was stated
    near = {**far, "own": {**far["own"], "cutout": 0.1}, "real_shapes": far["own"]["real_shapes"]}
    assert _evidence_note(near, None, None) is None  # close to each image's own
