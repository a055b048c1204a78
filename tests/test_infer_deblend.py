import math
import warnings

import galsim
import numpy as np
import pytest
import sep
import torch
from scipy import ndimage
from torch import nn

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.infer.deblend import (
    Models,
    aperture_fluxes,
    blendedness,
    crop_at,
    fit_amplitudes,
    fourier_shift,
    match_nearest,
    paste_models,
    reconstruct,
    sample_fluxes,
    source_images,
)
from probcat.measure import (
    adaptive_moments,
    fit_contamination_scale,
    flux_posterior,
    flux_sd,
    mixture_quantiles,
)

S = 21
SCALE = 0.2
PSF = galsim.Kolmogorov(fwhm=0.79)


def _galaxy(flux=5000.0, hlr=0.5, q=0.6):
    return galsim.Convolve(
        galsim.Exponential(half_light_radius=hlr).shear(q=q, beta=0.4 * galsim.radians), PSF
    ).withFlux(flux)


def _draw(profile, size, dx=0.0, dy=0.0):
    return profile.drawImage(nx=size, ny=size, scale=SCALE, offset=(dx, dy)).array.astype(
        np.float32
    )


class FixedGalaxy(nn.Module):
    """A stand-in deblender that always returns one centred galaxy (sigma units)."""

    def __init__(self, stamp, in_size=S):
        super().__init__()
        self.register_buffer("stamp", torch.from_numpy(stamp)[None, None])
        self.unused = nn.Parameter(torch.zeros(1))  # gives the module a device
        self.in_size, self.out_size = in_size, stamp.shape[-1]
        self.calls = 0

    def forward(self, x):
        self.calls += len(x)
        return self.stamp.expand(len(x), -1, -1, -1)


def _centroid(img):
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    return (img * xx).sum() / img.sum(), (img * yy).sum() / img.sum()


def test_fourier_shift_matches_direct_rendering_and_keeps_flux():
    g = _galaxy()
    centred = _draw(g, 41)
    for dx, dy in [(0.3, -0.45), (-0.5, 0.5)]:
        out = fourier_shift(
            torch.from_numpy(centred)[None, None].double(), torch.tensor([dx]), torch.tensor([dy])
        )[0, 0].numpy()
        ref = _draw(g, 41, dx, dy)
        assert abs(out.sum() - centred.sum()) < 1e-3 * centred.sum()
        assert np.abs(out - ref).max() < 1e-3 * ref.max()


def test_reconstruction_placed_at_subpixel_centroid_keeps_flux_and_centroid():
    g = _galaxy()
    sigma = np.array([2.0], np.float32)
    model = FixedGalaxy(_draw(g, 41) / sigma[0])  # large enough that nothing is cut off
    image = np.zeros((1, 40, 50), np.float32)
    x, y = 23.37, 17.81
    m = reconstruct(model, image, sigma, [x], [y], [True], amplitudes=False)
    assert (m.cx[0], m.cy[0]) == (23, 18)
    scene = paste_models(m, image.shape[1:])[0]
    direct = _draw(g, 41).sum()
    assert abs(scene.sum() - direct) < 1e-3 * direct
    cx, cy = _centroid(scene)
    assert abs(cx - x) < 0.01 and abs(cy - y) < 0.01


def test_one_encoding_per_distinct_pixel():
    sigma = np.ones(1, np.float32)
    model = FixedGalaxy(_draw(_galaxy(), S))
    image = np.zeros((1, 40, 40), np.float32)
    xs, ys = [10.1, 10.3, 9.8, 20.0], [10.0, 9.9, 10.2, 20.0]
    reconstruct(model, image, sigma, xs, ys, [True] * 4, passes=0)
    assert model.calls == 2  # (10, 10) three times, (20, 20) once
    model.calls = 0
    reconstruct(model, image, sigma, xs, ys, [True] * 4, passes=3)
    assert model.calls == 2 + 3 * 4  # then each galaxy once per refinement pass


def test_residual_images_remove_the_other_source():
    a, b = _galaxy(5000.0), _galaxy(8000.0, hlr=0.8, q=0.9)
    sa, sb = _draw(a, S, 0.2, -0.1), _draw(b, S, -0.3, 0.4)
    models = Models(
        np.stack([sa[None], sb[None]]),
        np.array([15, 22]),
        np.array([15, 18]),
        np.array([15.2, 21.7]),
        np.array([14.9, 18.4]),
        np.ones(2, bool),
    )
    image = paste_models(models, (32, 36))
    own = source_images(image, models, "subtract")
    np.testing.assert_allclose(own[0], sa[None], atol=1e-3)
    np.testing.assert_allclose(own[1], sb[None], atol=1e-3)
    flux = aperture_fluxes(image, models, [0, 1])
    for k, st in enumerate([sa, sb]):
        f, _, _ = sep.sum_circle(
            st.astype(np.float64),
            [S // 2 + models.x[k] - models.cx[k]],
            [S // 2 + models.y[k] - models.cy[k]],
            5.0,
            subpix=0,  # exact pixel overlaps, as the product measures
        )
        assert flux[k, 0] == pytest.approx(f[0], rel=1e-4)
    # without deblending the neighbour's light leaks into the aperture
    f_raw, _, _ = sep.sum_circle(image[0].astype(np.float64), [15.2], [14.9], 5.0, subpix=0)
    assert f_raw[0] > flux[0, 0] * 1.01
    # "data": all the light in the aperture; minus the source's own, the neighbour's share
    data = aperture_fluxes(image, models, [0, 1], method="data")
    assert data[0, 0] == pytest.approx(f_raw[0], rel=1e-6)
    both = aperture_fluxes(image, models, [0, 1], method=("subtract", "data"))  # one pasting
    np.testing.assert_array_equal(both["subtract"], flux)
    np.testing.assert_array_equal(both["data"], data)
    nb = np.zeros((32, 36), np.float32)
    nb[18 - S // 2 : 18 + S // 2 + 1, 22 - S // 2 : 22 + S // 2 + 1] = sb
    f_nb, _, _ = sep.sum_circle(nb.astype(np.float64), [15.2], [14.9], 5.0, subpix=0)
    assert data[0, 0] - flux[0, 0] == pytest.approx(f_nb[0], rel=1e-3, abs=1e-3)


def test_conserving_option_sums_to_the_data():
    rng = np.random.default_rng(0)
    a, b = _galaxy(5000.0), _galaxy(8000.0, hlr=0.8)
    models = Models(
        np.stack([_draw(a, S)[None], _draw(b, S)[None]]) * 0.8,
        np.array([15, 20]),
        np.array([15, 17]),
        np.array([15.0, 20.0]),
        np.array([15.0, 17.0]),
        np.ones(2, bool),
    )
    image = paste_models(models, (32, 36)) / 0.8 + rng.normal(0, 3, (1, 32, 36)).astype(np.float32)
    own = source_images(image, models, "conserve")
    back = Models(own, models.cx, models.cy, models.x, models.y, models.galaxy)
    total = paste_models(models, image.shape[1:])
    summed = paste_models(back, image.shape[1:])
    covered = total > 0
    np.testing.assert_allclose(summed[covered], image[covered], rtol=1e-4, atol=1e-3)
    # the subtract method's images do not: they keep each model's error
    sub = paste_models(
        Models(source_images(image, models, "subtract"), *list(vars(models).values())[1:]),
        image.shape[1:],
    )
    assert np.abs(sub[covered] - image[covered]).max() > 1.0


def test_measure_edge_and_empty_cases(tmp_path):
    from probcat.api import Deblender
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma.astype(np.float32)
    model = FixedGalaxy(_draw(_galaxy(2e5), S) / sigma[0])
    image = np.zeros((1, 30, 30), np.float32)
    empty = FullCatalog(
        {"x": np.zeros(0), "y": np.zeros(0), "galaxy": np.zeros(0, bool)}, (30, 30), ("i",)
    )
    db = Deblender(model, survey, device="cpu")
    res = db.measure(image, empty)
    assert len(res.catalog) == 0 and not res.model.any()
    models = reconstruct(model, image, sigma, [0.4], [29.2], [True], amplitudes=False)
    image[0] += paste_models(models, (30, 30))[0]
    edge = FullCatalog(
        {"x": np.array([0.4]), "y": np.array([29.2]), "galaxy": np.ones(1, bool)}, (30, 30), ("i",)
    )
    res = db.measure(image, edge, samples=[edge, edge])
    c = res.catalog
    assert bool(c["edge"][0]) and np.isfinite(c["flux_ap"][0, 0]) and c["flux_ap"][0, 0] > 0
    assert c["p_match"][0] == 1.0
    np.testing.assert_allclose(res.residual, 0.0, atol=1e-2 * image.max())
    with pytest.raises(ProbcatValueError, match="method"):
        db.measure(image, edge, method="magic")


def test_sample_fluxes_match_and_miss():
    # the deblender's models as they are (the stand-in's galaxy is put at every source, so
    # the methods and the neighbours' light differ; fitted amplitudes: the last test)
    def plain(*args, **kw):
        return sample_fluxes(*args, amplitudes=False, **kw)

    sigma = np.ones(1, np.float32)
    model = FixedGalaxy(_draw(_galaxy(), S))
    image = paste_models(
        reconstruct(
            model,
            np.zeros((1, 40, 40), np.float32),
            sigma,
            [20.0],
            [20.0],
            [True],
            amplitudes=False,
        ),  # fmt: skip
        (40, 40),
    )

    def cat(x, y):
        return {
            "x": np.array(x, float),
            "y": np.array(y, float),
            "galaxy": np.ones(len(x), bool),
        }  # noqa: E731

    vals = plain(
        model,
        image,
        sigma,
        [cat([20.0], [20.0]), cat([25.0], [25.0]), cat([20.0, 36.0], [20.0, 36.0])],
        [20.0],
        [20.0],
    )
    assert vals.shape == (1, 3, 1)
    assert np.isnan(vals[0, 1, 0])
    assert vals[0, 0, 0] == pytest.approx(vals[0, 2, 0], rel=1e-3)
    samples = [cat([20.0, 24.0], [20.0, 21.0]), cat([19.5], [20.2])]
    both = plain(model, image, sigma, samples, [20.0], [20.0], method=("subtract", "conserve"))
    for m in ("subtract", "conserve"):
        one = plain(model, image, sigma, samples, [20.0], [20.0], method=m)
        np.testing.assert_array_equal(both[m], one)
    assert not np.allclose(both["subtract"][0, 0], both["conserve"][0, 0])
    # with the neighbours' light: zero alone, positive with a neighbour, NaN where missed
    trio = [cat([20.0], [20.0]), cat([20.0, 24.0], [20.0, 21.0]), cat([30.0], [30.0])]
    v, c = plain(model, image, sigma, trio, [20.0], [20.0], contamination=True)
    np.testing.assert_array_equal(v, plain(model, image, sigma, trio, [20.0], [20.0]))
    assert c[0, 0, 0] == pytest.approx(0.0, abs=1e-3) and c[0, 1, 0] > 1.0
    assert np.isnan(c[0, 2, 0])


def test_match_nearest_brute_force():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 20, 15), rng.uniform(0, 20, 15)
    tx, ty = rng.uniform(0, 20, 30), rng.uniform(0, 20, 30)
    got = match_nearest(x, y, tx, ty, 2.0)
    for t in range(30):
        d = np.hypot(x - tx[t], y - ty[t])
        assert got[t] == (np.argmin(d) if d.min() <= 2.0 else -1)
    assert (match_nearest([], [], [1.0], [1.0], 2.0) == -1).all()
    assert match_nearest(x, y, [], [], 2.0).shape == (0,)
    # the radius is inclusive; an infinite one matches every target
    assert match_nearest([0.0, 5.0], [0.0, 0.0], [2.0, 2.0], [0.0, 1e-3], 2.0).tolist() == [0, -1]
    far = match_nearest(x, y, tx + 100.0, ty, np.inf)
    assert far.tolist() == [int(np.argmin(np.hypot(x - t - 100.0, y - u))) for t, u in zip(tx, ty)]


def test_mixture_quantiles_against_exact_cases():
    from scipy.stats import norm

    q = mixture_quantiles(np.array([3.0]), 2.0, [0.16, 0.5, 0.975])
    np.testing.assert_allclose(q, norm.ppf([0.16, 0.5, 0.975], 3.0, 2.0), atol=1e-8)
    means = np.array([0.0, 10.0])
    q50 = mixture_quantiles(means, 1.0, [0.5])
    assert q50[0] == pytest.approx(5.0, abs=1e-8)
    np.testing.assert_allclose(mixture_quantiles(means, 0.0, [0.5]), [5.0])
    mc = np.random.default_rng(0).normal(np.repeat([0.0, 4.0, 5.0], 200000), 1.5)
    np.testing.assert_allclose(
        mixture_quantiles(np.array([0.0, 4.0, 5.0]), 1.5, [0.16, 0.84]),
        np.quantile(mc, [0.16, 0.84]),
        atol=0.02,
    )


def test_flux_posterior_summary():
    vals = np.array([[1.0, 3.0, np.nan, 5.0], [np.nan] * 4])
    out = flux_posterior(vals, [0.0, 1.0])
    assert out["mean"][0] == pytest.approx(3.0)
    assert out["sd"][0] == pytest.approx(np.std([1.0, 3.0, 5.0]))
    assert out["p_match"][0] == pytest.approx(0.75)
    assert np.isnan(out["mean"][1]) and out["p_match"][1] == 0.0


def test_mixture_quantiles_with_one_sd_per_component():
    from scipy.stats import norm

    means, sds = np.array([0.0, 3.0, 4.0]), np.array([1.0, 0.5, 2.0])
    q = mixture_quantiles(means, sds, [0.025, 0.16, 0.5, 0.84, 0.975])
    cdf = np.mean([norm.cdf(q, m, s) for m, s in zip(means, sds)], 0)
    np.testing.assert_allclose(cdf, [0.025, 0.16, 0.5, 0.84, 0.975], atol=1e-9)


def test_flux_error_model_adds_the_neighbours_share_in_quadrature():
    np.testing.assert_allclose(flux_sd([3.0, 3.0], [0.0, 40.0], 0.1), [3.0, 5.0])
    np.testing.assert_allclose(flux_sd([3.0], [np.nan], 0.1), [3.0])  # no neighbour known
    assert flux_sd(3.0, [40.0], 0.0) == 3.0
    vals = np.array([[10.0, 12.0]])
    wide = flux_posterior(vals, 3.0, np.array([[40.0, 40.0]]), 0.1)
    narrow = flux_posterior(vals, 3.0)
    assert wide["sd"][0] == pytest.approx(np.sqrt(1.0 + 25.0))  # sample spread + model
    assert narrow["sd"][0] == pytest.approx(np.sqrt(1.0 + 9.0))
    assert wide["q975"][0] - wide["q025"][0] > narrow["q975"][0] - narrow["q025"][0]


def test_contamination_scale_is_recovered_from_simulated_errors():
    rng = np.random.default_rng(0)
    n, a_true, noise = 4000, 0.2, 5.0
    truth = rng.uniform(100, 1000, n)
    contam = rng.exponential(50.0, (n, 1)) * np.ones((1, 3))  # 3 samples, one neighbourhood
    err = rng.normal(0, np.sqrt(noise**2 + (a_true * contam[:, 0]) ** 2))
    values = (truth + err)[:, None] + rng.normal(0, 0.5, (n, 3))  # small detection spread
    values[::7, 2] = np.nan  # samples that miss the source
    got = fit_contamination_scale(values, truth, noise, contam)
    assert got == pytest.approx(a_true, rel=0.12)
    assert fit_contamination_scale(values, truth, noise, contam * 0) == 0.0  # nothing to scale
    post = flux_posterior(values, noise, contam, got)
    inside = (truth >= post["q16"]) & (truth <= post["q84"])
    assert inside.mean() == pytest.approx(0.683, abs=0.03)


def test_adaptive_moments_of_a_sheared_gaussian():
    img = (
        galsim.Gaussian(sigma=1.0)
        .shear(e1=0.3, e2=-0.1)
        .withFlux(100)
        .drawImage(nx=41, ny=41, scale=0.2, offset=(0.3, -0.2))
        .array
    )
    m = adaptive_moments(img[None, None], 20.3, 19.8)
    assert m["ok"][0]
    # sigma 1 arcsec = 5 px (the shear keeps the area), plus the pixel's 1/12 px^2
    assert m["T"][0] == pytest.approx(np.sqrt(25 + 1 / 12), rel=1e-3)
    assert m["e1"][0] == pytest.approx(0.3, abs=2e-3) and m["e2"][0] == pytest.approx(
        -0.1, abs=2e-3
    )


def test_crop_at_outside_is_zero():
    img = np.arange(25, dtype=np.float32).reshape(1, 5, 5)
    c = crop_at(img, 0, 0, 3)
    np.testing.assert_array_equal(c[0], [[0, 0, 0], [0, 0, 1], [0, 5, 6]])
    assert not crop_at(img, 40, 40, 3).any()


def test_measure_widens_flux_errors_by_the_manifests_scale_of_the_neighbours_light():
    from probcat.api import Deblender
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma.astype(np.float32)
    model = FixedGalaxy(_draw(_galaxy(2e5), S) / sigma[0])
    xs, ys = [12.0, 19.0], [15.0, 15.0]
    image = paste_models(reconstruct(model, np.zeros((1, 30, 30)), sigma, xs, ys, [True] * 2,
                                     amplitudes=False), (30, 30))  # fmt: skip
    cat = FullCatalog(
        {"x": np.array(xs), "y": np.array(ys), "galaxy": np.ones(2, bool)}, (30, 30), ("i",)
    )
    plain = Deblender(model, survey, device="cpu").measure(image, cat, samples=[cat]).catalog
    noise = float(sigma[0]) * np.sqrt(np.pi * 25.0)
    np.testing.assert_allclose(plain["flux_ap_err"][:, 0], noise)  # no record: noise only
    raw = aperture_fluxes(image, reconstruct(model, image, sigma, xs, ys, [True] * 2), [0, 1],
                          method="data")[:, 0]  # fmt: skip
    # an older record (one scale, fitted for subtract) serves both methods; a newer one
    # has a scale per method, and measure uses its method's
    for record, want in (
        ({"scale": 0.1}, {"subtract": 0.1, "conserve": 0.1}),
        ({"scale": 0.1, "scales": {"subtract": 0.1, "conserve": 0.3}},
         {"subtract": 0.1, "conserve": 0.3}),
    ):  # fmt: skip
        db = Deblender(model, survey, {"flux_error": record}, device="cpu")
        assert db.flux_error_scale() == want["conserve"]  # the default method's
        for method, scale in want.items():
            assert db.flux_error_scale(method) == scale
            got = db.measure(image, cat, samples=[cat], method=method).catalog
            contam = raw - got["flux_ap"][:, 0]
            assert np.all(contam > 0.05 * got["flux_ap"][:, 0])  # each has its neighbour's wing
            np.testing.assert_allclose(
                got["flux_ap_err"][:, 0], np.hypot(noise, scale * contam), rtol=1e-6
            )
            # one sample: the posterior's sd is the error model's
            np.testing.assert_allclose(got["flux_sd"][:, 0], got["flux_ap_err"][:, 0], rtol=1e-6)


def test_measure_shares_the_light_in_proportion_to_the_models_by_default():
    """The product's default is ``conserve``: in a scene twice as bright as the models,
    each source gets twice its model (the data shared in proportion), where ``subtract``
    also hands it the excess of its neighbour's wing."""
    from probcat.api import DEFAULT_METHOD, Deblender
    from probcat.survey import Survey

    assert DEFAULT_METHOD == "conserve"
    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma.astype(np.float32)
    model = FixedGalaxy(_draw(_galaxy(2e5), S) / sigma[0])
    xs, ys = [12.0, 19.0], [15.0, 15.0]
    models = reconstruct(model, np.zeros((1, 30, 30)), sigma, xs, ys, [True] * 2, amplitudes=False)
    image = 2.0 * paste_models(models, (30, 30))
    cat = FullCatalog(
        {"x": np.array(xs), "y": np.array(ys), "galaxy": np.ones(2, bool)}, (30, 30), ("i",)
    )
    db = Deblender(model, survey, device="cpu")
    default = db.measure(image, cat, passes=0).catalog["flux_ap"][:, 0]
    own = aperture_fluxes(paste_models(models, (30, 30)), models, [0, 1], method="conserve")
    np.testing.assert_allclose(default, 2.0 * own[:, 0], rtol=1e-5)
    # the deblender's models as they are: subtract leaves each source the excess of its
    # neighbour's wing (the data are twice the models)
    sub = db.measure(image, cat, passes=0, method="subtract", amplitudes=False).catalog
    assert np.all(sub["flux_ap"][:, 0] > default * 1.02)
    assert sub.meta["deblend"]["method"] == "subtract"  # recorded with the catalogue
    assert sub.meta["deblend"]["amplitudes_fitted"] is False
    # amplitudes fitted (the default): the models are twice as bright (but for the weak pull
    # towards 1), and subtract gives what conserve gives
    fitted = db.measure(image, cat, passes=0, method="subtract").catalog["flux_ap"][:, 0]
    np.testing.assert_allclose(fitted, default, rtol=1e-3)
    with pytest.raises(ProbcatValueError, match="amplitudes must be True or False"):
        db.measure(image, cat, amplitudes="yes")
    assert db.measure(image, cat).catalog.meta["deblend"]["method"] == "conserve"


def _brute_refine(model, image, sigma, x, y, stamps, group, active, passes, damping):
    """refine_stamps written out galaxy by galaxy: each active galaxy's crop is the image
    minus every other galaxy of its group, pasted one at a time."""
    from probcat.simulate.bank import paste

    sig = np.asarray(sigma, np.float32).reshape(-1, 1, 1)
    cx, cy = np.floor(np.asarray(x) + 0.5).astype(int), np.floor(np.asarray(y) + 0.5).astype(int)
    g = stamps.copy()
    for _ in range(passes):
        new = g.copy()
        for i in np.flatnonzero(active):
            rest = image.copy()
            for j in range(len(x)):
                if j != i and group[j] == group[i]:
                    paste(rest, -g[j], int(cx[j]), int(cy[j]))
            crop = crop_at(rest, cx[i], cy[i], model.in_size) / sig
            with torch.no_grad():
                rec = model(torch.from_numpy(crop[None]))
            shifted = fourier_shift(rec, torch.tensor([x[i] - cx[i]]), torch.tensor([y[i] - cy[i]]))
            new[i] = (1 - damping) * g[i] + damping * shifted[0].numpy() * sig
        g = new
    return g


class CropDeblender(nn.Module):
    """A stand-in deblender whose output is its input: the crop, zero-padded to the output
    side, clipped at zero and tapered towards the edges (a reconstruction that depends on
    every input pixel, unlike :class:`FixedGalaxy`)."""

    def __init__(self, in_size=21, out_size=25):
        super().__init__()
        self.in_size, self.out_size = in_size, out_size
        r = torch.arange(out_size) - out_size // 2
        self.register_buffer("taper", torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / 60.0))
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        p = (self.out_size - self.in_size) // 2
        return torch.relu(nn.functional.pad(x, (p, p, p, p))) * self.taper


def test_refine_stamps_matches_a_brute_force_loop():
    from probcat.infer.deblend import galaxy_stamps, refine_stamps

    model = CropDeblender()
    sigma = np.array([3.0], np.float32)
    rng = np.random.default_rng(5)
    image = (rng.standard_normal((1, 64, 64)) * 3.0).astype(np.float32)
    image[0] += 200.0 * _draw(_galaxy(), 64, 2.0, -1.0) + 150.0 * _draw(_galaxy(), 64, -4.0, 3.0)
    # two groups (e.g. posterior samples) of overlapping galaxies; one galaxy held fixed
    x = np.array([33.6, 27.9, 40.2, 33.1, 28.4])
    y = np.array([30.8, 35.2, 33.0, 31.3, 34.6])
    group = np.array([0, 0, 0, 1, 1])
    active = np.array([True, True, False, True, True])
    start = galaxy_stamps(model, image, sigma, x, y)
    got = refine_stamps(
        model, image, sigma, x, y, start, group=group, active=active, passes=2, damping=0.5
    )
    ref = _brute_refine(model, image, sigma, x, y, start, group, active, 2, 0.5)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_array_equal(got[2], start[2])  # not active: untouched
    assert not np.allclose(got[0], start[0])  # active ones moved
    np.testing.assert_array_equal(refine_stamps(model, image, sigma, x, y, start, passes=0), start)
    with pytest.raises(ProbcatValueError, match="damping"):
        refine_stamps(model, image, sigma, x, y, start, passes=1, damping=0.0)


def test_aperture_fluxes_equal_full_image_photometry():
    """Each source's aperture flux on its own light equals sep's aperture on the whole
    image with every other model subtracted (``subtract``) or with the data shared in
    proportion to the models (``conserve``): apertures inside the image and across its
    edge (only pixels inside the image count)."""
    rng = np.random.default_rng(2)
    n = 6
    stamps = np.stack(
        [_draw(_galaxy(rng.uniform(2e3, 9e3), rng.uniform(0.3, 0.8)), S, *rng.uniform(-0.5, 0.5, 2))
         for _ in range(n)]
    )[:, None]  # fmt: skip
    x = np.array([10.3, 14.1, 25.0, 1.2, 38.6, 20.4])
    y = np.array([12.2, 15.7, 30.3, 20.0, 39.1, 0.3])
    cx, cy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    models = Models(stamps, cx, cy, x, y, np.ones(n, bool))
    image = paste_models(models, (40, 40)) + rng.normal(0, 5.0, (1, 40, 40)).astype(np.float32)
    got = aperture_fluxes(image, models, np.arange(n), method=("subtract", "conserve", "data"))
    total = paste_models(models, (40, 40))
    for j in range(n):
        own = total - paste_models(models, (40, 40), skip=j)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = {
                "subtract": image - (total - own),
                "conserve": np.where(total > 0, image * own / total, 0.0),
                "data": image,
            }
        for m, light in shares.items():
            f, _, _ = sep.sum_circle(light[0].astype(np.float64), [x[j]], [y[j]], 5.0, subpix=0)
            assert got[m][j, 0] == pytest.approx(f[0], rel=1e-4, abs=1e-2), (m, j)


def test_blendedness_is_the_papers_definition_over_whole_images():
    """Each model's blendedness equals eqs. 13-14 of paper 000 computed on whole images
    (the source pasted alone, the scene with every source; the truth catalogs' own code,
    ``truth_from_isolated``, too): sources across the image's edge count their pixels on it
    only; an isolated source reads 0; a model without light on the image NaN."""
    from probcat.simulate.datasets import truth_from_isolated

    rng = np.random.default_rng(4)
    models = _random_scene(rng, n=7, size=36)
    models.x[0], models.y[0] = 0.6, 17.2  # across the left edge
    models.cx[0], models.cy[0] = 1, 17
    shape = (36, 40)
    total = paste_models(models, shape).astype(np.float64)
    got = blendedness(models, total)
    alone = np.stack([paste_models(models.select([i]), shape) for i in range(len(models))])
    alone = alone.astype(np.float64)
    for i in range(len(models)):
        want = 1 - (alone[i] ** 2).sum() / (alone[i] * total).sum()
        assert got[i, 0] == pytest.approx(want, rel=1e-6, abs=1e-9)
    ref = truth_from_isolated(alone, models.x, models.y, np.ones(1))["blendedness"]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    assert got.min() > 0.0 and got.max() < 1.0  # seven sources on 36x40 px all overlap
    one = models.select([3])
    assert blendedness(one, paste_models(one, shape))[0, 0] == 0.0
    # a neighbour's light beyond the stamps (a wing) counts as the scene's
    wing = np.zeros((1, *shape))
    wing[0, int(one.cy[0]) - 2 : int(one.cy[0]) + 3, int(one.cx[0]) - 2 : int(one.cx[0]) + 3] = 5
    assert blendedness(one, paste_models(one, shape) + wing)[0, 0] > 0.0
    dark = models.select([1, 2])
    dark.stamps = dark.stamps.copy()
    dark.stamps[0] = 0.0  # an amplitude fitted to 0
    dark.cx[1], dark.cy[1] = -40, 10  # a stamp off the image
    assert np.isnan(blendedness(dark, paste_models(dark, shape))).all()


def test_measure_gives_each_source_its_blendedness_on_the_scene_model():
    """``Deblender.measure``'s ``blendedness`` column: the blendedness of each source's
    model in the returned scene model; two equal galaxies 6 px apart are equally
    blended, a third far from both is not."""
    from probcat.api import Deblender
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma.astype(np.float32)
    model = FixedGalaxy(_draw(_galaxy(4e4), S) / sigma[0])
    x, y = np.array([20.0, 26.0, 60.0]), np.array([22.0, 22.0, 50.0])
    image = np.zeros((1, 72, 80), np.float32)
    image[0] += paste_models(
        reconstruct(model, image, sigma, x, y, [True] * 3, amplitudes=False), (72, 80)
    )[0]
    cat = FullCatalog({"x": x, "y": y, "galaxy": np.ones(3, bool)}, (72, 80), ("i",))
    res = Deblender(model, survey, device="cpu").measure(image, cat, wings=False)
    b = res.catalog["blendedness"]
    assert b.shape == (3, 1)
    np.testing.assert_allclose(b, blendedness(res.models, res.model), rtol=1e-6)
    assert b[0, 0] == pytest.approx(b[1, 0], rel=1e-3) and b[0, 0] > 0.05
    assert b[2, 0] == 0.0


def test_measure_refines_the_models_as_asked():
    from probcat.api import Deblender
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma.astype(np.float32)
    model = CropDeblender()
    image = np.zeros((1, 40, 40), np.float32)
    image[0] += _draw(_galaxy(5e4), 40, -2.0, 0.0) + _draw(_galaxy(3e4), 40, 2.5, 1.0)
    xs, ys = np.array([17.5, 22.0]), np.array([19.5, 20.5])
    cat = FullCatalog({"x": xs, "y": ys, "galaxy": np.ones(2, bool)}, (40, 40), ("i",))
    db = Deblender(model, survey, device="cpu")
    got = {
        p: db.measure(image, cat, passes=p, background="none").catalog["flux_ap"][:, 0]
        for p in (0, 1, 2)
    }
    for p, flux in got.items():
        ref = aperture_fluxes(image, reconstruct(model, image, sigma, xs, ys, [True] * 2, passes=p),
                              [0, 1], method="conserve")[:, 0]  # the default method  # fmt: skip
        np.testing.assert_allclose(flux, ref, rtol=1e-5)
    assert not np.allclose(got[0], got[2])
    default = db.measure(image, cat, background="none").catalog["flux_ap"][:, 0]
    np.testing.assert_array_equal(default, got[1])
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ProbcatValueError, match="passes"):
            db.measure(image, cat, passes=bad)
    import probcat

    with pytest.raises(ProbcatValueError, match="passes"):  # before any detection is run
        probcat.deblend(image, passes=-1, weights="no_such_weights")
    with pytest.raises(ProbcatValueError, match="method must be one of"):  # likewise
        probcat.deblend(image, method="nope", weights="no_such_weights")


def test_samples_and_shifts_in_chunks_give_the_same_fluxes(monkeypatch):
    """Posterior samples are deblended a chunk at a time and galaxies moved to their
    centroids a chunk at a time (memory): the fluxes do not depend on the chunk sizes."""
    import probcat.infer.deblend as D

    model = CropDeblender()
    sigma = np.array([2.0], np.float32)
    image = np.zeros((1, 48, 48), np.float32)
    image[0] += _draw(_galaxy(4e4), 48, -3.0, 1.0) + _draw(_galaxy(2e4), 48, 2.0, -1.5)
    rng = np.random.default_rng(4)
    dx, dy = np.array([0.0, 5.0, 12.0]), np.array([0.0, -2.5, 9.0])
    samples = [
        {"x": (21.0 + dx + rng.normal(0, 0.6, 3))[: 3 - k % 2],
         "y": (25.0 + dy + rng.normal(0, 0.6, 3))[: 3 - k % 2],
         "galaxy": np.ones(3 - k % 2, bool)}
        for k in range(7)
    ]  # fmt: skip
    tx, ty = [21.0, 26.0], [25.0, 22.5]
    whole = sample_fluxes(model, image, sigma, samples, tx, ty, contamination=True)
    monkeypatch.setattr(D, "SAMPLE_CHUNK", 5)  # two or three samples a chunk
    monkeypatch.setattr(D, "SHIFT_CHUNK", 2)
    parts = sample_fluxes(model, image, sigma, samples, tx, ty, contamination=True)
    for a, b in zip(whole, parts):
        assert np.isfinite(a).sum() > 10
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)


def test_galaxy_stamps_do_not_depend_on_the_network_batch(monkeypatch):
    """Crops go through the deblender a batch at a time into one preallocated array, cut
    and refined a block at a time: any batch or block size gives each galaxy its own
    reconstruction, equal to one crop decoded alone."""
    import probcat.infer.deblend as D
    from probcat.infer.deblend import galaxy_stamps, refine_stamps

    model = CropDeblender()
    sigma = np.array([2.0], np.float32)
    image = np.random.default_rng(6).normal(0.0, 2.0, (1, 64, 64)).astype(np.float32)
    image[0] += 300.0 * _draw(_galaxy(), 64, 3.0, -2.0)
    x = np.array([20.2, 35.7, 31.0, 44.4, 31.3])  # two share a pixel: one encoding
    y = np.array([22.9, 40.1, 30.6, 25.0, 30.8])
    whole = galaxy_stamps(model, image, sigma, x, y, batch=100)
    assert whole.shape == (5, 1, 25, 25)
    np.testing.assert_array_equal(galaxy_stamps(model, image, sigma, x, y, batch=2), whole)
    for i in range(5):
        one = galaxy_stamps(model, image, sigma, x[i : i + 1], y[i : i + 1], batch=1)
        np.testing.assert_allclose(one[0], whole[i], rtol=1e-6, atol=1e-4)
    assert not np.allclose(whole[0], whole[1])
    refined = refine_stamps(model, image, sigma, x, y, whole)
    assert not np.allclose(refined, whole)
    monkeypatch.setattr(D, "CROP_BLOCK", 2)  # three blocks of crops
    np.testing.assert_array_equal(galaxy_stamps(model, image, sigma, x, y, batch=3), whole)
    np.testing.assert_allclose(refine_stamps(model, image, sigma, x, y, whole), refined, atol=1e-4)


def test_measure_widens_flux_errors_for_correlated_noise_by_the_aperture_factor():
    from probcat.api import Deblender
    from probcat.background import aperture_noise_factor
    from probcat.simulate.noise import coadd_noise
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma.astype(np.float32)
    model = FixedGalaxy(_draw(_galaxy(2e5), S) / sigma[0])
    xs, ys = [60.0, 90.0], [70.0, 70.0]
    signal = paste_models(reconstruct(model, np.zeros((1, 160, 160)), sigma, xs, ys,
                                      [True] * 2, amplitudes=False), (160, 160))  # fmt: skip
    cat = FullCatalog(
        {"x": np.array(xs), "y": np.array(ys), "galaxy": np.ones(2, bool)}, (160, 160), ("i",)
    )
    db = Deblender(model, survey, device="cpu")
    rng = np.random.default_rng(0)
    white = signal + sigma[0] * rng.standard_normal(signal.shape).astype(np.float32)
    noise = float(sigma[0]) * np.sqrt(np.pi * 25.0)
    got = db.measure(white, cat, noise_sigma=sigma, background="none").catalog
    np.testing.assert_allclose(got["flux_ap_err"][:, 0], noise)  # white: unchanged
    assert "aperture_noise_factor" not in got.meta["deblend"]
    coadd = signal + coadd_noise(rng, (160, 160), float(sigma[0]), 4, "bilinear")[None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the detector's warning to give, not the deblender's
        got = db.measure(coadd, cat, noise_sigma=sigma, background="none").catalog
    factor = got.meta["deblend"]["aperture_noise_factor"][0]
    assert factor == pytest.approx(aperture_noise_factor(coadd[0] / sigma[0]), rel=1e-3)
    assert factor > 1.15
    np.testing.assert_allclose(got["flux_ap_err"][:, 0], noise * factor, rtol=1e-3)


def _random_scene(rng, n=7, size=36, stamp=15):
    x, y = rng.uniform(4, size - 4, n), rng.uniform(4, size - 4, n)
    r = np.arange(stamp) - stamp // 2
    st = np.stack(
        [
            np.exp(-0.5 * (r[None] ** 2 + r[:, None] ** 2) / rng.uniform(1.0, 3.0) ** 2)[None]
            * rng.uniform(5.0, 50.0)
            for _ in range(n)
        ]
    ).astype(np.float32)
    cx, cy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    return Models(st, cx, cy, x, y, np.ones(n, bool))


def _design(models, shape, floor):
    """Brute force: each model pasted alone on the whole image, one column each, the pixels
    below ``floor`` dropped as :func:`fit_amplitudes` drops them."""
    cols = []
    for i in range(len(models)):
        one = models.select([i])
        one.stamps = np.where(np.abs(one.stamps) > floor, one.stamps, 0.0).astype(np.float32)
        cols.append(paste_models(one, shape)[0].ravel().astype(np.float64))
    return np.stack(cols, 1)


@pytest.mark.parametrize("dense", [256, 0])  # exact per linked group; iterative
def test_fit_amplitudes_is_non_negative_least_squares(dense):
    from scipy.optimize import nnls

    from probcat.infer.deblend import AMPLITUDE_FLOOR

    rng = np.random.default_rng(3)
    for _ in range(4):
        models = _random_scene(rng)
        truth = rng.uniform(0.0, 2.0, len(models))
        truth[0] = 0.0  # a source with no light of its own
        scaled = Models(models.stamps * truth[:, None, None, None].astype(np.float32),
                        models.cx, models.cy, models.x, models.y, models.galaxy)  # fmt: skip
        image = paste_models(scaled, (36, 36)) + rng.normal(0, 0.5, (1, 36, 36)).astype(np.float32)
        a_mat = _design(models, (36, 36), AMPLITUDE_FLOOR * 0.5)
        rows = np.abs(a_mat).sum(1) > 0
        ref = nnls(a_mat[rows], image[0].ravel()[rows].astype(np.float64))[0]
        got = fit_amplitudes(image, models, [0.5], ridge=0.0, dense=dense)
        amp = got.stamps.sum((1, 2, 3)) / models.stamps.sum((1, 2, 3))
        np.testing.assert_allclose(amp, ref, atol=2e-4)
        assert amp.min() >= 0.0
        np.testing.assert_array_equal(got.cx, models.cx)


def test_fit_amplitudes_masked_pixels_edges_and_the_pull_towards_one():
    rng = np.random.default_rng(4)
    models = _random_scene(rng, n=5)
    truth = np.array([0.5, 1.0, 1.5, 2.0, 0.8])
    scaled = Models(models.stamps * truth[:, None, None, None].astype(np.float32),
                    models.cx, models.cy, models.x, models.y, models.galaxy)  # fmt: skip
    image = paste_models(scaled, (36, 36))
    mask = np.zeros((36, 36), bool)
    mask[10:20, :] = True
    image[0][mask] = 1e4  # pixels without data: garbage the fit must not read
    got = fit_amplitudes(image, models, [1.0], ridge=0.0, mask=mask)
    np.testing.assert_allclose(got.stamps.sum((1, 2, 3)) / models.stamps.sum((1, 2, 3)),
                               truth, rtol=1e-4)  # fmt: skip
    # a model on blank sky keeps ridge / (1 + ridge) of itself; one wholly outside the image
    # (no pixel to fit) keeps its model
    r = np.arange(15) - 7
    blob = (100 * np.exp(-0.5 * (r[None] ** 2 + r[:, None] ** 2) / 4.0))[None].astype(np.float32)
    two = Models(np.stack([blob, blob]), np.array([18, 60]), np.array([18, 60]),
                 np.array([18.0, 60.0]), np.array([18.0, 60.0]), np.ones(2, bool))  # fmt: skip
    got = fit_amplitudes(np.zeros((1, 36, 36), np.float32), two, [1.0], ridge=0.01)
    amp = got.stamps.sum((1, 2, 3)) / two.stamps.sum((1, 2, 3))
    np.testing.assert_allclose(amp, [0.01 / 1.01, 1.0], rtol=1e-6)
    # two coincident models that the data cannot tell apart share the light evenly
    same = Models(np.stack([blob, blob]), np.array([18, 18]), np.array([18, 18]),
                  np.array([18.0, 18.0]), np.array([18.0, 18.0]), np.ones(2, bool))  # fmt: skip
    image = paste_models(same.select([0]), (36, 36)) * 3.0
    got = fit_amplitudes(image, same, [1.0])
    amp = got.stamps.sum((1, 2, 3)) / same.stamps.sum((1, 2, 3))
    assert amp[0] == pytest.approx(amp[1], rel=1e-6) and amp.sum() == pytest.approx(3.0, rel=1e-2)
    assert len(fit_amplitudes(image, same.select([]), [1.0])) == 0


def test_a_spurious_source_in_a_galaxys_wing_no_longer_takes_its_light():
    """A source placed in a galaxy's outskirts where there is none (a false detection or a
    posterior sample's spurious source) gets from the deblender a galaxy of its own (here
    the same galaxy: the stand-in deblender always returns it). Fitted jointly, its model
    keeps only the light the galaxy's does not explain, and the galaxy its flux."""
    sigma = np.ones(1, np.float32)
    model = FixedGalaxy(_draw(_galaxy(5000.0), S))
    zeros = np.zeros((1, 40, 40), np.float32)
    image = paste_models(reconstruct(model, zeros, sigma, [20.0], [20.0], [True],
                                     amplitudes=False), (40, 40))  # fmt: skip
    alone = reconstruct(model, zeros, sigma, [20.0], [20.0], [True], amplitudes=False)
    true = aperture_fluxes(image, alone, [0], method="conserve")[0, 0]
    xs, ys = [20.0, 23.0], [20.0, 21.0]
    plain = reconstruct(model, image, sigma, xs, ys, [True] * 2, amplitudes=False)
    fitted = reconstruct(model, image, sigma, xs, ys, [True] * 2)
    for m in ("conserve", "subtract"):
        lost = aperture_fluxes(image, plain, [0], method=m)[0, 0]
        kept = aperture_fluxes(image, fitted, [0], method=m)[0, 0]
        assert lost < 0.75 * true  # the spurious model takes a large share
        assert kept == pytest.approx(true, rel=0.01)
    # posterior samples too: one with the spurious source, one without
    samples = [
        {"x": np.array(xs), "y": np.array(ys), "galaxy": np.ones(2, bool)},
        {"x": np.array([20.0]), "y": np.array([20.0]), "galaxy": np.ones(1, bool)},
    ]
    v = sample_fluxes(model, image, sigma, samples, [20.0], [20.0], method="conserve")
    np.testing.assert_allclose(v[0, :, 0], true, rtol=0.01)
    v0 = sample_fluxes(model, image, sigma, samples, [20.0], [20.0], amplitudes=False)
    assert v0[0, 0, 0] < 0.75 * true


def test_fit_amplitudes_iterates_where_the_exact_solver_gives_up(monkeypatch):
    import scipy.optimize

    rng = np.random.default_rng(5)
    models = _random_scene(rng)
    image = paste_models(models, (36, 36)) * 1.3 + rng.normal(0, 0.5, (1, 36, 36))
    exact = fit_amplitudes(image.astype(np.float32), models, [0.5]).stamps

    def out_of_iterations(*args, **kwargs):
        raise RuntimeError("Maximum number of iterations reached.")

    monkeypatch.setattr(scipy.optimize, "nnls", out_of_iterations)
    got = fit_amplitudes(image.astype(np.float32), models, [0.5]).stamps
    np.testing.assert_allclose(got.sum((1, 2, 3)), exact.sum((1, 2, 3)), rtol=1e-4)


def test_sample_crops_decoded_once_across_chunks(monkeypatch):
    """Posterior samples put galaxies in the same pixels: a pixel's crop is decoded once
    for all the chunks (CropCache), with the fluxes of decoding every chunk's crops."""
    import probcat.infer.deblend as D

    model = CropDeblender()
    sigma = np.array([2.0], np.float32)
    image = np.random.default_rng(8).normal(0.0, 2.0, (1, 48, 48)).astype(np.float32)
    image[0] += _draw(_galaxy(4e4), 48, -3.0, 1.0) + _draw(_galaxy(2e4), 48, 2.0, -1.5)
    rng = np.random.default_rng(9)
    samples = [
        {"x": 21.0 + np.array([0.0, 5.0]) + rng.normal(0, 0.3, 2),
         "y": 25.0 + np.array([0.0, -2.5]) + rng.normal(0, 0.3, 2),
         "galaxy": np.ones(2, bool)}
        for _ in range(8)
    ]  # fmt: skip
    pixels = {(math.floor(x + 0.5), math.floor(y + 0.5)) for s in samples
              for x, y in zip(s["x"], s["y"])}  # fmt: skip
    decoded = []
    real = D._decode

    def counting(model, crops, device, batch):
        decoded.append(len(crops))
        return real(model, crops, device, batch)

    monkeypatch.setattr(D, "_decode", counting)
    monkeypatch.setattr(D, "SAMPLE_CHUNK", 2)  # one sample a chunk
    tx, ty = [21.0, 26.0], [25.0, 22.5]
    kw = dict(contamination=True, passes=0)
    cached = sample_fluxes(model, image, sigma, samples, tx, ty, **kw)
    assert sum(decoded) == len(pixels) < 16  # each distinct pixel once
    decoded.clear()
    monkeypatch.setattr(D, "CACHE_BYTES", 0)  # nothing kept: every chunk decodes its own
    plain = sample_fluxes(model, image, sigma, samples, tx, ty, **kw)
    assert sum(decoded) == 16
    for a, b in zip(cached, plain):
        assert np.isfinite(a).sum() > 10
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-4)


def test_deblend_measures_a_six_band_detectors_sources_in_the_deblenders_band(
    tmp_path, deblender_weights
):
    """probcat.deblend with a ugrizy detector and the i-band deblender (as probcat detect
    --deblend does): the sources are measured in the image's i plane, the numbers of
    Deblender.measure on that plane with the same detections; a deblender whose band the
    detector lacks is a one-line error before any detection."""
    import probcat
    from probcat.catalog import make_wcs
    from probcat.io import ImageData
    from probcat.nets.detection import DetectionNet
    from probcat.survey import Survey

    def tiny(bands):
        torch.manual_seed(0)
        net = DetectionNet(n_bands=len(bands), stem_channels=4, channels=8, n_blocks=2)
        path = tmp_path / f"det_{bands}.pt"
        torch.save({"kind": "detection", "format": 2, "hparams": net.hparams,
                    "state_dict": net.state_dict(),
                    "survey": Survey.lsst(bands=bands).to_dict()}, path)  # fmt: skip
        return str(path)

    s = Survey.lsst(bands="ugrizy")
    rng = np.random.default_rng(3)
    img = rng.standard_normal((6, 64, 64)) * s.noise_sigma[:, None, None]
    yy, xx = np.mgrid[:64, :64]
    for x0, y0 in ((24.0, 30.0), (29.0, 33.0), (45.0, 44.0)):
        blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 8.0)
        img += 60 * s.noise_sigma[:, None, None] * blob
    image = ImageData(img.astype(np.float32), make_wcs((64, 64), 0.2, 56.0, -30.0),
                      tuple("ugrizy"), s.noise_sigma)  # fmt: skip
    res = probcat.deblend(image, weights=tiny("ugrizy"), deblender=str(deblender_weights),
                          samples=2, threshold=0.1)  # fmt: skip
    cat = res.catalog
    assert len(cat) > 0 and np.asarray(cat["flux_ap"]).shape == (len(cat), 1)
    dbl = probcat.load(str(deblender_weights))
    i_plane = ImageData(img[3:4].astype(np.float32), None, ("i",), s.noise_sigma[3:4])
    again = dbl.measure(i_plane, res.detection.catalog, samples=res.detection.samples)
    np.testing.assert_allclose(cat["flux_ap"], again.catalog["flux_ap"], rtol=1e-5)
    np.testing.assert_allclose(cat["flux_q50"], again.catalog["flux_q50"], rtol=1e-5)
    with pytest.raises(ProbcatValueError, match=r"reads band\(s\) i, which the detector's"):
        probcat.deblend(image, weights=tiny("g"), deblender=str(deblender_weights))


def _exponential(shape, x0, y0, peak, scale, q=0.7, angle=0.5):
    """An elliptical exponential profile ``peak * exp(-a / scale)`` on a grid."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    u = (xx - x0) * math.cos(angle) + (yy - y0) * math.sin(angle)
    v = -(xx - x0) * math.sin(angle) + (yy - y0) * math.cos(angle)
    return peak * np.exp(-np.sqrt(u**2 + (v / q) ** 2) / scale)


def test_galaxy_wings_recover_the_light_beyond_a_models_stamp():
    """A model cut at its stamp's edge from a galaxy whose light goes on beyond it: the
    wing fitted to the data continues it, close to the true light; a compact galaxy, or
    one whose outskirts are all masked, gets none."""
    from probcat.infer.deblend import galaxy_wings

    n, half = 241, 26
    truth = _exponential((n, n), 120.3, 119.8, 400.0, 9.0)
    rng = np.random.default_rng(1)
    image = (truth + rng.standard_normal((n, n)))[None].astype(np.float32)
    box = (slice(120 - half, 121 + half), slice(120 - half, 121 + half))

    def models(profile):
        stamp = profile[box][None, None].astype(np.float32)
        at = [np.array([v]) for v in (120, 120, 120.3, 119.8)]
        return Models(stamp, *at, np.ones(1, bool))

    wing, which = galaxy_wings(image, models(truth), [1.0])
    assert list(which) == [0]
    outside = np.ones((n, n), bool)
    outside[box] = False
    assert not wing[0][box].any()  # inside the stamp the model is the galaxy
    beyond = truth[outside & (np.abs(np.arange(n)[None] - 120) < 120)]  # in its window
    got = wing[0][outside & (np.abs(np.arange(n)[None] - 120) < 120)]
    assert got.sum() == pytest.approx(beyond.sum(), rel=0.1)
    assert np.abs(got - beyond).max() < 0.1 * beyond.max()
    compact = _exponential((n, n), 120.3, 119.8, 400.0, 1.5)
    img2 = (compact + rng.standard_normal((n, n)))[None].astype(np.float32)
    assert galaxy_wings(img2, models(compact), [1.0])[0] is None
    assert galaxy_wings(image, models(truth), [1.0], mask=outside)[0] is None


def test_galaxy_wings_bend_and_scale_to_a_de_vaucouleurs_galaxys_outskirts(monkeypatch):
    """A de Vaucouleurs galaxy's light falls ever more slowly beyond its stamp: the wing
    bends with it, where an exponential one errs by twice as much; a model drawn at half
    the galaxy's brightness gets a wing scaled to the data, not to its faint border."""
    import probcat.infer.deblend as dm

    n, half = 241, 26
    yy, xx = np.mgrid[:n, :n]
    prof = np.exp(-7.669 * (np.hypot(xx - 120.3, (yy - 119.8) / 0.7) / 8.0) ** 0.25)
    truth = 3e5 * prof / prof.sum()  # its stamp's border at about 7 noise sigmas
    image = (truth + np.random.default_rng(1).standard_normal((n, n)))[None]
    box = (slice(120 - half, 121 + half), slice(120 - half, 121 + half))
    window = (np.abs(xx - 120) < 120) & (np.abs(yy - 120) < 120)
    window[box] = False
    beyond = truth[window]

    def wing_error(scale):  # largest error beyond the stamp over the peak there; light found
        stamp = (scale * truth)[box][None, None].astype(np.float32)
        at = [np.array([v]) for v in (120, 120, 120.3, 119.8)]
        wing, _ = dm.galaxy_wings(
            image.astype(np.float32), Models(stamp, *at, np.ones(1, bool)), [1.0]
        )
        got = wing[0][window]
        return np.abs(got - beyond).max() / beyond.max(), got.sum() / beyond.sum()

    bent, half_model = wing_error(1.0), wing_error(0.5)
    assert bent[0] < 0.06 and 0.85 < bent[1] < 1.05
    assert half_model[0] < 0.06 and 0.85 < half_model[1] < 1.05
    monkeypatch.setattr(dm, "WING_AMP_MAX", 1.0)
    assert wing_error(0.5)[0] > 5 * half_model[0]  # tied to the model's border
    monkeypatch.setattr(dm, "WING_ALPHAS", (1.0,))
    assert wing_error(1.0)[0] > 2 * bent[0]  # and an exponential


def test_star_wings_continue_a_bright_stars_psf_beyond_its_stamp():
    """A bright star's model is the PSF on the stamp; beyond it the wing is the PSF's own
    light at the model's flux (the survey's PSF drawn large, moved to the star's sub-pixel
    position), whatever else lies there; a faint star and a galaxy get none."""
    from probcat.infer.deblend import assemble, psf_stamp, star_wings
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sig = float(survey.noise_sigma[0])
    n, size, x, y = 301, 53, 150.3, 149.6
    near = np.abs(np.arange(n) - 150) <= 128
    outside = near[None, :] & near[:, None]  # beyond the stamp, within the wings' reach
    outside[150 - 26 : 151 + 26, 150 - 26 : 151 + 26] = False

    def star(flux, halo=1.0):  # drawn on the whole image (times halo beyond the stamp)
        img = np.zeros((n, n))
        img[150 - 128 : 150 + 129, 150 - 128 : 150 + 129] = flux * psf_stamp(survey, 257)[0]
        img = ndimage.shift(img, (y - 150, x - 150), order=3)
        img[outside] *= halo
        rng = np.random.default_rng(3)
        return img, (img + sig * rng.standard_normal((n, n)))[None].astype(np.float32)

    def wing_of(image, galaxy=False):
        gal = np.zeros((int(galaxy), 1, size, size), np.float32)
        models = assemble(image, gal, [x], [y], [galaxy], survey)
        if galaxy:
            models.stamps[0] = crop_at(image, 150, 150, size)
        return star_wings(models, survey, image.shape[-2:], [sig])

    bright = survey.bands[0].mag_to_flux(15.0)
    truth, image = star(bright)
    wing, which = wing_of(image)
    assert list(which) == [0] and not wing[0][~outside].any()
    assert wing[0][outside].sum() == pytest.approx(truth[outside].sum(), rel=0.05)
    assert np.abs(wing[0] - truth)[outside].max() < 0.05 * truth[outside].max()
    wing2, _ = wing_of(star(bright, halo=2.0)[1])  # other light beyond the stamp: not the star's
    assert wing2[0][outside].sum() == pytest.approx(truth[outside].sum(), rel=0.05)
    assert wing_of(star(survey.bands[0].mag_to_flux(22.0))[1])[0] is None  # faint
    assert wing_of(image, galaxy=True)[0] is None  # galaxies: galaxy_wings


class ByBrightness(nn.Module):
    """A stand-in deblender that returns one of two stamps (sigma units): ``bright`` for a
    crop whose centre is above ``level``, else ``faint``."""

    def __init__(self, bright, faint, level, in_size=S):
        super().__init__()
        self.register_buffer("bright", torch.from_numpy(bright)[None, None])
        self.register_buffer("faint", torch.from_numpy(faint)[None, None])
        self.level = level
        self.unused = nn.Parameter(torch.zeros(1))
        self.in_size, self.out_size = in_size, bright.shape[-1]

    def forward(self, x):
        c = x.shape[-1] // 2
        big = (x[:, :1, c : c + 1, c : c + 1] > self.level).float()
        return big * self.bright + (1 - big) * self.faint


def test_a_faint_galaxy_beside_a_bright_star_keeps_only_its_own_light():
    """A bright star's light beyond its model's stamp is its wing (the PSF's), not the
    light of the faint galaxy 36 px away (with ``wings=False`` that galaxy took it)."""
    from probcat.api import Deblender
    from probcat.infer.deblend import psf_stamp
    from probcat.measure import aperture_sums
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sig = float(survey.noise_sigma[0])
    n, size = 200, 53
    star = np.zeros((n + 256, n + 256))
    star[80 : 80 + 257, 80 : 80 + 257] = (
        survey.bands[0].mag_to_flux(15.0) * psf_stamp(survey, 257)[0]
    )
    star = star[128 : 128 + n, 128 : 128 + n]  # centred on pixel (80, 80)
    yy, xx = np.mgrid[:n, :n]
    faint = 300 * sig * np.exp(-((xx - 116.0) ** 2 + (yy - 80.0) ** 2) / (2 * 1.5**2))
    faint /= 2 * np.pi * 1.5**2
    image = (star + faint)[None].astype(np.float32)
    stamp = (faint[80 - 26 : 81 + 26, 116 - 26 : 117 + 26] / sig).astype(np.float32)
    net = ByBrightness(stamp, stamp, level=1e30, in_size=size)
    cat = FullCatalog({"x": np.array([80.0, 116.0]), "y": np.array([80.0, 80.0]),
                       "galaxy": np.array([False, True])}, (n, n), ("i",))  # fmt: skip
    db = Deblender(net, survey, {"flux_error": {"scale": 0.1}}, device="cpu")
    true = aperture_sums(faint, [116.0], [80.0], 5.0)[0][0]
    kw = dict(noise_sigma=[sig], background="none", passes=0)
    plain = db.measure(image, cat, wings=False, **kw)
    got = db.measure(image, cat, **kw)
    assert plain.catalog["flux_ap"][1, 0] > 1.2 * true  # the star's wing taken as its own
    assert got.catalog["flux_ap"][1, 0] == pytest.approx(true, rel=0.02)
    assert got.catalog.meta["deblend"]["wing_stars"] == 1
    assert got.catalog.meta["deblend"]["wing_galaxies"] == 0


def test_a_faint_galaxy_in_a_big_ones_outskirts_keeps_only_its_own_light():
    """The big galaxy's model stops at its stamp's edge; its light beyond is fitted as a
    wing, and the faint galaxy there is measured without it (with ``wings=False`` it took
    that light as its own)."""
    from probcat.api import Deblender
    from probcat.measure import aperture_sums
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sig = float(survey.noise_sigma[0])
    n, size, half = 200, 53, 26
    big = _exponential((n, n), 80.0, 80.0, 200 * sig, 8.0)
    yy, xx = np.mgrid[:n, :n]
    faint = 300 * sig * np.exp(-((xx - 116.0) ** 2 + (yy - 80.0) ** 2) / (2 * 1.5**2))
    faint /= 2 * np.pi * 1.5**2
    image = (big + faint)[None].astype(np.float32)
    cut = (slice(80 - half, 81 + half), slice(80 - half, 81 + half))
    cut_f = (slice(80 - half, 81 + half), slice(116 - half, 117 + half))
    net = ByBrightness((big[cut] / sig).astype(np.float32), (faint[cut_f] / sig).astype(np.float32),
                       level=50.0, in_size=size)  # fmt: skip
    cat = FullCatalog({"x": np.array([80.0, 116.0]), "y": np.array([80.0, 80.0]),
                       "galaxy": np.ones(2, bool)}, (n, n), ("i",))  # fmt: skip
    db = Deblender(net, survey, {"flux_error": {"scale": 0.1}}, device="cpu")
    true = aperture_sums(faint, [116.0], [80.0], 5.0)[0][0]
    kw = dict(noise_sigma=[sig], background="none", passes=0)
    plain = db.measure(image, cat, wings=False, **kw)
    got = db.measure(image, cat, **kw)
    assert plain.catalog["flux_ap"][1, 0] > 1.3 * true  # the wing taken as its own
    assert got.catalog["flux_ap"][1, 0] == pytest.approx(true, rel=0.03)
    assert got.catalog["flux_ap"][0, 0] == pytest.approx(plain.catalog["flux_ap"][0, 0], rel=0.01)
    # the wing's light in the aperture widens the error as a neighbour's model would
    wing_ap = aperture_sums(big, [116.0], [80.0], 5.0)[0][0]
    noise = sig * math.sqrt(math.pi * 25)
    assert got.catalog["flux_ap_err"][1, 0] == pytest.approx(math.hypot(noise, 0.1 * wing_ap),
                                                              rel=0.05)  # fmt: skip
    assert got.catalog.meta["deblend"]["wing_galaxies"] == 1
    assert "wing_galaxies" not in plain.catalog.meta["deblend"]
    # the scene model holds the wing: the residual beyond the big galaxy's stamp is small
    ring = np.zeros((n, n), bool)
    ring[80 - 45 : 81 + 45, 80 - 45 : 81 + 45] = True
    ring[cut] = False
    ring[:, 100:] = False  # the faint galaxy's side
    assert np.abs(got.residual[0][ring]).max() < 0.1 * big[ring].max()
    assert np.abs(plain.residual[0][ring]).max() > 0.9 * big[ring].max()
    with pytest.raises(ProbcatValueError, match="wings must be True or False"):
        db.measure(image, cat, wings="yes", **kw)


def test_deblending_beyond_the_memory_is_refused_before_it_starts(monkeypatch):
    """Deblending needs memory for every source's model stamps (copies of them at once)
    and the image's planes: beyond what this process may use, a one-line error before
    any model is made; at the limit itself it runs. Posterior samples add the crop
    cache."""
    import probcat.api as api
    from probcat import runtime
    from probcat.api import Deblender
    from probcat.infer.deblend import CACHE_BYTES
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma.astype(np.float32)
    model = FixedGalaxy(_draw(_galaxy(2e5), S) / sigma[0])
    xs, ys = [12.0, 19.0, 8.0], [15.0, 15.0, 24.0]
    image = paste_models(reconstruct(model, np.zeros((1, 30, 40)), sigma, xs, ys, [True] * 3,
                                     amplitudes=False), (30, 40))  # fmt: skip
    cat = FullCatalog(
        {"x": np.array(xs), "y": np.array(ys), "galaxy": np.ones(3, bool)}, (30, 40), ("i",)
    )
    need = api.BASE_BYTES + 30 * 40 * api.DEBLEND_BYTES_PER_PIXEL
    need += 3 * S**2 * 4 * api.DEBLEND_STAMP_COPIES
    db = Deblender(model, survey, device="cpu")
    for samples, extra in ((None, 0), ([cat], CACHE_BYTES)):
        monkeypatch.setattr(runtime, "memory_limit", lambda e=extra: (need + e - 1, "this has"))
        model.calls = 0
        with pytest.raises(
            ProbcatValueError, match=r"^deblending 3 sources in a 40x30 image in 1 band\(s\)"
        ):
            db.measure(image, cat, samples=samples)
        assert model.calls == 0  # refused before any model
        monkeypatch.setattr(runtime, "memory_limit", lambda e=extra: (need + e, "this has"))
        assert np.all(db.measure(image, cat, samples=samples).catalog["flux_ap"] > 0)


def test_a_large_image_deblended_core_by_core_equals_the_whole(monkeypatch, capsys):
    """Above DEBLEND_WHOLE_PX a side an image is deblended core by core, each core with a
    margin of the image and its sources: where every group of overlapping models lies
    inside the margin of its core (here a pair across a core's edge, pairs and single
    galaxies elsewhere, a source just off the image), every measurement, the flux
    posteriors, each source's model and the scene model equal those of the whole image,
    and no source's row is left unmeasured."""
    import probcat.api as api
    from probcat.api import Deblender
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma.astype(np.float32)
    model = FixedGalaxy(_draw(_galaxy(2e5), S) / sigma[0])
    xs = np.array([29.3, 35.6, 8.0, 12.4, 55.1, 70.2, 20.5, 50.0, -0.3])
    ys = np.array([20.2, 22.7, 50.1, 53.3, 45.0, 10.4, 8.0, 58.6, 33.0])
    image = paste_models(reconstruct(model, np.zeros((1, 64, 80)), sigma, xs, ys,
                                     [True] * len(xs), amplitudes=False), (64, 80))  # fmt: skip
    image += np.random.default_rng(4).standard_normal(image.shape).astype(np.float32) * sigma[0]
    gal = np.ones(len(xs), bool)
    gal[6] = False  # a star
    cat = FullCatalog({"x": xs, "y": ys, "galaxy": gal}, (64, 80), ("i",))
    drop = FullCatalog({"x": xs[1:], "y": ys[1:], "galaxy": gal[1:]}, (64, 80), ("i",))
    db = Deblender(model, survey, device="cpu")
    kw = dict(samples=[cat, drop], wings=False, progress=True)
    whole = db.measure(image, cat, **kw)
    assert "deblending samples: 100%" in capsys.readouterr().err
    monkeypatch.setattr(api, "DEBLEND_WHOLE_PX", 48)
    monkeypatch.setattr(api, "DEBLEND_CORE_PX", 32)
    monkeypatch.setattr(api, "DEBLEND_MARGIN_PX", 24)
    calls = []
    real = Deblender._deblend_part
    monkeypatch.setattr(
        Deblender,
        "_deblend_part",
        lambda self, img, *a: calls.append(img.shape) or real(self, img, *a),
    )
    parts = db.measure(image, cat, **kw)
    err = capsys.readouterr().err  # a bar a part, each labelled
    assert "deblending samples, part 1 of 6: 100%" in err and "part 6 of 6: 100%" in err
    # 2 x 3 cores, in windows (the one without a source of its own, x >= 64 and y >= 32,
    # holds some of its neighbours' light)
    assert len(calls) == 6 and max(s[1] for s in calls) < 64
    a, b = whole.catalog, parts.catalog
    for col in ("flux_ap", "flux_ap_err", "blendedness", "T", "e1", "e2", "flux_q50", "p_match"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-3, err_msg=col)
    np.testing.assert_array_equal(parts.models.cx, whole.models.cx)
    np.testing.assert_array_equal(parts.models.cy, whole.models.cy)
    tol = 1e-4 * float(sigma[0])  # float32 sums in another order: far below the noise
    np.testing.assert_allclose(parts.models.stamps, whole.models.stamps, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(parts.model, whole.model, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(parts.residual, whole.residual, rtol=1e-5, atol=tol)
    assert np.isnan(b["p_match"]).sum() == 0 and b["p_match"][0] == 0.5  # source 0 in 1 of 2
    # the memory counted: every source's model once, the most crowded window's work
    from probcat import runtime
    from probcat.infer.deblend import CACHE_BYTES

    wins = [(max(y0 - 24, 0), min(y0 + 56, 64), max(x0 - 24, 0), min(x0 + 56, 80))
            for y0 in (0, 32) for x0 in (0, 32, 64)]  # fmt: skip
    px, py = np.clip(np.floor(xs + 0.5), 0, 79), np.floor(ys + 0.5)
    most = max(int(((px >= a) & (px < b) & (py >= c) & (py < d)).sum()) for c, d, a, b in wins)
    assert most == 8  # of 9: the work of a window, not of the whole image
    one = S**2 * 4
    need = api.BASE_BYTES + 64 * 80 * api.DEBLEND_BYTES_PER_PIXEL + CACHE_BYTES
    need += (len(xs) - most) * one + most * one * api.DEBLEND_STAMP_COPIES
    monkeypatch.setattr(runtime, "memory_limit", lambda: (need - 1, "this machine has"))
    with pytest.raises(ProbcatValueError, match="deblending 9 sources in a 80x64 image"):
        db.measure(image, cat, **kw)
    monkeypatch.setattr(runtime, "memory_limit", lambda: (need, "this machine has"))
    assert len(db.measure(image, cat, **kw).catalog) == 9
