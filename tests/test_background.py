"""Images as users have them (probcat.background): sky left in, ADU with a gain, a NOISE
value that does not describe the pixels."""

import warnings

import numpy as np
import pytest

from probcat.background import masked_noise, masked_sky, prepare, sky, sky_offset
from probcat.errors import ProbcatValueError


def _field(rng, size=96):
    """A sky-subtracted field in sigma units: unit noise and two galaxies."""
    x = rng.standard_normal((1, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for cx, cy, f in ((30.2, 40.7, 400.0), (70.5, 60.1, 150.0)):
        x[0] += f * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8) / (8 * np.pi)
    return x


def test_a_subtracted_image_is_left_exactly_as_it_was():
    x = _field(np.random.default_rng(0))
    out, info = prepare(x, np.array([400.0]))
    assert out is x and info["background"] == "kept" and info["sky_median"] == [0.0]
    assert info["pixel_noise"][0] == pytest.approx(400.0, rel=0.05)


@pytest.mark.parametrize("kind", ["constant", "gradient"])
def test_a_sky_left_in_is_subtracted(kind):
    x = _field(np.random.default_rng(1))
    yy, xx = np.mgrid[: x.shape[1], : x.shape[2]]
    sky = np.full(x.shape[1:], 435.0) if kind == "constant" else 3.0 * xx / x.shape[2]
    out, info = prepare(x + sky.astype(np.float32), np.array([400.0]))
    assert info["background"] == "subtracted"
    assert info["sky_median"][0] == pytest.approx(np.median(sky) * 400, abs=0.2 * 400)
    resid = out - x  # what is left of the sky: well under the noise everywhere but the edges
    assert np.abs(np.median(resid)) < 0.1 and np.percentile(np.abs(resid), 90) < 0.3
    faint = out[0, 60:64, 70:74].sum() - x[0, 60:64, 70:74].sum()  # a galaxy keeps its flux
    assert abs(faint) < 0.1 * x[0, 60:64, 70:74].sum()
    assert not np.shares_memory(out, x)


def test_noise_that_disagrees_with_the_pixels_is_a_warning_with_the_measured_value():
    x = _field(np.random.default_rng(2)) * 0.5  # the real noise is half the stated sigma
    with pytest.warns(UserWarning, match=r"NOISE 400 differs from the measured pixel noise 2\d\d"):
        prepare(x, np.array([400.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(_field(np.random.default_rng(2)), np.array([400.0]))  # agrees: no warning


def _filled(rng, size=98, scale=1.0, peaks=(40.0, 30.0), widths=(10.0, 12.0)):
    """A small scene that two bright, large galaxies fill: unit noise times ``scale``."""
    x = scale * rng.standard_normal((1, size, size))
    yy, xx = np.mgrid[:size, :size]
    for (cx, cy), peak, w in zip(((30, 45), (70, 60)), peaks, widths):
        x[0] += peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * w**2))
    return x.astype(np.float32)


def test_galaxies_filling_a_small_image_are_not_counted_as_noise():
    """Their light lifts the quick noise estimate to several times the noise; measured with
    them masked it is the noise, so a right sigma is not warned about and a wrong one is."""
    x = _filled(np.random.default_rng(3))
    back, rms = sky(x[0])
    assert rms > 3.0  # the quick estimate counts the galaxies
    assert masked_noise(x[0], back, rms) == pytest.approx(1.0, rel=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = prepare(x, np.array([250.0]))
    assert info["pixel_noise"][0] == pytest.approx(250.0, rel=0.1)
    with pytest.warns(UserWarning, match=r"NOISE 500 differs from the measured pixel noise 2\d\d"):
        prepare(_filled(np.random.default_rng(3), scale=0.5), np.array([500.0]))  # twice
    pure = np.random.default_rng(4).standard_normal((200, 200)).astype(np.float32) * 2.0
    b, r = sky(pure)  # on pure noise both estimates agree
    assert masked_noise(pure, b, r) == pytest.approx(r, rel=0.02)


def test_masked_noise_iterates_until_the_wings_of_very_bright_galaxies_are_masked():
    """Galaxies 10 times brighter and wider: two passes of sky, mask and noise still read
    about 10 times the noise (each pass's mask is cut at the last pass's noise); passes
    until the noise settles reach it."""
    for seed in (3, 4):
        x = _filled(np.random.default_rng(seed), peaks=(400.0, 300.0), widths=(14.0, 16.0))
        back, rms = sky(x[0])
        assert rms > 50.0
        assert masked_noise(x[0], back, rms) == pytest.approx(1.0, rel=0.1)


def test_small_images_and_none_are_left_alone_and_bad_modes_are_errors():
    x = np.full((1, 20, 20), 50.0, np.float32)
    assert prepare(x, [1.0])[1]["background"] == "too small"
    big = np.full((1, 64, 64), 50.0, np.float32)
    out, info = prepare(big, [1.0], background="none")
    assert out is big and info == {"background": "none"}
    with pytest.raises(ProbcatValueError, match="background must be one of auto, none"):
        prepare(big, [1.0], background="yes")


def test_gain_converts_adu_and_noise_keyword_needs_none(tmp_path):
    """An image in ADU: with a gain and no NOISE it is converted to electrons (the survey's
    noise then applies); a NOISE keyword is in the pixels' units, so x = image / NOISE is
    the same with or without the gain."""
    from astropy.io import fits

    from probcat.api import read_input
    from probcat.io import read_image
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sigma = float(survey.noise_sigma[0])
    e = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32) * sigma
    gain = 2.5
    adu = e / gain
    x_e = read_input(e, survey, background="none")[0]
    x_adu = read_input(adu, survey, background="none", gain=gain)[0]
    np.testing.assert_allclose(x_adu, x_e, rtol=1e-5, atol=1e-5)

    hdu = fits.PrimaryHDU(adu)
    hdu.header["GAIN"], hdu.header["BUNIT"] = gain, "adu"
    hdu.writeto(tmp_path / "adu.fits")
    data = read_image(tmp_path / "adu.fits")
    assert data.gain.tolist() == [gain]
    x, _, s, info, _ = read_input(data, survey)
    np.testing.assert_allclose(x, x_e, rtol=1e-5, atol=1e-5)
    assert info["gain"] == [gain] and info["background"] == "kept"

    hdu.header["NOISE"] = sigma / gain  # in ADU, like the pixels
    hdu.writeto(tmp_path / "adu_noise.fits")
    x2 = read_input(tmp_path / "adu_noise.fits", survey)[0]
    np.testing.assert_allclose(x2, x_e, rtol=1e-5, atol=1e-5)

    hdu.header["BUNIT"] = "electron"  # GAIN of an image already in electrons: ignored
    hdu.writeto(tmp_path / "e.fits")
    assert read_image(tmp_path / "e.fits").gain is None
    hdu.header["BUNIT"], hdu.header["GAIN"] = "adu", "abc"
    hdu.writeto(tmp_path / "bad.fits")
    with pytest.raises(ProbcatValueError, match="GAIN keyword 'abc' is not a number"):
        read_image(tmp_path / "bad.fits")
    with pytest.raises(ProbcatValueError, match="gain must be a positive finite number"):
        read_input(adu, survey, gain=-1.0)


def test_an_image_that_states_no_noise_is_read_at_its_own_when_the_survey_s_is_off(tmp_path):
    """An image with neither NOISE nor VARIANCE nor noise_sigma: within 5% of the survey's
    noise it is read at the survey's (its depth, the calibrations' own); beyond,
    each band so far off is read at its measured pixel noise, said and recorded, exactly as
    noise_sigma='measured' reads it."""
    import warnings

    from probcat.api import read_input
    from probcat.survey import Survey

    survey = Survey.lsst(bands="ugrizy")
    s = survey.noise_sigma.astype(float)
    rng = np.random.default_rng(4)
    factors = np.array([1.0, 1 / 3, 1.1, 1.0, 2.5, 1.0])  # bands 1, 2 and 4 beyond 5%
    img = rng.standard_normal((6, 96, 96)) * (s * factors)[:, None, None]
    with pytest.warns(UserWarning, match=r"measured noise \(band 1: .*band 2: .*band 4: "):
        x, _, sigma, info, _ = read_input(img, survey)
    assert info["noise_source"] == "measured"
    for k in (0, 3, 5):  # within 5%: the survey's, untouched
        assert sigma[k] == pytest.approx(s[k], rel=1e-6)
    for k in (1, 2, 4):
        assert sigma[k] == pytest.approx(s[k] * factors[k], rel=0.03)
        assert np.std(x[k]) == pytest.approx(1.0, rel=0.03)  # unit noise, as trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say
        m = read_input(img, survey, "measured")
    np.testing.assert_allclose(sigma[[1, 2, 4]], m[2][[1, 2, 4]], rtol=0.02)
    # measured 6% off the survey's: switched on a 96-px image (beyond 5%), kept on a 40-px
    # cutout (within four times the estimate's own scatter there, 1.17 / 40: 12%)
    from probcat.background import measured_noise

    cut = Survey.lsst(bands="i")
    s0 = float(cut.noise_sigma[0])
    for size, switched in ((96, True), (40, False)):
        pure = rng.standard_normal((1, size, size))
        img1 = pure / measured_noise(pure, [1.0])[0] * 1.06 * s0  # measures 1.06 exactly
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            got = read_input(img1, cut)[2][0]
        assert got == pytest.approx(1.06 * s0 if switched else s0, rel=1e-4), size
        assert len(said) == int(switched), size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x0, _, sigma0, info0, _ = read_input(img[[0]], Survey.lsst(bands="u"))
    assert sigma0[0] == pytest.approx(s[0]) and "noise_source" not in info0
    # the image's sky is left alone (background="none"): no noise is measured, none switched
    _, _, kept, _, _ = read_input(img, survey, background="none")
    np.testing.assert_allclose(kept, s, rtol=1e-6)

    # an ADU image with no gain, far from the survey's noise: read at its own noise, and the
    # ADU warning (whose advice that is) not said
    from astropy.io import fits

    hdu = fits.PrimaryHDU((img[1] / 2).astype(np.float32))
    hdu.header["BUNIT"] = "ADU"
    hdu.writeto(tmp_path / "adu.fits")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        read_input(tmp_path / "adu.fits", Survey.lsst(bands="g"))
    assert len(said) == 1 and "measured noise" in str(said[0].message)


def test_an_adu_image_without_gain_warns_unless_its_units_do_not_matter(tmp_path):
    """BUNIT = 'adu' and no GAIN: read as electrons against the survey's noise, with a
    warning that names the band; none once a gain is given, the noise is measured, NOISE
    is in the header, or BUNIT is electrons. Per band in a multi-extension file."""
    import warnings

    from astropy.io import fits

    from probcat.api import read_input
    from probcat.io import read_image, write_image
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sigma = float(survey.noise_sigma[0])
    img = np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32) * sigma
    hdu = fits.PrimaryHDU(img)
    hdu.header["BUNIT"] = "ADU"
    hdu.writeto(tmp_path / "adu.fits")
    assert read_image(tmp_path / "adu.fits").adu_without_gain == ("i",)
    with pytest.warns(UserWarning, match=r"BUNIT is ADU but there is no GAIN \(band i\)"):
        x = read_input(tmp_path / "adu.fits", survey)[0]
    np.testing.assert_allclose(x[0], img / sigma, rtol=1e-5, atol=1e-5)  # read as electrons
    quiet = [("adu.fits", {"gain": 1.0}), ("adu.fits", {"noise_sigma": "measured"})]
    for key, value in (("NOISE", sigma), ("BUNIT", "electron"), ("GAIN", 1.0)):
        hdu.header[key] = value
        hdu.writeto(tmp_path / f"{key}.fits")
        quiet.append((f"{key}.fits", {}))
        del hdu.header[key]
        hdu.header["BUNIT"] = "ADU"
    assert read_image(tmp_path / "GAIN.fits").adu_without_gain == ()
    for name, kw in quiet:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            read_input(tmp_path / name, survey, **kw)

    gr = Survey.lsst(bands="gr")
    write_image(tmp_path / "gr.fits", np.stack([img, img]), gr)
    with fits.open(tmp_path / "gr.fits") as hdul:
        hdul["G"].header["BUNIT"] = "counts"
        hdul["R"].header["BUNIT"], hdul["R"].header["GAIN"] = "counts", 2.0
        for h in hdul[1:]:
            del h.header["NOISE"]
        hdul.writeto(tmp_path / "gr_adu.fits")
    data = read_image(tmp_path / "gr_adu.fits")
    assert data.adu_without_gain == ("g",) and data.gain.tolist() == [1.0, 2.0]
    with pytest.warns(UserWarning, match=r"no GAIN \(band g\)"):
        read_input(data, gr, background="none")
    with warnings.catch_warnings():  # the r plane alone has its GAIN
        warnings.simplefilter("error")
        read_input(data, Survey.lsst(bands="r"), background="none")


def test_a_pixel_scale_unlike_the_surveys_is_a_warning():
    from probcat.api import read_input
    from probcat.catalog import make_wcs
    from probcat.io import ImageData
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    img = np.random.default_rng(5).standard_normal((1, 40, 40)).astype(np.float32) * 400
    for scale, warns in ((0.2, False), (0.21, False), (0.6, True)):
        data = ImageData(img, make_wcs((40, 40), scale, 56.0, -30.0), ("i",), np.array([400.0]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            read_input(data, survey)
        said = [str(w.message) for w in caught if "pixel scale" in str(w.message)]
        assert bool(said) == warns, (scale, said)
    assert "0.6 arcsec" in said[0] and "0.2 arcsec" in said[0]


def test_each_catalog_of_a_batch_records_what_was_done_to_its_own_image(weights):
    import probcat

    det = probcat.load(str(weights))
    rng = np.random.default_rng(6)
    clean = rng.standard_normal((1, 64, 64)).astype(np.float32) * 400
    sky = clean + np.float32(400 * 50)
    cats = det.catalog([clean, sky, clean], noise_sigma=400.0)
    done = [c.meta["input"]["background"] for c in cats]
    assert done == ["kept", "subtracted", "kept"]


def _crowded_field(rng, size=128, n=40):
    """Unit noise and ``n`` galaxies (Gaussians, sd 1.5-4 px, 50-500 sigma of flux)."""
    x = rng.standard_normal((1, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        (cx, cy), f, s = rng.uniform(0, size, 2), rng.uniform(50, 500), rng.uniform(1.5, 4)
        x[0] += f * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s**2)) / (2 * np.pi * s**2)
    return x


def test_the_masked_sky_follows_a_gradient_in_a_crowded_field_better_than_sep_alone():
    yy, xx = np.mgrid[:128, :128]
    true = (500.0 + 8.0 * xx / 128 - 3.0 * yy / 128).astype(np.float32)
    for seed in range(3):
        x = _crowded_field(np.random.default_rng(seed))
        back, rms = sky(x[0] + true)
        refined = masked_sky(x[0] + true, back, rms)
        plain_err, err = (back - true).mean(), (refined - true).mean()
        assert plain_err > 0.15  # sep's boxes take the galaxies' wings for sky...
        assert 0 <= err < 0.12 and err < plain_err / 2  # ...masking takes most of it off
        assert np.abs(refined - true).max() < 0.35 < np.abs(back - true).max()


def test_sky_offset_is_the_floor_of_sky_free_images_and_zero_for_pure_noise():
    rng = np.random.default_rng(5)
    noise = [rng.standard_normal((2, 96, 96)).astype(np.float32) for _ in range(4)]
    assert np.abs(sky_offset(noise)).max() < 0.03
    floor = np.array([0.3, 0.1], np.float32)[:, None, None]  # light no mask can find
    assert sky_offset(n + floor for n in noise) == pytest.approx([0.3, 0.1], abs=0.03)
    with pytest.raises(ProbcatValueError, match="no images"):
        sky_offset([])


def test_prepare_takes_the_offset_off_the_sky_it_subtracts():
    x = _field(np.random.default_rng(6))
    out, info = prepare(x + 30.0, np.array([400.0]), offset=np.array([0.2]))
    assert info["background"] == "subtracted" and info["sky_offset"] == [0.2]
    assert np.median(out - x) == pytest.approx(0.2, abs=0.05)
    assert info["sky_median"][0] == pytest.approx(29.8 * 400, abs=0.05 * 400)
    kept, info = prepare(x, np.array([400.0]), offset=np.array([0.2]))  # nothing to subtract
    assert kept is x and "sky_offset" not in info


def test_the_source_mask_falls_back_when_sep_gives_up(monkeypatch):
    import sep

    def overflow(*a, **k):
        raise Exception("internal pixel buffer full")

    x = _crowded_field(np.random.default_rng(7))
    back, rms = sky(x[0] + 100.0)
    monkeypatch.setattr(sep, "extract", overflow)
    refined = masked_sky(x[0] + 100.0, back, rms)
    assert abs(float(np.median(refined)) - 100.0) < 0.1


def test_measured_noise_sets_the_noise_sigma_and_silences_the_warning(weights):
    """An image of another depth without NOISE: ``noise_sigma="measured"`` reads its own
    pixel noise (here 40 e-, a tenth of the survey's), puts the image in those units and
    records it; so does the default, the survey's noise being so far off; a stated noise
    is read as stated, with a warning."""
    from probcat.api import detect, read_input
    from probcat.background import measured_noise
    from probcat.survey import Survey

    field = _field(np.random.default_rng(8))  # unit noise, two galaxies
    image = 40.0 * field
    truth = 40.0 * float(np.std(field[0, :20, :20]))  # a corner with no galaxy: pure noise
    got = measured_noise(image / 400.0, [400.0])
    assert got[0] == pytest.approx(40.0, rel=0.05) and got[0] == pytest.approx(truth, rel=0.1)
    survey = Survey.lsst(bands="i")
    stated = float(survey.noise_sigma[0])  # the survey's, stated: kept, and warned of
    with pytest.warns(UserWarning, match="noise_sigma 434.5 differs from the measured pixel noise"):
        x0, _, sigma0, _, _ = read_input(image, survey, stated)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, _, sigma, info, _ = read_input(image, survey, "measured")
    assert sigma[0] == pytest.approx(got[0]) and sigma0[0] == pytest.approx(stated)
    np.testing.assert_allclose(x * sigma[0], x0 * sigma0[0], rtol=1e-4, atol=1e-2)
    assert info["noise_source"] == "measured" and info["noise_sigma"][0] == pytest.approx(got[0])
    # stated by nothing (the default): the survey's is 10 times off, so the measured is read
    with pytest.warns(UserWarning, match=r"read at the measured noise \(band 0: 39"):
        xa, _, sigma_a, info_a, _ = read_input(image, survey)
    assert sigma_a[0] == pytest.approx(sigma[0], rel=1e-3) and info_a["noise_source"] == "measured"
    np.testing.assert_allclose(xa, x, rtol=1e-3, atol=1e-3)
    res = detect(image, weights=weights, noise_sigma="measured")
    assert res.catalog.meta["input"]["noise_source"] == "measured"
    with pytest.raises(ProbcatValueError, match="measured"):
        read_input(image, survey, "estimated")
    with pytest.raises(ProbcatValueError, match="cannot be measured"):
        read_input(np.zeros((1, 64, 64), np.float32), survey, "measured")


def test_noise_ratio_reads_a_varying_variance_and_leaves_a_uniform_one():
    from probcat.background import noise_ratio

    var = np.full((1, 192, 192), 4.0)
    assert noise_ratio(var) is None  # uniform: nothing to rescale
    assert noise_ratio(var * 30.0) is None  # only the map's shape counts, not its scale
    var[0, :, :96] = 4.32  # the noise 3.9% higher on the left: within 5%, uniform
    assert noise_ratio(var) is None
    var[0, :, :96] = 9.0  # 1.5 times the noise on the left
    bad = np.zeros((192, 192), bool)
    bad[100:110, 140:150] = True  # masked pixels do not count
    var[0][bad] = 1e6
    r = noise_ratio(var, bad)
    assert r.shape == (1, 192, 192) and r.dtype == np.float32
    level = np.median(var[0][~bad])  # the median depth's variance
    # away from the step (16-px blocks, interpolated), the median noise over the local one
    np.testing.assert_allclose(r[0, :, :80], np.sqrt(level / 9.0), rtol=1e-5)
    np.testing.assert_allclose(r[0, :, 112:], np.sqrt(level / 4.0), rtol=1e-5)
    np.testing.assert_allclose(noise_ratio(var * 7.0, bad), r, rtol=1e-5)  # scale-free


def test_noise_correlation_against_exact_values():
    """Adjacent-pixel sums of white noise: correlation 1/2 at lag 1 along the summed axis,
    0 beyond; a 2x2 box sum: 1/2 along both axes. Excess over white noise: 0.25 and 0.5;
    white noise, with or without sources on it: 0."""
    from probcat.background import noise_correlation

    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 301))
    pairs = ((w[:, :-1] + w[:, 1:]) / np.sqrt(2)).astype(np.float32)
    assert noise_correlation(pairs) == pytest.approx(0.25, abs=0.02)
    w = rng.standard_normal((301, 301))
    box = ((w[:-1, :-1] + w[1:, :-1] + w[:-1, 1:] + w[1:, 1:]) / 2).astype(np.float32)
    assert noise_correlation(box) == pytest.approx(0.5, abs=0.02)
    white = rng.standard_normal((300, 300)).astype(np.float32)
    assert abs(noise_correlation(white)) < 0.01
    yy, xx = np.mgrid[:300, :300]
    for cx, cy in rng.uniform(10, 290, (60, 2)):  # sources: masked, not read as noise
        white += 40 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.0**2))
    assert abs(noise_correlation(white)) < 0.02
    assert noise_correlation(np.zeros((200, 200), np.float32)) is None  # no sky pixels
    masked = box.copy()
    masked[:, 20:] = 0.0  # no data: left out, too few pixels remain
    assert noise_correlation(masked) is None
    assert noise_correlation(box[:127]) is None  # a cutout: not measured


def test_correlated_noise_is_recorded_and_said_once(tmp_path, capsys):
    from astropy.io import fits

    from probcat.cli import main
    from probcat.io import read_image

    rng = np.random.default_rng(3)
    w = 10 * rng.standard_normal((161, 161))
    img = ((w[:-1, :-1] + w[1:, :-1] + w[:-1, 1:] + w[1:, 1:]) / 2).astype(np.float32)
    fits.PrimaryHDU(img).writeto(tmp_path / "c.fits")
    args = ["detect", str(tmp_path / "c.fits"), "--deblend", "--samples", "2", "--noise",
            "measured", "-q", "-o", str(tmp_path / "cat.fits")]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("the noise of neighbouring pixels is correlated (0.5") == 1, err
    from probcat.api import read_input
    from probcat.survey import Survey

    with pytest.warns(UserWarning, match="neighbouring pixels is correlated"):
        _, _, _, info, _ = read_input(read_image(tmp_path / "c.fits"), Survey.lsst(bands="i"),
                                      "measured")  # fmt: skip
    assert info["noise_correlation"][0] == pytest.approx(0.5, abs=0.05)


def test_correlated_noise_warning_knows_the_weights_trained_on_it(monkeypatch):
    import warnings

    from probcat import weights
    from probcat.api import Detector, read_input
    from probcat.survey import Survey

    rng = np.random.default_rng(4)
    w = 10 * rng.standard_normal((161, 161))
    img = ((w[:-1, :-1] + w[1:, :-1] + w[:-1, 1:] + w[1:, 1:]) / 2).astype(np.float32)
    survey = Survey.lsst(bands="i")
    monkeypatch.setattr(weights, "coadd_detection_weights", lambda bands: ["coadd_i"])
    with pytest.warns(UserWarning, match="the weights coadd_i were trained on such noise"):
        read_input(img, survey, 10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, _, info, _ = read_input(img, survey, 10.0, correlated_noise_ok=True)
    assert info["noise_correlation"][0] > 0.4  # still measured and recorded
    # a Detector says it from its manifest's training data
    assert weights.coadd_trained({"config": {"data": {"coadd_fraction": 0.5}}})
    assert not weights.coadd_trained({"config": {"data": {}}}) and not weights.coadd_trained(None)
    seen = {}

    def fake_read_input(*a, **k):
        seen.update(k)
        raise RuntimeError("stop")

    monkeypatch.setattr("probcat.api.read_input", fake_read_input)
    det = Detector.__new__(Detector)
    det.survey, det.net = survey, type("N", (), {"receptive_field": 40})()
    for man, want in (({"config": {"data": {"coadd_fraction": 0.5}}}, True), ({}, False)):
        det.manifest = man
        with pytest.raises(RuntimeError):
            det._one(img, 10.0, {})
        assert seen["correlated_noise_ok"] is want
