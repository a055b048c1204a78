"""probcat's photo-z as a RAIL informer/estimator pair, for RAIL pipelines.

RAIL stages read tables; probcat reads images. The pair below reads a table of object
positions (``x``, ``y`` in pixels of the image named in the stage config; or ``ra``, ``dec``
when the image has a celestial WCS) and returns a ``qp`` ensemble per chunk, like any
RAIL estimator:

* :class:`ProbcatPhotozInformer` — given a table of objects with known redshifts on an
  image (spectroscopic or simulated), fits one scale factor for the mixture widths that
  maximises their likelihood (a one-parameter recalibration of probcat's PDFs to the
  data at hand; the fit of ``probcat photoz --spec-z``: objects off the image are left out
  and at least ten must lie on it); the model is ``{"weights": ..., "sd_scale": ...,
  "n_fitted": ...}``.
* :class:`ProbcatPhotozEstimator` — the mixture for every row, as ``qp.mixmod`` (the
  stored components; probcat's density is that mixture truncated at z = 0, see
  :mod:`probcat.redshift.pdf`), with ``z_mode`` on the 0-3 grid in the ancillary data.

Example (see ``docs/photoz.md``)::

    inf = ProbcatPhotozInformer.make_stage(name="pc_inform", image="field.fits",
                                           model="probcat_pz.pkl", hdf5_groupname="")
    inf.inform(spec_table)                      # x, y, redshift
    est = ProbcatPhotozEstimator.make_stage(name="pc_est", image="field.fits",
                                            model=inf.get_handle("model"), hdf5_groupname="")
    ens = est.estimate(objects).data            # x, y
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from ceci.config import StageParameter as Param
from rail.core.common_params import SharedParams
from rail.estimation.estimator import CatEstimator
from rail.estimation.informer import CatInformer

from probcat.errors import ProbcatValueError
from probcat.redshift.estimator import _column_names, table_positions

__all__ = ["ProbcatPhotozInformer", "ProbcatPhotozEstimator"]

_PARAMS = {
    "image": Param(str, "", msg="multi-band FITS image the positions refer to"),
    "weights": Param(str, "photoz_lsst_ugrizy", msg="probcat photo-z weights (name or path)"),
}


def _image(path: str, weights: str):
    """The estimator, the image in noise-sigma units, read at the aperture noise where
    the noise is correlated (:meth:`probcat.redshift.estimator.PhotozEstimator.network_input`),
    its WCS and its pixels without data in some band (None: none); cached while the file is
    unchanged."""
    from pathlib import Path

    if not path:
        raise ProbcatValueError("the stage needs config option image=<multi-band FITS file>")
    if not Path(path).is_file():
        raise ProbcatValueError(f"{path}: image not found")
    st = Path(path).stat()
    return _read(path, weights, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4)
def _read(path: str, weights: str, mtime_ns: int, size: int):
    import probcat
    from probcat.io import read_image

    est = probcat.load(weights)
    xs, wcs, _, bands_masked = est.read(read_image(path))  # a band it lacks: without data
    return est, xs, wcs, None if bands_masked is None else bands_masked.any(0)


class ProbcatPhotozInformer(CatInformer):
    """Fit the mixture-width scale of probcat's photo-z PDFs on objects with known z."""

    name = "ProbcatPhotozInformer"
    entrypoint_function = "inform"
    config_options = CatInformer.config_options.copy()
    config_options.update(redshift_col=SharedParams.copy_param("redshift_col"), **_PARAMS)

    def run(self) -> None:
        data = self.get_data("input")
        est, xs, wcs, masked = _image(self.config.image, self.config.weights)
        col = self.config.redshift_col
        names = _column_names(data)
        if col not in names:
            raise ProbcatValueError(f"the training table has no column {col!r}")
        known = {k: np.asarray(data[k]) for k in ("x", "y", "ra", "dec") if k in names}
        known["redshift"] = np.asarray(data[col], np.float64)
        # the fit of `probcat photoz --spec-z`: objects off the image left out, at least
        # MIN_KNOWN on it, a warning at either end of the range
        best, n = est._fit_widths(xs, wcs, known, masked)
        self.add_data("model", {"weights": self.config.weights, "sd_scale": best, "n_fitted": n})


class ProbcatPhotozEstimator(CatEstimator):
    """probcat photo-z PDFs for the objects of a table (positions on ``image``)."""

    name = "ProbcatPhotozEstimator"
    entrypoint_function = "estimate"
    config_options = CatEstimator.config_options.copy()
    config_options.update(**_PARAMS)

    def _process_chunk(self, start, end, data, first):
        import qp

        from probcat.redshift.pdf import GRID, truncated_pdf

        model = self.model if isinstance(self.model, dict) else {}
        weights = model.get("weights", self.config.weights)
        est, xs, wcs, masked = _image(self.config.image, weights)
        x, y = table_positions(data, wcs)
        w, m, sd = est._mixture(xs, x, y, masked)
        sd = sd * float(model.get("sd_scale", 1.0))
        ens = qp.Ensemble(qp.mixmod, data={"weights": w, "means": m, "stds": sd})
        mode = GRID[np.argmax(truncated_pdf(w, m, sd, GRID), axis=1)] if len(w) else np.zeros(0)
        ens.set_ancil({"z_mode": mode})
        self._do_chunk_output(ens, start, end, first, data=data)
