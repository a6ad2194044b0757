"""The self-draft search on the reference target: TPE against random search, and the best level
against a fixed 45% evenly spread skip (SWIFT's default ratio), measured with `drafttrain eval`.

Calibration prompts come from the target's training text (the standard library minus the
held-out packages), never from prompts-dev.jsonl, which is only used for the final evaluation.
Replaces this script's section of docs/benchmarks.md.

    python scripts/bench_search.py [--trials 60] [--num-prompts 20] [--out outputs/bench-search]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

from benchdoc import markers, replace_section

from drafttrain.cli import main as drafttrain_main

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path("../shared/reference")
START, END = markers("bench_search")


def calibration_prompts(path: Path) -> None:
    from drafttrain.data import CorpusConfig, build_prompt_set, iter_documents, write_prompts
    from drafttrain.runtime import load_tokenizer

    documents = list(iter_documents(CorpusConfig(kind="stdlib", max_documents=120)))
    tokenizer = load_tokenizer(REFERENCE / "pycode-12L")
    write_prompts(build_prompt_set(documents, tokenizer, "code", 8, 320, seed=1), path)


def search_args(out: Path, sampler: str, trials: int, calibration: Path) -> list[str]:
    return ["search", "--config", "configs/pycode/search.yaml", "--prompts", str(calibration), "--out", str(out),
            "--study", f"pycode-{sampler}", "--sampler", sampler, "--trials", str(trials), "--num-prompts", "4"]


def eval_args(spec: str, out: Path, num_prompts: int) -> list[str]:
    return ["eval", "--target", str(REFERENCE / "pycode-12L"), "--prompts", str(REFERENCE / "prompts-dev.jsonl"),
            "--methods", "ar,sd-self", "--self-spec", spec, "--k-self", "3", "--max-new-tokens", "128",
            "--num-prompts", str(num_prompts), "--out", str(out)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--num-prompts", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-search"))
    options = parser.parse_args()
    os.chdir(REPO)
    calibration = options.out / "calibration.jsonl"
    calibration_prompts(calibration)
    commands, searches = [], {}
    for sampler in ("tpe", "random"):
        args = search_args(options.out / sampler, sampler, options.trials, calibration)
        started = time.perf_counter()
        if drafttrain_main(args) != 0:
            return 1
        levels = json.loads((options.out / sampler / "levels.json").read_text())["levels"]
        searches[sampler] = {"wall_s": time.perf_counter() - started, "levels": levels,
                             "best": max(levels, key=lambda level: level["speedup"])}
        commands.append(f"drafttrain {shlex.join(args)}")
    from drafttrain.runtime import read_model_args
    from drafttrain.search.space import SearchSpace

    fixed = SearchSpace(read_model_args(REFERENCE / "pycode-12L").num_layers, True, 0).evenly_spread(0.45)
    candidates = {"tpe best": searches["tpe"]["best"]["spec"], "random best": searches["random"]["best"]["spec"],
                  "fixed 45% spread": fixed.to_json()}
    results = {}
    for name, spec in candidates.items():
        args = eval_args(json.dumps(spec), options.out / "eval" / name.replace(" ", "-").replace("%", ""),
                         options.num_prompts)
        if drafttrain_main(args) != 0:
            return 1
        results[name] = (spec, json.loads((Path(args[-1]) / "report.json").read_text())["methods"]["sd-self"])
        commands.append(f"drafttrain {shlex.join(args)}")
    write_doc(commands, searches, results, options)
    return 0


def write_doc(commands, searches, results, options) -> None:
    lines = [START, f"Measured {datetime.date.today().isoformat()} by `python scripts/bench_search.py --trials "
             f"{options.trials} --num-prompts {options.num_prompts}` (CPU, 2 threads), which ran:", "",
             "```", *commands, "```", "",
             "| level | spec | sd-self speedup vs ar [95% CI] | acceptance | tokens/forward | lossless |",
             "| --- | --- | --- | ---: | ---: | --- |"]
    for name, (spec, entry) in results.items():
        ci = entry["speedup_ci95"]
        lines.append(f"| {name} | `{json.dumps(spec)}` | {entry['speedup_vs_ar']:.2f}x [{ci[0]:.2f}-{ci[1]:.2f}] | "
                     f"{entry['acceptance_rate']:.1%} | {entry['mean_accepted_tokens']:.2f} | {entry['lossless']} |")
    lines += ["", "| search | trials | wall time | best measured speedup on calibration prompts |",
              "| --- | ---: | ---: | ---: |"]
    for sampler, found in searches.items():
        lines.append(f"| {sampler} | {options.trials} | {found['wall_s'] / 60:.1f} min | {found['best']['speedup']:.2f}x |")
    lines += ["", "Levels found by the TPE search (levels.json):", ""]
    for level in searches["tpe"]["levels"]:
        lines.append(f"- cost ratio {level['cost_ratio']:.2f}, acceptance {level['acceptance']:.2f}, "
                     f"speedup {level['speedup']:.2f}: `{json.dumps(level['spec'])}`")
    replace_section("bench_search", "Self-draft search on the reference target (issue 4)", "\n".join(lines + [END]))


if __name__ == "__main__":
    sys.exit(main())
