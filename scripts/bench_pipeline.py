"""The pipeline on the reference target, and its bundle's evaluation, into docs/benchmarks.md.

    python scripts/bench_pipeline.py [--sampling]      (from the repository root)

Runs `drafttrain run pipeline --config configs/pycode/pipeline.yaml` (finished stages are reused),
then, with --sampling, `drafttrain eval --bundle` on the same methods at temperature 0.7. Copies the
report's plots to docs/img/pipeline/ and writes the section "Pipeline" of docs/benchmarks.md: the
stages with their times, the methods table, whether dytc is lossless and faster than every other
method, the plots, and the commands that produced them.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import replace_section

from drafttrain.cli import main as drafttrain_main

CONFIG = "configs/pycode/pipeline.yaml"
IMAGES = Path("docs/img/pipeline")
PLOTS = ("speedup.png", "acceptance-by-depth.png", "tokens-per-prompt.png")


def run(args: list[str]) -> None:
    print("+ drafttrain " + shlex.join(args), flush=True)
    if drafttrain_main(args) != 0:
        raise SystemExit(f"failed: drafttrain {shlex.join(args)}")


def methods_table(report: dict) -> tuple[list[str], str]:
    methods = report["methods"]
    lines = ["| method | tokens/s | vs ar [95% CI] | vs dytc | tokens/forward | acceptance | lossless |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    dytc = methods.get("dytc")
    for name, entry in sorted(methods.items(), key=lambda item: -item[1]["tokens_per_s"]):
        ci = entry["speedup_ci95"]
        versus = f"{entry['tokens_per_s'] / dytc['tokens_per_s']:.2f}x" if dytc else "-"
        tokens = "-" if entry["mean_accepted_tokens"] is None else f"{entry['mean_accepted_tokens']:.2f}"
        rate = "-" if entry["acceptance_rate"] is None else f"{entry['acceptance_rate']:.0%}"
        lossless = {True: "yes", False: "**NO**", None: "n/a (sampling)"}[entry["lossless"]]
        lines.append(f"| {'**dytc**' if name == 'dytc' else name} | {entry['tokens_per_s']:.1f} | "
                     f"{entry['speedup_vs_ar']:.2f}x [{ci[0]:.2f}-{ci[1]:.2f}] | {versus} | {tokens} | {rate} | "
                     f"{lossless} |")
    others = {name: entry for name, entry in methods.items() if name != "dytc"}
    best = max(others, key=lambda name: others[name]["tokens_per_s"])
    ratio = dytc["tokens_per_s"] / others[best]["tokens_per_s"]
    verdict = (f"dytc: {dytc['speedup_vs_ar']:.2f}x over ar, lossless: {dytc['lossless']}; the fastest other method "
               f"is {best} ({others[best]['speedup_vs_ar']:.2f}x), so dytc is {ratio:.2f}x it: "
               + ("faster than every other method." if ratio > 1 else "**not** faster than every other method."))
    return lines, verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sampling", action="store_true", help="also evaluate the bundle at temperature 0.7")
    options = parser.parse_args()
    started = time.perf_counter()
    commands = [["run", "pipeline", "--config", CONFIG]]
    run(commands[0])
    from drafttrain.config import load_recipe_config

    config = load_recipe_config(CONFIG)
    summary = json.loads((config.out / "pipeline.json").read_text())
    greedy = Path(summary["report"]).parent
    reports = {"greedy": json.loads((greedy / "report.json").read_text())}
    if options.sampling:
        out = config.out / "eval-t0.7"
        args = ["eval", "--config", str(config.eval.config), "--bundle", str(config.out / "bundle"), "--target",
                str(config.target), "--prompts", str(config.eval_prompts), "--temperature", "0.7", "--out", str(out),
                "--wandb", "disabled"] + [f"{key}={json.dumps(value)}" for key, value in config.eval.set.items()]
        commands.append(args)
        run(args)
        reports["t0.7"] = json.loads((out / "report.json").read_text())
    IMAGES.mkdir(parents=True, exist_ok=True)
    for plot in PLOTS:
        if (greedy / plot).is_file():
            shutil.copyfile(greedy / plot, IMAGES / plot)
    replace_section("bench_pipeline", "Pipeline on the reference target", section(summary, reports, commands,
                                                                               time.perf_counter() - started))
    return 0


def section(summary: dict, reports: dict, commands: list[list[str]], seconds: float) -> str:
    stages = ["| stage | ran or reused | seconds | directory |", "| --- | --- | ---: | --- |"]
    stages += [f"| {s['stage']} | {'reused' if s['cached'] else 'ran'} | {s['seconds']:.0f} | `{s['dir']}` |"
               for s in summary["stages"]]
    greedy = reports["greedy"]
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {greedy['device']} ({platform.python_version()}) by "
             f"`python scripts/bench_pipeline.py{' --sampling' if 't0.7' in reports else ''}` "
             f"({seconds / 60:.0f} min; stages reused from an earlier run count their original time), which ran:",
             "", "```", *("drafttrain " + shlex.join(command) for command in commands), "```", "",
             *stages, ""]
    for mode, report in reports.items():
        table, verdict = methods_table(report)
        lines += [f"Bundle `{summary['bundle']}` evaluated {mode}, {report['prompts']} prompts of "
                  f"prompts-dev.jsonl, {report['max_new_tokens']} new tokens:", "", *table, "", verdict, ""]
    lines += [f"![{plot}](img/pipeline/{plot})" for plot in PLOTS if (IMAGES / plot).is_file()]
    return "<!-- bench_pipeline:start -->\n" + "\n".join(lines) + "\n<!-- bench_pipeline:end -->"


if __name__ == "__main__":
    sys.exit(main())
