"""Quality of each method's output against the target, measured after timing (never inside it).

Lossless methods must reproduce the target; lossy ones (speccascade-*) trade quality for speed,
so `drafttrain eval` scores every method's outputs the same way:

- exact_match_rate: the fraction of prompts whose tokens equal the target's greedy output
  (`ar`'s outputs, or an AR greedy decode after timing when `ar` did not run); greedy only;
- matching_prefix: the mean over prompts of the fraction of tokens before the first divergence
  from that reference (over the longer of the two outputs); greedy only;
- target_loglik: the mean log-likelihood per generated token under the target's raw
  distribution (temperature 1, no top-k/top-p), teacher-forced over prompt + output: one target
  forward per distinct output, so methods whose output equals another's cost nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from drafttrain.runtime.cache import KVCache
from drafttrain.runtime.model import Transformer

if TYPE_CHECKING:
    from drafttrain.evaluation.harness import MethodRuns
    from drafttrain.evaluation.methods import EvalContext


@dataclass
class MethodQuality:
    exact_match_rate: float | None  # None: no greedy reference (sampling)
    matching_prefix: float | None
    target_loglik: float | None  # None: no tokens were generated


def matching_prefix_length(tokens: list[int], reference: list[int]) -> int:
    """How many leading tokens agree before the first divergence."""
    length = 0
    for token, wanted in zip(tokens, reference):
        if token != wanted:
            break
        length += 1
    return length


def prefix_fraction(tokens: list[int], reference: list[int]) -> float:
    """Matching prefix over the longer output: 1.0 only for identical outputs."""
    longest = max(len(tokens), len(reference))
    return 1.0 if longest == 0 else matching_prefix_length(tokens, reference) / longest


class TargetScorer:
    """Teacher-forced log-likelihood of outputs under the target, memoized per (prompt, output)."""

    def __init__(self, target: Transformer) -> None:
        self.target = target
        self.cache: KVCache | None = None
        self.scores: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}

    def loglik(self, prompt_ids: list[int], new_tokens: list[int]) -> float:
        """Sum of log p_target(token | everything before it) over `new_tokens`."""
        key = (tuple(prompt_ids), tuple(new_tokens))
        if key not in self.scores:
            self.scores[key] = self._forward(prompt_ids, new_tokens) if new_tokens else 0.0
        return self.scores[key]

    @torch.inference_mode()
    def _forward(self, prompt_ids: list[int], new_tokens: list[int]) -> float:
        device = self.target.device
        sequence = torch.tensor(list(prompt_ids) + list(new_tokens), dtype=torch.long, device=device)
        if self.cache is None or self.cache.max_len < len(sequence):
            self.cache = self.target.new_cache(len(sequence))
        self.cache.reset()
        rows = slice(len(prompt_ids) - 1, len(sequence) - 1)  # the rows that predict the new tokens
        logits = self.target(sequence, torch.arange(len(sequence), device=device), self.cache, 0, logits_rows=rows)
        logprobs = logits.float().log_softmax(dim=-1)
        wanted = torch.tensor(new_tokens, dtype=torch.long, device=device)[:, None]
        return float(logprobs.gather(-1, wanted).sum())


def measure(outputs: list[list[int]], prompt_ids: list[list[int]], scorer: TargetScorer,
            references: list[list[int]] | None) -> MethodQuality:
    """One method's quality over prompts, given the greedy reference outputs (None: sampling)."""
    total_tokens = sum(len(tokens) for tokens in outputs)
    loglik = sum(scorer.loglik(prompt, tokens) for prompt, tokens in zip(prompt_ids, outputs))
    exact = prefix = None
    if references is not None:
        exact = sum(tokens == ref for tokens, ref in zip(outputs, references)) / len(outputs)
        prefix = sum(prefix_fraction(tokens, ref) for tokens, ref in zip(outputs, references)) / len(outputs)
    return MethodQuality(exact, prefix, loglik / total_tokens if total_tokens else None)


def greedy_references(context: EvalContext, prompt_ids: list[list[int]],
                      runs: dict[str, MethodRuns]) -> list[list[int]] | None:
    """The target's greedy outputs: `ar`'s when it ran, else decoded now; None when sampling."""
    if not context.sampling.greedy:
        return None
    if "ar" in runs:
        return [output.tokens for output in runs["ar"].outputs]
    config = context.generation_config(None)
    return [context.decoder.generate(ids, None, config).tokens for ids in prompt_ids]


def score_runs(context: EvalContext, prompt_ids: list[list[int]], runs: dict[str, MethodRuns]) -> None:
    """Set `quality` on every method's runs."""
    scorer = TargetScorer(context.target)
    references = greedy_references(context, prompt_ids, runs)
    for method_runs in runs.values():
        outputs = [output.tokens for output in method_runs.outputs]
        method_runs.quality = measure(outputs, prompt_ids, scorer, references)
