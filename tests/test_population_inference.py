import numpy as np
import pytest
from scipy import stats

from probcat.population.chain import detections_factor
from probcat.population.detection import Detections
from probcat.population.inference import (
    Grid,
    Posterior,
    box_edge_mass,
    cell_index,
    combine,
    expected_coverage,
    logsumexp,
    truncation_bounds,
    weighted_interval,
    weighted_samples,
)


def test_logsumexp_gives_scipys_values():
    """The chain's own logsumexp against scipy.special.logsumexp, whose arithmetic it
    follows: the same values (to the last bit on this SciPy, within 4 ulp on any) on
    ordinary arrays, ties at the maximum, slices of -inf (no mass below N_det), +inf, NaN,
    terms whose plain exponentials overflow, over one axis, another and all of them."""
    from scipy.special import logsumexp as scipy_logsumexp

    rng = np.random.default_rng(4)
    a = rng.normal(0.0, 30.0, (64, 400))
    a[:, :20] = -np.inf  # infeasible grid points: -inf in every draw
    a[3, 30:33] = np.inf
    a[5, 40] = np.nan
    a[:, 50] = a[0, 50]  # every draw tied at the maximum
    a[10:20, 60] = 5.0  # some tied
    a[:, 70] = 800.0 + rng.normal(size=64)  # exp overflows without the shift
    for x, axis in ((a, 0), (a, 1), (a, None), (a[:, 80:90], None), (a[0], 0),
                    (np.array([1.5]), None), (np.zeros((0, 3)), 0)):  # fmt: skip
        got, want = logsumexp(x, axis=axis), scipy_logsumexp(x, axis=axis)
        assert np.shape(got) == np.shape(want)
        same = np.isnan(want) | (got == want)
        close = np.isclose(got, want, rtol=4 * np.finfo(float).eps, atol=0)
        assert np.array_equal(np.isnan(got), np.isnan(want)) and np.all(same | close)
    finite = a[:, 100:]  # no special value: the values themselves, not just their kinds
    top = finite.max(0)
    np.testing.assert_allclose(logsumexp(finite, axis=0), np.log(np.exp(finite - top).sum(0)) + top)


def _normal_logpdf(x, mu, sd):
    return stats.norm.logpdf(x, mu, sd)


def test_combination_weights_give_the_exact_posterior_on_a_gaussian_toy():
    """theta ~ N(0, 1); a detected source S ~ N(theta, 1) known only to lie in [0.5, 1.5]
    (the truncation I); a map x ~ N(theta, 1). The exact posterior is
    p(theta) N(x; theta, 1) P(S in [0.5, 1.5] | theta). r3 is the map's ratio (trained with
    theta from the prior) and r4(S; theta) = N(S; theta, 1) / N(S; 0, sqrt 2)."""
    rng = np.random.default_rng(0)
    theta = np.linspace(-6, 6, 1201)
    x_o, lo, hi = -0.4, 0.5, 1.5
    log_prior = _normal_logpdf(theta, 0, 1)
    exact = log_prior + _normal_logpdf(x_o, theta, 1)
    exact += np.log(stats.norm.cdf(hi - theta) - stats.norm.cdf(lo - theta))
    w_exact = np.exp(exact - exact.max())
    w_exact /= w_exact.sum()
    # S_j ~ p(S | I = 1): the marginal N(0, sqrt 2) truncated to the region
    s_sd = np.sqrt(2)
    s = stats.truncnorm(lo / s_sd, hi / s_sd, scale=s_sd).rvs(8000, random_state=rng)
    log_r3 = _normal_logpdf(x_o, theta, 1)
    log_r4 = _normal_logpdf(s[:, None], theta[None], 1) - _normal_logpdf(s[:, None], 0, s_sd)
    logw = log_prior + combine(log_r3, log_r4)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean, sd = np.sum(w * theta), np.sqrt(np.sum(w * theta**2) - np.sum(w * theta) ** 2)
    e_mean = np.sum(w_exact * theta)
    e_sd = np.sqrt(np.sum(w_exact * theta**2) - e_mean**2)
    assert mean == pytest.approx(e_mean, abs=0.005) and sd == pytest.approx(e_sd, rel=0.01)
    # the paper's w = r3 / r4, on (theta, S) ~ p(theta) p(S | I = 1), misses it
    logw_div = log_prior + log_r3 + np.log(np.mean(np.exp(-log_r4), axis=0))
    wd = np.exp(logw_div - logw_div.max())
    wd /= wd.sum()
    assert abs(np.sum(wd * theta) - e_mean) > 0.1


def _sigma_toy_grid():
    """A grid whose only informative axis is sigma (N and h coarse), and one detection."""
    det = Detections(*(np.zeros(1) for _ in range(6)), threshold_log10=1.18)
    return Grid.default(n_sigma=81, n_h=3, n_step=98), det


def test_detections_factor_rounds_converge_to_p_i_given_theta():
    """sigma ~ U(1, 3), S ~ N(2 sigma, 0.5), I: S in [4.5, 5.5]. Lists drawn at sigma'
    from the previous round's estimate converge to the exact p(I | sigma) / p(I); the first
    round alone (sigma' from the prior) does not reach it."""
    rng = np.random.default_rng(1)
    sd, lo, hi = 0.5, 4.5, 5.5
    grid, det = _sigma_toy_grid()

    def log_p_s(s):  # the marginal p(S) under the uniform prior on [1, 3]
        return np.log(0.25 * (stats.norm.cdf((s - 2) / sd) - stats.norm.cdf((s - 6) / sd)))

    def draw(rng_, det_, theta):
        mu = 2 * theta[:, 1]
        s = mu + sd * stats.truncnorm((lo - mu) / sd, (hi - mu) / sd).rvs(random_state=rng_)
        return list(s[:, None])

    def on_grid(lists, g):
        s = np.concatenate(lists)[:, None]
        return _normal_logpdf(s, 2 * g.points[None, :, 1], sd) - log_p_s(s)

    sig = grid.points[:, 1]
    exact = np.log(stats.norm.cdf((hi - 2 * sig) / sd) - stats.norm.cdf((lo - 2 * sig) / sd))

    def moments(log_e):
        post = Posterior(grid, log_e)
        return post.mean(1), post.width(1)

    e_mu, e_w = moments(exact)
    got = {}
    for rounds in (1, 4):
        log_e, lists, change = detections_factor(rng, det, grid, draw, on_grid, 2000, rounds)
        assert len(lists) == 2000 and len(change) == rounds - 1
        got[rounds] = moments(log_e)
    assert got[4][0] == pytest.approx(e_mu, abs=0.01) and got[4][1] == pytest.approx(e_w, rel=0.03)
    assert abs(got[1][0] - e_mu) > 0.03 or abs(got[1][1] / e_w - 1) > 0.1


def test_detections_factor_is_flat_when_the_detected_fluxes_say_nothing_about_i():
    """Ten detected sources whose fluxes, above the threshold, follow logNormal(1, sigma):
    with no region to satisfy, p(I | theta) is the same for every theta, and E[r4] must
    be flat. Lists drawn at one sigma each (detections_factor) give that; fluxes drawn on
    their own from the all-sigma mixture of detected fluxes tilt it in sigma."""
    rng = np.random.default_rng(2)
    f_th, k = 10**1.18, 10
    fine = np.linspace(1, 3, 201)

    def log_p(f, s):  # (M, K) fluxes, sigma (S,) -> (M, S) log p(list | sigma)
        z = (np.log(f)[:, :, None] - 1) / s
        tail = stats.norm.logsf((np.log(f_th) - 1) / s)
        return np.sum(-0.5 * z**2 - np.log(s) - np.log(f)[:, :, None], 1) - k * (
            tail + 0.5 * np.log(2 * np.pi)
        )

    def draw_f(sigma):  # logNormal(1, sigma) above the threshold, one row per sigma
        sigma = np.repeat(np.asarray(sigma, float)[:, None], k, 1)
        a = stats.norm.cdf((np.log(f_th) - 1) / sigma)
        return np.exp(1 + sigma * stats.norm.ppf(a + (1 - a) * rng.random(sigma.shape)))

    def log_r4(lists, sig):
        f = np.stack(lists)
        from scipy.special import logsumexp

        log_marg = logsumexp(log_p(f, fine), 1) - np.log(len(fine))
        return log_p(f, np.asarray(sig, float)) - log_marg[:, None]

    det = Detections(*(np.zeros(k) for _ in range(6)), threshold_log10=1.18)
    grid = Grid.default(n_sigma=21, n_h=3, n_step=98)
    log_e, lists, change = detections_factor(
        rng, det, grid,
        draw=lambda rng_, det_, th: list(draw_f(th[:, 1])),
        on_grid=lambda ls, g: log_r4(ls, g.points[:, 1]),
        n_draws=3000, rounds=2,
    )  # fmt: skip
    assert len(lists) == 3000 and len(change) == 1
    sig = grid.points[:, 1]
    ok = np.isfinite(log_e)
    assert (~ok == (grid.points[:, 0] < k)).all()  # N >= N_det only
    by_sigma = [np.mean(log_e[ok & (sig == s)]) for s in grid.axes[1]]
    assert np.ptp(by_sigma) < 0.15
    mixed = [draw_f(rng.uniform(1, 3, k))[np.arange(k), np.arange(k)] for _ in range(3000)]
    tilted = np.log(np.mean(np.exp(log_r4(mixed, grid.axes[1])), 0))
    assert np.ptp(tilted) > 1.0


def _toy_posteriors(rng, n, sd_true, sd_used, grid):
    """Observations N_obs ~ N(N, sd_true); posteriors with likelihood sd ``sd_used``
    (sigma and h unobserved: their posterior is the prior)."""
    truths = np.column_stack([rng.uniform(60, 450, n), rng.uniform(1, 3, n), rng.uniform(1, 20, n)])
    obs = truths[:, 0] + sd_true * rng.standard_normal(n)
    pts = grid.points[:, 0]
    return [Posterior(grid, _normal_logpdf(o, pts, sd_used)) for o in obs], truths


def test_coverage_of_an_exact_posterior_is_nominal_and_of_an_overconfident_one_is_not():
    grid = Grid.default(n_sigma=11, n_h=10, n_step=2)
    rng = np.random.default_rng(1)
    post, truths = _toy_posteriors(rng, 500, 30.0, 30.0, grid)
    cov = expected_coverage(post, truths)
    for name in ("N", "sigma", "h"):
        for level in ("0.683", "0.954"):
            se = cov[name][f"{level}_se"]
            assert abs(cov[name][level] - float(level)) < 3 * se, (name, level, cov[name])
    for level in ("0.683", "0.954"):  # the joint regions too
        assert abs(cov["joint"][level] - float(level)) < 3 * cov["joint"][f"{level}_se"]
    # read once, in order: a generator (one posterior at a time) gives the same numbers
    assert expected_coverage((p for p in post), truths) == cov
    with pytest.raises(ValueError):  # as many posteriors as truths
        expected_coverage(post[:-1], truths)
    post, truths = _toy_posteriors(rng, 300, 30.0, 12.0, grid)
    over = expected_coverage(post, truths)
    assert over["N"]["0.683"] < 0.45 and over["N"]["0.954"] < 0.8
    assert over["joint"]["0.683"] < 0.45 and over["joint"]["0.954"] < 0.8


def test_n_intervals_on_coarse_grids_cover_narrow_posteriors_at_their_exact_width():
    # Gaussian N posteriors as narrow as the chain's or narrower (standard deviation 3 and 6:
    # 68% widths 6 and 12), exact and centred on noisy data. On the chain's grid (N in steps
    # of 5) and on one twice as coarse, the central intervals have the Gaussian's own width
    # (within 2%) and cover at the nominal rate. Read from cells of uniform density they
    # were up to 12% wider at 68.3% (the cells convolve the marginal with a box) and
    # over-covered: 0.74 for s = 3 on the chain's grid.
    rng = np.random.default_rng(7)
    n = 2000
    for sd in (3.0, 6.0):
        truths = np.column_stack([rng.integers(60, 400, n), np.full(n, 2.0), np.full(n, 10.0)])
        centres = truths[:, 0] + sd * rng.standard_normal(n)
        for step in (5, 10):
            grid = Grid.default(n_sigma=3, n_h=3, n_step=step)
            posts = [Posterior(grid, -0.5 * ((grid.points[:, 0] - c) / sd) ** 2) for c in centres]
            cov = expected_coverage(posts, truths)["N"]
            for lv in ("0.683", "0.954"):
                assert abs(cov[lv] - float(lv)) < 3 * cov[f"{lv}_se"], (sd, step, cov)
                exact = 2 * stats.norm.ppf((1 + float(lv)) / 2) * sd
                widths = [q.width(0, float(lv)) for q in posts[:50]]
                assert np.mean(widths) == pytest.approx(exact, rel=0.02), (sd, step, lv)


def test_hpd_level_of_a_gaussian_posterior_is_the_chi2_probability():
    grid = Grid.default(n_sigma=61, n_h=59, n_step=2)
    mu, sd = np.array([250.0, 2.0, 10.0]), np.array([30.0, 0.25, 2.5])
    z = (grid.points - mu) / sd
    post = Posterior(grid, -0.5 * np.sum(z**2, 1))
    direction = np.array([1.0, -1.0, 1.0]) / np.sqrt(3)
    for d in (0.5, 1.0, 1.5, 2.0, 2.5):
        theta = mu + d * direction * sd
        assert post.hpd_level(theta) == pytest.approx(stats.chi2.cdf(d**2, 3), abs=0.015)
    assert post.hpd_level(mu) < 0.005


def test_posterior_marginals_intervals_and_samples():
    grid = Grid.default(n_sigma=21, n_h=20, n_step=5)
    flat = Posterior(grid, np.zeros(len(grid.points)))  # the uniform prior
    lo, hi = flat.interval(1, 0.5)
    assert (lo, hi) == pytest.approx((1.5, 2.5), abs=1e-6)  # sigma ~ U(1, 3)
    assert flat.mean(2) == pytest.approx(10.5, abs=1e-6)
    draws = flat.sample(np.random.default_rng(2), 20000)
    assert draws[:, 0].min() >= 10 and draws[:, 0].max() <= 500
    assert draws[:, 1].mean() == pytest.approx(2.0, abs=0.02)
    assert np.isclose(flat.marginal2(0, 1).sum(), 1) and flat.marginal2(0, 1).shape == (99, 21)
    peaked = Posterior(grid, np.where(grid.points[:, 0] == 200, 0.0, -np.inf))
    assert peaked.mean(0) == pytest.approx(200) and peaked.interval(0, 0.954)[0] > 195
    with pytest.raises(ValueError, match="zero weight"):
        Posterior(grid, np.full(len(grid.points), -np.inf))


def test_joint_coverage_of_a_thin_ridge_needs_the_density_at_the_truth():
    # N - 100 sigma known to +-2 while the sigma axis steps 0.05 (5 in N): a ridge between
    # grid points. Truths drawn from the posterior itself must land in its level-alpha
    # region a fraction alpha of the time when the density at each truth is the exact one;
    # interpolating it from the grid pushes truths out of regions they lie in.
    grid = Grid.default(n_sigma=41, n_h=20, n_step=2)
    a = np.array([1.0, -100.0, 0.0])
    prec = np.outer(a, a) / 2.0**2 + np.diag([1 / 30.0**2, 0, 1 / 2.0**2])
    mu = np.array([250.0, 2.0, 10.0])

    def log_d(t):
        return -0.5 * np.einsum("ni,ij,nj->n", t - mu, prec, t - mu)

    post = Posterior(grid, log_d(grid.points))
    truths = np.random.default_rng(4).multivariate_normal(mu, np.linalg.inv(prec), 1000)
    exact = expected_coverage([post] * 1000, truths, log_density_at_truth=log_d(truths))
    interp = expected_coverage([post] * 1000, truths)
    for level in ("0.683", "0.954"):
        se = exact["joint"][f"{level}_se"]
        assert abs(exact["joint"][level] - float(level)) < 2.5 * se
    assert interp["joint"]["0.683"] < 0.6  # the interpolated density: far too low


def test_hpd_volume_of_a_gaussian_is_the_ellipsoid_volume_over_the_prior_box():
    grid = Grid.default(n_sigma=81, n_h=77, n_step=1)
    mu, sd = np.array([250.0, 2.0, 10.0]), np.array([20.0, 0.15, 1.5])
    post = Posterior(grid, -0.5 * np.sum(((grid.points - mu) / sd) ** 2, 1))
    box = (500 - 10) * (3 - 1) * (20 - 1)
    for level in (0.683, 0.954):
        r = np.sqrt(stats.chi2.ppf(level, 3))
        exact = 4 / 3 * np.pi * r**3 * np.prod(sd) / box
        assert post.hpd_volume(level) == pytest.approx(exact, rel=0.03)
    flat = Posterior(grid, np.zeros(len(grid.points)))  # the prior: volume = level
    assert flat.hpd_volume(0.5) == pytest.approx(0.5, abs=0.01)


def test_truncation_bounds_hold_every_cell_above_eps_and_draws_stay_inside():
    """The box of a truncation round: brute force over the grid's marginals, and
    :meth:`Posterior.sample` of the posterior masked to it never leaves it."""
    grid = Grid.default()
    p = grid.points
    log_w = _normal_logpdf(p[:, 0], 180, 8) + _normal_logpdf(p[:, 1], 2.0, 0.1)
    log_w = log_w + _normal_logpdf(p[:, 2], 19.0, 1.5)  # piled against the prior's edge
    post = Posterior(grid, log_w)
    box = truncation_bounds(post, 1e-6)
    for k, axis in enumerate(grid.axes):
        m = post.marginal(k)
        above = axis[m >= 1e-6 * m.max()]
        step = axis[1] - axis[0]
        # one more cell on each side, to the cell edges halfway between grid points
        lo = max(above.min() - 1.5 * step, axis[0])
        hi = min(above.max() + 1.5 * step, axis[-1])
        assert np.isclose(box[k, 0], lo) and np.isclose(box[k, 1], hi), k
    assert box[2, 1] == 20.0 and box[0, 0] > 100 and box[0, 1] < 260
    inside = ((p >= box[:, 0]) & (p <= box[:, 1])).all(1)
    draws = Posterior(grid, np.where(inside, log_w, -np.inf)).sample(np.random.default_rng(0), 5000)
    assert ((draws >= box[:, 0]) & (draws <= box[:, 1])).all()
    # a smaller eps never gives a smaller box
    wider = truncation_bounds(post, 1e-12)
    assert (wider[:, 0] <= box[:, 0]).all() and (wider[:, 1] >= box[:, 1]).all()


def test_box_edge_mass_is_small_inside_the_box_and_large_where_the_box_cuts():
    grid = Grid.default()
    p = grid.points
    log_w = _normal_logpdf(p[:, 0], 180, 8) + _normal_logpdf(p[:, 1], 2.0, 0.1)
    log_w = log_w + _normal_logpdf(p[:, 2], 19.0, 1.5)
    post = Posterior(grid, log_w)
    box = truncation_bounds(post, 1e-6)
    inside = ((p >= box[:, 0]) & (p <= box[:, 1])).all(1)
    edge = box_edge_mass(Posterior(grid, np.where(inside, log_w, -np.inf)), box)
    assert max(edge.values()) < 1e-5
    # a box that cuts N at 175 leaves the posterior's mass piled against it
    tight = box.copy()
    tight[0] = 172.5, 300
    inside = ((p >= tight[:, 0]) & (p <= tight[:, 1])).all(1)
    edge = box_edge_mass(Posterior(grid, np.where(inside, log_w, -np.inf)), tight)
    assert edge["N"] > 0.2  # the cell at 175 holds P(172.5 < N < 177.5 | N > 172.5)
    whole = np.array([[10.0, 500.0], [1.0, 3.0], [1.0, 20.0]])
    assert box_edge_mass(post, whole) == {"N": 0.0, "sigma": 0.0, "h": 0.0}


def test_weighted_samples_are_exact_importance_samples_of_narrow_and_truncated_posteriors():
    """Two Gaussian posteriors narrower than a few grid cells, one of them cut at N = 200:
    the weighted samples, weighted by each one's exact density at the points, give their
    exact means and standard deviations. Weights from each sample's grid cell (the cell's
    density) would widen each by a cell: N's sd by 6% here, sigma's by 6%, h's by 4%."""
    grid = Grid.default(n_sigma=21, n_h=20, n_step=5)  # steps 5, 0.1, 1.0
    mu, sd = np.array([200.0, 2.0, 10.0]), np.array([4.0, 0.08, 1.0])

    def log_gauss(t):
        return stats.norm.logpdf(t, mu, sd).sum(1)

    def log_cut(t):
        return np.where(t[:, 0] >= 200.0, log_gauss(t), -np.inf)

    def log_density(t):
        return {"gauss": log_gauss(t), "cut": log_cut(t)}

    posts = {"gauss": Posterior(grid, log_gauss(grid.points)),
             "cut": Posterior(grid, log_cut(grid.points))}  # fmt: skip
    n = 20000
    theta, w, ess = weighted_samples(posts, log_density, np.random.default_rng(3), n)
    assert theta.shape == (n, 3)
    for k in ("gauss", "cut"):
        assert w[k].sum() == pytest.approx(1.0)
        assert ess[k] > n / 5
    mean = (w["gauss"][:, None] * theta).sum(0)
    std = np.sqrt((w["gauss"][:, None] * (theta - mean) ** 2).sum(0))
    assert (np.abs(mean - mu) < 4 * sd / np.sqrt(ess["gauss"])).all()
    np.testing.assert_allclose(std, sd, rtol=0.025)
    for level in (0.683, 0.954):  # the samples' central intervals: the Gaussian's
        z = stats.norm.ppf((1 + level) / 2)
        lo, hi = weighted_interval(theta[:, 1], w["gauss"], level)
        assert lo == pytest.approx(mu[1] - z * sd[1], abs=0.05 * sd[1] * z)
        assert hi == pytest.approx(mu[1] + z * sd[1], abs=0.05 * sd[1] * z)
    # the cut one: no weight below N = 200, and N's half-normal mean and sd
    assert w["cut"][theta[:, 0] < 200.0].sum() == 0.0
    n_mean = (w["cut"] * theta[:, 0]).sum()
    n_sd = np.sqrt((w["cut"] * (theta[:, 0] - n_mean) ** 2).sum())
    half = stats.halfnorm(200.0, 4.0)
    assert n_mean == pytest.approx(half.mean(), abs=4 * half.std() / np.sqrt(ess["cut"]))
    assert n_sd == pytest.approx(half.std(), rel=0.03)
    # the grid cell's density instead of the exact one: too wide (what the weights avoid)
    cells = cell_index(grid, theta)
    w_cell = posts["gauss"].w.ravel()[cells] / posts["gauss"].cell_volume.ravel()[cells]
    q = np.mean([p.w.ravel()[cells] / p.cell_volume.ravel()[cells] for p in posts.values()], 0)
    w_cell = w_cell / q / (w_cell / q).sum()
    m_cell = (w_cell[:, None] * theta).sum(0)
    std_cell = np.sqrt((w_cell[:, None] * (theta - m_cell) ** 2).sum(0))
    assert (std_cell[:2] > 1.04 * sd[:2]).all()


def test_weighted_samples_refuse_a_posterior_with_no_mass_at_the_samples():
    grid = Grid.default(n_sigma=5, n_h=5, n_step=50)
    post = Posterior(grid, np.zeros(len(grid.points)))
    with pytest.raises(ValueError, match="zero density at every sample"):
        weighted_samples({"flat": post}, lambda t: {"flat": np.full(len(t), -np.inf)},
                         np.random.default_rng(0), 100)  # fmt: skip
