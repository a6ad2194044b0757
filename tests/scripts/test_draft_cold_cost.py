"""scripts/draft_cold_cost.py: a drafting call timed warm and right after a target forward."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import draft_cold_cost


class FakeDrafter:
    """Slow on the first call after a target forward, fast right after its own call."""

    def __init__(self, events: list, name: str) -> None:
        self.events, self.name, self.cached = events, name, 0

    def propose(self, context, shape, sampling, generator):
        cold = not self.events or self.events[-1] != self.name
        self.events.append(self.name)
        time.sleep(0.004 if cold else 0.001)


def test_warm_follows_the_same_call_and_cold_follows_a_target_forward():
    events: list = []
    drafters = {"a": FakeDrafter(events, "a"), "b": FakeDrafter(events, "b")}
    timed = draft_cold_cost.time_drafting(drafters, lambda: events.append("target"), torch.zeros(8, dtype=torch.long),
                                          pending=1, repeats=3)
    for by in timed.values():
        assert by["after target"] > 2 * by["warm"]
    assert events.count("target") == 3 * len(drafters)
    assert drafters["a"].cached == 7  # every timed call fed one uncached token


def test_section_reports_every_variant_and_both_thread_counts():
    args = argparse.Namespace(bundle="b", level="draft0", context=300, pending=1, repeats=5, threads=2)
    drafting = {"plan": {"warm": 0.001, "after target": 0.0015}}
    threads = {(1, 1): 0.006, (1, 2): 0.005, (16, 1): 0.011, (16, 2): 0.008}
    text = draft_cold_cost.section(args, drafting, threads, 30.0)
    assert text.startswith("<!-- draft_cold_cost:start -->") and text.endswith("<!-- draft_cold_cost:end -->")
    assert "| plan | 1.000 | 1.500 | 1.50x |" in text
    assert "| 16 | 11.000 | 8.000 |" in text
