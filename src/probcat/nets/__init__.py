"""Neural networks (``nn.Module`` only; losses live in ``probcat.train``)."""

from probcat.nets.detection import DetectionNet, TileOutput

__all__ = ["DetectionNet", "TileOutput"]
