"""Acceptance predictors: monotone maps, exact JSON round trip, recovery of a known curve, schema errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from drafttrain.calibration.acceptance import (
    DEPTH_EDGES,
    AcceptancePredictors,
    IsotonicMap,
    chain_acceptance,
    depth_buckets,
    fit_level,
    fit_predictors,
    logistic_features,
    merge_sparse_buckets,
    quantile_bin_means,
)
from drafttrain.calibration.report import evaluate_level, out_of_fold
from drafttrain.calibration.traces import TRACE_COLUMNS, Traces
from drafttrain.errors import DrafttrainError


def synthetic_traces(rows: int, seed: int = 0, level: str = "self0", mode: str = "greedy",
                     curve=lambda q, depth: q ** 1.5 * (1.0 - 0.03 * depth), ngram: bool = False) -> Traces:
    """Trace rows whose acceptance given confidence q and depth is `curve(q, depth)` exactly."""
    rng = np.random.default_rng(seed)
    depth = rng.integers(1, 9, rows)
    if ngram:
        match = rng.integers(1, 9, rows)
        accept_prob = np.clip(0.1 * match, 0, 1)
        q_token = np.full(rows, np.nan)
    else:
        match = np.full(rows, -1)
        q_token = rng.beta(2.0, 1.2, rows)
        accept_prob = curve(q_token, depth)
    outcome = (rng.random(rows) < accept_prob).astype(float)
    columns = {
        "mode": [mode] * rows, "level": [level] * rows, "prompt": [f"p{i % 40}" for i in range(rows)],
        "step": np.arange(rows), "node": np.zeros(rows, int), "parent": np.full(rows, -1), "depth": depth,
        "context_length": rng.integers(10, 500, rows), "token": rng.integers(0, 100, rows), "q_token": q_token,
        "entropy": rng.random(rows) if not ngram else np.full(rows, np.nan),
        "margin": rng.random(rows) if not ngram else np.full(rows, np.nan), "match_length": match,
        "parent_on_path": np.ones(rows, bool), "on_path": outcome.astype(bool), "outcome": outcome,
    }
    return Traces.from_rows({name: list(columns[name]) for name in TRACE_COLUMNS}), accept_prob


def test_fitted_maps_are_monotone():
    traces, _ = synthetic_traces(4000)
    predictor, _ = fit_level(traces)
    grid = np.linspace(-0.5, 1.5, 501)
    for depth in range(1, 12):
        predicted = predictor.predict(grid, np.full_like(grid, depth, dtype=int))
        assert (np.diff(predicted) >= 0).all()
        assert ((predicted >= 0) & (predicted <= 1)).all()


def test_json_round_trip_predicts_exactly_what_sklearn_predicted(tmp_path):
    traces, _ = synthetic_traces(3000, seed=1)
    predictor, fitted = fit_level(traces, min_rows=100)
    predictors = AcceptancePredictors({"greedy": {"self0": predictor}}, ema_lambda=0.6, ema_window=12)
    path = predictors.save(tmp_path / "predictors.json")
    loaded = AcceptancePredictors.load(path).level("greedy", "self0")
    probe = np.concatenate([np.linspace(-1, 2, 1001), traces["q_token"][:500]])
    for bucket, isotonic in enumerate(loaded.maps):
        np.testing.assert_array_equal(isotonic.predict(probe), fitted[f"isotonic[{bucket}]"].predict(probe))
    features = logistic_features(traces, "q_token")
    np.testing.assert_array_equal(loaded.logistic.predict(features),
                                  fitted["logistic"].predict_proba(loaded.logistic.scaled(features))[:, 1])
    assert AcceptancePredictors.load(path).ema_window == 12


def test_fast_interpolation_agrees_with_predict():
    traces, _ = synthetic_traces(3000, seed=8)
    predictor, _ = fit_level(traces, min_rows=100)
    probe, depths = np.linspace(-0.5, 1.5, 301), np.tile([1, 3, 7], 101)[:301]
    np.testing.assert_allclose(predictor.predict(probe, depths, exact=False), predictor.predict(probe, depths),
                               rtol=0, atol=1e-12)


def test_isotonic_map_matches_sklearn_on_a_single_threshold():
    model = IsotonicRegression(out_of_bounds="clip").fit([0.3, 0.3, 0.3], [1.0, 0.0, 1.0])
    isotonic = IsotonicMap.from_sklearn(model)
    np.testing.assert_array_equal(isotonic.predict([0.0, 0.3, 0.9]), model.predict([0.0, 0.3, 0.9]))


def test_a_known_acceptance_curve_is_recovered():
    traces, _ = synthetic_traces(60000, seed=2)
    predictor, _ = fit_level(traces, depth_edges=(1, 3, 5, 7), min_rows=200)
    grid = np.linspace(0.15, 0.95, 17)
    for depth in (1, 4, 8):
        truth = grid ** 1.5 * (1.0 - 0.03 * depth)
        predicted = predictor.predict(grid, np.full(len(grid), depth))
        # the bucket pools depths [d, d + 2): allow for the within-bucket spread of 0.03 per depth
        assert np.max(np.abs(predicted - truth)) < 0.06, (depth, predicted - truth)


def test_calibration_lowers_ece_out_of_fold():
    traces, _ = synthetic_traces(20000, seed=3)
    scores = evaluate_level(out_of_fold(traces, 5, 0, DEPTH_EDGES, 200, 16), DEPTH_EDGES)
    assert scores["raw"]["ece"] > 0.1 and scores["isotonic"]["ece"] < 0.03
    assert scores["isotonic"]["rows"] == len(traces)
    assert scores["chain"][0]["j"] == 1 and scores["by_depth"][0]["depths"] == "1"


def test_quantile_bin_means_by_hand():
    confidence = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.9, 0.9, 0.9])
    outcome = np.array([0, 0, 1, 0, 1, 1, 0, 1.0])
    means, outcomes, counts = quantile_bin_means(confidence, outcome, 2)
    np.testing.assert_allclose(means, [0.25, 0.9])  # median 0.65 splits 4 / 4
    np.testing.assert_allclose(outcomes, [0.25, 0.75])
    np.testing.assert_array_equal(counts, [4, 4])
    means, _, counts = quantile_bin_means(np.full(5, 0.5), np.ones(5), 16)  # ties merge into one bin
    assert means.tolist() == [0.5] and counts.tolist() == [5]


def test_unbinned_fit_is_plain_isotonic_regression():
    traces, _ = synthetic_traces(500, seed=7)
    isotonic, _ = IsotonicMap.fit(traces["q_token"], traces["outcome"], bins=0)
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(traces["q_token"], traces["outcome"])
    probe = np.linspace(0, 1, 101)
    np.testing.assert_array_equal(isotonic.predict(probe), reference.predict(probe))


def test_ngram_level_calibrates_on_match_length():
    traces, _ = synthetic_traces(5000, seed=4, level="ngram", ngram=True)
    predictor, _ = fit_level(traces)
    assert predictor.feature == "match_length"
    predicted = predictor.predict(np.array([1, 4, 8]), np.array([1, 1, 1]))
    np.testing.assert_allclose(predicted, [0.1, 0.4, 0.8], atol=0.07)


def test_fit_predictors_keys_by_mode_and_level():
    greedy, _ = synthetic_traces(1000, level="self0")
    sampled, _ = synthetic_traces(1000, level="ngram", mode="t0.7", ngram=True)
    predictors = fit_predictors(Traces.concat([greedy, sampled]), min_rows=50)
    assert set(predictors.modes) == {"greedy", "t0.7"}
    assert set(predictors.modes["t0.7"]) == {"ngram"}
    with pytest.raises(DrafttrainError, match="mode 'greedy'"):
        predictors.level("greedy", "ngram")


def test_fit_ignores_rows_whose_parent_was_rejected():
    traces, _ = synthetic_traces(2000, seed=5)
    junk = traces.select(np.arange(len(traces)))
    junk.columns["parent_on_path"] = np.zeros(len(junk), bool)
    junk.columns["outcome"] = np.zeros(len(junk))
    clean = fit_predictors(traces, min_rows=100).level("greedy", "self0")
    mixed = fit_predictors(Traces.concat([traces, junk]), min_rows=100).level("greedy", "self0")
    assert mixed == clean


def test_depth_buckets_and_sparse_merging():
    np.testing.assert_array_equal(depth_buckets(np.array([1, 2, 3, 4, 5, 8, 9, 20]), (1, 2, 3, 5, 9)),
                                  [0, 1, 2, 2, 3, 3, 4, 4])
    depths = np.array([1] * 300 + [2] * 300 + [3] * 50 + [5] * 300)
    assert merge_sparse_buckets(depths, (1, 2, 3, 5, 9), 100) == [1, 2, 5]
    assert merge_sparse_buckets(np.array([1] * 10 + [2] * 500), (1, 2), 100) == [1]


def test_chain_acceptance_is_the_cumulative_product():
    np.testing.assert_allclose(chain_acceptance([0.9, 0.5, 0.5]), [0.9, 0.45, 0.225])


@pytest.fixture()
def saved(tmp_path):
    traces, _ = synthetic_traces(800, seed=6)
    path = fit_predictors(traces, min_rows=100).save(tmp_path / "predictors.json")
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d["online"].update({"lambda": 1.5}), "online.lambda"),
    (lambda d: d["modes"]["greedy"]["self0"].update(feature="vibes"), "feature"),
    (lambda d: d["modes"]["greedy"]["self0"]["isotonic"][0].update(y_thresholds=[0.5]), "x_thresholds"),
    (lambda d: d["modes"]["greedy"]["self0"]["isotonic"][0]["y_thresholds"].reverse(), "y_thresholds"),
    (lambda d: d["modes"]["greedy"]["self0"]["logistic"].update(coef=[1.0]), "coef"),
    (lambda d: d["modes"]["greedy"]["self0"].update(depth_edges=[2, 1]), "depth_edges"),
    (lambda d: d["modes"]["greedy"]["self0"].update(mean_acceptance="high"), "mean_acceptance"),
])
def test_malformed_predictors_are_clear_errors(saved, mutate, field):
    path, data = saved
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DrafttrainError, match=field) as error:
        AcceptancePredictors.load(path)
    assert str(path) in str(error.value)


def test_unreadable_or_missing_predictors_files(tmp_path):
    with pytest.raises(DrafttrainError, match="does not exist.*calibrate"):
        AcceptancePredictors.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DrafttrainError, match="not valid JSON"):
        AcceptancePredictors.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DrafttrainError, match="expected a JSON object"):
        AcceptancePredictors.load(tmp_path / "list.json")
