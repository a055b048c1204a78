"""The coadd noise model: resampling kernels against brute force and exact values, the
pixel sigma it promises, the correlation it makes, and the scene option."""

import numpy as np
import pytest

from probcat.background import noise_correlation
from probcat.errors import ProbcatValueError
from probcat.simulate.noise import RESAMPLING_KERNELS, coadd_noise, resampled, shift_weights
from probcat.simulate.scene import SceneConfig, SceneSimulator


@pytest.mark.parametrize("kernel", RESAMPLING_KERNELS)
@pytest.mark.parametrize("d", [-0.5, -0.31, 0.0, 0.27, 0.5])
def test_weights_interpolate_exactly_at_integers_and_conserve_flux(kernel, d):
    offsets, w = shift_weights(d, kernel)
    assert w.sum() == pytest.approx(1.0)
    # the weights' centre of mass is the shift for bilinear; for Lanczos-3, a linear
    # ramp is interpolated exactly only approximately (the kernel is not linear-exact)
    tol = 1e-12 if kernel == "bilinear" else 0.02
    assert np.sum(offsets * w) == pytest.approx(d, abs=tol)
    if d == 0.0:  # no shift: the pixel itself
        assert np.allclose(w, (offsets == 0).astype(float))


def test_lanczos3_weights_are_the_kernel():
    offsets, w = shift_weights(0.25, "lanczos3")
    t = offsets - 0.25
    raw = np.sinc(t) * np.sinc(t / 3)
    assert np.allclose(w, raw / raw.sum())
    assert list(offsets) == [-2, -1, 0, 1, 2, 3]


@pytest.mark.parametrize("kernel", RESAMPLING_KERNELS)
def test_resampled_equals_brute_force_sum(kernel):
    img = np.random.default_rng(0).standard_normal((16, 20))
    dy, dx = 0.3, -0.45
    out = resampled(img, dy, dx, kernel)
    (oy, wy), (ox, wx) = shift_weights(dy, kernel), shift_weights(dx, kernel)
    brute = np.zeros_like(img)
    for a, u in zip(oy, wy):
        for b, v in zip(ox, wx):
            brute += u * v * np.roll(img, (-a, -b), (0, 1))  # in[i + a, j + b], periodic
    assert np.allclose(out, brute, atol=1e-12)


@pytest.mark.parametrize("kernel", RESAMPLING_KERNELS)
def test_coadd_noise_has_the_pixel_sigma_and_is_correlated(kernel):
    sd, corr = [], []
    for s in range(4):
        n = coadd_noise(np.random.default_rng(s), (192, 192), 7.0, 6, kernel)
        assert n.dtype == np.float32
        sd.append(n.std())
        corr.append(noise_correlation(n))
    assert np.mean(sd) == pytest.approx(7.0, rel=0.02)
    assert min(corr) > 0.08  # above probcat's warning level; white noise reads about 0
    white = np.random.default_rng(9).standard_normal((192, 192))
    assert abs(noise_correlation(white)) < 0.04


def test_one_visit_without_shift_is_white(monkeypatch):
    class Zero:  # a generator whose offsets are 0: the resampling is the identity
        def __init__(self):
            self.rng = np.random.default_rng(1)

        def uniform(self, lo, hi, n):
            return np.zeros(n)

        def standard_normal(self, shape):
            return self.rng.standard_normal(shape)

    n = coadd_noise(Zero(), (32, 32), 2.0, 1, "lanczos3")
    assert np.allclose(n, 2.0 * np.random.default_rng(1).standard_normal((32, 32)), atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ProbcatValueError, match="kernel"):
        shift_weights(0.1, "sinc")
    with pytest.raises(ProbcatValueError, match="shift"):
        shift_weights(0.7)
    with pytest.raises(ProbcatValueError, match="visits"):
        coadd_noise(np.random.default_rng(0), (8, 8), 1.0, 0)
    with pytest.raises(ProbcatValueError, match="coadd_fraction"):
        SceneConfig(32, 32, coadd_fraction=1.5)
    with pytest.raises(ProbcatValueError, match="Gaussian"):
        SceneConfig(32, 32, coadd_fraction=0.5, noise="poisson")
    with pytest.raises(ProbcatValueError, match="coadd_kernels"):
        SceneConfig(32, 32, coadd_fraction=0.5, coadd_kernels=("cubic",))


def test_scene_option_mixes_coadd_and_white_noise(tiny_bank):
    empty = dict(galaxy_density=0, star_density=0)
    sigma = tiny_bank.survey.noise_sigma[0]
    white = SceneSimulator(tiny_bank, SceneConfig(64, 64, **empty))
    # coadd_fraction 0 keeps every scene's random stream (the shipped weights' training data)
    a = white.sample(np.random.default_rng(5)).image
    b = SceneSimulator(tiny_bank, SceneConfig(64, 64, coadd_fraction=0.0, **empty))
    assert np.array_equal(a, b.sample(np.random.default_rng(5)).image)
    every = SceneSimulator(tiny_bank, SceneConfig(64, 64, coadd_fraction=1.0, **empty))
    rng = np.random.default_rng(3)
    imgs = [every.sample(rng).image[0] for _ in range(6)]
    assert np.mean([i.std() for i in imgs]) == pytest.approx(sigma, rel=0.05)
    assert min(noise_correlation(np.tile(i, (2, 2))[:128, :128]) or 0 for i in imgs) > 0.08
    half = SceneSimulator(tiny_bank, SceneConfig(64, 64, coadd_fraction=0.5, **empty))
    rng = np.random.default_rng(4)
    c = [noise_correlation(np.tile(half.sample(rng).image[0], (2, 2))) for _ in range(40)]
    frac = np.mean(np.asarray(c) > 0.06)
    assert 0.25 < frac < 0.75  # about half the scenes correlated (binomial, n = 40)


def test_aperture_noise_factor_reads_the_low_frequency_noise_power_exactly():
    from probcat.background import APERTURE_NOISE_BAND, aperture_noise_factor

    # n = (sum of a 2x2 box of white noise) / 2: unit variance, power spectrum
    # 4 cos^2(pi ky) cos^2(pi kx), whose mean over every frequency is 1
    w = np.random.default_rng(0).standard_normal((257, 257))
    n = (w[:-1, :-1] + w[1:, :-1] + w[:-1, 1:] + w[1:, 1:]) / 2.0
    ky, kx = np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :]
    k = np.hypot(ky, kx)
    band = (k >= APERTURE_NOISE_BAND[0]) & (k <= APERTURE_NOISE_BAND[1])
    exact = np.sqrt(np.mean((4 * np.cos(np.pi * ky) ** 2 * np.cos(np.pi * kx) ** 2)[band]))
    got = aperture_noise_factor(n)
    assert exact > 1.5  # a real inflation, not 1 by construction
    # within 3%: the periodogram's scatter over the band (~0.7%) and the source mask,
    # which takes the brightest blobs of such smooth noise for sources
    assert got == pytest.approx(exact, rel=0.03)
    white = aperture_noise_factor(w[:256, :256])
    assert white == pytest.approx(1.0, abs=0.03)
    assert aperture_noise_factor(w[:64, :64]) is None  # a cutout: not measured


@pytest.mark.parametrize("kernel", RESAMPLING_KERNELS)
def test_aperture_noise_factor_predicts_the_scatter_of_aperture_sums(kernel):
    import sep

    from probcat.background import aperture_noise_factor

    rng = np.random.default_rng(2)
    n = coadd_noise(rng, (512, 512), 1.0, 6, kernel).astype(np.float64)
    xs, ys = rng.uniform(10, 500, 4000), rng.uniform(10, 500, 4000)
    sums, _, _ = sep.sum_circle(n, xs, ys, 5.0)
    empirical = sums.std() / (n.std() * np.sqrt(np.pi * 25))
    assert empirical > 1.04  # correlated enough to tell
    assert aperture_noise_factor(n, crop=512) == pytest.approx(empirical, rel=0.08)
