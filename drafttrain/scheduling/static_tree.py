"""Staged speculative decoding's static tree as a drafter: a best-first draft-model tree, then an n-gram stage.

Each step grows a tree of `nodes` draft-model tokens chosen by cumulative draft probability (the
product of the draft's probabilities along a node's path), at most `max_depth` deep, then grafts
the n-gram drafter's continuation (up to `ngram_tokens` point masses) below the most probable
leaf: the draft is itself speculated by a cheaper stage.

Best-first, one draft forward per depth level. Repeatedly expanding the most probable frontier
node picks exactly the `nodes` most probable paths, since a child is never more probable than its
parent. The same set is found level by level: the nodes chosen so far at depth d are scored in
one tree forward, their top children join the candidates, and the `nodes` most probable
candidates stay chosen. A chosen node that deeper ones outrank later only cost a slot in its
level's forward.

Greedy: children are a node's top tokens in order. Sampling: the tree's shape is that greedy
best-first tree (a function of the context alone) and tokens are drawn into it, each node's
children without replacement from its q, recording for each child the residual row it was drawn
from (`pick_children`), so recursive rejection sampling stays lossless. The shape must not depend
on the drawn tokens' own probabilities: keeping a sampled child only when it turned out probable
would bias the verification. Sampled paths that the greedy tree already scored reuse its forward;
the others are scored level by level.
"""

from __future__ import annotations

import torch

from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters.base import DraftTree, TreeShape
from drafttrain.drafters.ngram import NgramDrafter
from drafttrain.drafters.transformer import ModelDrafter, pick_children
from drafttrain.errors import DrafttrainError
from drafttrain.scheduling.cascades import DRAFT_LEVEL, NGRAM_LEVEL, draft_distribution
from drafttrain.scheduling.tree import TreeBuilder

TokenPath = tuple[int, ...]  # the draft tokens from the root's child down to a node


class ScoredPaths:
    """Draft-model forwards of one step: the context, then tree nodes in scratch slots past it.

    The context is fed into the draft's trusted cache; node i fed afterwards sits at slot
    n_ctx + i, at position n_ctx - 1 + its depth, and sees the context and its own ancestors.
    `q_row(path)` is the draft's q after a scored path (after the context for the empty path).
    """

    def __init__(self, draft: ModelDrafter, context: torch.Tensor, sampling: SamplingParams) -> None:
        self.draft, self.sampling, self.device = draft, sampling, context.device
        self.n_ctx = len(context)
        self.root_q = draft_distribution(draft.score(context, 1), sampling)[0]
        self.rows: dict[TokenPath, tuple[int, torch.Tensor]] = {}  # path -> (fed index, q row after it)
        self.lineage: list[list[int]] = []  # per fed index: fed indices of its path, itself last

    def q_row(self, path: TokenPath) -> torch.Tensor | None:
        if not path:
            return self.root_q
        scored = self.rows.get(path)
        return None if scored is None else scored[1]

    def slot(self, path: TokenPath) -> int:
        """The cache slot of the path's last node, -1 if it was never fed."""
        scored = self.rows.get(path)
        return -1 if scored is None else self.n_ctx + scored[0]

    def score(self, paths: list[TokenPath]) -> torch.Tensor:
        """q rows after each path, [len(paths), vocab], from one forward of their last tokens; every
        path's parent path must have been scored (or be empty)."""
        first, n_ctx = len(self.lineage), self.n_ctx
        mask_rows, mask_cols = [], []
        for i, path in enumerate(paths):
            lineage = (self.lineage[self.rows[path[:-1]][0]] if len(path) > 1 else []) + [first + i]
            self.lineage.append(lineage)
            mask_rows += [i] * len(lineage)
            mask_cols += lineage
        mask = torch.zeros(len(paths), n_ctx + first + len(paths), dtype=torch.bool)
        mask[:, :n_ctx] = True
        mask[mask_rows, [n_ctx + col for col in mask_cols]] = True
        tokens = torch.tensor([path[-1] for path in paths], dtype=torch.long, device=self.device)
        positions = torch.tensor([n_ctx - 1 + len(path) for path in paths], dtype=torch.long, device=self.device)
        logits = self.draft.forward_at(tokens, positions, n_ctx + first, mask.to(self.device))
        q_rows = draft_distribution(logits, self.sampling)
        for i, path in enumerate(paths):
            self.rows[path] = (first + i, q_rows[i])
        return q_rows


class BestFirstTree:
    """The `budget` most probable draft paths, at most `max_depth` deep, grown one level per forward.

    Nodes are created as candidates win a place; `chosen` lists the winners, most probable first
    (parents before children: ties keep the earlier node first), and is the finished tree.
    """

    def __init__(self, scored: ScoredPaths, budget: int, max_depth: int) -> None:
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.cumulative: list[float] = []
        self.paths: list[TokenPath] = []
        self.q_rows: list[torch.Tensor] = []  # the parent's q row each node's token was taken from
        self.chosen: list[int] = []
        expanding, q_rows = [-1], scored.root_q[None]
        for depth in range(1, max_depth + 1):
            self._merge(expanding, q_rows, budget)
            expanding = [node for node in self.chosen if len(self.paths[node]) == depth]
            if depth == max_depth or not expanding:
                break
            q_rows = scored.score([self.paths[node] for node in expanding])

    def _merge(self, expanding: list[int], q_rows: torch.Tensor, budget: int) -> None:
        """Make the top children of `expanding` candidates and keep the `budget` most probable nodes."""
        top = min(budget, q_rows.shape[-1])
        probs, tokens = q_rows.topk(top, dim=-1)
        probs = probs.cpu()
        parent_cumulative = torch.tensor([1.0 if node < 0 else self.cumulative[node] for node in expanding])
        candidates = parent_cumulative[:, None] * probs
        candidates[probs <= 0] = -1.0  # a token the draft cannot produce is never drafted
        chosen = torch.tensor([self.cumulative[node] for node in self.chosen])
        ranked = torch.sort(torch.cat((chosen, candidates.flatten())), descending=True, stable=True)
        token_ids, cumulative = tokens.flatten().tolist(), ranked.values[:budget].tolist()
        winners = []
        for index, value in zip(ranked.indices[:budget].tolist(), cumulative):
            if value <= 0:
                break
            if index < len(self.chosen):
                winners.append(self.chosen[index])
                continue
            offset = index - len(self.chosen)
            row = offset // top
            winners.append(self._add(expanding[row], token_ids[offset], value, q_rows[row]))
        self.chosen = winners

    def _add(self, parent: int, token: int, cumulative: float, q_row: torch.Tensor) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.cumulative.append(cumulative)
        self.paths.append((self.paths[parent] if parent >= 0 else ()) + (token,))
        self.q_rows.append(q_row)
        return len(self.tokens) - 1

    def children(self) -> dict[int, list[int]]:
        """Chosen children of every chosen node (-1: the root), most probable first."""
        children: dict[int, list[int]] = {}
        for node in self.chosen:
            children.setdefault(self.parents[node], []).append(node)
        return children


class StaticTreeDrafter:
    """Drafter protocol: a best-first draft-model tree per step, with an n-gram stage below its best leaf."""

    name = "tree"

    def __init__(self, draft: ModelDrafter, ngram: NgramDrafter, nodes: int = 16, max_depth: int = 6,
                 ngram_tokens: int = 4) -> None:
        for setting, value in (("nodes", nodes), ("max_depth", max_depth)):
            if value <= 0:
                raise DrafttrainError(f"tree: {setting}={value} is invalid: it must be a positive integer")
        if ngram_tokens < 0:
            raise DrafttrainError(f"tree: ngram_tokens={ngram_tokens} is invalid: use 0 (no n-gram stage) or more")
        self.draft, self.ngram = draft, ngram
        self.nodes, self.max_depth, self.ngram_tokens = nodes, max_depth, ngram_tokens
        self.max_positions = draft.max_positions
        self._context_length = 0
        self._slots: list[int] = []  # per node of the last tree: its draft cache slot, -1 if never fed

    def capacity(self) -> TreeShape:
        """A shape at least as deep and as large as any tree this drafter returns."""
        depth = self.max_depth + self.ngram_tokens
        width = -(-(self.nodes + self.ngram_tokens) // depth)
        return TreeShape((width,) + (1,) * (depth - 1))

    def reset(self) -> None:
        self.draft.reset()
        self.ngram.reset()

    def propose(self, context: torch.Tensor, shape: TreeShape, sampling: SamplingParams,
                generator: torch.Generator | None) -> DraftTree:
        scored = ScoredPaths(self.draft, context, sampling)
        plan = BestFirstTree(scored, min(self.nodes, shape.num_nodes), min(self.max_depth, shape.depth))
        if sampling.greedy:
            builder, paths, cumulative = self._greedy_nodes(plan, context.device)
        else:
            builder, paths, cumulative = self._sampled_nodes(plan, scored, sampling, generator, context.device)
        self._context_length = len(context)
        self._slots = [scored.slot(path) for path in paths]
        self._add_ngram_stage(builder, context, paths, cumulative, shape)
        self._slots += [-1] * (len(builder) - len(self._slots))
        return builder.build(self.draft.target_vocab)

    def observe(self, tree: DraftTree, accepted: list[int]) -> None:
        """Keep the draft cache entries of the accepted path's nodes that were fed (a prefix of it)."""
        slots = []
        for node in accepted:
            if self._slots[node] < 0:
                break
            slots.append(self._slots[node])
        self.draft.keep_path(self._context_length, slots)

    # ---- the draft-model nodes -------------------------------------------------------------

    @staticmethod
    def _greedy_nodes(plan: BestFirstTree, device: torch.device) -> tuple[TreeBuilder, list[TokenPath], list[float]]:
        builder = TreeBuilder(device)
        index_of = {-1: -1}
        for node in plan.chosen:
            index_of[node] = builder.add(index_of[plan.parents[node]], plan.tokens[node], DRAFT_LEVEL,
                                         plan.q_rows[node])
        return (builder, [plan.paths[node] for node in plan.chosen],
                [plan.cumulative[node] for node in plan.chosen])

    @staticmethod
    def _sampled_nodes(plan: BestFirstTree, scored: ScoredPaths, sampling: SamplingParams,
                       generator: torch.Generator | None,
                       device: torch.device) -> tuple[TreeBuilder, list[TokenPath], list[float]]:
        """Tokens drawn into the plan's shape, level by level; the k-th drawn child of a node takes
        the subtree shape of the plan's k-th child."""
        builder = TreeBuilder(device)
        children = plan.children()
        paths: list[TokenPath] = []
        cumulative: list[float] = []
        level = [(-1, -1, (), 1.0)]  # (plan node, builder node, sampled path, its cumulative probability)
        while level:
            unscored = [path for _, _, path, _ in level if scored.q_row(path) is None]
            if unscored:
                scored.score(unscored)
            next_level = []
            for plan_node, node, path, path_probability in level:
                q_draft = scored.q_row(path)
                shape_children = children.get(plan_node, [])
                tokens, rows = pick_children(q_draft, q_draft, len(shape_children), sampling, generator)
                for plan_child, token, row in zip(shape_children, tokens, rows):
                    child = builder.add(node, token, DRAFT_LEVEL, row)
                    paths.append(path + (token,))
                    cumulative.append(path_probability * float(q_draft[token]))
                    if plan_child in children:
                        next_level.append((plan_child, child, paths[-1], cumulative[-1]))
            level = next_level
        return builder, paths, cumulative

    # ---- the n-gram stage ------------------------------------------------------------------

    def _add_ngram_stage(self, builder: TreeBuilder, context: torch.Tensor, paths: list[TokenPath],
                         cumulative: list[float], shape: TreeShape) -> None:
        """Graft the n-gram drafter's continuation below the most probable leaf."""
        if not self.ngram_tokens or not paths:
            return
        parents = set(builder.parents)
        leaf = max((node for node in range(len(paths)) if node not in parents), key=cumulative.__getitem__)
        count = min(self.ngram_tokens, shape.depth - len(paths[leaf]), shape.num_nodes - len(builder))
        if count <= 0:
            return
        leaf_path = torch.tensor(paths[leaf], dtype=torch.long, device=context.device)
        tail = self.ngram.propose(torch.cat((context, leaf_path)), TreeShape.chain(count), SamplingParams(), None)
        builder.graft(leaf, tail, NGRAM_LEVEL)
