"""Sampling parameters and the pure functions that turn logits into the distribution sampled.

Greedy decoding is temperature 0. For sampling, the target and every draft are processed the same
way (temperature, then top-k, then top-p), and speculative sampling is lossless with respect to
the target's processed distribution, which is exactly what plain sampling would draw from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from drafttrain.errors import DrafttrainError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise DrafttrainError(f"temperature={self.temperature} is invalid: use 0 (greedy) or > 0")
        if self.top_k < 0:
            raise DrafttrainError(f"top_k={self.top_k} is invalid: use 0 (off) or a positive integer")
        if not 0.0 < self.top_p <= 1.0:
            raise DrafttrainError(f"top_p={self.top_p} is invalid: use a value in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def logits_to_probs(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """Processed next-token distribution(s) for sampling: [..., vocab] float32 probabilities."""
    scores = logits.float() / sampling.temperature
    if sampling.top_k > 0 and sampling.top_k < scores.shape[-1]:
        kth = torch.topk(scores, sampling.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop_sorted = (cumulative - sorted_scores.softmax(dim=-1)) >= sampling.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token drawn from a [vocab] distribution."""
    return int(torch.multinomial(probs, 1, generator=generator))
