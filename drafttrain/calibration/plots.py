"""Reliability diagrams (PNG): predicted acceptance against observed acceptance, per level."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from drafttrain.calibration.metrics import expected_calibration_error, reliability_bins
from drafttrain.calibration.report import OutOfFold
from drafttrain.io import write_atomically


def reliability_diagram(predictions: OutOfFold, title: str, path: str | Path) -> Path:
    """Raw confidence, isotonic and logistic out-of-fold predictions (rows whose parent was
    accepted), each as observed acceptance per bin of prediction, with the bin counts below;
    written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged, series = predictions.judged()
    outcome = judged["outcome"]
    figure, (curve, counts) = plt.subplots(2, 1, figsize=(4.8, 5.6), sharex=True,
                                           gridspec_kw={"height_ratios": [3, 1]})
    curve.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    for (label, predicted), marker in zip(series.items(), ("o", "s", "^")):
        mean_predicted, mean_observed, bin_counts = reliability_bins(predicted, outcome)
        filled = bin_counts > 0
        ece = expected_calibration_error(predicted, outcome)
        curve.plot(mean_predicted[filled], mean_observed[filled], marker=marker, markersize=4,
                   label=f"{label} {'confidence ' if label == 'raw' else ''}(ECE {ece:.3f})")
        if label == "isotonic":
            edges = np.linspace(0, 1, len(bin_counts) + 1)
            counts.bar(edges[:-1], bin_counts, width=np.diff(edges), align="edge", color="#4c72b0")
    curve.set_ylabel("observed acceptance")
    curve.set_title(title, fontsize=9)
    curve.legend(fontsize=7, loc="upper left")
    curve.set_xlim(0, 1)
    curve.set_ylim(0, 1)
    counts.set_xlabel("predicted acceptance")
    counts.set_ylabel("tokens (isotonic)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_atomically(path, buffer.getvalue())
