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
        self._child_by_token: dict[tuple[int, int], int] = {}  # (parent, token) -> its first child with that token

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
        node = len(self.tokens) - 1
        self._child_by_token.setdefault((parent, token), node)
        return node

    def child_with_token(self, parent: int, token: int) -> int | None:
        """The first child of `parent` (-1: the root) holding `token`, or None."""
        return self._child_by_token.get((parent, token))

    def graft(self, parent: int, draft: DraftTree, level: str, skip: int = 0) -> list[int]:
        """Attach `draft` (rooted at `parent`) and return the new nodes' indices, in draft order.
        With `skip`, the draft's first `skip` nodes are left out and those below them hang from
        `parent` instead (a chain whose first tokens the tree already holds, ending at `parent`)."""
        nodes: list[int] = []
        q_rows = [None] * len(draft) if draft.q_draft is None else draft.q_draft.unbind(0)
        tokens = draft.tokens.tolist()
        for index in range(skip, len(draft)):
            above = draft.parents[index]
            below = parent if above < skip else nodes[above - skip]
            nodes.append(self.add(below, tokens[index], level, q_rows[index]))
        return nodes

    def shared_prefix(self, node: int, tokens: list[int]) -> tuple[int, int]:
        """How far a chain of `tokens` below `node` runs along nodes the tree already has: (the last
        such node, or `node` itself; how many of the tokens it matched)."""
        matched = 0
        for token in tokens:
            child = self.child_with_token(node, token)
            if child is None:
                break
            node, matched = child, matched + 1
        return node, matched

    def children(self, node: int) -> list[int]:
        return [i for i, parent in enumerate(self.parents) if parent == node]

    def build(self, vocab_size: int, with_q: bool = True) -> DraftTree:
        """The finished tree; point-mass rows fill in for deterministic nodes when others have q.
        `with_q=False` leaves q_draft out (greedy verification never reads it)."""
        tokens = torch.tensor(self.tokens, dtype=torch.long, device=self.device)
        if not with_q or all(row is None for row in self.q_rows):
            return DraftTree(tokens, list(self.parents), levels=list(self.levels))
        return DraftTree(tokens, list(self.parents), self._q_matrix(vocab_size), levels=list(self.levels))

    def _q_matrix(self, vocab_size: int) -> torch.Tensor:
        """[n, vocab] float32: every node's q row, a point mass on its token where it has none (one
        stack over a shared zero row, then the ones written in a single indexed store)."""
        zero = torch.zeros(vocab_size, device=self.device)
        rows = [zero if row is None else row for row in self.q_rows]
        matrix = torch.stack(rows).to(self.device, torch.float32)
        points = [node for node, row in enumerate(self.q_rows) if row is None]
        if points:
            matrix[points, [self.tokens[node] for node in points]] = 1.0
        return matrix
