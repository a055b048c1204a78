"""GalSim rendering of sources: profiles, postage stamps, direct whole-scene drawing.

Pixel convention everywhere in probcat: 0-indexed pixel coordinates with pixel
*centres* at integers (the numpy/SEP convention); pixel ``(x, y)`` is
``image[..., y, x]``. GalSim images here have bounds starting at 1, so a source at
``(x, y)`` is drawn at GalSim position ``(x + 1, y + 1)``.
"""

from __future__ import annotations

import math

import galsim
import numpy as np

from probcat.simulate.prior import FAMILIES
from probcat.survey import Survey

__all__ = [
    "galaxy_profile",
    "galaxy_profile_for",
    "dihedral_jacobian",
    "draw_stamp",
    "stamp_size_for",
    "render_direct",
    "aperture_mask",
    "snr_eq12",
    "GSPARAMS",
]

# Tighter than GalSim's defaults (folding 5e-3, maxk 1e-3) so that an FFT-drawn stamp
# does not depend on the size of the image it is drawn into, to far below the noise.
GSPARAMS = galsim.GSParams(folding_threshold=1e-3, maxk_threshold=3e-4)
MIN_STAMP = 11
MAX_STAMP = 255


def galaxy_profile(disk_hlr, bulge_hlr, disk_q, bulge_q, beta, bulge_frac) -> galsim.GSObject:
    """Unit-flux bulge (n=4) + disk (n=1) sharing centroid and position angle.

    Sizes in arcsec, ``beta`` in radians from +x toward +y.
    """
    angle = float(beta) * galsim.radians
    parts = []
    if bulge_frac < 1.0:
        parts.append(
            galsim.Exponential(
                half_light_radius=float(disk_hlr), flux=1.0 - bulge_frac, gsparams=GSPARAMS
            ).shear(q=float(disk_q), beta=angle)
        )
    if bulge_frac > 0.0:
        parts.append(
            galsim.DeVaucouleurs(
                half_light_radius=float(bulge_hlr), flux=float(bulge_frac), gsparams=GSPARAMS
            ).shear(q=float(bulge_q), beta=angle)
        )
    return parts[0] if len(parts) == 1 else galsim.Add(parts, gsparams=GSPARAMS)


KNOT_FWHM = 0.1  # clump FWHM in units of the galaxy's half-light radius (unresolved here)
_HLR_TOL = 1e-3


def _knots(n: int, hlr: float, flux: float, seed: int) -> galsim.GSObject:
    points = galsim.RandomKnots(
        int(n),
        half_light_radius=hlr,
        flux=flux,
        rng=galsim.BaseDeviate(int(seed)),
        gsparams=GSPARAMS,
    )
    return galsim.Convolve(points, galsim.Gaussian(fwhm=KNOT_FWHM * hlr), gsparams=GSPARAMS)


def _arms(n: int, hlr: float, flux: float, rng: np.random.Generator) -> galsim.GSObject:
    """``n`` Gaussian clumps along two logarithmic arms ``r = r0 exp(theta tan(pitch))``,
    brighter inward like the disk (exponential in radius)."""
    pitch = math.radians(rng.uniform(10.0, 30.0))
    r0 = 0.25 * hlr
    theta = rng.uniform(0.0, 1.5 * math.pi, n)
    r = r0 * np.exp(theta * math.tan(pitch)) * np.exp(0.1 * rng.standard_normal(n))
    phase = np.where(np.arange(n) % 2 == 0, 0.0, math.pi) + theta
    w = np.exp(-1.678 * r / hlr)
    w = flux * w / w.sum()
    sizes = KNOT_FWHM + 0.15 * hlr * rng.random(n)
    return galsim.Add(
        [
            galsim.Gaussian(fwhm=float(s), flux=float(f), gsparams=GSPARAMS).shift(
                float(ri * math.cos(p)), float(ri * math.sin(p))
            )
            for s, f, ri, p in zip(sizes, w, r, phase)
        ],
        gsparams=GSPARAMS,
    )


def _irregular(n_knots: int, knot_frac: float, seed: int, rng) -> galsim.GSObject:
    """2-4 offset, sheared exponential blobs (sizes, offsets in units of the galaxy's
    scale) plus clumps; unit flux."""
    k = int(rng.integers(2, 5))
    fluxes = rng.dirichlet(np.full(k, 1.5)) * (1.0 - knot_frac)
    parts = []
    for j in range(k):
        r, phi = rng.uniform(0.0, 1.0) if j else 0.0, rng.uniform(0.0, 2 * math.pi)
        parts.append(
            galsim.Exponential(
                half_light_radius=float(rng.uniform(0.3, 0.8)),
                flux=float(fluxes[j]),
                gsparams=GSPARAMS,
            )
            .shear(
                q=float(rng.uniform(0.3, 1.0)), beta=float(rng.uniform(0, math.pi)) * galsim.radians
            )
            .shift(float(r * math.cos(phi)), float(r * math.sin(phi)))
        )
    parts.append(_knots(n_knots, 0.8, knot_frac, seed))
    return galsim.Add(parts, gsparams=GSPARAMS)


def _face_on(row) -> galsim.GSObject:
    """Unit-flux face-on composite of a non-bulge+disk family, at an arbitrary scale."""
    family = FAMILIES[int(row["family"])]
    seed = int(row["morph_seed"])
    rng = np.random.default_rng(seed)
    if family == "clumpy":
        kf = float(row["knot_frac"])
        return galsim.Add(
            [
                galsim.Exponential(half_light_radius=1.0, flux=1.0 - kf, gsparams=GSPARAMS),
                _knots(row["n_knots"], 1.0, kf, seed),
            ],
            gsparams=GSPARAMS,
        )
    if family == "spiral":
        af, bf = float(row["arm_frac"]), float(row["bar_frac"])
        parts = [
            galsim.Exponential(half_light_radius=1.0, flux=1.0 - af - bf, gsparams=GSPARAMS),
            _arms(int(row["n_knots"]), 1.0, af, rng),
        ]
        if bf > 0:
            parts.append(
                galsim.Sersic(n=0.5, half_light_radius=float(rng.uniform(0.3, 0.6)), flux=bf).shear(
                    q=float(rng.uniform(0.2, 0.35)),
                    beta=float(rng.uniform(0, math.pi)) * galsim.radians,
                )
            )
        return galsim.Add(parts, gsparams=GSPARAMS)
    if family == "irregular":
        return _irregular(int(row["n_knots"]), float(row["knot_frac"]), seed, rng)
    raise ValueError(f"no composite profile for family {family!r}")


def galaxy_profile_for(row, variant: int = 0) -> galsim.GSObject:
    """Unit-flux profile of one population row (any family, see
    :mod:`probcat.simulate.prior`), centred on its light-weighted centroid; ``variant``
    applies the dihedral transform of :func:`probcat.simulate.bank.dihedral`.

    Composite families (clumpy, spiral, irregular) are built face-on, dilated so that
    their half-light radius is ``disk_hlr``, then sheared to ``disk_q`` at ``beta``.
    """
    keys = _keys(row)
    # a galaxy of the Hubble Deep Field (population "hdf" or "morphology+hdf")
    real = "hdf_index" in keys and int(row["hdf_index"]) >= 0
    family = FAMILIES[int(row["family"])] if "family" in keys and not real else "bulge_disk"
    if real:
        from probcat.simulate.hubble import hdf_profile

        prof = hdf_profile(row)
    elif family == "bulge_disk":
        prof = galaxy_profile(
            *(row[c] for c in ("disk_hlr", "bulge_hlr", "disk_q", "bulge_q", "beta", "bulge_frac"))
        )
    else:
        hlr = float(row["disk_hlr"])
        if family == "sersic":
            prof = galsim.Sersic(
                n=float(row["sersic_n"]), half_light_radius=hlr, flux=1.0, gsparams=GSPARAMS
            )
        else:
            face = _face_on(row)
            face = face.shift(-face.centroid)
            prof = face.dilate(hlr / _half_light_radius(face))
        prof = prof.shear(q=float(row["disk_q"]), beta=float(row["beta"]) * galsim.radians)
        prof = prof.shift(-prof.centroid)
    if variant:
        prof = prof.transform(*dihedral_jacobian(variant).ravel())
    return prof


def _keys(row):
    return row.colnames if hasattr(row, "colnames") else row.keys()


def _half_light_radius(prof: galsim.GSObject) -> float:
    """Radius of the circle about the centroid holding half the flux of a unit-flux
    profile, from its image drawn on a fine grid (GalSim's ``calculateHLR``; +-3.8 units,
    where the composites are built with unit scale)."""
    scale = 0.04
    size = 192
    return float(prof.calculateHLR(size=size, scale=scale, centroid=galsim.PositionD(0, 0)))


def dihedral_jacobian(variant: int) -> np.ndarray:
    """2x2 matrix mapping a source's coordinates under dihedral variant 0-7 (transpose if
    bit 4, then flip y if bit 2, then flip x if bit 1), as :func:`~probcat.simulate.bank.
    dihedral` transforms its stamp."""
    m = np.eye(2)
    if variant & 4:
        m = np.array([[0.0, 1.0], [1.0, 0.0]]) @ m
    if variant & 2:
        m = np.diag([1.0, -1.0]) @ m
    if variant & 1:
        m = np.diag([-1.0, 1.0]) @ m
    return m


def draw_stamp(
    profile: galsim.GSObject,
    psf: galsim.GSObject,
    pixel_scale: float,
    size: int,
    dx: float = 0.0,
    dy: float = 0.0,
) -> np.ndarray:
    """Draw ``profile * psf`` on an odd ``size`` stamp, centred ``(dx, dy)`` px from its
    central pixel. Returns float64 ``(size, size)``, flux of the profile (pixel-integrated)."""
    obj = galsim.Convolve(profile, psf, gsparams=GSPARAMS)
    img = obj.drawImage(nx=size, ny=size, scale=pixel_scale, offset=(dx, dy), dtype=np.float64)
    return img.array


def stamp_size_for(profile: galsim.GSObject, psf: galsim.GSObject, pixel_scale: float) -> int:
    """GalSim's good image size for the convolved profile, odd, within [11, 255]."""
    obj = galsim.Convolve(profile, psf, gsparams=GSPARAMS)
    n = obj.getGoodImageSize(pixel_scale)
    n = int(min(max(n, MIN_STAMP), MAX_STAMP))
    return n if n % 2 else n + 1


def _source_profile(cat, i: int) -> galsim.GSObject:
    if not bool(cat["galaxy"][i]):
        return galsim.DeltaFunction()
    if "family" in cat.colnames and "beta0" in cat.colnames:
        # morphology-rich catalogs: the bank's own row (beta0) in the catalog's variant
        row = {c: cat[c][i] for c in cat.colnames}
        row["beta"] = row["beta0"]
        return galaxy_profile_for(row, int(cat["variant"][i]) if "variant" in cat.colnames else 0)
    return galaxy_profile(
        *(cat[c][i] for c in ("disk_hlr", "bulge_hlr", "disk_q", "bulge_q", "beta", "bulge_frac"))
    )


def render_direct(cat, survey: Survey, shape: tuple[int, int]) -> np.ndarray:
    """Noiseless image ``(bands, H, W)`` in electrons, every source drawn by GalSim onto
    the whole image (no stamps): the reference the fast composition is checked against.

    ``cat`` needs columns ``x, y, galaxy, flux`` ((n, bands), electrons) and the
    morphology columns for galaxies.
    """
    h, w = shape
    out = np.zeros((survey.n_bands, h, w))
    for k, band in enumerate(survey.bands):
        psf = band.psf()
        img = galsim.ImageD(w, h, scale=band.pixel_scale)
        for i in range(len(cat)):
            obj = galsim.Convolve(_source_profile(cat, i), psf, gsparams=GSPARAMS)
            obj = obj.withFlux(float(cat["flux"][i, k]))
            obj.drawImage(
                image=img,
                center=galsim.PositionD(cat["x"][i] + 1.0, cat["y"][i] + 1.0),
                add_to_image=True,
            )
        out[k] = img.array
    return out


def aperture_mask(size: int, dx: float, dy: float, radius: float) -> np.ndarray:
    """Pixels of a ``size`` stamp whose centres lie within ``radius`` px of the point
    ``(c + dx, c + dy)``, ``c`` the central pixel."""
    c = size // 2
    yy, xx = np.mgrid[:size, :size]
    return (xx - c - dx) ** 2 + (yy - c - dy) ** 2 <= radius**2


def snr_eq12(stamp: np.ndarray, dx: float, dy: float, sigma: float, radius: float = 5.0) -> float:
    """Paper 000 eq. 12 on a noiseless isolated image: sqrt(sum_aperture I_p^2 / sigma^2)."""
    m = aperture_mask(stamp.shape[-1], dx, dy, radius)
    return math.sqrt(float(np.sum(stamp[m] ** 2))) / sigma
