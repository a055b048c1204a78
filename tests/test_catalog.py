from pathlib import Path

import numpy as np
import pytest
from helpers import random_catalog

from probcat.catalog import FullCatalog, make_wcs, sky_positions
from probcat.errors import ProbcatIOError, ProbcatValueError


@pytest.mark.parametrize("n", [6, 0])  # no rows: astropy reads no empty ECSV array column
@pytest.mark.parametrize("suffix", [".fits", ".parquet", ".ecsv", ".FITS", ".Parquet"])
def test_file_round_trip_is_lossless(tmp_path, suffix, n):
    c = random_catalog(n)
    wcs = make_wcs(c.image_shape, 0.2, 150.0, 2.0)
    c.write(tmp_path / f"cat{suffix}", wcs=wcs)
    back = FullCatalog.read(tmp_path / f"cat{suffix}")
    assert back.image_shape == c.image_shape and back.bands == c.bands and back.meta == c.meta
    for k in c.colnames:
        assert np.array_equal(back[k], c[k]) and back[k].shape == c[k].shape, k
        assert back[k].dtype == c[k].dtype, k
    if suffix == ".ecsv":  # the units as the file holds them, also on empty array columns
        from probcat.catalog import _read_ecsv

        t = _read_ecsv(tmp_path / "cat.ecsv")
        assert t["flux"].unit == "electron" and t["x"].unit == "pix" and t["ra"].unit == "deg"


@pytest.mark.parametrize("suffix", [".fits", ".parquet", ".ecsv"])
@pytest.mark.parametrize("flux_unit", [None, "nJy", "furlong"])
def test_columns_carry_their_units(tmp_path, suffix, flux_unit):
    import warnings

    c = random_catalog()
    if flux_unit is not None:
        c.meta["input"] = {"flux_unit": flux_unit}
    c = c.with_columns(mag_ap=np.full(len(c), 24.0), T=np.ones(len(c)), prob=np.ones(len(c)))
    path = tmp_path / f"cat{suffix}"
    c.write(path, wcs=make_wcs(c.image_shape, 0.2, 150.0, 2.0))
    want = {"x": "pix", "y": "pix", "T": "pix", "ra": "deg", "dec": "deg", "mag_ap": "mag",
            "flux": {None: "electron", "nJy": "nJy", "furlong": None}[flux_unit]}  # fmt: skip
    if suffix == ".fits":
        from astropy.io import fits

        head = fits.getheader(path, "CATALOG")
        names = [head[f"TTYPE{i}"] for i in range(1, head["TFIELDS"] + 1)]
        got = {n: head.get(f"TUNIT{i}") for i, n in enumerate(names, 1)}
    elif suffix == ".ecsv":  # in the text file's YAML header
        from astropy.table import Table

        t = Table.read(path, format="ascii.ecsv")
        got = {n: None if t[n].unit is None else t[n].unit.to_string() for n in t.colnames}
    else:  # in the schema's metadata, as the file holds them
        import json

        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata
        got = dict.fromkeys(pq.read_schema(path).names)
        got.update(json.loads(meta[b"probcat_units"]))
    for name, unit in want.items():
        assert got[name] == unit, (name, got[name])
    assert got["prob"] is None and got["galaxy"] is None and got["source_id"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = FullCatalog.read(path)  # TUNIT electron read without a warning
    assert np.array_equal(back["flux"], c["flux"])


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        FullCatalog.read(tmp_path / "missing.fits")
    bad = tmp_path / "bad.fits"
    bad.write_text("not fits")
    with pytest.raises(ProbcatIOError):
        FullCatalog.read(bad)
    with pytest.raises(ProbcatValueError, match=r"end in .fits, .fit, .fts, .parquet or .ecsv"):
        random_catalog().write(tmp_path / "cat.txt")
    assert not list(tmp_path.glob("*cat.txt*"))


def test_brief_keeps_the_first_line_of_a_message_within_its_limit():
    from probcat.errors import brief

    assert brief(ValueError("first line\nsecond line")) == "first line"
    assert brief(ValueError("  padded  ")) == "padded"
    assert brief(KeyError()) == "KeyError"  # no message: the exception's name
    long = brief(OSError("x" * 500), limit=50)
    assert len(long) == 50 and long == "x" * 47 + "..."
    assert brief(OSError("y" * 50), limit=50) == "y" * 50  # at the limit: whole


def test_unreadable_tables_are_short_one_line_errors(tmp_path):
    """A text file given as a table: astropy's own error lists every format it knows (over
    3,000 characters); probcat's says what the file is not, in one short line."""
    from astropy.table import Table

    from probcat.catalog import read_table
    from probcat.redshift.estimator import read_known
    from probcat.simulate.prior import read_population

    text = tmp_path / "table.fits"
    text.write_text("x y redshift\n1 2 0.5\n")
    calls = [(read_table, (text,), "FITS or Parquet table"),
             (read_known, (text,), "FITS or Parquet table"),
             (read_population, (text,), "FITS or Parquet population catalog"),
             (FullCatalog.read, (text,), "not a readable probcat catalog")]  # fmt: skip
    for fn, args, what in calls:
        kw = {"bands": ("i",)} if fn is read_population else {}
        with pytest.raises(ProbcatIOError) as e:
            fn(*args, **kw)
        msg = str(e.value)
        assert what in msg and "\n" not in msg and len(msg) < 300, msg
    with pytest.raises(ProbcatIOError, match=r"\(the file is neither\)$"):
        read_table(text)
    Table({"a": [1.0, 2.0]}).write(tmp_path / "ok.parquet")
    assert list(read_table(tmp_path / "ok.parquet")["a"]) == [1.0, 2.0]


def test_new_output_dir_removes_only_the_empty_folders_it_made(tmp_path):
    from probcat.catalog import new_output_dir

    with new_output_dir(tmp_path / "a" / "b") as out:  # success: kept
        assert out.is_dir()
    assert (tmp_path / "a" / "b").is_dir()
    with pytest.raises(KeyboardInterrupt), new_output_dir(tmp_path / "a" / "x" / "y"):
        raise KeyboardInterrupt  # Ctrl-C while checking the input
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]
    with pytest.raises(ValueError), new_output_dir(tmp_path / "c" / "d") as out:
        (out / "written.txt").write_text("kept")  # the block wrote there: nothing removed
        raise ValueError("late")
    assert (tmp_path / "c" / "d" / "written.txt").read_text() == "kept"


def test_wcs_pixel_sky_round_trip():
    c = random_catalog()
    wcs = make_wcs(c.image_shape, 0.2, 150.0, 2.0)
    t = c.to_table(wcs)
    x, y = wcs.world_to_pixel_values(t["ra"], t["dec"])
    assert np.allclose(x, c["x"], atol=1e-6) and np.allclose(y, c["y"], atol=1e-6)
    # the reference pixel (1-indexed crpix) maps to crval; pixel scale 0.2"
    ra, dec = wcs.pixel_to_world_values((30 - 1) / 2, (20 - 1) / 2)
    assert ra == pytest.approx(150.0) and dec == pytest.approx(2.0)
    ra2, dec2 = wcs.pixel_to_world_values((30 - 1) / 2, (20 - 1) / 2 + 1)
    assert (dec2 - dec) * 3600 == pytest.approx(0.2, rel=1e-4)
    # ra is taken modulo 360; values astropy takes silently (NaN or nowhere) are errors
    assert make_wcs((20, 30), 0.2, -210.0, 2.0).wcs.crval[0] == pytest.approx(150.0)
    for args, msg in (
        (((0, 30), 0.2, 150.0, 2.0), "shape must be two positive pixel counts"),
        (((20.5, 30), 0.2, 150.0, 2.0), "shape must be two positive pixel counts"),
        ((20, 0.2, 150.0, 2.0), "shape must be two positive pixel counts"),
        (((20, 30), 0.0, 150.0, 2.0), r"pixel_scale must be > 0 arcsec and dec in \[-90, 90\]"),
        (((20, 30), -0.2, 150.0, 2.0), r"pixel_scale must be > 0 arcsec"),
        (((20, 30), 0.2, 150.0, 91.0), r"dec in \[-90, 90\] degrees, got 0.2 and 91.0"),
        (((20, 30), float("nan"), 150.0, 2.0), "pixel_scale must be a finite number"),
        (((20, 30), 0.2, float("inf"), 2.0), "ra must be a finite number"),
        (((20, 30), 0.2, 150.0, "2"), "dec must be a finite number"),
    ):
        with pytest.raises(ProbcatValueError, match=msg):
            make_wcs(*args)


def test_sky_positions_are_icrs_in_every_frame_and_none_without_one():
    from astropy.coordinates import FK4, FK5, SkyCoord

    wcs = make_wcs((40, 40), 0.2, 150.0, 2.0)
    x, y = np.array([0.0, 19.5, 39.0]), np.array([3.0, 19.5, 39.0])
    ra, dec = sky_positions(wcs, x, y)  # ICRS (astropy's default frame): read as it is
    assert np.array_equal(ra, wcs.pixel_to_world_values(x, y)[0])
    # an FK4 B1950 header: the same pixels land where astropy's FK4 -> ICRS puts them, and
    # 150 deg, 2 deg B1950 is about 0.64 deg from 150 deg, 2 deg ICRS (precession)
    wcs.wcs.radesys, wcs.wcs.equinox = "FK4", 1950.0
    wcs.wcs.set()
    ra4, dec4 = sky_positions(wcs, x, y)
    lon, lat = wcs.pixel_to_world_values(x, y)
    want = SkyCoord(lon, lat, unit="deg", frame=FK4(equinox="B1950")).icrs
    got = SkyCoord(ra4, dec4, unit="deg")
    assert np.max(got.separation(want).arcsec) < 1e-6
    assert 0.5 < got[1].separation(SkyCoord(150.0, 2.0, unit="deg")).deg < 0.8
    wcs.wcs.radesys, wcs.wcs.equinox = "FK5", 2000.0  # FK5 J2000 -> ICRS: under 0.1"
    wcs.wcs.set()
    ra5, dec5 = sky_positions(wcs, x, y)
    off = SkyCoord(ra5, dec5, unit="deg").separation(SkyCoord(ra, dec, unit="deg")).arcsec
    assert np.all((off > 1e-3) & (off < 0.1))
    want5 = SkyCoord(ra, dec, unit="deg", frame=FK5(equinox="J2000")).icrs
    assert np.max(SkyCoord(ra5, dec5, unit="deg").separation(want5).arcsec) < 1e-6
    wcs.wcs.ctype = ["HPLN-TAN", "HPLT-TAN"]  # helioprojective: no ICRS for a catalog
    wcs.wcs.set()
    with pytest.warns(UserWarning, match="no sky frame that converts to ICRS"):
        assert sky_positions(wcs, x, y) is None
    assert "ra" not in FullCatalog({"x": x, "y": y}, (40, 40)).to_table(wcs).colnames
    assert sky_positions(None, x, y) is None
    empty = sky_positions(make_wcs((40, 40), 0.2, 150.0, 2.0), [], [])
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_catalog_validation():
    with pytest.raises(ProbcatValueError):
        FullCatalog({"x": np.zeros(2)}, (5, 5))
    with pytest.raises(ProbcatValueError):
        FullCatalog({"x": np.zeros(2), "y": np.zeros(3)}, (5, 5))


def test_catalog_io_needs_neither_torch_nor_galsim(tmp_path):
    """Reading and writing catalogs imports neither torch nor GalSim."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from probcat.catalog import FullCatalog\n"
        f"p = {str(tmp_path / 'c.fits')!r}\n"
        "FullCatalog({'x': np.zeros(2), 'y': np.ones(2)}, (4, 4)).write(p)\n"
        "assert len(FullCatalog.read(p)) == 2\n"
        "print(sorted(m for m in ('torch', 'galsim') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_write_follows_the_umask(tmp_path, mask):
    import os
    import stat

    from probcat.catalog import atomic_write

    old = os.umask(mask)
    try:
        path = atomic_write(tmp_path / "x.txt", lambda tmp: Path(tmp).write_text("hi"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert path.read_text() == "hi" and list(tmp_path.iterdir()) == [path]


def test_region_file_marks_each_detection_at_its_ds9_pixel(tmp_path):
    import re

    c = FullCatalog(
        {"x": np.array([0.0, 10.25, 3.5]), "y": np.array([0.0, 4.0, 7.75]),
         "prob": np.array([0.95, 0.5, 0.99]), "galaxy": np.array([True, False, True])},
        (20, 30), ("i",), {},
    )  # fmt: skip
    c.write_regions(tmp_path / "d.reg", title="field.fits")
    lines = (tmp_path / "d.reg").read_text().splitlines()
    assert lines[0] == "# Region file format: DS9 version 4.1" and lines[3] == "image"
    rows = [re.fullmatch(r"circle\(([\d.]+),([\d.]+),5\) # (.*)", s) for s in lines[4:]]
    assert len(rows) == 3 and all(rows)
    for r, x, y in zip(rows, c["x"], c["y"]):  # DS9 counts pixels from 1
        assert (float(r[1]), float(r[2])) == (x + 1, y + 1)
    assert [r[3] for r in rows] == ["color=green text={0.95}",
                                    "color=cyan dash=1 text={0.50}",
                                    "color=green text={0.99}"]  # fmt: skip
    bare = FullCatalog({"x": np.array([1.0]), "y": np.array([2.0])}, (5, 5), ("i",), {})
    bare.write_regions(tmp_path / "b.reg", label="z_mode")
    assert (tmp_path / "b.reg").read_text().splitlines()[
        -1
    ] == "circle(2.000,3.000,5) # color=white"
    with pytest.raises(ProbcatValueError, match="DS9 region files end in .reg"):
        c.write_regions(tmp_path / "d.txt")


def test_detect_writes_a_region_file_and_checks_its_name_first(tmp_path, capsys):
    from astropy.io import fits

    from probcat.cli import main

    rng = np.random.default_rng(2)
    img = (10 * rng.standard_normal((48, 48))).astype(np.float32)
    img[20:24, 20:24] += 500.0
    fits.PrimaryHDU(img).writeto(tmp_path / "a.fits")
    args = ["detect", str(tmp_path / "a.fits"), "--noise", "measured", "-q"]
    assert main([*args, "-o", str(tmp_path / "c.fits"), "--regions", str(tmp_path / "c.reg")]) == 0
    assert f"regions -> {tmp_path / 'c.reg'}" in capsys.readouterr().out
    cat = FullCatalog.read(tmp_path / "c.fits")
    circles = [s for s in (tmp_path / "c.reg").read_text().splitlines() if s.startswith("circle")]
    assert len(circles) == len(cat) >= 1
    rc = main([*args, "-o", str(tmp_path / "d.fits"), "--regions", str(tmp_path / "d.txt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "must end in .reg" in err and "\n" not in err, err
    assert not (tmp_path / "d.fits").exists()
