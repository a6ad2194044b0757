"""Calibration: acceptance traces, isotonic acceptance predictors, latency predictors, online estimates.

`drafttrain run calibrate` (recipes/calibrate.py) ties these together; the scheduler consumes
`predictors.json` (`AcceptancePredictors`), `latency.json` (`LatencyProfile`) and `AcceptanceEMA`.
"""

from drafttrain.calibration.acceptance import (
           AcceptancePredictors,
           IsotonicMap,
           LevelPredictor,
           fit_predictors,
)
from drafttrain.calibration.online import AcceptanceEMA
from drafttrain.calibration.traces import TraceRecorder, Traces

__all__ = ["AcceptanceEMA", "AcceptancePredictors", "IsotonicMap", "LevelPredictor", "TraceRecorder", "Traces",
           "fit_predictors"]
