"""Scoring fitted acceptance predictors on held-out traces, and the calibration report.

For each (mode, level): ECE, Brier score, log-loss and AUC of the raw draft confidence, the
isotonic predictor and the logistic baseline on held-out rows (parent accepted); the same per
depth bucket; and, for chains, how well the product of calibrated per-token probabilities
predicts that the first j tokens are all accepted.
"""

from __future__ import annotations

import numpy as np

from drafttrain.calibration.acceptance import (
    AcceptancePredictors,
    LevelPredictor,
    chain_acceptance,
    depth_buckets,
    raw_confidence,
)
from drafttrain.calibration.metrics import (
    calibration_summary,
    expected_calibration_error,
)
from drafttrain.calibration.traces import Traces


def evaluate_level(predictor: LevelPredictor, rows: Traces) -> dict:
    """Scores of one level on held-out `rows` (all rows of the level; fitting rows are selected)."""
    judged = rows.for_fitting()
    outcome = judged["outcome"]
    isotonic = predictor.predict_rows(judged)
    scores = {"raw": calibration_summary(raw_confidence(judged), outcome),
              "isotonic": calibration_summary(isotonic, outcome),
              "logistic": calibration_summary(predictor.predict_logistic(judged), outcome)}
    buckets = depth_buckets(judged["depth"], predictor.depth_edges)
    scores["by_depth"] = [
        {"depths": _bucket_label(predictor.depth_edges, bucket),
         **calibration_summary(isotonic[buckets == bucket], outcome[buckets == bucket])}
        for bucket in range(len(predictor.depth_edges)) if (buckets == bucket).any()]
    scores["chain"] = chain_scores(predictor, rows)
    return scores


def chain_scores(predictor: LevelPredictor, rows: Traces, max_j: int = 8) -> list[dict]:
    """Per j: mean predicted and observed P(first j tokens all accepted) over chain steps."""
    per_token = predictor.predict_rows(rows)
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


def evaluate_predictors(predictors: AcceptancePredictors, held_out: Traces) -> dict:
    """{mode: {level: evaluate_level(...)}} over the held-out traces."""
    results: dict[str, dict] = {}
    for mode, levels in predictors.modes.items():
        in_mode = held_out.select(held_out["mode"] == mode)
        results[mode] = {name: evaluate_level(predictor, in_mode.select(in_mode["level"] == name))
                         for name, predictor in levels.items() if (in_mode["level"] == name).any()}
    return results


# ---------------------------------------------------------------- markdown


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def acceptance_table(scores: dict) -> list[str]:
    """The markdown table of held-out calibration scores, one row per (mode, level)."""
    lines = [("| mode | level | held-out rows | acceptance | ECE raw | ECE isotonic | ECE logistic | "
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
             (f"Calibration prompts: `{report['prompts']}` ({report['num_prompts']} prompts, "
              f"{report['held_out_prompts']} held out)"), "", "## Levels", ""]
    lines += [f"- `{name}`: {what}" for name, what in report["levels"].items()]
    lines += ["", "## Acceptance predictors (held-out prompts)", ""] + acceptance_table(report["acceptance"])
    if report.get("latency"):
        latency = report["latency"]
        lines += ["", "## Latency predictors (held-out grid points)", ""]
        lines += latency_table(latency["mape"], latency["fit_timings"], latency["held_out_timings"])
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)
