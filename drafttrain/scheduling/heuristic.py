"""transformers' assisted-generation schedule as a baseline: k grows by 2 after a fully accepted
draft and shrinks by 1 otherwise (`num_assistant_tokens_schedule="heuristic"`)."""

from __future__ import annotations

import torch

from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters.base import Drafter, DraftTree, TreeShape


class HeuristicKDrafter:
    """Wraps a drafter; asks it for chains whose length follows the heuristic schedule."""

    def __init__(self, drafter: Drafter, k_start: int = 5, k_max: int = 32) -> None:
        self.drafter, self.k_start, self.k_max = drafter, k_start, k_max
        self.name = drafter.name
        self.k = k_start

    def reset(self) -> None:
        self.k = self.k_start
        self.drafter.reset()

    def propose(self, context: torch.Tensor, shape: TreeShape, sampling: SamplingParams,
                generator: torch.Generator | None) -> DraftTree:
        return self.drafter.propose(context, TreeShape.chain(min(self.k, shape.depth)), sampling, generator)

    def observe(self, tree: DraftTree, accepted: list[int]) -> None:
        self.drafter.observe(tree, accepted)
        if len(tree):
            self.k = min(self.k + 2, self.k_max) if len(accepted) == len(tree) else max(self.k - 1, 1)
