"""Scheduler math against direct computation; tree assembly; DyTC's growth, budget and losslessness."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import runtime_model, sampled_pair_pvalue

from drafttrain.calibration.acceptance import (
    IsotonicMap,
    LevelPredictor,
    LogisticBaseline,
)
from drafttrain.calibration.latency import LatencyModel, LatencyProfile
from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters import (
    DraftTree,
    ModelDrafter,
    NgramDrafter,
    SelfDrafter,
    TreeShape,
)
from drafttrain.runtime.views import SelfDraftView
from drafttrain.scheduling.dytc import MAX_ACCEPT, DyTCDrafter, DyTCSettings, capacity_shape, logit, shifted_acceptance
from drafttrain.scheduling.heuristic import HeuristicKDrafter
from drafttrain.scheduling.scores import (
    best_choice,
    dytc_score,
    expected_accepted,
    verify_budget,
)
from drafttrain.scheduling.tree import TreeBuilder

GREEDY = SamplingParams(0.0)


# ---------------------------------------------------------------- scores


@pytest.mark.parametrize("accept_prob", [0.0, 0.3, 0.75, 1.0])
def test_expected_accepted_is_the_geometric_sum(accept_prob):
    for k in range(9):
        assert expected_accepted(accept_prob, k) == pytest.approx(sum(accept_prob ** i for i in range(1, k + 1)))


def test_dytc_score_by_direct_computation():
    a, k, a_bottom = 0.8, 3, 0.5
    direct = (0.8 + 0.64 + 0.512 + 0.512 * 0.5) / (0.3 + 0.01)
    assert dytc_score(a, k, 0.3, a_bottom, 0.01) == pytest.approx(direct)
    with pytest.raises(ValueError):
        dytc_score(a, k, 0.0, a_bottom, 0.0)


def test_best_choice_is_the_argmax_over_levels_and_lengths():
    levels = [("big", 0.9, lambda k: 0.4 + 0.3 * k), ("small", 0.6, lambda k: 0.05 * k), ("mid", 0.8, lambda k: 0.2 * k)]
    choice = best_choice(levels, 6, 0.5, 0.02)
    brute = max(((name, k, dytc_score(a, k, cost(k), 0.5, 0.02)) for (name, a, cost), k
                 in itertools.product(levels, range(1, 7))), key=lambda item: item[2])
    assert (choice.level, choice.k) == brute[:2] and choice.score == pytest.approx(brute[2])
    assert best_choice([], 4, 0.5, 0.1) is None


def test_verify_budget_is_the_knee_of_the_cost_curve():
    assert verify_budget(lambda n: 1.0 + 0.1 * n, 63, 2.0) == 10
    assert verify_budget(lambda n: 1.0, 63, 2.0) == 63
    assert verify_budget(lambda n: 1.0 + 2 * n, 63, 2.0) == 0


# ---------------------------------------------------------------- tree assembly


def test_tree_builder_grafts_with_offsets_and_point_masses():
    builder = TreeBuilder()
    first = builder.graft(-1, DraftTree.chain(torch.tensor([4, 5])), "ngram")
    q_rows = torch.full((2, 8), 1 / 8)
    second = builder.graft(first[0], DraftTree(torch.tensor([6, 7]), [-1, -1], q_rows), "self0")
    assert first == [0, 1] and second == [2, 3]
    assert builder.parents == [-1, 0, 0, 0] and builder.depths == [1, 2, 2, 2]
    assert builder.path(3) == [4, 7] and builder.path(-1) == []
    tree = builder.build(8)
    assert tree.levels == ["ngram", "ngram", "self0", "self0"]
    assert tree.q_draft[0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0] and tree.q_draft[2, 0] == pytest.approx(1 / 8)
    assert TreeBuilder().graft(-1, DraftTree.chain(torch.tensor([1])), "ngram") == [0]


def test_tree_builder_grafts_only_the_part_of_a_chain_the_tree_lacks():
    builder = TreeBuilder()
    builder.graft(-1, DraftTree.chain(torch.tensor([4, 5, 6])), "ngram")
    assert builder.shared_prefix(-1, [4, 5, 9, 1]) == (1, 2)  # 4, 5 are nodes 0, 1; 9 is new
    assert builder.shared_prefix(-1, [7, 4]) == (-1, 0) and builder.shared_prefix(0, [5, 6]) == (2, 2)
    q_rows = torch.full((4, 10), 0.1)
    nodes = builder.graft(1, DraftTree.chain(torch.tensor([4, 5, 9, 1]), q_rows), "draft0", skip=2)
    assert nodes == [3, 4] and builder.parents[3:] == [1, 3] and builder.depths[3:] == [3, 4]
    assert builder.tokens[3:] == [9, 1] and builder.levels[3:] == ["draft0", "draft0"]
    assert builder.child_with_token(1, 9) == 3 and builder.child_with_token(1, 6) == 2
    assert builder.child_with_token(1, 4) is None


# ---------------------------------------------------------------- DyTC


def identity_predictor(mean: float = 0.6) -> LevelPredictor:
    logistic = LogisticBaseline((0.0,) * 5, (1.0,) * 5, (0.0,) * 5, 0.0)
    return LevelPredictor("q_token", (1,), (IsotonicMap((0.0, 1.0), (0.0, 1.0)),), logistic, mean)


def match_predictor() -> LevelPredictor:
    logistic = LogisticBaseline((0.0,) * 5, (1.0,) * 5, (0.0,) * 5, 0.0)
    return LevelPredictor("match_length", (1,), (IsotonicMap((0.0, 8.0), (0.2, 0.9)),), logistic, 0.5)


def profile(costs: dict[str, tuple[float, float]]) -> LatencyProfile:
    """Seconds = c0 + c1 * n for every level (no context dependence)."""
    models = {name: LatencyModel((c0, c1, 0.0, 0.0, 0.0, 0.0)) for name, (c0, c1) in costs.items()}
    return LatencyProfile({"device": "test", "dtype": "float32", "threads": 1, "torch": "x"}, models,
                          grid={"token_counts": [1, 2, 4, 8, 16, 32, 64]})


class FixedDrafter:
    """Drafts token (last + 1) % vocab with probability `q` (the next token has `runner_up`);
    records the contexts it drafted after."""

    def __init__(self, name: str, q: float, vocab: int = 8, runner_up: float | None = None) -> None:
        self.name, self.q, self.vocab, self.runner_up, self.calls = name, q, vocab, runner_up, []

    def reset(self) -> None:
        self.calls.clear()

    def observe(self, tree, accepted) -> None:
        pass

    def propose(self, context, shape, sampling, generator):
        self.calls.append(context.tolist())
        tokens, last = [], int(context[-1])
        for _ in range(shape.depth):
            last = (last + 1) % self.vocab
            tokens.append(last)
        runner_up = (1 - self.q) / (self.vocab - 1) if self.runner_up is None else self.runner_up
        rest = (1 - self.q - runner_up) / (self.vocab - 2)
        rows = torch.full((shape.depth, self.vocab), rest)
        for row, token in enumerate(tokens):
            rows[row, token], rows[row, (token + 1) % self.vocab] = self.q, runner_up
        return DraftTree.chain(torch.tensor(tokens), rows)


@pytest.mark.parametrize("calibrated", [0.05, 0.3, 0.5, 0.9])
def test_shifted_acceptance_moves_a_calibrated_probability_in_logit_space(calibrated):
    odds = calibrated / (1 - calibrated)
    assert shifted_acceptance(calibrated, 0.0) == pytest.approx(calibrated)  # the level does as calibrated
    # a level accepted at 0.8 online against a calibrated mean of 0.5: the odds go up 4x
    shift = logit(0.8) - logit(0.5)
    assert shift == pytest.approx(math.log(4.0))
    assert shifted_acceptance(calibrated, shift) == pytest.approx(min(4 * odds / (1 + 4 * odds), MAX_ACCEPT))
    assert shifted_acceptance(calibrated, -shift) == pytest.approx(odds / 4 / (1 + odds / 4))


def test_shifted_acceptance_keeps_the_ranking_below_the_cap_and_the_ends_fixed():
    shift = logit(0.9) - logit(0.6)  # scaling by 0.9 / 0.6 would put every p >= 0.67 at the cap
    moved = [shifted_acceptance(p, shift) for p in (0.5, 0.7, 0.9, 0.95)]
    assert moved == sorted(moved) and len(set(moved)) == 4 and moved[-1] < MAX_ACCEPT
    assert shifted_acceptance(0.0, 5.0) == 0.0 and shifted_acceptance(1.0, -5.0) == MAX_ACCEPT


def test_dytc_shifts_a_levels_calibrated_acceptance_by_its_online_estimate():
    drafter = FixedDrafter("self0", q=0.6)
    dytc = DyTCDrafter({"self0": drafter}, {"greedy": {"self0": identity_predictor(0.6)}},
                       profile({"target": (1.0, 0.01), "self0": (1e-4, 0.0)}), 8,
                       settings=DyTCSettings(k_max=1, max_depth=1, siblings=False))
    dytc.propose(torch.tensor([1, 2]), capacity_shape(8, 1), GREEDY, None)
    assert dytc.last_plan.expected_accepted == pytest.approx(0.6)  # online estimate = calibrated mean
    dytc.ema.observe("self0", 9, 10)  # the level does better on this sequence
    online = dytc.ema.estimate("self0")
    dytc.propose(torch.tensor([1, 2]), capacity_shape(8, 1), GREEDY, None)
    assert online > 0.6
    assert dytc.last_plan.expected_accepted == pytest.approx(shifted_acceptance(0.6, logit(online) - logit(0.6)))


def test_dytc_spends_nothing_when_drafting_cannot_pay():
    drafter = FixedDrafter("self0", q=0.05)
    dytc = DyTCDrafter({"self0": drafter}, {"greedy": {"self0": identity_predictor(0.05)}},
                       profile({"target": (1.0, 0.5), "self0": (0.9, 0.0)}), 8, settings=DyTCSettings(siblings=False))
    assert len(dytc.propose(torch.tensor([1, 2]), TreeShape.chain(8), GREEDY, None)) == 0
    assert drafter.calls == []


def test_dytc_grows_until_the_verify_budget_when_drafting_is_free():
    drafter = FixedDrafter("self0", q=0.95)
    dytc = DyTCDrafter({"self0": drafter}, {"greedy": {"self0": identity_predictor(0.95)}},
                       profile({"target": (1.0, 0.1), "self0": (1e-4, 0.0)}), 8,
                       settings=DyTCSettings(k_max=4, max_depth=32))
    tree = dytc.propose(torch.tensor([1, 2]), capacity_shape(64, 32), GREEDY, None)
    # verifying root + n nodes costs 1 + 0.1 (n + 1); at most twice the 1.1 of the root alone: n <= 11
    assert len(tree) == 11
    assert tree.levels == ["self0"] * len(tree)


def test_dytc_expands_the_most_likely_leaf_first():
    """The first draft (token 5, p 0.5) gets its runner-up (token 6, p 0.45) as a sibling. Then the
    chain continues below 5 (cumulative 0.5), and next below the sibling 6 (0.45), which beats
    the new tip below 5 (0.5 x 0.5)."""
    drafter = FixedDrafter("self0", q=0.5, runner_up=0.45)
    dytc = DyTCDrafter({"self0": drafter}, {"greedy": {"self0": identity_predictor(0.5)}},
                       profile({"target": (1.0, 0.01), "self0": (0.01, 0.0)}), 8,
                       settings=DyTCSettings(k_max=1, max_depth=6))
    tree = dytc.propose(torch.tensor([3, 4]), capacity_shape(64, 6), GREEDY, None)
    assert drafter.calls[:3] == [[3, 4], [3, 4, 5], [3, 4, 6]]
    assert tree.tokens[:2].tolist() == [5, 6] and tree.parents[:2] == [-1, -1]


def test_dytc_falls_back_when_a_level_drafts_nothing():
    ngram, model = NgramDrafter(), FixedDrafter("self0", q=0.9)
    dytc = DyTCDrafter({"ngram": ngram, "self0": model},
                       {"greedy": {"ngram": match_predictor(), "self0": identity_predictor(0.9)}},
                       profile({"target": (1.0, 0.01), "self0": (0.2, 0.0), "ngram": (0.001, 0.0)}), 8,
                       settings=DyTCSettings(k_max=6))
    tree = dytc.propose(torch.tensor([1, 2, 3]), capacity_shape(64, 8), GREEDY, None)  # nothing recurs
    assert tree.levels[0] == "self0"  # the n-gram drafter had no match at the root
    # once self0's chain 4, 5, 6, 7, 0, 1 makes token 1 recur, the n-gram drafter copies "2, 3"
    assert tree.tokens.tolist() == [4, 5, 6, 7, 0, 1, 2, 3]
    assert tree.levels == ["self0"] * 6 + ["ngram"] * 2


class LaggingDrafter(FixedDrafter):
    """A FixedDrafter whose cache lacks the last `lag` context tokens until it has drafted, as a
    draft model's does after steps drafted by other levels."""

    def __init__(self, name: str, q: float, lag: int) -> None:
        super().__init__(name, q)
        self.lag, self.cached = lag, None

    def uncached_tokens(self, context_length: int) -> int:
        return self.lag if self.cached is None else context_length - min(self.cached, context_length)

    def keep_prefix(self, length: int) -> None:
        self.cached = length


@pytest.mark.parametrize("lag", [1, 6])
def test_dytc_prices_a_draft_feeding_the_context_its_cache_lacks(lag):
    """Two chains of one token: the first (below the root) feeds the `lag` context tokens the draft
    lacks, the second (below the first, whose path holds one token) only that token."""
    drafter = LaggingDrafter("draft0", q=0.9, lag=lag)
    latency = profile({"target": (1.0, 0.01), "draft0": (0.01, 0.002)})
    dytc = DyTCDrafter({"draft0": drafter}, {"greedy": {"draft0": identity_predictor(0.9)}}, latency, 8,
                       settings=DyTCSettings(k_max=1, max_depth=2, siblings=False))
    tree = dytc.propose(torch.tensor([1, 2, 3, 4, 5, 6, 7]), capacity_shape(8, 2), GREEDY, None)
    assert len(tree) == 2 and dytc.last_plan.expansions == ((-1, "draft0", 1), (0, "draft0", 1))
    forward = latency.models["draft0"]
    expected = forward.predict(lag, 0) + forward.predict(1, 0)
    assert dytc.last_plan.draft_seconds == pytest.approx(expected)


def test_a_draft_models_uncached_tokens_are_what_its_next_propose_feeds():
    draft = ModelDrafter(runtime_model(1, vocab=16, layers=1), 16)
    fed = []
    forward = draft.model.forward
    draft.model.forward = lambda tokens, *args, **kwargs: fed.append(len(tokens)) or forward(tokens, *args, **kwargs)
    context = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    assert draft.uncached_tokens(5) == 5  # a new sequence: the whole context
    draft.propose(context[:5], TreeShape.chain(1), GREEDY, None)
    draft.keep_prefix(5)
    assert fed == [5] and draft.uncached_tokens(5) == 0 and draft.uncached_tokens(8) == 3
    draft.propose(context, TreeShape.chain(1), GREEDY, None)
    assert fed[-1] == 3


def levels_for(decoder: SpeculativeDecoder, vocab: int) -> dict:
    return {"draft0": ModelDrafter(runtime_model(1, vocab=vocab, layers=2), vocab),
            "self0": SelfDrafter(decoder, SelfDraftView(skip_mlp=frozenset({1})), name="self0"),
            "ngram": NgramDrafter()}


def real_dytc(decoder: SpeculativeDecoder, vocab: int, mode: str, alternatives: bool = False) -> DyTCDrafter:
    predictors = {mode: {"draft0": identity_predictor(), "self0": identity_predictor(0.8), "ngram": match_predictor()}}
    latency = profile({"target": (1.0, 0.02), "draft0": (0.1, 0.01), "self0": (0.6, 0.02), "ngram": (0.01, 0.0)})
    return DyTCDrafter(levels_for(decoder, vocab), predictors, latency, vocab,
                       settings=DyTCSettings(alternatives=alternatives))


def test_dytc_open_mass_is_what_a_nodes_children_leave():
    step = DyTCDrafter({"self0": FixedDrafter("self0", q=0.5)}, {"greedy": {"self0": identity_predictor()}},
                       profile({"target": (1.0, 0.01), "self0": (0.01, 0.0)}), 8)._start_step(
        torch.tensor([1, 2]), capacity_shape(8, 4), GREEDY)[0]
    assert step.open_mass(-1) == 1.0
    step.add_node(-1, 0.6)  # node 0
    step.add_node(0, 0.3)  # node 1, below it
    step.add_node(-1, 0.25)  # node 2, beside node 0
    assert step.open_mass(-1) == pytest.approx(0.15) and step.open_mass(0) == pytest.approx(0.3)
    assert step.open_mass(1) == pytest.approx(0.3) and step.gain == pytest.approx(1.15)
    step.add_node(-1, 0.5)  # estimates summing past 1 leave nothing open, not less
    assert step.open_mass(-1) == 0.0


@pytest.mark.parametrize("alternatives", [False, True])
def test_dytc_drafts_another_levels_chain_beside_a_node_only_with_alternatives(alternatives):
    """The n-gram drafter copies 3, 9, 1, 2 after the recurring "1, 2" (P(accept) 0.375 a token); self0
    would draft 3, 4, 5 there (0.3 a token). With alternatives, self0's chain also goes below the
    root, beside the n-gram's, and its first token, which the tree has, is not drafted twice: 4
    hangs below the n-gram's 3, beside its 9."""
    ngram, model = NgramDrafter(), FixedDrafter("self0", q=0.3)
    dytc = DyTCDrafter({"ngram": ngram, "self0": model},
                       {"greedy": {"ngram": match_predictor(), "self0": identity_predictor(0.3)}},
                       profile({"target": (1.0, 0.001), "self0": (0.001, 0.0), "ngram": (0.001, 0.0)}), 10,
                       settings=DyTCSettings(k_max=3, max_depth=4, siblings=False, alternatives=alternatives))
    tree = dytc.propose(torch.tensor([1, 2, 3, 9, 1, 2]), capacity_shape(64, 4), GREEDY, None)
    tokens, parents, levels = tree.tokens.tolist(), tree.parents, tree.levels
    assert tokens[:4] == [3, 9, 1, 2] and levels[:4] == ["ngram"] * 4 and parents[:4] == [-1, 0, 1, 2]
    pairs = list(zip(parents, tokens))
    assert len(set(pairs)) == len(pairs)  # no token twice below one node
    beside = [node for node, parent in enumerate(parents) if parent == 0 and levels[node] == "self0"]
    if alternatives:
        assert [tokens[node] for node in beside] == [4]
        assert model.calls[0] == [1, 2, 3, 9, 1, 2]  # drafted below the root
    else:
        assert beside == [] and len(tree) == 4 and model.calls == []


@pytest.mark.parametrize("alternatives", [False, True])
def test_dytc_greedy_equals_autoregressive(alternatives):
    decoder = SpeculativeDecoder(runtime_model(0, vocab=16, layers=3))
    dytc = real_dytc(decoder, 16, "greedy", alternatives)
    for prompt in ([1, 2, 3, 1, 2], [5, 5, 5, 5], [7, 3, 9, 1, 4, 7, 3]):
        expected = decoder.generate(prompt, None, GenerationConfig(40)).tokens
        result = decoder.generate(prompt, dytc, GenerationConfig(40, shape=capacity_shape(64, 16)))
        assert result.tokens == expected
        assert result.stats.target_forwards < 40
        assert set(result.stats.drafted) <= {"draft0", "self0", "ngram"}


@pytest.mark.parametrize("alternatives", [False, True])
def test_dytc_sampling_is_lossless_end_to_end(alternatives):
    """Chi-square over the joint distribution of the first two sampled tokens (vocab of 8)."""
    target = runtime_model(0, vocab=8, layers=3)
    decoder = SpeculativeDecoder(target)
    sampling = SamplingParams(temperature=1.0, top_k=6)
    dytc = real_dytc(decoder, 8, "t1", alternatives)
    prompt = [1, 5, 2, 7, 3]
    assert sampled_pair_pvalue(decoder, target, dytc, capacity_shape(64, 16), sampling, prompt, 2500) > 1e-3
    stats = decoder.generate(prompt, dytc, GenerationConfig(24, sampling=sampling, shape=capacity_shape(64, 16))).stats
    assert sum(stats.drafted.values()) > 0 and len(stats.drafted) >= 2  # the trees really mix levels


def test_heuristic_schedule_grows_and_shrinks():
    decoder = SpeculativeDecoder(runtime_model(0, vocab=16, layers=3))
    inner = SelfDrafter(decoder, SelfDraftView())  # the full target: every draft is accepted
    drafter = HeuristicKDrafter(inner, k_start=3, k_max=9)
    drafter.observe(DraftTree.chain(torch.tensor([1, 2, 3])), [0, 1, 2])
    assert drafter.k == 5
    drafter.observe(DraftTree.chain(torch.tensor([1, 2, 3])), [0])
    assert drafter.k == 4
    expected = decoder.generate([1, 2, 3], None, GenerationConfig(30)).tokens
    drafter.reset()
    result = decoder.generate([1, 2, 3], drafter, GenerationConfig(30, shape=TreeShape.chain(32)))
    assert result.tokens == expected and result.stats.target_forwards < 10
    assert drafter.k == 9  # every draft was accepted, so k grew to its cap
