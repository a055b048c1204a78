"""Small networks and catalogs shared by the test files."""

import numpy as np
import torch

from probcat.catalog import FullCatalog
from probcat.nets.detection import DetectionNet


def galaxy_and_star(x, y, size):
    """A catalog of a galaxy at ``(x[0], y[0])`` and a star at ``(x[1], y[1])``."""
    return FullCatalog(
        {
            "x": np.array(x),
            "y": np.array(y),
            "galaxy": np.array([True, False]),
            "flux": np.ones((2, 1)),
        },
        (size, size),
    )


def refiner_net(seed=0, scale=0.3):
    """A small network with a location refiner whose last layer is switched on (trained
    weights are not zero there)."""
    torch.manual_seed(seed)
    net = DetectionNet(
        n_bands=1,
        channels=8,
        n_blocks=1,
        stem="patchify",
        classifier="stamp",
        proximity=True,
        loc_refine=True,
    ).eval()
    with torch.no_grad():
        net.refiner.out.weight.normal_(0, scale)
    return net


def stamp_net_with(refine: bool):
    """A small seeded stamp-classifier network, with a switched-on refiner if ``refine``."""
    if refine:
        return refiner_net()
    torch.manual_seed(0)
    return DetectionNet(
        n_bands=1, channels=8, n_blocks=1, stem="patchify", classifier="stamp", proximity=True
    ).eval()


def random_catalog(n=6, seed=0, shape=(20, 30)):
    """A catalog of ``n`` random sources with per-band fluxes (bands g, i)."""
    rng = np.random.default_rng(seed)
    return FullCatalog(
        {
            "x": rng.uniform(-0.5, shape[1] - 0.5, n),
            "y": rng.uniform(-0.5, shape[0] - 0.5, n),
            "galaxy": rng.random(n) < 0.5,
            "flux": rng.uniform(1e3, 1e5, (n, 2)),
            "source_id": np.arange(n, dtype=np.int64),
        },
        shape,
        ("g", "i"),
        {"seed": seed},
    )


def benchmark_module(name: str):
    """A script of benchmarks/ as a module (its folder on the path only while it loads)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", folder / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = [p for p in sys.path if p != str(folder)]
    return mod
