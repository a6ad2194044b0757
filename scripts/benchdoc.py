"""docs/benchmarks.md sections owned by benchmark scripts, between <!-- NAME:start/end --> markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(name: str, heading: str, text: str) -> None:
    """Put `text` (which starts and ends with the markers) in place of the old section, or append it."""
    start, end = markers(name)
    current = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if start in current:
        head, rest = current.split(start, 1)
        current = head + text + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + f"\n\n## {heading}\n\n" + text + "\n"
    DOC.write_text(current)


def eval_runs_section(name: str, script: str, runs: list[tuple[list[str], Path]]) -> str:
    """A section of `drafttrain eval` runs: for each (args, out) the command, then its report's table."""
    import datetime
    import json
    import shlex

    from drafttrain.evaluation.report import report_markdown

    start, end = markers(name)
    lines = [start, f"Measured {datetime.date.today().isoformat()} by `python {script}` (run from the repository "
             "root).", ""]
    for args, out in runs:
        report = json.loads((out / "report.json").read_text())
        table = report_markdown(report).split("| method", 1)[1].split("\n\n", 1)[0]  # the table, not the plots
        lines += ["```", f"drafttrain {shlex.join(args)}", "```", "", f"device: {report['device']}; "
                  f"prompts: {report['prompts']}; temperature: {report['temperature']}", "", "| method" + table, ""]
    return "\n".join(lines + [end])


def run_eval_section(name: str, heading: str, script: str, runs: list[tuple[list[str], Path]],
                     doc_only: bool = False) -> int:
    """Run each `drafttrain eval` of `runs` (unless `doc_only`), then write their section; the exit status."""
    from drafttrain.cli import main as drafttrain_main

    for args, _ in runs:
        if not doc_only and drafttrain_main(args) != 0:
            return 1
    replace_section(name, heading, eval_runs_section(name, script, runs))
    print(f"updated {DOC}")
    return 0
