"""Report math: tokens/s, bootstrap intervals and the lossless check on hand-made runs."""

from __future__ import annotations

import pytest

from drafttrain.evaluation.harness import MethodRuns
from drafttrain.evaluation.methods import MethodOutput
from drafttrain.evaluation.report import (
    method_entry,
    report_markdown,
    speedup_interval,
    tokens_per_s,
)


def _runs(seconds: list[float], tokens: list[list[int]] | None = None) -> MethodRuns:
    tokens = tokens or [[1] * 10 for _ in seconds]
    return MethodRuns([MethodOutput(t, s, None, None) for t, s in zip(tokens, seconds)])


def test_tokens_per_s_is_total_tokens_over_total_time():
    assert tokens_per_s(_runs([1.0, 3.0])) == pytest.approx(20 / 4.0)


def test_interval_of_a_uniform_speedup_is_tight():
    base = _runs([1.0, 2.0, 3.0, 4.0])
    twice_as_fast = _runs([0.5, 1.0, 1.5, 2.0])
    low, high = speedup_interval(twice_as_fast, base)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)


def test_interval_widens_with_spread_and_contains_the_estimate():
    base = _runs([1.0] * 8)
    mixed = _runs([0.25, 1.0, 0.5, 1.0, 0.25, 1.0, 0.5, 1.0])
    low, high = speedup_interval(mixed, base)
    point = tokens_per_s(mixed) / tokens_per_s(base)
    assert low < point < high and high - low > 0.3


def test_lossless_compares_every_prompt_with_ar():
    ar = _runs([1.0, 1.0], [[1, 2, 3], [4, 5]])
    same = _runs([0.5, 0.5], [[1, 2, 3], [4, 5]])
    differs = _runs([0.5, 0.5], [[1, 2, 3], [4, 6]])
    runs = {"ar": ar, "same": same, "differs": differs}
    assert method_entry(same, runs, greedy=True)["lossless"] is True
    assert method_entry(differs, runs, greedy=True)["lossless"] is False
    assert method_entry(differs, runs, greedy=False)["lossless"] is None
    assert method_entry(same, runs, greedy=True)["speedup_vs_ar"] == pytest.approx(2.0)
    assert method_entry(same, runs, greedy=True)["speedup_vs_hf"] is None


def test_markdown_has_a_row_per_method():
    runs = {"ar": _runs([1.0]), "hf": _runs([2.0])}
    report = {"target": "t", "device": "cpu", "prompts": 1, "max_new_tokens": 10, "temperature": 0.0,
              "command": "drafttrain eval ...",
              "methods": {name: method_entry(r, runs, True) for name, r in runs.items()}}
    text = report_markdown(report)
    assert "| ar | 10.0 | 1.00x |" in text and "| hf | 5.0 | 0.50x |" in text
