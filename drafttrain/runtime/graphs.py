"""CUDA graphs for the verify step: each size bucket's fixed-shape forward captured once, then replayed.

At batch size 1 a small target's forward is bound by kernel-launch overhead as much as by memory
bandwidth; replaying a captured graph launches the whole forward at once. `GraphedVerifier` keeps,
per bucket of `drafttrain.runtime.static`, input buffers, a captured graph and its output logits:
a step copies its padded inputs into the bucket's buffers and replays. A bucket is captured the
first time a step needs it (after warm-up runs on a side stream, as PyTorch requires), and the
seconds spent capturing are kept in `capture_seconds` so that benchmarks can report them apart.

CUDA only: building one on another device raises an error saying so. The graphs hold the cache's
addresses, so a verifier serves one cache (the decoder builds a new one when it reallocates).
"""

from __future__ import annotations

import time

import torch

from drafttrain.errors import DrafttrainError
from drafttrain.runtime.cache import KVCache
from drafttrain.runtime.model import Transformer
from drafttrain.runtime.static import (
    BUCKETS,
    StaticInputs,
    StaticVerifier,
    static_forward,
)

WARMUP_RUNS = 2


def require_cuda(what: str, device: torch.device) -> None:
    if device.type != "cuda" or not torch.cuda.is_available():
        raise DrafttrainError(f"{what} needs an NVIDIA GPU (CUDA); the model is on {device}. Use verify='eager' "
                              "(or 'static', the same fixed-shape forwards without graphs) on this machine")


class GraphedVerifier(StaticVerifier):
    name = "cuda-graphs"

    def __init__(self, model: Transformer, cache: KVCache, buckets: tuple[int, ...] = BUCKETS) -> None:
        require_cuda("CUDA-graph verification", model.device)
        super().__init__(model, cache, buckets)
        self.graphs: dict[int, tuple[StaticInputs, torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.capture_seconds = 0.0

    def run(self, inputs: StaticInputs) -> torch.Tensor:
        bucket = inputs.tokens.shape[0]
        if bucket not in self.graphs:
            self.graphs[bucket] = self._capture(inputs)
        buffers, graph, logits = self.graphs[bucket]
        buffers.copy_(inputs)
        graph.replay()
        return logits.clone()  # the next replay overwrites the captured output

    def _capture(self, inputs: StaticInputs) -> tuple[StaticInputs, torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up on a side stream, then capture the bucket's forward. The runs write only the step's
        own slots (past the committed length), which the real replay overwrites."""
        started = time.perf_counter()
        buffers = StaticInputs.empty(inputs.tokens.shape[0], self.cache.max_len, inputs.tokens.device)
        buffers.copy_(inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                static_forward(self.model, self.cache, buffers)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = static_forward(self.model, self.cache, buffers)
        torch.cuda.synchronize()
        self.capture_seconds += time.perf_counter() - started
        return buffers, graph, logits
