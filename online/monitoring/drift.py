"""Drift signals: is live traffic still what the live version was trained and validated on?

Every threshold's null distribution comes from the version's calibration sample (``online.reference``),
so unseen in-domain texts, which sit a little farther from the training points than the training points
from each other, do not raise false alarms. Signals over a window of recent predictions
(:func:`window_signals`):

- ``knn_rate``: share of the window farther from its nearest training neighbour than 95% of
  calibration texts (in-domain: about 0.05);
- ``mmd_p``: kernel two-sample test (RBF MMD^2, median-heuristic bandwidth) of the window against a
  fixed training subsample, p-value from the calibration null;
- ``oos_rate``: share of the window that looks out of scope (confidence under a threshold, or farther
  from the training data than 99% of calibration texts);
- ``js_p``: Jensen-Shannon divergence of the window's predicted labels from the calibration
  predictions, p-value from windows drawn from the calibration predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from online.reference import Reference, js_divergence, label_hist, mmd2, p_value, unit_rows
from online.settings import Settings


@dataclass(frozen=True)
class Thresholds:
    knn_max_rate: float
    mmd_alpha: float
    oos_max_rate: float
    confidence: float
    js_alpha: float

    @classmethod
    def from_settings(cls, settings: Settings) -> "Thresholds":
        return cls(
            knn_max_rate=settings.drift_knn_max_rate,
            mmd_alpha=settings.drift_mmd_alpha,
            oos_max_rate=settings.drift_oos_max_rate,
            confidence=settings.drift_confidence,
            js_alpha=settings.drift_js_alpha,
        )


def window_signals(
    ref: Reference,
    embeddings: np.ndarray,
    nn_dist: np.ndarray,
    confidence: np.ndarray,
    predicted: np.ndarray,
    t: Thresholds,
) -> dict[str, dict]:
    """Every input and prediction signal of one window: value, threshold, and whether it alerts."""
    x = unit_rows(embeddings)
    knn_rate = float(np.mean(nn_dist > ref.nn_q95))
    mmd = mmd2(x, ref.mmd_ref, ref.kyy_mean, ref.gamma)
    mmd_p = p_value(ref.mmd_null, mmd)
    oos_rate = float(np.mean((confidence < t.confidence) | (nn_dist > ref.nn_q99)))
    js = js_divergence(label_hist(predicted, len(ref.pred_dist)), ref.pred_dist)
    js_p = p_value(ref.js_null, js)
    return {
        "knn_rate": {
            "value": knn_rate,
            "threshold": t.knn_max_rate,
            "alert": knn_rate > t.knn_max_rate,
            "kind": "input",
            "higher_is_worse": True,
        },
        "mmd_p": {
            "value": mmd_p,
            "threshold": t.mmd_alpha,
            "alert": mmd_p < t.mmd_alpha,
            "kind": "input",
            "higher_is_worse": False,
            "statistic": mmd,
        },
        "oos_rate": {
            "value": oos_rate,
            "threshold": t.oos_max_rate,
            "alert": oos_rate > t.oos_max_rate,
            "kind": "out_of_scope",
            "higher_is_worse": True,
        },
        "js_p": {
            "value": js_p,
            "threshold": t.js_alpha,
            "alert": js_p < t.js_alpha,
            "kind": "prediction",
            "higher_is_worse": False,
            "statistic": js,
        },
    }
