"""Benchmark the engine on the reference target and record the tables in docs/benchmarks.md.

Runs `drafttrain eval` on ../shared/reference (greedy, then sampling at temperature 0.7), writes
the reports under --out (ignored by git), and replaces this script's section of
docs/benchmarks.md with the tables and the exact commands that produced them.

    python scripts/bench_reference.py [--num-prompts N] [--out outputs/bench-reference]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

from drafttrain.cli import main as drafttrain_main

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench_reference:start -->", "<!-- bench_reference:end -->"
SELF_SPEC = '{"skip_mlp": [4, 6, 8], "skip_attn": [5, 7, 9]}'


def eval_args(out: Path, num_prompts: int, temperature: float) -> list[str]:
    return ["eval", "--target", str(REFERENCE / "pycode-12L"), "--prompts", str(REFERENCE / "prompts-dev.jsonl"),
            "--methods", "ar,hf,hf-pld,sd-ngram,sd-self", "--self-spec", SELF_SPEC,
            "--max-new-tokens", "128", "--num-prompts", str(num_prompts), "--temperature", str(temperature),
            "--out", str(out)]


def section(runs: list[tuple[list[str], Path]]) -> str:
    lines = [START, f"Measured {datetime.date.today().isoformat()} by `python scripts/bench_reference.py`.", ""]
    for args, out in runs:
        table = (out / "report.md").read_text().split("\n", 2)[2]  # drop the title line
        lines += [f"```\ndrafttrain {shlex.join(args)}\n```", "", table.strip(), ""]
    return "\n".join(lines + [END])


def update_doc(text: str) -> None:
    current = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if START in current:
        head, rest = current.split(START, 1)
        current = head + text + rest.split(END, 1)[1]
    else:
        current = current.rstrip() + "\n\n## Reference target on CPU (issue 2)\n\n" + text + "\n"
    DOC.write_text(current)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=0, help="first N prompts (0: all 40)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-reference")
    options = parser.parse_args()
    runs = []
    for name, temperature in (("greedy", 0.0), ("sampling-t0.7", 0.7)):
        out = options.out / name
        args = eval_args(out, options.num_prompts, temperature)
        code = drafttrain_main(args)
        if code != 0:
            return code
        runs.append((args, out))
    update_doc(section(runs))
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
