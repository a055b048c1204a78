"""Redshift PDFs: Gaussian mixtures truncated at z = 0, their summaries and qp ensembles.

probcat's photo-z PDFs are Gaussian mixtures (5 components per network and orientation
read, paper 002 section 3) *restricted to z >= 0 and renormalised* (see
:mod:`probcat.nets.photoz`). The file format is qp's (``qp.Ensemble(qp.mixmod, ...)``,
written with ``Ensemble.write_to``) holding the untruncated components;
:func:`truncated_pdf` / :func:`truncated_cdf` / :func:`to_grid_ensemble` give the density
probcat means. All summaries below use the truncated density; the point estimate is the
mode on the fixed grid ``GRID`` (0-3, 301 points, paper 002 section 4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import ndtr

from probcat.errors import ProbcatValueError

__all__ = [
    "GRID",
    "check_mixture",
    "truncated_pdf",
    "truncated_cdf",
    "truncated_mean",
    "quantiles",
    "summaries",
    "to_qp",
    "to_grid_ensemble",
    "interp_ensemble",
    "grid_pdf",
    "pdf_path",
    "write_ensemble",
]

GRID = np.linspace(0.0, 3.0, 301)
PDF_ROWS = 64  # objects per block in truncated_pdf
SUMMARY_COLUMNS = ("z_mode", "z_median", "z_mean", "z_lo68", "z_hi68", "z_lo95", "z_hi95")


def check_mixture(weights, means, sds):
    """``(n, k)`` float64 arrays; weights non-negative summing to one, sds > 0."""
    w, m, s = (np.atleast_2d(np.asarray(a, np.float64)) for a in (weights, means, sds))
    if not (w.shape == m.shape == s.shape):
        raise ProbcatValueError(f"mixture arrays differ in shape: {w.shape}, {m.shape}, {s.shape}")
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(m)) and np.all(np.isfinite(s))):
        raise ProbcatValueError("mixture parameters must be finite")
    if np.any(w < 0) or np.any(s <= 0):
        raise ProbcatValueError("mixture weights must be >= 0 and standard deviations > 0")
    if not np.allclose(w.sum(1), 1.0, atol=1e-5):
        raise ProbcatValueError("mixture weights must sum to one per object")
    return w, m, s


def _mass_above_zero(w, m, s):
    return np.sum(w * ndtr(m / s), axis=1)


def truncated_cdf(weights, means, sds, z) -> np.ndarray:
    """``(n,)`` CDF of each object's truncated mixture at its own ``z`` (``(n,)`` or scalar)."""
    w, m, s = check_mixture(weights, means, sds)
    z = np.broadcast_to(np.asarray(z, np.float64), (len(w),))
    out = _cdf(w, m, s, z[:, None], ndtr(-m / s), _mass_above_zero(w, m, s))[:, 0]
    return np.clip(np.where(z <= 0, 0.0, out), 0.0, 1.0)


def _cdf(w, m, s, z, zero, mass) -> np.ndarray:
    """``(n, j)`` truncated-mixture CDFs at ``z`` ``(n, j)`` of checked mixtures ``(n, k)``,
    given each component's mass below zero ``zero = ndtr(-m / s)`` and each mixture's
    ``mass`` above zero (unclipped; ``z >= 0``)."""
    below = ndtr((z[:, :, None] - m[:, None, :]) / s[:, None, :]) - zero[:, None, :]
    return np.sum(w[:, None, :] * below, axis=2) / mass[:, None]


def truncated_pdf(weights, means, sds, grid=GRID) -> np.ndarray:
    """``(n, g)`` density of the truncated mixture on ``grid`` (zero below z = 0)."""
    w, m, s = check_mixture(weights, means, sds)
    g = np.asarray(grid, np.float64)
    mass = _mass_above_zero(w, m, s)
    dens = np.empty((len(w), g.size))
    for a in range(0, len(w), PDF_ROWS):  # a block of objects at a time: stays in cache
        b = a + PDF_ROWS
        at = np.broadcast_to(g, (len(w[a:b]), g.size))
        dens[a:b] = _pdf_at(w[a:b], m[a:b], s[a:b], at, mass[a:b])
    return np.where(g[None, :] < 0, 0.0, dens)


def _pdf_at(w, m, s, z, mass) -> np.ndarray:
    """``(n, j)`` truncated-mixture densities at ``z`` ``(n, j)`` (``z >= 0``) of checked
    mixtures ``(n, k)`` with ``mass`` above zero."""
    t = (z[:, :, None] - m[:, None, :]) / s[:, None, :]
    t *= t
    t *= -0.5
    np.exp(t, out=t)
    wc = w / (np.sqrt(2 * np.pi) * s * mass[:, None])
    return np.einsum("njk,nk->nj", t, wc)


def truncated_mean(weights, means, sds) -> np.ndarray:
    """Exact mean of the truncated mixture: sum_k w_k (mu_k Phi(a_k) + sd_k phi(a_k)) / mass,
    a_k = mu_k / sd_k."""
    w, m, s = check_mixture(weights, means, sds)
    a = m / s
    phi = np.exp(-0.5 * a**2) / np.sqrt(2 * np.pi)
    return np.sum(w * (m * ndtr(a) + s * phi), axis=1) / _mass_above_zero(w, m, s)


def quantiles(weights, means, sds, q, iters: int = 100, start=None) -> np.ndarray:
    """Quantile ``q`` of each truncated mixture on the exact CDF: ``(n,)`` for a number
    ``q``, ``(n, len(q))`` for a list of them. Newton's method on the CDF, kept inside a
    bracket ``[lo, hi]`` that starts as ``[0, max(mu + 10 sd)]`` and shrinks at every step (a
    step that would leave it is replaced by bisection), so it converges for any mixture;
    each value stops when its step or its bracket falls under 1e-12 (at most ``iters``
    steps), independently of the others. ``start``: first guesses, ``(n,)`` or
    ``(n, len(q))`` (default: the bracket's middle)."""
    w, m, s = check_mixture(weights, means, sds)
    qs = np.atleast_1d(np.asarray(q, np.float64))
    zero, mass = ndtr(-m / s), _mass_above_zero(w, m, s)  # once for every step
    shape = (len(w), len(qs))
    lo = np.zeros(shape)
    hi = np.repeat(np.max(m + 10 * s, axis=1).clip(min=1e-6)[:, None], len(qs), axis=1)
    if start is None:
        z = 0.5 * (lo + hi)
    else:
        z = np.array(np.broadcast_to(np.asarray(start, np.float64).reshape(len(w), -1), shape))
        z = np.where(np.isfinite(z), np.clip(z, lo, hi), 0.5 * (lo + hi))
    active = np.ones(shape, bool)
    before = hi - lo  # the last step taken
    for _ in range(iters):
        r = np.flatnonzero(active.any(1))
        if len(r) == 0:
            break
        zr, act = z[r], active[r]
        f = _cdf(w[r], m[r], s[r], zr, zero[r], mass[r]) - qs
        left = f < 0
        lo_r = np.where(act & left, zr, lo[r])
        hi_r = np.where(act & ~left, zr, hi[r])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = f / _pdf_at(w[r], m[r], s[r], zr, mass[r])
        new = zr - step
        # Newton only when it stays inside the bracket and is under half the last step;
        # else bisection (Newton alone can bounce between two modes; the rule of rtsafe in
        # Press et al., Numerical Recipes, sec. 9.4)
        newton = np.isfinite(new) & (new > lo_r) & (new < hi_r)
        newton &= np.abs(step) < 0.5 * before[r]
        tiny = np.abs(step) < 1e-12  # converged: the rest is rounding
        new = np.where(newton | tiny, new, 0.5 * (lo_r + hi_r))
        done = tiny | (np.abs(new - zr) < 1e-12) | (hi_r - lo_r < 1e-12)
        before[r] = np.where(act, np.abs(new - zr), before[r])
        z[r] = np.where(act, new, zr)
        lo[r], hi[r] = lo_r, hi_r
        active[r] = act & ~done
    return z[:, 0] if np.ndim(q) == 0 else z


def _grid_quantiles(pdf, grid, levels) -> np.ndarray:
    """``(n, len(levels))`` quantiles read off densities ``pdf`` ``(n, g)`` on ``grid`` by
    linear interpolation of their trapezoid CDF (NaN past the grid): first guesses for
    :func:`quantiles`."""
    g = np.asarray(grid, np.float64)
    cdf = np.concatenate(
        [np.zeros((len(pdf), 1)), np.cumsum(0.5 * (pdf[:, 1:] + pdf[:, :-1]) * np.diff(g), 1)], 1
    )
    out = np.full((len(pdf), len(levels)), np.nan)
    rows = np.arange(len(pdf))
    for j, lev in enumerate(levels):
        i = np.sum(cdf < lev, axis=1)  # cdf[i - 1] < lev <= cdf[i]
        ok = (i > 0) & (i < g.size)
        i0, i1 = i[ok] - 1, i[ok]
        c0, c1 = cdf[rows[ok], i0], cdf[rows[ok], i1]
        frac = (lev - c0) / np.where(c1 > c0, c1 - c0, 1.0)
        out[ok, j] = g[i0] + frac * (g[i1] - g[i0])
    return out


def summaries(weights, means, sds, grid=GRID) -> dict[str, np.ndarray]:
    """Catalog columns: mode on ``grid``, exact median, mean and central 68%/95% intervals."""
    w, m, s = check_mixture(weights, means, sds)
    if len(w) == 0:
        return {c: np.zeros(0) for c in SUMMARY_COLUMNS}
    pdf = truncated_pdf(w, m, s, grid)
    out = {"z_mode": np.asarray(grid)[np.argmax(pdf, axis=1)]}
    levels = {"z_median": 0.5, "z_lo68": 0.15865, "z_hi68": 0.84135}
    levels.update(z_lo95=0.02275, z_hi95=0.97725)
    qv = quantiles(
        w, m, s, list(levels.values()), start=_grid_quantiles(pdf, grid, levels.values())
    )
    out.update({name: qv[:, j] for j, name in enumerate(levels)})
    out["z_mean"] = truncated_mean(w, m, s)
    return {c: out[c] for c in SUMMARY_COLUMNS}


def to_qp(weights, means, sds, ancil: dict | None = None):
    """``qp.Ensemble(qp.mixmod, ...)`` of the (untruncated) components."""
    import qp

    w, m, s = check_mixture(weights, means, sds)
    ens = qp.Ensemble(qp.mixmod, data={"weights": w, "means": m, "stds": s})
    if ancil:
        ens.set_ancil({k: np.asarray(v) for k, v in ancil.items()})
    return ens


def grid_pdf(ensemble, grid=GRID) -> np.ndarray:
    """``(n, g)`` PDFs of any qp ensemble on ``grid``, renormalised to unit integral there.
    A ``mixmod`` ensemble is taken as probcat's truncated mixture."""
    import qp

    if ensemble.gen_func is qp.mixmod.create or getattr(ensemble, "gen_class", None) is qp.mixmod:
        d = ensemble.objdata
        pdf = truncated_pdf(d["weights"], d["means"], d["stds"], grid)
    else:
        pdf = np.asarray(ensemble.pdf(grid), np.float64)
    pdf = np.nan_to_num(np.clip(pdf, 0, None))
    norm = np.trapezoid(pdf, grid, axis=1)
    flat = norm <= 0
    pdf[flat] = 1.0
    norm[flat] = np.trapezoid(np.ones_like(grid), grid)
    return pdf / norm[:, None]


def interp_ensemble(pdf: np.ndarray, grid=GRID):
    """``qp.interp`` ensemble of PDFs ``(n, g)`` tabulated on ``grid``."""
    import qp

    return qp.Ensemble(qp.interp, data={"xvals": np.asarray(grid), "yvals": np.asarray(pdf)})


def to_grid_ensemble(ensemble, grid=GRID):
    """The ensemble as ``qp.interp`` on ``grid`` (normalised there): how every code's PDFs
    go through the same metrics."""
    return interp_ensemble(grid_pdf(ensemble, grid), grid)


def pdf_path(catalog) -> Path:
    """Where the photo-z PDFs of the catalog file ``catalog`` go: ``<stem>_pz.hdf5``
    beside it (``probcat photoz``, ``probcat run --photoz``)."""
    catalog = Path(catalog)
    return catalog.with_name(catalog.stem + "_pz.hdf5")


def write_ensemble(ensemble, path: str | Path) -> Path:
    """Write with qp (format from the suffix: ``.hdf5``, ``.fits``, ``.pq``), atomically."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        ensemble.write_to(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
