"""Metrics that treat every detector's catalog alike."""

from probcat.metrics.calibration import (
    expected_calibration_error,
    interval_coverage,
    interval_coverage_bounds,
    reliability,
)
from probcat.metrics.classification import precision_recall_f1
from probcat.metrics.detection import (
    SNR_BINS,
    DetectionCounts,
    binned_detection_metrics,
    detected_snr,
    f1_score,
    match,
)

__all__ = [
    "match",
    "detected_snr",
    "DetectionCounts",
    "binned_detection_metrics",
    "f1_score",
    "SNR_BINS",
    "expected_calibration_error",
    "interval_coverage",
    "interval_coverage_bounds",
    "reliability",
    "precision_recall_f1",
]
