"""Scenes composed from a :class:`~probcat.simulate.bank.SourceBank`: positions, counts,
noise and truth (SNR, blendedness).

A scene catalog (:class:`~probcat.catalog.FullCatalog`) carries, per source: ``x, y``
(pixels), ``galaxy`` (bool), ``flux`` and ``mag`` ``(n, bands)``, ``source_id`` (galaxy id in
the population, -1 for stars), the morphology columns (NaN for stars), ``redshift``, and
with ``truth=True`` ``snr`` (paper 000 eq. 12 on the noiseless isolated source, 5-px
aperture) and ``blendedness`` (eqs. 13-14, over the image pixels), both ``(n, bands)``.
Bookkeeping columns ``bank_index``, ``variant``, ``phase``, ``stamp_x``, ``stamp_y`` let
:meth:`SceneSimulator.compose` redraw any catalog exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from probcat.catalog import FullCatalog
from probcat.errors import ProbcatValueError
from probcat.simulate.bank import SourceBank, dihedral, dihedral_truth, overlap_dot, paste
from probcat.simulate.noise import RESAMPLING_KERNELS, coadd_noise
from probcat.simulate.prior import (
    FAMILY_COLUMNS,
    GALAXY_DENSITY,
    MORPHOLOGY_COLUMNS,
    STAR_DENSITY,
    star_colors,
    star_magnitudes,
)

__all__ = ["SceneConfig", "Scene", "SceneSimulator", "SeeingMixture"]

NOISE_MODELS = ("gaussian", "poisson")


@dataclass(frozen=True)
class SceneConfig:
    """Scene layout and noise.

    Attributes:
        height, width: image size in pixels.
        galaxy_density: mean galaxies per arcmin^2 (Poisson), over the area where centres fall.
        star_density: mean stars per arcmin^2.
        margin: centres fall in ``[-margin, size - 1 + margin]`` pixels (0: inside, as in
            paper 000; > 0 lets light from just outside enter the image).
        noise: ``"gaussian"`` (background-limited, sigma = sqrt(sky), the paper's) or
            ``"poisson"`` (Poisson on sky + source photons, sky subtracted).
        coadd_fraction: the fraction of scenes (Gaussian noise only) whose noise is that of
            a coadd instead (:func:`probcat.simulate.noise.coadd_noise`: correlated between
            neighbouring pixels, the same pixel sigma), each band of 1 to ``coadd_visits``
            visits (uniform) resampled by one of ``coadd_kernels`` (uniform). 0: white
            noise, and the random stream of every scene as without the option.
    """

    height: int = 98
    width: int = 98
    galaxy_density: float = GALAXY_DENSITY
    star_density: float = STAR_DENSITY
    margin: int = 0
    noise: str = "gaussian"
    coadd_fraction: float = 0.0
    coadd_visits: int = 16
    coadd_kernels: tuple[str, ...] = ("lanczos3", "bilinear")

    def __post_init__(self):
        if self.height < 1 or self.width < 1:
            raise ProbcatValueError(f"image size must be positive, got {self.height}x{self.width}")
        if self.galaxy_density < 0 or self.star_density < 0:
            raise ProbcatValueError("source densities must be >= 0")
        if self.noise not in NOISE_MODELS:
            raise ProbcatValueError(f"noise must be one of {NOISE_MODELS}, got {self.noise!r}")
        if not 0.0 <= self.coadd_fraction <= 1.0:
            raise ProbcatValueError(f"coadd_fraction must lie in [0, 1], got {self.coadd_fraction}")
        if self.coadd_fraction and self.noise != "gaussian":
            raise ProbcatValueError("coadd noise replaces Gaussian noise: use noise='gaussian'")
        if self.coadd_visits < 1:
            raise ProbcatValueError(f"coadd_visits must be >= 1, got {self.coadd_visits}")
        bad = [k for k in self.coadd_kernels if k not in RESAMPLING_KERNELS]
        if bad or not self.coadd_kernels:
            raise ProbcatValueError(
                f"coadd_kernels must be some of {RESAMPLING_KERNELS}, got {self.coadd_kernels}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)


@dataclass(frozen=True)
class Scene:
    """One simulated image ``(bands, H, W)`` float32 electrons, background-subtracted."""

    image: np.ndarray
    catalog: FullCatalog
    noiseless: np.ndarray | None = None


class SceneSimulator:
    """Draws catalogs and composes images from a bank; everything is a pure function of
    the ``numpy.random.Generator`` passed in.

    Example:
        >>> sim = SceneSimulator(bank, SceneConfig(98, 98))       # doctest: +SKIP
        >>> scene = sim.sample(np.random.default_rng(0))          # doctest: +SKIP
    """

    def __init__(self, bank: SourceBank, config: SceneConfig = SceneConfig()):
        self.bank, self.config = bank, config
        self.survey = bank.survey
        self.sigma = self.survey.noise_sigma
        self._families = "family" in bank.table.colnames
        # real galaxy shapes in a morphology mix: the catalog says which (render_direct)
        self._real = self._families and "hdf_index" in bank.table.colnames

    def with_layout(self, config: SceneConfig) -> SceneSimulator:
        """A simulator of the same source bank(s) with another scene layout ``config``."""
        return SceneSimulator(self.bank, config)

    # ---- catalogs ----------------------------------------------------------------------
    def galaxy_columns(self, entries, variants, stamp_x, stamp_y) -> dict:
        """Catalog columns for bank galaxies ``entries`` placed with given variants/pixels."""
        b, t = self.bank, self.bank.table
        entries = np.asarray(entries, dtype=np.int64)
        variants = np.asarray(variants, dtype=np.int64)
        dx, dy, beta = dihedral_truth(
            b.dx[entries], b.dy[entries], np.asarray(t["beta"], float)[entries], variants
        )
        flux = b.flux[entries]
        cols = {
            "x": stamp_x + dx,
            "y": stamp_y + dy,
            "galaxy": np.ones(len(entries), bool),
            "flux": flux,
            "source_id": np.asarray(t["id"], np.int64)[entries],
            "redshift": np.asarray(t["redshift"], float)[entries],
        }
        for c in MORPHOLOGY_COLUMNS:
            cols[c] = np.asarray(t[c], float)[entries]
        cols["beta"] = beta
        if self._families:
            for c in FAMILY_COLUMNS:
                cols[c] = np.asarray(t[c])[entries]
            cols["beta0"] = np.asarray(t["beta"], float)[entries]
        if self._real:
            for c in ("hdf_index", "flip"):
                cols[c] = np.asarray(t[c])[entries]
        cols.update(
            bank_index=entries,
            variant=variants,
            phase=np.full(len(entries), -1),
            stamp_x=np.asarray(stamp_x, np.int64),
            stamp_y=np.asarray(stamp_y, np.int64),
        )
        return cols

    def star_columns(self, phases, mag_i, colours, stamp_x, stamp_y) -> dict:
        b = self.bank
        phases = np.asarray(phases, dtype=np.int64)
        n = len(phases)
        mags = np.asarray(mag_i)[:, None] + colours
        flux = np.stack(
            [band.mag_to_flux(mags[:, k]) for k, band in enumerate(self.survey.bands)], 1
        ).reshape(n, self.survey.n_bands)
        cols = {
            "x": stamp_x + b.star_dx[phases],
            "y": stamp_y + b.star_dy[phases],
            "galaxy": np.zeros(n, bool),
            "flux": flux,
            "source_id": np.full(n, -1, np.int64),
            "redshift": np.full(n, np.nan),
        }
        for c in MORPHOLOGY_COLUMNS:
            cols[c] = np.full(n, np.nan)
        if self._families:
            for c in FAMILY_COLUMNS:
                cols[c] = np.full(n, -1 if c in ("family", "n_knots", "morph_seed") else np.nan)
            cols["beta0"] = np.full(n, np.nan)
        if self._real:
            cols["hdf_index"] = np.full(n, -1, np.int64)
            cols["flip"] = np.zeros(n, np.int16)
        cols.update(
            bank_index=np.full(n, -1, np.int64),
            variant=np.zeros(n, np.int64),
            phase=phases,
            stamp_x=np.asarray(stamp_x, np.int64),
            stamp_y=np.asarray(stamp_y, np.int64),
        )
        return cols

    def sample_catalog(self, rng: np.random.Generator, *, galaxy_mask=None) -> FullCatalog:
        """Poisson counts, uniform positions, bank galaxies and fresh stars."""
        cfg, m = self.config, self.config.margin
        h, w = cfg.height + 2 * m, cfg.width + 2 * m
        area = h * w * self.survey.pixel_scale**2 / 3600.0
        n_gal = rng.poisson(cfg.galaxy_density * area)
        n_star = rng.poisson(cfg.star_density * area)
        pool = np.flatnonzero(galaxy_mask) if galaxy_mask is not None else None
        entries = self.bank.draw(rng, n_gal, pool)
        gal = self.galaxy_columns(
            entries,
            rng.integers(0, 8, n_gal),
            rng.integers(-m, cfg.width + m, n_gal),
            rng.integers(-m, cfg.height + m, n_gal),
        )
        star = self.star_columns(
            rng.integers(0, len(self.bank.star_dx), n_star),
            star_magnitudes(rng, n_star),
            star_colors(rng, n_star, self.survey.band_names),
            rng.integers(-m, cfg.width + m, n_star),
            rng.integers(-m, cfg.height + m, n_star),
        )
        return self.make_catalog([gal, star])

    def make_catalog(self, parts: list[dict]) -> FullCatalog:
        cols = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
        nb = self.survey.n_bands
        cols["flux"] = cols["flux"].reshape(-1, nb)
        cols["mag"] = np.stack(
            [b.flux_to_mag(cols["flux"][:, k]) for k, b in enumerate(self.survey.bands)], 1
        ).reshape(-1, nb)
        return FullCatalog(cols, self.config.shape, self.survey.band_names)

    # ---- images ------------------------------------------------------------------------
    def _stamp(self, cat: FullCatalog, i: int):
        """(stamp, scale) of source ``i``: scale is None for galaxies, per-band flux for stars."""
        if cat["bank_index"][i] >= 0:
            return dihedral(
                self.bank.stamp(int(cat["bank_index"][i])), int(cat["variant"][i])
            ), None
        return self.bank.star_stamps[int(cat["phase"][i])], cat["flux"][i]

    def compose(self, cat: FullCatalog, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Noiseless image ``(bands, H, W)`` float32 of a catalog with bookkeeping columns."""
        h, w = shape or self.config.shape
        out = np.zeros((self.survey.n_bands, h, w), np.float32)
        sx, sy = cat["stamp_x"], cat["stamp_y"]
        for i in range(len(cat)):
            stamp, scale = self._stamp(cat, i)
            paste(out, stamp, int(sx[i]), int(sy[i]), 1.0 if scale is None else scale)
        return out

    def truth(self, cat: FullCatalog, noiseless: np.ndarray) -> FullCatalog:
        """Add ``snr`` and ``blendedness`` ``(n, bands)`` (paper 000 eqs. 12-14)."""
        n, nb = len(cat), self.survey.n_bands
        snr = np.zeros((n, nb))
        blend = np.zeros((n, nb))
        total = noiseless.astype(np.float64)
        for i in range(n):
            stamp, scale = self._stamp(cat, i)
            k = int(cat["bank_index"][i])
            snr[i] = self.bank.snr[k] if k >= 0 else self.bank.star_snr1[cat["phase"][i]] * scale
            ii, it = overlap_dot(
                total, stamp, int(cat["stamp_x"][i]), int(cat["stamp_y"][i]), scale
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                blend[i] = np.where(it > 0, 1.0 - ii / it, 0.0)
        return cat.with_columns(snr=snr, blendedness=np.clip(blend, 0.0, 1.0))

    def add_noise(self, rng: np.random.Generator, noiseless: np.ndarray) -> np.ndarray:
        """Background-subtracted noisy image, float32."""
        sig = self.sigma.astype(np.float32)[:, None, None]
        c = self.config
        if c.coadd_fraction and rng.random() < c.coadd_fraction:
            noise = [
                coadd_noise(
                    rng,
                    noiseless.shape[-2:],
                    float(s),
                    int(rng.integers(1, c.coadd_visits + 1)),
                    c.coadd_kernels[int(rng.integers(len(c.coadd_kernels)))],
                )
                for s in self.sigma
            ]
            return noiseless + np.stack(noise)
        if c.noise == "gaussian":
            noise = rng.standard_normal(noiseless.shape, dtype=np.float32) * sig
            return noiseless + noise
        sky = sig.astype(np.float64) ** 2
        lam = np.clip(noiseless.astype(np.float64), 0, None) + sky
        return (rng.poisson(lam) - sky).astype(np.float32)

    def sample(
        self, rng: np.random.Generator, *, truth: bool = True, keep_noiseless: bool = False
    ) -> Scene:
        """One scene: catalog, composed image, noise; truth quantities if asked."""
        cat = self.sample_catalog(rng)
        noiseless = self.compose(cat)
        image = self.add_noise(rng, noiseless)
        if truth:
            cat = self.truth(cat, noiseless)
        return Scene(image, cat, noiseless if keep_noiseless else None)

    def sample_at_noise(self, rng: np.random.Generator, factor: float = 1.0) -> Scene:
        """One scene (:meth:`sample`) whose noise as a flux is ``factor`` times the
        survey's, as in a shallower (above 1) or deeper image of the same sources: the
        noiseless image plus Gaussian noise of ``factor`` times each band's sigma, drawn
        after :meth:`sample`'s own (so that factor 1 is :meth:`sample`)."""
        if factor == 1.0:
            return self.sample(rng)
        sc = self.sample(rng, keep_noiseless=True)
        sigma = np.asarray(self.survey.noise_sigma, float)[:, None, None] * factor
        image = sc.noiseless + sigma * rng.standard_normal(sc.noiseless.shape)
        return replace(sc, image=image.astype(np.float32), noiseless=None)

    def sample_batch(self, rng: np.random.Generator, n: int, *, truth: bool = False):
        """``n`` scenes stacked: images ``(n, bands, H, W)`` float32 and their catalogs."""
        scenes = [self.sample(rng, truth=truth) for _ in range(n)]
        return np.stack([s.image for s in scenes]), [s.catalog for s in scenes]


class SeeingMixture(SceneSimulator):
    """Scenes under varying seeing: each scene is drawn, with equal probability, from one
    of ``sims``, simulators of one layout whose banks hold the same galaxies rendered with
    the survey's atmospheric PSF FWHM times ``scales``
    (:meth:`~probcat.survey.Survey.with_psf_scale`); the noise is the same in all of
    them. Training on it shows the encoder the range of PSF widths real coadds have
    instead of one, without telling it which one a scene has (what that costs the
    star/galaxy classification is in docs/robustness.md, *Seeing*).
    ``bank``, ``survey`` and everything but :meth:`sample` are the nominal simulator's
    (scale 1, which ``scales`` must hold)."""

    def __init__(self, sims: list[SceneSimulator], scales):
        scales = tuple(float(v) for v in scales)
        if len(sims) != len(scales) or 1.0 not in scales:
            raise ProbcatValueError(
                "a seeing mixture needs one simulator per scale, scale 1 among them"
            )
        if len({s.config for s in sims}) != 1:
            raise ProbcatValueError("the simulators of a seeing mixture need one scene layout")
        nominal = sims[scales.index(1.0)]
        super().__init__(nominal.bank, nominal.config)
        self.sims, self.scales = list(sims), scales

    def with_layout(self, config: SceneConfig) -> SeeingMixture:
        return SeeingMixture([s.with_layout(config) for s in self.sims], self.scales)

    def sample(self, rng: np.random.Generator, *, truth: bool = True, keep_noiseless: bool = False):
        k = int(rng.integers(len(self.sims)))
        return self.sims[k].sample(rng, truth=truth, keep_noiseless=keep_noiseless)
