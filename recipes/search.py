"""Search self-draft levels of a target: which sublayers to skip, which layer groups to quantize.

    drafttrain search --config configs/tiny/search.yaml target=DIR prompts=CALIBRATION.jsonl
    drafttrain run search --config ...            (the same)

Runs (or resumes, by study name) an Optuna study on calibration prompts, then writes levels.json
(each level: its spec, acceptance, cost ratio and expected or measured speedup), the resolved
config and plots to `out`. Several workers, here or on other machines, share one study through
its storage URL (SQLite by default, PostgreSQL for many machines).
"""

from __future__ import annotations

import sys

from drafttrain.search.config import SearchConfig

CONFIG = SearchConfig


def main(config: SearchConfig) -> None:
    from drafttrain.search.study import search

    result = search(config)
    print(f"{len(result.levels)} level(s) written to {result.levels_path}")
    for level in result.levels:
        print(f"  trial {level.trial}: cost ratio {level.cost_ratio:.2f}, acceptance {level.acceptance:.2f}, "
              f"speedup {level.speedup:.2f}, spec {level.spec.to_json()}")
    for plot in result.plots:
        print(f"plot: {plot}")


if __name__ == "__main__":
    from drafttrain.cli import main as cli

    sys.exit(cli(["run", "search", *sys.argv[1:]]))
