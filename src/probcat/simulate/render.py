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

from probcat.survey import Survey

__all__ = [
    "galaxy_profile",
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
