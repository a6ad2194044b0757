"""What a drafting call costs where decoding runs it, right after a target forward, against warm.

For a bundle's draft model (`drafts/<level>`): one `propose` of a one-token chain at a fixed context
after `--pending` uncached tokens, timed warm (right after the same call) and right after a one-token target
forward (the target runs the bundle's row-kernel plan), under several variants, interleaved per
repeat so that their ratios come from one run:

- the bundle's plan for the draft, and each row kernel at every count (`drafttrain.runtime.row_kernels`);
- bf16 weights (half the bytes to read) and the vocabulary head cut to 256 rows (an eighth of the
  head): whether the cold penalty is the weights' reading.

Also timed after a target forward: the same call when the draft's weights were read first (untimed),
which says how much of the penalty is reading them back into the cache.

Then the target's forward of 1 and 16 tokens on one thread and on all of `--threads`: whether a
small verify leaves a core idle; and whether that core can be used (PEARL's overlap): the target's
forward followed by a drafting call on all of `--threads`, against the same drafting call run on a
second Python thread during the target's forward, each thread with one intra-op thread (PyTorch's
thread count is per process), interleaved per repeat. Replaces this script's section of
docs/benchmarks.md.

    python scripts/draft_cold_cost.py [--bundle outputs/pipeline-pycode/bundle] [--target DIR]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from benchdoc import markers, replace_section

from drafttrain.calibration.latency import TARGET_LEVEL, LatencyProfile, model_forward_call, robust_average
from drafttrain.cli import device_name
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters.base import TreeShape
from drafttrain.drafters.transformer import ModelDrafter
from drafttrain.runtime.loader import load_model, load_tokenizer
from drafttrain.runtime.row_kernels import LARGEST_EXACT, available_kernels

SECTION = "draft_cold_cost"
HEADING = "A drafting call after a target forward"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="outputs/pipeline-pycode/bundle")
    parser.add_argument("--target", default="../shared/reference/pycode-12L")
    parser.add_argument("--level", default="draft0", help="the bundle's draft model level")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--pending", type=int, default=1, help="context tokens the draft's cache lacks")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true")
    return parser.parse_args()


def variants(bundle: Path, level: str, target_tokenizer, vocab: int, profile: LatencyProfile) -> dict[str, ModelDrafter]:
    path = bundle / "drafts" / level
    drafters = {}
    bundled = drafters[f"{level} plan (bundle)"] = ModelDrafter.from_pretrained(path, target_tokenizer, vocab)
    profile.apply_row_kernels(level, bundled.model)
    for kernel in available_kernels(torch.float32):
        drafter = drafters[f"{kernel} at every count"] = ModelDrafter.from_pretrained(path, target_tokenizer, vocab)
        drafter.model.apply_row_kernels({rows: kernel for rows in range(1, LARGEST_EXACT + 1)})
    drafters["bf16 weights (default kernel)"] = ModelDrafter.from_pretrained(path, target_tokenizer, vocab,
                                                                            dtype=torch.bfloat16)
    cut = drafters["head cut to 256 rows (default kernel)"] = ModelDrafter.from_pretrained(path, target_tokenizer, vocab)
    rows = cut.vocab_subset[:256] if cut.vocab_subset is not None else torch.arange(256)
    cut.vocab_subset, cut.subset_head = rows, cut.model.lm_head.weight.detach()[rows].contiguous()
    return drafters


def draft_weights(drafter: ModelDrafter) -> list[torch.Tensor]:
    """The tensors a one-token drafting call reads in full: the blocks' weights (and any copies the
    row-kernel plan made, except oneDNN-packed ones, which no tensor op reads), the norms and the head it
    computes (the embedding is read one row at a time)."""
    model = drafter.model
    tensors = [param for name, param in model.named_parameters() if not name.startswith("embed.")]
    tensors += [value for module in model.modules() for value in vars(module).values()
                if isinstance(value, torch.Tensor) and value.layout == torch.strided]
    if drafter.subset_head is not None:
        tensors.append(drafter.subset_head)
    elif model.lm_head.weight is model.embed.weight:
        tensors.append(model.lm_head.weight)
    return tensors


def time_drafting(drafters: dict[str, ModelDrafter], target_forward, context: torch.Tensor, pending: int,
                  repeats: int) -> dict[str, dict[str, float]]:
    """{variant: {"warm", "after target", "weights read": seconds}}, every variant and condition in turn
    per repeat ("weights read": after a target forward, with the draft's weights read before the call)."""
    samples = {name: {"warm": [], "after target": [], "weights read": []} for name in drafters}
    weights = {name: draft_weights(drafter) for name, drafter in drafters.items()}
    shape, sampling = TreeShape.chain(1), SamplingParams()
    for drafter in drafters.values():
        drafter.propose(context, shape, sampling, None)  # fills its cache with the context
    for _ in range(repeats):
        for name, drafter in drafters.items():
            for condition, values in samples[name].items():
                if condition == "after target":
                    target_forward()
                elif condition == "weights read":
                    target_forward()
                    for tensor in weights[name]:
                        tensor.sum()
                else:  # warm: right after the same call
                    drafter.cached = len(context) - pending
                    drafter.propose(context, shape, sampling, None)
                drafter.cached = len(context) - pending
                started = time.perf_counter()
                drafter.propose(context, shape, sampling, None)
                values.append(time.perf_counter() - started)
    return {name: {condition: robust_average(values) for condition, values in by.items()}
            for name, by in samples.items()}


def time_target_threads(call, context: int, threads: int, repeats: int) -> dict[tuple[int, int], float]:
    """{(tokens, threads): seconds} of the target's forward, thread counts interleaved per repeat."""
    samples = {(tokens, count): [] for tokens in (1, 16) for count in (1, threads)}
    for _ in range(repeats):
        for (tokens, count), values in samples.items():
            torch.set_num_threads(count)
            started = time.perf_counter()
            call(tokens, context)
            values.append(time.perf_counter() - started)
    torch.set_num_threads(threads)
    return {key: robust_average(values) for key, values in samples.items()}


def time_overlap(call, drafter: ModelDrafter, context: torch.Tensor, pending: int, threads: int,
                 repeats: int) -> dict[tuple[int, str], float]:
    """{(target tokens, "sequential" | "overlapped"): seconds} of a target forward plus a one-token
    drafting call, run one after the other on `threads` intra-op threads, or with the drafting call on
    a second thread during the forward, one intra-op thread each (the count is per process, so one
    core each); conditions interleaved per repeat."""
    shape, sampling = TreeShape.chain(1), SamplingParams()
    drafter.propose(context, shape, sampling, None)

    def draft() -> None:
        drafter.cached = len(context) - pending
        drafter.propose(context, shape, sampling, None)

    def draft_on_worker() -> None:
        with torch.inference_mode():  # grad mode is per thread
            draft()

    samples = {(tokens, mode): [] for tokens in (1, 16) for mode in ("sequential", "overlapped")}
    try:
        with ThreadPoolExecutor(max_workers=1) as worker:
            for _ in range(repeats):
                for (tokens, mode), values in samples.items():
                    torch.set_num_threads(threads if mode == "sequential" else 1)
                    started = time.perf_counter()
                    if mode == "sequential":
                        call(tokens, len(context))
                        draft()
                    else:
                        drafted = worker.submit(draft_on_worker)
                        call(tokens, len(context))
                        drafted.result()
                    values.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return {key: robust_average(values) for key, values in samples.items()}


def section(args: argparse.Namespace, drafting: dict, threads: dict, overlap: dict, seconds: float) -> str:
    start, end = markers(SECTION)
    command = "python scripts/draft_cold_cost.py " + shlex.join(sys.argv[1:])
    lines = [start, "", f"Measured {datetime.date.today()} on {device_name('cpu', args.threads)} by `{command.strip()}` "
             f"({seconds / 60:.1f} min): {args.bundle}, level {args.level}, one `propose` of a one-token chain at a "
             f"{args.context}-token context with {args.pending} uncached token(s), {args.repeats} repeats "
             "(trimmed mean), every variant and condition interleaved.", "",
             "| draft variant | warm ms | after a target forward ms | ratio | after it, weights read first ms |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, by in drafting.items():
        lines.append(f"| {name} | {by['warm'] * 1e3:.3f} | {by['after target'] * 1e3:.3f} | "
                     f"{by['after target'] / by['warm']:.2f}x | {by['weights read'] * 1e3:.3f} |")
    lines += ["", f"The target's forward at a {args.context}-token context, thread counts interleaved:", "",
              f"| tokens | 1 thread ms | {args.threads} threads ms |", "| ---: | ---: | ---: |"]
    for tokens in (1, 16):
        lines.append(f"| {tokens} | {threads[tokens, 1] * 1e3:.3f} | {threads[tokens, args.threads] * 1e3:.3f} |")
    lines += ["", f"A target forward plus a one-token drafting call ({args.level} plan), one after the other on "
              f"{args.threads} threads, or with the drafting call on a second Python thread during the forward, one "
              "intra-op thread each (PEARL's overlap):", "",
              "| target tokens | sequential ms | overlapped ms | overlapped / sequential |", "| ---: | ---: | ---: | ---: |"]
    for tokens in (1, 16):
        sequential, overlapped = overlap[tokens, "sequential"], overlap[tokens, "overlapped"]
        lines.append(f"| {tokens} | {sequential * 1e3:.3f} | {overlapped * 1e3:.3f} | {overlapped / sequential:.2f}x |")
    return "\n".join(lines + ["", end])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    bundle = Path(args.bundle)
    profile = LatencyProfile.load(bundle / "latency.json")
    tokenizer = load_tokenizer(args.target)
    target = load_model(args.target)
    profile.apply_row_kernels(TARGET_LEVEL, target)
    target_call = model_forward_call(target)
    drafters = variants(bundle, args.level, tokenizer, target.args.vocab_size, profile)
    context = torch.randint(0, target.args.vocab_size, (args.context,), generator=torch.Generator().manual_seed(0))
    drafting = time_drafting(drafters, lambda: target_call(1, args.context), context, args.pending, args.repeats)
    threads = time_target_threads(target_call, args.context, args.threads, max(args.repeats // 2, 10))
    bundled = drafters[f"{args.level} plan (bundle)"]
    overlap = time_overlap(target_call, bundled, context, args.pending, args.threads, max(args.repeats // 2, 10))
    text = section(args, drafting, threads, overlap, time.perf_counter() - started)
    print(text)
    if not args.no_docs:
        replace_section(SECTION, HEADING, text)


if __name__ == "__main__":
    main()
