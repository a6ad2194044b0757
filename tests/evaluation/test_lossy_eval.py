"""Speculative cascades in `drafttrain eval`: one run per alpha, quality columns, the lossy curve;
and the quality measures (exact match, matching prefix, target log-likelihood) by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import runtime_model

from drafttrain.cli import main
from drafttrain.evaluation.quality import (
    TargetScorer,
    matching_prefix_length,
    measure,
    prefix_fraction,
)

REPO = Path(__file__).resolve().parents[2]
QUALITY_KEYS = {"exact_match_rate", "matching_prefix", "target_loglik"}


def test_eval_sweeps_alphas_and_reports_quality(tmp_path, tiny_target, tiny_draft, capsys):
    prompts = tmp_path / "prompts.jsonl"
    texts = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n", "class Point:\n"]
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out"
    code = main(["eval", "--config", str(REPO / "configs/tiny/eval.yaml"), "--target", str(tiny_target),
                 "--draft", str(tiny_draft), "--prompts", str(prompts), "--out", str(out), "--threads", "1",
                 "--methods", "ar,sd-draft,speccascade-chow,speccascade-token", "--alphas", "0,0.5"])
    assert code == 0, capsys.readouterr().err  # lossy runs that differ from ar do not fail the run
    report = json.loads((out / "report.json").read_text())
    methods = report["methods"]
    assert set(methods) == {"ar", "sd-draft", "speccascade-chow@0", "speccascade-chow@0.5",
                            "speccascade-token@0", "speccascade-token@0.5"}
    for name, entry in methods.items():
        assert QUALITY_KEYS <= set(entry), name
        assert entry["target_loglik"] < 0, name
    for rule in ("chow", "token"):
        exact = methods[f"speccascade-{rule}@0"]
        assert exact["deferral"] == {"rule": rule, "alpha": 0.0}
        assert exact["lossless"] is True and exact["exact_match_rate"] == 1.0 and exact["matching_prefix"] == 1.0
        assert exact["target_loglik"] == pytest.approx(methods["ar"]["target_loglik"])
        assert methods[f"speccascade-{rule}@0.5"]["lossless"] is None
    assert methods["ar"]["exact_match_rate"] == 1.0 and methods["ar"]["deferral"] is None
    # on these tiny models the token rule at 0.5 changes the output (the chow rule does not: max q < 0.5)
    assert methods["speccascade-token@0.5"]["exact_match_rate"] < 1.0
    markdown = (out / "report.md").read_text()
    assert "| speccascade-token@0.5 |" in markdown and "n/a (lossy)" in markdown and "target loglik" in markdown
    assert (out / "lossy-curve.png").stat().st_size > 1000
    assert (out / "speedup.png").exists()


def test_no_lossy_curve_without_speccascade(tmp_path, tiny_target):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "def add(a, b):\n"}) + "\n")
    out = tmp_path / "out"
    assert main(["eval", "--config", str(REPO / "configs/tiny/eval.yaml"), "--target", str(tiny_target),
                 "--prompts", str(prompts), "--out", str(out), "--methods", "sd-ngram", "--threads", "1"]) == 0
    entry = json.loads((out / "report.json").read_text())["methods"]["sd-ngram"]
    assert entry["exact_match_rate"] == 1.0  # against a greedy AR decode made after timing
    assert not (out / "lossy-curve.png").exists()


def test_matching_prefix_by_hand():
    assert matching_prefix_length([1, 2, 3, 4], [1, 2, 5, 4]) == 2
    assert prefix_fraction([1, 2, 3, 4], [1, 2, 5, 4]) == 0.5
    assert prefix_fraction([1, 2], [1, 2, 3, 4]) == 0.5  # a shorter output is not a match
    assert prefix_fraction([], []) == 1.0


def test_target_loglik_is_teacher_forced_and_memoized(one_thread):
    model = runtime_model(0, vocab=8)
    prompt, tokens = [1, 5, 2], [7, 3, 3, 0]
    with torch.inference_mode():
        sequence = torch.tensor(prompt + tokens)
        logprobs = model(sequence, torch.arange(len(sequence)), model.new_cache(), 0).log_softmax(-1)
    expected = sum(float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(tokens))
    scorer = TargetScorer(model)
    assert scorer.loglik([4], [2]) < 0  # a short sequence first: the cache must grow for the next
    assert scorer.loglik(prompt, tokens) == pytest.approx(expected, abs=1e-5)
    assert len(scorer.scores) == 2
    scorer.loglik(prompt, tokens)
    assert len(scorer.scores) == 2

    outputs = [tokens, [7, 3]]
    quality = measure(outputs, [prompt, prompt], scorer, references=[tokens, [7, 4]])
    assert quality.exact_match_rate == 0.5 and quality.matching_prefix == 0.75
    per_token = (expected + scorer.loglik(prompt, [7, 3])) / 6
    assert quality.target_loglik == pytest.approx(per_token, abs=1e-5)
    assert measure(outputs, [prompt, prompt], scorer, references=None).exact_match_rate is None
