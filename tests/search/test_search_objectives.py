"""Search objectives: the expected-speedup formula, the cheap and the measured objective."""

from __future__ import annotations

import math

import optuna
import pytest
from search_testkit import CALIBRATION

from drafttrain.runtime import load_model, load_tokenizer
from drafttrain.runtime.views import SelfDraftView
from drafttrain.search.objectives import CheapObjective, MeasuredObjective, expected_speedup
from drafttrain.search.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_expected_speedup_formula():
    a, k, c = 0.8, 3, 0.25
    assert expected_speedup(a, k, c) == pytest.approx((1 - a ** 4) / ((1 - a) * (k * c + 1)))
    assert expected_speedup(0.8, 3, 0.25) == pytest.approx(2.952 / 1.75)
    # a -> 1: k + 1 tokens per step, continuous from below
    assert expected_speedup(1.0, 3, 0.25) == pytest.approx(4 / 1.75)
    assert expected_speedup(1 - 1e-7, 3, 0.25) == pytest.approx(4 / 1.75, rel=1e-5)
    assert expected_speedup(1 - 1e-12, 3, 0.25) == pytest.approx(4 / 1.75)
    # k = 1: (1 + a) / (c + 1)
    assert expected_speedup(0.6, 1, 0.5) == pytest.approx(1.6 / 1.5)
    # nothing accepted: one token per step, and the draft time is lost
    assert expected_speedup(0.0, 4, 0.1) == pytest.approx(1 / 1.4)
    # a free perfect draft of k tokens gives k + 1
    assert expected_speedup(1.0, 5, 0.0) == pytest.approx(6.0)
    for bad in ((-0.1, 3, 0.2), (1.1, 3, 0.2), (0.5, -1, 0.2), (0.5, 3, -0.2)):
        with pytest.raises(ValueError):
            expected_speedup(*bad)


@pytest.fixture(scope="module")
def target(tiny_target):
    model = load_model(tiny_target)
    tokenizer = load_tokenizer(tiny_target)
    return model, [tokenizer(text).input_ids for text in CALIBRATION]


@pytest.fixture(scope="module")
def cheap(target):
    model, prompt_ids = target
    space = SearchSpace(model.args.num_layers, keep_first_last=False, quant_groups=1)
    return CheapObjective.from_decoding(model, prompt_ids, space, max_new_tokens=6, calibration_tokens=40, k=3)


def test_cheap_objective_rows_respect_the_budget(cheap):
    assert sum(len(row) for row in cheap.rows) <= 40
    assert len(cheap.rows) >= 2


def test_cheap_objective_empty_view_accepts_everything(cheap):
    result = cheap.evaluate(SelfDraftView())
    assert result.acceptance == pytest.approx(1.0, abs=1e-6)
    assert result.agreement == pytest.approx(1.0)
    assert 0.1 < result.cost_ratio < 10.0  # the same forward twice: about 1, but tiny forwards are noisy
    assert result.speedup == pytest.approx(expected_speedup(result.acceptance, 3, result.cost_ratio))


def test_cheap_objective_values_in_range(cheap):
    for view in (SelfDraftView(skip_mlp=frozenset({1})),
                 SelfDraftView(frozenset({0, 1, 2}), frozenset({0, 1, 2})),
                 SelfDraftView(act_quant=((0, "int4"), (1, "int4"), (2, "int4")))):
        result = cheap.evaluate(view)
        assert 0.0 <= result.acceptance <= 1.0
        assert 0.0 <= result.agreement <= 1.0
        assert result.cost_ratio > 0 and math.isfinite(result.cost_ratio)
        assert 0 < result.speedup <= 4.0 / (3 * result.cost_ratio + 1) + 1e-9
    skip_all = cheap.evaluate(SelfDraftView(frozenset({0, 1, 2}), frozenset({0, 1, 2})))
    assert skip_all.acceptance < 0.999


def test_cheap_objective_records_trial_attrs_and_multi(cheap):
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(cheap.space.encode(SelfDraftView(skip_attn=frozenset({1}))))
    study.optimize(cheap, n_trials=2)
    for trial in study.trials:
        assert {"acceptance", "cost_ratio", "speedup", "spec", "agreement", "cost_fraction"} <= set(trial.user_attrs)
        assert trial.value == trial.user_attrs["speedup"]
    assert study.trials[0].user_attrs["spec"] == {"skip_attn": [1], "skip_mlp": [], "act_quant": {}}

    cheap.multi = True
    try:
        multi = optuna.create_study(directions=cheap.directions)
        multi.optimize(cheap, n_trials=2)
        for trial in multi.trials:
            assert trial.values == [trial.user_attrs["acceptance"], trial.user_attrs["cost_ratio"]]
    finally:
        cheap.multi = False


def test_cost_bound_prunes_before_work(cheap):
    cheap.max_cost_fraction = 0.5
    try:
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial(cheap.space.encode(SelfDraftView()))
        study.optimize(cheap, n_trials=1)
    finally:
        cheap.max_cost_fraction = None
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert "max_cost_fraction" in trial.user_attrs["pruned_reason"]
    assert "acceptance" not in trial.user_attrs


def test_measured_objective_reports_per_prompt(target):
    model, prompt_ids = target
    space = SearchSpace(model.args.num_layers, keep_first_last=False)
    objective = MeasuredObjective(model, prompt_ids[:2], space, k=2, max_new_tokens=6)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.enqueue_trial(space.encode(SelfDraftView(skip_mlp=frozenset({1}))))
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [0, 1]
    assert trial.value > 0 and trial.value == trial.intermediate_values[1]
    assert 0.0 <= trial.user_attrs["acceptance"] <= 1.0
    assert trial.user_attrs["cost_ratio"] > 0


def test_measured_objective_prunes(target):
    model, prompt_ids = target
    space = SearchSpace(model.args.num_layers, keep_first_last=False)
    objective = MeasuredObjective(model, prompt_ids[:2], space, k=2, max_new_tokens=4, warmup=False)

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]
