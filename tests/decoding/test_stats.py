"""RunStats' per-level, per-depth counts on hand-built steps (chains, mixed-level trees), merge and
to_json, and their consistency with the all-level counts in a real decode."""

from __future__ import annotations

import json

import pytest

from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.stats import RunStats
from drafttrain.drafters import ModelDrafter, TreeShape
from drafttrain.runtime import load_model, load_tokenizer


def _chain_steps() -> RunStats:
    stats = RunStats()
    stats.record_step("d", [1, 2, 3], [0, 1])  # 2 of 3 accepted
    stats.record_step("d", [1, 2, 3], [])  # the first rejected: depths 2 and 3 never judged
    stats.record_step("d", [1, 2], [0, 1])  # a shorter chain, all accepted: no depth 3 to judge
    stats.record_step(None, [], [])  # an autoregressive step
    return stats


def test_chain_counts_per_level_and_depth():
    stats = _chain_steps()
    assert stats.drafted_by_level_depth == {"d": [3, 3, 2]}
    assert stats.accepted_by_level_depth == {"d": [2, 2, 0]}
    # reached d: steps whose path got to depth d - 1 where a depth-d token was drafted
    assert stats.reached_by_level_depth == {"d": [3, 2, 1]}
    # the all-level fields keep their meaning
    assert stats.drafted_by_depth == [3, 3, 2] and stats.accepted_by_depth == [2, 2, 0]
    assert stats.drafted == {"d": 8} and stats.accepted == {"d": 4} and stats.target_forwards == 4


def test_chain_needs_no_parents():
    with_parents = RunStats()
    with_parents.record_step("d", [1, 2, 3], [0, 1], parents=[-1, 0, 1])
    with_parents.record_step("d", [1, 2, 3], [], parents=[-1, 0, 1])
    with_parents.record_step("d", [1, 2], [0, 1], parents=[-1, 0])
    assert with_parents.to_json() == _chain_steps().to_json() | {"target_forwards": 3, "mean_accepted_tokens": 0.0}


def test_chain_of_mixed_levels_counts_each_level_at_its_depths():
    stats = RunStats()
    stats.record_step("dytc", [1, 2, 3], [0, 1, 2], ["draft0", "draft0", "ngram"])
    stats.record_step("dytc", [1, 2, 3], [0], ["draft0", "draft0", "ngram"])
    assert stats.drafted_by_level_depth == {"draft0": [2, 2], "ngram": [0, 0, 2]}
    assert stats.accepted_by_level_depth == {"draft0": [2, 1], "ngram": [0, 0, 1]}
    assert stats.reached_by_level_depth == {"draft0": [2, 2], "ngram": [0, 0, 1]}
    assert stats.drafted == {"draft0": 4, "ngram": 2} and stats.accepted == {"draft0": 3, "ngram": 1}


# A tree of two levels: root -> a0 (A), b1 (B); a0 -> a2 (A); b1 -> b3 (B); a2 -> b4 (B); b3 -> a5 (A)
TREE_PARENTS = [-1, -1, 0, 1, 2, 3]
TREE_DEPTHS = [1, 1, 2, 2, 3, 3]
TREE_LEVELS = ["A", "B", "A", "B", "B", "A"]


def test_tree_with_parents_counts_only_the_children_of_the_accepted_path():
    stats = RunStats()
    stats.record_step("mix", TREE_DEPTHS, [0, 2], TREE_LEVELS, TREE_PARENTS)  # a0, a2 accepted; b4 rejected
    assert stats.drafted_by_level_depth == {"A": [1, 1, 1], "B": [1, 1, 1]}
    assert stats.accepted_by_level_depth == {"A": [1, 1, 0], "B": [0, 0, 0]}
    # depth 1: both levels under the root; depth 2: only A under a0; depth 3: only B under a2
    assert stats.reached_by_level_depth == {"A": [1, 1, 0], "B": [1, 0, 1]}
    stats.record_step("mix", TREE_DEPTHS, [1, 3, 5], TREE_LEVELS, TREE_PARENTS)  # b1, b3, a5: all of one branch
    assert stats.accepted_by_level_depth == {"A": [1, 1, 1], "B": [1, 1, 0]}
    assert stats.reached_by_level_depth == {"A": [2, 1, 1], "B": [2, 1, 1]}
    assert stats.accepted_by_depth == [2, 2, 1] and stats.drafted_by_depth == [4, 4, 4]


def test_tree_without_parents_counts_every_level_drafted_at_the_depth():
    stats = RunStats()
    stats.record_step("mix", TREE_DEPTHS, [0, 2], TREE_LEVELS)
    assert stats.accepted_by_level_depth == {"A": [1, 1, 0], "B": [0, 0, 0]}
    assert stats.reached_by_level_depth == {"A": [1, 1, 1], "B": [1, 1, 1]}  # an upper bound


def test_merge_adds_rows_of_different_lengths_and_levels():
    first, second = RunStats(), RunStats()
    first.record_step("d", [1, 2], [0])
    second.record_step("d", [1, 2, 3, 4], [0, 1, 2, 3])
    second.record_step("n", [1], [])
    first.merge(second)
    assert first.drafted_by_level_depth == {"d": [2, 2, 1, 1], "n": [1]}
    assert first.accepted_by_level_depth == {"d": [2, 1, 1, 1], "n": [0]}
    assert first.reached_by_level_depth == {"d": [2, 2, 1, 1], "n": [1]}
    assert first.drafted_by_depth == [3, 2, 1, 1] and first.accepted_by_depth == [2, 1, 1, 1]
    assert second.drafted_by_level_depth == {"d": [1, 1, 1, 1], "n": [1]}  # the other run is left alone
    empty = RunStats()
    empty.merge(first)
    assert empty.to_json() == first.to_json()
    assert empty.drafted_by_level_depth is not first.drafted_by_level_depth
    assert empty.drafted_by_level_depth["d"] is not first.drafted_by_level_depth["d"]


def test_to_json_exports_the_level_depth_tables():
    exported = json.loads(json.dumps(_chain_steps().to_json()))
    assert exported["drafted_by_level_depth"] == {"d": [3, 3, 2]}
    assert exported["accepted_by_level_depth"] == {"d": [2, 2, 0]}
    assert exported["reached_by_level_depth"] == {"d": [3, 2, 1]}
    assert exported["drafted_by_depth"] == [3, 3, 2] and exported["drafted"] == {"d": 8}


@pytest.mark.parametrize("shape", [TreeShape.chain(4), TreeShape((2, 2, 1))], ids=["chain", "tree"])
def test_a_real_decode_splits_the_depth_counts_by_level(tiny_target, tiny_draft, shape):
    model, tokenizer = load_model(tiny_target), load_tokenizer(tiny_target)
    decoder = SpeculativeDecoder(model, tokenizer)
    drafter = ModelDrafter.from_pretrained(tiny_draft, tokenizer, model.args.vocab_size)
    prompt = tokenizer("def add(a, b):\n    return a + b\n").input_ids
    steps = []
    stats = decoder.generate(prompt, drafter, GenerationConfig(max_new_tokens=30, shape=shape), trace=steps.append).stats
    (level,) = stats.drafted_by_level_depth
    assert stats.drafted_by_level_depth[level] == stats.drafted_by_depth
    assert stats.accepted_by_level_depth[level] == stats.accepted_by_depth
    assert sum(stats.drafted_by_level_depth[level]) == stats.drafted[level]
    # every node of these full trees has children down to the tree's depth: depth d is reached
    # whenever the path got to d - 1 and the tree goes that deep
    expected = [0] * len(stats.drafted_by_depth)
    for step in steps:
        for depth in range(1, min(len(step.path) + 1, max(step.depths)) + 1):
            expected[depth - 1] += 1
    assert stats.reached_by_level_depth[level] == expected
    assert expected[0] == len(steps) and 0 < sum(stats.accepted_by_depth) < sum(stats.drafted_by_depth)
