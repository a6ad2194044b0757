"""The drafter protocol and the draft tree it returns.

A drafter proposes a tree of draft tokens rooted at the last committed token (a chain is a tree
whose every node has one child), with the draft distribution each token was drawn from; after
verification it observes which path the target accepted. Model drafts, self-draft views of the
target and n-gram drafters all implement this two-method contract; schedulers drive them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from drafttrain.decoding.sampling import SamplingParams
from drafttrain.errors import DrafttrainError


@dataclass(frozen=True)
class TreeShape:
    """How many children each node at a given depth gets: (1,)*k is a chain of k tokens.

    `branching[d]` is the number of children of every node at depth d (the root is depth 0).
    """

    branching: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.branching or any(b <= 0 for b in self.branching):
            raise DrafttrainError(
                f"tree shape {self.branching!r} is invalid: give one or more positive branching "
                "factors, e.g. k=4 for a chain of 4 tokens or tree=3,2,1,1"
            )

    @classmethod
    def chain(cls, k: int) -> TreeShape:
        if k <= 0:
            raise DrafttrainError(f"draft length k={k} is invalid: k must be a positive integer")
        return cls((1,) * k)

    @property
    def depth(self) -> int:
        return len(self.branching)

    @property
    def num_nodes(self) -> int:
        total, width = 0, 1
        for b in self.branching:
            width *= b
            total += width
        return total

    @property
    def is_chain(self) -> bool:
        return all(b == 1 for b in self.branching)


@dataclass
class DraftTree:
    """Draft tokens for one decoding step, in topological order (a parent before its children).

    tokens:   [n] draft token ids.
    parents:  [n] index of each node's parent in this tree, -1 for children of the root (the
              last committed token).
    q_draft:  [n, vocab] the (processed) distribution each token was drawn from: the drafter's
              next-token distribution at the node's parent, with the tokens of earlier siblings
              removed and renormalized when siblings are drawn without replacement. None means
              every token was proposed deterministically (a point mass), as n-gram drafters do.
    match_lengths: [n] for n-gram drafts, the length of the context suffix each token's
              continuation was matched on (0 for a bigram-table guess); None for other drafters.
              Calibration uses it as the n-gram drafter's confidence.
    levels:   [n] the level that drafted each node, when a scheduler mixes levels in one tree;
              None when the tree's drafter drafted every node.
    Sampling stays lossless as long as each token really was drawn from its q_draft row; under
    greedy decoding q_draft is only informative (calibration reads the draft's confidence).
    """

    tokens: torch.Tensor
    parents: list[int]
    q_draft: torch.Tensor | None = None
    match_lengths: list[int] | None = None
    levels: list[str] | None = None

    def __post_init__(self) -> None:
        n = int(self.tokens.numel())
        if len(self.parents) != n:
            raise ValueError(f"DraftTree has {n} tokens but {len(self.parents)} parents")
        if any(not -1 <= parent < i for i, parent in enumerate(self.parents)):
            raise ValueError(f"DraftTree parents {self.parents} are not in topological order")
        if self.q_draft is not None and self.q_draft.shape[0] != n:
            raise ValueError(f"DraftTree q_draft has {self.q_draft.shape[0]} rows for {n} tokens")
        if self.match_lengths is not None and len(self.match_lengths) != n:
            raise ValueError(f"DraftTree has {len(self.match_lengths)} match lengths for {n} tokens")
        if self.levels is not None and len(self.levels) != n:
            raise ValueError(f"DraftTree has {len(self.levels)} levels for {n} tokens")

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> DraftTree:
        return cls(torch.empty(0, dtype=torch.long, device=device), [])

    @classmethod
    def chain(cls, tokens: torch.Tensor, q_draft: torch.Tensor | None = None) -> DraftTree:
        return cls(tokens, list(range(-1, int(tokens.numel()) - 1)), q_draft)

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def depths(self) -> list[int]:
        """Depth of each node: children of the root are at depth 1."""
        depth: list[int] = []
        for parent in self.parents:
            depth.append(1 if parent < 0 else depth[parent] + 1)
        return depth

    def children(self, node: int) -> list[int]:
        """Children of `node` (-1 for the root) in proposal order."""
        return [i for i, parent in enumerate(self.parents) if parent == node]

    @property
    def is_chain(self) -> bool:
        return all(parent == i - 1 for i, parent in enumerate(self.parents))


@runtime_checkable
class Drafter(Protocol):
    """Proposes draft tokens; observes how many of them the target accepted.

    `context` holds every committed token of the sequence, prompt included, the last of which
    (the root of the draft tree) the target has not yet processed. `accepted` is the path of
    accepted node indices from the root, in order (empty when the first draft token failed).
    """

    name: str

    def reset(self) -> None:
        """Forget any per-sequence state before a new prompt."""

    def propose(
        self, context: torch.Tensor, shape: TreeShape, sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> DraftTree:
        """Draft at most `shape` for the sequence `context` ([len] token ids)."""

    def observe(self, tree: DraftTree, accepted: list[int]) -> None:
        """Learn which path of `tree` was accepted."""
