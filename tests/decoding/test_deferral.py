"""Speculative cascades: the deferral rules' math by hand, alpha = 0 is exact speculative decoding,
a lenient rule keeps the draft, and sampling with a rule samples the blended distribution pi."""

from __future__ import annotations

import pytest
import torch
from conftest import runtime_model
from scipy.stats import chisquare

from drafttrain.decoding.deferral import (
    RULES,
    DeferralRule,
    blend,
    blend_tree_rows,
    chow_keeps_draft,
    diff_keeps_draft,
    first_children,
    opt_keeps_draft,
    token_accepted_set,
    total_variation,
)
from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams, logits_to_probs
from drafttrain.drafters import DraftTree, ModelDrafter, NgramDrafter, TreeShape
from drafttrain.errors import DrafttrainError

# row 0: the draft is confident and the target is not; row 1: the target is the confident one
P_TARGET = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.7, 0.1, 0.1]])
Q_DRAFT = torch.tensor([[0.8, 0.1, 0.05, 0.05], [0.4, 0.3, 0.2, 0.1]])


def _random_rows(seed: int, rows: int = 6, vocab: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    p_target = (torch.randn(rows, vocab, generator=gen) * 2.0).softmax(-1)
    q_draft = (torch.randn(rows, vocab, generator=gen) * 3.0).softmax(-1)
    q_draft[0] = torch.nn.functional.one_hot(torch.tensor(2), vocab).float()  # max q is exactly 1
    return p_target, q_draft


def test_row_rules_by_hand():
    # TV row 0: (0.3 + 0.2 + 0.15 + 0.05) / 2 = 0.35; row 1: (0.3 + 0.4 + 0.1 + 0) / 2 = 0.4
    torch.testing.assert_close(total_variation(P_TARGET, Q_DRAFT), torch.tensor([0.35, 0.4]))
    # chow: max q >= 1 - alpha, max q = 0.8 and 0.4
    assert chow_keeps_draft(Q_DRAFT, 0.25).tolist() == [True, False]
    assert chow_keeps_draft(Q_DRAFT, 0.1).tolist() == [False, False]
    # diff: max q >= max p - alpha; row 1 needs 0.4 >= 0.7 - alpha
    assert diff_keeps_draft(P_TARGET, Q_DRAFT, 0.25).tolist() == [True, False]
    assert diff_keeps_draft(P_TARGET, Q_DRAFT, 0.35).tolist() == [True, True]
    # opt: max q >= max p - alpha * TV; row 1 needs 0.4 >= 0.7 - 0.4 alpha, i.e. alpha >= 0.75
    assert opt_keeps_draft(P_TARGET, Q_DRAFT, 0.5).tolist() == [True, False]
    assert opt_keeps_draft(P_TARGET, Q_DRAFT, 0.8).tolist() == [True, True]
    pi = blend(P_TARGET, Q_DRAFT, DeferralRule("diff", 0.25))
    torch.testing.assert_close(pi, torch.stack((Q_DRAFT[0], P_TARGET[1])), rtol=0, atol=0)


def test_token_rule_by_hand():
    # alpha 0.5: A = {v : p(v) > 0.5 max p}: row 0 {0, 1} (p > 0.25), row 1 {1} (p > 0.35)
    accepted = token_accepted_set(P_TARGET, 0.5)
    assert accepted.tolist() == [[True, True, False, False], [False, True, False, False]]
    pi = blend(P_TARGET, Q_DRAFT, DeferralRule("token", 0.5))
    # row 0: q(A) = 0.9, pi = q on A + 0.1 p; row 1: q(A) = 0.3, pi = q on A + 0.7 p
    expected = torch.tensor([[0.8 + 0.1 * 0.5, 0.1 + 0.1 * 0.3, 0.1 * 0.2, 0.0],
                             [0.7 * 0.1, 0.3 + 0.7 * 0.7, 0.7 * 0.1, 0.7 * 0.1]])
    torch.testing.assert_close(pi, expected)
    # alpha 1: A is the support of p, so pi keeps q there
    torch.testing.assert_close(blend(P_TARGET, Q_DRAFT, DeferralRule("token", 1.0))[1], Q_DRAFT[1])


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
def test_pi_rows_are_distributions(rule, alpha):
    p_target, q_draft = _random_rows(0)
    pi = blend(p_target, q_draft, DeferralRule(rule, alpha))
    assert (pi >= 0).all()
    torch.testing.assert_close(pi.sum(-1), torch.ones(len(pi)))


@pytest.mark.parametrize("rule", RULES)
def test_alpha_zero_is_the_target_exactly(rule):
    """Even where the draft is a point mass (max q = 1) or more confident than the target."""
    p_target, q_draft = _random_rows(1)
    assert torch.equal(blend(p_target, q_draft, DeferralRule(rule, 0.0)), p_target)


def test_bad_rules_are_clear_errors():
    with pytest.raises(DrafttrainError, match="unknown: use one of chow, diff, opt, token"):
        DeferralRule("greedy", 0.1)
    with pytest.raises(DrafttrainError, match=r"alpha=1.5 is invalid: use a lenience in \[0, 1\]"):
        DeferralRule("chow", 1.5)


def test_tree_rows_blend_with_the_first_childs_q():
    # root children: nodes 0, 1; node 0's child: node 2. Rows with children: 0 (root) and 1 (node 0)
    tree = DraftTree(torch.tensor([0, 1, 2]), [-1, -1, 0], torch.stack([Q_DRAFT[0], Q_DRAFT[1], Q_DRAFT[1]]))
    assert first_children(tree) == ([0, 1], [0, 2])
    p_rows = torch.stack([P_TARGET[0], P_TARGET[1], P_TARGET[0], P_TARGET[1]])
    pi = blend_tree_rows(p_rows, tree, DeferralRule("chow", 0.25))
    torch.testing.assert_close(pi[0], Q_DRAFT[0])  # max q 0.8 >= 0.75: the draft is kept
    torch.testing.assert_close(pi[1], P_TARGET[1])  # node 0's q (max 0.4) defers
    torch.testing.assert_close(pi[2:], p_rows[2:])  # leaves keep p: the bonus token is the target's
    with pytest.raises(DrafttrainError, match="point-mass tokens only"):
        blend_tree_rows(p_rows, DraftTree(tree.tokens, tree.parents), DeferralRule("chow", 0.25))


@pytest.fixture(scope="module")
def models(one_thread):
    return runtime_model(0, vocab=8, layers=2), runtime_model(1, vocab=8, layers=2)


PROMPT = [1, 5, 2, 7, 3]
SAMPLING = SamplingParams(temperature=1.0)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("sampling,shape", [
    (SamplingParams(), TreeShape.chain(3)),
    (SamplingParams(), TreeShape((2, 1))),
    (SamplingParams(0.9, top_k=6), TreeShape.chain(3)),
    (SamplingParams(0.9), TreeShape((2, 2))),
])
def test_alpha_zero_decodes_exactly_like_speculative_decoding(models, rule, sampling, shape):
    target, draft = models
    decoder = SpeculativeDecoder(target)
    drafter = ModelDrafter(draft, 8)
    for seed in range(3):
        exact = GenerationConfig(30, sampling, shape, seed=seed)
        cascade = GenerationConfig(30, sampling, shape, seed=seed, deferral=DeferralRule(rule, 0.0))
        assert decoder.generate(PROMPT, drafter, cascade).tokens == decoder.generate(PROMPT, drafter, exact).tokens
    if sampling.greedy:
        plain = decoder.generate(PROMPT, None, GenerationConfig(30)).tokens
        assert decoder.generate(PROMPT, drafter, GenerationConfig(30, shape=shape)).tokens == plain


def test_lenient_chow_keeps_the_drafts_argmax(models):
    """Greedy Chow: a draft token is accepted exactly when max q >= 1 - alpha (then it is the
    draft's argmax) or when it equals the target's argmax."""
    target, draft = models
    decoder, drafter, alpha = SpeculativeDecoder(target), ModelDrafter(draft, 8), 0.6
    steps = []
    config = GenerationConfig(40, shape=TreeShape.chain(3), deferral=DeferralRule("chow", alpha))
    decoder.generate(PROMPT, drafter, config, trace=steps.append)
    kept_over_target = 0
    for step in steps:
        tokens = step.tree.tokens.tolist()
        for node in range(min(len(step.path) + 1, len(tokens))):  # the accepted nodes and the first rejected
            q_draft = step.tree.q_draft[node]
            keeps = float(q_draft.max()) >= 1 - alpha
            target_argmax = int(step.target_logits[node].argmax())
            assert (node < len(step.path)) == (keeps or tokens[node] == target_argmax)
            if keeps:
                assert tokens[node] == int(q_draft.argmax())
                kept_over_target += tokens[node] != target_argmax
    assert kept_over_target > 0  # the rule did override the target somewhere


def test_fully_lenient_chow_accepts_every_draft_token(models):
    target, draft = models
    decoder = SpeculativeDecoder(target)
    config = GenerationConfig(40, shape=TreeShape.chain(3), deferral=DeferralRule("chow", 1.0))
    stats = decoder.generate(PROMPT, ModelDrafter(draft, 8), config).stats
    assert stats.acceptance_rate == 1.0


def _chi_square_pvalue(counts: torch.Tensor, expected_dist: torch.Tensor) -> float:
    """Chi-square p-value of token counts against a distribution; bins expecting fewer than 5 are pooled."""
    expected = expected_dist * counts.sum()
    keep = expected >= 5
    observed = torch.cat((counts[keep], counts[~keep].sum()[None]))
    expected = torch.cat((expected[keep], expected[~keep].sum()[None]))
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    return float(chisquare(observed.numpy(), (expected * observed.sum() / expected.sum()).numpy()).pvalue)


@pytest.mark.parametrize("shape", [TreeShape.chain(1), TreeShape((2,))])
def test_sampling_with_a_rule_samples_pi(models, shape):
    """The first sampled token (vocab of 8) follows pi's root row, not the target's p."""
    target, draft = models
    decoder, drafter, rule = SpeculativeDecoder(target), ModelDrafter(draft, 8), DeferralRule("token", 0.5)
    with torch.inference_mode():
        p_target = logits_to_probs(target(torch.tensor(PROMPT), torch.arange(5), target.new_cache(), 0)[-1:], SAMPLING)
        q_draft = logits_to_probs(draft(torch.tensor(PROMPT), torch.arange(5), draft.new_cache(), 0)[-1:], SAMPLING)
    pi = blend(p_target, q_draft, rule)[0]
    counts = torch.zeros(8)
    for seed in range(1000):
        config = GenerationConfig(2, SAMPLING, shape, seed=seed, deferral=rule)
        counts[decoder.generate(PROMPT, drafter, config).tokens[0]] += 1
    assert _chi_square_pvalue(counts, pi) > 1e-3
    assert _chi_square_pvalue(counts, p_target[0]) < 1e-6  # the test can tell pi from p


def test_rules_need_a_draft_distribution(models):
    target, _ = models
    decoder = SpeculativeDecoder(target)
    rule = DeferralRule("opt", 0.2)
    with pytest.raises(DrafttrainError, match="needs the draft's distribution q"):
        decoder.generate([1, 2, 3, 1, 2, 3, 1, 2], NgramDrafter(), GenerationConfig(8, shape=TreeShape.chain(2),
                                                                                    deferral=rule))
    with pytest.raises(DrafttrainError, match="needs a drafter"):
        decoder.generate(PROMPT, None, GenerationConfig(8, deferral=rule))
