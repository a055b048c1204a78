"""Photometric zeropoints read from image headers, and the magnitudes they give."""

import numpy as np
import pytest
from astropy.io import fits

from probcat.errors import ProbcatValueError
from probcat.io import read_image


def _stars(sigma=10.0, seed=5):
    """A 64-px image of pure noise ``sigma`` holding two bright Gaussian stars."""
    rng = np.random.default_rng(seed)
    img = sigma * rng.standard_normal((64, 64))
    yy, xx = np.mgrid[:64, :64]
    s = 4.0 / 2.3548
    for x, y in ((20, 22), (44, 40)):
        img += (
            400
            * sigma
            * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
            / (2 * np.pi * s * s)
        )
    return img.astype(np.float32)


def _write(path, cards, primary_cards=None, in_extension=False):
    """The stars in the primary HDU (or an ``IMAGE`` extension) with header ``cards``."""
    head = fits.Header()
    for k, v in cards.items():
        head[k] = v
    prim = fits.Header()
    for k, v in (primary_cards or {}).items():
        prim[k] = v
    if in_extension:
        hdus = [fits.PrimaryHDU(header=prim), fits.ImageHDU(_stars(), head, name="IMAGE")]
    else:
        hdus = [fits.PrimaryHDU(_stars(), head)]
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.mark.parametrize(
    ("cards", "primary", "want", "source"),
    [
        ({"MAGZERO": 27.25}, None, 27.25, "MAGZERO"),
        ({"MAGZP": 26.5, "FLUXMAG0": 1e11}, None, 26.5, "MAGZP"),  # MAGZP before FLUXMAG0
        ({"PHOTZP": 30}, None, 30.0, "PHOTZP"),
        ({"FLUXMAG0": 1e11}, None, 27.5, "FLUXMAG0"),  # 2.5 log10(1e11)
        ({"BUNIT": "nJy", "MAGZERO": 27.0}, None, 31.4, "BUNIT"),  # the unit defines it
        ({"BUNIT": "uJy"}, None, 23.9, "BUNIT"),
        ({}, {"FLUXMAG0": 1e10}, 25.0, "FLUXMAG0"),  # an afw file: in its primary header
        ({"ZEROPT": 28.0, "EXPTIME": 100.0}, None, None, ""),  # not probcat's own format
        ({}, None, None, ""),
    ],
)
def test_the_zeropoint_is_read_from_the_header(tmp_path, cards, primary, want, source):
    path = _write(tmp_path / "a.fits", cards, primary, in_extension=primary is not None)
    data = read_image(path)
    if want is None:
        assert data.zeropoint is None and data.zeropoint_from == ""
    else:
        np.testing.assert_allclose(data.zeropoint, [want], atol=1e-4)
        assert data.zeropoint_from == source


def test_probcat_files_give_the_zeropoint_of_their_electrons(tmp_path):
    """ZEROPT is the magnitude of 1 e-/s: a flux in electrons over EXPTIME has the survey
    band's magnitude."""
    from probcat.io import write_image
    from probcat.survey import Survey

    survey = Survey.lsst(bands="gi")
    path = write_image(tmp_path / "s.fits", np.zeros((2, 16, 16), np.float32), survey)
    data = read_image(path)
    assert data.zeropoint_from == "ZEROPT"
    flux = 1234.5
    for zp, band in zip(data.zeropoint, survey.bands):
        np.testing.assert_allclose(zp - 2.5 * np.log10(flux), band.flux_to_mag(flux), rtol=1e-9)


@pytest.mark.parametrize(
    ("cards", "message"),
    [
        ({"MAGZERO": "abc"}, "MAGZERO keyword 'abc' is not a number"),
        ({"MAGZP": True}, "MAGZP keyword True is not a number"),
        ({"FLUXMAG0": -5.0}, "FLUXMAG0 keyword -5.0 is not a positive finite number"),
        ({"FLUXMAG0": 0}, "FLUXMAG0 keyword 0 is not a positive finite number"),
        ({"MAGZERO": 150.0}, "MAGZERO keyword's zeropoint 150 is not a plausible AB magnitude"),
        ({"FLUXMAG0": 1e308}, "FLUXMAG0 keyword's zeropoint 770 is not a plausible AB magnitude"),
    ],
)
def test_a_bad_zeropoint_keyword_is_a_one_line_error(tmp_path, capsys, cards, message):
    from probcat.cli import main

    path = _write(tmp_path / "a.fits", cards)
    with pytest.raises(ProbcatValueError, match=message):
        read_image(path)
    rc = main(["detect", str(path), "-q", "-o", str(tmp_path / "c.fits")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err, err
    assert not (tmp_path / "c.fits").exists()


def test_read_input_shifts_the_zeropoint_by_the_gain_and_takes_an_override(tmp_path):
    from probcat.api import read_input
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    path = _write(tmp_path / "a.fits", {"BUNIT": "adu", "GAIN": 2.0, "MAGZERO": 28.0})
    _, _, _, info, _ = read_input(read_image(path), survey, background="none")
    assert info["gain"] == [2.0] and info["zeropoint_source"] == "MAGZERO"
    # fluxes in electrons: 2 e- per ADU, so 1 e- is 2.5 log10(2) mag fainter than 1 ADU
    np.testing.assert_allclose(info["zeropoint"], [28.0 + 2.5 * np.log10(2.0)], atol=1e-4)
    _, _, _, info, _ = read_input(read_image(path), survey, background="none", zeropoint=25)
    np.testing.assert_allclose(info["zeropoint"], [25.0 + 2.5 * np.log10(2.0)], atol=1e-4)
    assert info["zeropoint_source"] == "zeropoint"
    # NOISE given in ADU: the pixels are read as they are, and so is the zeropoint
    path = _write(
        tmp_path / "b.fits", {"BUNIT": "adu", "GAIN": 2.0, "MAGZERO": 28.0, "NOISE": 10.0}
    )
    _, _, _, info, _ = read_input(read_image(path), survey, background="none")
    assert "gain" not in info and info["zeropoint"] == [28.0]
    for bad in ("abc", np.nan, [27.0, 28.0]):
        with pytest.raises(ProbcatValueError, match="zeropoint must be"):
            read_input(read_image(path), survey, background="none", zeropoint=bad)
    # a number no AB zeropoint is (a flux scale of 0 or infinity in floats); 100 still reads
    for wild, shown in ((1e30, r"1e\+30"), (-100.5, "-100.5")):
        with pytest.raises(ProbcatValueError, match=f"^zeropoint {shown} is not a plausible AB"):
            read_input(read_image(path), survey, background="none", zeropoint=wild)
    _, _, _, info, _ = read_input(read_image(path), survey, background="none", zeropoint=100)
    assert info["zeropoint"] == [100.0]


def test_deblended_magnitudes_use_the_image_zeropoint(tmp_path, capsys):
    """An image in ADU with GAIN and MAGZERO: fluxes come out in electrons, and mag_ap is
    MAGZERO - 2.5 log10(flux in ADU); --zeropoint overrides it; without either, an ADU
    image without a gain has no magnitudes."""
    from probcat.cli import main

    args = ["--deblend", "--samples", "4", "--background", "none", "--noise", "measured", "-q"]
    path = _write(tmp_path / "a.fits", {"BUNIT": "adu", "GAIN": 2.0, "MAGZERO": 28.0})
    out = tmp_path / "c.fits"
    assert main(["detect", str(path), *args, "-o", str(out)]) == 0
    assert "[mag_ap at zeropoint 28.75, from MAGZERO]" in capsys.readouterr().out
    t = fits.getdata(out, "CATALOG")
    assert len(t) >= 2 and np.all(t["flux_ap"] > 0)
    np.testing.assert_allclose(t["mag_ap"], 28.0 - 2.5 * np.log10(t["flux_ap"] / 2.0), rtol=1e-6)
    # the magnitude error is the flux error to first order: a 1% flux is 0.010857 mag
    np.testing.assert_allclose(
        t["mag_ap_err"], 1.085736 * t["flux_ap_err"] / t["flux_ap"], rtol=1e-5
    )
    # the model and residual images say their units: electrons at the shifted zeropoint
    from probcat.catalog import FullCatalog

    rec = FullCatalog.read(out).meta["deblend"]
    for name in ("model", "residual"):
        back = read_image(tmp_path / f"c_{name}.fits")
        np.testing.assert_allclose(back.zeropoint, rec["zeropoint"], rtol=1e-12)
        np.testing.assert_allclose(back.noise_sigma, rec["noise_sigma"], rtol=1e-6)
        assert back.unit == "" and back.zeropoint_from == "MAGZERO"
    np.testing.assert_allclose(rec["noise_sigma"], [20.0], rtol=0.1)  # 10 ADU x gain 2
    out2 = tmp_path / "d.fits"
    assert main(["detect", str(path), *args, "--zeropoint", "30", "-o", str(out2)]) == 0
    t2 = fits.getdata(out2, "CATALOG")
    np.testing.assert_allclose(t2["mag_ap"], 30.0 - 2.5 * np.log10(t2["flux_ap"] / 2.0), rtol=1e-6)
    path = _write(tmp_path / "b.fits", {"BUNIT": "adu"})
    assert main(["detect", str(path), *args, "-o", str(tmp_path / "e.fits")]) == 0
    t3 = fits.getdata(tmp_path / "e.fits", "CATALOG")
    assert np.isnan(t3["mag_ap"]).all() and np.isnan(t3["mag_ap_err"]).all()


def test_zeropoint_option_errors_before_any_work(tmp_path, capsys):
    from probcat.cli import main

    path = _write(tmp_path / "a.fits", {})
    cases = (
        (["--zeropoint", "inf"], "--zeropoint must be a finite"),
        (["--deblend", "--zeropoint", "nan"], "--zeropoint must be a finite"),
    )
    for extra, message in cases:
        rc = main(["detect", str(path), *extra, "-q", "-o", str(tmp_path / "c.fits")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and "\n" not in err, err
        assert not (tmp_path / "c.fits").exists()


def test_the_zeropoint_tells_the_depth_and_the_detector_its_calibration(tmp_path):
    """With the image's zeropoint known (a header keyword or --zeropoint) the shipped
    detector reads its depth (noise as a flux over the survey's) and calibrates its
    probabilities at the nearest depth it carries a calibration for; the same detections,
    other probabilities than an image of unknown depth (electrons without a zeropoint)."""
    from probcat.cli import main
    from probcat.survey import Survey

    band = Survey.lsst(bands="i").bands[0]
    # a noise of 10 in the pixels' units that is sqrt(10) times the survey's as a flux:
    # LSST at 1 year
    zp = band.flux_to_mag(band.noise_sigma) - 2.5 * np.log10(10**0.5) + 2.5 * np.log10(10.0)
    cats = {}
    for name, cards, extra in (
        ("unknown", {"NOISE": 10.0}, []),
        ("header", {"NOISE": 10.0, "MAGZERO": zp}, []),
        ("option", {"NOISE": 10.0}, ["--zeropoint", f"{zp:.10f}"]),
    ):
        path = _write(tmp_path / f"{name}.fits", cards)
        out = tmp_path / f"{name}_cat.fits"
        assert main(["detect", str(path), *extra, "-q", "-o", str(out)]) == 0
        cats[name] = fits.getdata(out, "CATALOG")
    a, b, c = cats["unknown"], cats["header"], cats["option"]
    assert len(a) >= 2 and len(a) == len(b) == len(c)
    for col in ("x", "y", "prob_raw"):
        np.testing.assert_array_equal(a[col], b[col])
    np.testing.assert_array_equal(b["prob"], c["prob"])
    assert np.any(np.abs(a["prob"] - b["prob"]) > 1e-4)
    import probcat  # in Python: the same pixels with zeropoint=, the same calibration

    res = probcat.detect(_stars(), noise_sigma=10.0, zeropoint=zp)
    np.testing.assert_allclose(np.asarray(res.catalog["prob"]), b["prob"], rtol=1e-6)
    assert res.catalog.meta["input"]["calibration_noise"] == pytest.approx(10**0.5)
    # a zeropoint 20 mag off: a noise 1e-8 times the survey's, recorded to 4 digits, and said
    with pytest.warns(UserWarning, match="3.16e-08 times the survey's .*far from any depth"):
        res = probcat.detect(_stars(), noise_sigma=10.0, zeropoint=zp + 20)
    got = res.catalog.meta["input"]
    assert got["noise_over_survey"] == [pytest.approx(10**0.5 * 1e-8, rel=1e-3)]
    assert got["calibration_noise"] == pytest.approx(0.5**0.5)  # the deepest it carries


def test_a_coadds_depth_is_its_aperture_noise_not_its_smoother_pixels():
    """White noise at the survey's sigma averaged over 2x2 pixels (a coadd's resampling,
    roughly): half the pixel noise, the same depth. Its noise as a flux over the survey's
    reads about 1 (the pixel noise times the aperture noise factor), not 1/2."""
    import probcat
    from probcat.survey import Survey

    band = Survey.lsst(bands="i").bands[0]
    zp = band.zeropoint + 2.5 * np.log10(band.exposure_time)  # of 1 e- at the survey's depth
    white = band.noise_sigma * np.random.default_rng(2).standard_normal((257, 257))
    img = 0.25 * (white[1:, 1:] + white[:-1, 1:] + white[1:, :-1] + white[:-1, :-1])
    pixel = float(np.std(img))
    assert pixel / band.noise_sigma == pytest.approx(0.5, rel=0.05)
    det = probcat.load("detection_lsst_i", threads=1)
    with pytest.warns(UserWarning, match="correlated"):
        cat = det.catalog(img.astype(np.float32), noise_sigma=pixel, zeropoint=zp,
                          background="none")  # fmt: skip
    ratio = cat.meta["input"]["noise_over_survey"][0]
    assert 0.85 < ratio < 1.15
    assert "calibration_noise" not in cat.meta["input"]  # the survey's own depth


def test_deblending_says_the_image_warnings_once(tmp_path, capsys):
    """Detection and the deblender read the same image: its warnings (here a NOISE keyword
    three times the pixel noise, and NaN pixels) are said once, not twice."""
    from probcat.cli import main

    img = _stars()
    img[:2, :] = np.nan
    head = fits.Header()
    head["NOISE"] = 30.0  # the pixel noise is 10
    fits.PrimaryHDU(img, head).writeto(tmp_path / "a.fits")
    args = ["detect", str(tmp_path / "a.fits"), "--deblend", "--samples", "2", "-q"]
    assert main([*args, "-o", str(tmp_path / "c.fits")]) == 0
    err = capsys.readouterr().err
    assert err.count("differs from the measured pixel noise") == 1, err
    assert err.count("read as masked") == 1, err
    del head["NOISE"]  # no noise stated, the survey's far off: read at the measured, said once
    fits.PrimaryHDU(img, head).writeto(tmp_path / "b.fits")
    args[1] = str(tmp_path / "b.fits")
    assert main([*args, "-o", str(tmp_path / "d.fits")]) == 0
    err = capsys.readouterr().err
    assert err.count("the image states no noise") == 1, err
