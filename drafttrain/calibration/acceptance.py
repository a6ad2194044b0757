"""Acceptance predictors: draft confidence -> P(accepted), per level and depth bucket.

For every draft level, and for every bucket of draft depths, a monotone map from the level's
confidence feature to the probability that a token is accepted given that its parent was,
fitted with scikit-learn's `IsotonicRegression(out_of_bounds="clip")` on trace rows. The
confidence feature is the draft probability of the token (`q_token`) for model and self-draft
levels, and the suffix match length for the n-gram drafter, which has no distribution. A
logistic regression on richer features (confidence, entropy, margin, depth, log context length)
is fitted beside it as a baseline.

Everything is saved as JSON (isotonic thresholds and values, logistic coefficients), never as
pickles. Prediction from JSON uses the same interpolation as scikit-learn
(`scipy.interpolate.interp1d`, linear, inputs clipped to the fitted range), so a loaded predictor
returns exactly what the fitted scikit-learn object returned.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from scipy.interpolate import interp1d
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from drafttrain.calibration.traces import Traces
from drafttrain.errors import DrafttrainError
from drafttrain.io import write_atomically

PREDICTORS_FORMAT = "drafttrain-predictors"
PREDICTORS_VERSION = 1
DEPTH_EDGES = (1, 2, 3, 5, 9)  # lower edges of the depth buckets: 1, 2, 3-4, 5-8, 9+
ISOTONIC_BINS = 16  # quantile bins of confidence the isotonic maps are fitted on (0: every row)
FEATURES = ("q_token", "match_length")
LOGISTIC_FEATURES = ("confidence", "entropy", "margin", "depth", "log_context")


# ---------------------------------------------------------------- features


def level_feature(rows: Traces) -> str:
    """The confidence feature of a level: q_token when every row has one, else match_length."""
    return "q_token" if len(rows) and np.isfinite(rows["q_token"]).all() else "match_length"


def confidence_values(rows: Traces, feature: str) -> np.ndarray:
    return rows[feature].astype(np.float64)


def raw_confidence(rows: Traces) -> np.ndarray:
    """What the drafter itself claims: q_token, or 1.0 for a deterministic (point-mass) draft."""
    q_token = rows["q_token"]
    return np.where(np.isfinite(q_token), q_token, 1.0)


def logistic_features(rows: Traces, feature: str) -> np.ndarray:
    """[rows, 5] unscaled baseline features; NaN entropy and margin (n-gram) count as 0."""
    return np.column_stack([
        confidence_values(rows, feature), np.nan_to_num(rows["entropy"]), np.nan_to_num(rows["margin"]),
        rows["depth"].astype(np.float64), np.log1p(rows["context_length"].astype(np.float64)),
    ])


def depth_buckets(depths: np.ndarray, edges: list[int] | tuple[int, ...]) -> np.ndarray:
    """Index of each depth's bucket: bucket b holds depths edges[b] .. edges[b + 1] - 1."""
    return np.maximum(np.searchsorted(np.asarray(edges), np.asarray(depths), side="right") - 1, 0)


def merge_sparse_buckets(depths: np.ndarray, edges: tuple[int, ...], min_rows: int) -> list[int]:
    """Drop bucket edges until every bucket holds at least `min_rows` rows (or one bucket is left).

    A sparse bucket merges into the shallower one before it; the first bucket merges into the
    second.
    """
    edges = list(edges)
    while len(edges) > 1:
        counts = np.bincount(depth_buckets(depths, edges), minlength=len(edges))
        sparse = [b for b in range(len(edges)) if counts[b] < min_rows]
        if not sparse:
            break
        bucket = sparse[-1]
        del edges[bucket if bucket > 0 else 1]
    return edges


def quantile_bin_means(confidence: np.ndarray, outcome: np.ndarray,
                       bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean confidence, mean outcome, count) within each of up to `bins` quantile bins of confidence
    (tied quantiles merge, so a level with few distinct confidences keeps one bin per value)."""
    edges = np.unique(np.quantile(confidence, np.linspace(0.0, 1.0, bins + 1)))
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, max(len(edges) - 2, 0))
    counts = np.bincount(index)
    filled = counts > 0
    means = [np.bincount(index, values)[filled] / counts[filled] for values in (confidence, outcome)]
    return means[0], means[1], counts[filled].astype(np.float64)


def chain_acceptance(per_token: np.ndarray) -> np.ndarray:
    """P(the first j tokens of a chain are all accepted), j = 1..k, from per-token conditionals."""
    return np.cumprod(np.asarray(per_token, dtype=np.float64), axis=-1)


# ---------------------------------------------------------------- isotonic map


@dataclass(frozen=True)
class IsotonicMap:
    """A fitted isotonic map: piecewise linear through (x_thresholds, y_thresholds), clipped."""

    x_thresholds: tuple[float, ...]
    y_thresholds: tuple[float, ...]
    rows: int = 0

    @classmethod
    def fit(cls, confidence: np.ndarray, outcome: np.ndarray,
            bins: int = ISOTONIC_BINS) -> tuple[IsotonicMap, IsotonicRegression]:
        """Fit on the rows, or (bins > 0) on their means within `bins` quantile bins of confidence,
        weighted by the bin counts: fewer, better supported steps that generalize to new prompts
        (on the reference target it cut the out-of-fold ECE of a draft model's map by a quarter)."""
        confidence = np.asarray(confidence, dtype=np.float64)
        outcome = np.asarray(outcome, dtype=np.float64)
        weights = None
        if bins > 0:
            confidence, outcome, weights = quantile_bin_means(confidence, outcome, bins)
        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        model.fit(confidence, outcome, sample_weight=weights)
        return cls.from_sklearn(model, int(weights.sum()) if weights is not None else len(outcome)), model

    @classmethod
    def from_sklearn(cls, model: IsotonicRegression, rows: int = 0) -> IsotonicMap:
        return cls(tuple(map(float, model.X_thresholds_)), tuple(map(float, model.y_thresholds_)), rows)

    def interpolate(self, confidence: np.ndarray) -> np.ndarray:
        """`predict` through `np.interp`: several times faster on a few values (the scheduler's
        hot path), equal to it up to rounding."""
        return np.interp(np.asarray(confidence, dtype=np.float64), self.x_thresholds, self.y_thresholds)

    def interpolate_one(self, confidence: float) -> float:
        """`interpolate` of one value in plain Python (no array round trip: the scheduler calls it per
        drafted token). Bit-equal to `np.interp`: the same bracket and the same arithmetic."""
        return interpolate_like_numpy(confidence, self.x_thresholds, self.y_thresholds)

    def predict(self, confidence: np.ndarray) -> np.ndarray:
        """As `IsotonicRegression.predict`: clip to the fitted range, interpolate linearly."""
        x = np.clip(np.asarray(confidence, dtype=np.float64).reshape(-1), self.x_thresholds[0], self.x_thresholds[-1])
        y = np.asarray(self.y_thresholds, dtype=np.float64)
        if len(y) == 1:
            return y.repeat(x.shape)
        return interp1d(np.asarray(self.x_thresholds), y, kind="linear", bounds_error=False)(x).astype(np.float64)

    def to_json(self) -> dict:
        return {"x_thresholds": list(self.x_thresholds), "y_thresholds": list(self.y_thresholds), "rows": self.rows}

    @classmethod
    def from_json(cls, data: dict, where: str) -> IsotonicMap:
        xs = _float_list(data, "x_thresholds", where)
        ys = _float_list(data, "y_thresholds", where)
        if not xs or len(xs) != len(ys):
            raise _schema_error(where, "x_thresholds", f"has {len(xs)} values for {len(ys)} y_thresholds; "
                                "they must be equally long and non-empty")
        if any(b < a for a, b in pairwise(xs)) or any(b < a for a, b in pairwise(ys)):
            raise _schema_error(where, "y_thresholds", "is not non-decreasing (an isotonic map is monotone)")
        if ys[0] < 0.0 or ys[-1] > 1.0:
            raise _schema_error(where, "y_thresholds", "has values outside [0, 1]")
        return cls(tuple(xs), tuple(ys), int(data.get("rows", 0)))


def interpolate_like_numpy(x: float, xs: tuple[float, ...], ys: tuple[float, ...]) -> float:
    """`float(np.interp(x, xs, ys))` for one float (xs ascending), with numpy's own cases and formula:
    clipped outside [xs[0], xs[-1]], ys[j] on a threshold, else the slope of the bracket xs[j] <= x <
    xs[j + 1] times (x - xs[j]) plus ys[j] (from the right end if that is NaN)."""
    if len(xs) == 1:
        return ys[0]
    if math.isnan(x):
        return x
    if x < xs[0]:
        return ys[0]
    if x > xs[-1]:
        return ys[-1]
    j = bisect_right(xs, x) - 1
    if j == len(xs) - 1 or xs[j] == x:
        return ys[j]
    slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j])
    value = slope * (x - xs[j]) + ys[j]
    if math.isnan(value):
        value = slope * (x - xs[j + 1]) + ys[j + 1]
        if math.isnan(value) and ys[j] == ys[j + 1]:
            value = ys[j]
    return value


# ---------------------------------------------------------------- logistic baseline


@dataclass(frozen=True)
class LogisticBaseline:
    """P(accept) = expit(((features - mean) / scale) @ coef + intercept) over LOGISTIC_FEATURES."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    @classmethod
    def fit(cls, features: np.ndarray, outcome: np.ndarray) -> tuple[LogisticBaseline, LogisticRegression]:
        """Fractional outcomes y count as a positive row of weight y and a negative of weight 1 - y."""
        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        scaled = (features - mean) / scale
        labels = np.r_[np.ones(len(outcome)), np.zeros(len(outcome))]
        weights = np.r_[outcome, 1.0 - outcome]
        model = LogisticRegression(C=1.0, max_iter=1000)
        model.fit(np.vstack([scaled, scaled]), labels, sample_weight=weights)
        baseline = cls(tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, model.coef_[0])),
                       float(model.intercept_[0]))
        return baseline, model

    def scaled(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """As `LogisticRegression.predict_proba(scaled)[:, 1]`."""
        scores = self.scaled(features) @ np.asarray([self.coef]).T + np.asarray([self.intercept])
        return expit(scores.reshape(-1))

    def to_json(self) -> dict:
        return {"features": list(LOGISTIC_FEATURES), "mean": list(self.mean), "scale": list(self.scale),
                "coef": list(self.coef), "intercept": self.intercept}

    @classmethod
    def from_json(cls, data: dict, where: str) -> LogisticBaseline:
        if data.get("features") != list(LOGISTIC_FEATURES):
            raise _schema_error(where, "features", f"is {data.get('features')!r}, expected {list(LOGISTIC_FEATURES)}")
        values = {name: _float_list(data, name, where) for name in ("mean", "scale", "coef")}
        for name, numbers in values.items():
            if len(numbers) != len(LOGISTIC_FEATURES):
                raise _schema_error(where, name, f"has {len(numbers)} values, expected {len(LOGISTIC_FEATURES)}")
        if any(value <= 0 for value in values["scale"]):
            raise _schema_error(where, "scale", "holds a value <= 0")
        intercept = data.get("intercept")
        if not _is_finite_number(intercept):
            raise _schema_error(where, "intercept", f"is {intercept!r}, expected a finite number")
        return cls(tuple(values["mean"]), tuple(values["scale"]), tuple(values["coef"]), float(intercept))


# ---------------------------------------------------------------- one level


@dataclass(frozen=True)
class LevelPredictor:
    """Calibrated acceptance of one draft level: an isotonic map per depth bucket, plus a baseline."""

    feature: str  # "q_token" or "match_length"
    depth_edges: tuple[int, ...]
    maps: tuple[IsotonicMap, ...]
    logistic: LogisticBaseline
    mean_acceptance: float  # over the fit rows: the prior of the online estimator

    def predict(self, confidence: np.ndarray, depth: np.ndarray, exact: bool = True) -> np.ndarray:
        """P(accept) per token; `exact=False` interpolates with numpy (equal up to rounding, faster)."""
        confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
        buckets = depth_buckets(np.asarray(depth).reshape(-1), self.depth_edges)
        predicted = np.empty_like(confidence)
        for bucket, isotonic in enumerate(self.maps):
            rows = buckets == bucket
            if rows.any():
                values = confidence[rows]
                predicted[rows] = isotonic.predict(values) if exact else isotonic.interpolate(values)
        return predicted

    def predict_one(self, confidence: float, depth: int) -> float:
        """`predict(..., exact=False)` of one token, in plain Python (equal to it bit for bit)."""
        bucket = max(bisect_right(self.depth_edges, depth) - 1, 0)
        return self.maps[bucket].interpolate_one(confidence)

    def predict_rows(self, rows: Traces) -> np.ndarray:
        return self.predict(confidence_values(rows, self.feature), rows["depth"])

    def predict_logistic(self, rows: Traces) -> np.ndarray:
        return self.logistic.predict(logistic_features(rows, self.feature))

    def to_json(self) -> dict:
        return {"feature": self.feature, "depth_edges": list(self.depth_edges),
                "isotonic": [isotonic.to_json() for isotonic in self.maps], "logistic": self.logistic.to_json(),
                "mean_acceptance": self.mean_acceptance}

    @classmethod
    def from_json(cls, data: dict, where: str) -> LevelPredictor:
        _require_object(data, where)
        feature = data.get("feature")
        if feature not in FEATURES:
            raise _schema_error(where, "feature", f"is {feature!r}, expected one of {list(FEATURES)}")
        edges = data.get("depth_edges")
        if (not isinstance(edges, list) or not edges or edges[0] != 1
                or not all(isinstance(e, int) and not isinstance(e, bool) for e in edges)
                or any(b <= a for a, b in pairwise(edges))):
            raise _schema_error(where, "depth_edges", f"is {edges!r}, expected increasing integers starting at 1")
        maps = data.get("isotonic")
        if not isinstance(maps, list) or len(maps) != len(edges):
            raise _schema_error(where, "isotonic", f"must be a list of {len(edges)} maps, one per depth bucket")
        isotonic = tuple(IsotonicMap.from_json(_require_object(item, f"{where}.isotonic[{i}]"),
                                               f"{where}.isotonic[{i}]") for i, item in enumerate(maps))
        logistic = LogisticBaseline.from_json(_require_object(data.get("logistic"), f"{where}.logistic"),
                                              f"{where}.logistic")
        mean = data.get("mean_acceptance")
        if not _is_finite_number(mean) or not 0.0 <= mean <= 1.0:
            raise _schema_error(where, "mean_acceptance", f"is {mean!r}, expected a number in [0, 1]")
        return cls(feature, tuple(edges), isotonic, logistic, float(mean))


def fit_level(rows: Traces, depth_edges: tuple[int, ...] = DEPTH_EDGES, min_rows: int = 200,
              bins: int = ISOTONIC_BINS) -> tuple[LevelPredictor, dict]:
    """Fit one level on its rows (parent accepted); also return the scikit-learn objects by name."""
    if len(rows) == 0:
        raise DrafttrainError("a level has no trace rows to fit: record more calibration prompts or tokens")
    feature = level_feature(rows)
    edges = merge_sparse_buckets(rows["depth"], depth_edges, min_rows)
    buckets = depth_buckets(rows["depth"], edges)
    confidence, outcome = confidence_values(rows, feature), rows["outcome"]
    maps, fitted = [], {}
    for bucket in range(len(edges)):
        in_bucket = buckets == bucket
        isotonic, model = IsotonicMap.fit(confidence[in_bucket], outcome[in_bucket], bins)
        maps.append(isotonic)
        fitted[f"isotonic[{bucket}]"] = model
    logistic, fitted["logistic"] = LogisticBaseline.fit(logistic_features(rows, feature), outcome)
    predictor = LevelPredictor(feature, tuple(edges), tuple(maps), logistic, float(outcome.mean()))
    return predictor, fitted


# ---------------------------------------------------------------- all levels, all modes


@dataclass
class AcceptancePredictors:
    """Level predictors per decoding mode ("greedy", "t0.7", ...), plus online-estimator settings."""

    modes: dict[str, dict[str, LevelPredictor]]
    ema_lambda: float = 0.7
    ema_window: int = 20

    def level(self, mode: str, name: str) -> LevelPredictor:
        if mode not in self.modes:
            raise DrafttrainError(f"no acceptance predictors for mode {mode!r} (have {sorted(self.modes)}): "
                                  "run `drafttrain run calibrate` with that temperature")
        if name not in self.modes[mode]:
            raise DrafttrainError(f"no acceptance predictor for level {name!r} in mode {mode!r} "
                                  f"(have {sorted(self.modes[mode])}): calibrate that level")
        return self.modes[mode][name]

    def to_json(self) -> dict:
        return {"format": PREDICTORS_FORMAT, "version": PREDICTORS_VERSION,
                "online": {"lambda": self.ema_lambda, "window": self.ema_window},
                "modes": {mode: {name: level.to_json() for name, level in levels.items()}
                          for mode, levels in self.modes.items()}}

    def save(self, path: str | Path) -> Path:
        return write_atomically(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> AcceptancePredictors:
        path = Path(path)
        if not path.is_file():
            raise DrafttrainError(f"predictors file {path} does not exist: run `drafttrain run calibrate` first")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DrafttrainError(f"{path} is not valid JSON ({err}): re-run `drafttrain run calibrate`") from err
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: object, source: str) -> AcceptancePredictors:
        _require_object(data, source)
        if data.get("format") != PREDICTORS_FORMAT:
            raise _schema_error(source, "format", f"is {data.get('format')!r}, expected {PREDICTORS_FORMAT!r}")
        version = data.get("version")
        if not isinstance(version, int) or version > PREDICTORS_VERSION:
            raise _schema_error(source, "version", f"is {version!r}; this drafttrain reads version "
                                f"{PREDICTORS_VERSION}: upgrade drafttrain or re-run calibration")
        online = _require_object(data.get("online"), f"{source}: online")
        ema_lambda, window = online.get("lambda"), online.get("window")
        if not _is_finite_number(ema_lambda) or not 0.0 < ema_lambda <= 1.0:
            raise _schema_error(source, "online.lambda", f"is {ema_lambda!r}, expected a number in (0, 1]")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise _schema_error(source, "online.window", f"is {window!r}, expected a positive integer")
        modes = _require_object(data.get("modes"), f"{source}: modes")
        parsed = {mode: {name: LevelPredictor.from_json(level, f"{source}: modes.{mode}.{name}")
                         for name, level in _require_object(levels, f"{source}: modes.{mode}").items()}
                  for mode, levels in modes.items()}
        return cls(parsed, float(ema_lambda), window)


def fit_predictors(traces: Traces, depth_edges: tuple[int, ...] = DEPTH_EDGES, min_rows: int = 200,
                   ema_lambda: float = 0.7, ema_window: int = 20, bins: int = ISOTONIC_BINS) -> AcceptancePredictors:
    """One `LevelPredictor` per (mode, level) of `traces`, fitted on rows whose parent was accepted."""
    rows = traces.for_fitting()
    modes: dict[str, dict[str, LevelPredictor]] = {}
    for mode in rows.modes():
        in_mode = rows.select(rows["mode"] == mode)
        modes[mode] = {level: fit_level(in_mode.select(in_mode["level"] == level), depth_edges, min_rows, bins)[0]
                       for level in in_mode.levels()}
    return AcceptancePredictors(modes, ema_lambda, ema_window)


# ---------------------------------------------------------------- schema helpers


def _schema_error(where: str, field: str, problem: str) -> DrafttrainError:
    return DrafttrainError(f"{where}: field {field!r} {problem}. The predictors file is damaged or from "
                           "another tool: re-run `drafttrain run calibrate` to rebuild it")


def _require_object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise DrafttrainError(f"{where}: expected a JSON object, found {type(value).__name__}. Re-run "
                              "`drafttrain run calibrate` to rebuild the predictors file")
    return value


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _float_list(data: dict, field: str, where: str) -> list[float]:
    values = data.get(field)
    if not isinstance(values, list) or not all(_is_finite_number(value) for value in values):
        raise _schema_error(where, field, "must be a list of finite numbers")
    return [float(value) for value in values]
