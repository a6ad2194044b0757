"""Fixed-shape verify forwards: what a CUDA graph can capture once and replay every step.

A verify step's size varies (the root plus however many nodes the scheduler drafted), and so do the
cache slots it writes. Here the step is padded to a size bucket (1, 2, 4, ..., 128 tokens), its slots
are a tensor, and its mask spans the whole cache, so that every tensor a bucket's forward touches has
the same shape and address at every step:

- padding rows hold token 0 at the root's position, write scratch slots after the tree (past the
  committed length, which the next step overwrites anyway) and see only the committed slots and
  themselves; no real row sees them, so the real rows' logits are unchanged;
- the mask is [bucket, max_len]: row i sees the committed slots 0 .. start - 1 and, among the new
  slots, what the tree mask allows.

`StaticVerifier` runs these forwards eagerly (any device: the CPU tests check it gives the eager
decoder's tokens); `drafttrain.runtime.graphs.GraphedVerifier` captures them as CUDA graphs.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import torch

from drafttrain.errors import DrafttrainError
from drafttrain.runtime.cache import KVCache
from drafttrain.runtime.model import Transformer

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def bucket_for(size: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    """The smallest bucket holding `size` tokens."""
    index = bisect_left(buckets, size)
    if index == len(buckets):
        raise DrafttrainError(f"a verify step of {size} tokens is larger than the largest bucket ({buckets[-1]}): "
                              "lower the tree capacity or add a bucket")
    return buckets[index]


@dataclass
class StaticInputs:
    """One bucket's inputs: tokens, positions and slots [bucket], mask [bucket, max_len] (bool)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def empty(cls, bucket: int, max_len: int, device: torch.device | str) -> StaticInputs:
        return cls(torch.zeros(bucket, dtype=torch.long, device=device),
                   torch.zeros(bucket, dtype=torch.long, device=device),
                   torch.zeros(bucket, dtype=torch.long, device=device),
                   torch.zeros(bucket, max_len, dtype=torch.bool, device=device))

    def copy_(self, other: StaticInputs) -> None:
        """Fill these (captured) buffers in place."""
        for name in ("tokens", "positions", "slots", "mask"):
            getattr(self, name).copy_(getattr(other, name), non_blocking=True)


def padded_inputs(tokens: torch.Tensor, positions: torch.Tensor, start: int, local_mask: torch.Tensor,
                  bucket: int, max_len: int) -> StaticInputs:
    """The verify step's n tokens at slots start .. start + n - 1, padded to `bucket`.

    local_mask: [n, n] bool, which new tokens each new token sees (the root's row: itself; a node's:
    the root, its ancestors and itself). Built on the host, then moved to the tokens' device.
    """
    size = tokens.shape[0]
    if start + bucket > max_len:
        raise DrafttrainError(f"the cache has {max_len} slots but a padded verify step needs {start + bucket}: "
                              "allocate the cache with room for the largest bucket")
    pad = bucket - size
    device = tokens.device
    padded_tokens = torch.cat((tokens, torch.zeros(pad, dtype=torch.long, device=device)))
    padded_positions = torch.cat((positions, positions[:1].expand(pad)))
    slots = torch.arange(start, start + bucket, device=device)
    mask = torch.zeros(bucket, max_len, dtype=torch.bool)
    mask[:, :start] = True
    mask[:size, start:start + size] = local_mask.cpu()
    padding = torch.arange(size, bucket)
    mask[padding, start + padding] = True
    return StaticInputs(padded_tokens, padded_positions, slots, mask.to(device))


def static_forward(model: Transformer, cache: KVCache, inputs: StaticInputs) -> torch.Tensor:
    """Logits [bucket, vocab] of a fixed-shape forward (the padding rows' logits are meaningless)."""
    return model(inputs.tokens, inputs.positions, cache, inputs.slots, inputs.mask)


class StaticVerifier:
    """Verify forwards padded to buckets, run eagerly: the computation `GraphedVerifier` captures."""

    name = "static"

    def __init__(self, model: Transformer, cache: KVCache, buckets: tuple[int, ...] = BUCKETS) -> None:
        self.model, self.cache, self.buckets = model, cache, buckets

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, start: int,
                 local_mask: torch.Tensor) -> torch.Tensor:
        """Logits [n, vocab] of the n real tokens."""
        size = tokens.shape[0]
        inputs = padded_inputs(tokens, positions, start, local_mask, bucket_for(size, self.buckets),
                               self.cache.max_len)
        return self.run(inputs)[:size]

    def run(self, inputs: StaticInputs) -> torch.Tensor:
        return static_forward(self.model, self.cache, inputs)
