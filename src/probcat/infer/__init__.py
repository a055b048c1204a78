"""Inference on images of any size."""

from probcat.infer.calibration import CentroidCalibration, centroid_interval
from probcat.infer.detect import (
    Decisions,
    check_image,
    decode,
    map_catalog,
    predict_tiles,
    sample_catalogs,
    tile_features,
    tile_image,
)

__all__ = [
    "check_image",
    "tile_features",
    "tile_image",
    "predict_tiles",
    "decode",
    "Decisions",
    "map_catalog",
    "sample_catalogs",
    "CentroidCalibration",
    "centroid_interval",
]
