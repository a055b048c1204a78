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
