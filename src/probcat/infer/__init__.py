"""Inference on images of any size."""

from probcat.infer.detect import map_catalog, predict_tiles, sample_catalogs

__all__ = ["predict_tiles", "map_catalog", "sample_catalogs"]
