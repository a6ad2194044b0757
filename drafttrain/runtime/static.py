"""Fixed-shape verify forwards: what a CUDA graph can capture once and replay every step.

A verify step's size varies (the root plus however many nodes the scheduler drafted), and so do the
cache slots it writes; so do a draft level's steps (a catch-up feed, then one tree level at a time).
Here a step is padded to a size bucket (1, 2, 4, ..., 128 tokens), its slots are a tensor, and its
mask spans the whole cache, so that every tensor a bucket's forward touches has the same shape and
address at every step:

- padding rows hold token 0 at the first row's position, write scratch slots after the step's own
  (past the committed length, which later writes overwrite anyway) and see only their own slot; no
  real row sees them, so the real rows' logits are unchanged;
- the mask is [bucket, max_len]: row i sees what the step's mask allows (the committed slots, and
  its ancestors among the new ones).

`StaticForward` runs these forwards eagerly (any device: the CPU tests check it gives the eager
decoder's tokens); `drafttrain.runtime.graphs.GraphedForward` captures them as CUDA graphs.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass

import torch

from drafttrain.errors import DrafttrainError
from drafttrain.runtime.cache import KVCache, causal_mask
from drafttrain.runtime.model import Transformer
from drafttrain.runtime.views import SelfDraftView

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


def padded_inputs(tokens: torch.Tensor, positions: torch.Tensor, start: int, visible: torch.Tensor,
                  bucket: int, max_len: int) -> StaticInputs:
    """The step's n tokens at slots start .. start + n - 1, padded to `bucket`.

    visible: [n, start + n] bool, the slots each token may see (a verify step's tree mask, a draft
    level's causal or tree mask). Padding rows see only their own slot.
    """
    size = tokens.shape[0]
    if start + bucket > max_len:
        raise DrafttrainError(f"the cache has {max_len} slots but a padded step needs {start + bucket}: "
                              "allocate the cache with room for the largest bucket")
    pad = bucket - size
    device = tokens.device
    padded_tokens = torch.cat((tokens, torch.zeros(pad, dtype=torch.long, device=device)))
    padded_positions = torch.cat((positions, positions[:1].expand(pad)))
    slots = torch.arange(start, start + bucket, device=device)
    mask = torch.zeros(bucket, max_len, dtype=torch.bool, device=device)
    mask[:size, :start + size] = visible.to(device)
    padding = torch.arange(size, bucket, device=device)
    mask[padding, start + padding] = True
    return StaticInputs(padded_tokens, padded_positions, slots, mask)


def static_forward(model: Transformer, cache: KVCache, inputs: StaticInputs,
                   view: SelfDraftView | None = None) -> torch.Tensor:
    """Logits [bucket, vocab] of a fixed-shape forward (the padding rows' logits are meaningless)."""
    return model(inputs.tokens, inputs.positions, cache, inputs.slots, inputs.mask, view)


class StaticForward:
    """A model's forwards over one cache, padded to buckets and run eagerly: what `GraphedForward`
    captures. Serves the target's verify steps and a draft level's steps (with its view).

    compile: a `torch.compile` backend ("inductor", or "eager" to check tracing only) for the
    fixed-shape forward, or None. Shapes are fixed per bucket, so each bucket and view compiles once;
    the seconds of those first calls (compiling, and in `GraphedForward` capturing) add up in
    `setup_seconds`, which benchmarks report apart from decoding time."""

    name = "static"

    def __init__(self, model: Transformer, cache: KVCache, buckets: tuple[int, ...] = BUCKETS,
                 compile: str | None = None) -> None:
        self.model, self.cache, self.buckets = model, cache, buckets
        self.forward = static_forward if compile is None else compiled_static_forward(compile)
        self.setup_seconds = 0.0
        self._ready: set[tuple[int, SelfDraftView | None]] = set()

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, start: int, mask: torch.Tensor | None = None,
                 view: SelfDraftView | None = None) -> torch.Tensor:
        """Logits [n, vocab] of `tokens` [n] written at slots start .. start + n - 1; `mask` [n, start + n]
        as `Transformer.forward` takes it (None: causal). A step larger than the largest bucket (a
        prompt-sized catch-up) runs eagerly at its own size."""
        size = tokens.shape[0]
        visible = mask if mask is not None else causal_mask(start, size, "cpu")
        if size > self.buckets[-1]:
            return self.model(tokens, positions, self.cache, start, visible.to(tokens.device), view)
        inputs = padded_inputs(tokens, positions, start, visible, bucket_for(size, self.buckets), self.cache.max_len)
        return self.run(inputs, view)[:size]

    def run(self, inputs: StaticInputs, view: SelfDraftView | None = None) -> torch.Tensor:
        key = (inputs.tokens.shape[0], view)
        if key in self._ready or self.forward is static_forward:
            return self.forward(self.model, self.cache, inputs, view)
        started = time.perf_counter()
        logits = self.forward(self.model, self.cache, inputs, view)
        self.setup_seconds += time.perf_counter() - started
        self._ready.add(key)
        return logits


def compiled_static_forward(backend: str):
    """`static_forward` through `torch.compile` with fixed shapes; room for a compiled variant per
    bucket and view (dynamo's default limit of 8 would silently fall back to eager)."""
    import torch._dynamo

    config = torch._dynamo.config
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, limit):
            setattr(config, limit, max(getattr(config, limit), 64))
    return torch.compile(static_forward, backend=backend, dynamic=False)


def fixed_shape_forward(verify: str, model: Transformer, cache: KVCache, compile: str | None = None):
    """The fixed-shape forward over `cache` that `verify` asks for ("static" or "cuda-graphs"), compiled
    with the `compile` backend if given; None for "eager"."""
    if verify == "eager":
        return None
    from drafttrain.runtime.graphs import GraphedForward  # it builds on this module

    return (GraphedForward if verify == "cuda-graphs" else StaticForward)(model, cache, compile=compile)
