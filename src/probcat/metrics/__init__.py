"""Metrics that treat every detector's catalog alike."""

from probcat.metrics.detection import (
    DetectionCounts,
    binned_detection_metrics,
    detected_snr,
    f1_score,
    match,
)

__all__ = ["match", "detected_snr", "DetectionCounts", "binned_detection_metrics", "f1_score"]
