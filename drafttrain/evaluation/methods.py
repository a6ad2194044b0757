"""The method table of `drafttrain eval`: each method turns prompt token ids into new token ids.

Our engine's methods (`ar`, `sd-*`) and the `transformers` peers (`hf`, `hf-assisted`,
`hf-pld`) share one interface so the harness can interleave them. Add a method by writing a
builder and registering it with `@method(name, needs=...)`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Protocol

import torch

from drafttrain.calibration.latency import TARGET_LEVEL
from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.decoding.stats import RunStats
from drafttrain.drafters import BigramTable, Drafter, ModelDrafter, NgramDrafter, SelfDrafter, TreeShape
from drafttrain.runtime import load_model, load_tokenizer
from drafttrain.runtime.loader import eos_token_ids
from drafttrain.runtime.views import parse_self_spec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class MethodOutput:
    tokens: list[int]
    seconds: float
    prefill_seconds: float | None  # known for our engine's methods only
    stats: RunStats | None


class Method(Protocol):
    def run(self, prompt_ids: list[int], seed: int) -> MethodOutput: ...


@dataclass(frozen=True)
class MethodSpec:
    build: Callable[["EvalContext"], Method]
    needs: tuple[str, ...]  # EvalConfig fields the method requires
    engine: bool  # runs in drafttrain's engine (lossless by construction)
    about: str


METHODS: dict[str, MethodSpec] = {}


def method(name: str, about: str, needs: tuple[str, ...] = (), engine: bool = True):
    def register(build: Callable[["EvalContext"], Method]):
        METHODS[name] = MethodSpec(build, needs, engine, about)
        return build
    return register


TUNING_CONTEXT = 256  # cached tokens the row kernels are timed after (`tune_row_kernels`), where they fit


class EvalContext:
    """What the methods share: the config, the target (ours and transformers'), the tokenizer, and
    the verified bundle when the run evaluates one (`--bundle`)."""

    def __init__(self, config, bundle=None) -> None:
        self.config = config
        self.bundle = bundle
        self.dtype = DTYPES[config.dtype]
        self.device = torch.device(config.device)
        self.tokenizer = load_tokenizer(config.target)
        self.eos = eos_token_ids(config.target, self.tokenizer)
        self.sampling = SamplingParams(config.temperature, config.top_k, config.top_p)

    @cached_property
    def target(self):
        """Our target, with the row kernels its latency was timed with, or those `tune_row_kernels`
        measured fastest here (every method shares it)."""
        model = self.with_row_kernels(TARGET_LEVEL, load_model(self.config.target, self.dtype, self.device))
        if self.latency is None and self.config.tune_row_kernels:
            from drafttrain.calibration.latency import model_forward_call, tune_row_kernels

            largest = self.config.tune_row_kernels
            context = max(0, min(TUNING_CONTEXT, model.args.max_position_embeddings - largest))
            tune_row_kernels(model, model_forward_call(model), range(1, largest + 1), context)
        return model

    @cached_property
    def latency(self):
        """The latency profile of --latency (or the bundle's), None without one."""
        from drafttrain.calibration.latency import LatencyProfile

        return LatencyProfile.load(self.config.latency) if self.config.latency else None

    def with_row_kernels(self, level: str, model):
        """`model` running the row kernels the latency profile timed `level` with (on the profiled
        hardware; `LatencyProfile.apply_row_kernels`)."""
        if self.latency is not None:
            self.latency.apply_row_kernels(level, model)
        return model

    @cached_property
    def decoder(self) -> SpeculativeDecoder:
        return SpeculativeDecoder(self.target, self.tokenizer, self.config.verify, self.config.compile)

    @cached_property
    def hf_target(self):
        return _hf_model(self.config.target, self.dtype, self.device)

    def load_draft(self) -> ModelDrafter:
        """The draft model of `draft`, stepping the way `verify` says."""
        from drafttrain.scheduling.cascades import DRAFT_LEVEL

        drafter = ModelDrafter.from_pretrained(self.config.draft, self.tokenizer, self.target.args.vocab_size,
                                               self.dtype, self.device, self.config.verify, self.config.compile)
        self.with_row_kernels(DRAFT_LEVEL, drafter.model)  # --draft is the cascade's first draft level
        return drafter

    def generation_config(self, shape: TreeShape | None) -> GenerationConfig:
        return GenerationConfig(self.config.max_new_tokens, self.sampling, shape, self.eos,
                                tuple(self.config.stop_strings))

    def model_shape(self, k: int) -> TreeShape:
        return TreeShape(tuple(self.config.tree)) if self.config.tree else TreeShape.chain(k)


class EngineMethod:
    def __init__(self, context: EvalContext, drafter: Drafter | None, shape: TreeShape | None) -> None:
        self.decoder, self.drafter = context.decoder, drafter
        self.config = context.generation_config(shape)

    def run(self, prompt_ids: list[int], seed: int) -> MethodOutput:
        started = time.perf_counter()
        result = self.decoder.generate(prompt_ids, self.drafter, _with_seed(self.config, seed))
        seconds = time.perf_counter() - started
        return MethodOutput(result.tokens, seconds, result.stats.prefill_seconds, result.stats)


def _with_seed(config: GenerationConfig, seed: int) -> GenerationConfig:
    return dataclasses.replace(config, seed=seed)


@method("ar", "our engine, plain autoregressive decoding (the baseline)")
def _ar(context: EvalContext) -> Method:
    return EngineMethod(context, None, None)


@method("sd-ngram", "our engine with the n-gram drafter (prompt lookup, bigram fallback)")
def _sd_ngram(context: EvalContext) -> Method:
    table = BigramTable.load(context.config.ngram_table) if context.config.ngram_table else None
    return EngineMethod(context, NgramDrafter(bigram=table), TreeShape.chain(context.config.k_ngram))


@method("sd-draft", "our engine with a separate draft model (--draft)", needs=("draft",))
def _sd_draft(context: EvalContext) -> Method:
    drafter = context.load_draft()
    return EngineMethod(context, drafter, context.model_shape(context.config.k_draft))


@method("sd-self", "our engine with a self-draft view of the target (--self-spec)", needs=("self_spec",))
def _sd_self(context: EvalContext) -> Method:
    drafter = SelfDrafter(context.decoder, parse_self_spec(context.config.self_spec))
    return EngineMethod(context, drafter, context.model_shape(context.config.k_self))


@method("hf-heuristic", "our engine with the draft model (--draft) and transformers' k schedule "
        "(k + 2 after a full accept, k - 1 otherwise)", needs=("draft",))
def _hf_heuristic(context: EvalContext) -> Method:
    from drafttrain.scheduling.heuristic import HeuristicKDrafter

    drafter = context.load_draft()
    return EngineMethod(context, HeuristicKDrafter(drafter, context.config.k_heuristic), TreeShape.chain(32))


def cascade_drafters(context: EvalContext) -> dict[str, Drafter]:
    """The levels of the cascade by name: the bundle's, or --draft, the views of --levels and the
    n-gram drafter."""
    from drafttrain.drafters.cascade import CascadeSpec, build_drafters, draft_models
    from drafttrain.search.study import read_levels

    config = context.config
    if context.bundle is not None:
        spec = context.bundle.cascade_spec()
    else:
        views = [level.spec for level in read_levels(config.levels)] if config.levels else []
        spec = CascadeSpec([config.draft] if config.draft else [], views, True, config.ngram_table)
    levels = build_drafters(spec, context.decoder, context.tokenizer, context.dtype, context.device)
    for name, model in draft_models(levels).items():
        context.with_row_kernels(name, model)
    return levels


def scheduler_spec(context: EvalContext):
    """The scheduler settings of --scheduler (the bundle's scheduler.json), else the defaults."""
    from drafttrain.bundle.scheduler import SchedulerSpec

    return SchedulerSpec.load(context.config.scheduler) if context.config.scheduler else SchedulerSpec()


def load_latency(context: EvalContext):
    """The latency profile of --latency, with a warning for each way its hardware differs from ours."""
    import sys

    from drafttrain.calibration.latency import LatencyProfile, hardware_fingerprint

    latency = context.latency
    for difference in latency.check_hardware(hardware_fingerprint(context.device, context.dtype)):
        print(f"warning: {context.config.latency} was measured on other hardware ({difference}); re-run "
              "`drafttrain run calibrate` here for accurate costs", file=sys.stderr)
    return latency


@method("dytc", "our engine with the Dynamic Tree Cascade over the draft (--draft), the self-draft levels "
        "(--levels) and the n-gram drafter, from calibrated predictors (--predictors, --latency)",
        needs=("predictors", "latency"))
def _dytc(context: EvalContext) -> Method:
    from drafttrain.bundle.scheduler import build_scheduler

    spec = dataclasses.replace(scheduler_spec(context), name="dytc")
    scheduler = build_scheduler(spec, cascade_drafters(context), context.config.predictors, load_latency(context),
                                context.target.args.vocab_size)
    return EngineMethod(context, scheduler.drafter, scheduler.shape)


class LevelMethods:
    """Every level of the cascade on its own, drafting chains of the scheduler's k for it: runs
    named sd-<level> (sd-draft0, sd-self0, ..., sd-ngram)."""

    def __init__(self, context: EvalContext) -> None:
        self.context, self.spec = context, scheduler_spec(context)

    def variants(self) -> dict[str, Method]:
        levels = cascade_drafters(self.context)
        return {f"sd-{name}": EngineMethod(self.context, drafter, TreeShape.chain(self.spec.k_for(name)))
                for name, drafter in levels.items()}


@method("levels", "our engine with each level of the cascade (--bundle, or --draft, --levels and the n-gram "
        "drafter) on its own, as runs sd-<level>, with the draft length of --scheduler's k (or a default)")
def _levels(context: EvalContext):
    return LevelMethods(context)


ORACLE_DEPTH = 16  # the oracle's chains are at least this deep, and as deep as DyTC's trees may grow


class OracleMethod:
    """The hindsight bound (`drafttrain.scheduling.oracle`): decodes with `ar`, then schedules that
    output over the cascade's levels with the latency profile's costs. Its seconds are the measured
    prefill plus the oracle schedule's predicted decode time, with the profile fitted to this very
    `ar` run (`fit_profile_to_run`): the per-step overhead the engine showed (measured minus
    predicted, per token) added to every step, or, where this run was faster than the profile
    predicts, every cost scaled down to it."""

    def __init__(self, context: EvalContext, max_depth: int = ORACLE_DEPTH) -> None:
        self.decoder, self.target = context.decoder, context.target
        self.config = context.generation_config(None)
        self.drafters, self.latency = cascade_drafters(context), load_latency(context)
        self.max_depth = max_depth

    def run(self, prompt_ids: list[int], seed: int) -> MethodOutput:
        from drafttrain.scheduling.oracle import (
            autoregressive_seconds,
            fit_profile_to_run,
            hindsight_runs,
            hindsight_schedule,
            profile_costs,
        )

        result = self.decoder.generate(prompt_ids, None, _with_seed(self.config, seed))
        tokens, stats = result.tokens, result.stats
        ids = torch.tensor(list(prompt_ids) + tokens, device=self.target.device)
        runs = hindsight_runs(self.drafters, self.target, ids, len(prompt_ids), self.max_depth)
        one_call = frozenset(name for name, drafter in self.drafters.items()
                             if getattr(drafter, "drafts_in_one_call", False))
        costs_at = profile_costs(self.latency, list(self.drafters), len(prompt_ids), self.max_depth, one_call)
        measured = stats.total_seconds - stats.prefill_seconds
        scale, overhead = fit_profile_to_run(autoregressive_seconds(costs_at, len(tokens), 0.0), measured,
                                             len(tokens))
        if scale != 1.0:
            costs_at = profile_costs(self.latency, list(self.drafters), len(prompt_ids), self.max_depth, one_call,
                                     scale)
        schedule = hindsight_schedule(runs, costs_at, overhead, self.max_depth, self.max_depth)
        bound = RunStats(new_tokens=len(tokens), target_forwards=schedule.steps, prefill_forwards=stats.prefill_forwards,
                         drafted=dict(schedule.drafted), accepted=dict(schedule.drafted),
                         prefill_seconds=stats.prefill_seconds, verify_seconds=schedule.seconds,
                         total_seconds=stats.prefill_seconds + schedule.seconds)
        return MethodOutput(tokens, bound.total_seconds, stats.prefill_seconds, bound)


@method("oracle", "a bound, not a decoder: the hindsight-best schedule of ar's greedy output over the "
        "cascade's levels (--draft, --levels, n-gram), priced by --latency", needs=("latency",))
def _oracle(context: EvalContext) -> Method:
    from drafttrain.errors import DrafttrainError

    if not context.sampling.greedy:
        raise DrafttrainError("the oracle is defined for greedy decoding only: drop `oracle` from methods "
                              "when temperature > 0")
    return OracleMethod(context, oracle_depth(context))


def oracle_depth(context: EvalContext) -> int:
    """How deep the oracle's chains may go: at least `ORACLE_DEPTH`, and as deep as DyTC's trees may
    grow under --scheduler (a shallower oracle would not bound DyTC)."""
    return max(ORACLE_DEPTH, scheduler_spec(context).dytc.max_depth)


class HFMethod:
    """`transformers` generate with the given extra arguments, matching greedy or sampling."""

    def __init__(self, context: EvalContext, **extra) -> None:
        self.model, self.device = context.hf_target, context.device
        sampling = context.sampling
        self.kwargs = dict(max_new_tokens=context.config.max_new_tokens, eos_token_id=list(context.eos),
                           pad_token_id=context.eos[0] if context.eos else None, **extra)
        if context.config.stop_strings:
            self.kwargs.update(stop_strings=list(context.config.stop_strings), tokenizer=context.tokenizer)
        if sampling.greedy:
            self.kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        else:
            self.kwargs.update(do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k,
                               top_p=sampling.top_p)

    @torch.inference_mode()
    def run(self, prompt_ids: list[int], seed: int) -> MethodOutput:
        input_ids = torch.tensor([prompt_ids], device=self.device)
        torch.manual_seed(seed)
        started = time.perf_counter()
        output = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **self.kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        return MethodOutput(output[0, len(prompt_ids):].tolist(), seconds, None, None)


def _hf_model(path, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=False)
    return model.to(device).eval()


@method("hf", "transformers generate on the target", engine=False)
def _hf(context: EvalContext) -> Method:
    return HFMethod(context)


@method("hf-assisted", "transformers assisted generation with --draft", needs=("draft",), engine=False)
def _hf_assisted(context: EvalContext) -> Method:
    return HFMethod(context, assistant_model=_hf_model(context.config.draft, context.dtype, context.device))


@method("hf-pld", "transformers prompt lookup decoding", engine=False)
def _hf_pld(context: EvalContext) -> Method:
    return HFMethod(context, prompt_lookup_num_tokens=context.config.pld_tokens)


# Methods registered by their own modules (imported last: they use `method` and `EngineMethod`).
from drafttrain.evaluation import baseline_methods as _baseline_methods  # noqa: E402,F401
from drafttrain.evaluation import lossy_methods as _lossy_methods  # noqa: E402,F401
