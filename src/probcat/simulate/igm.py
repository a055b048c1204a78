"""Mean transmission of the intergalactic medium (IGM) blueward of Lyman alpha.

Light of a galaxy at redshift z that left it bluer than Lyman alpha (121.6 nm) passes
neutral hydrogen clouds on its way and is absorbed: the Lyman-alpha forest and the other
Lyman-series lines, and beyond the Lyman limit (91.2 nm) photoelectric absorption by
Lyman-limit systems. A galaxy at z = 3 loses about a third of its light just blueward of
Lyman alpha (observed 486 nm) and most of it blueward of its Lyman limit (365 nm, LSST's u
band): the Lyman break that u-band dropouts are found by.

:func:`madau_transmission` is the mean transmission of Madau (1995, ApJ 441, 18): the
Lyman-series effective optical depths of its eq. (15) and table 2 (Lyman alpha to
delta), and its analytic approximation to the mean photoelectric optical depth of
Lyman-limit systems (its footnote 3). It is the correction photo-z template codes (BPZ,
LePhare, EAZY) apply by default or as an option. Sightline-to-sightline scatter is not
modelled: a mean.
"""

from __future__ import annotations

import numpy as np

from probcat.errors import ProbcatValueError

LYMAN_LIMIT_NM = 91.2
# Lyman alpha, beta, gamma, delta: rest wavelength (nm) and the coefficient A_j of the
# effective optical depth A_j (lambda_obs / lambda_j)^3.46 (Madau 1995, table 2)
LYMAN_SERIES = ((121.6, 3.6e-3), (102.6, 1.7e-3), (97.3, 1.2e-3), (95.0, 9.3e-4))


def madau_transmission(wavelength_nm, z) -> np.ndarray:
    """Mean IGM transmission exp(-tau) at observed wavelengths ``wavelength_nm`` of a source
    at redshift ``z`` (a number >= 0): 1 redward of Lyman alpha, the Lyman series' line
    blanketing and, below the Lyman limit, photoelectric absorption (Madau 1995)."""
    lam = np.asarray(wavelength_nm, float)
    z = float(z)
    if not (np.isfinite(z) and z >= 0):
        raise ProbcatValueError(f"redshift must be a finite number >= 0, got {z!r}")
    tau = np.zeros(lam.shape)
    for rest, a in LYMAN_SERIES:
        on = (lam > rest) & (lam < rest * (1 + z))  # absorbers between us and the source
        tau[on] += a * (lam[on] / rest) ** 3.46
    xem = 1.0 + z
    xc = lam / LYMAN_LIMIT_NM
    on = (xc >= 1) & (xc < xem)  # below the source's Lyman limit, above ours
    x = xc[on]
    tau[on] += (
        0.25 * x**3 * (xem**0.46 - x**0.46)
        + 9.4 * x**1.5 * (xem**0.18 - x**0.18)
        - 0.7 * x**3 * (x**-1.32 - xem**-1.32)
        - 0.023 * (xem**1.68 - x**1.68)
    )
    return np.exp(-np.clip(tau, 0.0, None))
