"""Search self-draft levels of a target: which sublayers to skip, which layer groups to quantize.

    drafttrain search --config configs/tiny/search.yaml target=DIR prompts=CALIBRATION.jsonl
    drafttrain run search --config ...            (the same)

Runs (or resumes, by study name) an Optuna study on calibration prompts, then writes levels.json
(each level: its spec, acceptance, cost ratio and expected or measured speedup), the resolved
config and plots to `out`. Several workers, here or on other machines, share one study through
its storage URL (SQLite by default, PostgreSQL for many machines). The config, every scored trial,
the levels (summary) and levels.json + plots (an artifact of type "levels") are logged to wandb,
offline in out/wandb unless `wandb=online` (see drafttrain.tracking).
"""

from __future__ import annotations

import sys
from pathlib import Path

from drafttrain.search.config import SearchConfig
from drafttrain.tracking import tracked_run

CONFIG = SearchConfig


def main(config: SearchConfig) -> None:
    from drafttrain.search.study import Level, finished_trials, search

    config.require_inputs()
    with tracked_run("search", config, Path(config.out), mode=getattr(config, "wandb", "offline")) as run:
        result = search(config)
        print(f"{len(result.levels)} level(s) written to {result.levels_path}")
        for level in result.levels:
            print(f"  trial {level.trial}: cost ratio {level.cost_ratio:.2f}, acceptance {level.acceptance:.2f}, "
                  f"speedup {level.speedup:.2f}, spec {level.spec.to_json()}")
        for plot in result.plots:
            print(f"plot: {plot}")

        # ---- wandb: one history row per scored trial, the levels as summary, the outputs as an artifact
        for trial in result.study.get_trials(deepcopy=False):
            scored = Level.from_trial(trial)
            if scored is not None:
                run.log_metrics({"trial": trial.number, "acceptance": scored.acceptance,
                                 "cost_ratio": scored.cost_ratio, "speedup": scored.speedup})
        best = max(result.levels, key=lambda level: level.speedup, default=None)
        run.log_summary({"finished_trials": finished_trials(result.study),
                         "levels": [level.to_json() for level in result.levels],
                         "best": best.to_json() if best else None})
        run.log_artifact([result.levels_path, *result.plots], f"levels-{config.study}", "levels")


if __name__ == "__main__":
    from drafttrain.cli import main as cli

    sys.exit(cli(["run", "search", *sys.argv[1:]]))
