"""Verification math: greedy walks, and the sampling distribution of recursive rejection."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from drafttrain.decoding.verify import accept_prob, residual, verify_greedy, verify_sampling
from drafttrain.drafters.base import DraftTree

VOCAB = 8


def test_greedy_walks_the_matching_branch():
    # root children: 5 (node 0), 3 (node 1); node 1's children: 2 (node 2), 7 (node 3)
    tree = DraftTree(torch.tensor([5, 3, 2, 7]), [-1, -1, 1, 1])
    # argmax rows: root -> 3, node0 -> x, node1 -> 7, node2 -> x, node3 -> 4 (bonus)
    argmax = torch.tensor([3, 0, 7, 0, 4])
    assert verify_greedy(tree, argmax) == ([1, 3], 4)


def test_greedy_rejects_at_the_root():
    tree = DraftTree.chain(torch.tensor([1, 2, 3]))
    assert verify_greedy(tree, torch.tensor([6, 2, 3, 4])) == ([], 6)


def test_greedy_empty_tree_is_one_target_token():
    assert verify_greedy(DraftTree.empty(), torch.tensor([5])) == ([], 5)


def test_residual_and_accept_prob():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.1, 0.6, 0.2, 0.1])
    assert accept_prob(p, q, 1) == pytest.approx(0.5)
    assert accept_prob(p, q, 0) == 1.0
    assert accept_prob(p, None, 2) == pytest.approx(0.2)  # point-mass draft
    torch.testing.assert_close(residual(p, q), torch.tensor([1.0, 0.0, 0.0, 0.0]))


def _first_token(tree: DraftTree, path: list[int], next_token: int) -> int:
    return int(tree.tokens[path[0]]) if path else next_token


def _random_dist(generator: torch.Generator, sharpness: float) -> torch.Tensor:
    return (torch.randn(VOCAB, generator=generator) * sharpness).softmax(-1)


def _draw_tree(q_rows: list[torch.Tensor], parents: list[int], gen: torch.Generator, without_replacement: bool):
    """Draw each node from its parent's q (siblings optionally without replacement)."""
    tokens, rows, used = [], [], {}
    for parent, q in zip(parents, q_rows):
        dist = q.clone()
        if without_replacement:
            for token in used.get(parent, []):
                dist[token] = 0.0
            dist /= dist.sum()
        token = int(torch.multinomial(dist, 1, generator=gen))
        used.setdefault(parent, []).append(token)
        tokens.append(token)
        rows.append(dist)
    return DraftTree(torch.tensor(tokens), parents, torch.stack(rows))


@pytest.mark.parametrize("parents,without_replacement", [
    ([-1, 0, 1], False),          # chain of 3
    ([-1, -1, -1], False),        # three i.i.d. siblings
    ([-1, -1, -1], True),         # three siblings without replacement
    ([-1, -1, 0, 1], True),       # a small tree
])
@pytest.mark.parametrize("sharpness", [0.5, 3.0])
def test_sampling_matches_target_distribution(parents, without_replacement, sharpness):
    """Chi-square: the first emitted token is distributed exactly as the target's p."""
    gen = torch.Generator().manual_seed(1234)
    p_rows = torch.stack([_random_dist(gen, 2.0) for _ in range(len(parents) + 1)])
    q_by_parent = {node: _random_dist(gen, sharpness) for node in range(-1, len(parents))}
    draws = 6000
    counts = torch.zeros(VOCAB)
    for _ in range(draws):
        tree = _draw_tree([q_by_parent[parent] for parent in parents], parents, gen, without_replacement)
        path, next_token = verify_sampling(tree, p_rows, gen)
        counts[_first_token(tree, path, next_token)] += 1
    expected = p_rows[0] * draws
    keep = expected >= 5
    observed = torch.cat((counts[keep], counts[~keep].sum()[None]))
    expected = torch.cat((expected[keep], expected[~keep].sum()[None]))
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    assert chisquare(observed.numpy(), expected.numpy() * observed.sum().item() / expected.sum().item()).pvalue > 1e-3


def test_sampling_point_mass_drafts_are_lossless():
    """n-gram style drafts (q_draft=None) on distinct siblings keep the target's distribution."""
    gen = torch.Generator().manual_seed(7)
    p_rows = torch.stack([_random_dist(gen, 2.0) for _ in range(3)])
    tree = DraftTree(torch.tensor([int(p_rows[0].argmax()), 0]), [-1, -1])
    draws = 6000
    counts = torch.zeros(VOCAB)
    for _ in range(draws):
        path, next_token = verify_sampling(tree, p_rows, gen)
        counts[_first_token(tree, path, next_token)] += 1
    expected = p_rows[0] * draws
    keep = expected >= 5
    assert chisquare(counts[keep].numpy(), (expected[keep] * counts[keep].sum() / expected[keep].sum()).numpy()).pvalue > 1e-3


def test_sampling_detects_a_broken_verifier():
    """The chi-square check has power: accepting every draft token is caught."""
    gen = torch.Generator().manual_seed(3)
    p = _random_dist(gen, 2.0)
    q = _random_dist(gen, 3.0)
    draws = 6000
    samples = torch.multinomial(q, draws, replacement=True, generator=gen)  # always-accept verifier
    counts = torch.bincount(samples, minlength=VOCAB).float()
    keep = p * draws >= 5
    assert chisquare(counts[keep].numpy(), (p[keep] * counts[keep].sum() / p[keep].sum()).numpy()).pvalue < 1e-6
