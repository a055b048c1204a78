"""Photo-z: the truncated mixture, its summaries and qp form, the metrics (against their
definitions and qp), the estimator, the CLI and the RAIL stages, on tiny inputs."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.nets.photoz import PhotozNet, mixture_nll
from probcat.redshift import metrics as pzm
from probcat.redshift.estimator import PhotozEstimator, at_depth, known_redshifts, stamps_at
from probcat.redshift.pdf import (
    GRID,
    check_mixture,
    grid_pdf,
    quantiles,
    summaries,
    to_grid_ensemble,
    to_qp,
    truncated_cdf,
    truncated_mean,
    truncated_pdf,
)
from probcat.survey import Survey


def _mixture(n=4, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(5), n)
    m = rng.uniform(-0.2, 2.0, (n, 5))
    s = rng.uniform(0.05, 0.5, (n, 5))
    return w, m, s


def _density(w, m, s, z):
    return float(np.sum(w * stats.norm.pdf(z, m, s)))


def _integral(w, m, s, lo, hi, moment=0):
    """Numerical integral of z**moment times the (untruncated) mixture density."""
    return integrate.quad(lambda z: z**moment * _density(w, m, s, z), lo, hi)[0]


def test_mixture_nll_is_the_truncated_density():
    w, m, s = _mixture()
    for k in range(len(w)):
        mass = _integral(w[k], m[k], s[k], 0, np.inf)
        for z in (0.0, 0.3, 1.7):
            want = -math.log(_density(w[k], m[k], s[k], z) / mass)
            got = mixture_nll(
                *(torch.tensor(a[k : k + 1]) for a in (w, m, s)),
                torch.tensor([z], dtype=torch.float64),
            )
            assert float(got) == pytest.approx(want, rel=1e-6)
    # untruncated: the plain mixture log density
    got = mixture_nll(
        *(torch.tensor(a[:1]) for a in (w, m, s)), torch.tensor([0.5], dtype=torch.float64), False
    )
    assert float(got) == pytest.approx(-math.log(_density(w[0], m[0], s[0], 0.5)), rel=1e-6)


def test_truncated_pdf_cdf_mean_quantiles_against_quadrature():
    w, m, s = _mixture(3, seed=1)
    pdf = truncated_pdf(w, m, s, np.array([-0.1, 0.2, 1.0]))
    assert np.all(pdf[:, 0] == 0)
    for k in range(3):
        mass = _integral(w[k], m[k], s[k], 0, np.inf)
        assert pdf[k, 2] == pytest.approx(_density(w[k], m[k], s[k], 1.0) / mass, rel=1e-9)
        num = _integral(w[k], m[k], s[k], 0, 0.9) / mass
        assert truncated_cdf(w[k : k + 1], m[k : k + 1], s[k : k + 1], [0.9])[0] == pytest.approx(
            num, abs=1e-8
        )
        mean = _integral(w[k], m[k], s[k], 0, np.inf, moment=1) / mass
        assert truncated_mean(w, m, s)[k] == pytest.approx(mean, rel=1e-7)
    q = quantiles(w, m, s, 0.3)
    assert truncated_cdf(w, m, s, q) == pytest.approx(np.full(3, 0.3), abs=1e-9)
    levels = [0.02, 0.3, 0.9]  # several levels in one bisection: each as if alone
    qv = quantiles(w, m, s, levels)
    assert qv.shape == (3, 3) and np.array_equal(qv[:, 1], q)
    for j, lev in enumerate(levels):
        assert truncated_cdf(w, m, s, qv[:, j]) == pytest.approx(np.full(3, lev), abs=1e-9)


def test_pdf_blocks_and_quantiles_on_many_multimodal_mixtures():
    # more objects than one block of truncated_pdf, 40 narrow and wide components each:
    # pdf against the plain formula, quantiles against bisection on the exact CDF
    from probcat.redshift.pdf import PDF_ROWS, _grid_quantiles

    rng = np.random.default_rng(5)
    n, k = 2 * PDF_ROWS + 7, 40
    w = rng.random((n, k)) ** 4
    w /= w.sum(1, keepdims=True)
    m, s = rng.uniform(-0.3, 3.0, (n, k)), rng.uniform(0.005, 0.3, (n, k))
    mass = np.sum(w * stats.norm.cdf(m / s), axis=1)
    want = np.sum(w[:, None] * stats.norm.pdf(GRID[None, :, None], m[:, None], s[:, None]), 2)
    np.testing.assert_allclose(truncated_pdf(w, m, s), want / mass[:, None], rtol=1e-12)
    levels = [0.5, 0.02, 0.98]
    lo, hi = np.zeros((n, 3)), np.full((n, 3), 4.0)
    for _ in range(60):  # bisection: the slow, sure answer
        mid = 0.5 * (lo + hi)
        left = np.stack([truncated_cdf(w, m, s, mid[:, j]) for j in range(3)], 1) < levels
        lo, hi = np.where(left, mid, lo), np.where(left, hi, mid)
    got = quantiles(w, m, s, levels)
    np.testing.assert_allclose(got, 0.5 * (lo + hi), atol=1e-9)
    start = _grid_quantiles(truncated_pdf(w, m, s), GRID, levels)
    np.testing.assert_allclose(quantiles(w, m, s, levels, start=start), got, atol=1e-9)
    # a narrow mode on a wide one, from this start: Newton bounces for 13 steps; taking a
    # step only when it halves the one before converges in 8
    w1, m1, s1 = np.array([[1 / 3, 2 / 3]]), np.array([[1.54, 1.672]]), np.array([[0.036, 0.288]])
    q1 = quantiles(w1, m1, s1, 0.5, start=np.array([1.324]), iters=8)
    assert truncated_cdf(w1, m1, s1, q1)[0] == pytest.approx(0.5, abs=1e-12)
    # two modes: plain Newton from this start jumps to z = 22, then to -inf
    w2, m2, s2 = np.array([[0.5, 0.5]]), np.array([[1.55, 1.92]]), np.array([[0.05, 0.05]])
    q = quantiles(w2, m2, s2, 0.5, start=np.array([1.39]))
    assert truncated_cdf(w2, m2, s2, q)[0] == pytest.approx(0.5, abs=1e-12)


def test_summaries_of_a_narrow_gaussian():
    w = np.array([[1.0, 0, 0, 0, 0]])
    m = np.array([[1.2, 0.5, 0.5, 0.5, 0.5]])
    s = np.array([[0.05, 1, 1, 1, 1]])
    out = summaries(w, m, s)
    assert out["z_mode"][0] == pytest.approx(1.2)
    assert out["z_median"][0] == pytest.approx(1.2, abs=1e-9)
    assert out["z_mean"][0] == pytest.approx(1.2, abs=1e-9)
    assert out["z_lo68"][0] == pytest.approx(1.15, abs=1e-4)
    assert out["z_hi95"][0] == pytest.approx(1.3, abs=1e-4)


def test_check_mixture_rejects_bad_parameters():
    w, m, s = _mixture(1)
    with pytest.raises(ProbcatValueError, match="sum to one"):
        check_mixture(w * 2, m, s)
    with pytest.raises(ProbcatValueError, match="> 0"):
        check_mixture(w, m, -s)
    with pytest.raises(ProbcatValueError, match="shape"):
        check_mixture(w, m[:, :3], s)


def test_qp_mixmod_ensemble_round_trip(tmp_path):
    import qp

    from probcat.redshift.pdf import write_ensemble

    w, m, s = _mixture(3, seed=2)
    ens = to_qp(w, m, s, ancil={"row": np.arange(3)})
    assert ens.npdf == 3
    # qp holds the untruncated mixture: on z >= 0 it is the truncated one times its mass
    mass = np.sum(w * stats.norm.cdf(m / s), axis=1)
    np.testing.assert_allclose(ens.pdf(GRID), truncated_pdf(w, m, s) * mass[:, None], rtol=1e-6)
    path = write_ensemble(ens, tmp_path / "pz.hdf5")
    back = qp.read(str(path))
    np.testing.assert_allclose(back.objdata["means"], m)
    np.testing.assert_array_equal(back.ancil["row"], np.arange(3))
    # grid_pdf of a mixmod ensemble is probcat's truncated density, normalised on the grid
    g = grid_pdf(ens)
    np.testing.assert_allclose(np.trapezoid(g, GRID, axis=1), 1.0, rtol=1e-9)
    assert to_grid_ensemble(ens).npdf == 3


def test_point_metrics_follow_their_definitions():
    z_true = np.array([0.0, 0.0, 1.0, 1.0, 0.5, 0.5, 2.0, 2.0])
    z_phot = np.array([0.01, -0.01, 1.02, 0.98, 0.5, 0.53, 2.0, 2.9])
    e = (z_phot - z_true) / (1 + z_true)
    q25, q75 = np.percentile(e, [25, 75])
    sig = (q75 - q25) / 1.349
    out = pzm.point_metrics(z_phot, z_true)
    assert out["bias"] == pytest.approx(np.median(e))
    assert out["sigma_iqr"] == pytest.approx(sig)
    # |e| = 0.3 for the last object only, above max(3 sigma, 0.06)
    assert out["outlier_frac"] == pytest.approx(1 / 8)
    pdf = np.zeros((8, len(GRID)))
    pdf[np.arange(8), np.rint(np.clip(z_phot, 0, 3) * 100).astype(int)] = 100.0
    full = pzm.all_metrics(pdf, z_true)
    assert full["outlier_frac_015"] == pytest.approx(1 / 8)  # only |e| = 0.3 > 0.15


def _gauss_grid(mu, sd):
    p = stats.norm.pdf(GRID[None, :], np.asarray(mu)[:, None], np.asarray(sd)[:, None])
    return p / np.trapezoid(p, GRID, axis=1)[:, None]


def test_pit_and_statistics_agree_with_scipy_and_qp():
    from qp.metrics.pit import PIT

    rng = np.random.default_rng(3)
    n = 400
    z_true = rng.uniform(0.5, 2.0, n)
    mu = z_true + 0.1 * rng.standard_normal(n)
    pdf = _gauss_grid(mu, np.full(n, 0.1))
    pit = pzm.pit_values(pdf, z_true)
    np.testing.assert_allclose(pit, stats.norm.cdf(z_true, mu, 0.1), atol=2e-3)
    import qp

    qp_pit = PIT(qp.Ensemble(qp.interp, data={"xvals": GRID, "yvals": pdf}), z_true).pit_samps
    np.testing.assert_allclose(pit, qp_pit, atol=2e-3)
    st = pzm.pit_statistics(pdf, z_true)
    assert st["ks"] == pytest.approx(stats.kstest(qp_pit, "uniform").statistic, abs=1e-9)
    assert st["cvm"] == pytest.approx(stats.cramervonmises(qp_pit, "uniform").statistic, rel=1e-6)
    # calibrated PDFs: coverage near nominal; twice too narrow: far below
    assert pzm.coverage(pit, 0.6827) == pytest.approx(0.6827, abs=0.06)
    narrow = pzm.pit_values(_gauss_grid(mu, np.full(n, 0.05)), z_true)
    assert pzm.coverage(narrow, 0.6827) < 0.5


def test_cde_loss_matches_its_formula():
    rng = np.random.default_rng(4)
    z_true = rng.uniform(0.2, 2.5, 50)
    pdf = _gauss_grid(z_true + 0.05, np.full(50, 0.2))
    term1 = np.mean(np.trapezoid(pdf**2, GRID, axis=1))
    nn = np.array([np.argmin(np.abs(GRID - z)) for z in z_true])
    term2 = np.mean(pdf[np.arange(50), nn])
    assert pzm.cde_loss(pdf, z_true) == pytest.approx(term1 - 2 * term2, rel=1e-9)


def test_secondary_peak_recovery_on_hand_built_pdfs():
    z_true = np.array([0.5] * 20 + [2.0, 2.0])
    mu = np.r_[np.full(20, 0.5), 0.4, 0.4]  # two outliers: mode at 0.4, true 2.0
    pdf = _gauss_grid(mu, np.full(22, 0.03))
    second = _gauss_grid(np.array([2.0, 1.0]), np.array([0.03, 0.03]))
    pdf[20] = 0.7 * pdf[20] + 0.3 * second[0]  # secondary peak at the truth
    pdf[21] = 0.7 * pdf[21] + 0.3 * second[1]  # secondary peak elsewhere
    loc, weight = pzm.secondary_peaks(pdf[20:])
    assert loc == pytest.approx([2.0, 1.0], abs=0.011)
    assert weight == pytest.approx([0.3 / 0.7] * 2, rel=0.02)
    assert pzm.secondary_peak_recovery(pdf, z_true) == pytest.approx(0.5)
    # a fixed cut: at 0.15 the two are still outliers ((2.0 - 0.4) / 3 = 0.53); at 0.6 neither
    assert pzm.secondary_peak_recovery(pdf, z_true, cut=0.15) == pytest.approx(0.5)
    assert np.isnan(pzm.secondary_peak_recovery(pdf, z_true, cut=0.6))
    # a third outlier, 0.1 off in e_z: inside a 0.15 cut, outside the own one (0.06)
    z3 = np.r_[z_true, 1.0]
    pdf3 = np.vstack([pdf, _gauss_grid(np.array([1.2]), np.array([0.03]))])
    assert pzm.secondary_peak_recovery(pdf3, z3) == pytest.approx(1 / 3)
    assert pzm.secondary_peak_recovery(pdf3, z3, cut=0.15) == pytest.approx(0.5)


def test_binned_metrics_count_and_bootstrap():
    rng = np.random.default_rng(5)
    z = rng.uniform(0, 2, 300)
    out = pzm.binned(z + 0.01, z, z, np.array([0, 1, 2.0001]), boot=20)
    assert [r["n"] for r in out["bins"]] == [int((z < 1).sum()), int((z >= 1).sum())]
    assert all(r["bias"] > 0 and r["bias_err"] >= 0 for r in out["bins"])


# ---- estimator ------------------------------------------------------------------------------


def _net_on(net, stamps):
    """The network's (weights, means, sigmas) on hand-cut ``stamps``, read on its own device
    (a GPU's with ``pytest --default-device``), as float64 numpy arrays."""
    device = next(net.parameters()).device
    with torch.no_grad():
        return [t.double().cpu().numpy() for t in net(torch.from_numpy(stamps).to(device))]


def _rtol(net):
    """Float rounding between two passes of ``net`` over the same stamps in another layout or
    batch: 1e-5 on the CPU; cuDNN picks its algorithms per layout and batch size, and on an
    NVIDIA H200 in full float32 the means differed by 3e-5 to 7e-5, relative."""
    return 1e-5 if next(net.parameters()).device.type == "cpu" else 3e-4


@pytest.fixture
def tiny_estimator():
    torch.manual_seed(0)
    net = PhotozNet(bands=6, size=11, channels=4).eval()
    return PhotozEstimator(net, Survey.lsst(bands="ugrizy"), threads=1)


def test_stamps_at_takes_the_nearest_pixel():
    img = np.arange(2 * 9 * 9, dtype=np.float32).reshape(2, 9, 9)
    st = stamps_at(img, [4.4, 0.0], [4.6, 0.0], 3)
    np.testing.assert_array_equal(st[0], img[:, 4:7, 3:6])
    assert np.all(st[1][:, 0, :] == 0) and st[1][0, 1, 1] == img[0, 0, 0]


def test_estimator_gives_pdfs_for_galaxies_only(tiny_estimator):
    rng = np.random.default_rng(0)
    sigma = tiny_estimator.survey.noise_sigma
    image = (rng.standard_normal((6, 32, 32)) * sigma[:, None, None]).astype(np.float32)
    cat = FullCatalog(
        {
            "x": np.array([5.0, 20.2, 30.0]),
            "y": np.array([5.0, 11.7, 2.0]),
            "galaxy": np.array([True, False, True]),
        },
        (32, 32),
        tuple("ugrizy"),
    )
    res = tiny_estimator.estimate(image, cat)
    assert list(res.catalog["has_pz"]) == [True, False, True]
    assert np.isnan(res.catalog["z_mode"][1]) and np.all(np.isfinite(res.catalog["z_mode"][[0, 2]]))
    assert res.ensemble.npdf == 2 and list(res.ensemble.ancil["row"]) == [0, 2]
    # the same numbers as the network on hand-cut stamps
    st = stamps_at(image / sigma[:, None, None], [5.0, 30.0], [5.0, 2.0], 11)
    w, m, s = _net_on(tiny_estimator.net, st)
    np.testing.assert_allclose(res.means, m, rtol=_rtol(tiny_estimator.net))
    assert res.catalog["z_median"][0] == pytest.approx(
        summaries(w, m, s)["z_median"][0], rel=_rtol(tiny_estimator.net)
    )
    # everything, stars included
    assert tiny_estimator.estimate(image, cat, galaxies_only=False).ensemble.npdf == 3


def test_many_pdfs_show_a_progress_bar_and_the_same_numbers(tiny_estimator, monkeypatch, capsys):
    import probcat.redshift.estimator as estimator

    rng = np.random.default_rng(1)
    sigma = tiny_estimator.survey.noise_sigma
    image = (rng.standard_normal((6, 40, 40)) * sigma[:, None, None]).astype(np.float32)
    n = 300  # two chunks of the network's forward passes
    cat = FullCatalog({"x": rng.uniform(0, 39, n), "y": rng.uniform(0, 39, n),
                       "galaxy": np.ones(n, bool)}, (40, 40), tuple("ugrizy"))  # fmt: skip
    quiet = tiny_estimator.estimate(image, cat)
    assert "photo-z PDFs" not in capsys.readouterr().err
    tiny_estimator.estimate(image, cat, progress=True)  # below the objects a bar needs
    assert "photo-z PDFs" not in capsys.readouterr().err
    monkeypatch.setattr(estimator, "PROGRESS_MIN_OBJECTS", n)
    shown = tiny_estimator.estimate(image, cat, progress=True)
    err = capsys.readouterr().err
    assert "photo-z PDFs" in err and f"{n}/{n}" in err, err
    np.testing.assert_array_equal(shown.means, quiet.means)
    np.testing.assert_array_equal(shown.catalog["z_mode"], quiet.catalog["z_mode"])


def test_each_bands_masked_share_of_the_aperture_is_a_column_and_warned_of(tiny_estimator):
    """A band without data under a galaxy reads as no light (a dropout): the PDFs say how
    much of each band's 5-px aperture is masked, counted here pixel by pixel."""
    import warnings

    rng = np.random.default_rng(1)
    sigma = tiny_estimator.survey.noise_sigma
    image = (rng.standard_normal((6, 32, 40)) * sigma[:, None, None]).astype(np.float32)
    xy = np.array([[6.0, 6.0], [20.3, 15.6], [33.0, 25.0]])
    cat = FullCatalog({"x": xy[:, 0], "y": xy[:, 1], "galaxy": np.ones(3, bool)}, (32, 40),
                      tuple("ugrizy"))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing masked: zeros, no warning
        clean = tiny_estimator.estimate(image, cat).catalog["mask_fraction_band"]
    assert clean.shape == (3, 6) and not clean.any()
    image[0, :, :18] = np.nan  # the u band's left part, and one pixel of z near the second
    image[4, 16, 21] = np.nan
    with pytest.warns(UserWarning, match=r"photo-z: 1 PDF\(s\) read band\(s\) u where 50%"):
        res = tiny_estimator.estimate(image, cat)
    got = res.catalog["mask_fraction_band"]
    yy, xx = np.mgrid[:32, :40]
    for k, (x, y) in enumerate(xy):
        ap = (xx - x) ** 2 + (yy - y) ** 2 <= 25.0  # the 5-px aperture, as aperture_pixels
        for b in range(6):
            want = np.isnan(image[b])[ap].mean()
            assert got[k, b] == pytest.approx(want), (k, b)
    assert got[0, 0] == 1.0 and 0 < got[1, 0] < 0.5 and 0 < got[1, 4] < 0.05 and got[2].sum() == 0
    # the network still reads the masked pixels as zeros, as before
    assert np.all(np.isfinite(res.catalog["z_mode"]))


def test_near_masked_matches_a_brute_force_distance_and_ignores_the_images_edge():
    from probcat.redshift.estimator import near_masked

    rng = np.random.default_rng(4)
    masked = rng.random((30, 37)) < 0.004
    x, y = rng.uniform(-2, 38, 300), rng.uniform(-2, 31, 300)
    got = near_masked(masked, x, y, 4.5)
    my, mx = np.nonzero(masked)
    for k in range(300):
        cx, cy = np.floor(x[k] + 0.5), np.floor(y[k] + 0.5)
        assert got[k] == np.any((mx - cx) ** 2 + (my - cy) ** 2 <= 4.5**2), k
    assert 20 < got.sum() < 280  # both answers are tested
    assert not near_masked(None, x, y).any() and len(near_masked(masked, [], [])) == 0
    assert near_masked(masked, [-50.0], [200.0]).tolist() == [False]  # far off the image


def test_objects_on_masked_pixels_are_read_by_the_weights_trained_with_masks(
    tiny_estimator, monkeypatch
):
    """With weights that have a companion trained with bands masked, the objects with a
    pixel without data within MASKED_RADIUS (7 px) get that net's PDFs (and no dropout
    warning), the others the estimator's own; the column ``pz_masked_weights`` says which."""
    rng = np.random.default_rng(2)
    sigma = tiny_estimator.survey.noise_sigma
    image = (rng.standard_normal((6, 32, 40)) * sigma[:, None, None]).astype(np.float32)
    xy = np.array([[6.0, 6.0], [20.3, 15.6], [33.0, 25.0], [16.4, 5.0]])
    cat = FullCatalog({"x": xy[:, 0], "y": xy[:, 1], "galaxy": np.ones(4, bool)}, (32, 40),
                      tuple("ugrizy"))  # fmt: skip
    image[0, :, :10] = np.nan  # the u band under the first object, 7 px from the fourth
    image[3, 31, 39] = np.nan  # and one i pixel 8.5 px from the third (beyond the radius)
    torch.manual_seed(1)
    other = PhotozNet(bands=6, size=11, channels=4).eval()
    monkeypatch.setattr(PhotozEstimator, "masked_weights", property(lambda self: "other"))
    tiny_estimator._masked = other
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "photo-z")  # the companion reads the masked band
        res = tiny_estimator.estimate(image, cat)
    assert list(res.catalog["pz_masked_weights"]) == [True, False, False, True]
    assert res.catalog.meta["photoz"]["masked_weights"] == "other"
    x_sigma = np.nan_to_num(image) / sigma[:, None, None]
    st = stamps_at(x_sigma, xy[:, 0], xy[:, 1], 11)
    hit = [0, 3]
    np.testing.assert_allclose(res.means[hit], _net_on(other, st[hit])[1], rtol=_rtol(other))
    own = _net_on(tiny_estimator.net, st[1:3])[1]
    np.testing.assert_allclose(res.means[1:3], own, rtol=_rtol(tiny_estimator.net))
    # weights without a companion: their own net everywhere, the dropout warned of
    monkeypatch.setattr(PhotozEstimator, "masked_weights", property(lambda self: None))
    with pytest.warns(UserWarning, match=r"photo-z: 1 PDF\(s\) read band\(s\) u"):
        res = tiny_estimator.estimate(image, cat)
    assert not res.catalog["pz_masked_weights"].any()
    np.testing.assert_allclose(res.means[0], _net_on(tiny_estimator.net, st[:1])[1][0],
                               rtol=_rtol(tiny_estimator.net))  # fmt: skip


def test_the_shipped_photoz_weights_hand_objects_near_masked_pixels_to_their_companion():
    import probcat
    from probcat.api import read_input

    est = probcat.load("photoz_lsst_ugrizy", threads=1)
    assert est.masked_weights == "photoz_lsst_ugrizy_masked"
    other = est.masked_net()
    assert other.n_components == est.net.n_components and other is est.masked_net()
    assert probcat.load("photoz_lsst_ugrizy_seeing").masked_weights is None
    assert probcat.load("photoz_lsst_ugrizy_masked").masked_weights is None
    # a 40-px field with the u band's left 12 columns without data: objects 3 and 16 px
    # from them are read by the companion and by the shipped weights, as each reads them
    rng = np.random.default_rng(0)
    sigma = est.survey.noise_sigma
    image = (rng.standard_normal((6, 40, 40)) * sigma[:, None, None]).astype(np.float32)
    image[:, 18:23, 12:17] += 20 * sigma[:, None, None]
    image[:, 18:23, 26:31] += 20 * sigma[:, None, None]
    x, y = np.array([14.0, 28.0]), np.array([20.0, 20.0])
    clean = est.mixture(image, x, y)
    image[0, :, :12] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        got = est.mixture(image, x, y)
    with pytest.warns(UserWarning, match="NaN"):
        want_masked = probcat.load("photoz_lsst_ugrizy_masked", threads=1).mixture(image, x, y)
    with pytest.warns(UserWarning, match="NaN"):
        xs = read_input(image, est.survey, whiten=False)[0]
    want_own = est._mixture(xs, x, y)  # no mask given: the shipped weights for both
    for j in range(3):
        np.testing.assert_allclose(got[j][0], want_masked[j][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got[j][1], want_own[j][1], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got[j][1], clean[j][1], rtol=1e-4, atol=1e-6)  # 16 px away
    assert not np.allclose(got[1][0], want_own[1][0], atol=1e-3)  # a masked u band matters


def test_a_coadds_stamps_are_read_at_the_aperture_noise(tiny_estimator):
    """The pixel noise of a coadd of resampled visits is lower than its aperture sums'
    noise: the stamps are read at the pixel sigma times each band's aperture noise factor
    (recorded); white noise is read at its sigma, unchanged."""
    from probcat.background import aperture_noise_factor
    from probcat.simulate.noise import coadd_noise

    rng = np.random.default_rng(3)
    sigma = tiny_estimator.survey.noise_sigma
    coadd = np.stack([coadd_noise(rng, (160, 160), s, 6, "bilinear") for s in sigma])
    x, y = np.array([40.0, 101.3]), np.array([50.0, 120.6])
    cat = FullCatalog({"x": x, "y": y, "galaxy": np.ones(2, bool)}, (160, 160), tuple("ugrizy"))
    with pytest.warns(UserWarning, match="correlated"):
        res = tiny_estimator.estimate(coadd, cat, noise_sigma=sigma)
    f = np.array([aperture_noise_factor(b / s) for b, s in zip(coadd, sigma)])
    assert np.all(f > 1.1)  # bilinear resampling: 1.2-1.4
    np.testing.assert_allclose(res.catalog.meta["photoz"]["aperture_noise_factor"], f, atol=1e-4)
    st = stamps_at((coadd / (sigma * f)[:, None, None]).astype(np.float32), x, y, 11)
    np.testing.assert_allclose(
        res.means, _net_on(tiny_estimator.net, st)[1], rtol=_rtol(tiny_estimator.net)
    )
    with pytest.warns(UserWarning, match="correlated"):
        np.testing.assert_allclose(
            tiny_estimator.mixture(coadd, x, y, noise_sigma=sigma)[1], res.means, rtol=1e-6
        )
    white = (rng.standard_normal(coadd.shape) * sigma[:, None, None]).astype(np.float32)
    got = tiny_estimator.estimate(white, cat, noise_sigma=sigma)
    assert "aperture_noise_factor" not in got.catalog.meta["photoz"]
    st = stamps_at(white / sigma[:, None, None], x, y, 11)
    np.testing.assert_allclose(
        got.means, _net_on(tiny_estimator.net, st)[1], rtol=_rtol(tiny_estimator.net)
    )


def test_a_deeper_image_than_the_training_depths_is_warned_of(tmp_path, tiny_estimator):
    """The image's noise as a flux over the deepest training depth's, per band, through
    its zeropoint or pixel unit: 1 at the survey's depth, sqrt(2) for a 5-year file, the
    ratio asked for in electrons or nJy; below 0.9 a warning names the bands."""
    import warnings

    from probcat.io import write_image

    est = PhotozEstimator(tiny_estimator.net, Survey.lsst(bands="ugrizy"), threads=1,
                          manifest={"config": {"data": {"years": [10.0, 5.0]}}})  # fmt: skip
    assert est.training_depths() == (10.0, 5.0)
    sigma = est.survey.noise_sigma
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((6, 32, 32))
    cat = FullCatalog({"x": np.array([16.0]), "y": np.array([16.0])}, (32, 32), tuple("ugrizy"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none: the survey's own depth
        got = est.estimate((noise * sigma[:, None, None]).astype(np.float32), cat)
    np.testing.assert_allclose(got.catalog.meta["photoz"]["noise_over_training"], 1.0, atol=1e-4)
    five = Survey.lsst(bands="ugrizy", years=5.0)
    path = write_image(tmp_path / "y5.fits", (noise * five.noise_sigma[:, None, None]).astype(
        np.float32), five)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # shallower: within the training depths
        got = est.estimate(path, cat)
    np.testing.assert_allclose(got.catalog.meta["photoz"]["noise_over_training"], np.sqrt(2),
                               atol=1e-4)  # fmt: skip
    deep = sigma * np.array([1.0, 1.0, 0.8, 1.0, 1.0, 0.7])
    with pytest.warns(UserWarning, match=r"deeper than .* \(5-10 years\) in band\(s\) ry"):
        got = est.estimate((noise * deep[:, None, None]).astype(np.float32), cat,
                           noise_sigma=deep)  # fmt: skip
    np.testing.assert_allclose(got.catalog.meta["photoz"]["noise_over_training"],
                               deep / sigma, atol=1e-4)  # fmt: skip
    # the 5-year array without its zeropoint reads as electrons of the 10-year exposure
    # (deeper: warned, saying how it was read); with it, as the file
    five_img = (noise * five.noise_sigma[:, None, None]).astype(np.float32)
    with pytest.warns(UserWarning, match="read as electrons at the survey's zeropoint"):
        est.estimate(five_img, cat, noise_sigma=five.noise_sigma)
    zp = [b.zeropoint + 2.5 * np.log10(b.exposure_time) for b in five.bands]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = est.estimate(five_img, cat, noise_sigma=five.noise_sigma, zeropoint=zp)
    np.testing.assert_allclose(got.catalog.meta["photoz"]["noise_over_training"], np.sqrt(2),
                               atol=1e-4)  # fmt: skip
    # match_depth: the deeper bands read at the 10-year depth, not warned; the network's
    # input is at_depth's (signal x ratio, white noise of variance 1 - ratio^2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = est.estimate((noise * deep[:, None, None]).astype(np.float32), cat,
                           noise_sigma=deep, match_depth=True)  # fmt: skip
    assert got.catalog.meta["photoz"]["depth_matched"] is True
    xs = at_depth(noise.astype(np.float32), np.minimum(deep / sigma, 1.0))
    st = stamps_at(xs, [16.0], [16.0], 11)
    np.testing.assert_allclose(got.means, _net_on(est.net, st)[1], rtol=_rtol(est.net))
    # nJy: the 10-year noise of band i as a flux density, halved
    i = est.survey["i"]
    njy = i.noise_sigma / i.exposure_time * 10 ** (-0.4 * (i.zeropoint - 31.4)) / 2
    assert est.noise_over_training(np.full(6, njy), {"flux_unit": "nJy"})[3] == pytest.approx(0.5)
    assert np.isnan(est.noise_over_training(np.ones(6), {"flux_unit": "adu"})).all()


def _draw_truncated(w, m, s, rng):
    """One redshift from each row's mixture truncated at z = 0 (by rejection)."""
    out = np.empty(len(w))
    for i in range(len(w)):
        while True:
            k = rng.choice(len(w[i]), p=w[i] / w[i].sum())
            z = rng.normal(m[i, k], s[i, k])
            if z >= 0:
                out[i] = z
                break
    return out


def test_width_fit_recovers_the_factor_the_redshifts_were_drawn_with(tiny_estimator, tmp_path):
    """Redshifts drawn from each object's mixture with every width doubled: the fit finds
    about 2 (brute force: the NLL over the factor grid is least there), ``estimate``
    applies a factor to the widths and records it, and bad tables are refused."""
    from astropy.table import Table

    from probcat.errors import ProbcatFileError
    from probcat.nets.photoz import SD_SCALES

    rng = np.random.default_rng(5)
    sigma = tiny_estimator.survey.noise_sigma
    image = (rng.standard_normal((6, 48, 48)) * sigma[:, None, None]).astype(np.float32)
    x, y = rng.uniform(0, 47, 400), rng.uniform(0, 47, 400)
    w, m, s = tiny_estimator.mixture(image, x, y)
    z = _draw_truncated(w, m, 2.0 * s, rng)
    # objects off the image are left out (their stamps would be empty)
    known = Table(
        {"x": np.r_[x, -30.0, 500.0], "y": np.r_[y, 5.0, 5.0], "redshift": np.r_[z, 1, 1]}
    )
    k = tiny_estimator.fit_widths(image, known)
    nll = [
        float(mixture_nll(*(torch.as_tensor(a) for a in (w, m, s * f, z))).mean())
        for f in SD_SCALES
    ]
    assert k == pytest.approx(SD_SCALES[int(np.argmin(nll))]) and 1.7 < k < 2.3
    path = tmp_path / "specz.fits"
    known.write(path)
    assert tiny_estimator.fit_widths(image, path) == k  # a file reads the same
    kx, ky, kz = known_redshifts(known, None, (48, 48))
    assert len(kz) == 400 and kx.min() >= 0 and kx.max() <= 47
    cat = FullCatalog({"x": x[:5], "y": y[:5]}, (48, 48), tuple("ugrizy"))
    res = tiny_estimator.estimate(image, cat, width_scale=k)
    np.testing.assert_allclose(res.sds, s[:5] * k, rtol=1e-6)
    assert res.catalog.meta["photoz"]["width_scale"] == k
    assert "width_scale" not in tiny_estimator.estimate(image, cat).catalog.meta["photoz"]
    for bad, match in (
        ({"x": x, "y": y}, "column redshift"),
        ({"x": x, "y": y, "redshift": -z}, "finite and >= 0"),
        ({"ra": x, "dec": y, "z": z}, "no celestial WCS"),
        ({"x": x[:5], "y": y[:5], "z": z[:5]}, "5 of the 5 objects"),
        ({"id": x, "z": z}, "x, y or ra, dec"),
    ):
        with pytest.raises(ProbcatValueError, match=match):
            tiny_estimator.fit_widths(image, bad)
    with pytest.raises(ProbcatFileError, match="no such table"):
        tiny_estimator.fit_widths(image, tmp_path / "none.fits")
    for bad in (0, 1e-300, 1e308, float("inf")):  # the widths would vanish or overflow
        with pytest.raises(ProbcatValueError, match="positive number from 0.01 to 100"):
            tiny_estimator.estimate(image, cat, width_scale=bad)


def _star_field(survey, factors, rng, size=96):
    """Gaussian stars on a grid (18 px apart), each band's width its PSF's adaptive-moments
    sigma times ``factors[band]``, peaks far above the noise; in noise-sigma units."""
    from probcat.measure import _psf_moments_sigma

    yy, xx = np.mgrid[:size, :size].astype(float)
    pos = [
        (x0 + 0.3, y0 - 0.2) for x0 in range(14, size - 13, 18) for y0 in range(14, size - 13, 18)
    ]
    img = rng.standard_normal((len(survey.bands), size, size))
    for k, band in enumerate(survey.bands):
        s = _psf_moments_sigma(band) * factors[k]
        for x0, y0 in pos:
            img[k] += 400.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
    x, y = np.array(pos).T
    return img.astype(np.float32), x, y


def test_band_seeing_measures_each_bands_psf_against_the_i_bands(tiny_estimator):
    """Stars whose width in each band is the survey PSF's times a factor: the measured ratio
    relative to i is the factor over i's; a spread beyond 1.2 between bands warns, seeing
    wider in every band alike does not."""
    rng = np.random.default_rng(8)
    survey = tiny_estimator.survey
    for factors in ((1.0,) * 6, (1.3, 1.3, 1.0, 1.0, 0.8, 0.8), (1.25,) * 6):
        img, x, y = _star_field(survey, factors, rng)
        cat = FullCatalog({"x": x, "y": y}, img.shape[1:], tuple("ugrizy"))
        got = tiny_estimator.band_seeing(img, cat)
        np.testing.assert_allclose(got, np.array(factors) / factors[3], atol=0.03)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            res = tiny_estimator.estimate(img * survey.noise_sigma[:, None, None], cat)
        spread = max(factors) / min(factors) > 1.2
        assert any("seeing differs between the bands" in str(w.message) for w in said) == spread
        assert res.catalog.meta["photoz"]["band_seeing_ratio"] == pytest.approx(got, abs=1e-3)
    # too few sources to tell: no ratios, no warning
    cat = FullCatalog({"x": x[:5], "y": y[:5]}, img.shape[1:], tuple("ugrizy"))
    assert tiny_estimator.band_seeing(img, cat) == [None] * 6
    # sources faint in one band (peaks 3.2 sigma there, under 5): not measured in it
    faint = img.copy()
    faint[0] *= 0.008
    cat = FullCatalog({"x": x, "y": y}, img.shape[1:], tuple("ugrizy"))
    got = tiny_estimator.band_seeing(faint, cat)
    assert got[0] is None and all(v == pytest.approx(1.0, abs=0.03) for v in got[1:])


def test_at_depth_reads_an_image_at_a_larger_noise():
    """Signal times the ratio, white noise of variance 1 - ratio^2 added: unit noise again;
    a ratio of 1 leaves the band as it is; masked pixels stay 0; the same output twice."""
    rng = np.random.default_rng(2)
    signal = np.array([0.0, 5.0, 10.0])[:, None, None]
    xs = (rng.standard_normal((3, 300, 300)) + signal).astype(np.float32)
    mask = np.zeros((300, 300), bool)
    mask[:10] = True
    xs[:, mask] = 0.0
    ratio = np.array([1.0, 0.5, 0.8])
    out = at_depth(xs, ratio, mask)
    np.testing.assert_array_equal(out[0], xs[0])
    assert np.all(out[:, mask] == 0)
    for k in (1, 2):
        v = out[k][~mask]
        assert v.mean() == pytest.approx(ratio[k] * signal[k, 0, 0], abs=0.01)
        assert v.std() == pytest.approx(1.0, abs=0.01)
    np.testing.assert_array_equal(at_depth(xs, ratio, mask), out)
    for bad in ([0.0, 1.0, 1.0], [1.2, 1.0, 1.0]):
        with pytest.raises(ProbcatValueError):
            at_depth(xs, np.array(bad))


def test_estimator_rejects_wrong_band_count(tiny_estimator):
    cat = FullCatalog({"x": np.array([1.0]), "y": np.array([1.0])}, (16, 16), ("i",))
    with pytest.raises(ProbcatValueError):
        tiny_estimator.estimate(np.zeros((1, 16, 16), np.float32), cat)
    with pytest.raises(ProbcatValueError):
        tiny_estimator.mixture(np.zeros((6, 16, 16), np.float32), [np.nan], [1.0])


# ---- product: API, CLI, RAIL ----------------------------------------------------------------


def _ugrizy_image(path, seed=0, size=40):
    from probcat.catalog import make_wcs
    from probcat.io import write_image

    survey = Survey.lsst(bands="ugrizy")
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((6, size, size)) * survey.noise_sigma[:, None, None]
    img[:, 18:23, 18:23] += 30 * survey.noise_sigma[:, None, None]  # one bright blob
    wcs = make_wcs((size, size), survey.pixel_scale, 56.0, -30.0)
    return write_image(path, img.astype(np.float32), survey, wcs)


def test_photoz_api_detects_then_estimates(tmp_path, photoz_weights, weights):
    import probcat

    path = _ugrizy_image(tmp_path / "field.fits")
    res = probcat.photoz(
        path, estimator=str(photoz_weights), detector=str(weights), threads=1, threshold=0.0
    )
    cat = res.catalog
    assert len(cat) > 0
    assert {"z_mode", "z_lo68", "has_pz", "ra", "dec"} <= set(cat.colnames)
    np.testing.assert_array_equal(cat["has_pz"], np.asarray(cat["galaxy"], bool))
    n_pz = int(cat["has_pz"].sum())
    assert (res.ensemble.npdf if res.ensemble is not None else 0) == n_pz
    assert np.all(cat["z_lo68"][cat["has_pz"]] <= cat["z_median"][cat["has_pz"]])
    with pytest.raises(ProbcatValueError, match="not photo-z weights"):
        probcat.photoz(path, estimator=str(weights), detector=str(weights))
    # a mask (H, W) holds for every band: each band's share is the any-band mask_fraction
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True
    kw = {"estimator": str(photoz_weights), "detector": str(weights), "threshold": 0.0}
    with pytest.warns(UserWarning, match="photo-z: .* read band\\(s\\) ugrizy where"):
        cat = probcat.photoz(path, mask=mask, threads=1, **kw).catalog
    band = cat["mask_fraction_band"]
    assert band.shape == (len(cat), 6) and (band[:, 0] > 0.5).any()
    np.testing.assert_array_equal(band, np.repeat(cat["mask_fraction"][:, None], 6, axis=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_photoz_on_a_gpu_gives_the_cpus_pdfs(tmp_path, photoz_weights, weights):
    import probcat

    path = _ugrizy_image(tmp_path / "field.fits")
    det = probcat.load(str(weights), device="cpu")  # both: the same detections
    kw = {"estimator": str(photoz_weights), "detector": det, "threshold": 0.0}
    cpu = probcat.photoz(path, device="cpu", **kw).catalog
    gpu = probcat.photoz(path, device="cuda", **kw).catalog
    assert len(cpu) == len(gpu) > 0 and np.array_equal(cpu["has_pz"], gpu["has_pz"])
    for c in ("z_mean", "z_lo68", "z_hi95"):  # the same but for the GPU's float rounding
        np.testing.assert_allclose(gpu[c], cpu[c], atol=0.01, err_msg=c)


def test_photoz_cli_writes_catalog_and_qp_file(tmp_path, photoz_weights, weights, capsys):
    import qp

    from probcat.catalog import FullCatalog
    from probcat.cli import main

    path = _ugrizy_image(tmp_path / "field.fits")
    out = tmp_path / "cat.fits"
    args = ["photoz", str(path), "-o", str(out), "--weights", str(photoz_weights)]
    rc = main([*args, "--detector", str(weights), "--all-objects", "--threshold", "0"])
    assert rc == 0, capsys.readouterr().err
    cat = FullCatalog.read(out)
    ens = qp.read(str(tmp_path / "cat_pz.hdf5"))
    assert ens.npdf == len(cat) == int(np.sum(cat["has_pz"])) > 0
    np.testing.assert_array_equal(ens.ancil["row"], np.arange(len(cat)))
    assert "photo-z PDFs" in capsys.readouterr().out


def test_photoz_cli_says_how_many_pdfs_the_masked_weights_read(tmp_path, weights, capsys):
    from astropy.io import fits

    from probcat.catalog import FullCatalog
    from probcat.cli import main

    path = _ugrizy_image(tmp_path / "field.fits")
    with fits.open(path, mode="update") as hdul:  # the u band's left 12 columns: no data
        hdul["U"].data[:, :12] = np.nan
    out = tmp_path / "cat.fits"
    args = ["photoz", str(path), "-o", str(out), "--detector", str(weights)]  # shipped photo-z
    rc = main([*args, "--all-objects", "--threshold", "0"])
    assert rc == 0, capsys.readouterr().err
    cat = FullCatalog.read(out)
    near = np.asarray(cat["pz_masked_weights"], bool)
    assert near.any() and not near.all()
    assert np.all(np.asarray(cat["x"])[near] < 12 + 7.5)  # within 7 px of the masked columns
    msg = capsys.readouterr().out
    assert f"[{int(near.sum())} near pixels without data: photoz_lsst_ugrizy_masked]" in msg


def test_a_band_without_any_data_is_read_as_a_band_the_image_lacks(tmp_path):
    """A ugrizy file (or array) whose u plane is NaN everywhere gives the photo-z catalog
    and the six-band detections of the same file without u (both from the masked weights);
    with three bands without data, more than those were trained for, it is refused."""
    import probcat
    from probcat.io import read_image, write_image

    six = read_image(_ugrizy_image(tmp_path / "six.fits"))
    nan = six.image.copy()
    nan[0] = np.nan
    u_nan = write_image(tmp_path / "u_nan.fits", nan, Survey.lsst(bands="ugrizy"), six.wcs)
    grizy = write_image(tmp_path / "grizy.fits", six.image[1:], Survey.lsst(bands="grizy"),
                        six.wcs)  # fmt: skip
    got = {}
    for name, path in (("nan", u_nan), ("five", grizy)):
        with pytest.warns(UserWarning, match="photo-z: the image has no data in band u"):
            got[name] = probcat.photoz(path, threads=1, threshold=0.0, galaxies_only=False)
    a, b = got["nan"], got["five"]
    assert len(a.catalog) > 0 and a.catalog.meta["photoz"]["absent_bands"] == "u"
    assert a.catalog.meta["input"]["masked_weights"] == "detection_lsst_ugrizy_masked"
    for col in ("x", "y", "prob"):
        np.testing.assert_allclose(a.catalog[col], b.catalog[col], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-6, atol=1e-6)
    det = probcat.load("detection_lsst_ugrizy", threads=1)
    cats = []
    for path in (u_nan, grizy):
        with pytest.warns(UserWarning, match="the image has no data in band u: its detections "
                          "are from detection_lsst_ugrizy_masked"):  # fmt: skip
            cats.append(det.catalog(path, threshold=0.0))
    assert cats[0].meta["input"]["absent_bands"] == "u"
    assert cats[0].meta["input"]["masked_weights"] == "detection_lsst_ugrizy_masked"
    np.testing.assert_allclose(cats[0]["x"], cats[1]["x"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cats[0]["x"], a.catalog["x"], rtol=1e-6, atol=1e-6)
    with pytest.warns(UserWarning, match="the image has no data in band u"):  # an array too
        got = det.catalog(nan, threshold=0.0)
    np.testing.assert_allclose(got["x"], cats[0]["x"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["prob"], cats[0]["prob"], rtol=1e-6, atol=1e-6)
    nan[1:3] = np.nan  # u, g and r: more than the masked weights were trained for
    three = write_image(tmp_path / "ugr_nan.fits", nan, Survey.lsst(bands="ugrizy"), six.wcs)
    with pytest.raises(ProbcatValueError, match="^every pixel of band 0 is masked"):
        det.catalog(three)


def test_an_image_without_a_band_is_read_with_it_as_without_data(tmp_path, weights, capsys):
    """A grizy file for the shipped ugrizy weights (and six-band detector): u is a band
    without data everywhere, every PDF from the masked weights, exactly their mixtures on
    the image with u zero."""
    import probcat
    from probcat.api import read_input
    from probcat.io import read_image, write_image

    six = read_image(_ugrizy_image(tmp_path / "six.fits"))
    path = write_image(tmp_path / "grizy.fits", six.image[1:], Survey.lsst(bands="grizy"),
                       six.wcs)  # fmt: skip
    with pytest.warns(UserWarning, match="the image has no data in band u: its PDFs are from "
                      "photoz_lsst_ugrizy_masked.*and so does the detector, "
                      "detection_lsst_ugrizy_masked"):  # fmt: skip
        res = probcat.photoz(path, threads=1, threshold=0.0, galaxies_only=False)
    cat = res.catalog
    assert len(cat) > 0 and cat.meta["photoz"]["absent_bands"] == "u"
    # the detections are the masked detector's, on the image with u zero
    assert cat.meta["input"]["masked_weights"] == "detection_lsst_ugrizy_masked"
    assert np.all(cat["pz_masked_weights"])
    frac = np.asarray(cat["mask_fraction_band"])
    assert np.all(frac[:, 0] == 1.0) and not frac[:, 1:].any()
    assert not np.asarray(cat["mask_fraction"]).any()  # the detector's: no pixel lost
    x, y = np.asarray(cat["x"]), np.asarray(cat["y"])
    xs = read_input(six, Survey.lsst(bands="ugrizy"), whiten=False)[0]
    xs[0] = 0.0
    other = probcat.load("photoz_lsst_ugrizy_masked", threads=1)
    w, m, sd = other._mixture(xs, x, y)
    np.testing.assert_allclose(res.means, m, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.sds, sd, rtol=1e-4, atol=1e-6)
    with pytest.warns(UserWarning, match="has no data in band u"):  # and so does mixture()
        mix = probcat.load("photoz_lsst_ugrizy", threads=1).mixture(path, x, y)
    np.testing.assert_allclose(mix[1], m, rtol=1e-4, atol=1e-6)
    # a mask of one plane per band of the file: its planes are the file's bands
    mask = np.zeros((5, 40, 40), bool)
    mask[3, :, 30:] = True  # z
    with pytest.warns(UserWarning, match="has no data in band u"):
        got = probcat.photoz(path, threads=1, threshold=0.0, galaxies_only=False, mask=mask)
    frac = np.asarray(got.catalog["mask_fraction_band"])
    assert np.all(frac[:, 0] == 1.0) and frac[:, 4].any() and not frac[:, [1, 2, 3, 5]].any()
    # the command line says so
    from probcat.cli import main

    assert main(["photoz", str(path), "-o", str(tmp_path / "c.fits"), "--threads", "1"]) == 0
    got = capsys.readouterr()
    assert "[no data in band u: PDFs from photoz_lsst_ugrizy_masked]" in got.out
    assert "[detections by detection_lsst_ugrizy_masked: bands without data]" in got.out
    assert "warning: photo-z: the image has no data in band u" in got.err
    # weights without masked weights refuse it, as before, and so does an image with three
    # of the six bands absent
    with pytest.raises(ProbcatValueError, match="image bands grizy do not match"):
        probcat.photoz(path, estimator="photoz_lsst_ugrizy_seeing", detector=str(weights))
    riz = write_image(tmp_path / "riz.fits", six.image[2:5], Survey.lsst(bands="riz"), six.wcs)
    with pytest.raises(ProbcatValueError, match="image bands riz do not match"):
        probcat.photoz(riz, detector=str(weights))


def test_photoz_cli_reads_a_coadd_at_its_aperture_noise(tmp_path, photoz_weights, weights, capsys):
    """A ugrizy coadd (each band's noise resampled from 6 visits): the catalog records the
    bands' aperture noise factors, and the summary line says the PDFs were read at them."""
    from probcat.catalog import FullCatalog
    from probcat.cli import main
    from probcat.io import write_image
    from probcat.simulate.noise import coadd_noise

    survey = Survey.lsst(bands="ugrizy")
    rng = np.random.default_rng(8)
    img = np.stack(
        [coadd_noise(rng, (160, 160), b.noise_sigma, 6, "bilinear") for b in survey.bands]
    )
    img[:, 78:83, 78:83] += 30 * survey.noise_sigma[:, None, None]
    path = write_image(tmp_path / "coadd.fits", img.astype(np.float32), survey)
    out = tmp_path / "cat.fits"
    args = ["photoz", str(path), "-o", str(out), "--weights", str(photoz_weights)]
    rc = main([*args, "--detector", str(weights), "--all-objects", "--threshold", "0"])
    said = capsys.readouterr()
    assert rc == 0, said.err
    assert "warning: the noise of neighbouring pixels is correlated" in said.err  # the detector's
    factors = FullCatalog.read(out).meta["photoz"]["aperture_noise_factor"]
    assert len(factors) == 6 and min(factors) > 1.1
    assert f"PDFs read at {min(factors):.3g}-{max(factors):.3g}x" in said.out


def test_photoz_cli_zeropoint_option(tmp_path, photoz_weights, weights, capsys):
    """--zeropoint states the image's zeropoint (one, or one per band) for the depth check;
    a bad value or count is a one-line error."""
    from probcat.catalog import FullCatalog
    from probcat.cli import main

    path = _ugrizy_image(tmp_path / "field.fits")
    out = tmp_path / "cat.fits"
    base = ["photoz", str(path), "-o", str(out), "--weights", str(photoz_weights),
            "--detector", str(weights), "--threshold", "0", "--all-objects"]  # fmt: skip
    survey = Survey.lsst(bands="ugrizy")
    zp = [b.zeropoint + 2.5 * np.log10(b.exposure_time) - 2.5 * np.log10(0.5) for b in survey.bands]
    assert main([*base, "--zeropoint", ",".join(f"{v:.6f}" for v in zp)]) == 0
    ratio = FullCatalog.read(out).meta["photoz"]["noise_over_training"]
    np.testing.assert_allclose(ratio, 0.5, atol=1e-4)  # a flux of 1 is half the survey's
    assert "deeper than the weights" in capsys.readouterr().err
    for bad in ("abc", "27,28", "nan"):
        assert main([*base, "--zeropoint", bad]) != 0
        err = capsys.readouterr().err.strip()
        assert "zeropoint" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_photoz_cli_bad_input_is_one_line(tmp_path, photoz_weights, weights, capsys):
    from probcat.catalog import make_wcs
    from probcat.cli import main
    from probcat.io import write_image

    single = write_image(
        tmp_path / "i.fits",
        np.zeros((1, 20, 20), np.float32),
        Survey.lsst(bands="i"),
        make_wcs((20, 20), 0.2, 56.0, -30.0),
    )
    rc = main(["photoz", str(single), "--weights", str(photoz_weights), "--detector", str(weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("probcat: error:") and "\n" not in err and "bands" in err
    path = _ugrizy_image(tmp_path / "field.fits")
    rc = main(["photoz", str(path), "-o", str(path), "--weights", str(photoz_weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "overwrite" in err
    rc = main(["photoz", str(tmp_path / "missing.fits")])
    assert rc == 2 and "no such file" in capsys.readouterr().err
    out = tmp_path / "never.fits"
    rc = main(["photoz", str(path), "-o", str(out), "--weights", str(photoz_weights),
               "--seeing", "0"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "seeing must be" in err and "\n" not in err and not out.exists()
    # six planes without band metadata: the bands cannot be told apart
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros((6, 20, 20), np.float32)).writeto(tmp_path / "cube.fits")
    rc = main(["photoz", str(tmp_path / "cube.fits"), "--weights", str(photoz_weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no band names" in err and "BANDS = 'ugrizy'" in err and "\n" not in err
    # the same planes named by their BANDS keyword pass the band check (and fail on the
    # all-zero image's size check instead)
    hdu = fits.PrimaryHDU(np.zeros((6, 20, 20), np.float32))
    hdu.header["BANDS"] = "ugrizy"
    hdu.writeto(tmp_path / "named.fits")
    rc = main(["photoz", str(tmp_path / "named.fits"), "--weights", str(photoz_weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "band" not in err and "\n" not in err
    # named planes that are not the weights' bands
    hdu.header["BANDS"] = "grizyx"
    hdu.writeto(tmp_path / "other.fits")
    rc = main(["photoz", str(tmp_path / "other.fits"), "--weights", str(photoz_weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "image bands grizyx do not match the weights' bands ugrizy" in err


def test_photoz_fits_widths_to_known_redshifts(tmp_path, photoz_weights, weights, capsys):
    """probcat.photoz and probcat photoz --spec-z: the widths refit to objects of known
    redshift, the same factor as PhotozEstimator.fit_widths on the same image, applied and
    recorded; --width-scale applies a given one; bad tables stop before any output."""
    from astropy.table import Table

    import probcat
    from probcat.catalog import FullCatalog
    from probcat.cli import main

    path = _ugrizy_image(tmp_path / "field.fits")
    rng = np.random.default_rng(2)
    known = Table({"x": rng.uniform(2, 37, 30), "y": rng.uniform(2, 37, 30),
                   "redshift": rng.uniform(0.1, 2.0, 30)})  # fmt: skip
    known.write(tmp_path / "specz.fits")
    kw = dict(estimator=str(photoz_weights), detector=str(weights), threads=1, threshold=0.0,
              background="none", galaxies_only=False)  # fmt: skip
    est = probcat.load(str(photoz_weights), threads=1, kind="photoz")
    # an untrained net's widths are far off: the factor is the grid's end, and said to be
    with pytest.warns(UserWarning, match="end of the range"):
        k = est.fit_widths(path, known)
    with pytest.warns(UserWarning, match="end of the range"):
        res = probcat.photoz(path, known_redshifts=tmp_path / "specz.fits", **kw)
    assert res.catalog.meta["photoz"]["width_scale"] == k
    assert res.catalog.meta["photoz"]["width_fit_objects"] == 30
    plain = probcat.photoz(path, **kw)
    np.testing.assert_allclose(res.sds, plain.sds * k, rtol=1e-6)
    assert np.all(
        res.catalog["z_hi95"] - res.catalog["z_lo95"]
        != plain.catalog["z_hi95"] - plain.catalog["z_lo95"]
    )
    with pytest.raises(ProbcatValueError, match="not both"):
        probcat.photoz(path, known_redshifts=known, width_scale=2.0, **kw)
    out = tmp_path / "cat.fits"
    args = ["photoz", str(path), "--weights", str(photoz_weights), "--detector", str(weights),
            "--threshold", "0", "--background", "none", "--all-objects"]  # fmt: skip
    rc = main([*args, "-o", str(out), "--spec-z", str(tmp_path / "specz.fits")])
    assert rc == 0, capsys.readouterr().err
    assert f"PDF widths x{k:.3g}, fitted to 30 known redshifts" in capsys.readouterr().out
    assert FullCatalog.read(out).meta["photoz"]["width_scale"] == k
    rc = main([*args, "-o", str(tmp_path / "c2.fits"), "--width-scale", "1.5"])
    assert rc == 0 and "PDF widths x1.5]" in capsys.readouterr().out
    for extra, match in (
        (["--spec-z", str(tmp_path / "none.fits")], "no such table"),
        (["--spec-z", str(tmp_path / "specz.fits"), "--width-scale", "2"], "not both"),
        (["--width-scale", "-1"], "positive number"),
    ):
        never = tmp_path / "never.fits"
        rc = main([*args, "-o", str(never), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and match in err and "\n" not in err and not never.exists()


def test_rail_table_uses_limiting_magnitudes():
    from probcat.baselines.rail import NONDETECTION_MAG_ERR, rail_table

    survey = Survey.lsst(bands="ugrizy")
    flux = np.array([[1e5] * 6, [50.0, 1e5, 1e5, 1e5, 1e5, 1e5]])
    err = np.full((2, 6), 100.0)
    t = rail_table(flux, err, survey, redshift=[0.5, 1.0])
    u = survey.bands[0]
    assert t["mag_u_lsst"][0] == pytest.approx(u.flux_to_mag(1e5))
    assert t["mag_err_u_lsst"][0] == pytest.approx(2.5 / math.log(10) * 100 / 1e5)
    assert t["mag_u_lsst"][1] == pytest.approx(u.flux_to_mag(100.0))  # 1-sigma limit
    assert t["mag_err_u_lsst"][1] == NONDETECTION_MAG_ERR
    with pytest.raises(ProbcatValueError):
        rail_table(flux[:, :5], err[:, :5], survey)


def test_forced_photometry_is_the_aperture_sum_in_every_band():
    """The RAIL baselines' photometry: on planes of constant value c_k, every aperture
    inside the image holds c_k times its area (pi r^2, SEP's exact overlap) with error
    sigma_k sqrt(pi r^2); on a plane with one bright pixel, only apertures covering it see
    it, in their own band."""
    from probcat.baselines.rail import forced_photometry

    img = np.stack([np.full((40, 40), c) for c in (1.0, 2.0, 5.0)])
    img[2, 10, 30] += 100.0
    x, y = np.array([10.3, 30.0, 20.5]), np.array([12.7, 10.0, 25.0])
    flux, err = forced_photometry(img, x, y, [3.0, 4.0, 0.5], radius=4.0)
    area = np.pi * 16
    assert flux.shape == err.shape == (3, 3)
    np.testing.assert_allclose(flux[:, :2], area * np.array([[1.0, 2.0]] * 3), rtol=1e-6)
    np.testing.assert_allclose(flux[:, 2], 5 * area + np.array([0.0, 100.0, 0.0]), rtol=1e-6)
    np.testing.assert_allclose(err, np.sqrt(area) * np.array([[3.0, 4.0, 0.5]] * 3), rtol=1e-6)
    none = forced_photometry(img, [], [], [1.0, 1.0, 1.0])
    assert none[0].shape == none[1].shape == (0, 3)


def test_rail_stage_pair_runs_on_a_tiny_table(tmp_path, photoz_weights):
    import probcat
    from probcat.nets.photoz import SD_SCALES
    from probcat.redshift.rail import ProbcatPhotozEstimator, ProbcatPhotozInformer

    path = str(_ugrizy_image(tmp_path / "field.fits"))
    rng = np.random.default_rng(5)
    train = {  # twelve on the 40-px image, one off it
        "x": np.append(rng.uniform(2, 37, 12), 80.0),
        "y": np.append(rng.uniform(2, 37, 12), 20.0),
        "redshift": np.append(rng.uniform(0.2, 1.5, 12), 9.0),
    }

    def informer(name):
        return ProbcatPhotozInformer.make_stage(
            name=name,
            image=path,
            weights=str(photoz_weights),
            model=str(tmp_path / f"{name}.pkl"),
            hdf5_groupname="",
        )

    inf = informer("pc_inform")
    with pytest.warns(UserWarning, match="end of the range"):  # an untrained net
        inf.inform(train)
    model = inf.get_handle("model").data
    assert model["sd_scale"] in SD_SCALES and model["n_fitted"] == 12
    # the same fit as probcat photoz --spec-z: the off-image object left out
    on = {k: v[:12] for k, v in train.items()}
    with pytest.warns(UserWarning, match="end of the range"):
        assert model["sd_scale"] == probcat.load(str(photoz_weights)).fit_widths(path, on)
    few = {k: v[:3] for k, v in train.items()}
    with pytest.raises(ProbcatValueError, match="3 of the 3 objects of known redshift lie on"):
        informer("pc_few").inform(few)
    train = {k: v[:3] for k, v in train.items()}
    est = ProbcatPhotozEstimator.make_stage(
        name="pc_estimate",
        image=path,
        model=inf.get_handle("model"),
        hdf5_groupname="",
        output=str(tmp_path / "pc_out.hdf5"),
    )
    ens = est.estimate({"x": train["x"], "y": train["y"]}).data
    assert ens.npdf == 3
    w, m, sd = probcat.load(str(photoz_weights)).mixture(path, train["x"], train["y"])
    np.testing.assert_allclose(ens.objdata["stds"], sd * model["sd_scale"], rtol=1e-6)


def test_photoz_demo_writes_its_outputs(tmp_path, photoz_weights, weights, cache_dir, capsys):
    import qp

    from probcat.cli import main

    out = tmp_path / "demo"
    args = ["demo", "--bands", "ugrizy", "-o", str(out), "--size", "48", "--bank-size", "48"]
    args += ["--cache-dir", str(cache_dir), "--photoz-weights", str(photoz_weights)]
    rc = main([*args, "--weights", str(weights)])
    assert rc == 0, capsys.readouterr().err
    for name in ("field_ugrizy.fits", "truth.fits", "photoz_catalog.fits", "photoz.png"):
        assert (out / name).is_file(), name
    cat = FullCatalog.read(out / "photoz_catalog.fits")
    if int(np.sum(cat["has_pz"])):
        assert qp.read(str(out / "photoz_pz.hdf5")).npdf == int(np.sum(cat["has_pz"]))
    rc = main(["demo", "--bands", "gri", "-o", str(tmp_path / "x")])
    assert rc == 2 and "--bands" in capsys.readouterr().err


def test_benchmark_ensemble_sizes_reads_each_members_columns():
    """benchmarks/photoz.py's ensemble ablation: member 0 puts narrow components at the
    true z, member 1 at z + 0.5 (every object an outlier); pooled, the PIT values gather
    near 0.25."""
    from helpers import benchmark_module

    bench = benchmark_module("photoz")
    rng = np.random.default_rng(3)
    n, k = 400, 2
    z = rng.uniform(0.2, 2.0, n)
    mu = np.concatenate([np.repeat(z[:, None], k, 1), np.repeat(z[:, None] + 0.5, k, 1)], 1)
    mu[:, :k] += rng.normal(0, 0.01, (n, k)) * (1 + z[:, None])
    obj = {"z": z, "w": np.full((n, 2 * k), 0.25), "mu": mu, "sd": np.full((n, 2 * k), 0.02)}
    out = bench.ensemble_sizes(obj, np.ones(n, bool), members=2, components=k)
    one, both = out["first_m_members"]["1"], out["first_m_members"]["2"]
    assert out["members"] == 2 and set(out["first_m_members"]) == {"1", "2"}
    assert one["outlier_frac"] < 0.05 and 0.005 < one["sigma_iqr"] < 0.03
    assert out["sigma_iqr_each_member"][0] == pytest.approx(one["sigma_iqr"])
    assert out["sigma_iqr_each_member"][1] > 3 * one["sigma_iqr"]
    # pooled, half the mass lies at z + 0.5: PIT values pile up near 0.25, not uniform
    assert one["ks"] < 0.25 and both["ks"] > 0.4
    # the same columns read as one net in two orientations (orientation-major layout)
    sym = bench.ensemble_sizes(obj, np.ones(n, bool), members=1, components=k, symmetries=2)
    assert sym["first_s_orientations"]["1"] == one and sym["first_s_orientations"]["2"] == both
    assert sym["first_m_members"]["1"] == both and sym["sigma_iqr_each_member"] == [
        both["sigma_iqr"]
    ]


def test_paired_ratio_value_and_bootstrap():
    rng = np.random.default_rng(5)
    z = rng.uniform(0.1, 2.5, 3000)
    a = z + 0.02 * (1 + z) * rng.standard_normal(3000)
    b = z + 0.04 * (1 + z) * rng.standard_normal(3000)
    r = pzm.paired_ratio(a, b, z, "sigma_iqr", boot=300)
    exact = pzm.point_metrics(a, z)["sigma_iqr"] / pzm.point_metrics(b, z)["sigma_iqr"]
    assert r["value"] == pytest.approx(exact)
    lo68, hi68 = r["interval_68"]
    lo95, hi95 = r["interval_95"]
    assert lo95 < lo68 < exact < hi68 < hi95 and 0.4 < lo95 and hi95 < 0.6
    assert r["fraction_above_1"] == 0.0
    same = pzm.paired_ratio(a, a, z, "sigma_iqr", boot=50)  # paired: exactly 1 each time
    assert same["interval_95"] == [1.0, 1.0] and same["fraction_above_1"] == 0.0
    with pytest.raises(ProbcatValueError, match="one estimate per object"):
        pzm.paired_ratio(a, b[:-1], z)


def test_paired_ks_ratio_against_scipy():
    rng = np.random.default_rng(6)
    uniform = rng.uniform(size=2000)
    skewed = rng.uniform(size=2000) ** 1.3  # PIT of a biased code
    r = pzm.paired_ks_ratio(uniform, skewed, boot=200)
    exact = stats.kstest(uniform, "uniform").statistic / stats.kstest(skewed, "uniform").statistic
    assert r["value"] == pytest.approx(exact)
    assert r["interval_95"][0] < exact < r["interval_95"][1] and r["fraction_above_1"] == 0.0
    same = pzm.paired_ks_ratio(skewed, skewed, boot=20)
    assert same["interval_95"] == [1.0, 1.0]
    with pytest.raises(ProbcatValueError, match="one PIT value per object"):
        pzm.paired_ks_ratio(uniform, skewed[:-1])


def test_bpz_template_fit_and_zero_point_offsets_recover_known_values():
    from probcat.baselines.rail import broad_types, template_fit, zero_point_offsets

    rng = np.random.default_rng(3)
    n, t, f = 400, 5, 6
    model = rng.uniform(0.2, 2.0, (n, t, f))
    truth = rng.integers(0, t, n)
    amp = rng.uniform(0.5, 5.0, n)
    exact = amp[:, None] * model[np.arange(n), truth]
    err = 0.01 * exact
    best, fitted = template_fit(exact, err, model)
    np.testing.assert_array_equal(best, truth)
    np.testing.assert_allclose(fitted, exact, rtol=1e-10)
    # noisy fluxes: template and amplitude against a brute-force chi^2 scan of both
    noisy = exact * (1 + 0.05 * rng.standard_normal(exact.shape))
    best_n, fitted_n = template_fit(noisy, err, model)
    w = 1 / err[0] ** 2
    grid = np.linspace(0.0, 10.0, 20001)
    chi = np.array(
        [[(w * (noisy[0] - a * model[0, k]) ** 2).sum() for a in grid] for k in range(t)]
    )
    k_scan, a_scan = np.unravel_index(np.argmin(chi), chi.shape)
    assert best_n[0] == k_scan
    assert abs(fitted_n[0, 0] / model[0, k_scan, 0] - grid[a_scan]) <= 5e-4
    # zero points: observed magnitudes = model magnitudes + offset (band 2 is the reference)
    off_true = np.array([0.1, -0.05, 0.0, 0.2, 0.03, -0.3])
    observed = exact * 10 ** (-0.4 * off_true)
    observed[:20] *= 5.0  # a few failed fits: the median ignores them
    off = zero_point_offsets(observed, 0.1 * observed, exact, ref=2)
    np.testing.assert_allclose(off, off_true, atol=1e-12)
    # subtracting the offsets from the observed magnitudes gives back the model's
    corrected = -2.5 * np.log10(observed[20:]) - off
    np.testing.assert_allclose(corrected, -2.5 * np.log10(exact[20:]), atol=1e-10)
    # objects below the SNR cut do not count
    assert zero_point_offsets(observed, observed, exact, ref=2).tolist() == [0.0] * 6
    np.testing.assert_array_equal(broad_types([0, 1, 2, 3, 7], (1, 2, 5)), [0, 1, 1, 2, 2])


def test_a_weight_map_changes_detection_not_the_colours_the_pdfs_read(
    tmp_path, photoz_weights, weights
):
    """Per-band weight maps rescale each band differently: the detector reads the image at
    the median depth's noise, the photo-z PDFs the image as it is (its colours)."""
    from astropy.io import fits

    import probcat
    from probcat.io import read_image

    path = _ugrizy_image(tmp_path / "field.fits", size=64)
    w = np.ones((6, 64, 64), np.float32)
    w[2, :, :40] = 0.25  # the r band twice as noisy on the left
    w[5, 20:, :] = 0.5
    wpath = tmp_path / "field.weight.fits"
    fits.PrimaryHDU(w).writeto(wpath)
    plain, weighted = read_image(path), read_image(path, weight=wpath)
    opts = {"estimator": str(photoz_weights), "detector": str(weights), "threads": 1,
            "threshold": 0.0}  # fmt: skip
    res = probcat.photoz(weighted, **opts)
    assert res.catalog.meta["input"]["noise_map"][0] < 0.75  # r: half the median noise
    est = probcat.load(str(photoz_weights), threads=1, kind="photoz")
    a = est.estimate(plain, res.catalog, galaxies_only=False)
    b = est.estimate(weighted, res.catalog, galaxies_only=False)
    assert len(a.catalog) > 0
    np.testing.assert_array_equal(a.catalog["z_mode"], b.catalog["z_mode"])
    # probcat.photoz's own PDFs: those of the image as it is, for its (whitened) detections
    c = est.estimate(plain, res.catalog)
    np.testing.assert_array_equal(res.catalog["z_mode"], c.catalog["z_mode"])


def test_the_band_seeing_warning_names_the_seeing_weights_unless_they_are_read():
    from probcat.redshift.estimator import _warn_band_seeing

    ratios = [1.3, 1.3, 1.0, 1.0, 0.8, None]
    for trained, named in ((False, True), (True, False)):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            _warn_band_seeing(ratios, "ugrizy", trained)
        (w,) = said
        text = str(w.message)
        assert ("photoz_lsst_ugrizy_seeing" in text) == named and "--spec-z" in text
        assert "y -" in text  # a band without a measurement
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_band_seeing([1.1, 1.0, 1.0, 1.0, 1.0, 0.95], "ugrizy")  # within 1.2: silent
    # the shipped seeing weights say so in their config, which the estimator passes on
    import probcat

    data = probcat.load("photoz_lsst_ugrizy_seeing").manifest["config"]["data"]
    assert data["seeing_patterns"] > 0
    assert not probcat.load("photoz_lsst_ugrizy").manifest["config"]["data"].get("seeing_patterns")


def _split_bands(path, tmp_path, filters=None):
    """One FITS file per band of a probcat multi-band image, each band named by its
    ``FILTER`` keyword as ``filters`` spells it (default: the band letter); the files."""
    from astropy.io import fits

    out = []
    with fits.open(path) as hdul:
        for hdu in hdul[1:]:
            band = hdu.header["BAND"]
            header = hdu.header.copy()
            del header["BAND"], header["EXTNAME"]
            header["FILTER"] = (filters or {}).get(band, band)
            out.append(tmp_path / f"field_{band}.fits")
            fits.PrimaryHDU(hdu.data, header=header).writeto(out[-1])
    return out


def test_one_file_per_band_reads_as_the_multi_band_file(tmp_path, photoz_weights, weights, capsys):
    """read_bands stacks one file per band (bands from FILTER as surveys spell them, from
    BAND=FILE, or a dict) into the image the multi-band file gives; `probcat photoz` and
    `probcat detect` take the files and give the multi-band file's catalog; files that do
    not make one image are one-line errors."""
    from astropy.io import fits

    from probcat.catalog import FullCatalog
    from probcat.cli import main
    from probcat.io import read_bands, read_image

    path = _ugrizy_image(tmp_path / "whole.fits")
    spelled = {"u": "LSST-u", "g": "g", "r": "r DECam SDSS c0002 6415.0 1480.0", "i": "HSC-I",
               "z": "z_band", "y": "Y"}  # fmt: skip
    files = _split_bands(path, tmp_path, spelled)
    whole = read_image(path)
    shuffled = [files[k] for k in (5, 2, 0, 4, 1, 3)]  # any order: planes as given
    got = read_bands(shuffled)
    assert got.bands == tuple("yruzgi")
    order = [got.bands.index(b) for b in whole.bands]
    np.testing.assert_array_equal(got.image[order], whole.image)
    np.testing.assert_array_equal(got.noise_sigma[order], whole.noise_sigma)
    assert got.wcs.to_header() == whole.wcs.to_header()
    assert read_bands({b: f for b, f in zip("ugrizy", files)}).bands == tuple("ugrizy")
    assert read_bands([f"U={files[0]}", *files[1:]]).bands == tuple("ugrizy")  # U read as u
    named = read_bands([f"{b}={f}" for b, f in zip("ugrizy", files)])  # BAND=FILE over FILTER
    np.testing.assert_array_equal(named.image, whole.image)
    import probcat

    kw = {"estimator": str(photoz_weights), "detector": str(weights), "threads": 1, "threshold": 0}
    by_file = probcat.photoz(shuffled, **kw).catalog  # a list of files: one per band
    whole_z = probcat.photoz(path, **kw).catalog["z_mode"]
    np.testing.assert_array_equal(by_file["z_mode"], whole_z)
    one = probcat.photoz([str(path)], **kw).catalog  # a list of one multi-band file: read whole
    np.testing.assert_array_equal(one["z_mode"], whole_z)
    # the CLI: the same catalog from the six files as from the multi-band file
    common = ["--weights", str(photoz_weights), "--detector", str(weights), "--threshold", "0"]
    assert main(["photoz", str(path), "-o", str(tmp_path / "a.fits"), *common]) == 0
    assert main(["photoz", *map(str, shuffled), *common]) == 0  # default name: field_photoz
    capsys.readouterr()
    a, b = FullCatalog.read(tmp_path / "a.fits"), FullCatalog.read(tmp_path / "field_photoz.fits")
    assert len(a) > 0
    for col in ("x", "y", "prob", "z_mode", "ra"):
        np.testing.assert_array_equal(a[col], b[col])
    i_alone = ["detect", str(files[3]), "--weights", str(weights), "--threshold", "0"]
    assert main([*i_alone, "-o", str(tmp_path / "i.fits")]) == 0  # i-band weights: the i file
    assert main(["detect", *map(str, files), "--weights", str(weights), "--threshold", "0"]) == 0
    i_cat, six = (
        FullCatalog.read(tmp_path / "i.fits"),
        FullCatalog.read(tmp_path / "field_catalog.fits"),
    )
    np.testing.assert_array_equal(i_cat["x"], six["x"])
    capsys.readouterr()
    # files that do not make one image
    data = fits.getdata(files[0])
    header = fits.getheader(files[0])
    del header["FILTER"]
    fits.PrimaryHDU(data, header=header).writeto(tmp_path / "anon.fits")
    fits.PrimaryHDU(data[:30, :30], header=fits.getheader(files[0])).writeto(tmp_path / "cut.fits")
    moved = fits.getheader(files[0])
    moved["CRPIX1"] += 0.2  # a fifth of a pixel off the others' grid
    fits.PrimaryHDU(data, header=moved).writeto(tmp_path / "moved.fits")
    rest = list(map(str, files[1:]))
    cases = [
        ([str(tmp_path / "anon.fits"), *rest], "no band in its header"),
        ([str(files[1]), *rest], "band g given twice"),
        ([str(tmp_path / "cut.fits"), *rest], "the bands must share one pixel grid"),
        ([str(tmp_path / "moved.fits"), *rest], "0.2 px from those of"),
        ([str(path), *rest], "holds 6 planes"),
        (rest, "image bands grizy do not match the weights' bands ugrizy"),
        ([f"u={tmp_path / 'nope.fits'}", *rest], "nope.fits: no such file"),
    ]
    for args, message in cases:
        rc = main(["photoz", *args, "-o", str(tmp_path / "bad.fits"), *common])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and "\n" not in err, (args[0], err)
        assert not (tmp_path / "bad.fits").exists()
    ok = read_bands([f"u={tmp_path / 'anon.fits'}", *rest])  # the band given: read
    assert ok.bands == tuple("ugrizy")


def test_run_reads_a_fields_files_per_band_as_one_image(tmp_path, photoz_weights, weights,
                                                         capsys):  # fmt: skip
    """`probcat run` on a folder of per-band files (an LSST patch's six coadds, two patches)
    finds each patch's files (named alike but for the band that their headers name, on one
    grid) and makes one catalog per patch, as the multi-band file gives it: with photo-z
    (every band read) and with i-band weights (the i file); a file list says the same with
    u=FILE ...; files that do not name their bands, or differ otherwise, stay images of their
    own; bad band entries are one-line errors."""
    from astropy.io import fits

    from probcat.cli import main
    from probcat.scale import plan, read_list, run

    folder = tmp_path / "files"
    folder.mkdir()
    wholes, per_band = [], []
    for k in range(2):
        whole = _ugrizy_image(tmp_path / f"patch{k}.fits", seed=k)
        wholes.append(whole)
        (tmp_path / f"split{k}").mkdir()
        files = []
        for f in _split_bands(whole, tmp_path / f"split{k}"):
            files.append(f.rename(folder / f"patch{k}_{f.stem[-1]}.fits"))
        per_band.append(files)
    given = sorted(folder.glob("*.fits"))  # as a shell lists them: g, i, r, u, y, z
    kw = dict(weights=str(weights), threshold=0.0, workers=0, progress=False)
    s = run(given, tmp_path / "pz", photoz=str(photoz_weights), **kw)
    assert (s["images"], s["band_file_images"], s["failed"]) == (2, 2, [])
    ref = run(wholes, tmp_path / "ref", photoz=str(photoz_weights), **kw)
    assert ref["failed"] == []
    for k in range(2):
        a = FullCatalog.read(tmp_path / "pz" / f"patch{k}.parquet")
        b = FullCatalog.read(tmp_path / "ref" / f"patch{k}.parquet")
        assert len(a) == len(b) > 0 and a.meta["image"].startswith(f"u=patch{k}_u.fits, g=")
        for col in ("x", "y", "prob", "z_mode", "z_hi95", "ra"):
            np.testing.assert_array_equal(a[col], b[col])
    # i-band weights: the i file of each patch, as the i plane of the multi-band file
    run(given, tmp_path / "det", **kw)
    run(wholes, tmp_path / "det_ref", **kw)
    for k in range(2):
        a = FullCatalog.read(tmp_path / "det" / f"patch{k}.parquet")
        b = FullCatalog.read(tmp_path / "det_ref" / f"patch{k}.parquet")
        np.testing.assert_array_equal(a["prob"], b["prob"])
        assert a.meta["image"] == f"i=patch{k}_i.fits"
    # a file list: one line per patch, its files per band
    listing = tmp_path / "list.txt"
    listing.write_text("".join(
        " ".join(f"{f.stem[-1]}={f}" for f in files) + "\n" for files in per_band
    ))  # fmt: skip
    entries = read_list(listing)
    assert entries[0][0] == {f.stem[-1]: f for f in per_band[0]}
    jobs = plan(entries, tmp_path / "x")
    assert [j.output.name for j in jobs] == ["patch0.parquet", "patch1.parquet"]
    assert [j.label for j in jobs] == [f"patch{k} (u,g,r,i,z,y)" for k in range(2)]
    # the band a word inside the name (HSC), or a directory (the LSST Butler's layout)
    import shutil

    for f in per_band[1]:
        b = f.stem[-1]
        (tmp_path / "hsc").mkdir(exist_ok=True)
        (tmp_path / "butler" / b).mkdir(parents=True)
        shutil.copy(f, tmp_path / "hsc" / f"calexp-HSC-{b.upper()}-9813-3,4.fits")
        shutil.copy(f, tmp_path / "butler" / b / f"deepCoadd_9813_{b}_DC2.fits")
    found = {"calexp-HSC-9813-3,4": "hsc/*", "deepCoadd_9813_DC2": "butler/*/*"}
    for name, pattern in found.items():
        (job,) = plan(sorted(tmp_path.glob(pattern)), tmp_path / "x")
        assert (job.output.stem, len(job.bands)) == (name, 6)
    # not one image: a file whose header names no band, files named otherwise, one band alone
    data, header = fits.getdata(per_band[0][0]), fits.getheader(per_band[0][0])
    del header["FILTER"]
    fits.PrimaryHDU(data, header=header).writeto(folder / "patch0_q.fits")  # no band named
    other = fits.getheader(per_band[0][1])
    fits.PrimaryHDU(data, header=other).writeto(folder / "field_g.fits")  # another name
    fits.PrimaryHDU(data, header=other).writeto(folder / "single_g.fits")
    jobs = plan(sorted(folder.glob("*.fits")), tmp_path / "x")
    names = sorted(j.output.name for j in jobs)
    assert names == ["field_g.parquet", "patch0.parquet", "patch0_q.parquet", "patch1.parquet",
                     "single_g.parquet"]  # fmt: skip
    assert [len(j.bands) for j in jobs if j.bands] == [6, 6]
    # the CLI: a dry run names them; bad band entries are one-line errors
    assert main(["run", *map(str, given), "-o", str(tmp_path / "cli"), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "2 of them of one file per band" in said and "patch0 (u,g,r,i,z,y)" in said
    u, g = per_band[0][:2]
    bad = {
        f"u={u} hdu=all": "hdu=all",
        f"u={u} u={g}": "at most once",
        f"foo={u}": "not a band",
        f"U={u} u={g}": "band u given twice",
        f"u={u} {g}": "mask=PATH after files per band",  # not a band's file read as a mask
    }
    for line, message in bad.items():
        listing.write_text(line + "\n")
        rc = main(["run", str(listing), "-o", str(tmp_path / "bad"), "--dry-run"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and "\n" not in err, (line, err)


def test_an_image_whose_bands_seeing_differs_is_read_by_the_seeing_weights():
    """The shipped photo-z weights hand an image whose bands' measured seeing differs by
    more than 1.2 to photoz_lsst_ugrizy_seeing (their PDFs, said in meta and the
    warning); not an image under one seeing, nor where a width factor was fitted or given
    for the shipped weights."""
    import probcat

    est = probcat.load("photoz_lsst_ugrizy", threads=1)
    other = probcat.load("photoz_lsst_ugrizy_seeing", threads=1)
    assert est.seeing_weights == "photoz_lsst_ugrizy_seeing" and other.seeing_weights is None
    rng = np.random.default_rng(9)
    sigma = est.survey.noise_sigma[:, None, None]
    for factors, routed in (((1.15, 0.9, 1.2, 1.0, 0.85, 1.1), True), ((1.0,) * 6, False)):
        img, x, y = _star_field(est.survey, factors, rng)
        img = img * sigma
        cat = FullCatalog({"x": x, "y": y}, img.shape[1:], tuple("ugrizy"))
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            got = est.estimate(img, cat, galaxies_only=False)
        meta = got.catalog.meta["photoz"]
        assert (meta.get("seeing_weights") == "photoz_lsst_ugrizy_seeing") == routed
        assert any("PDFs are from photoz_lsst_ugrizy_seeing" in str(w.message)
                   for w in said) == routed  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # each network's own mixtures of the objects (no routing at this level)
            own = {e: e._mixture(e.read(img)[0], x, y) for e in (est, other)}
        want, not_want = (own[other], own[est]) if routed else (own[est], own[other])
        np.testing.assert_allclose(got.means, want[1], rtol=1e-5)
        np.testing.assert_allclose(got.sds, want[2], rtol=1e-5)
        assert not np.allclose(got.means, not_want[1], rtol=1e-3)
    # a width factor for these weights keeps them
    img, x, y = _star_field(est.survey, (1.15, 0.9, 1.2, 1.0, 0.85, 1.1), rng)
    cat = FullCatalog({"x": x, "y": y}, img.shape[1:], tuple("ugrizy"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wide = est.estimate(img * sigma, cat, galaxies_only=False, width_scale=1.5)
        plain = est._mixture(est.read(img * sigma)[0], x, y)
    assert "seeing_weights" not in wide.catalog.meta["photoz"]
    np.testing.assert_allclose(wide.means, plain[1], rtol=1e-5)
    np.testing.assert_allclose(wide.sds, 1.5 * plain[2], rtol=1e-5)
    # probcat.photoz likewise, on its detections: routed, unless widths are fitted or given
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = probcat.photoz(img * sigma, threads=1, galaxies_only=False)
        kept = probcat.photoz(img * sigma, threads=1, galaxies_only=False, width_scale=1.5)
    assert len(res.catalog) > 4
    assert res.catalog.meta["photoz"].get("seeing_weights") == "photoz_lsst_ugrizy_seeing"
    assert "seeing_weights" not in kept.catalog.meta["photoz"]
