"""Metrics that treat every detector's catalog alike."""

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
]
from probcat.metrics.calibration import (  # noqa: E402
    expected_calibration_error,
    interval_coverage,
    reliability,
)
from probcat.metrics.classification import precision_recall_f1  # noqa: E402

__all__ += ["expected_calibration_error", "interval_coverage", "reliability", "precision_recall_f1"]
