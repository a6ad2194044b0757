"""`drafttrain eval` with dytc and hf-heuristic on a tiny calibrated cascade: lossless, per-level stats."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_CORPUS

from drafttrain.cli import main

REPO = Path(__file__).parents[2]


def test_eval_runs_dytc_from_calibrated_predictors(tmp_path, tiny_target, tiny_draft, capsys):
    levels = tmp_path / "levels.json"
    specs = [{"skip_attn": [], "skip_mlp": [1], "act_quant": {}}, {"skip_attn": [1], "skip_mlp": [1], "act_quant": {}}]
    levels.write_text(json.dumps({"levels": [{"spec": spec, "acceptance": 0.5, "cost_ratio": 0.7, "speedup": 1.0,
                                              "trial": i} for i, spec in enumerate(specs)]}))
    prompts = tmp_path / "calibration.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"c{i}", "prompt": t}) + "\n" for i, t in enumerate(TINY_CORPUS[:6])))
    calibrated = tmp_path / "calibrated"
    assert main(["run", "calibrate", "--config", str(REPO / "configs/tiny/calibrate.yaml"), f"target={tiny_target}",
                 f"prompts={prompts}", f"drafts=[{tiny_draft}]", f"levels={levels}", "self_specs=[]",
                 f"out={calibrated}", "threads=1"]) == 0
    eval_prompts = tmp_path / "eval.jsonl"
    eval_prompts.write_text("".join(json.dumps({"id": f"e{i}", "prompt": t}) + "\n"
                                    for i, t in enumerate(TINY_CORPUS[6:9])))
    out = tmp_path / "eval"
    code = main(["eval", "--target", str(tiny_target), "--prompts", str(eval_prompts), "--methods",
                 "ar,dytc,hf-heuristic,oracle", "--draft", str(tiny_draft), "--levels", str(levels), "--predictors",
                 str(calibrated / "predictors.json"), "--latency", str(calibrated / "latency.json"),
                 "--max-new-tokens", "24", "--out", str(out), "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["methods"]["dytc"]["lossless"] is True
    assert report["methods"]["hf-heuristic"]["lossless"] is True
    oracle = report["methods"]["oracle"]  # a bound: ar's output, scheduled in hindsight
    assert oracle["lossless"] is True and oracle["mean_accepted_tokens"] >= 1.0
    assert oracle["stats"]["drafted"] == oracle["stats"]["accepted"]
    drafted = report["methods"]["dytc"]["stats"]["drafted"]  # per level: the trees mix levels
    assert drafted and set(drafted) <= {"draft0", "self0", "self1", "ngram"} and sum(drafted.values()) > 0
    # every level's steps and the target's verify padded to fixed shapes: the same drafts and tokens
    static_out = tmp_path / "eval-static"
    assert main(["eval", "--target", str(tiny_target), "--prompts", str(eval_prompts), "--methods",
                 "ar,dytc,csd,tree", "--draft", str(tiny_draft), "--levels", str(levels), "--predictors",
                 str(calibrated / "predictors.json"), "--latency", str(calibrated / "latency.json"),
                 "--max-new-tokens", "24", "--out", str(static_out), "--threads", "1", "--verify", "static"]) == 0
    static = json.loads((static_out / "report.json").read_text())["methods"]
    assert all(static[name]["lossless"] for name in ("dytc", "csd", "tree"))
    for key in ("drafted", "accepted"):
        assert static["dytc"]["stats"][key] == report["methods"]["dytc"]["stats"][key]
    # a tuned scheduler.json: DyTC over the n-gram drafter alone, deeper trees; the oracle goes as deep
    scheduler = tmp_path / "scheduler.json"
    scheduler.write_text(json.dumps({"name": "dytc", "dytc": {"levels": ["ngram"], "max_depth": 24}}))
    tuned_out = tmp_path / "eval-tuned"
    assert main(["eval", "--target", str(tiny_target), "--prompts", str(eval_prompts), "--methods", "ar,dytc,oracle",
                 "--draft", str(tiny_draft), "--levels", str(levels), "--predictors", str(calibrated / "predictors.json"),
                 "--latency", str(calibrated / "latency.json"), "--scheduler", str(scheduler), "--max-new-tokens", "24",
                 "--out", str(tuned_out), "--threads", "1"]) == 0
    tuned = json.loads((tuned_out / "report.json").read_text())["methods"]
    assert tuned["dytc"]["lossless"] is True and set(tuned["dytc"]["stats"]["drafted"]) <= {"ngram"}
    assert set(tuned["oracle"]["stats"]["drafted"]) <= {"draft0", "self0", "self1", "ngram"}


def test_the_oracle_is_as_deep_as_the_scheduler_lets_dytc_grow(tmp_path):
    from types import SimpleNamespace

    from drafttrain.evaluation.methods import ORACLE_DEPTH, oracle_depth

    scheduler = tmp_path / "scheduler.json"
    scheduler.write_text(json.dumps({"dytc": {"max_depth": 40}}))
    assert oracle_depth(SimpleNamespace(config=SimpleNamespace(scheduler=scheduler))) == 40
    assert oracle_depth(SimpleNamespace(config=SimpleNamespace(scheduler=None))) == ORACLE_DEPTH
