"""Scheduling decisions priced by the latency profile: how good DyTC's trees are, apart from timing noise
and from the costs the profile does not model (issue 6).

1. Decode prompts greedily with sd-ngram (chains of 4, 8, 12, 16) and with DyTC at each of
   scripts/bench_schedule.py's candidate settings, interleaved per prompt, through `drafttrain eval`'s
   method builders over one bundle.
2. Price every step by the bundle's latency profile at the step's context length: the target's verify
   forward over the root and the tree, plus the drafting the method predicts (DyTC's own plan; one
   n-gram call for a chain). Under greedy decoding the trees do not depend on timing, so this column
   is the same on every run: it compares the methods' decisions alone.
3. Beside it, the measured decode tokens/s of the same runs, and measured / predicted seconds: how much
   of the real cost the profile leaves out (the engine's and the scheduler's Python, draft-side
   overhead), per method.

Replaces this script's section of docs/benchmarks.md.

    python scripts/schedule_replay.py [--bundle outputs/pipeline-pycode/bundle] [--num-prompts 40]
                                      [--prompts FILE --no-docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from benchdoc import markers, replace_section

from drafttrain.calibration.latency import TARGET_LEVEL
from drafttrain.scheduling.dytc import COST_BUCKET

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path("../shared/reference")
CHAINS = (4, 8, 12, 16)


class Recorder:
    """A drafter that records, per step, (context length, tree nodes, predicted drafting seconds)."""

    def __init__(self, drafter, drafting_seconds: Callable[[object, int, int], float]) -> None:
        self.drafter, self.drafting_seconds = drafter, drafting_seconds
        self.name = drafter.name
        self.steps: list[tuple[int, int, float]] = []

    def __getattr__(self, name: str):
        return getattr(self.drafter, name)

    def reset(self) -> None:
        self.drafter.reset()

    def propose(self, context, shape, sampling, generator):
        tree = self.drafter.propose(context, shape, sampling, generator)
        self.steps.append((len(context), len(tree), self.drafting_seconds(self.drafter, len(context), len(tree))))
        return tree

    def observe(self, tree, accepted) -> None:
        self.drafter.observe(tree, accepted)


class Pricing:
    """Predicted seconds from a latency profile, cached per context-length bucket (as DyTC prices them)."""

    def __init__(self, latency, bucket: int = COST_BUCKET) -> None:

        self.models, self.target, self.bucket = latency.models, TARGET_LEVEL, bucket
        self._cache: dict[tuple[str, int, int], float] = {}

    def forward(self, level: str, tokens: int, context_length: int) -> float:
        """A forward of `level` over `tokens` tokens (for the n-gram drafter: one lookup of that many)."""
        key = (level, tokens, context_length // self.bucket)
        if key not in self._cache:
            context = max(key[2] * self.bucket, 1)
            self._cache[key] = float(np.asarray(self.models[level].predict(np.array([tokens]), context))[0])
        return self._cache[key]

    def verify(self, nodes: int, context_length: int) -> float:
        """The target's verify forward over the root and `nodes` draft tokens."""
        return self.forward(self.target, nodes + 1, context_length)


def step_parts(steps: list[tuple[int, int, float]], pricing: Pricing, undrafted: int,
               context_length: int) -> tuple[float, float]:
    """Predicted (verify, drafting) seconds of one generation: each recorded step's verify and drafting, and
    `undrafted` steps (the last ones, where the decoder asks for no draft) as one-token forwards."""
    verify = sum(pricing.verify(nodes, length) for length, nodes, _ in steps)
    drafting = sum(drafting for _, _, drafting in steps)
    return verify + undrafted * pricing.verify(0, context_length), drafting


def chain_drafting(pricing: Pricing, level: str) -> Callable[[object, int, int], float]:
    """One n-gram lookup per step, priced for the chain it returned (at least one token)."""
    return lambda drafter, context_length, nodes: pricing.forward(level, max(nodes, 1), context_length)


def planned_drafting(drafter, context_length: int, nodes: int) -> float:
    """DyTC's own prediction of the step's drafting seconds."""
    return drafter.last_plan.draft_seconds if drafter.last_plan is not None else 0.0


def build_methods(context, base, out: Path) -> dict[str, object]:
    """{label: runner}: sd-ngram's chains and DyTC's tuning candidates."""
    from bench_schedule import described, dytc_candidates

    from drafttrain.evaluation.methods import METHODS

    runners = {}
    for k in CHAINS:
        context.config = dataclasses.replace(base, k_ngram=k)
        runners[f"sd-ngram k={k}"] = METHODS["sd-ngram"].build(context)
    for option in dytc_candidates(out):
        context.config = dataclasses.replace(base, scheduler=Path(option["scheduler"]))
        settings = described(option)
        label = f"dytc {settings['levels'] if settings['levels'] == 'all' else '+'.join(settings['levels'])} " \
                f"d{settings['max_depth']}{' alt' if settings['alternatives'] else ''}"
        runners[label] = METHODS["dytc"].build(context)
    context.config = base
    return runners


def replay(runners: dict, ids: list[list[int]], pricing: Pricing, seed: int) -> dict[str, dict]:
    """Tokens, target forwards, predicted and measured decode seconds per method, over `ids`."""
    for label, runner in runners.items():
        drafting = planned_drafting if label.startswith("dytc") else chain_drafting(pricing, "ngram")
        runner.drafter = Recorder(runner.drafter, drafting)
        runner.run(ids[0], seed)  # warm-up
    parts = ("measured", "predicted_verify", "predicted_drafting", "measured_verify", "measured_drafting")
    totals = {label: {"tokens": 0, "forwards": 0, **dict.fromkeys(parts, 0.0)} for label in runners}
    order = list(runners)
    for index, prompt in enumerate(ids):
        shift = (index * 3) % len(order)
        for label in order[shift:] + order[:shift]:
            runner = runners[label]
            runner.drafter.steps = []
            output = runner.run(prompt, seed + index)
            steps = runner.drafter.steps
            total = totals[label]
            total["tokens"] += len(output.tokens)
            total["forwards"] += output.stats.target_forwards
            undrafted = output.stats.target_forwards - len(steps)
            verify, drafting = step_parts(steps, pricing, undrafted, len(prompt) + len(output.tokens))
            total["predicted_verify"] += verify
            total["predicted_drafting"] += drafting
            total["measured"] += output.seconds - (output.prefill_seconds or 0.0)
            total["measured_verify"] += output.stats.verify_seconds
            total["measured_drafting"] += output.stats.draft_seconds
    return totals


DRIFT_TOKENS = (1, 16)  # the target forwards timed after the replay, to compare the machine with the profile


def speed_drift(timings, models) -> dict[int, float]:
    """{tokens: measured / predicted seconds} of the target forwards timed now (`latency.Timing`s): how much
    slower (> 1) the machine runs than when the latency profile was taken. Measured / predicted seconds of
    the replay carry that drift as well as the costs the profile leaves out."""
    return {timing.tokens: timing.seconds / float(np.asarray(models[timing.level].predict(
        np.array([timing.tokens]), timing.context))[0]) for timing in timings}


def time_target_now(target, context_length: int) -> list:
    """The target's forwards of DRIFT_TOKENS tokens after `context_length`, timed as calibration times them."""
    from drafttrain.calibration.latency import measure, model_forward_call

    return measure({TARGET_LEVEL: model_forward_call(target)}, DRIFT_TOKENS, [context_length], repeats=15)


def predicted_seconds(total: dict) -> float:
    return total["predicted_verify"] + total["predicted_drafting"]


def table(totals: dict[str, dict]) -> list[str]:
    rates = {label: (t["tokens"] / predicted_seconds(t), t["tokens"] / t["measured"]) for label, t in totals.items()}
    chains = [label for label in totals if label.startswith("sd-ngram")]
    best_predicted = max(chains, key=lambda label: rates[label][0])
    best_measured = max(chains, key=lambda label: rates[label][1])
    lines = [f"| method | tokens / step | predicted tokens/s | vs {best_predicted} (predicted) | measured decode "
             f"tokens/s | vs {best_measured} (measured) | measured / predicted seconds | of which verify | "
             f"of which drafting | measured ms per step: verify, drafting, rest |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for label, t in totals.items():
        predicted, measured = rates[label]
        rest = t["measured"] - t["measured_verify"] - t["measured_drafting"]
        per_step = ", ".join(f"{1000 * seconds / t['forwards']:.2f}"
                             for seconds in (t["measured_verify"], t["measured_drafting"], rest))
        lines.append(f"| {label} | {t['tokens'] / t['forwards']:.2f} | {predicted:.0f} | "
                     f"{predicted / rates[best_predicted][0]:.2f}x | {measured:.0f} | "
                     f"{measured / rates[best_measured][1]:.2f}x | {t['measured'] / predicted_seconds(t):.2f} | "
                     f"{ratio(t['measured_verify'], t['predicted_verify'])} | "
                     f"{ratio(t['measured_drafting'], t['predicted_drafting'])} | {per_step} |")
    return lines


def ratio(measured: float, predicted: float) -> str:
    return f"{measured / predicted:.2f}" if predicted > 0 else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("outputs/pipeline-pycode/bundle"))
    parser.add_argument("--prompts", type=Path, default=REFERENCE / "prompts-dev.jsonl")
    parser.add_argument("--num-prompts", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/schedule-replay"))
    parser.add_argument("--no-docs", action="store_true",
                        help="leave docs/benchmarks.md alone (e.g. on calibration prompts, to choose settings)")
    options = parser.parse_args()
    os.chdir(REPO)
    torch.set_num_threads(options.threads)
    from drafttrain.evaluation.config import EvalConfig
    from drafttrain.evaluation.harness import open_bundle
    from drafttrain.evaluation.methods import EvalContext, load_latency
    from drafttrain.evaluation.prompts import load_prompts

    config = EvalConfig(target=REFERENCE / "pycode-12L", prompts=options.prompts, bundle=options.bundle,
                        methods=["ar"], max_new_tokens=options.max_new_tokens, threads=options.threads)
    bundle, config = open_bundle(config)
    context = EvalContext(config, bundle)
    pricing = Pricing(load_latency(context))
    runners = build_methods(context, config, options.out / "dytc-candidates")
    ids = [prompt.token_ids(context.tokenizer)
           for prompt in load_prompts(options.prompts, options.num_prompts, context.tokenizer)]
    totals = replay(runners, ids, pricing, config.seed)
    lines = table(totals)
    context_length = int(np.median([len(prompt) for prompt in ids])) + options.max_new_tokens // 2
    drift = speed_drift(time_target_now(context.target, context_length), pricing.models)
    drift_text = ", ".join(f"{tokens} token{'s' if tokens > 1 else ''} {share:.2f}x" for tokens, share in drift.items())
    start, end = markers("schedule_replay")
    about = (f"Computed {datetime.date.today()} by `python scripts/schedule_replay.py {shlex.join(sys.argv[1:])}`: "
             f"{len(ids)} prompts of {options.prompts.name}, greedy, {options.max_new_tokens} new tokens, "
             f"{options.bundle}; predicted seconds from its latency.json, no per-step overhead. Right after the "
             f"replay, the target's forwards at a {context_length}-token context took this much of the profile's "
             f"prediction (timed as calibration times them; above 1x the machine ran slower than when the "
             f"profile was taken): {drift_text}.")
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "table.md").write_text("\n".join([about, "", *lines]) + "\n")
    if not options.no_docs:
        replace_section("schedule_replay", "Scheduling decisions, priced by the latency profile",
                        "\n".join([start, "", about, "", *lines, "", end]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
