"""Calibration metrics for acceptance predictions: ECE, Brier score, log-loss, AUC, reliability bins.

`predicted` are probabilities of acceptance; `observed` are outcomes in [0, 1]: 0/1 under greedy
decoding, min(1, p/q) under sampling (a fractional outcome is the expected value of the 0/1
accept draw, so Brier, log-loss and ECE are read as expectations). AUC needs 0/1 outcomes and
both classes; it is None otherwise.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

ECE_BINS = 15


def bin_index(predicted: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Equal-width bin of each prediction on [0, 1]; 1.0 falls in the last bin."""
    return np.minimum((np.asarray(predicted, dtype=float) * bins).astype(np.int64), bins - 1)


def reliability_bins(predicted: np.ndarray, observed: np.ndarray,
                     bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: (mean prediction, mean outcome, count); NaN means for empty bins."""
    predicted, observed = np.asarray(predicted, dtype=float), np.asarray(observed, dtype=float)
    index = bin_index(predicted, bins)
    counts = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, predicted, minlength=bins) / counts
        mean_observed = np.bincount(index, observed, minlength=bins) / counts
    return mean_predicted, mean_observed, counts


def expected_calibration_error(predicted: np.ndarray, observed: np.ndarray, bins: int = ECE_BINS) -> float:
    """sum over bins of (bin share) * |mean prediction - mean outcome| (equal-width bins)."""
    mean_predicted, mean_observed, counts = reliability_bins(predicted, observed, bins)
    filled = counts > 0
    if not filled.any():
        return float("nan")
    weights = counts[filled] / counts.sum()
    return float(np.sum(weights * np.abs(mean_predicted[filled] - mean_observed[filled])))


def brier_score(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Mean squared difference between prediction and outcome."""
    predicted, observed = np.asarray(predicted, dtype=float), np.asarray(observed, dtype=float)
    return float(np.mean((predicted - observed) ** 2))


def log_loss(predicted: np.ndarray, observed: np.ndarray, eps: float = 1e-6) -> float:
    """Mean cross-entropy -[y log p + (1 - y) log(1 - p)], p clipped to [eps, 1 - eps].

    The clip keeps a confident miss finite: a raw draft confidence of exactly 1.0 (an n-gram
    draft) that is rejected costs -log(eps) = 13.8 nats rather than infinity.
    """
    predicted = np.clip(np.asarray(predicted, dtype=float), eps, 1 - eps)
    observed = np.asarray(observed, dtype=float)
    return float(-np.mean(observed * np.log(predicted) + (1 - observed) * np.log1p(-predicted)))


def auc(predicted: np.ndarray, observed: np.ndarray) -> float | None:
    """Area under the ROC curve for 0/1 outcomes; None for fractional outcomes or one class."""
    observed = np.asarray(observed, dtype=float)
    if not np.isin(observed, (0.0, 1.0)).all() or len(np.unique(observed)) < 2:
        return None
    return float(roc_auc_score(observed, np.asarray(predicted, dtype=float)))


def calibration_summary(predicted: np.ndarray, observed: np.ndarray) -> dict:
    """Every metric above for one set of predictions, plus the row count and mean outcome."""
    return {"rows": len(observed), "mean_predicted": float(np.mean(predicted)) if len(predicted) else None,
            "mean_observed": float(np.mean(observed)) if len(observed) else None,
            "ece": expected_calibration_error(predicted, observed), "brier": brier_score(predicted, observed),
            "log_loss": log_loss(predicted, observed), "auc": auc(predicted, observed)}
