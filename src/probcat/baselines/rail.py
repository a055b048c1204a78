"""Catalog photo-z baselines through RAIL: FlexZBoost and BPZ (paper 002 section 2.3).

The codes run on photometry measured from the images (forced aperture photometry at the
detected positions, :func:`forced_photometry`), written as RAIL's standard columns
``mag_<b>_lsst`` / ``mag_err_<b>_lsst`` (:func:`rail_table`). As in the paper, a band
where the object is not detected at 1 sigma gets its 1-sigma limiting magnitude.

Needs the optional extra ``pip install -e ".[rail]"`` (pz-rail-flexzboost, pz-rail-bpz).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from probcat.errors import ProbcatValueError

__all__ = [
    "forced_photometry",
    "rail_table",
    "flexzboost",
    "bpz",
    "NONDETECTION_MAG_ERR",
]

# magnitude error of a 1-sigma limit: 2.5 / ln(10) * (sigma / flux) at flux = sigma
NONDETECTION_MAG_ERR = 2.5 / math.log(10)
PHOT_RADIUS = 5.0  # px: the aperture of probcat's deblended photometry (paper 000)


def forced_photometry(image: np.ndarray, x, y, sigma, radius: float = PHOT_RADIUS):
    """Aperture fluxes and errors ``(n, bands)`` in every band of ``image`` ``(bands, H, W)``
    (electrons) at pixel positions ``x, y`` (SEP ``sum_circle``)."""
    import sep

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    nb = image.shape[0]
    flux, err = np.zeros((len(x), nb)), np.zeros((len(x), nb))
    if len(x) == 0:
        return flux, err
    for k in range(nb):
        f, e, _ = sep.sum_circle(
            np.ascontiguousarray(image[k], dtype=np.float64),
            x,
            y,
            radius,
            err=float(np.ravel(sigma)[k]),
        )
        flux[:, k], err[:, k] = f, e
    return flux, err


def rail_table(flux, flux_err, survey, redshift=None) -> dict[str, np.ndarray]:
    """RAIL's column dict from fluxes/errors ``(n, bands)`` in electrons: AB magnitudes and
    errors; below 1 sigma, the 1-sigma limiting magnitude with error 2.5/ln 10."""
    flux, flux_err = np.asarray(flux, np.float64), np.asarray(flux_err, np.float64)
    if flux.shape != flux_err.shape or flux.ndim != 2 or flux.shape[1] != survey.n_bands:
        raise ProbcatValueError(
            f"fluxes must be (n, {survey.n_bands}) with matching errors, got {flux.shape}"
        )
    out = {}
    for k, band in enumerate(survey.bands):
        detected = flux[:, k] > flux_err[:, k]
        lim = band.flux_to_mag(flux_err[:, k])
        with np.errstate(divide="ignore", invalid="ignore"):
            mag = np.where(detected, band.flux_to_mag(np.where(detected, flux[:, k], 1.0)), lim)
            err = np.where(
                detected, 2.5 / math.log(10) * flux_err[:, k] / flux[:, k], NONDETECTION_MAG_ERR
            )
        out[f"mag_{band.name}_lsst"] = mag.astype(np.float64)
        out[f"mag_err_{band.name}_lsst"] = err.astype(np.float64)
    if redshift is not None:
        out["redshift"] = np.asarray(redshift, np.float64)
    return out


def _bands(table):
    bands = [
        k[4:-5]
        for k in table
        if k.startswith("mag_") and k.endswith("_lsst") and not k.startswith("mag_err_")
    ]
    if "i" not in bands:
        raise ProbcatValueError("the photometry table needs an i band (mag_i_lsst)")
    return bands


def _common(bands):
    return {
        "bands": [f"mag_{b}_lsst" for b in bands],
        "err_bands": [f"mag_err_{b}_lsst" for b in bands],
        "ref_band": "mag_i_lsst",
        "hdf5_groupname": "",
        "zmin": 0.0,
        "zmax": 3.0,
        "nzbins": 301,
    }


def flexzboost(train: dict, test: dict, *, seed: int = 0, workdir=None):
    """FlexZBoost informed on ``train`` (with ``redshift``), estimated on ``test``: a qp
    ensemble (RAIL's ``interp`` on 0-3)."""
    from rail.estimation.algos.flexzboost import FlexZBoostEstimator, FlexZBoostInformer

    bands = _bands(train)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        model = str(Path(tmp) / "fzb.pkl")
        inf = FlexZBoostInformer.make_stage(
            name=f"fzb_inform_{seed}",
            model=model,
            seed=seed,
            **_common(bands),
        )
        inf.inform(train)
        est = FlexZBoostEstimator.make_stage(
            name=f"fzb_estimate_{seed}",
            model=inf.get_handle("model"),
            output=str(Path(tmp) / "fzb.hdf5"),
            **_common(bands),
        )
        return est.estimate(test).data


def bpz(train: dict, test: dict, *, workdir=None):
    """BPZ (bpz_lite, CWW+ templates shipped with RAIL) with its prior informed on ``train``,
    estimated on ``test``: a qp ensemble."""
    from rail.estimation.algos.bpz_lite import BPZliteEstimator, BPZliteInformer

    bands = _bands(train)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        kw = _common(bands)
        kw.pop("nzbins")
        inf = BPZliteInformer.make_stage(
            name="bpz_inform", model=str(Path(tmp) / "bpz.pkl"), nondetect_val=99.0, **kw
        )
        inf.inform(train)
        est = BPZliteEstimator.make_stage(
            name="bpz_estimate",
            model=inf.get_handle("model"),
            output=str(Path(tmp) / "bpz.hdf5"),
            nondetect_val=99.0,
            dz=0.01,
            **kw,
        )
        return est.estimate(test).data
