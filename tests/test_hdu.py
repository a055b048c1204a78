"""Files with several images (one CCD per HDU): which one is read, and how it is chosen."""

import warnings

import numpy as np
import pytest
from astropy.io import fits

from probcat.errors import ProbcatValueError
from probcat.io import read_image


def _mosaic(path, n=3, shape=(32, 40)):
    """An empty primary HDU, then ``n`` CCD images named CCD1.. whose pixels all equal
    their number, and a binary table at the end."""
    hdus = [fits.PrimaryHDU()]
    for k in range(1, n + 1):
        hdus.append(fits.ImageHDU(np.full(shape, float(k), np.float32), name=f"CCD{k}"))
    hdus.append(fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.zeros(2))]))
    fits.HDUList(hdus).writeto(path)
    return path


def test_a_mosaic_file_reads_the_chosen_ccd_and_warns_when_none_is_chosen(tmp_path):
    path = _mosaic(tmp_path / "m.fits")
    with pytest.warns(UserWarning, match=r"reading HDU 1 \(CCD1\) only; 2 more hold images "
                      r"\(2 \(CCD2\), 3 \(CCD3\)\): choose one with --hdu"):  # fmt: skip
        assert read_image(path).image[0, 0, 0] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a chosen HDU: nothing to warn about
        assert read_image(path, hdu=2).image[0, 0, 0] == 2.0
        assert read_image(path, hdu="ccd3").image[0, 0, 0] == 3.0
        assert read_image(path, hdu="3").image[0, 0, 0] == 3.0
    for hdu, message in (
        (7, "no HDU 7 (the file has 5)"),
        ("NOPE", "no HDU named 'NOPE' (images: 1 (CCD1), 2 (CCD2), 3 (CCD3))"),
        (0, "HDU 0 holds no image"),
        (4, "HDU 4 holds no image"),  # the table
        (True, "hdu must be an index or an EXTNAME"),
    ):
        with pytest.raises(
            ProbcatValueError, match=message.replace("(", r"\(").replace(")", r"\)")
        ):
            read_image(path, hdu=hdu)


def test_single_images_and_lsst_files_read_without_a_warning(tmp_path):
    fits.PrimaryHDU(np.ones((16, 16), np.float32)).writeto(tmp_path / "one.fits")
    planes = fits.Header([("HIERARCH MP_NO_DATA", 8)])
    afw = [fits.PrimaryHDU(), fits.ImageHDU(np.ones((16, 16), np.float32), name="IMAGE"),
           fits.ImageHDU(np.zeros((16, 16), np.int32), planes, name="MASK"),
           fits.ImageHDU(np.ones((16, 16), np.float32), name="VARIANCE")]  # fmt: skip
    fits.HDUList(afw).writeto(tmp_path / "calexp.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "one.fits").image.shape == (1, 16, 16)
        assert read_image(tmp_path / "calexp.fits").noise_from == "VARIANCE"
    from probcat.io import write_image
    from probcat.survey import Survey

    own = write_image(tmp_path / "own.fits", np.zeros((1, 8, 8)), Survey.lsst(bands="i"))
    with pytest.raises(ProbcatValueError, match="read whole: no hdu to choose"):
        read_image(own, hdu=1)


def test_the_weight_map_of_the_chosen_ccd_is_read(tmp_path):
    path = _mosaic(tmp_path / "m.fits")
    wts = [fits.PrimaryHDU()] + [
        fits.ImageHDU(np.full((32, 40), 1.0 / k**2, np.float32), name=f"CCD{k}") for k in (1, 2, 3)
    ]
    fits.HDUList(wts).writeto(tmp_path / "w.fits")
    data = read_image(path, hdu="CCD2", weight=tmp_path / "w.fits")
    np.testing.assert_allclose(data.variance, 4.0)  # inverse variance 1/4 of CCD2
    fits.PrimaryHDU(np.full((32, 40), 0.5, np.float32)).writeto(tmp_path / "w1.fits")
    data = read_image(path, hdu=3, weight=tmp_path / "w1.fits")  # one map: that one
    np.testing.assert_allclose(data.variance, 2.0)
    with pytest.raises(ProbcatValueError, match="w.fits: no HDU 5"):
        read_image(_mosaic(tmp_path / "m5.fits", n=5), hdu=5, weight=tmp_path / "w.fits")


def test_detect_hdu_option(tmp_path, capsys):
    from probcat.cli import main

    rng = np.random.default_rng(0)
    hdus = [fits.PrimaryHDU()]
    for k in (1, 2):
        img = 10 * rng.standard_normal((48, 48)).astype(np.float32)
        if k == 2:
            img[20:25, 20:25] += 400.0  # a bright source on the second CCD only
        hdus.append(fits.ImageHDU(img, name=f"CCD{k}"))
    fits.HDUList(hdus).writeto(tmp_path / "m.fits")
    out = tmp_path / "c.fits"
    args = ["detect", str(tmp_path / "m.fits"), "--noise", "measured", "-q", "-o", str(out)]
    assert main([*args, "--hdu", "CCD2"]) == 0
    t = fits.getdata(out, "CATALOG")
    assert len(t) >= 1 and np.any(np.hypot(t["x"] - 22, t["y"] - 22) < 2)
    rc = main([*args[:-1], str(tmp_path / "d.fits"), "--hdu", "9"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no HDU 9 (the file has 3)" in err and "\n" not in err, err
    assert not (tmp_path / "d.fits").exists()


def test_image_stems_drop_fits_and_compression_suffixes(tmp_path, capsys):
    from probcat.cli import main
    from probcat.io import image_stem
    from probcat.scale import plan

    cases = {
        "field.fits": "field",
        "field.fits.fz": "field",
        "a.b.FIT.gz": "a.b",
        "x.fts": "x",
        "notes.txt": "notes",
        ".fits": ".fits",
        "c4d_01.fits.fz": "c4d_01",
    }
    assert {k: image_stem(k) for k in cases} == cases
    img = np.random.default_rng(0).standard_normal((48, 48)).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(img)]).writeto(tmp_path / "f.fits.fz")
    assert main(["detect", str(tmp_path / "f.fits.fz"), "--noise", "measured", "-q"]) == 0
    assert (tmp_path / "f_catalog.fits").exists()
    assert "f_catalog.fits" in capsys.readouterr().out
    (job,) = plan([tmp_path / "f.fits.fz"], tmp_path / "o")
    assert job.output.name == "f.parquet"


def test_the_mask_of_the_chosen_ccd_is_read(tmp_path):
    """A mask file with one plane per CCD is read at the image's HDU; a single-image mask
    file applies to whichever CCD."""
    from probcat.catalog import FullCatalog
    from probcat.cli import main
    from probcat.masking import read_mask

    rng = np.random.default_rng(1)
    images, masks = [fits.PrimaryHDU()], [fits.PrimaryHDU()]
    for k in (1, 2, 3):
        images.append(
            fits.ImageHDU(rng.standard_normal((48, 48)).astype(np.float32), name=f"CCD{k}")
        )
        m = np.zeros((48, 48), np.uint8)
        m[:, :k] = 1  # CCD k masks its first k columns
        masks.append(fits.ImageHDU(m, name=f"CCD{k}"))
    fits.HDUList(images).writeto(tmp_path / "m.fits")
    fits.HDUList(masks).writeto(tmp_path / "mask.fits")
    assert read_mask(tmp_path / "mask.fits", hdu="CCD3").sum() == 3 * 48
    assert read_mask(tmp_path / "mask.fits", hdu=2).sum() == 2 * 48
    fits.PrimaryHDU(np.ones((48, 48), np.uint8)).writeto(tmp_path / "one.fits")
    assert read_mask(tmp_path / "one.fits", hdu=3).all()
    out = tmp_path / "c.fits"
    args = [
        "detect",
        str(tmp_path / "m.fits"),
        "--hdu",
        "CCD2",
        "--mask",
        str(tmp_path / "mask.fits"),
    ]
    assert main([*args, "--noise", "measured", "-q", "-o", str(out)]) == 0
    assert FullCatalog.read(out).meta["input"]["masked_pixels"] == 2 * 48


def test_an_image_of_another_band_than_the_weights_is_said_once(tmp_path, capsys):
    """A single-band image whose FILTER names another band than the i-band weights' is read
    as i, with a warning (once, with --deblend too); one of band i, or whose filter names
    no band (an HST filter), is read without one."""
    from probcat.cli import main
    from probcat.io import band_letter

    names = ("i", "HSC-I", "LSST-r", "i_sim_1.4", "r DECam SDSS c0002 6415.0 1480.0", "F814W",
             "N921", "", "Open")  # fmt: skip
    assert [band_letter(v) for v in names] == ["i", "i", "r", "i", "r", None, None, None, None]
    img = 10 * np.random.default_rng(1).standard_normal((48, 48)).astype(np.float32)
    img[20:25, 20:25] += 400.0
    for k, (filt, said) in enumerate((("HSC-R", 1), ("HSC-I", 0), ("F814W", 0))):
        head = fits.Header()
        head["FILTER"] = filt
        fits.PrimaryHDU(img, head).writeto(tmp_path / f"{k}.fits")
        args = ["detect", str(tmp_path / f"{k}.fits"), "--noise", "measured", "--deblend",
                "--samples", "2", "-q", "-o", str(tmp_path / f"c{k}.fits")]  # fmt: skip
        assert main(args) == 0
        err = capsys.readouterr().err
        assert err.count("the image is of band r (named 'HSC-R')") == said, err
        assert err.count("the image is of band") == said, err
    # an LSST file names its filter in the primary header, not in its IMAGE HDU's
    primary = fits.PrimaryHDU()
    primary.header["FILTER"] = "r_sim_1.4"
    fits.HDUList([primary, fits.ImageHDU(img, name="IMAGE")]).writeto(tmp_path / "lsst.fits")
    assert read_image(tmp_path / "lsst.fits").bands == ("r_sim_1.4",)
    args = ["detect", str(tmp_path / "lsst.fits"), "--noise", "measured", "-q", "-o",
            str(tmp_path / "lsst_cat.fits")]  # fmt: skip
    assert main(args) == 0
    assert "the image is of band r (named 'r_sim_1.4')" in capsys.readouterr().err


def test_degenerate_axes_are_dropped_and_a_real_cube_refused(tmp_path):
    """A radio-style image (NAXIS3 = NAXIS4 = 1) reads as one band with its celestial WCS;
    a 4-D array with more than one plane on an extra axis stays a clear error."""
    rng = np.random.default_rng(3)
    plane = rng.normal(size=(24, 32)).astype(np.float32)
    hdr = fits.Header()
    hdr.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=56.0, CRVAL2=-30.0,
               CRPIX1=16.5, CRPIX2=12.5, CDELT1=-5.5e-5, CDELT2=5.5e-5,
               CTYPE3="FREQ", CTYPE4="STOKES")  # fmt: skip
    fits.PrimaryHDU(plane[None, None], header=hdr).writeto(tmp_path / "deg.fits")
    got = read_image(tmp_path / "deg.fits")
    assert got.image.shape == (1, 24, 32)
    np.testing.assert_array_equal(got.image[0], plane)
    ra, dec = got.wcs.pixel_to_world_values(15.5, 11.5)  # CRPIX is 1-based
    assert abs(ra - 56.0) < 1e-9 and abs(dec + 30.0) < 1e-9
    fits.PrimaryHDU(np.stack([plane[None]] * 2)).writeto(tmp_path / "cube.fits")
    with pytest.raises(ProbcatValueError, match="image has 4 dimensions"):
        read_image(tmp_path / "cube.fits")
