"""The intergalactic medium's mean transmission (Madau 1995) and the CWW colours it dims."""

import numpy as np
import pytest

from probcat.simulate.igm import LYMAN_LIMIT_NM, madau_transmission


def test_transmission_is_one_redward_of_lyman_alpha_and_at_redshift_zero():
    lam = np.linspace(300, 1100, 801)
    assert np.all(madau_transmission(lam, 0.0) == 1.0)
    for z in (0.5, 2.0, 3.0):
        t = madau_transmission(lam, z)
        red = lam > 121.6 * (1 + z)
        assert np.all(t[red] == 1.0) and np.all(t[~red] < 1.0)


def test_the_forest_and_the_lyman_break_at_redshift_three():
    z = 3.0
    # just blueward of Lyman alpha, the Lyman-alpha forest's mean flux: 0.0036 (1+z)^3.46 is
    # 0.44 in optical depth; measured at z = 3 about 0.68 (Faucher-Giguere et al. 2008)
    assert madau_transmission([121.6 * (1 + z) - 0.01], z)[0] == pytest.approx(
        np.exp(-0.0036 * (1 + z) ** 3.46), rel=1e-4
    )
    assert 0.6 < madau_transmission([480.0], z)[0] < 0.75
    # the Lyman break: bluer than the source's Lyman limit (observed 365 nm) little is left
    below = np.linspace(310, LYMAN_LIMIT_NM * (1 + z) - 1, 50)
    assert madau_transmission(below, z).mean() < 0.3
    # from farther: never more light, and less where more gas lies on the way (bluer than
    # z = 3.5's Lyman beta, 462 nm, and between the two Lyman alphas, 486-547 nm); between
    # the two, the forest's depth at a wavelength is set by the absorbers there alone
    lam = np.linspace(310, 560, 251)
    t3, t35 = madau_transmission(lam, 3.0), madau_transmission(lam, 3.5)
    more = (lam < 461) | ((lam > 487) & (lam < 546))
    assert np.all(t35 <= t3) and np.all(t35[more] < t3[more])
    same = (lam > 463) & (lam < 486)
    np.testing.assert_allclose(t35[same], t3[same], rtol=1e-12)


def test_a_bad_redshift_is_an_error():
    for z in (-0.1, np.nan):
        with pytest.raises(ValueError, match="redshift"):
            madau_transmission([400.0], z)


def test_cww_colours_drop_out_of_u_at_high_redshift_only():
    """The CWW population's u - g: unchanged where the u band sees no absorption (z < 1.5),
    redder by a Lyman break at z = 3 (every template, by more than 0.4 mag)."""
    import galsim

    from probcat.simulate.prior import CWW_TEMPLATES, CWW_Z_GRID, _cww_colour_grid

    grid = _cww_colour_grid(tuple("ugi"))
    bp = {b: galsim.Bandpass(f"LSST_{b}.dat", "nm").withZeropoint("AB") for b in "ug"}
    for k, name in enumerate(CWW_TEMPLATES):
        sed = galsim.SED(f"CWW_{name}_ext.sed", "Ang", "flambda")
        for z, gap in ((1.0, 0.0), (1.4, 0.0), (3.0, 0.4)):
            red = sed.atRedshift(z)
            bare = red.calculateMagnitude(bp["u"]) - red.calculateMagnitude(bp["g"])
            n = int(np.argmin(np.abs(CWW_Z_GRID - z)))
            got = grid[k, n, 0] - grid[k, n, 1]
            if gap == 0.0:
                assert got == pytest.approx(bare, abs=1e-6), (name, z)
            else:
                assert got > bare + gap, (name, z, got, bare)
