"""What a search trial scores: the expected speedup of a self-draft view, cheaply or by measurement.

- `expected_speedup(a, k, c)`: the expected walltime improvement factor of speculative decoding
  with acceptance rate a, draft length k and draft/target cost ratio c (CS Drafting's EWIF):
  (1 - a^(k+1)) / ((1 - a)(k c + 1)).
- `CheapObjective`: teacher-forced acceptance of the view against the full target (1 - mean TV)
  and greedy agreement on calibration rows (each calibration prompt followed by the target's own
  greedy continuation), and the measured cost ratio c (median time of a 1-token decode forward
  with the view over without). Single mode returns the expected speedup; multi mode returns
  (acceptance, cost ratio), to maximize and minimize.
- `MeasuredObjective`: speculative decoding with `SelfDrafter(view)` (a chain of k) against plain
  autoregressive decoding on the calibration prompts, interleaved in the same call; returns the
  tokens/s ratio and reports it after each prompt so that a pruner can stop a bad trial early.

Each trial stores user attributes: acceptance, agreement, cost_ratio, cost_fraction, speedup and
spec (the view's JSON). With `max_cost_fraction`, a view whose static cost estimate is above the
bound is pruned before any work.
"""

from __future__ import annotations

import os
import socket

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
import torch

from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.drafters.base import TreeShape
from drafttrain.drafters.transformer import SelfDrafter
from drafttrain.errors import DrafttrainError
from drafttrain.runtime.model import Transformer
from drafttrain.runtime.views import SelfDraftView
from drafttrain.search.space import SearchSpace, cost_fraction
from drafttrain.training.losses import expected_acceptance, greedy_agreement


def expected_speedup(accept_rate: float, k: int, cost_ratio: float) -> float:
    """(1 - a^(k+1)) / ((1 - a)(k c + 1)); the numerator over (1 - a) is 1 + a + ... + a^k,
    which is also its value at a = 1 (k + 1 tokens per step)."""
    if not 0.0 <= accept_rate <= 1.0:
        raise ValueError(f"accept_rate must be in [0, 1], got {accept_rate}")
    if k < 0:
        raise ValueError(f"draft length k must be >= 0, got {k}")
    if cost_ratio < 0:
        raise ValueError(f"cost_ratio must be >= 0, got {cost_ratio}")
    if accept_rate > 1.0 - 1e-9:
        tokens_per_step = float(k + 1)
    else:
        tokens_per_step = (1.0 - accept_rate ** (k + 1)) / (1.0 - accept_rate)
    return tokens_per_step / (k * cost_ratio + 1.0)


@dataclass(frozen=True)
class Evaluation:
    """One view's scores."""

    acceptance: float  # expected acceptance of one draft token (teacher-forced or measured)
    cost_ratio: float  # time of a draft forward over a target forward
    speedup: float  # expected (cheap) or measured (measured) speedup over autoregressive
    agreement: float | None = None  # greedy agreement with the target (cheap objective)

    def attrs(self) -> dict:
        return {"acceptance": self.acceptance, "cost_ratio": self.cost_ratio, "speedup": self.speedup,
                "agreement": self.agreement}


class SearchObjective:
    """Shared trial logic: sample a view, apply the cost bound, evaluate, record user attributes."""

    multi = False

    def __init__(self, model: Transformer, space: SearchSpace, k: int,
                 max_cost_fraction: float | None = None) -> None:
        if space.num_layers != model.args.num_layers:
            raise DrafttrainError(f"{space!r} does not match the target's {model.args.num_layers} layers")
        self.model, self.space, self.k, self.max_cost_fraction = model, space, k, max_cost_fraction

    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize"] if self.multi else ["maximize"]

    def evaluate(self, view: SelfDraftView, trial: optuna.Trial | None = None) -> Evaluation:
        raise NotImplementedError

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        view = self.space.suggest(trial)
        fraction = cost_fraction(view, self.model.args)
        trial.set_user_attr("spec", view.to_json())
        trial.set_user_attr("cost_fraction", fraction)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process ran it
        if self.max_cost_fraction is not None and fraction > self.max_cost_fraction:
            reason = f"static cost fraction {fraction:.3f} > max_cost_fraction {self.max_cost_fraction}"
            trial.set_user_attr("pruned_reason", reason)
            raise optuna.TrialPruned(reason)
        result = self.evaluate(view, trial)
        for key, value in result.attrs().items():
            trial.set_user_attr(key, value)
        if self.multi:
            return result.acceptance, result.cost_ratio
        return result.speedup


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CheapObjective(SearchObjective):
    """Teacher-forced acceptance + a timed 1-token forward: no decoding, a few forwards per trial."""

    def __init__(self, model: Transformer, rows: Sequence[Sequence[int] | torch.Tensor], space: SearchSpace,
                 k: int = 3, multi: bool = False, max_cost_fraction: float | None = None,
                 repeats: int = 5, inner: int = 3, warmup: int = 2) -> None:
        super().__init__(model, space, k, max_cost_fraction)
        self.multi = multi
        self.repeats, self.inner, self.warmup = repeats, inner, warmup
        window = min(model.args.max_position_embeddings, model.args.sliding_window or 1 << 62)
        device = model.device
        self.rows = [torch.as_tensor(r, dtype=torch.long, device=device).flatten()[:window] for r in rows]
        self.rows = [r for r in self.rows if len(r) >= 2]
        if not self.rows:
            raise DrafttrainError("no calibration rows of 2 or more tokens: give longer calibration prompts")
        self.cache = model.new_cache(max(len(r) for r in self.rows) + 1)
        self.teacher = [self._logits(r, None) for r in self.rows]
        # the timing context: the longest row's keys/values stay in the cache for the 1-token forwards
        self._context = max(self.rows, key=len)

    @classmethod
    def from_decoding(cls, model: Transformer, prompt_ids: Sequence[Sequence[int]], space: SearchSpace,
                      max_new_tokens: int, calibration_tokens: int, eos: tuple[int, ...] = (),
                      **kwargs) -> CheapObjective:
        """Calibration rows: each prompt followed by the target's greedy continuation, up to
        `calibration_tokens` tokens in all."""
        decoder = SpeculativeDecoder(model)
        window = min(model.args.max_position_embeddings, model.args.sliding_window or 1 << 62)
        rows: list[list[int]] = []
        budget = calibration_tokens
        for ids in prompt_ids:
            if budget < 2:
                break
            ids = list(ids)[-max(1, window - max_new_tokens):]
            new = min(max_new_tokens, window - len(ids))
            if new > 0:
                ids += decoder.generate(ids, None, GenerationConfig(new, eos_token_ids=eos)).tokens
            rows.append(ids[:budget])
            budget -= len(rows[-1])
        return cls(model, rows, space, **kwargs)

    @torch.inference_mode()
    def _logits(self, row: torch.Tensor, view: SelfDraftView | None) -> torch.Tensor:
        return self.model(row, torch.arange(len(row), device=row.device), self.cache, 0, view=view)

    @torch.inference_mode()
    def acceptance(self, view: SelfDraftView) -> tuple[float, float]:
        """(expected acceptance 1 - mean TV, greedy agreement) over every calibration row."""
        total = accept = agree = 0.0
        for row, teacher in zip(self.rows, self.teacher):
            student = self._logits(row, view)
            accept += float(expected_acceptance(student, teacher)) * len(row)
            agree += float(greedy_agreement(student, teacher)) * len(row)
            total += len(row)
        return accept / total, agree / total

    @torch.inference_mode()
    def cost_ratio(self, view: SelfDraftView) -> float:
        """Median time of a 1-token decode forward with the view over without, interleaved."""
        model, context = self.model, self._context
        start = len(context) - 1
        model(context[:-1], torch.arange(start, device=context.device), self.cache, 0, logits_rows=None)
        token, position = context[-1:], torch.tensor([start], device=context.device)

        def timed(v: SelfDraftView | None) -> float:
            _sync(model.device)
            began = time.perf_counter()
            for _ in range(self.inner):
                model(token, position, self.cache, start, view=v)
            _sync(model.device)
            return time.perf_counter() - began

        for _ in range(self.warmup):
            timed(None), timed(view)
        full, drafted = [], []
        for repeat in range(self.repeats):  # alternate which goes first, so drift hits both alike
            if repeat % 2:
                drafted.append(timed(view))
                full.append(timed(None))
            else:
                full.append(timed(None))
                drafted.append(timed(view))
        return statistics.median(drafted) / max(statistics.median(full), 1e-12)

    def evaluate(self, view: SelfDraftView, trial: optuna.Trial | None = None) -> Evaluation:
        view.check_layers(self.model.args.num_layers)
        acceptance, agreement = self.acceptance(view)
        acceptance = min(max(acceptance, 0.0), 1.0)
        cost = self.cost_ratio(view)
        return Evaluation(acceptance, cost, expected_speedup(acceptance, self.k, cost), agreement)


class MeasuredObjective(SearchObjective):
    """Tokens/s of speculative decoding with the view over autoregressive decoding, same call."""

    def __init__(self, model: Transformer, prompt_ids: Sequence[Sequence[int]], space: SearchSpace,
                 k: int = 3, max_new_tokens: int = 64, eos: tuple[int, ...] = (), tokenizer=None,
                 max_cost_fraction: float | None = None, warmup: bool = True) -> None:
        super().__init__(model, space, k, max_cost_fraction)
        if not prompt_ids:
            raise DrafttrainError("the measured objective needs at least one calibration prompt")
        self.prompt_ids = [list(ids) for ids in prompt_ids]
        self.decoder = SpeculativeDecoder(model, tokenizer)
        for ids in self.prompt_ids:
            self.decoder.check_length(len(ids), max_new_tokens)
        self.config = GenerationConfig(max_new_tokens, shape=TreeShape.chain(k), eos_token_ids=eos)
        if warmup:
            self.decoder.generate(self.prompt_ids[0], None, self.config)

    def evaluate(self, view: SelfDraftView, trial: optuna.Trial | None = None) -> Evaluation:
        drafter = SelfDrafter(self.decoder, view)
        ar_tokens = ar_seconds = sd_tokens = sd_seconds = 0.0
        drafted = accepted = 0
        ar_step_seconds = ar_steps = draft_seconds = 0.0
        for step, ids in enumerate(self.prompt_ids):
            order = ("ar", "sd") if step % 2 == 0 else ("sd", "ar")
            for name in order:
                if name == "ar":
                    stats = self.decoder.generate(ids, None, self.config).stats
                    ar_tokens += stats.new_tokens
                    ar_seconds += stats.total_seconds
                    ar_step_seconds += stats.verify_seconds
                    ar_steps += stats.target_forwards
                else:
                    stats = self.decoder.generate(ids, drafter, self.config).stats
                    sd_tokens += stats.new_tokens
                    sd_seconds += stats.total_seconds
                    drafted += sum(stats.drafted.values())
                    accepted += sum(stats.accepted.values())
                    draft_seconds += stats.draft_seconds
            speedup = (sd_tokens / max(sd_seconds, 1e-12)) / max(ar_tokens / max(ar_seconds, 1e-12), 1e-12)
            if trial is not None and not self.multi:
                trial.report(speedup, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after {step + 1} prompt(s) at speedup {speedup:.3f}")
        acceptance = accepted / drafted if drafted else 0.0
        # a draft token costs about one view forward; a target step is one 1-token forward
        cost = (draft_seconds / max(drafted, 1)) / max(ar_step_seconds / max(ar_steps, 1), 1e-12)
        return Evaluation(acceptance, cost, speedup)
