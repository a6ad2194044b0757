"""Lossless verification of a draft tree against the target: pure functions on tensors.

Rows of the target's output: row 0 is the target's next-token distribution at the root (the
last committed token); row 1 + i is its distribution after draft node i. Verification walks the
tree from the root and returns the accepted path (node indices) and the token that follows it:
the correction on a rejection, or the free "bonus" token after a fully accepted path.

Greedy: accept the child equal to the target's argmax. Sampling: recursive rejection sampling
over siblings (SpecInfer / multi-draft speculative sampling): child x, drawn from q, is accepted
with probability min(1, p(x) / q(x)); after a rejection p becomes norm(max(0, p - q)); when no
child is accepted the next token is drawn from what is left of p. This reproduces the target's
distribution exactly whatever the drafts are, as long as each child was drawn from its q row.
"""

from __future__ import annotations

import torch

from drafttrain.drafters.base import DraftTree


def _children_by_node(tree: DraftTree) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for node, parent in enumerate(tree.parents):
        children.setdefault(parent, []).append(node)
    return children


def verify_greedy(tree: DraftTree, target_argmax: torch.Tensor) -> tuple[list[int], int]:
    """Accepted path and next token, given the target's argmax token at every row [1 + n]."""
    argmax = target_argmax.tolist()
    tokens = tree.tokens.tolist()
    children = _children_by_node(tree)
    path: list[int] = []
    node = -1
    while True:
        wanted = argmax[node + 1]
        match = next((c for c in children.get(node, ()) if tokens[c] == wanted), None)
        if match is None:
            return path, wanted
        path.append(match)
        node = match


def residual(p_target: torch.Tensor, q_draft: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): what is left to sample from after a draft token was rejected."""
    leftover = (p_target - q_draft).clamp_(min=0.0)
    total = leftover.sum()
    return leftover / total if total > 0 else p_target


def accept_prob(p_target: torch.Tensor, q_draft: torch.Tensor | None, token: int) -> float:
    """min(1, p(x) / q(x)) for draft token x; a missing q is a point mass on x."""
    q_token = 1.0 if q_draft is None else float(q_draft[token])
    if q_token <= 0:
        raise ValueError(f"draft token {token} has q_draft = 0: a drafter must propose tokens from its q")
    return min(1.0, float(p_target[token]) / q_token)


def verify_sampling(tree: DraftTree, p_target: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[list[int], int]:
    """Accepted path and next token by recursive rejection sampling; p_target is [1 + n, vocab]."""
    tokens = tree.tokens.tolist()
    children = _children_by_node(tree)
    path: list[int] = []
    node = -1
    while True:
        p_node = p_target[node + 1]
        accepted = None
        for child in children.get(node, ()):
            q_child = None if tree.q_draft is None else tree.q_draft[child]
            draw = torch.rand((), generator=generator, device=p_node.device)
            if float(draw) < accept_prob(p_node, q_child, tokens[child]):
                accepted = child
                break
            p_node = residual(p_node, _point_mass(p_node, tokens[child]) if q_child is None else q_child)
        if accepted is None:
            return path, int(torch.multinomial(p_node, 1, generator=generator))
        path.append(accepted)
        node = accepted


def _point_mass(like: torch.Tensor, token: int) -> torch.Tensor:
    mass = torch.zeros_like(like)
    mass[token] = 1.0
    return mass
