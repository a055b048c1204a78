"""Posteriors of the population parameters on a grid, their combination and calibration.

Ratio estimators give ``log r(theta; .)``; with the (uniform) prior, the posterior on a grid
of ``theta = (N, sigma, h)`` is proportional to ``r``. Marginals are sums over the grid;
intervals are central, from each marginal's CDF (its log density interpolated between grid
points); weighted samples anywhere in the box (:func:`weighted_samples`) carry each
estimator's own density at the sample. Coverage is the
expected coverage of Hermans et al. (2022): the fraction of test observations whose true
parameter lies inside the credible interval of each level.

**Combining detected and sub-threshold information** (paper 001 eqs. 8-9). ``r3`` is
trained on targeted simulations with ``theta`` drawn from the prior (truncated to
``N >= N_det``, and in truncation rounds to a box: :func:`truncation_bounds`), so
``p(theta) r3(theta; x_o)`` with that truncated prior is the posterior given the map and
the detections held fixed. The probability of the detections themselves enters through
``p(I = 1 | theta) / p(I = 1) = E_{S ~ p(S_det | I = 1)} r4(S; theta)`` with
``r4(S; theta) = p(S | theta) / p(S)`` (eq. 9). Hence the combined weights are
``w = r3 * E[r4]`` (:func:`combine`). Paper 001 writes ``w = r3 / r4`` for samples
``(theta, S_det) ~ p(theta) p(S_det | I = 1)``; with ``r4`` as eq. 9 defines it, that weight
would divide out the detections' information instead of adding it: the Gaussian toy of
``tests/test_population_inference.py`` shows ``r3 * E[r4]`` gives the exact posterior and
``r3 / r4`` does not. The draws ``S ~ p(S_det | I = 1)`` that ``E[r4]`` averages over are
made by :func:`probcat.population.chain.detections_factor`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from probcat.population.simulator import PARAM_NAMES, PRIOR_HIGH, PRIOR_LOW

__all__ = [
    "Grid",
    "Posterior",
    "combine",
    "logmeanexp",
    "logsumexp",
    "expected_coverage",
    "truncation_bounds",
    "box_edge_mass",
    "weighted_samples",
    "weighted_interval",
    "LEVELS",
]

LEVELS = (0.683, 0.954)


@dataclass(frozen=True)
class Grid:
    """A regular grid over the prior box: ``axes`` (one array per parameter) and the
    ``points`` ``(G, 3)`` in C order."""

    axes: tuple[np.ndarray, ...]

    @classmethod
    def default(cls, n_sigma: int = 41, n_h: int = 39, n_step: int = 5) -> Grid:
        n_axis = np.arange(PRIOR_LOW[0], PRIOR_HIGH[0] + 0.5, n_step)
        return cls(
            (
                n_axis,
                np.linspace(PRIOR_LOW[1], PRIOR_HIGH[1], n_sigma),
                np.linspace(PRIOR_LOW[2], PRIOR_HIGH[2], n_h),
            )
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    @property
    def points(self) -> np.ndarray:
        mesh = np.meshgrid(*self.axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], 1)


def _cell_edges(axis: np.ndarray, lo: float, hi: float) -> np.ndarray:
    mid = (axis[1:] + axis[:-1]) / 2
    return np.concatenate(
        [[max(lo, axis[0] - (mid[0] - axis[0]))], mid, [min(hi, axis[-1] + (axis[-1] - mid[-1]))]]
    )


class Posterior:
    """A posterior on a :class:`Grid` from log densities ``(G,)`` relative to the uniform
    prior (``-inf``: excluded); each point carries the mass of its cell (the cells of the
    end points are half as wide)."""

    def __init__(self, grid: Grid, log_w: np.ndarray):
        log_w = np.asarray(log_w, float)
        if not np.isfinite(log_w).any():
            raise ValueError("every grid point has zero weight")
        self.grid = grid
        vol = sum(
            np.log(np.diff(_cell_edges(a, PRIOR_LOW[k], PRIOR_HIGH[k])))[
                tuple(slice(None) if i == k else None for i in range(3))
            ]
            for k, a in enumerate(grid.axes)
        )
        self.log_density = log_w.reshape(grid.shape)  # relative to the uniform prior
        self.cell_volume = np.exp(vol - logsumexp(vol))  # fraction of the prior box
        log_m = self.log_density + vol
        self.w = np.exp(log_m - logsumexp(log_m))
        self._cdf = {}  # marginal_cdf of each parameter, once computed

    def marginal(self, k: int) -> np.ndarray:
        axes = tuple(i for i in range(self.w.ndim) if i != k)
        return self.w.sum(axes)

    def marginal2(self, i: int, j: int) -> np.ndarray:
        k = next(a for a in range(3) if a not in (i, j))
        return self.w.sum(k) if i < j else self.w.sum(k).T

    def mean(self, k: int) -> float:
        return float(np.sum(self.marginal(k) * self.grid.axes[k]))

    def interval(self, k: int, level: float) -> tuple[float, float]:
        """Central interval of marginal ``k`` holding ``level`` of the mass, from the
        marginal's CDF (:meth:`marginal_cdf`)."""
        x, cdf = self.marginal_cdf(k)
        lo, hi = np.interp([(1 - level) / 2, (1 + level) / 2], cdf, x)
        return float(lo), float(hi)

    def marginal_cdf(self, k: int, sub: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """The CDF of marginal ``k`` on a fine grid ``(x, cdf)``, ``sub`` points a cell.

        The marginal density is known at the grid points (each point's mass over its cell's
        width); between them its log is interpolated by a cubic spline through the points of
        non-zero mass (linearly with fewer than four, constant beyond the outermost ones to
        their cell edges), and cells of zero mass stay empty. Cells of uniform density
        instead would convolve the marginal with a box one cell wide: a Gaussian of standard
        deviation ``s`` gets variance ``s**2 + step**2 / 12``, so the N intervals (cells of 5)
        of posteriors as narrow as ``s`` = 3 came out 12% too wide at 68.3% and covered 0.74
        (``tests/test_population_inference.py``). The spline is exact for a Gaussian (a
        quadratic log density); its overshoot is capped 5 above the largest point."""
        if k in self._cdf:
            return self._cdf[k]
        axis = self.grid.axes[k]
        edges = _cell_edges(axis, PRIOR_LOW[k], PRIOR_HIGH[k])
        dens = self.marginal(k) / np.diff(edges)
        pos = dens > 0
        i0, i1 = np.flatnonzero(pos)[[0, -1]]
        x = np.linspace(edges[i0], edges[i1 + 1], sub * (i1 - i0 + 1) + 1)
        xs, ld = axis[pos], np.log(dens[pos])
        at = np.clip(x, xs[0], xs[-1])
        if len(xs) >= 4:
            from scipy.interpolate import CubicSpline

            log_f = CubicSpline(xs, ld)(at)
        else:
            log_f = np.interp(at, xs, ld)
        f = np.exp(np.minimum(log_f - ld.max(), 5.0))
        # a point on a cell edge belongs to both cells: zero only between empty cells
        left, right = (np.clip(np.searchsorted(edges, x, side) - 1, 0, len(axis) - 1)
                       for side in ("left", "right"))  # fmt: skip
        f = np.where(pos[left] | pos[right], f, 0.0)
        cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(x))])
        self._cdf[k] = (x, cdf / cdf[-1])
        return self._cdf[k]

    def contains(self, k: int, value: float, level: float) -> bool:
        lo, hi = self.interval(k, level)
        return lo <= value <= hi

    def summary(self) -> dict:
        out = {}
        for k, name in enumerate(PARAM_NAMES):
            out[name] = {
                "mean": self.mean(k),
                "interval_68": list(self.interval(k, 0.683)),
                "interval_95": list(self.interval(k, 0.954)),
            }
        return out

    def hpd_level(self, theta, log_density_at: float | None = None) -> float:
        """The credibility of the highest-posterior-density region whose edge passes
        through ``theta`` (3 parameters): the posterior mass of the grid cells whose density
        exceeds the density at ``theta``. ``theta`` lies inside the joint ``level`` credible
        region when this is below ``level``.

        ``log_density_at``: the estimator's own log density at ``theta`` (same units as the
        grid's ``log_w``), as a ratio network gives it anywhere. Without it the density at
        ``theta`` is interpolated (trilinear in the log density), which on a grid coarser
        than a thin posterior ridge (``N`` against ``sigma`` when the total flux is sharply
        measured) falls far below the true value and pushes ``theta`` out of regions it lies
        in."""
        if log_density_at is None:
            from scipy.interpolate import RegularGridInterpolator

            ld = np.where(np.isfinite(self.log_density), self.log_density, -1e300)
            at = RegularGridInterpolator(self.grid.axes, ld, bounds_error=False, fill_value=None)
            point = np.clip(np.asarray(theta, float), [a[0] for a in self.grid.axes],
                            [a[-1] for a in self.grid.axes])  # fmt: skip
            log_density_at = float(at(point[None])[0])
        return float(self.w[self.log_density > log_density_at].sum())

    def hpd_volume(self, level: float = 0.683) -> float:
        """The fraction of the prior box inside the joint highest-density region of
        credibility ``level``: the densest cells that together hold ``level`` of the mass
        (the last one counted in proportion). One number for how tight the joint
        posterior is, where marginal widths can hide a narrower joint region."""
        order = np.argsort(-self.log_density, axis=None, kind="stable")
        mass = self.w.ravel()[order]
        vol = self.cell_volume.ravel()[order]
        cum = np.cumsum(mass)
        k = int(np.searchsorted(cum, level))
        before = cum[k - 1] if k > 0 else 0.0
        frac = (level - before) / mass[k] if k < len(mass) and mass[k] > 0 else 0.0
        return float(vol[:k].sum() + frac * (vol[k] if k < len(vol) else 0.0))

    def width(self, k: int, level: float = 0.683) -> float:
        lo, hi = self.interval(k, level)
        return hi - lo

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws ``(n, 3)``: grid cells by weight, uniform inside each cell."""
        flat = self.w.ravel()
        idx = rng.choice(flat.size, size=n, p=flat / flat.sum())
        cells = np.stack(np.unravel_index(idx, self.grid.shape), 1)
        out = np.empty((n, 3))
        for k, axis in enumerate(self.grid.axes):
            edges = _cell_edges(axis, PRIOR_LOW[k], PRIOR_HIGH[k])
            lo, hi = edges[cells[:, k]], edges[cells[:, k] + 1]
            out[:, k] = lo + (hi - lo) * rng.random(n)
        return out


def cell_index(grid: Grid, theta: np.ndarray) -> np.ndarray:
    """The flat index of the grid cell (:meth:`Posterior.sample`'s cells: edges halfway
    between grid points) holding each point of ``theta`` ``(n, 3)``."""
    idx = []
    for k, axis in enumerate(grid.axes):
        edges = _cell_edges(axis, PRIOR_LOW[k], PRIOR_HIGH[k])
        i = np.searchsorted(edges, theta[:, k], side="right") - 1
        idx.append(np.clip(i, 0, len(axis) - 1))
    return np.ravel_multi_index(idx, grid.shape)


def weighted_samples(posteriors: dict, log_density, rng: np.random.Generator, n: int):
    """Importance-weighted samples shared by several posteriors on one grid.

    ``n`` points ``theta`` ``(n, 3)`` are drawn from an equal mixture of the posteriors' own
    grid versions (:meth:`Posterior.sample`: a cell by its mass, uniform inside it), so every
    posterior has a share of the points where its mass is. Each posterior ``k`` weights them
    by ``p_k(theta) / q(theta)``: ``log_density(theta)`` gives a dict of each posterior's log
    density at the points, the estimator's own value there rather than its grid cell's, and
    ``q`` is the mixture's density. The weights (a dict of ``(n,)`` arrays, each summing to
    1) are then exact importance weights of each posterior, with no grid cells in them.
    Returns ``theta``, the weights and each posterior's effective sample size
    ``1 / sum(w^2)``."""
    keys = list(posteriors)
    first = posteriors[keys[0]]
    counts = rng.multinomial(n, [1 / len(keys)] * len(keys))
    theta = np.concatenate([posteriors[k].sample(rng, m) for k, m in zip(keys, counts)])
    theta = theta[rng.permutation(n)]
    cells = cell_index(first.grid, theta)
    q = np.mean(
        [posteriors[k].w.ravel()[cells] / posteriors[k].cell_volume.ravel()[cells] for k in keys],
        0,
    )
    log_p = log_density(theta)
    weights, ess = {}, {}
    for k in keys:
        log_w = np.asarray(log_p[k], float) - np.log(q)
        if not np.isfinite(log_w).any():
            raise ValueError(f"{k}: zero density at every sample")
        w = np.exp(log_w - log_w.max())
        weights[k] = w / w.sum()
        ess[k] = float(1.0 / np.sum(weights[k] ** 2))
    return theta, weights, ess


def weighted_interval(x: np.ndarray, w: np.ndarray, level: float) -> tuple[float, float]:
    """The central interval of weighted samples ``x`` (weights ``w`` summing to 1) holding
    ``level`` of the weight: their weighted quantiles, each sample's weight centred on it."""
    order = np.argsort(x)
    cum = np.cumsum(w[order]) - w[order] / 2
    lo, hi = np.interp([(1 - level) / 2, (1 + level) / 2], cum, x[order])
    return float(lo), float(hi)


def truncation_bounds(post: Posterior, eps: float = 1e-6) -> np.ndarray:
    """The box ``(3, 2)`` of a truncation round (TMNRE): per parameter, the grid cells whose
    marginal mass is at least ``eps`` times the largest cell's, one more cell on each side,
    from the lower edge of the first to the upper edge of the last (cell edges halfway
    between grid points, as :meth:`Posterior.sample` draws inside them), within the prior."""
    out = np.empty((len(post.grid.axes), 2))
    for k, axis in enumerate(post.grid.axes):
        m = post.marginal(k)
        keep = np.flatnonzero(m >= eps * m.max())
        i0, i1 = max(keep[0] - 1, 0), min(keep[-1] + 1, len(axis) - 1)
        edges = _cell_edges(axis, PRIOR_LOW[k], PRIOR_HIGH[k])
        out[k] = edges[i0], edges[i1 + 1]
    return out


def box_edge_mass(post: Posterior, bounds) -> dict:
    """Per parameter, the marginal mass of ``post`` in the outermost grid cell inside the
    box ``bounds`` ``(3, 2)``, on each side where the box ends inside the prior (the larger
    of the two; 0 where the box spans the prior). A truncated posterior whose mass reaches
    a box edge inside the prior would have been cut by the box: this is its check."""
    b = np.asarray(bounds, float)
    out = {}
    for k, (axis, name) in enumerate(zip(post.grid.axes, PARAM_NAMES)):
        m = post.marginal(k) / post.marginal(k).sum()
        inside = np.flatnonzero((axis >= b[k, 0]) & (axis <= b[k, 1]))
        edge = [m[inside[0]]] if b[k, 0] > PRIOR_LOW[k] else []
        edge += [m[inside[-1]]] if b[k, 1] < PRIOR_HIGH[k] else []
        out[name] = float(max(edge, default=0.0))
    return out


def combine(log_r3: np.ndarray, log_r4_draws: np.ndarray) -> np.ndarray:
    """Combined log weights ``log r3 + log mean_j r4(S_j; theta)`` (see the module
    docstring): ``log_r3`` ``(G,)``, ``log_r4_draws`` ``(M, G)`` for ``M`` draws
    ``S_j ~ p(S_det | I = 1)``."""
    return np.asarray(log_r3) + logmeanexp(log_r4_draws, axis=0)


def logmeanexp(a: np.ndarray, axis: int = 0) -> np.ndarray:
    a = np.asarray(a, float)
    return logsumexp(a, axis=axis) - np.log(a.shape[axis])


def logsumexp(a, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """``log(sum(exp(a)))`` over ``axis`` (all axes when None) of real ``a``, by the
    arithmetic of ``scipy.special.logsumexp`` (SciPy 1.17) step for step: the largest
    terms (all those equal to it) taken out of the sum, the rest exponentiated after the
    shift, ``log1p`` of their sum over the count of the largest, and the plain
    ``log(sum(exp(a)))`` wherever that is not finite (a slice of ``-inf``, an ``inf``,
    ``nan``). Without SciPy's array-API bookkeeping (copies and index masks of the whole
    array) it is about 35 times as fast on the chain's ``(512, 158,000)`` arrays of
    ``log r4`` (0.8 s against 27 s here), with the same values
    (``tests/test_population_inference.py``)."""
    a = np.atleast_1d(np.asarray(a, float))
    axis = tuple(range(a.ndim)) if axis is None else axis
    if a.size == 0:
        shape = np.asarray(a.shape)
        shape[list(np.atleast_1d(axis))] = 1
        return np.squeeze(np.full(tuple(shape), -np.inf), axis=axis)[()]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out_inf = np.log(np.sum(np.exp(a), axis=axis, keepdims=True))
        a_max = np.max(a, axis=axis, keepdims=True)
        i_max = a == a_max
        m = np.sum(i_max.astype(a.dtype), axis=axis, keepdims=True, dtype=a.dtype)
        rest = np.exp(np.where(i_max, -np.inf, a) - a_max)
        s = np.sum(rest, axis=axis, keepdims=True, dtype=a.dtype)
        s = np.where(s == 0, s, s / m)
        out = np.log1p(s) + np.log(m) + a_max
    out = np.where(np.isfinite(out), out, out_inf)
    return np.squeeze(out, axis=axis)[()]


def expected_coverage(
    posteriors: Iterable[Posterior],
    truths: np.ndarray,
    levels=LEVELS,
    log_density_at_truth: np.ndarray | None = None,
) -> dict:
    """Per parameter and level, the fraction of ``truths`` ``(n, 3)`` inside the central
    interval of their posterior, with its binomial standard error; under ``"joint"``, the
    fraction inside the joint highest-density region of each level
    (:meth:`Posterior.hpd_level`, the expected coverage test of SBI), with each estimator's
    own log density at its truth when ``log_density_at_truth`` ``(n,)`` is given.

    ``posteriors`` is read once, in order: a generator keeps one posterior in memory at a
    time (a list of 1,000 on the chain's grid holds about 4 GB)."""
    at = [None] * len(truths) if log_density_at_truth is None else log_density_at_truth
    hits = {(k, level): [] for k in range(len(PARAM_NAMES)) for level in levels}
    hpd = []
    for p, t, a in zip(posteriors, truths, at, strict=True):
        for k, level in hits:
            hits[k, level].append(p.contains(k, t[k], level))
        hpd.append(p.hpd_level(t, a))
    out = {}
    for k, name in enumerate(PARAM_NAMES):
        out[name] = {}
        for level in levels:
            h = np.array(hits[k, level])
            out[name][f"{level:.3f}"] = float(h.mean())
            out[name][f"{level:.3f}_se"] = float(np.sqrt(level * (1 - level) / len(h)))
    hpd = np.array(hpd)
    out["joint"] = {}
    for level in levels:
        out["joint"][f"{level:.3f}"] = float(np.mean(hpd < level))
        out["joint"][f"{level:.3f}_se"] = float(np.sqrt(level * (1 - level) / len(hpd)))
    return out
