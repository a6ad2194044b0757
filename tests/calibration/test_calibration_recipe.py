"""`drafttrain run calibrate` end to end on a tiny cascade: outputs, reuse of finished traces, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CORPUS

from drafttrain.calibration.acceptance import AcceptancePredictors
from drafttrain.calibration.latency import LatencyProfile
from drafttrain.calibration.traces import Traces
from drafttrain.cli import main
from drafttrain.runtime.row_kernels import LARGE_COUNTS

REPO = Path(__file__).parents[2]


def write_prompts(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"c{i}", "prompt": text}) + "\n" for i, text in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_target, tiny_draft):
    root = tmp_path_factory.mktemp("calibrate")
    prompts = write_prompts(root / "calibration.jsonl", TINY_CORPUS[:6])
    out = root / "out"
    args = ["run", "calibrate", "--config", str(REPO / "configs/tiny/calibrate.yaml"), f"target={tiny_target}",
            f"prompts={prompts}", f"drafts=[{tiny_draft}]", f"out={out}", "threads=1"]
    assert main(args) == 0
    return out, args


def test_calibrate_writes_every_output(calibrated):
    out, _ = calibrated
    report = json.loads((out / "report.json").read_text())
    assert set(report["levels"]) == {"draft0", "self0", "self1", "ngram"}
    predictors = AcceptancePredictors.load(out / "predictors.json")
    assert set(predictors.modes["greedy"]) == {"draft0", "self0", "self1", "ngram"}
    assert predictors.modes["greedy"]["ngram"].feature == "match_length"
    assert predictors.modes["greedy"]["draft0"].feature == "q_token"
    profile = LatencyProfile.load(out / "latency.json")
    assert set(profile.models) == {"target", "draft0", "self0", "self1", "ngram"}
    assert profile.predict("target", 8, 64) > 0 and profile.predict("target", 1, 64) > 0
    largest = profile.grid["token_counts"][-1]  # the verify curve is measured at every count up to it
    assert len(profile.models["target"].shape) == largest and profile.grid["shape_token_counts"] == [1, largest]
    assert not profile.models["draft0"].shape
    plans = report["latency"]["row_kernels"]  # tuned for the model levels; which kernels win is the machine's
    assert set(plans) <= {"target", "draft0"}
    assert {level: {int(rows): kernel for rows, kernel in plan.items()} for level, plan in plans.items()} \
        == profile.row_kernels
    assert all(1 <= rows <= largest or rows in LARGE_COUNTS for plan in profile.row_kernels.values() for rows in plan)
    traces = Traces.load_csv(out / "traces.csv")
    assert len(traces) == report["trace_rows"] and set(traces.levels()) == set(report["levels"])
    for level, scores in report["acceptance"]["greedy"].items():
        assert 0.0 <= scores["isotonic"]["ece"] <= 1.0, level
        assert scores["chain"][0]["j"] == 1
    assert set(report["latency"]["mape"]) == set(profile.models)
    assert all(Path(plot).is_file() for plot in report["plots"]) and report["plots"]
    assert "ECE isotonic" in (out / "report.md").read_text()


def test_a_rerun_reuses_finished_trace_parts(calibrated, capsys):
    out, args = calibrated
    before = Traces.load_csv(out / "traces.csv")
    assert main(args + ["latency=false"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused") == 4
    after = Traces.load_csv(out / "traces.csv")
    np.testing.assert_array_equal(before["outcome"], after["outcome"])


def test_changed_settings_re_record_the_traces(calibrated, capsys, tmp_path):
    out, args = calibrated
    rerun = tmp_path / "rerun"
    (rerun / "traces").mkdir(parents=True)
    for part in (out / "traces").iterdir():
        (rerun / "traces" / part.name).write_bytes(part.read_bytes())
    assert main([*args, f"out={rerun}", "latency=false", "k=3", "self_specs=[]", "drafts=[]"]) == 0
    assert "reused" not in capsys.readouterr().out


def test_calibration_prompts_that_are_eval_prompts_are_refused(tiny_target, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "calibration.jsonl", TINY_CORPUS[:6])
    code = main(["run", "calibrate", "--config", str(REPO / "configs/tiny/calibrate.yaml"), f"target={tiny_target}",
                 f"prompts={prompts}", f"eval_prompts={prompts}", f"out={tmp_path / 'out'}"])
    assert code == 2
    assert "also appear in the evaluation prompts" in capsys.readouterr().err
    assert not (tmp_path / "out" / "traces").exists()


def test_a_cascade_without_levels_is_refused(tiny_target, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "calibration.jsonl", TINY_CORPUS[:6])
    code = main(["run", "calibrate", "--config", str(REPO / "configs/tiny/calibrate.yaml"), f"target={tiny_target}",
                 f"prompts={prompts}", "ngram=false", "self_specs=[]", f"out={tmp_path / 'out'}"])
    assert code == 2 and "no draft level" in capsys.readouterr().err


def test_tuned_counts_add_the_large_buckets_that_fit_the_window():
    from recipes.calibrate import tuned_counts

    assert tuned_counts(4, 100, 300) == [1, 2, 3, 4, 96, 128, 192]
    assert tuned_counts(64, 400, 1024) == [*range(1, 65), 96, 128, 192, 256, 384, 512]
