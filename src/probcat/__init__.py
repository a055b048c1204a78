"""probcat: probabilistic catalogs from astronomical survey images by simulation-based
inference.

Public API (one entry per capability)::

    import probcat
    res = probcat.detect("field.fits")          # MAP catalog, probability map, samples
    det = probcat.load("detection_lsst_i")      # batched, device-aware Detector
    cats = det.catalog([cutout_a, cutout_b])
    res = probcat.deblend("field.fits")         # + deblended fluxes, shapes, flux posteriors

Names are imported on first use, so ``import probcat`` stays fast (torch, GalSim and
astropy load only when a name that needs them is touched).
"""

from __future__ import annotations

import importlib

from probcat.errors import (
    ProbcatError,
    ProbcatFileError,
    ProbcatIOError,
    ProbcatValueError,
    ProbcatWarning,
)

__version__ = "0.1.0"

_LAZY = {
    "detect": "probcat.api",
    "load": "probcat.api",
    "Detector": "probcat.api",
    "DetectionResult": "probcat.api",
    "deblend": "probcat.api",
    "Deblender": "probcat.api",
    "DeblendResult": "probcat.api",
    "photoz": "probcat.api",
    "PhotozEstimator": "probcat.redshift.estimator",
    "PhotozResult": "probcat.redshift.estimator",
    "FullCatalog": "probcat.catalog",
    "make_wcs": "probcat.catalog",
    "concat_catalogs": "probcat.catalog",
    "pooled_evidence": "probcat.infer.reliability",
    "TileCatalog": "probcat.tiles",
    "ImageData": "probcat.io",
    "read_image": "probcat.io",
    "read_bands": "probcat.io",
    "write_image": "probcat.io",
    "BankConfig": "probcat.simulate.bank",
    "SourceBank": "probcat.simulate.bank",
    "RECIPES": "probcat.simulate.datasets",
    "Simulation": "probcat.simulate.datasets",
    "SimulationConfig": "probcat.simulate.datasets",
    "write_dataset": "probcat.simulate.datasets",
    "Scene": "probcat.simulate.scene",
    "SceneConfig": "probcat.simulate.scene",
    "SceneSimulator": "probcat.simulate.scene",
    "Band": "probcat.survey",
    "Survey": "probcat.survey",
}

__all__ = [
    *_LAZY,
    "ProbcatError",
    "ProbcatValueError",
    "ProbcatFileError",
    "ProbcatIOError",
    "ProbcatWarning",
    "__version__",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'probcat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
