"""Deferral rules of speculative cascades (Narasimhan et al. 2024): the lossy quality/cost dial.

A speculative cascade verifies the draft against a blend pi of the draft distribution q and the
target distribution p instead of against p itself; ordinary speculative sampling against pi then
samples pi exactly. A deferral rule with lenience alpha in [0, 1] decides, per position, how much
of the draft to keep:

- chow:  keep q when max q >= 1 - alpha (the draft is confident);
- diff:  keep q when max q >= max p - alpha (the draft is about as confident as the target);
- opt:   keep q when max q >= max p - alpha * TV(q, p) (the plug-in optimal rule);
- token: keep q on an accepted set A of tokens and move the rest of its mass to p:
         pi(v) = q(v) 1[v in A] + (sum of q outside A) p(v), with
         A = {v : p(v) > (1 - alpha) * max p}, the tokens the target rates within a factor
         (1 - alpha) of its own top token.

Otherwise pi = p. Lenience 0 is exact speculative decoding: every rule defers (pi = p bitwise).
For the token rule this holds by itself, which is why its inequality is strict: no token has
p(v) > max p, so A is empty; the non-strict set {v : p(v) >= (1 - alpha) * max p} would keep q on
the target's argmax at alpha = 0 and pi would differ from p. The literal Diff and OPT conditions
at alpha = 0 would still keep a draft at least as confident as the target (and Chow one whose
max q rounds to 1.0), so alpha = 0 is defined as "never keep the draft" for every rule. Alpha = 1
keeps the draft almost everywhere (Chow and Diff always, token on the whole support of p).

Every function works on rows: p_target and q_draft are [rows, vocab] probabilities of the same
positions. `blend_tree_rows` applies a rule to the target rows of a draft tree (engine use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from drafttrain.drafters.base import DraftTree
from drafttrain.errors import DrafttrainError

RULES = ("chow", "diff", "opt", "token")


@dataclass(frozen=True)
class DeferralRule:
    """Which rule blends q into p, and how lenient it is (alpha = 0: exact speculative decoding)."""

    name: str
    alpha: float

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise DrafttrainError(f"deferral rule {self.name!r} is unknown: use one of {', '.join(RULES)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise DrafttrainError(f"deferral alpha={self.alpha} is invalid: use a lenience in [0, 1] "
                                  "(0 is exact speculative decoding)")


def total_variation(p_target: torch.Tensor, q_draft: torch.Tensor) -> torch.Tensor:
    """TV(q, p) = 0.5 * sum |p - q| per row: [rows]."""
    return 0.5 * (p_target - q_draft).abs().sum(dim=-1)


def chow_keeps_draft(q_draft: torch.Tensor, alpha: float) -> torch.Tensor:
    """Chow: max q >= 1 - alpha, per row: [rows] bool."""
    return q_draft.max(dim=-1).values >= 1.0 - alpha


def diff_keeps_draft(p_target: torch.Tensor, q_draft: torch.Tensor, alpha: float) -> torch.Tensor:
    """Diff: max q >= max p - alpha, per row: [rows] bool."""
    return q_draft.max(dim=-1).values >= p_target.max(dim=-1).values - alpha


def opt_keeps_draft(p_target: torch.Tensor, q_draft: torch.Tensor, alpha: float) -> torch.Tensor:
    """OPT: max q >= max p - alpha * TV(q, p), per row: [rows] bool."""
    threshold = p_target.max(dim=-1).values - alpha * total_variation(p_target, q_draft)
    return q_draft.max(dim=-1).values >= threshold


def token_accepted_set(p_target: torch.Tensor, alpha: float) -> torch.Tensor:
    """Token rule's A = {v : p(v) > (1 - alpha) * max p}: [rows, vocab] bool, empty at alpha = 0."""
    return p_target > (1.0 - alpha) * p_target.max(dim=-1, keepdim=True).values


def token_blend(p_target: torch.Tensor, q_draft: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    """pi(v) = q(v) 1[v in A] + (mass of q outside A) p(v); with A empty this is p exactly.

    The mass outside A is taken as 1 - q(A) so that an empty A leaves p bitwise unchanged."""
    kept = q_draft * accepted
    outside = 1.0 - kept.sum(dim=-1, keepdim=True)
    return kept + outside * p_target


def keeps_draft(p_target: torch.Tensor, q_draft: torch.Tensor, rule: DeferralRule) -> torch.Tensor:
    """Whether a whole-row rule (chow, diff, opt) keeps q at each row: [rows] bool; never at alpha = 0."""
    if rule.alpha == 0.0:
        return torch.zeros(p_target.shape[0], dtype=torch.bool, device=p_target.device)
    if rule.name == "chow":
        return chow_keeps_draft(q_draft, rule.alpha)
    if rule.name == "diff":
        return diff_keeps_draft(p_target, q_draft, rule.alpha)
    if rule.name == "opt":
        return opt_keeps_draft(p_target, q_draft, rule.alpha)
    raise ValueError(f"rule {rule.name} keeps tokens, not rows: use blend()")


def blend(p_target: torch.Tensor, q_draft: torch.Tensor, rule: DeferralRule) -> torch.Tensor:
    """The distribution pi [rows, vocab] that speculative sampling verifies against under `rule`."""
    q_draft = q_draft.to(p_target.dtype)
    if rule.name == "token":
        return token_blend(p_target, q_draft, token_accepted_set(p_target, rule.alpha))
    return torch.where(keeps_draft(p_target, q_draft, rule)[:, None], q_draft, p_target)


def first_children(tree: DraftTree) -> tuple[list[int], list[int]]:
    """Target rows that have draft children (row 0: the root, row 1 + i: node i) and each one's
    first child, whose q_draft row is the draft's full distribution at that position."""
    first: dict[int, int] = {}
    for node, parent in enumerate(tree.parents):
        first.setdefault(parent + 1, node)
    return list(first), list(first.values())


def blend_tree_rows(p_target: torch.Tensor, tree: DraftTree, rule: DeferralRule) -> torch.Tensor:
    """pi for every target row of a verify forward [1 + n, vocab]: rows with draft children are
    blended with the draft distribution there; leaf rows keep p (the bonus token is the target's)."""
    if tree.q_draft is None:
        raise DrafttrainError(f"deferral rule {rule.name} needs the draft's distribution q, but this draft "
                              "tree has point-mass tokens only (an n-gram drafter); use a model or self-draft "
                              "drafter with speculative cascades")
    rows, children = first_children(tree)
    pi = p_target.clone()
    if rows:
        pi[rows] = blend(p_target[rows], tree.q_draft[children], rule)
    return pi
