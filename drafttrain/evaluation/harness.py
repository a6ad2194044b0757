"""Run the chosen methods on every prompt, interleaved per prompt so machine drift hits all alike.

A method may stand for several measured runs (a `MethodFamily`: speccascade-* runs once per alpha,
named `speccascade-chow@0.1`, ...); each run is interleaved, rotated and warmed up like any other
method. After timing, every run's outputs are scored against the target (`quality.score_runs`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from rich.progress import Progress

from drafttrain.decoding.deferral import DeferralRule
from drafttrain.errors import DrafttrainError
from drafttrain.evaluation.config import BUNDLED, EvalConfig
from drafttrain.evaluation.methods import METHODS, EvalContext, Method, MethodOutput
from drafttrain.evaluation.prompts import Prompt, load_prompts
from drafttrain.evaluation.quality import MethodQuality, score_runs


@dataclass
class MethodRuns:
    """Every measured run of one method, one per prompt, in prompt order."""

    outputs: list[MethodOutput] = field(default_factory=list)
    deferral: DeferralRule | None = None  # a lossy run's rule (speccascade-*): it may differ from ar
    quality: MethodQuality | None = None  # set after timing by `quality.score_runs`


@runtime_checkable
class MethodFamily(Protocol):
    """What a method builder may return instead of a `Method`: several named runs (one per alpha)."""

    def variants(self) -> dict[str, Method]: ...


def expand_method(name: str, built: Method | MethodFamily) -> dict[str, Method]:
    """The measured runs a built method stands for, by run name."""
    return built.variants() if isinstance(built, MethodFamily) else {name: built}


def open_bundle(config: EvalConfig):
    """(the verified bundle of --bundle, the config with the bundle's parts filled in); (None, config)
    without one. Its latency warning is printed where the latency profile is used.

    An explicit --scheduler replaces the bundle's (settings to try against the bundle's calibrated
    levels); the calibrated parts themselves (draft, levels, predictors, latency, n-gram table) come
    only from the bundle, so setting one of them as well is an error rather than silently ignored."""
    if config.bundle is None:
        return None, config
    clashing = [name for name in BUNDLED if name != "scheduler" and getattr(config, name) is not None]
    if clashing:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in clashing)
        raise DrafttrainError(f"{flags} and --bundle {config.bundle} both name calibrated inputs: the bundle "
                              "supplies them (verified against --target); drop one of the two")
    from drafttrain.bundle import load_bundle
    from drafttrain.bundle import manifest as layout
    from drafttrain.evaluation.methods import DTYPES

    bundle = load_bundle(config.bundle, config.target, config.device, DTYPES[config.dtype], warn=False)
    parts = {"draft": bundle.drafts[0] if bundle.drafts else None, "levels": bundle.path(layout.LEVELS),
             "predictors": bundle.path(layout.PREDICTORS), "latency": bundle.path(layout.LATENCY),
             "ngram_table": bundle.ngram_table, "scheduler": config.scheduler or bundle.path(layout.SCHEDULER)}
    return bundle, dataclasses.replace(config, **parts)


def run_methods(config: EvalConfig, progress: bool = True) -> tuple[EvalContext, list[Prompt], dict[str, MethodRuns]]:
    config.require_inputs()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    bundle, config = open_bundle(config)
    context = EvalContext(config, bundle)
    prompts = load_prompts(config.prompts, config.num_prompts, context.tokenizer)
    prompt_ids = [p.token_ids(context.tokenizer) for p in prompts]
    for ids in prompt_ids:
        context.decoder.check_length(len(ids), config.max_new_tokens)
    methods: dict[str, Method] = {}
    for name in config.methods:
        for run_name, runner in expand_method(name, METHODS[name].build(context)).items():
            if run_name in methods:
                raise DrafttrainError(f"method run {run_name} is asked for twice (method {name} also runs it): "
                                      "drop one of them from methods")
            methods[run_name] = runner
    if config.warmup:
        for name, runner in methods.items():
            runner.run(prompt_ids[0], config.seed)
    runs = {name: MethodRuns(deferral=getattr(runner, "deferral", None)) for name, runner in methods.items()}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(prompts) * len(methods))
        for index, ids in enumerate(prompt_ids):
            order = list(methods)
            shift = index % len(order)  # rotate the order so no method always runs first
            for name in order[shift:] + order[:shift]:
                bar.update(task, description=f"{prompts[index].id} {name}")
                runs[name].outputs.append(methods[name].run(ids, config.seed + index))
                bar.advance(task)
    score_runs(context, prompt_ids, runs)
    return context, prompts, runs
