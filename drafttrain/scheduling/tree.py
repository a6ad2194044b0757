"""Assembling one draft tree from the drafts of several levels.

A scheduler asks level drafters for chains below chosen nodes and grafts them into one tree. Each
node keeps the distribution it was drawn from (a point mass for deterministic drafters such as the
n-gram drafter), so recursive rejection sampling over the finished tree stays lossless whatever
mix of levels drafted it: every child is an independent draft from its own q.
"""

from __future__ import annotations

import torch

from drafttrain.drafters.base import DraftTree


class TreeBuilder:
    """A growing draft tree: tokens, parents, the drafting level and q row of every node."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.levels: list[str] = []
        self.q_rows: list[torch.Tensor | None] = []
        self.depths: list[int] = []

    def __len__(self) -> int:
        return len(self.tokens)

    def depth(self, node: int) -> int:
        return 0 if node < 0 else self.depths[node]

    def path(self, node: int) -> list[int]:
        """Tokens from the root's first child down to `node` (empty for the root, -1)."""
        tokens = []
        while node >= 0:
            tokens.append(self.tokens[node])
            node = self.parents[node]
        return tokens[::-1]

    def add(self, parent: int, token: int, level: str, q_row: torch.Tensor | None) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.levels.append(level)
        self.q_rows.append(q_row)
        self.depths.append(self.depth(parent) + 1)
        return len(self.tokens) - 1

    def graft(self, parent: int, draft: DraftTree, level: str) -> list[int]:
        """Attach `draft` (rooted at `parent`) and return the new nodes' indices, in draft order."""
        nodes: list[int] = []
        for index, token in enumerate(draft.tokens.tolist()):
            below = parent if draft.parents[index] < 0 else nodes[draft.parents[index]]
            q_row = None if draft.q_draft is None else draft.q_draft[index]
            nodes.append(self.add(below, token, level, q_row))
        return nodes

    def children(self, node: int) -> list[int]:
        return [i for i, parent in enumerate(self.parents) if parent == node]

    def build(self, vocab_size: int) -> DraftTree:
        """The finished tree; point-mass rows fill in for deterministic nodes when others have q."""
        tokens = torch.tensor(self.tokens, dtype=torch.long, device=self.device)
        if all(row is None for row in self.q_rows):
            return DraftTree(tokens, list(self.parents), levels=list(self.levels))
        rows = []
        for token, row in zip(self.tokens, self.q_rows):
            if row is None:
                row = torch.zeros(vocab_size, device=self.device)
                row[token] = 1.0
            rows.append(row.to(self.device, torch.float32))
        return DraftTree(tokens, list(self.parents), torch.stack(rows), levels=list(self.levels))
