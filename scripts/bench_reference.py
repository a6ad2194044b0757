"""Benchmark the engine on the reference target and record the tables in docs/benchmarks.md.

Runs `drafttrain eval` on ../shared/reference (greedy, then sampling at temperature 0.7), writes
the reports under --out (ignored by git), and replaces this script's section of
docs/benchmarks.md with the tables and the exact commands that produced them.

    python scripts/bench_reference.py [--num-prompts N] [--out outputs/bench-reference] [--doc-only]

Run it from anywhere; paths are relative to the repository root. --doc-only rebuilds the section
from reports already under --out.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchdoc import run_eval_section

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path("../shared/reference")  # relative to REPO, where the script runs
SELF_SPEC = '{"skip_mlp": [1, 3, 5, 7, 9], "skip_attn": [2, 4, 6, 8, 10]}'


def eval_args(out: Path, num_prompts: int, temperature: float) -> list[str]:
    args = ["eval", "--target", str(REFERENCE / "pycode-12L"), "--prompts", str(REFERENCE / "prompts-dev.jsonl"),
            "--methods", "ar,hf,hf-pld,sd-ngram,sd-self", "--self-spec", SELF_SPEC, "--k-self", "2",
            "--max-new-tokens", "128", "--temperature", str(temperature), "--out", str(out)]
    return args + (["--num-prompts", str(num_prompts)] if num_prompts else [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=0, help="first N prompts (0: all 40)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-reference"))
    parser.add_argument("--doc-only", action="store_true", help="only rebuild the doc from existing reports")
    options = parser.parse_args()
    os.chdir(REPO)
    runs = [(eval_args(options.out / name, options.num_prompts, temperature), options.out / name)
            for name, temperature in (("greedy", 0.0), ("sampling-t0.7", 0.7))]
    return run_eval_section("bench_reference", "Reference target on CPU (issue 2)", "scripts/bench_reference.py",
                            runs, options.doc_only)


if __name__ == "__main__":
    sys.exit(main())
