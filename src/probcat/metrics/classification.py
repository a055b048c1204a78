"""Binary classification precision, recall and F1 (paper 000 section 4.3)."""

from __future__ import annotations

import numpy as np

__all__ = ["precision_recall_f1"]


def precision_recall_f1(predicted, truth) -> tuple[float, float, float]:
    """For the positive class: precision = TP / predicted positives, recall = TP / true
    positives, F1 their harmonic mean (NaN where undefined)."""
    p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
    tp = float(np.sum(p & t))
    prec = tp / p.sum() if p.sum() else float("nan")
    rec = tp / t.sum() if t.sum() else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else float("nan")
    return prec, rec, f1
