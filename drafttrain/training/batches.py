"""Step-indexed training batches: the batch of global step s is a pure function of (seed, s).

That is what makes resume exact: after a restart the data loader starts at the restored step and
yields exactly the batches the interrupted run would have seen, on every rank of a DDP run.
"""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset


def batch_rows(num_rows: int, batch_size: int, seed: int, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Row indices of this rank's share of the global batch at `step` (epochs reshuffle)."""
    global_batch = batch_size * world
    per_epoch = max(num_rows // global_batch, 1)
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    start = offset * global_batch + rank * batch_size
    return order[start:start + batch_size] if num_rows >= global_batch else order[torch.arange(start, start + batch_size) % num_rows]


class StepBatches(IterableDataset):
    """Yields (step, rows) for steps start .. end - 1; rows are `batch_rows` of the packed tensor."""

    def __init__(self, packed: torch.Tensor, batch_size: int, seed: int, start: int, end: int,
                 rank: int = 0, world: int = 1) -> None:
        self.packed, self.batch_size, self.seed = packed, batch_size, seed
        self.start, self.end, self.rank, self.world = start, end, rank, world

    def __len__(self) -> int:
        return max(self.end - self.start, 0)

    def __iter__(self):
        for step in range(self.start, self.end):
            rows = batch_rows(len(self.packed), self.batch_size, self.seed, step, self.rank, self.world)
            yield step, self.packed[rows]
