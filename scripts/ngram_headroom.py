"""How much any schedule of the n-gram drafter alone could gain over a fixed chain on this hardware:
the headroom behind issue 6's scheduling goals.

1. Decode the prompts greedily with the target and record each output.
2. Replay n-gram drafting over the recorded outputs, offline: at each step the drafter proposes a
   chain of up to `--max-k` tokens from the committed tokens; the accepted length is read off the
   recorded output; the step's seconds are *predicted* by the latency profile (one n-gram call plus
   the target's verify forward over the root and the k drafted tokens, at that context length).
3. Compare chain schedules:
   - `chain-k`: sd-ngram with a fixed k;
   - `by-match`: each step's k chosen from the matched suffix's length to maximize predicted tokens/s,
     from P(accepted >= j | match-length bucket) estimated on the other half of the prompts
     (two-fold), i.e. the best use of the feature DyTC's n-gram predictor sees;
   - `hindsight`: k equal to exactly the tokens that will be accepted, an upper bound for any chain
     schedule of this drafter (what the oracle knows).

The figures are predicted, not measured: replaying one recorded output isolates the drafting
decision from timing noise. Replaces this script's section of docs/benchmarks.md.

    python scripts/ngram_headroom.py [--bundle outputs/pipeline-pycode/bundle] [--num-prompts 40]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from benchdoc import markers, replace_section

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path("../shared/reference")
MATCH_BUCKETS = (1, 2, 3, 4, 5, 7, 9)  # lower edges of the matched-suffix-length buckets (max_match 8)


@dataclass
class Position:
    """One decoding position of a recorded output: what the n-gram drafter saw and would have gained."""

    match_length: int  # 0: no match, no draft
    accepted: int  # drafted tokens that equal the recorded output, in order
    drafted: int  # tokens the drafter proposed (at most max_k)


def record_outputs(target: Path, prompts: Path, num_prompts: int, max_new_tokens: int) -> list[list[int]]:
    """Prompt ids followed by the target's greedy output, per prompt."""
    from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
    from drafttrain.evaluation.prompts import load_prompts
    from drafttrain.runtime.loader import eos_token_ids, load_model, load_tokenizer

    tokenizer = load_tokenizer(target)
    decoder = SpeculativeDecoder(load_model(target), tokenizer)
    config = GenerationConfig(max_new_tokens, eos_token_ids=eos_token_ids(target, tokenizer))
    sequences = []
    for prompt in load_prompts(prompts, num_prompts, tokenizer):
        ids = prompt.token_ids(tokenizer)
        sequences.append((len(ids), list(ids) + list(decoder.generate(ids, None, config).tokens)))
    return sequences


def replay(sequence: list[int], start: int, max_k: int) -> dict[int, Position]:
    """The n-gram drafter's proposal at every position from `start` on, against the recorded tokens."""
    from drafttrain.decoding.sampling import SamplingParams
    from drafttrain.drafters.base import TreeShape
    from drafttrain.drafters.ngram import NgramDrafter

    drafter, greedy, positions = NgramDrafter(), SamplingParams(0.0), {}
    for index in range(start, len(sequence)):
        draft = drafter.propose(torch.tensor(sequence[:index]), TreeShape.chain(max_k), greedy, None)
        tokens = draft.tokens.tolist()
        accepted = 0
        while accepted < len(tokens) and index + accepted < len(sequence) and \
                tokens[accepted] == sequence[index + accepted]:
            accepted += 1
        positions[index] = Position(draft.match_lengths[0] if tokens else 0, accepted, len(tokens))
    return positions


def bucket(match_length: int) -> int:
    return max(i for i, edge in enumerate(MATCH_BUCKETS) if match_length >= edge)


def survival(replays: list[tuple[int, int, dict[int, Position]]], max_k: int) -> np.ndarray:
    """[bucket, j]: P(at least j drafted tokens accepted | match-length bucket), j = 0 .. max_k."""
    reached = np.zeros((len(MATCH_BUCKETS), max_k + 1))
    for _, _, positions in replays:
        for position in positions.values():
            if position.match_length:
                reached[bucket(position.match_length), :position.accepted + 1] += 1
    return reached / np.maximum(reached[:, :1], 1)


class Costs:
    """Predicted seconds of a step that drafts k n-gram tokens at a context length."""

    def __init__(self, latency_path: Path, max_k: int) -> None:
        from drafttrain.calibration.latency import TARGET_LEVEL, LatencyProfile

        latency = LatencyProfile.load(latency_path)
        self.target, self.ngram = latency.models[TARGET_LEVEL], latency.models["ngram"]
        self.counts = np.arange(1, max_k + 2)
        self.cache: dict[int, np.ndarray] = {}

    def step_seconds(self, context_length: int) -> np.ndarray:
        """[k]: seconds of a step with k = 0 .. max_k drafted tokens (k = 0: no n-gram call)."""
        key = context_length // 16
        if key not in self.cache:
            context = max(key * 16, 1)
            verify = np.asarray(self.target.predict(self.counts, context), dtype=np.float64)
            lookup = float(np.asarray(self.ngram.predict(np.array([1]), context))[0])
            self.cache[key] = verify + np.r_[0.0, np.full(len(verify) - 1, lookup)]
        return self.cache[key]


def simulate(replays, costs: Costs, choose) -> tuple[float, float]:
    """(tokens per step, predicted tokens per second) of decoding every replay with `choose(position,
    context_length) -> k`."""
    steps = tokens = 0
    seconds = 0.0
    for start, end, positions in replays:
        index = start
        while index < end:
            position = positions[index]
            k = min(choose(position, index), position.drafted)
            advance = min(min(position.accepted, k) + 1, end - index)
            seconds += float(costs.step_seconds(index)[k])
            steps, tokens, index = steps + 1, tokens + advance, index + advance
    return tokens / steps, tokens / seconds


def by_match_policy(fit, costs: Costs, max_k: int):
    reach = survival(fit, max_k)

    def choose(position: Position, context_length: int) -> int:
        if not position.match_length:
            return 0
        expected = 1 + np.cumsum(np.r_[0.0, reach[bucket(position.match_length), 1:]])
        return int(np.argmax(expected / costs.step_seconds(context_length)))
    return choose


def rows(replays, costs: Costs, max_k: int) -> list[tuple[str, float, float]]:
    results = [(f"chain-{k}", *simulate(replays, costs, lambda position, _, k=k: k)) for k in (4, 8, 12, 16)
               if k <= max_k]
    half = len(replays) // 2
    folds = [(replays[:half], replays[half:]), (replays[half:], replays[:half])]
    tokens = seconds = steps = 0.0
    for fit, test in folds:
        per_step, rate = simulate(test, costs, by_match_policy(fit, costs, max_k))
        fold_tokens = sum(end - start for start, end, _ in test)
        tokens, steps, seconds = tokens + fold_tokens, steps + fold_tokens / per_step, seconds + fold_tokens / rate
    results.append(("by-match (two-fold)", tokens / steps, tokens / seconds))
    results.append(("hindsight", *simulate(replays, costs, lambda position, _: position.accepted)))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("outputs/pipeline-pycode/bundle"),
                        help="the bundle whose latency profile prices the steps")
    parser.add_argument("--prompts", type=Path, default=REFERENCE / "prompts-dev.jsonl")
    parser.add_argument("--num-prompts", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-k", type=int, default=16, help="longest chain any policy drafts")
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    os.chdir(REPO)
    torch.set_num_threads(options.threads)
    sequences = record_outputs(REFERENCE / "pycode-12L", options.prompts, options.num_prompts,
                               options.max_new_tokens)
    replays = [(start, len(sequence), replay(sequence, start, options.max_k)) for start, sequence in sequences]
    results = rows(replays, Costs(options.bundle / "latency.json", options.max_k), options.max_k)
    chain8 = {name: rate for name, _, rate in results}["chain-8"]
    start, end = markers("ngram_headroom")
    table = ["| n-gram schedule | tokens / step | predicted tokens/s | vs chain-8 |", "| --- | ---: | ---: | ---: |"]
    table += [f"| {name} | {per_step:.2f} | {rate:.0f} | {rate / chain8:.2f}x |" for name, per_step, rate in results]
    about = (f"Computed {datetime.date.today()} by `python scripts/ngram_headroom.py {shlex.join(sys.argv[1:])}`: "
             f"{len(replays)} prompts of {options.prompts.name}, greedy, {options.max_new_tokens} new tokens; steps "
             f"priced by {options.bundle}/latency.json.")
    text = "\n".join([start, "", about, "", *table, "", end])
    replace_section("ngram_headroom", "Headroom of n-gram scheduling (predicted)", text)
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
