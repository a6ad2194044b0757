"""A preallocated static KV cache with free rollback, and the attention masks that go with it.

The cache holds one sequence. `length` counts committed tokens; anything written past it (draft
tokens, a tree being verified) is scratch that the next write overwrites, so rejecting draft
tokens costs nothing: the length is simply not advanced. After a tree is verified, `keep_path`
moves the accepted nodes' entries into place.
"""

from __future__ import annotations

import numpy as np
import torch


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (num_layers, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [kv_heads, n, head_dim] at slots start .. start + n - 1."""
        n = k.shape[1]
        self.k[layer, :, start:start + n].copy_(k)
        self.v[layer, :, start:start + n].copy_(v)

    def read(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots 0 .. end - 1, [kv_heads, end, head_dim] views."""
        return self.k[layer, :, :end], self.v[layer, :, :end]

    def write_slots(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [kv_heads, n, head_dim] at the slots a tensor names (no host sync: CUDA-graph safe)."""
        self.k[layer].index_copy_(1, slots, k)
        self.v[layer].index_copy_(1, slots, v)

    def read_all(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of every slot, [kv_heads, max_len, head_dim] (fixed shapes, for static forwards)."""
        return self.k[layer], self.v[layer]

    def keep_path(self, start: int, path_slots: list[int]) -> None:
        """Move the entries at `path_slots` (in order) to start, start + 1, ... for all layers."""
        if path_slots == list(range(start, start + len(path_slots))):
            return
        src = torch.tensor(path_slots, device=self.k.device)
        dst = slice(start, start + len(path_slots))
        self.k[:, :, dst] = self.k[:, :, src]
        self.v[:, :, dst] = self.v[:, :, src]


def causal_mask(start: int, n: int, device: torch.device | str) -> torch.Tensor:
    """[n, start + n] bool: query i (at slot start + i) sees slots 0 .. start + i."""
    cols = torch.arange(start + n, device=device)
    rows = torch.arange(n, device=device)[:, None] + start
    return cols[None, :] <= rows


def tree_mask(start: int, parents: list[int], device: torch.device | str) -> torch.Tensor:
    """Ancestor-only mask for a root token at slot `start` followed by tree nodes.

    Query 0 is the root; query 1 + i is node i, whose parent is node parents[i] (-1: the root).
    Every query sees the committed slots 0 .. start - 1, the root, its ancestors and itself.
    Returns [1 + n, start + 1 + n] bool.
    """
    # Built in numpy: this runs every decoding step, and a torch op per node cost several times more.
    mask = np.zeros((len(parents) + 1, start + 1 + len(parents)), dtype=bool)
    mask[:, :start + 1] = True
    for node, parent in enumerate(parents):
        if parent >= 0:
            mask[node + 1] = mask[parent + 1]  # a parent precedes its children: its row is complete
        mask[node + 1, start + 1 + node] = True
    return torch.from_numpy(mask).to(device)


def tree_positions(start: int, depths: list[int], device: torch.device | str) -> torch.Tensor:
    """Positions of the root (start) and of each tree node (start + its depth)."""
    return torch.tensor([start] + [start + d for d in depths], dtype=torch.long, device=device)
