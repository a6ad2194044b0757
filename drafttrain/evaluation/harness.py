"""Run the chosen methods on every prompt, interleaved per prompt so machine drift hits all alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from rich.progress import Progress

from drafttrain.evaluation.config import EvalConfig
from drafttrain.evaluation.methods import METHODS, EvalContext, Method, MethodOutput
from drafttrain.evaluation.prompts import Prompt, load_prompts


@dataclass
class MethodRuns:
    """Every measured run of one method, one per prompt, in prompt order."""

    outputs: list[MethodOutput] = field(default_factory=list)


def run_methods(config: EvalConfig, progress: bool = True) -> tuple[EvalContext, list[Prompt], dict[str, MethodRuns]]:
    config.require_inputs()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    context = EvalContext(config)
    prompts = load_prompts(config.prompts, config.num_prompts)
    prompt_ids = [context.tokenizer(p.text).input_ids for p in prompts]
    for ids in prompt_ids:
        context.decoder.check_length(len(ids), config.max_new_tokens)
    methods: dict[str, Method] = {name: METHODS[name].build(context) for name in config.methods}
    if config.warmup:
        for name, runner in methods.items():
            runner.run(prompt_ids[0], config.seed)
    runs = {name: MethodRuns() for name in methods}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(prompts) * len(methods))
        for index, ids in enumerate(prompt_ids):
            order = list(methods)
            shift = index % len(order)  # rotate the order so no method always runs first
            for name in order[shift:] + order[:shift]:
                bar.update(task, description=f"{prompts[index].id} {name}")
                runs[name].outputs.append(methods[name].run(ids, config.seed + index))
                bar.advance(task)
    return context, prompts, runs
