"""scripts/bench_schedule.py's pure parts: DyTC's tuning candidates (valid scheduler files covering the
level sets and tree sizes) and the table that describes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import bench_schedule

from drafttrain.bundle.scheduler import SchedulerSpec


def test_dytc_candidates_are_loadable_scheduler_files_over_every_level_set_and_size(tmp_path):
    options = bench_schedule.dytc_candidates(tmp_path / "candidates")
    seen = []
    for option in options:
        spec = SchedulerSpec.load(option["scheduler"])  # validated as `drafttrain eval --scheduler` reads it
        assert spec.name == "dytc"
        seen.append((tuple(spec.dytc.levels), spec.dytc.max_depth, spec.dytc.budget_factor, spec.dytc.alternatives))
    # alternatives (another level's chain beside a node) are tried wherever there is another level
    assert sorted(seen) == sorted((tuple(levels), depth, factor, alternatives)
                                  for levels in bench_schedule.DYTC_LEVEL_SETS
                                  for depth, factor in bench_schedule.DYTC_SIZES
                                  for alternatives in ((False, True) if len(levels) != 1 else (False,)))


def test_the_tuning_table_describes_a_scheduler_file_by_its_settings(tmp_path):
    option = bench_schedule.dytc_candidates(tmp_path)[0]
    described = bench_schedule.described(option)
    assert described == {"levels": "all", "max_depth": bench_schedule.DYTC_SIZES[0][0],
                         "budget_factor": bench_schedule.DYTC_SIZES[0][1], "alternatives": False}
    assert bench_schedule.described({"k_ngram": 8}) == {"k_ngram": 8}  # a baseline's settings as they are
    lines = bench_schedule.tuning_lines({"dytc": {"best": option, "best_speedup": 2.0, "tried": [{}, {}]}})
    assert lines[-1] == f"| dytc | `{json.dumps(described)}` | 2.00x | 2 |"


def test_speedups_are_over_ar_on_the_same_prompts():
    totals = {("ar", "{}"): [100, 1.0], ("sd-ngram", '{"k_ngram": 8}'): [100, 0.5], ("dytc", "a"): [50, 0.1]}
    speedup = bench_schedule.speedups(totals, ("ar", "{}"))
    assert speedup == {("ar", "{}"): 1.0, ("sd-ngram", '{"k_ngram": 8}'): 2.0, ("dytc", "a"): 5.0}


def test_finalists_are_the_fastest_candidates_of_each_method():
    speedup = {("dytc", "a"): 2.0, ("dytc", "b"): 2.2, ("dytc", "c"): 1.9, ("sd-ngram", "4"): 1.5,
               ("sd-ngram", "8"): 1.7, ("sd-ngram", "12"): 1.6, ("tree", "x"): 1.1}
    chosen = bench_schedule.finalists(speedup, count=2)
    assert sorted(chosen) == sorted([("dytc", "b"), ("dytc", "a"), ("sd-ngram", "8"), ("sd-ngram", "12"),
                                     ("tree", "x")])
