"""Scoring acceptance predictors out of fold, and the calibration report.

Predictors are scored on prompts they were not fitted on: the prompts are split into folds, and
each fold's rows are predicted by predictors fitted on the other folds (cross-fitting). Pooling
the out-of-fold predictions scores every calibration row, which keeps the sampling noise of the
scores (ECE in particular) low; one fixed held-out split would score a few prompts only, and
prompts differ a lot in how predictable they are. The predictors that are saved are fitted on
all rows.

For each (mode, level): ECE, Brier score, log-loss and AUC of the raw draft confidence, the
isotonic predictor and the logistic baseline on rows whose parent was accepted; the same per
depth bucket; and, for chains, how well the product of calibrated per-token probabilities
predicts that the first j tokens are all accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drafttrain.calibration.acceptance import (
    AcceptancePredictors,
    chain_acceptance,
    depth_buckets,
    fit_level,
    raw_confidence,
)
from drafttrain.calibration.metrics import (
    calibration_summary,
    expected_calibration_error,
)
from drafttrain.calibration.traces import Traces


@dataclass
class OutOfFold:
    """Predictions for every row of one (mode, level), each from predictors fitted without its prompt."""

    rows: Traces
    isotonic: np.ndarray
    logistic: np.ndarray

    def judged(self) -> tuple[Traces, dict[str, np.ndarray]]:
        """The rows whose parent was accepted, and the raw / isotonic / logistic predictions for them."""
        mask = self.rows["parent_on_path"]
        rows = self.rows.select(mask)
        return rows, {"raw": raw_confidence(rows), "isotonic": self.isotonic[mask], "logistic": self.logistic[mask]}


def out_of_fold(rows: Traces, folds: int, seed: int, depth_edges: tuple[int, ...], min_rows: int,
                bins: int) -> OutOfFold:
    """Cross-fitted predictions for the rows of one (mode, level)."""
    fold = rows.prompt_folds(folds, seed)
    isotonic, logistic = np.empty(len(rows)), np.empty(len(rows))
    for index in range(folds):
        held = fold == index
        predictor, _ = fit_level(rows.select(~held).for_fitting(), depth_edges, min_rows, bins)
        isotonic[held] = predictor.predict_rows(rows.select(held))
        logistic[held] = predictor.predict_logistic(rows.select(held))
    return OutOfFold(rows, isotonic, logistic)


def evaluate_level(predictions: OutOfFold, depth_edges: tuple[int, ...]) -> dict:
    """Scores of one level's out-of-fold predictions."""
    judged, predicted = predictions.judged()
    outcome = judged["outcome"]
    scores = {name: calibration_summary(values, outcome) for name, values in predicted.items()}
    buckets = depth_buckets(judged["depth"], depth_edges)
    scores["by_depth"] = [
        {"depths": _bucket_label(depth_edges, bucket),
         **calibration_summary(predicted["isotonic"][buckets == bucket], outcome[buckets == bucket])}
        for bucket in range(len(depth_edges)) if (buckets == bucket).any()]
    scores["chain"] = chain_scores(predictions.isotonic, predictions.rows)
    return scores


def chain_scores(per_token: np.ndarray, rows: Traces, max_j: int = 8) -> list[dict]:
    """Per j: mean predicted and observed P(first j tokens all accepted) over chain steps."""
    predicted: dict[int, list[float]] = {}
    observed: dict[int, list[float]] = {}
    for nodes in _chain_steps(rows):
        chain_predicted = chain_acceptance(per_token[nodes])
        chain_observed = chain_acceptance(rows["outcome"][nodes])
        for j in range(min(len(nodes), max_j)):
            predicted.setdefault(j + 1, []).append(chain_predicted[j])
            observed.setdefault(j + 1, []).append(chain_observed[j])
    return [{"j": j, "steps": len(predicted[j]), "predicted": float(np.mean(predicted[j])),
             "observed": float(np.mean(observed[j])),
             "ece": expected_calibration_error(np.array(predicted[j]), np.array(observed[j]))}
            for j in sorted(predicted)]


def _chain_steps(rows: Traces) -> list[np.ndarray]:
    """Row indices of each step whose draft is a chain (node i's parent is node i - 1), root first."""
    keys = np.char.add(rows["prompt"].astype(str), np.char.add("/", rows["step"].astype(str)))
    steps: dict[str, list[int]] = {}
    for index, key in enumerate(keys.tolist()):
        steps.setdefault(key, []).append(index)
    chains = []
    for indices in steps.values():
        indices = np.array(indices)
        order = indices[np.argsort(rows["node"][indices])]
        if (rows["parent"][order] == np.arange(-1, len(order) - 1)).all():
            chains.append(order)
    return chains


def _bucket_label(edges: tuple[int, ...], bucket: int) -> str:
    low = edges[bucket]
    if bucket + 1 == len(edges):
        return f"{low}+"
    high = edges[bucket + 1] - 1
    return str(low) if high == low else f"{low}-{high}"


def evaluate_predictors(predictors: AcceptancePredictors, traces: Traces, folds: int, seed: int,
                        depth_edges: tuple[int, ...], min_rows: int,
                        bins: int) -> tuple[dict, dict[tuple[str, str], OutOfFold]]:
    """({mode: {level: scores}}, {(mode, level): out-of-fold predictions}) for every fitted level."""
    scores: dict[str, dict] = {}
    predictions: dict[tuple[str, str], OutOfFold] = {}
    for mode, levels in predictors.modes.items():
        for name, predictor in levels.items():
            rows = traces.select((traces["mode"] == mode) & (traces["level"] == name))
            predictions[mode, name] = out_of_fold(rows, folds, seed, depth_edges, min_rows, bins)
            scores.setdefault(mode, {})[name] = evaluate_level(predictions[mode, name], predictor.depth_edges)
    return scores, predictions


# ---------------------------------------------------------------- markdown


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def acceptance_table(scores: dict) -> list[str]:
    """The markdown table of out-of-fold calibration scores, one row per (mode, level)."""
    lines = [("| mode | level | rows | acceptance | ECE raw | ECE isotonic | ECE logistic | "
              "Brier raw / iso | log-loss raw / iso | AUC raw / iso |"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode, levels in scores.items():
        for name, level in levels.items():
            raw, iso, logistic = level["raw"], level["isotonic"], level["logistic"]
            lines.append(
                f"| {mode} | {name} | {iso['rows']} | {_number(iso['mean_observed'])} | {_number(raw['ece'])} | "
                f"**{_number(iso['ece'])}** | {_number(logistic['ece'])} | "
                f"{_number(raw['brier'])} / {_number(iso['brier'])} | "
                f"{_number(raw['log_loss'])} / {_number(iso['log_loss'])} | "
                f"{_number(raw['auc'])} / {_number(iso['auc'])} |")
    return lines


def latency_table(mape: dict[str, float], fit_rows: dict[str, int], held_rows: dict[str, int]) -> list[str]:
    lines = ["| level | fit timings | held-out timings | held-out MAPE |", "| --- | ---: | ---: | ---: |"]
    for name, error in mape.items():
        lines.append(f"| {name} | {fit_rows.get(name, 0)} | {held_rows.get(name, 0)} | {100 * error:.1f}% |")
    return lines


def report_markdown(report: dict) -> str:
    lines = ["# Calibration report", "", f"Target: `{report['target']}`  ", f"Device: {report['device']}  ",
             (f"Calibration prompts: `{report['prompts']}` ({report['num_prompts']} prompts, scored out of fold "
              f"over {report['folds']} folds)"), "", "## Levels", ""]
    lines += [f"- `{name}`: {what}" for name, what in report["levels"].items()]
    lines += ["", "## Acceptance predictors (out-of-fold predictions)", ""] + acceptance_table(report["acceptance"])
    if report.get("latency"):
        latency = report["latency"]
        lines += ["", "## Latency predictors (held-out grid points)", ""]
        lines += latency_table(latency["mape"], latency["fit_timings"], latency["held_out_timings"])
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)
