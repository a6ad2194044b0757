"""Evaluate decoding methods side by side: speed, tokens per forward, losslessness, quality.

    drafttrain eval --config configs/pycode/eval.yaml [key=value ...]
    drafttrain eval --bundle BUNDLE --target DIR --prompts FILE --methods ar,hf,levels,dytc

Runs every method on every prompt (interleaved per prompt), then writes report.json, report.md
and the plots to `out`, and logs them to wandb (offline by default). Returns the report; a
method whose greedy output differs from `ar`'s is marked `lossless: false`.
"""

from __future__ import annotations

import sys

from drafttrain.evaluation.config import EvalConfig

CONFIG = EvalConfig


def main(config: EvalConfig, command: str | None = None) -> dict:
    import shlex

    from drafttrain.cli import device_name
    from drafttrain.evaluation.harness import run_methods
    from drafttrain.evaluation.plots import write_plots
    from drafttrain.evaluation.report import build_report, report_markdown, write_report
    from drafttrain.tracking import tracked_run

    context, prompts, runs = run_methods(config, progress=sys.stderr.isatty())
    command = command or shlex.join(sys.argv)
    report = build_report(config, device_name(config.device, config.threads), len(prompts), runs, command,
                          prompt_ids=[prompt.id for prompt in prompts])
    verifier = context.decoder.verifier if "decoder" in vars(context) else None
    if verifier is not None:  # compiling and graph capture of the target's forwards, not in any method's time
        report["setup_seconds"] = verifier.setup_seconds
    write_report(report, config.out)
    write_plots(report, config.out)
    print(report_markdown(report))
    print(f"report written to {config.out}/report.json, report.md and plots")
    with tracked_run("eval", config, config.out, config.wandb) as run:
        run.log_summary({f"{name}/{key}": entry[key] for name, entry in report["methods"].items()
                         for key in ("tokens_per_s", "speedup_vs_ar", "mean_accepted_tokens") if entry.get(key)})
        run.log_files(sorted(config.out.glob("report.*")) + sorted(config.out.glob("*.png")))
    return report


if __name__ == "__main__":
    from drafttrain.cli import main as cli

    sys.exit(cli(["run", "eval", *sys.argv[1:]]))
