"""Losses and training loops."""

from probcat.train.losses import favi_detection_loss

__all__ = ["favi_detection_loss"]
