"""scripts/draft_cold_cost.py: a drafting call timed warm and right after a target forward."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import draft_cold_cost
from conftest import runtime_model

from drafttrain.drafters.transformer import ModelDrafter


class FakeDrafter:
    """Slow on the first call after a target forward, fast right after its own call."""

    def __init__(self, events: list, name: str) -> None:
        self.events, self.name, self.cached = events, name, 0

    def propose(self, context, shape, sampling, generator):
        cold = not self.events or self.events[-1] != self.name
        self.events.append(self.name)
        time.sleep(0.004 if cold else 0.001)


def test_warm_follows_the_same_call_and_cold_follows_a_target_forward(monkeypatch):
    events: list = []
    drafters = {"a": FakeDrafter(events, "a"), "b": FakeDrafter(events, "b")}

    class Weight:
        def sum(self):
            events.append("weights")

    monkeypatch.setattr(draft_cold_cost, "draft_weights", lambda drafter: [Weight()])
    timed = draft_cold_cost.time_drafting(drafters, lambda: events.append("target"), torch.zeros(8, dtype=torch.long),
                                          pending=1, repeats=3)
    for by in timed.values():
        assert by["after target"] > 2 * by["warm"]
        assert by["weights read"] > 2 * by["warm"]  # reading weights is not the drafter's own call: still cold
    assert events.count("target") == 2 * 3 * len(drafters)
    assert events.count("weights") == 3 * len(drafters)
    assert all(events[i - 1] == "target" for i, event in enumerate(events) if event == "weights")
    assert drafters["a"].cached == 7  # every timed call fed one uncached token


def test_draft_weights_are_the_block_and_head_weights_a_draft_step_reads():
    model = runtime_model(0, vocab=16, layers=1)
    drafter = ModelDrafter(model, 16, vocab_subset=torch.tensor([1, 3, 5]))
    weights = draft_cold_cost.draft_weights(drafter)
    assert any(weight is drafter.subset_head for weight in weights)
    assert any(weight is model.layers[0].mlp.w13.weight for weight in weights)
    assert not any(weight is model.embed.weight for weight in weights)


def test_overlap_runs_the_drafting_call_on_a_second_thread_during_the_forward():
    threads_seen: list = []

    class Drafter:
        cached = 0

        def propose(self, context, shape, sampling, generator):
            threads_seen.append(threading.get_ident())
            time.sleep(0.003)

    intra_op: list = []

    def call(tokens, context):
        intra_op.append(torch.get_num_threads())
        time.sleep(0.003)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        timed = draft_cold_cost.time_overlap(call, Drafter(), torch.zeros(8, dtype=torch.long), pending=1,
                                             threads=2, repeats=4)
        assert torch.get_num_threads() == 2  # restored afterwards
    finally:
        torch.set_num_threads(before)
    assert set(timed) == {(1, "sequential"), (1, "overlapped"), (16, "sequential"), (16, "overlapped")}
    assert len(set(threads_seen)) == 2  # the sequential calls on this thread, the overlapped ones on the worker
    for tokens in (1, 16):  # sleeping releases the GIL, so the two sleeps overlap
        assert timed[tokens, "overlapped"] < 0.8 * timed[tokens, "sequential"]
    # per repeat: (1, sequential), (1, overlapped), (16, sequential), (16, overlapped); the count is per process,
    # so overlapping runs one intra-op thread on each Python thread
    assert intra_op == [2, 1, 2, 1] * 4


def test_section_reports_every_variant_and_both_thread_counts():
    args = argparse.Namespace(bundle="b", level="draft0", context=300, pending=1, repeats=5, threads=2)
    drafting = {"plan": {"warm": 0.001, "after target": 0.0015, "weights read": 0.0014}}
    threads = {(1, 1): 0.006, (1, 2): 0.005, (16, 1): 0.011, (16, 2): 0.008}
    overlap = {(1, "sequential"): 0.007, (1, "overlapped"): 0.0063, (16, "sequential"): 0.01,
               (16, "overlapped"): 0.01}
    text = draft_cold_cost.section(args, drafting, threads, overlap, 30.0)
    assert text.startswith("<!-- draft_cold_cost:start -->") and text.endswith("<!-- draft_cold_cost:end -->")
    assert "| plan | 1.000 | 1.500 | 1.50x | 1.400 |" in text
    assert "| 16 | 11.000 | 8.000 |" in text
    assert "| 1 | 7.000 | 6.300 | 0.90x |" in text
