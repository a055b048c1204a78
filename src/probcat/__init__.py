"""probcat: probabilistic catalogs from astronomical survey images by simulation-based inference.

Public API (one entry per capability)::

    from probcat import Survey, Simulation, SimulationConfig
    sim = Simulation(SimulationConfig(recipe="blend", n=10, seed=1))
    scene, extras = sim.scene(0)        # image (bands, H, W) in electrons + truth catalog
"""

from probcat.catalog import FullCatalog, TileCatalog, make_wcs
from probcat.errors import ProbcatError, ProbcatFileError, ProbcatIOError, ProbcatValueError
from probcat.io import ImageData, read_image, write_image
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.datasets import RECIPES, Simulation, SimulationConfig, write_dataset
from probcat.simulate.scene import Scene, SceneConfig, SceneSimulator
from probcat.survey import Band, Survey

__version__ = "0.1.0"

__all__ = [
    "Band",
    "Survey",
    "FullCatalog",
    "TileCatalog",
    "make_wcs",
    "ImageData",
    "read_image",
    "write_image",
    "BankConfig",
    "SourceBank",
    "Scene",
    "SceneConfig",
    "SceneSimulator",
    "RECIPES",
    "Simulation",
    "SimulationConfig",
    "write_dataset",
    "ProbcatError",
    "ProbcatValueError",
    "ProbcatFileError",
    "ProbcatIOError",
    "__version__",
]
