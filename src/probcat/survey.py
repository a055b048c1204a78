"""Survey and band descriptions: pixel scale, zeropoints, sky, exposure, PSF.

The LSST default comes from ``surveycodex`` (the parameters used by the
WeakLensingDeblending / BTK simulations). Conventions:

* fluxes are total electrons collected over the stack's exposure time;
* ``zeropoint`` is the AB magnitude that gives 1 e-/s;
* the sky level is electrons per pixel over the exposure time, and images are
  background-subtracted, so in the background-limited regime the per-pixel noise
  is Gaussian with sigma = sqrt(sky level) (i band, 10 years: ~188,800 e-/pix,
  sigma ~ 434.5 e-).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import cached_property

import galsim
import numpy as np

from probcat.errors import ProbcatValueError

__all__ = ["Band", "Survey", "LSST_BANDS"]

LSST_BANDS = "ugrizy"
FULL_DEPTH_YEARS = 10.0


@dataclass(frozen=True)
class Band:
    """One filter of a survey.

    Attributes:
        name: filter name, e.g. ``"i"``.
        zeropoint: AB magnitude of a source giving 1 e-/s.
        sky_brightness: sky surface brightness, mag / arcsec^2.
        exposure_time: total exposure of the stack, s.
        psf_fwhm: FWHM of the atmospheric (Kolmogorov) PSF component, arcsec.
        effective_wavelength: nm, sets the Airy (optics) component.
        pixel_scale: arcsec / pixel.
        mirror_diameter: m.
        obscuration_area: obscured fraction of the pupil *area* (surveycodex convention).
        psf_beta: None (default): the atmosphere is a Kolmogorov profile; a number: a
            Moffat profile of that index and the same FWHM, whose wings are broader the
            smaller it is (about 2.5-4.8 fit ground-based PSFs, 4.765 is Kolmogorov
            turbulence's; Trujillo et al. 2001, MNRAS 328, 977): images and weights of a
            survey whose PSF wings differ from Kolmogorov's.
    """

    name: str
    zeropoint: float
    sky_brightness: float
    exposure_time: float
    psf_fwhm: float
    effective_wavelength: float
    pixel_scale: float
    mirror_diameter: float
    obscuration_area: float
    psf_beta: float | None = None

    def mag_to_flux(self, mag):
        """AB magnitude -> total flux in electrons (array or scalar)."""
        return self.exposure_time * 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - self.zeropoint))

    def flux_to_mag(self, flux):
        """Total flux in electrons -> AB magnitude (NaN for flux <= 0)."""
        flux = np.asarray(flux, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            mag = self.zeropoint - 2.5 * np.log10(flux / self.exposure_time)
        return np.where(flux > 0, mag, np.nan)

    @property
    def sky_level(self) -> float:
        """Mean sky in electrons per pixel over the exposure."""
        per_arcsec2 = self.mag_to_flux(self.sky_brightness)
        return float(per_arcsec2 * self.pixel_scale**2)

    @property
    def noise_sigma(self) -> float:
        """Background-limited per-pixel noise standard deviation, electrons."""
        return math.sqrt(self.sky_level)

    @property
    def obscuration_diameter(self) -> float:
        """Linear obscuration ratio as GalSim's ``Airy`` wants it (sqrt of the area fraction)."""
        return math.sqrt(self.obscuration_area)

    def psf(self) -> galsim.GSObject:
        """PSF = Kolmogorov(FWHM) convolved with an obscured Airy (paper 000, section 2.1);
        with ``psf_beta``, a Moffat(``psf_beta``, FWHM) in place of the Kolmogorov."""
        if self.psf_beta is None:
            atmos = galsim.Kolmogorov(fwhm=self.psf_fwhm)
        else:
            atmos = galsim.Moffat(beta=self.psf_beta, fwhm=self.psf_fwhm)
        optics = galsim.Airy(
            lam=self.effective_wavelength,
            diam=self.mirror_diameter,
            obscuration=self.obscuration_diameter,
            scale_unit=galsim.arcsec,
        )
        return galsim.Convolve(atmos, optics)


@dataclass(frozen=True)
class Survey:
    """An imaging survey: a name, a pixel scale and an ordered tuple of bands.

    Images are arrays ``(len(bands), H, W)`` in the band order given here.

    Example:
        >>> s = Survey.lsst(bands="i")
        >>> round(s["i"].noise_sigma, 1)
        434.5
    """

    name: str
    pixel_scale: float
    bands: tuple[Band, ...]
    depth_years: float = FULL_DEPTH_YEARS

    def __post_init__(self):
        if not self.bands:
            raise ProbcatValueError("a survey needs at least one band")
        names = [b.name for b in self.bands]
        if len(set(names)) != len(names):
            raise ProbcatValueError(f"duplicate band names in {names}")

    @classmethod
    def lsst(cls, bands: str | tuple[str, ...] = LSST_BANDS, years: float = 10.0) -> Survey:
        """LSST from surveycodex; ``years`` scales the exposure (10 = full-depth coadd)."""
        import surveycodex

        if not (years > 0 and math.isfinite(years)):
            raise ProbcatValueError(f"depth in years must be a positive finite number, got {years}")
        sc = surveycodex.get_survey("LSST")
        bands = tuple(bands)
        unknown = [b for b in bands if b not in sc.available_filters]
        if unknown:
            raise ProbcatValueError(
                f"unknown LSST band(s) {unknown}; choose from {''.join(sc.available_filters)}"
            )
        out = []
        for name in bands:
            f = sc.get_filter(name)
            out.append(
                Band(
                    name=name,
                    zeropoint=float(f.zeropoint.value),
                    sky_brightness=float(f.sky_brightness.value),
                    exposure_time=float(f.full_exposure_time.value) * years / FULL_DEPTH_YEARS,
                    psf_fwhm=float(f.psf_fwhm.value),
                    effective_wavelength=float(f.effective_wavelength.value),
                    pixel_scale=float(sc.pixel_scale.value),
                    mirror_diameter=float(sc.mirror_diameter.value),
                    obscuration_area=float(sc.obscuration.value),
                )
            )
        for b in out:  # a depth whose counts overflow (or vanish) is no image, not a crash
            with np.errstate(over="ignore"):
                brightest, sky = float(b.mag_to_flux(0.0)), b.sky_level
            if not (math.isfinite(brightest) and sky > 0):
                raise ProbcatValueError(
                    f"depth in years {years:g} gives {b.name}-band counts that are not finite "
                    "and positive; choose a realistic depth (10 = LSST's full 10-year coadd)"
                )
        return cls(
            name="LSST",
            pixel_scale=float(sc.pixel_scale.value),
            bands=tuple(out),
            depth_years=float(years),
        )

    @cached_property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    def __getitem__(self, name: str) -> Band:
        for b in self.bands:
            if b.name == name:
                return b
        raise ProbcatValueError(f"band {name!r} not in survey bands {''.join(self.band_names)}")

    def index(self, name: str) -> int:
        """Position of band ``name`` in the image's band axis."""
        self[name]
        return self.band_names.index(name)

    @property
    def noise_sigma(self) -> np.ndarray:
        """Per-band background noise sigma, electrons, shape ``(bands,)``."""
        return np.array([b.noise_sigma for b in self.bands])

    def select(self, bands: str | tuple[str, ...]) -> Survey:
        """A copy restricted to (and ordered as) ``bands``."""
        return replace(self, bands=tuple(self[b] for b in bands))

    def with_psf_scale(self, scale) -> Survey:
        """A copy whose bands' atmospheric PSF FWHM is ``scale`` times this survey's (other
        seeing; the optics and the noise are unchanged): one factor for every band, or one
        per band in the survey's band order (seeing that differs between the bands)."""
        if np.ndim(scale) > 1 or (np.ndim(scale) == 1 and len(scale) != len(self.bands)):
            raise ProbcatValueError(
                f"PSF scale: one factor, or one per band ({len(self.bands)}), got {scale}"
            )
        scales = np.broadcast_to(np.asarray(scale, float), (len(self.bands),))
        if not np.all((scales > 0) & np.isfinite(scales)):
            raise ProbcatValueError(f"PSF scale must be a positive finite number, got {scale}")
        return replace(
            self,
            bands=tuple(
                replace(b, psf_fwhm=b.psf_fwhm * float(k)) for b, k in zip(self.bands, scales)
            ),
        )

    def with_psf_beta(self, beta) -> Survey:
        """A copy whose bands' atmospheric PSF is a Moffat of index ``beta`` (from 2 to 100)
        and the same FWHM in place of the Kolmogorov profile (:class:`Band`); None: back
        to Kolmogorov. Below 2 a Moffat's second moment diverges (its wings need stamps and
        FFTs beyond any bank's: at 1.5, seconds a galaxy and 2% of its flux lost); above 100
        it is a Gaussian."""
        if beta is not None:
            if isinstance(beta, bool) or not isinstance(beta, (int, float, np.number)):
                raise ProbcatValueError(f"PSF beta must be a number, got {beta!r}")
            if not (math.isfinite(beta) and 2.0 <= beta <= 100.0):
                raise ProbcatValueError(f"PSF beta must be a number from 2 to 100, got {beta}")
            beta = float(beta)
        return replace(self, bands=tuple(replace(b, psf_beta=beta) for b in self.bands))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "pixel_scale": self.pixel_scale,
            "depth_years": self.depth_years,
            # psf_beta only where set: the description (and a bank's cache key) of a
            # Kolmogorov survey stays what it was
            "bands": [
                {k: v for k, v in asdict(b).items() if k != "psf_beta" or v is not None}
                for b in self.bands
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Survey:
        try:
            return cls(
                name=d["name"],
                pixel_scale=float(d["pixel_scale"]),
                depth_years=float(d.get("depth_years", FULL_DEPTH_YEARS)),
                bands=tuple(Band(**b) for b in d["bands"]),
            )
        except (KeyError, TypeError) as e:
            raise ProbcatValueError(f"invalid survey description: {e}") from e
