"""Calibration metrics against direct computations on hand-made data, and the online estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss
from sklearn.metrics import log_loss as sklearn_log_loss

from drafttrain.calibration.metrics import (
    auc,
    bin_index,
    brier_score,
    calibration_summary,
    expected_calibration_error,
    log_loss,
)
from drafttrain.calibration.online import AcceptanceEMA, ema_acceptance, judged_tokens
from drafttrain.errors import DrafttrainError


def test_ece_by_hand():
    # bins of width 1/15: 0.05 -> bin 0, 0.5 -> bin 7, 0.95 -> bin 14
    predicted = np.array([0.05, 0.05, 0.5, 0.5, 0.5, 0.95])
    observed = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    # bin 0: |0.05 - 0.5| * 2/6; bin 7: |0.5 - 2/3| * 3/6; bin 14: |0.95 - 1| * 1/6
    expected = 0.45 * 2 / 6 + (2 / 3 - 0.5) * 3 / 6 + 0.05 / 6
    assert expected_calibration_error(predicted, observed) == pytest.approx(expected, abs=1e-12)


def test_ece_is_zero_when_each_bin_is_calibrated_and_one_at_worst():
    assert expected_calibration_error(np.array([0.2] * 5), np.array([0, 0, 0, 0, 1.0])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([0.0, 0.0])) == pytest.approx(1.0)


def test_bin_edges():
    np.testing.assert_array_equal(bin_index(np.array([0.0, 1 / 15 - 1e-9, 1 / 15 + 1e-9, 1.0])), [0, 0, 1, 14])


def test_brier_and_log_loss_match_sklearn_on_binary_outcomes():
    rng = np.random.default_rng(0)
    predicted = rng.random(200)
    observed = (rng.random(200) < predicted).astype(float)
    assert brier_score(predicted, observed) == pytest.approx(brier_score_loss(observed, predicted), abs=1e-12)
    assert log_loss(predicted, observed) == pytest.approx(sklearn_log_loss(observed, predicted), abs=1e-9)


def test_fractional_outcomes_by_hand():
    predicted, observed = np.array([0.5, 0.9]), np.array([0.25, 1.0])
    assert brier_score(predicted, observed) == pytest.approx((0.0625 + 0.01) / 2)
    expected = -(0.25 * math.log(0.5) + 0.75 * math.log(0.5) + math.log(0.9)) / 2
    assert log_loss(predicted, observed) == pytest.approx(expected)
    assert auc(predicted, observed) is None


def test_auc_by_hand_and_degenerate_cases():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1.0])) == pytest.approx(0.75)
    assert auc(np.array([0.1, 0.4]), np.array([1.0, 1.0])) is None


def test_confident_misses_stay_finite():
    summary = calibration_summary(np.array([1.0, 1.0]), np.array([0.0, 1.0]))
    assert math.isfinite(summary["log_loss"]) and summary["ece"] == pytest.approx(0.5)


def test_ema_by_hand():
    # steps (accepted, judged), oldest first, lambda 0.5: weights 0.25, 0.5, 1
    steps = [(3, 4), (0, 1), (2, 2)]
    assert ema_acceptance(steps, 0.5) == pytest.approx((0.75 + 0 + 2) / (1 + 0.5 + 2))
    # a prior of 0.8 worth 2 judged tokens
    assert ema_acceptance(steps, 0.5, 0.8, 2.0) == pytest.approx((0.75 + 0 + 2 + 1.6) / (1 + 0.5 + 2 + 2))
    assert judged_tokens(2, 4) == 3 and judged_tokens(4, 4) == 4


def test_acceptance_ema_window_prior_and_reset():
    ema = AcceptanceEMA(ema_lambda=0.7, window=2, priors={"self0": 0.8}, prior_weight=0.0)
    assert ema.estimate("self0") == 0.8 and ema.estimate("ngram", default=0.3) == 0.3
    ema.observe("self0", 0, 1)
    ema.observe("self0", 4, 4)
    ema.observe("self0", 1, 2)  # pushes (0, 1) out of the window of 2
    assert ema.estimate("self0") == pytest.approx((0.7 * 4 + 1) / (0.7 * 4 + 2))
    ema.observe("self0", 0, 0)  # nothing judged: ignored
    assert ema.estimate("self0") == pytest.approx((0.7 * 4 + 1) / (0.7 * 4 + 2))
    ema.reset()
    assert ema.estimate("self0") == 0.8


def test_idle_steps_age_an_estimate_back_to_its_prior():
    ema = AcceptanceEMA(ema_lambda=0.5, window=20, priors={"ngram": 0.6}, prior_weight=2.0)
    ema.idle("ngram")  # nothing observed yet: nothing to age
    for _ in range(3):
        ema.observe("ngram", 0, 4)
    low = ema.estimate("ngram")
    assert low == pytest.approx(1.2 / (4 * (1 + 0.5 + 0.25) + 2))
    for _ in range(12):
        ema.idle("ngram")
    assert low < ema.estimate("ngram") < 0.6 and ema.estimate("ngram") == pytest.approx(0.6, abs=0.01)


def test_acceptance_ema_tracks_a_known_rate():
    rng = np.random.default_rng(1)
    ema = AcceptanceEMA(ema_lambda=0.95, window=200)
    for _ in range(400):
        trials = rng.random(8) < 0.6  # a chain of 8: accepted tokens are the leading successes
        accepted = 8 if trials.all() else int(np.argmin(trials))
        ema.observe("draft0", accepted, judged_tokens(accepted, 8))
    assert ema.estimate("draft0") == pytest.approx(0.6, abs=0.08)


def test_one_rejection_does_not_erase_a_good_prior():
    ema = AcceptanceEMA(priors={"ngram": 0.7})
    ema.observe("ngram", 0, 1)
    assert ema.estimate("ngram") == pytest.approx(1.4 / 3)


def test_acceptance_ema_validates_settings():
    with pytest.raises(DrafttrainError, match="ema_lambda"):
        AcceptanceEMA(ema_lambda=0.0)
    with pytest.raises(DrafttrainError, match="window"):
        AcceptanceEMA(window=0)
    with pytest.raises(ValueError):
        AcceptanceEMA().observe("x", 3, 2)
