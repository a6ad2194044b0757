"""CUDA graphs for decode steps: each size bucket's fixed-shape forward captured once, then replayed.

At batch size 1 a small model's forward is bound by kernel-launch overhead as much as by memory
bandwidth; replaying a captured graph launches the whole forward at once. `GraphedForward` keeps,
per bucket of `drafttrain.runtime.static` and per self-draft view, input buffers, a captured graph
and its output logits: a step copies its padded inputs into the bucket's buffers and replays. The
target's verify steps, the self-draft levels' steps (same model and cache, another view) and a
draft model's steps (its own model and cache) each go through one. A bucket is captured the first
time a step needs it (after warm-up runs on a side stream, as PyTorch requires, which also compile
the forward when `compile` is set), and the seconds spent are kept in `setup_seconds` so that
benchmarks can report them apart.

CUDA only: building one on another device raises an error saying so. The graphs hold the cache's
addresses, so one serves one cache (a new cache gets a new one).
"""

from __future__ import annotations

import time

import torch

from drafttrain.errors import DrafttrainError
from drafttrain.runtime.cache import KVCache
from drafttrain.runtime.model import Transformer
from drafttrain.runtime.static import BUCKETS, StaticForward, StaticInputs
from drafttrain.runtime.views import SelfDraftView

WARMUP_RUNS = 2


def require_cuda(what: str, device: torch.device) -> None:
    if device.type != "cuda" or not torch.cuda.is_available():
        raise DrafttrainError(f"{what} needs an NVIDIA GPU (CUDA); the model is on {device}. Use verify='eager' "
                              "(or 'static', the same fixed-shape forwards without graphs) on this machine")


class GraphedForward(StaticForward):
    name = "cuda-graphs"

    def __init__(self, model: Transformer, cache: KVCache, buckets: tuple[int, ...] = BUCKETS,
                 compile: str | None = None) -> None:
        require_cuda("CUDA-graph decoding", model.device)
        super().__init__(model, cache, buckets, compile)
        self.graphs: dict[tuple[int, SelfDraftView | None], tuple[StaticInputs, torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def run(self, inputs: StaticInputs, view: SelfDraftView | None = None) -> torch.Tensor:
        key = (inputs.tokens.shape[0], view)
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs, view)
        buffers, graph, logits = self.graphs[key]
        buffers.copy_(inputs)
        graph.replay()
        return logits.clone()  # the next replay overwrites the captured output

    def _capture(self, inputs: StaticInputs, view: SelfDraftView | None) -> tuple[StaticInputs, torch.cuda.CUDAGraph,
                                                                                      torch.Tensor]:
        """Warm up on a side stream, then capture the bucket's forward. The runs write only the step's
        own slots (past the committed length), which the real replay overwrites."""
        started = time.perf_counter()
        buffers = StaticInputs.empty(inputs.tokens.shape[0], self.cache.max_len, inputs.tokens.device)
        buffers.copy_(inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.forward(self.model, self.cache, buffers, view)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.forward(self.model, self.cache, buffers, view)
        torch.cuda.synchronize()
        self.setup_seconds += time.perf_counter() - started
        return buffers, graph, logits
