"""DyTC's plain-Python fast paths against the vectorized computations they replace, bit for bit:
isotonic interpolation, the rate scoring of expansions, the tree's q matrix, the n-gram index and the
online estimate; and which trees carry q rows."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from drafttrain.calibration.acceptance import (
    IsotonicMap,
    LevelPredictor,
    LogisticBaseline,
    interpolate_like_numpy,
)
from drafttrain.calibration.latency import LatencyModel, LatencyProfile
from drafttrain.calibration.online import ema_acceptance
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters.base import DraftTree, TreeShape
from drafttrain.drafters.ngram import (
    NgramDrafter,
    TokenIndex,
    _continuations,
    _merge_into_trie,
    longest_match,
)
from drafttrain.scheduling.dytc import DyTCDrafter, capacity_shape
from drafttrain.scheduling.scores import (
    LevelTerms,
    StepTotals,
    best_rate,
    best_scored,
    chain_seconds,
    draft_seconds,
    geometric_tails,
)
from drafttrain.scheduling.tree import TreeBuilder

# ---------------------------------------------------------------- isotonic interpolation


def random_map(rng: np.random.Generator, size: int) -> IsotonicMap:
    xs = np.unique(rng.choice([rng.random(size), np.arange(size, dtype=np.float64)]))
    ys = np.sort(rng.random(len(xs)))
    return IsotonicMap(tuple(xs.tolist()), tuple(ys.tolist()))


@pytest.mark.parametrize("seed", range(5))
def test_interpolate_one_equals_numpy_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    for size in (1, 2, 3, 7, 16):
        isotonic = random_map(rng, size)
        xs = np.asarray(isotonic.x_thresholds)
        probes = np.concatenate([rng.random(200) * 12 - 1, xs, np.nextafter(xs, np.inf), np.nextafter(xs, -np.inf),
                                 [-np.inf, np.inf, np.nan]])
        expected = isotonic.interpolate(probes).tolist()
        got = [isotonic.interpolate_one(x) for x in probes.tolist()]
        assert [repr(value) for value in got] == [repr(value) for value in expected]  # NaN-safe, exact


def test_interpolate_like_numpy_tries_the_other_end_when_a_slope_overflows():
    xs, ys = (0.0, 1e-310), (0.0, 1.0)  # slope 1 / 1e-310 overflows to inf
    assert interpolate_like_numpy(5e-311, xs, ys) == float(np.interp(5e-311, xs, ys))


def test_predict_one_equals_the_vectorized_predict_in_every_depth_bucket():
    rng = np.random.default_rng(7)
    logistic = LogisticBaseline((0.0,) * 5, (1.0,) * 5, (0.0,) * 5, 0.0)
    predictor = LevelPredictor("q_token", (1, 2, 3, 5), tuple(random_map(rng, 9) for _ in range(4)), logistic, 0.6)
    confidence, depths = rng.random(500), rng.integers(0, 20, 500)
    expected = predictor.predict(confidence, depths, exact=False).tolist()
    assert [predictor.predict_one(c, int(d)) for c, d in zip(confidence.tolist(), depths)] == expected


# ---------------------------------------------------------------- rate scoring


def vectorized_best_rate(levels, cumulative, depth, step):
    """The scoring DyTC did before `best_rate`: numpy over k per level, then `best_scored`."""
    options = []
    for terms, k_max in levels:
        ks = np.arange(1, k_max + 1)
        accept = terms.accept_prob
        gains = cumulative * accept * (1.0 - accept ** ks) / (1.0 - accept)
        drafting = draft_seconds(np.asarray(terms.feed), depth, ks, terms.one_call, terms.pending)
        verify = np.asarray(step.verify)[np.minimum(step.nodes + ks, len(step.verify) - 1)]
        rates = (1.0 + step.gain + gains) / (step.draft_seconds + drafting + verify)
        options += zip([terms.name] * len(ks), ks.tolist(), rates.tolist())
    return best_scored(options)


@pytest.mark.parametrize("seed", range(20))
def test_best_rate_equals_the_vectorized_scoring(seed):
    rng = random.Random(seed)
    max_depth = 16
    levels = []
    for i in range(rng.randint(1, 5)):
        accept = rng.choice([0.0, 0.999, rng.random() * 0.999])
        feed = sorted(rng.random() * 1e-3 for _ in range(max_depth + 2 + 8))
        one_call = i == 0
        terms = LevelTerms(f"level{i}", accept, geometric_tails(accept, max_depth), feed, one_call, rng.randint(0, 8))
        levels.append((terms, rng.randint(0, max_depth if one_call else 8)))
    verify = sorted(0.005 + rng.random() * 0.01 for _ in range(rng.randint(2, 64)))
    step = StepTotals(rng.random() * 4, rng.random() * 2e-3, rng.randint(0, 40), verify)
    cumulative, depth = rng.random(), rng.randint(0, max_depth - 1)
    assert best_rate(levels, cumulative, depth, step) == vectorized_best_rate(levels, cumulative, depth, step)


def test_best_rate_keeps_the_first_of_equal_options_and_none_without_options():
    feed = [0.0, 1e-3] + [1e-3] * 16
    same = [(LevelTerms(name, 0.5, geometric_tails(0.5, 16), feed, True), 1) for name in ("a", "b")]
    step = StepTotals(0.0, 0.0, 0, [1e-2] * 4)
    assert best_rate(same, 1.0, 0, step).level == "a"
    assert best_rate([], 1.0, 0, step) is None
    assert best_rate([(same[0][0], 0)], 1.0, 0, step) is None


def test_chain_seconds_are_draft_seconds_for_every_length():
    feed = [0.0, 0.25, 0.5, 0.75, 1.0, 1.3, 1.6, 1.9]
    for one_call in (False, True):
        for pending in (0, 1, 3):
            assert chain_seconds(feed, 2, 3, one_call, pending) == [draft_seconds(feed, 2, k, one_call, pending)
                                                                    for k in (1, 2, 3)]


def test_draft_seconds_feed_what_the_cache_lacks_then_single_steps():
    feed = [0.0, 1.0, 1.5, 1.75, 2.0, 2.25, 2.5]
    assert draft_seconds(feed, 2, 3, False) == 1.75 + 2 * 1.0  # the root and a path of 2, then 2 steps
    assert draft_seconds(feed, 2, 3, False, pending=4) == 2.5 + 2 * 1.0  # 4 context tokens lag, then the path
    assert draft_seconds(feed, 2, 1, False, pending=0) == 1.5  # the whole context cached: the path alone
    assert draft_seconds(feed, 0, 1, False, pending=0) == 1.0  # at the root, at least the root itself
    assert draft_seconds(feed, 2, 3, True, pending=4) == 1.75  # one call: the chain's own length


def test_geometric_tails_are_one_minus_the_powers():
    assert geometric_tails(0.5, 3) == [0.5, 0.75, 0.875]
    assert all(math.isclose(tail, 1 - 0.3 ** k) for k, tail in enumerate(geometric_tails(0.3, 9), start=1))


# ---------------------------------------------------------------- tree q matrix


def row_by_row(builder: TreeBuilder, vocab: int) -> torch.Tensor:
    rows = []
    for token, row in zip(builder.tokens, builder.q_rows):
        if row is None:
            row = torch.zeros(vocab)
            row[token] = 1.0
        rows.append(row.to(torch.float32))
    return torch.stack(rows)


def test_q_matrix_equals_the_row_by_row_stack_with_point_masses():
    builder = TreeBuilder()
    first = builder.graft(-1, DraftTree.chain(torch.tensor([4, 5])), "ngram")
    q_rows = torch.softmax(torch.randn(2, 8, dtype=torch.float64), dim=-1)
    builder.graft(first[0], DraftTree(torch.tensor([6, 7]), [-1, -1], q_rows), "self0")
    builder.add(first[1], 3, "draft0", torch.softmax(torch.randn(8), dim=-1))
    builder.graft(3, DraftTree.chain(torch.tensor([2])), "ngram")
    tree = builder.build(8)
    assert tree.q_draft.dtype == torch.float32 and torch.equal(tree.q_draft, row_by_row(builder, 8))
    assert builder.build(8, with_q=False).q_draft is None
    assert tree.tokens.tolist() == builder.build(8, with_q=False).tokens.tolist()


def test_point_mass_trees_carry_no_q_matrix():
    builder = TreeBuilder()
    builder.graft(-1, DraftTree.chain(torch.tensor([1, 2, 3])), "ngram")
    assert builder.build(8).q_draft is None


# ---------------------------------------------------------------- n-gram index


def reference_lookup(ids: np.ndarray, shape: TreeShape, min_match=1, max_match=8, max_occurrences=64):
    """The n-gram drafter's lookup as the numpy functions compute it."""
    length, ends = longest_match(ids, min_match, max_match)
    if ends.size == 0:
        return 0, [], []
    continuations = _continuations(ids, ends[:max_occurrences], shape.depth).tolist()
    return length, *_merge_into_trie(list(dict.fromkeys(map(tuple, continuations))), shape)


def contexts(seed: int, steps: int = 150):
    """A decode-like walk: contexts grow by a few tokens, draft paths come and go, sometimes the
    sequence starts over; tokens come from a small vocabulary with repeated spans."""
    rng = np.random.default_rng(seed)
    spans = [rng.integers(0, 6, size=int(rng.integers(2, 9))) for _ in range(5)]
    committed = rng.integers(0, 6, size=int(rng.integers(1, 5)))
    for _ in range(steps):
        grow = spans[int(rng.integers(0, len(spans)))] if rng.random() < 0.6 else rng.integers(0, 6, size=3)
        committed = np.concatenate([committed, grow[: int(rng.integers(1, len(grow) + 1))]])
        if rng.random() < 0.05:
            committed = rng.integers(0, 6, size=int(rng.integers(1, 30)))
        yield committed
        for _ in range(int(rng.integers(0, 3))):
            yield np.concatenate([committed, rng.integers(0, 6, size=int(rng.integers(1, 6)))])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [TreeShape.chain(1), TreeShape.chain(8), TreeShape.chain(30), TreeShape((3, 2, 1, 1))])
def test_incremental_index_matches_the_numpy_lookup(seed, shape):
    drafter = NgramDrafter(min_match=1 + seed % 2, max_match=4 + seed, max_occurrences=3 + seed)
    for ids in contexts(seed):
        expected = reference_lookup(ids, shape, drafter.min_match, drafter.max_match, drafter.max_occurrences)
        tree = drafter.propose(torch.from_numpy(ids), shape, SamplingParams(), None)
        assert (tree.match_lengths[0] if len(tree) else 0, tree.tokens.tolist(), tree.parents) == expected
        assert drafter.index.tokens == ids.tolist()


def test_index_sees_a_buffer_changed_in_place():
    """Cascades hand the drafter views of a buffer they overwrite between calls."""
    buffer = torch.tensor([1, 2, 3, 1, 2, 3, 9, 9])
    drafter = NgramDrafter()
    assert drafter.propose(buffer[:6], TreeShape.chain(2), SamplingParams(), None).tokens.tolist() == [1, 2]
    buffer[3:6] = torch.tensor([2, 2, 2])
    expected = reference_lookup(buffer[:6].numpy(), TreeShape.chain(2))[1]
    assert drafter.propose(buffer[:6], TreeShape.chain(2), SamplingParams(), None).tokens.tolist() == expected


def test_index_positions_follow_truncation():
    index = TokenIndex()
    index.update(np.array([5, 6, 5, 7]))
    index.update(np.array([5, 6]))
    assert index.tokens == [5, 6] and index.positions[5] == [0] and index.positions[7] == []
    assert index.longest_match(1, 8) == (0, [])
    index.update(np.array([5, 6, 5, 6]))
    assert index.longest_match(1, 8) == (2, [1])


# ---------------------------------------------------------------- online estimate


def summed_by_generators(steps, ema_lambda, prior, prior_weight):
    """`ema_acceptance` as first written (weights rebuilt, generator sums): the reference."""
    weights = [ema_lambda ** age for age in range(len(steps) - 1, -1, -1)]
    judged = sum(w * j for w, (_, j) in zip(weights, steps)) + prior_weight
    if judged <= 0:
        return prior
    return (sum(w * a for w, (a, _) in zip(weights, steps)) + prior * prior_weight) / judged


def test_ema_acceptance_equals_the_reference_bit_for_bit():
    rng = random.Random(3)
    for _ in range(3000):
        steps = [(a, a + rng.randint(0, 2)) if rng.random() < 0.8 else (0, 0)
                 for a in (rng.randint(0, 5) for _ in range(rng.randint(0, 20)))]
        args = (rng.choice([0.7, 1.0, rng.random()]), rng.random(), rng.choice([0.0, 2.0, rng.random()]))
        assert repr(ema_acceptance(steps, *args)) == repr(summed_by_generators(steps, *args))


# ---------------------------------------------------------------- DyTC's trees by mode


class UniformDrafter:
    """Drafts token (last + 1) % vocab from a fixed q row; a stand-in model level."""

    name = "self0"

    def reset(self) -> None:
        pass

    def observe(self, tree, accepted) -> None:
        pass

    def propose(self, context, shape, sampling, generator):
        tokens = [(int(context[-1]) + 1 + i) % 8 for i in range(shape.depth)]
        rows = torch.full((shape.depth, 8), 0.02)
        for row, token in enumerate(tokens):
            rows[row, token] = 0.86
        return DraftTree.chain(torch.tensor(tokens), rows)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_dytc_trees_carry_q_rows_under_sampling_only(temperature):
    identity = LevelPredictor("q_token", (1,), (IsotonicMap((0.0, 1.0), (0.0, 1.0)),),
                              LogisticBaseline((0.0,) * 5, (1.0,) * 5, (0.0,) * 5, 0.0), 0.8)
    matches = LevelPredictor("match_length", (1,), (IsotonicMap((0.0, 8.0), (0.2, 0.9)),),
                             LogisticBaseline((0.0,) * 5, (1.0,) * 5, (0.0,) * 5, 0.0), 0.5)
    latency = LatencyProfile({"device": "test", "dtype": "float32", "threads": 1, "torch": "x"},
                             {name: LatencyModel((c0, c1, 0.0, 0.0, 0.0, 0.0)) for name, (c0, c1) in
                              {"target": (1.0, 0.01), "self0": (0.05, 0.0), "ngram": (0.001, 0.0)}.items()},
                             grid={"token_counts": [1, 2, 4, 8, 16, 32, 64]})
    sampling = SamplingParams(temperature)
    mode = "greedy" if sampling.greedy else "t1"
    dytc = DyTCDrafter({"ngram": NgramDrafter(), "self0": UniformDrafter()},
                       {mode: {"ngram": matches, "self0": identity}}, latency, 8)
    tree = dytc.propose(torch.tensor([1, 2, 3, 1, 2]), capacity_shape(64, 8), sampling, torch.Generator().manual_seed(0))
    assert {"ngram", "self0"} <= set(tree.levels)
    if sampling.greedy:
        assert tree.q_draft is None
        return
    for node, level in enumerate(tree.levels):
        row = tree.q_draft[node]
        if level == "ngram":
            assert row[tree.tokens[node]] == 1.0 and row.sum() == 1.0
        else:
            assert row.sum() == pytest.approx(1.0) and row[tree.tokens[node]] > 0
