"""The hindsight oracle: the fastest schedule over the same levels, had every outcome been known.

Under greedy decoding the target's output is fixed, so for every level S and every position t of
that output we can know in hindsight how many tokens S would draft correctly from there,
`runs[S][t]`: for a model level (a draft model or a self-draft view) it is the run of
teacher-forced argmax agreements starting at t (from a correct prefix, a level's draft *is* its
argmax on the target's own text), and for the n-gram drafter the agreement of its proposal at t.

A schedule commits, in each step, a chain of correct draft tokens plus the target's bonus token.
The chain may be assembled from segments of different levels (as DyTC's trees are): a model
level drafting k tokens below depth d costs a forward over the d + 1 path tokens and k - 1 single
steps, the n-gram drafter one call; the step then pays the target's verify forward over the root
and the chain, plus the engine's per-step overhead. All costs come from the latency profile
(`drafttrain.calibration.latency`) at the step's context length. Dynamic programming over
positions finds the cheapest schedule (`hindsight_schedule`): an upper bound on the speedup any
scheduler over these levels can reach with these costs, against which methods are scored.

The oracle is defined for greedy decoding only: under sampling the accepted tokens depend on the
random draws of the schedule itself, so there is no single hindsight output to schedule against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters.base import TreeShape
from drafttrain.drafters.ngram import NgramDrafter
from drafttrain.runtime.model import Transformer
from drafttrain.runtime.views import SelfDraftView
from drafttrain.scheduling.scores import draft_seconds


def correct_runs(matches: np.ndarray) -> np.ndarray:
    """For each position t, how many consecutive entries of `matches` are True from t on."""
    runs = np.zeros(len(matches) + 1, dtype=np.int64)
    for t in range(len(matches) - 1, -1, -1):
        runs[t] = runs[t + 1] + 1 if matches[t] else 0
    return runs[:-1]


@torch.inference_mode()
def teacher_forced_matches(model: Transformer, ids: torch.Tensor, prompt_length: int, vocab_size: int,
                           view: SelfDraftView | None = None, vocab_subset: torch.Tensor | None = None) -> np.ndarray:
    """[new tokens] bool: does the model's argmax after the prefix (over `vocab_subset` when the draft
    has one) equal each generated token?"""
    cache = model.new_cache(len(ids))
    head = None if vocab_subset is None else model.lm_head.weight[vocab_subset]
    logits = model(ids, torch.arange(len(ids), device=ids.device), cache, 0, None, view,
                   logits_rows=slice(prompt_length - 1, len(ids) - 1), head=head)
    predicted = logits[:, :vocab_size].argmax(dim=-1) if vocab_subset is None else vocab_subset[logits.argmax(dim=-1)]
    return (predicted == ids[prompt_length:]).cpu().numpy()


def ngram_runs(drafter: NgramDrafter, ids: torch.Tensor, prompt_length: int, max_depth: int) -> np.ndarray:
    """[new tokens] how many tokens of the n-gram drafter's chain at each position are correct."""
    shape, sampling = TreeShape.chain(max_depth), SamplingParams()
    generated = ids[prompt_length:].tolist()
    runs = np.zeros(len(generated), dtype=np.int64)
    for t in range(len(generated)):
        proposed = drafter.propose(ids[:prompt_length + t], shape, sampling, None).tokens.tolist()
        truth = generated[t:t + len(proposed)]
        runs[t] = next((i for i, (a, b) in enumerate(zip(proposed, truth)) if a != b), min(len(proposed), len(truth)))
    return runs


@dataclass(frozen=True)
class StepCosts:
    """Predicted seconds at one context length: `feed[level][n]` a level's forward over n tokens
    (for the n-gram drafter: one call for n tokens), `verify[n]` the target over the root and n
    draft tokens; `one_call` names the levels priced as a single call."""

    feed: dict[str, np.ndarray]
    verify: np.ndarray
    one_call: frozenset[str] = frozenset({"ngram"})

    def draft_seconds(self, level: str, depth: int, k: int) -> float:
        return float(draft_seconds(self.feed[level], depth, k, level in self.one_call))


@dataclass
class OracleSchedule:
    seconds: float  # predicted decode seconds, per-step overhead included
    steps: int  # verify forwards
    tokens: int
    drafted: dict[str, int] = field(default_factory=dict)  # correct tokens each level drafted

    @property
    def tokens_per_step(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0


def cheapest_chains(runs: dict[str, np.ndarray], t: int, costs: StepCosts, max_depth: int,
                    k_max: int) -> tuple[np.ndarray, list[list[tuple[str, int]]]]:
    """reach[j]: the least drafting seconds for a correct chain of j tokens from position t, and
    the segments (level, k) that achieve it; inf where no level reaches that far."""
    reach = np.full(max_depth + 1, np.inf)
    reach[0] = 0.0
    plans: list[list[tuple[str, int]]] = [[] for _ in range(max_depth + 1)]
    for j in range(max_depth):
        if not np.isfinite(reach[j]):
            continue
        for level, level_runs in runs.items():
            position = t + j
            correct = int(level_runs[position]) if position < len(level_runs) else 0
            for k in range(1, min(correct, k_max, max_depth - j) + 1):
                seconds = reach[j] + costs.draft_seconds(level, j, k)
                if seconds < reach[j + k]:
                    reach[j + k] = seconds
                    plans[j + k] = plans[j] + [(level, k)]
    return reach, plans


def hindsight_schedule(runs: dict[str, np.ndarray], costs_at: Callable[[int], StepCosts], overhead: float,
                       max_depth: int = 16, k_max: int = 16) -> OracleSchedule:
    """The cheapest schedule committing all `len(runs[*])` tokens; `costs_at(t)` gives the costs of
    a step that starts at generated position t."""
    total = len(next(iter(runs.values()))) if runs else 0
    best = np.zeros(total + 1)
    choice: list[tuple[int, list[tuple[str, int]]]] = [(0, [])] * (total + 1)
    for t in range(total - 1, -1, -1):
        costs = costs_at(t)
        depth = min(max_depth, total - t - 1)
        reach, plans = cheapest_chains(runs, t, costs, depth, k_max)
        best[t] = np.inf
        for j in range(depth + 1):
            if np.isfinite(reach[j]):
                seconds = reach[j] + float(costs.verify[j]) + overhead + best[t + j + 1]
                if seconds < best[t]:
                    best[t], choice[t] = seconds, (j, plans[j])
    return _walk(best, choice, total)


def _walk(best: np.ndarray, choice: list, total: int) -> OracleSchedule:
    schedule = OracleSchedule(float(best[0]), 0, total)
    t = 0
    while t < total:
        chain, segments = choice[t]
        schedule.steps += 1
        for level, k in segments:
            schedule.drafted[level] = schedule.drafted.get(level, 0) + k
        t += chain + 1
    return schedule


def autoregressive_seconds(costs_at: Callable[[int], StepCosts], total: int, overhead: float) -> float:
    """Predicted decode seconds of plain decoding: one one-token target forward per token."""
    return float(sum(costs_at(t).verify[0] + overhead for t in range(total)))


def profile_costs(latency, levels: list[str], prompt_length: int, max_depth: int,
                  one_call: frozenset[str] = frozenset({"ngram"}), scale: float = 1.0) -> Callable[[int], StepCosts]:
    """`costs_at(t)` from a `LatencyProfile`, at context length prompt_length + t, every cost times
    `scale`; `one_call` names the levels that draft a chain of any length in one call
    (`drafts_in_one_call`)."""
    from drafttrain.calibration.latency import TARGET_LEVEL

    counts = np.arange(0, max(max_depth, 1) + 2)

    def costs_at(t: int) -> StepCosts:
        context_length = prompt_length + t
        feed = {level: scale * np.asarray(latency.models[level].predict(counts, context_length), dtype=np.float64)
                for level in levels}
        verify = scale * np.asarray(latency.models[TARGET_LEVEL].predict(counts + 1, context_length),
                                    dtype=np.float64)
        return StepCosts(feed, verify, one_call)

    return costs_at


def fit_profile_to_run(predicted_seconds: float, measured_seconds: float, tokens: int) -> tuple[float, float]:
    """(scale, per-step overhead) that make the profile's plain decoding take the measured time.

    Slower than predicted: the profile's costs stand and the difference is the engine's per-step
    overhead (Python, sampling), spread over the tokens. Faster than predicted (the profile was taken
    on a busier or slower machine): every cost is scaled down by measured / predicted and there is no
    overhead, so that the bound is not priced at the slower machine's costs."""
    if predicted_seconds <= 0 or tokens <= 0:
        return 1.0, 0.0
    if measured_seconds >= predicted_seconds:
        return 1.0, (measured_seconds - predicted_seconds) / tokens
    return measured_seconds / predicted_seconds, 0.0


def hindsight_runs(drafters: dict, target: Transformer, ids: torch.Tensor, prompt_length: int,
                   max_depth: int) -> dict[str, np.ndarray]:
    """`runs[level][t]` for the levels of a cascade (`drafttrain.drafters.cascade.build_drafters`):
    model drafts and self-draft views teacher-forced, the n-gram drafter run at every position."""
    from drafttrain.drafters.transformer import ModelDrafter, SelfDrafter

    vocab = target.args.vocab_size
    runs: dict[str, np.ndarray] = {}
    for name, drafter in drafters.items():
        if isinstance(drafter, NgramDrafter):
            runs[name] = ngram_runs(drafter, ids, prompt_length, max_depth)
        elif isinstance(drafter, ModelDrafter):
            runs[name] = correct_runs(teacher_forced_matches(drafter.model, ids, prompt_length, vocab,
                                                             vocab_subset=drafter.vocab_subset))
        elif isinstance(drafter, SelfDrafter):
            runs[name] = correct_runs(teacher_forced_matches(target, ids, prompt_length, vocab, drafter.view))
        else:
            raise TypeError(f"the oracle cannot replay level {name} ({type(drafter).__name__})")
    return runs


def expected_rate(segments: list[tuple[str, int]], accept: dict[str, float], costs: StepCosts,
                  overhead: float = 0.0) -> float:
    """Expected committed tokens per second of one step that drafts a chain of `segments`
    (level, k) whose tokens are accepted independently with probability `accept[level]`."""
    reach, gain, depth, seconds = 1.0, 0.0, 0, 0.0
    for level, k in segments:
        seconds += costs.draft_seconds(level, depth, k)
        for _ in range(k):
            reach *= accept[level]
            gain += reach
        depth += k
    return (1.0 + gain) / (seconds + float(costs.verify[depth]) + overhead)


def best_expected_chain(accept: dict[str, float], costs: StepCosts, max_depth: int,
                        overhead: float = 0.0) -> tuple[float, list[tuple[str, int]]]:
    """The oracle when acceptance is known in distribution: the chain (any mix of levels, any
    segment lengths, depth <= max_depth) with the highest expected rate, by exhaustive search."""
    best: tuple[float, list[tuple[str, int]]] = (expected_rate([], accept, costs, overhead), [])

    def extend(segments: list[tuple[str, int]], depth: int) -> None:
        nonlocal best
        for level in accept:
            for k in range(1, max_depth - depth + 1):
                chain = segments + [(level, k)]
                rate = expected_rate(chain, accept, costs, overhead)
                if rate > best[0]:
                    best = (rate, chain)
                extend(chain, depth + k)

    extend([], 0)
    return best
