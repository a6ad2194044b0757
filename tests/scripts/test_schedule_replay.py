"""scripts/schedule_replay.py's pure parts: the recording drafter and the pricing of recorded steps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import schedule_replay

from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters.base import TreeShape
from drafttrain.drafters.ngram import NgramDrafter


class LinearModel:
    """seconds = base + per_token * tokens + per_context * context_length."""

    def __init__(self, base: float, per_token: float, per_context: float = 0.0) -> None:
        self.base, self.per_token, self.per_context = base, per_token, per_context

    def predict(self, tokens: np.ndarray, context_length: int) -> np.ndarray:
        return self.base + self.per_token * np.asarray(tokens, dtype=np.float64) + self.per_context * context_length


class Profile:
    def __init__(self) -> None:
        self.models = {"target": LinearModel(0.010, 0.001, 1e-6), "ngram": LinearModel(0.0001, 0.0)}


def test_verify_is_priced_over_the_root_and_the_tree_at_the_context_bucket():
    pricing = schedule_replay.Pricing(Profile(), bucket=16)
    # 5 draft nodes -> a forward over 6 tokens, at the start of the bucket of context 40 (32)
    assert pricing.verify(5, 40) == pytest.approx(0.010 + 0.006 + 32e-6)
    assert pricing.verify(5, 47) == pricing.verify(5, 40)  # same bucket
    assert pricing.verify(5, 48) > pricing.verify(5, 40)


def test_a_generation_costs_its_steps_verify_and_drafting_and_its_undrafted_forwards():
    pricing = schedule_replay.Pricing(Profile(), bucket=1)
    steps = [(100, 4, 0.002), (105, 0, 0.0001)]
    expected = (pricing.verify(4, 100) + 0.002) + (pricing.verify(0, 105) + 0.0001) + 2 * pricing.verify(0, 110)
    assert sum(schedule_replay.step_parts(steps, pricing, undrafted=2, context_length=110)) == pytest.approx(expected)
    assert sum(schedule_replay.step_parts([], pricing, 0, 110)) == 0.0


def test_the_recorder_passes_the_drafter_through_and_records_each_step():
    pricing = schedule_replay.Pricing(Profile(), bucket=1)
    recorder = schedule_replay.Recorder(NgramDrafter(), schedule_replay.chain_drafting(pricing, "ngram"))
    context = torch.tensor([5, 6, 7, 8, 5, 6, 7])
    tree = recorder.propose(context, TreeShape.chain(3), SamplingParams(), None)
    assert tree.tokens.tolist() == [8, 5, 6]  # what the n-gram drafter itself proposes
    assert recorder.steps == [(7, 3, pytest.approx(0.0001))]
    assert recorder.name == "ngram" and recorder.drafts_in_one_call  # attributes reach the drafter
    empty = recorder.propose(torch.tensor([1, 2, 3]), TreeShape.chain(3), SamplingParams(), None)
    assert len(empty) == 0 and recorder.steps[-1][:2] == (3, 0)  # a lookup that found nothing still costs one call


def test_speed_drift_is_measured_over_predicted_seconds_per_token_count():
    from drafttrain.calibration.latency import Timing

    models = Profile().models  # target: 0.010 + 0.001 * tokens + 1e-6 * context
    timings = [Timing("target", 1, 100, 2 * (0.010 + 0.001 + 100e-6)), Timing("target", 16, 100, 0.010 + 0.016 + 100e-6)]
    drift = schedule_replay.speed_drift(timings, models)
    assert drift == {1: pytest.approx(2.0), 16: pytest.approx(1.0)}


def test_the_target_is_timed_now_at_each_drift_token_count():
    from conftest import runtime_model

    timings = schedule_replay.time_target_now(runtime_model(0), 40)
    assert sorted((t.level, t.tokens, t.context) for t in timings) == [("target", n, 40)
                                                                        for n in schedule_replay.DRIFT_TOKENS]
    assert all(t.seconds > 0 for t in timings)


def test_a_generation_splits_into_verify_and_drafting():
    pricing = schedule_replay.Pricing(Profile(), bucket=1)
    steps = [(100, 4, 0.002), (105, 0, 0.0001)]
    verify, drafting = schedule_replay.step_parts(steps, pricing, undrafted=1, context_length=110)
    assert verify == pytest.approx(pricing.verify(4, 100) + pricing.verify(0, 105) + pricing.verify(0, 110))
    assert drafting == pytest.approx(0.0021)


def test_the_table_shows_each_part_measured_over_predicted_and_per_step():
    base = {"tokens": 100, "forwards": 10, "measured": 1.5, "predicted_verify": 0.8,
            "predicted_drafting": 0.2, "measured_verify": 1.0, "measured_drafting": 0.3}
    lines = schedule_replay.table({"sd-ngram k=4": base, "dytc x": {**base, "predicted_drafting": 0.0}})
    chain, dytc = lines[2].split(" | "), lines[3].split(" | ")
    assert chain[6:9] == ["1.50", "1.25", "1.50"]  # total, verify, drafting: measured / predicted
    assert chain[9] == "100.00, 30.00, 20.00 |"  # ms per step: verify, drafting, the rest (1.5 - 1.0 - 0.3 s)
    assert dytc[8] == "-"  # nothing predicted: no ratio
