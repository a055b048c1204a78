import math

import galsim
import numpy as np
import pytest
import surveycodex
from surveycodex.utilities import mag2counts, mean_sky_level

from probcat.errors import ProbcatValueError
from probcat.survey import Survey


def test_lsst_numbers_equal_surveycodex():
    s = Survey.lsst()
    sc = surveycodex.get_survey("LSST")
    assert s.band_names == tuple("ugrizy")
    assert s.pixel_scale == pytest.approx(sc.pixel_scale.value)
    for b in s.bands:
        f = sc.get_filter(b.name)
        assert b.zeropoint == pytest.approx(f.zeropoint.value)
        assert b.sky_brightness == pytest.approx(f.sky_brightness.value)
        assert b.exposure_time == pytest.approx(f.full_exposure_time.value)
        assert b.psf_fwhm == pytest.approx(f.psf_fwhm.value)
        # surveycodex truncates counts per arcsec^2 to an integer before scaling to a pixel
        assert b.sky_level == pytest.approx(mean_sky_level(sc, b.name).value, rel=1e-4)
        assert b.mag_to_flux(24.0) == pytest.approx(mag2counts(24.0, sc, b.name).value, abs=1.0)


def test_i_band_sky_and_noise_match_btk_convention():
    i = Survey.lsst(bands="i")["i"]
    assert i.sky_level == pytest.approx(188_800, rel=1e-3)
    assert i.noise_sigma == pytest.approx(434.5, abs=0.1)


def test_depth_scales_exposure_and_noise():
    full, one = Survey.lsst(bands="i", years=10)["i"], Survey.lsst(bands="i", years=1)["i"]
    assert one.exposure_time == pytest.approx(full.exposure_time / 10)
    assert one.noise_sigma == pytest.approx(full.noise_sigma / math.sqrt(10))
    assert one.mag_to_flux(25) == pytest.approx(full.mag_to_flux(25) / 10)


def test_mag_flux_round_trip_and_nonpositive_flux():
    b = Survey.lsst(bands="r")["r"]
    mags = np.array([18.0, 22.5, 27.0])
    assert np.allclose(b.flux_to_mag(b.mag_to_flux(mags)), mags)
    assert np.isnan(b.flux_to_mag(0.0))


def test_psf_is_kolmogorov_times_obscured_airy():
    b = Survey.lsst(bands="i")["i"]
    assert b.obscuration_diameter == pytest.approx(math.sqrt(b.obscuration_area))
    psf = b.psf()
    assert psf.flux == pytest.approx(1.0)
    img = psf.drawImage(nx=63, ny=63, scale=0.05, method="no_pixel")
    fwhm = img.calculateFWHM()
    # the optics broaden the 0.79" atmosphere a little, never narrow it
    assert 0.79 < fwhm < 0.86
    assert isinstance(psf, galsim.Convolution)


def test_psf_scale_changes_the_seeing_only():
    s = Survey.lsst(bands="gi")
    w = s.with_psf_scale(1.5)
    assert [b.psf_fwhm for b in w.bands] == pytest.approx([1.5 * b.psf_fwhm for b in s.bands])
    np.testing.assert_array_equal(w.noise_sigma, s.noise_sigma)
    assert [b.zeropoint for b in w.bands] == [b.zeropoint for b in s.bands]
    fwhm = [
        x["i"].psf().drawImage(nx=95, ny=95, scale=0.05, method="no_pixel").calculateFWHM()
        for x in (s, w)
    ]
    assert 1.4 < fwhm[1] / fwhm[0] < 1.5  # the optics' part is not scaled
    for bad in (0.0, -1.0, float("nan"), float("inf"), (1.0, 0.0), (1.0, 1.0, 1.0)):
        with pytest.raises(ProbcatValueError, match="PSF scale"):
            s.with_psf_scale(bad)
    # one factor per band: each band its own seeing
    per = s.with_psf_scale((1.3, 0.8))
    assert [b.psf_fwhm for b in per.bands] == pytest.approx(
        [1.3 * s["g"].psf_fwhm, 0.8 * s["i"].psf_fwhm]
    )
    assert per["i"].psf_fwhm == pytest.approx(s.with_psf_scale(0.8)["i"].psf_fwhm)


def test_a_moffat_atmosphere_keeps_the_fwhm_and_puts_more_light_in_the_wings():
    s = Survey.lsst(bands="i")
    m = s.with_psf_beta(2.5)
    assert m["i"].psf_beta == 2.5 and m["i"].psf_fwhm == s["i"].psf_fwhm
    np.testing.assert_array_equal(m.noise_sigma, s.noise_sigma)

    def wings(survey):  # FWHM, and the share of the light beyond 1 arcsec
        img = survey["i"].psf().drawImage(nx=301, ny=301, scale=0.02, method="no_pixel")
        yy, xx = (np.mgrid[:301, :301] - 150) * 0.02
        a = img.array
        return img.calculateFWHM(), a[np.hypot(xx, yy) > 1.0].sum() / a.sum()

    (f0, w0), (f1, w1), (f2, w2) = wings(s), wings(m), wings(s.with_psf_beta(4.765))
    assert f1 == pytest.approx(f0, rel=0.03) and f2 == pytest.approx(f0, rel=0.03)
    assert w1 > 1.5 * w0 and w1 > w2  # the smaller beta, the broader the wings
    # the description keeps the profile; a Kolmogorov survey's stays as it was
    assert "psf_beta" not in s.to_dict()["bands"][0]
    assert Survey.from_dict(m.to_dict()) == m and Survey.from_dict(s.to_dict()) == s
    assert m.with_psf_beta(None) == s
    assert s.with_psf_beta(2)["i"].psf_beta == 2.0 and s.with_psf_beta(100)["i"].psf_beta == 100
    for bad in (1.5, 0.5, 101.0, 1e9, float("nan"), float("inf"), "2.5", True):
        with pytest.raises(ProbcatValueError, match="PSF beta"):
            s.with_psf_beta(bad)


def test_bad_bands_and_depth_raise_clear_errors():
    with pytest.raises(ProbcatValueError, match="unknown LSST band"):
        Survey.lsst(bands="iq")
    with pytest.raises(ProbcatValueError, match="positive"):
        Survey.lsst(years=0)
    with pytest.raises(ProbcatValueError, match="not finite"):  # counts overflow to inf
        Survey.lsst(bands="i", years=1.4e303)
    deep = Survey.lsst(bands="ugrizy", years=1e250)["u"]  # extreme, but every count finite
    assert math.isfinite(deep.mag_to_flux(0.0)) and math.isfinite(deep.noise_sigma)
    shallow = Survey.lsst(bands="i", years=1e-300)["i"]
    assert 0 < shallow.noise_sigma < 1e-140
    with pytest.raises(ProbcatValueError, match="not in survey"):
        Survey.lsst(bands="i")["g"]


def test_dict_round_trip():
    s = Survey.lsst(bands="gri", years=5)
    assert Survey.from_dict(s.to_dict()) == s
