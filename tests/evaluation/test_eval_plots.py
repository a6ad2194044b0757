"""The report's plots and what report.md says of them, from small synthetic reports; the
per-prompt rows and per-level depth counts that build_report puts in report.json."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from drafttrain.decoding.stats import RunStats
from drafttrain.evaluation.harness import MethodRuns
from drafttrain.evaluation.methods import MethodOutput
from drafttrain.evaluation.plots import (
    MIN_REACHED,
    _level_curves,
    _per_prompt_speeds,
    plot_files,
    speedup_rows,
    write_lossy_curve,
    write_plots,
)
from drafttrain.evaluation.report import build_report, report_markdown, write_report

PNG = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = ["speedup.png", "acceptance-by-depth.png", "tokens-per-prompt.png", "lossy-curve.png"]


def _levels(**rows: tuple[list[int], list[int], list[int]]) -> dict:
    """level=(drafted, accepted, reached) by depth, as RunStats.to_json writes them."""
    return {"drafted_by_level_depth": {level: list(row[0]) for level, row in rows.items()},
            "accepted_by_level_depth": {level: list(row[1]) for level, row in rows.items()},
            "reached_by_level_depth": {level: list(row[2]) for level, row in rows.items()}}


def _entry(speedup: float, ci: tuple[float, float] | None = None, lossless: bool | None = True,
           deferral: dict | None = None, stats: dict | None = None, seconds: list[float] | None = None,
           quality: float = 1.0) -> dict:
    seconds = seconds or [1.0 / speedup, 2.0 / speedup, 0.5 / speedup]
    return {"tokens_per_s": 100.0 * speedup, "speedup_vs_ar": speedup, "speedup_vs_hf": None,
            "speedup_ci95": list(ci or (speedup, speedup)), "mean_accepted_tokens": None, "acceptance_rate": None,
            "target_forwards": None, "new_tokens": 300, "lossless": lossless, "seconds": sum(seconds),
            "tokens_per_s_decode": None, "stats": stats, "exact_match_rate": quality, "matching_prefix": quality,
            "target_loglik": -1.0 - (1.0 - quality), "deferral": deferral,
            "per_prompt": [{"id": f"p{i}", "tokens": 100, "seconds": s} for i, s in enumerate(seconds)]}


def _report() -> dict:
    return {"device": "cpu test", "target": "/models/tiny", "prompts": 3, "max_new_tokens": 100, "temperature": 0.0,
            "command": "drafttrain eval ...", "methods": {
                "ar": _entry(1.0, stats=_levels(), seconds=[1.0, 2.0, 0.5]),
                "hf": _entry(0.7, (0.6, 0.8), stats=None),
                "sd-ngram": _entry(2.0, (1.5, 2.6), stats=_levels(ngram=([20, 15, 10, 3], [10, 6, 2, 1],
                                                                         [20, 10, 5, 2]))),
                "dytc": _entry(2.2, (1.9, 2.5), stats=_levels(draft0=([30, 12], [18, 3], [30, 4]),
                                                              ngram=([6, 6, 6], [6, 6, 5], [6, 6, 6]),
                                                              self0=([4], [2], [4]))),
                "speccascade-diff@0": _entry(0.9, (0.8, 1.0), deferral={"rule": "diff", "alpha": 0.0},
                                             stats=_levels(draft=([9, 9], [5, 3], [9, 5]))),
                "speccascade-diff@0.5": _entry(1.4, (1.1, 1.7), lossless=None, quality=0.2,
                                               deferral={"rule": "diff", "alpha": 0.5},
                                               stats=_levels(draft=([9, 9], [8, 7], [9, 8]))),
                "oracle": _entry(3.5, (3.0, 4.0)),
                "broken": _entry(1.1, lossless=False),
            }}


def test_every_listed_plot_is_written_as_a_png(tmp_path):
    report = _report()
    assert [name for name, _ in plot_files(report)] == ALL_PLOTS
    paths = write_plots(report, tmp_path)
    assert paths == [tmp_path / name for name in ALL_PLOTS]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ALL_PLOTS)  # no temporary files left


def test_plots_without_data_are_neither_written_nor_listed(tmp_path):
    report = _report()
    for entry in report["methods"].values():
        entry.pop("per_prompt")  # an older report
        entry["stats"] = None
        entry["deferral"] = None
    assert [name for name, _ in plot_files(report)] == ["speedup.png"]
    assert write_plots(report, tmp_path) == [tmp_path / "speedup.png"]
    assert write_lossy_curve(report, tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speedup.png"]


def test_speedup_plot_without_ar_shows_tokens_per_s(tmp_path):
    report = _report()
    del report["methods"]["ar"]
    for entry in report["methods"].values():
        entry["speedup_vs_ar"] = entry["speedup_ci95"] = None
    rows = speedup_rows(report)
    assert [row[3] for row in rows[:2]] == ["oracle", "dytc"]
    assert [row[:3] for row in rows[:2]] == [pytest.approx((350.0,) * 3), pytest.approx((220.0,) * 3)]
    assert write_plots(report, tmp_path)[0].read_bytes().startswith(PNG)


def test_speedup_rows_are_fastest_first_and_tell_lossy_from_lossless():
    rows = speedup_rows(_report())
    assert [row[3] for row in rows] == ["oracle", "dytc", "sd-ngram", "speccascade-diff@0.5", "broken", "ar",
                                       "speccascade-diff@0", "hf"]
    categories = {row[3]: row[4] for row in rows}
    assert categories == {"oracle": "bound", "dytc": "lossless", "sd-ngram": "lossless",
                          "speccascade-diff@0.5": "lossy", "broken": "broken", "ar": "ar",
                          "speccascade-diff@0": "lossless", "hf": "lossless"}
    assert rows[2][:3] == (2.0, 1.5, 2.6)


def test_acceptance_curves_are_conditional_rates_per_level_without_thin_points():
    curves = _level_curves(_report())
    assert list(curves) == ["draft", "draft0", "ngram"]  # draft levels first, n-gram last; self0 too thin
    assert set(curves["ngram"]) == {"sd-ngram", "dytc"}  # no hf (no engine stats), no ar (drafted nothing)
    depths, rates, counts = curves["ngram"]["sd-ngram"]
    assert depths == [1, 2, 3] and counts == [20, 10, 5]  # depth 4 reached only twice: left out
    assert rates == pytest.approx([10 / 20, 6 / 10, 2 / 5])
    assert curves["draft0"]["dytc"] == ([1], [18 / 30], [30])  # depth 2: 4 reached < MIN_REACHED
    assert MIN_REACHED == 5
    assert curves["draft"]["speccascade-diff@0.5"][1] == pytest.approx([8 / 9, 7 / 8])


def test_per_prompt_speeds_are_tokens_over_seconds_in_prompt_order():
    speeds = _per_prompt_speeds(_report())
    assert speeds["ar"] == [("p0", 100.0), ("p1", 50.0), ("p2", 200.0)]
    assert speeds["sd-ngram"] == [("p0", 200.0), ("p1", 100.0), ("p2", 400.0)]
    report = _report()
    report["methods"]["hf"]["per_prompt"] = report["methods"]["hf"]["per_prompt"][:2]  # not the same prompts
    assert _per_prompt_speeds(report) == {}


def test_report_md_links_exactly_the_plots_written(tmp_path):
    report = _report()
    write_report(report, tmp_path)
    written = {path.name for path in write_plots(report, tmp_path)}
    text = (tmp_path / "report.md").read_text()
    assert set(re.findall(r"\]\(([^)]+\.png)\)", text)) == written == set(ALL_PLOTS)
    for name, caption in plot_files(report):
        assert f"- [{name}]({name}): {caption}" in text
        assert "\n" not in caption
    assert text.index("| sd-ngram |") < text.index("## Plots")
    for entry in report["methods"].values():
        entry.pop("per_prompt")
    assert "tokens-per-prompt.png" not in report_markdown(report)


def _output(tokens: int, seconds: float, steps: list[tuple[list[int], list[int]]]) -> MethodOutput:
    stats = RunStats()
    for depths, path in steps:
        stats.record_step("d", depths, path)
    return MethodOutput([7] * tokens, seconds, 0.1, stats)


def test_build_report_carries_per_prompt_rows_and_level_depth_counts():
    config = SimpleNamespace(target="/models/tiny", max_new_tokens=8, temperature=0.0)
    runs = {"ar": MethodRuns([MethodOutput([7] * 8, 2.0, 0.1, RunStats()), MethodOutput([7] * 5, 1.0, 0.1, RunStats())]),
            "sd": MethodRuns([_output(8, 1.0, [([1, 2, 3], [0, 1]), ([1, 2, 3], [])]),
                              _output(5, 0.25, [([1, 2], [0, 1])])])}
    report = build_report(config, "cpu", 2, runs, "drafttrain eval", prompt_ids=["a", "b"])
    sd = report["methods"]["sd"]
    assert sd["per_prompt"] == [{"id": "a", "tokens": 8, "seconds": 1.0}, {"id": "b", "tokens": 5, "seconds": 0.25}]
    assert report["methods"]["ar"]["per_prompt"][1] == {"id": "b", "tokens": 5, "seconds": 1.0}
    assert sd["stats"]["drafted_by_level_depth"] == {"d": [3, 3, 2]}  # summed over the two prompts
    assert sd["stats"]["accepted_by_level_depth"] == {"d": [2, 2, 0]}
    assert sd["stats"]["reached_by_level_depth"] == {"d": [3, 2, 1]}
    without_ids = build_report(config, "cpu", 2, runs, "drafttrain eval")
    assert [row["id"] for row in without_ids["methods"]["sd"]["per_prompt"]] == [None, None]
    with pytest.raises(ValueError, match="3 prompt ids for 2 runs"):
        build_report(config, "cpu", 2, runs, "drafttrain eval", prompt_ids=["a", "b", "c"])
