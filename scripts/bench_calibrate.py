"""Calibration on the reference target: acceptance predictors (ECE before and after) and latency MAPE.

Uses the cascade of the earlier benchmarks: the 1-layer CE draft of scripts/bench_distill.py,
the TPE levels of scripts/bench_search.py and the n-gram drafter (run those scripts first, or
pass --drafts/--levels). Calibration prompts come from the target's training text (the standard
library minus the held-out packages), never from prompts-dev.jsonl. Replaces this script's
section of docs/benchmarks.md and copies the reliability diagrams to docs/img/calibration/.

    python scripts/bench_calibrate.py [--num-prompts 90] [--out outputs/bench-calibrate]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from benchdoc import markers, replace_section

from drafttrain.cli import main as drafttrain_main

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path("../shared/reference")
IMAGES = Path("docs/img/calibration")
START, END = markers("bench_calibrate")


def calibration_prompts(path: Path, count: int) -> None:
    from drafttrain.data import (
        CorpusConfig,
        build_prompt_set,
        iter_documents,
        write_prompts,
    )
    from drafttrain.runtime import load_tokenizer

    documents = list(iter_documents(CorpusConfig(kind="stdlib", max_documents=400)))
    tokenizer = load_tokenizer(REFERENCE / "pycode-12L")
    write_prompts(build_prompt_set(documents, tokenizer, "code", count, 320, seed=2), path)


def section(report: dict, command: str, images: list[Path]) -> str:
    from drafttrain.calibration.report import acceptance_table, latency_table

    latency = report["latency"]
    worst = max(level["isotonic"]["ece"] for mode in report["acceptance"].values() for level in mode.values())
    lines = [START, "", f"Measured {datetime.date.today()} on {report['device']} with", "",
             f"    {command}", "",
             (f"{report['num_prompts']} calibration prompts from the training text, {report['trace_rows']} trace rows, "
              f"{report['seconds'] / 60:.1f} min in all. Predictors are scored out of fold: the prompts are split "
              f"into {report['folds']} folds and each fold is predicted by predictors fitted on the other folds."), "",
             "Levels: " + "; ".join(f"`{name}` {what}" for name, what in report["levels"].items()) + ".", "",
             ("Acceptance predictors, out of fold (rows whose parent was accepted; ECE with 15 bins; raw = the "
              "draft's own probability of the token, or 1.0 for the n-gram drafter's point mass):"), ""]
    lines += acceptance_table(report["acceptance"])
    lines += ["", f"Worst ECE after isotonic calibration: {worst:.4f} (goal <= 0.03).", "",
              ("Latency predictors, held-out grid points (token counts and context lengths between the fitted "
               "ones):"), ""]
    lines += latency_table(latency["mape"], latency["fit_timings"], latency["held_out_timings"])
    lines += ["", f"Worst held-out MAPE: {100 * max(latency['mape'].values()):.1f}% (goal <= 10%).", "",
              "Reliability diagrams (out-of-fold predictions):", ""]
    lines += [f"![{image.stem}]({image.relative_to('docs')})" for image in images]
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=90)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-calibrate"))
    parser.add_argument("--drafts", default="outputs/bench-distill/L1-ce-corpus/draft")
    parser.add_argument("--levels", default="outputs/bench-search/tpe/levels.json")
    options = parser.parse_args()
    os.chdir(REPO)
    prompts = options.out / "calibration.jsonl"
    options.out.mkdir(parents=True, exist_ok=True)
    calibration_prompts(prompts, options.num_prompts)
    args = ["run", "calibrate", "--config", "configs/pycode/calibrate.yaml", f"prompts={prompts}",
            f"out={options.out / 'run'}", f"num_prompts={options.num_prompts}", f"drafts=[{options.drafts}]",
            f"levels={options.levels}"]
    if drafttrain_main(args) != 0:
        return 1
    report = json.loads((options.out / "run" / "report.json").read_text())
    shutil.rmtree(IMAGES, ignore_errors=True)
    IMAGES.mkdir(parents=True)
    images = [Path(shutil.copy(plot, IMAGES / Path(plot).name)) for plot in report["plots"]]
    command = "python scripts/bench_calibrate.py " + shlex.join(sys.argv[1:]) + "  # runs: drafttrain " + \
        shlex.join(args)
    replace_section("bench_calibrate", "Calibration: acceptance and latency predictors (issue 5)",
                    section(report, command.strip(), images))
    print(f"docs/benchmarks.md updated; diagrams in {IMAGES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
