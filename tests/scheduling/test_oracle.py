"""The hindsight oracle against brute force, its replay of levels against real drafting, and DyTC
against the expected-value oracle on synthetic drafters whose acceptance is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import runtime_model
from test_scheduling import FixedDrafter, identity_predictor, profile

from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters import ModelDrafter, NgramDrafter, SelfDrafter, TreeShape
from drafttrain.runtime.views import SelfDraftView
from drafttrain.scheduling.dytc import DyTCDrafter, DyTCSettings, capacity_shape
from drafttrain.scheduling.oracle import (
    StepCosts,
    autoregressive_seconds,
    best_expected_chain,
    correct_runs,
    expected_rate,
    fit_profile_to_run,
    hindsight_runs,
    hindsight_schedule,
    profile_costs,
)

GREEDY = SamplingParams(0.0)


def test_correct_runs_count_agreements_ahead():
    matches = np.array([True, True, False, True, True, True, False, True])
    assert correct_runs(matches).tolist() == [2, 1, 0, 3, 2, 1, 0, 1]


def linear_costs(draft: dict[str, tuple[float, float]], one_call: set[str], verify: tuple[float, float]) -> StepCosts:
    counts = np.arange(0, 20)
    feed = {level: c0 + c1 * counts for level, (c0, c1) in draft.items()}
    return StepCosts(feed, verify[0] + verify[1] * counts, frozenset(one_call))


def brute_force_seconds(runs: dict[str, np.ndarray], costs: StepCosts, overhead: float, max_depth: int) -> float:
    """Every way to split the output into steps, and every mix of segments within a step."""
    total = len(next(iter(runs.values())))

    def chains(t: int, depth_left: int, depth: int):
        yield 0.0, 0
        for level, level_runs in runs.items():
            if t + depth >= total:
                continue
            for k in range(1, min(int(level_runs[t + depth]), depth_left) + 1):
                for seconds, more in chains(t, depth_left - k, depth + k):
                    yield costs.draft_seconds(level, depth, k) + seconds, k + more

    def best(t: int) -> float:
        if t >= total:
            return 0.0
        options = []
        for seconds, length in chains(t, min(max_depth, total - t - 1), 0):
            options.append(seconds + costs.verify[length] + overhead + best(t + length + 1))
        return min(options)

    return best(0)


@pytest.mark.parametrize("seed", range(4))
def test_hindsight_schedule_is_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    runs = {"draft0": correct_runs(rng.random(9) < 0.6), "ngram": correct_runs(rng.random(9) < 0.4)}
    costs = linear_costs({"draft0": (0.05, 0.1), "ngram": (0.01, 0.0)}, {"ngram"}, (1.0, 0.08))
    schedule = hindsight_schedule(runs, lambda t: costs, overhead=0.02, max_depth=4, k_max=4)
    assert schedule.seconds == pytest.approx(brute_force_seconds(runs, costs, 0.02, 4))
    assert schedule.tokens == 9 and 1 <= schedule.steps <= 9
    assert sum(schedule.drafted.values()) == 9 - schedule.steps  # every drafted token was correct


def test_the_profile_is_fitted_to_the_measured_ar_run_both_ways():
    """Slower than predicted: the difference is per-token overhead; faster: every cost scales down.
    Either way the fitted profile's plain decoding takes exactly the measured time."""
    assert fit_profile_to_run(2.0, 2.5, 100) == (1.0, 0.005)
    scale, overhead = fit_profile_to_run(2.0, 1.5, 100)
    assert scale == 0.75 and overhead == 0.0
    latency = profile({"target": (0.01, 0.002), "ngram": (0.0005, 0.0)})
    costs_at = profile_costs(latency, ["ngram"], prompt_length=10, max_depth=4)
    predicted = autoregressive_seconds(costs_at, 50, 0.0)
    for measured in (0.5 * predicted, 2.0 * predicted):
        scale, overhead = fit_profile_to_run(predicted, measured, 50)
        fitted = profile_costs(latency, ["ngram"], prompt_length=10, max_depth=4, scale=scale)
        assert autoregressive_seconds(fitted, 50, overhead) == pytest.approx(measured)
        assert fitted(3).feed["ngram"] == pytest.approx(scale * costs_at(3).feed["ngram"])


def test_hindsight_schedule_without_any_correct_draft_is_autoregressive():
    runs = {"ngram": np.zeros(5, dtype=np.int64)}
    costs = linear_costs({"ngram": (0.01, 0.0)}, {"ngram"}, (1.0, 0.1))
    schedule = hindsight_schedule(runs, lambda t: costs, overhead=0.0)
    assert schedule.steps == 5 and schedule.seconds == pytest.approx(5.0) and schedule.drafted == {}


def test_replayed_runs_match_what_each_level_really_drafts():
    target = runtime_model(0, vocab=16, layers=3)
    decoder = SpeculativeDecoder(target)
    prompt = [1, 2, 3, 1, 2, 5]
    output = decoder.generate(prompt, None, GenerationConfig(20)).tokens
    ids = torch.tensor(prompt + output)
    drafters = {"draft0": ModelDrafter(runtime_model(1, vocab=16, layers=2), 16),
                "self0": SelfDrafter(decoder, SelfDraftView(skip_mlp=frozenset({1})), name="self0"),
                "ngram": NgramDrafter()}
    runs = hindsight_runs(drafters, target, ids, len(prompt), max_depth=6)
    for t in (0, 5, 11):
        context = ids[:len(prompt) + t]
        for name in ("draft0", "ngram"):  # drafters with their own state: draft from scratch
            drafter = drafters[name]
            drafter.reset()
            proposed = drafter.propose(context, TreeShape.chain(6), GREEDY, None).tokens.tolist()
            truth = output[t:t + 6]
            agreed = next((i for i, (a, b) in enumerate(zip(proposed, truth)) if a != b), min(len(proposed), len(truth)))
            assert min(int(runs[name][t]), 6) == agreed, (name, t)
    assert runs["self0"].shape == (20,) and runs["self0"].max() > 0


def synthetic_dytc(accept: dict[str, float], costs: dict[str, tuple[float, float]], one_call: set[str],
                   verify: tuple[float, float], max_depth: int) -> DyTCDrafter:
    """Drafters with constant confidence a and identity calibration: P(accept) is exactly a."""
    levels = {name: FixedDrafter(name, q=a) for name, a in accept.items()}
    for name in one_call:  # priced as one call, as the n-gram drafter is
        levels[name].drafts_in_one_call = True
    predictors = {"greedy": {name: identity_predictor(a) for name, a in accept.items()}}
    latency = profile({"target": verify, **costs})
    return DyTCDrafter(levels, predictors, latency, 8, settings=DyTCSettings(k_max=max_depth, max_depth=max_depth,
                                                                            budget_factor=100.0, siblings=False))


CASES = [
    # (acceptance per level, (c0, c1) drafting cost per level, one-call levels, target verify (c0, c1))
    ({"draft0": 0.8}, {"draft0": (0.05, 0.1)}, set(), (1.0, 0.05)),
    ({"draft0": 0.6, "ngram": 0.5}, {"draft0": (0.05, 0.15), "ngram": (0.01, 0.0)}, {"ngram"}, (1.0, 0.04)),
    ({"self0": 0.9, "draft0": 0.7, "ngram": 0.3}, {"self0": (0.3, 0.4), "draft0": (0.02, 0.08),
                                                  "ngram": (0.005, 0.0)}, {"ngram"}, (1.0, 0.06)),
    ({"draft0": 0.95, "ngram": 0.2}, {"draft0": (0.01, 0.05), "ngram": (0.01, 0.001)}, {"ngram"}, (1.0, 0.02)),
]


@pytest.mark.parametrize("accept, costs, one_call, verify", CASES)
def test_dytc_is_within_five_percent_of_the_oracle_with_exact_predictors(accept, costs, one_call, verify):
    max_depth = 8
    dytc = synthetic_dytc(accept, costs, one_call, verify, max_depth)
    tree = dytc.propose(torch.tensor([1, 2]), capacity_shape(64, max_depth), GREEDY, None)
    counts = np.arange(0, 20)
    step_costs = StepCosts({name: c0 + c1 * counts for name, (c0, c1) in costs.items()},
                           verify[0] + verify[1] * (counts + 1), frozenset(one_call))
    oracle_rate, oracle_chain = best_expected_chain(accept, step_costs, max_depth)
    plan = dytc.last_plan
    assert plan.nodes == len(tree)
    segments = [(level, k) for _, level, k in plan.expansions]  # a chain: each expansion below the last
    assert plan.expected_rate == pytest.approx(expected_rate(segments, accept, step_costs), rel=1e-6)
    assert plan.expected_rate >= 0.95 * oracle_rate, (segments, oracle_chain)
