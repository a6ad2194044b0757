"""The draft's vocabulary subset (FR-Spec) on the reference target: the same draft with and without it.

Runs ar, sd-draft (k=1) and DyTC (at --scheduler) with the bundle's draft, and sd-draft and DyTC with
the same draft given a vocabulary subset (`python scripts/draft_vocab.py`), interleaved per prompt in
one process; greedy, so every method must reproduce ar's tokens. Both DyTC runs price the draft with
the bundle's latency profile (taken with the whole LM head), so their trees differ only where the
subset changes a drafted token: the gain shown is the cheaper draft step alone. Replaces this
script's section of docs/benchmarks.md.

    python scripts/bench_draft_vocab.py --subset-draft DIR [--bundle outputs/pipeline-pycode/bundle]
                                        [--scheduler FILE] [--num-prompts 24]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import sys
from pathlib import Path

import torch
from benchdoc import markers, replace_section

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path("../shared/reference")


def build(context, base, subset_draft: Path) -> dict[str, object]:
    from drafttrain.evaluation.methods import METHODS

    runners = {"ar": METHODS["ar"].build(context)}
    for label, draft in (("", base.draft), (" + subset", subset_draft)):
        context.config = dataclasses.replace(base, draft=draft)
        runners[f"sd-draft k=1{label}"] = METHODS["sd-draft"].build(context)
        runners[f"dytc{label}"] = METHODS["dytc"].build(context)
    context.config = base
    return runners


def measure(runners: dict, ids: list[list[int]], seed: int) -> dict[str, dict]:
    """Decode tokens, seconds, target forwards and drafting seconds per runner; asserts ar's tokens."""
    for runner in runners.values():
        runner.run(ids[0], seed)  # warm-up
    totals = {label: {"tokens": 0, "seconds": 0.0, "forwards": 0, "draft": 0.0, "exact": True} for label in runners}
    order = list(runners)
    for index, prompt in enumerate(ids):
        shift = index % len(order)
        for label in order[shift:] + order[:shift]:
            output = runners[label].run(prompt, seed + index)
            total = totals[label]
            total["tokens"] += len(output.tokens)
            total["seconds"] += output.seconds - output.prefill_seconds
            total["forwards"] += output.stats.target_forwards
            total["draft"] += output.stats.draft_seconds
            total.setdefault("outputs", {})[index] = output.tokens
        reference = totals["ar"]["outputs"][index]
        for total in totals.values():
            total["exact"] &= total["outputs"][index] == reference
    return totals


def table(totals: dict[str, dict]) -> list[str]:
    header = ("| method | decode tokens/s | vs the same method without the subset | tokens / forward | "
              "drafting share of decode time | lossless |")
    lines = [header, "| --- | ---: | ---: | ---: | ---: | --- |"]
    rate = {label: t["tokens"] / t["seconds"] for label, t in totals.items()}
    for label, t in totals.items():
        plain = label.removesuffix(" + subset")
        versus = f"{rate[label] / rate[plain]:.3f}x" if plain != label else "-"
        lines.append(f"| {label} | {rate[label]:.1f} | {versus} | {t['tokens'] / t['forwards']:.2f} | "
                     f"{t['draft'] / t['seconds']:.0%} | {'yes' if t['exact'] else '**NO**'} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("outputs/pipeline-pycode/bundle"))
    parser.add_argument("--subset-draft", type=Path, required=True, help="the bundle's draft with vocab_subset.json")
    parser.add_argument("--scheduler", type=Path, help="DyTC's settings (default: the bundle's)")
    parser.add_argument("--prompts", type=Path, default=REFERENCE / "prompts-dev.jsonl")
    parser.add_argument("--num-prompts", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    os.chdir(REPO)
    torch.set_num_threads(options.threads)
    from drafttrain.drafters.vocab import load_vocab_subset
    from drafttrain.evaluation.config import EvalConfig
    from drafttrain.evaluation.harness import open_bundle
    from drafttrain.evaluation.methods import EvalContext
    from drafttrain.evaluation.prompts import load_prompts

    if load_vocab_subset(options.subset_draft, 1 << 30) is None:
        raise SystemExit(f"{options.subset_draft} has no vocab_subset.json: write it with scripts/draft_vocab.py")
    config = EvalConfig(target=REFERENCE / "pycode-12L", prompts=options.prompts, bundle=options.bundle,
                        methods=["ar"], max_new_tokens=128, threads=options.threads, k_draft=1,
                        **({"scheduler": options.scheduler} if options.scheduler else {}))
    bundle, config = open_bundle(config)
    context = EvalContext(config, bundle)
    runners = build(context, config, options.subset_draft)
    ids = [p.token_ids(context.tokenizer)
           for p in load_prompts(options.prompts, options.num_prompts, context.tokenizer)]
    lines = table(measure(runners, ids, config.seed))
    subset = load_vocab_subset(options.subset_draft, 1 << 30)
    start, end = markers("bench_draft_vocab")
    about = (f"Measured {datetime.date.today()} by `python scripts/bench_draft_vocab.py {shlex.join(sys.argv[1:])}`: "
             f"{len(ids)} prompts of {options.prompts.name}, greedy, 128 new tokens, interleaved in one process; "
             f"the subset has {len(subset)} tokens.")
    replace_section("bench_draft_vocab", "The draft's vocabulary subset (FR-Spec)",
                    "\n".join([start, "", about, "", *lines, "", end]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
