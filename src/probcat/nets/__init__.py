"""Neural networks (``nn.Module`` only): the shared backbone, detection heads, stamp
networks and the detection encoder built from them."""

from probcat.nets.backbone import Backbone
from probcat.nets.detection import DetectionNet
from probcat.nets.heads import CheckerboardHead, TileOutput

__all__ = ["Backbone", "CheckerboardHead", "DetectionNet", "TileOutput"]
