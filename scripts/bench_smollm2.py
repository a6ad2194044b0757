"""Benchmark decoding on the real reference target, SmolLM2-135M-Instruct, on code and chat prompts.

Fetches the target if needed (scripts/reference_smollm2.py), then runs `drafttrain eval` four times:
code-continuation prompts (../shared/reference/prompts-dev.jsonl) and chat requests
(configs/smollm2/prompts-chat.jsonl), each greedy and at temperature 0.7, with the transformers
peers (hf, hf-pld), n-gram drafting and the reduced-precision self-draft view (every layer and the
head in int8, through fbgemm). The target's row kernels are tuned for 1-16 rows before each run,
so every method of our engine verifies with the kernels measured fastest here. The tables and the
exact commands replace this script's section of docs/benchmarks.md.

    python scripts/bench_smollm2.py [--num-prompts 6] [--out outputs/bench-smollm2] [--doc-only]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchdoc import run_eval_section
from reference_smollm2 import DEFAULT_OUT, ensure_reference

REPO = Path(__file__).resolve().parents[1]
PROMPT_SETS = {"code": Path("../shared/reference/prompts-dev.jsonl"), "chat": Path("configs/smollm2/prompts-chat.jsonl")}
INT8_VIEW = {"act_quant": {str(layer): "int8" for layer in range(30)}, "head_quant": "int8"}


def eval_args(target: Path, prompts: Path, out: Path, num_prompts: int, temperature: float, k_self: int) -> list[str]:
    return ["eval", "--target", str(target), "--prompts", str(prompts), "--num-prompts", str(num_prompts),
            "--methods", "ar,hf,hf-pld,sd-ngram,sd-self", "--self-spec", json.dumps(INT8_VIEW, separators=(",", ":")),
            "--k-self", str(k_self), "--max-new-tokens", "128", "--temperature", str(temperature),
            "--threads", "2", "--tune-row-kernels", "16", "--out", str(out)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=6, help="first N prompts of each set")
    parser.add_argument("--k-self", type=int, default=3, help="draft length of the int8 view")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-smollm2"))
    parser.add_argument("--doc-only", action="store_true", help="only rebuild the doc from existing reports")
    options = parser.parse_args()
    os.chdir(REPO)
    target = ensure_reference().relative_to(REPO) if not options.doc_only else DEFAULT_OUT.relative_to(REPO)
    runs = [(eval_args(target, prompts, options.out / f"{kind}-{name}", options.num_prompts, temperature,
                       options.k_self), options.out / f"{kind}-{name}")
            for kind, prompts in PROMPT_SETS.items() for name, temperature in (("greedy", 0.0), ("t0.7", 0.7))]
    return run_eval_section("bench_smollm2", "SmolLM2-135M-Instruct on CPU: code and chat (issue 33)",
                            "scripts/bench_smollm2.py", runs, options.doc_only)


if __name__ == "__main__":
    sys.exit(main())
