import math

import galsim
import numpy as np
import pytest

from probcat.catalog import FullCatalog
from probcat.simulate.datasets import truth_from_isolated
from probcat.simulate.render import (
    aperture_mask,
    draw_stamp,
    galaxy_profile,
    render_direct,
    snr_eq12,
)


@pytest.mark.parametrize(
    "params",
    [
        (0.4, 0.2, 0.6, 0.8, 0.3, 0.0),  # pure disk
        (0.8, 0.3, 0.5, 0.7, 1.2, 0.4),  # bulge + disk
    ],
)
def test_isolated_flux_matches_catalog_magnitude(survey_i, params):
    band = survey_i["i"]
    mag = 23.0
    stamp = draw_stamp(galaxy_profile(*params), band.psf(), band.pixel_scale, 255, 0.2, -0.3)
    stamp *= band.mag_to_flux(mag)
    assert band.flux_to_mag(stamp.sum()) == pytest.approx(mag, abs=0.01 * 1.0857)  # 1% in flux
    assert stamp.sum() == pytest.approx(band.mag_to_flux(mag), rel=0.01)


def test_star_flux_matches_magnitude(survey_i):
    band = survey_i["i"]
    stamp = draw_stamp(
        galsim.DeltaFunction(), band.psf(), band.pixel_scale, 255
    ) * band.mag_to_flux(21)
    assert stamp.sum() == pytest.approx(band.mag_to_flux(21), rel=0.01)


def test_stamp_offset_moves_centroid():
    psf = galsim.Gaussian(fwhm=0.8)
    st = draw_stamp(galsim.DeltaFunction(), psf, 0.2, 41, 0.3, -0.2)
    yy, xx = np.mgrid[:41, :41]
    assert (st * xx).sum() / st.sum() == pytest.approx(20.3, abs=1e-3)
    assert (st * yy).sum() / st.sum() == pytest.approx(19.8, abs=1e-3)


def test_snr_eq12_hand_worked():
    # 81 pixel centres lie within 5 px of a pixel centre; unit intensity, sigma = 3
    stamp = np.ones((21, 21))
    assert aperture_mask(21, 0, 0, 5).sum() == 81
    assert snr_eq12(stamp, 0, 0, sigma=3.0) == pytest.approx(math.sqrt(81) / 3)
    # only the central pixel lit: SNR = I / sigma
    one = np.zeros((21, 21))
    one[10, 10] = 12.0
    assert snr_eq12(one, 0.0, 0.0, sigma=4.0) == pytest.approx(3.0)


def test_blendedness_hand_worked():
    a = np.zeros((1, 1, 10, 10))
    a[0, 0, 2, 2] = 1.0
    b = np.zeros((1, 1, 10, 10))
    b[0, 0, 7, 7] = 2.0
    iso = np.concatenate([a, b])
    t = truth_from_isolated(iso, [2, 7], [2, 7], [1.0])
    assert np.allclose(t["blendedness"], 0.0)  # no overlap
    # two identical overlapping sources: B = 1 - <I,I>/<I,2I> = 1/2
    iso2 = np.concatenate([a, a])
    assert np.allclose(truth_from_isolated(iso2, [2, 2], [2, 2], [1.0])["blendedness"], 0.5)
    # a faint source on a bright one: B = 1 - 1/(1+3) for the faint, 1 - 9/(9+3) for the bright
    c = a * 3.0
    t = truth_from_isolated(np.concatenate([a, c]), [2, 2], [2, 2], [1.0])
    assert t["blendedness"][:, 0] == pytest.approx([0.75, 0.25])
    assert t["snr"][:, 0] == pytest.approx([1.0, 3.0])


def test_render_direct_places_source(survey_i):
    cat = FullCatalog(
        {
            "x": np.array([10.25]),
            "y": np.array([5.5]),
            "galaxy": np.array([False]),
            "flux": np.array([[1e5]]),
        },
        (16, 24),
    )
    img = render_direct(cat, survey_i, (16, 24))
    yy, xx = np.mgrid[:16, :24]
    core = (np.abs(xx - 10.25) < 6) & (np.abs(yy - 5.5) < 6)
    w = img[0] * core
    assert (w * xx).sum() / w.sum() == pytest.approx(10.25, abs=0.05)
    assert (w * yy).sum() / w.sum() == pytest.approx(5.5, abs=0.05)
