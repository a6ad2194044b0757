"""How well drafts agree with the target's greedy tokens, by how far into the sequence they are.

A draft trained on short rows (`trainer.seq_len`) may never have seen the positions it drafts at
when decoding long prompts. This cuts each prompt to several lengths, lets the target continue it
greedily, and counts how often each draft's argmax (over its vocabulary subset, if it has one)
equals the target's next token, teacher-forced, grouped by the token's position. Replaces this
script's section of docs/benchmarks.md (unless --no-docs).

    python scripts/draft_positions.py DRAFT_DIR [DRAFT_DIR ...] [--prompt-lengths 32,128,224,300]
                                      [--num-prompts 12] [--new-tokens 96] [--bucket 64]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from benchdoc import markers, replace_section

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"  # paths on the command line are relative to the cwd


def bucket_agreement(matches: np.ndarray, first_position: int, bucket: int,
                     totals: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
    """Add `matches` (bool per token, the first at sequence position `first_position`) to
    `totals`: bucket start -> [agreeing tokens, tokens]."""
    totals = {} if totals is None else totals
    for offset, match in enumerate(matches.tolist()):
        start = (first_position + offset) // bucket * bucket
        counts = totals.setdefault(start, [0, 0])
        counts[0] += int(match)
        counts[1] += 1
    return totals


def table(results: dict[str, dict[int, list[int]]], bucket: int) -> list[str]:
    starts = sorted({start for totals in results.values() for start in totals})
    lines = ["| draft | " + " | ".join(f"positions {s}-{s + bucket - 1}" for s in starts) + " |",
             "| --- |" + " ---: |" * len(starts)]
    for name, totals in results.items():
        cells = [f"{totals[s][0] / totals[s][1]:.2f} ({totals[s][1]})" if s in totals else "-" for s in starts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("drafts", nargs="+", type=Path, help="draft checkpoint directories")
    parser.add_argument("--target", type=Path, default=REFERENCE / "pycode-12L")
    parser.add_argument("--prompts", type=Path, default=REFERENCE / "prompts-dev.jsonl")
    parser.add_argument("--num-prompts", type=int, default=12)
    parser.add_argument("--prompt-lengths", default="32,128,224,300",
                        help="cut each prompt to these token counts (longer prompts only)")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--bucket", type=int, default=64, help="positions per column")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    options = parser.parse_args()
    lengths = [int(value) for value in options.prompt_lengths.split(",")]
    if any(length < 1 for length in lengths) or options.bucket < 1 or options.new_tokens < 1:
        parser.error("--prompt-lengths, --bucket and --new-tokens must be positive")
    torch.set_num_threads(options.threads)
    from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
    from drafttrain.drafters.vocab import load_vocab_subset
    from drafttrain.evaluation.prompts import load_prompts
    from drafttrain.runtime import load_model, load_tokenizer
    from drafttrain.scheduling.oracle import teacher_forced_matches

    tokenizer = load_tokenizer(options.target)
    target = load_model(options.target)
    vocab = target.args.vocab_size
    decoder = SpeculativeDecoder(target, tokenizer)
    drafts = {str(path): (load_model(path), load_vocab_subset(path, vocab)) for path in options.drafts}
    results: dict[str, dict[int, list[int]]] = {name: {} for name in drafts}
    with torch.inference_mode():
        for prompt in load_prompts(options.prompts, options.num_prompts, tokenizer):
            ids = prompt.token_ids(tokenizer)
            for length in (n for n in lengths if n <= len(ids)):
                head = ids[:length]
                generated = decoder.generate(head, None, GenerationConfig(options.new_tokens)).tokens
                sequence = torch.tensor(head + generated)
                for name, (model, subset) in drafts.items():
                    matches = teacher_forced_matches(model, sequence, length, vocab, vocab_subset=subset)
                    bucket_agreement(matches, length, options.bucket, results[name])
    lines = table(results, options.bucket)
    print("\n".join(lines))
    if not options.no_docs:
        start, end = markers("draft_positions")
        about = (f"Measured {datetime.date.today()} by `python scripts/draft_positions.py "
                 f"{shlex.join(sys.argv[1:])}`: greedy agreement with the target (tokens counted in brackets).")
        replace_section("draft_positions", "Draft agreement by position",
                        "\n".join([start, "", about, "", *lines, "", end]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
