"""`drafttrain eval` end to end on tiny models: report shape, losslessness check, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drafttrain.cli import main
from drafttrain.evaluation import methods as methods_module
from drafttrain.evaluation.methods import METHODS, MethodOutput, MethodSpec

REPO = Path(__file__).resolve().parents[2]
REPORT_KEYS = {"tokens_per_s", "speedup_vs_ar", "speedup_vs_hf", "speedup_ci95", "mean_accepted_tokens",
               "acceptance_rate", "target_forwards", "new_tokens", "lossless"}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    texts = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n", "class Point:\n"]
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _eval(tmp_path, tiny_target, prompts, *extra) -> tuple[int, dict]:
    out = tmp_path / "out"
    code = main(["eval", "--config", str(REPO / "configs/tiny/eval.yaml"), "--target", str(tiny_target),
                 "--prompts", str(prompts), "--out", str(out), *extra])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return code, report


def test_greedy_eval_writes_the_report_shape(tmp_path, tiny_target, tiny_draft, prompts):
    code, report = _eval(tmp_path, tiny_target, prompts, "--methods", "ar,hf,hf-pld,hf-assisted,sd-ngram,sd-self,sd-draft",
                         "--draft", str(tiny_draft), "--tree", "2,1")
    assert code == 0
    assert report["prompts"] == 3 and report["max_new_tokens"] == 24 and report["temperature"] == 0.0
    assert set(report["methods"]) == {"ar", "hf", "hf-pld", "hf-assisted", "sd-ngram", "sd-self", "sd-draft"}
    for name, entry in report["methods"].items():
        assert REPORT_KEYS <= set(entry), name
        assert entry["lossless"] is True, name
        assert entry["new_tokens"] == report["methods"]["ar"]["new_tokens"]
        low, high = entry["speedup_ci95"]
        assert low <= entry["speedup_vs_ar"] <= high or abs(low - high) < 1e-9
    assert report["methods"]["ar"]["speedup_vs_ar"] == 1.0
    assert report["methods"]["ar"]["mean_accepted_tokens"] == 1.0
    assert report["methods"]["hf"]["speedup_vs_hf"] == 1.0
    assert report["methods"]["hf"]["target_forwards"] is None
    assert report["methods"]["sd-self"]["target_forwards"] < report["methods"]["ar"]["target_forwards"]
    assert (tmp_path / "out" / "speedup.png").stat().st_size > 1000
    assert "| sd-self |" in (tmp_path / "out" / "report.md").read_text()
    for name, entry in report["methods"].items():  # per prompt, in prompt order (ids once the CLI passes them)
        rows = entry["per_prompt"]
        assert [row["id"] in (None, f"p{i}") for i, row in enumerate(rows)] == [True] * 3, name
        assert sum(row["tokens"] for row in rows) == entry["new_tokens"]
        assert sum(row["seconds"] for row in rows) == pytest.approx(entry["seconds"])
    levels = report["methods"]["sd-self"]["stats"]["accepted_by_level_depth"]
    assert sum(sum(row) for row in levels.values()) == sum(report["methods"]["sd-self"]["stats"]["accepted"].values())
    for plot in ("acceptance-by-depth.png", "tokens-per-prompt.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 1000
        assert f"[{plot}]({plot})" in (tmp_path / "out" / "report.md").read_text()
    assert report["command"].startswith("drafttrain eval --config ") and "--tree 2,1" in report["command"]


def test_sampling_eval_reports_lossless_as_null(tmp_path, tiny_target, prompts):
    code, report = _eval(tmp_path, tiny_target, prompts, "--methods", "ar,hf,sd-self", "--temperature", "0.7",
                         "--top-k", "20")
    assert code == 0
    assert report["temperature"] == 0.7
    assert all(entry["lossless"] is None for entry in report["methods"].values())


def test_a_method_that_changes_the_output_fails_the_run(tmp_path, tiny_target, prompts, monkeypatch, capsys):
    class Broken:
        def __init__(self, context):
            self.inner = METHODS["ar"].build(context)

        def run(self, prompt_ids, seed):
            output = self.inner.run(prompt_ids, seed)
            return MethodOutput(output.tokens[:-1] + [output.tokens[-1] + 1], output.seconds, None, None)

    monkeypatch.setitem(methods_module.METHODS, "broken", MethodSpec(Broken, (), True, "test only"))
    code, report = _eval(tmp_path, tiny_target, prompts, "--methods", "ar,broken")
    assert code == 1
    assert report["methods"]["broken"]["lossless"] is False
    assert "not lossless" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--methods", "ar,warp-drive"], "unknown method(s) ['warp-drive']"),
    (["--methods", "ar,sd-draft"], "method sd-draft needs `draft`; set --draft"),
    (["--k-ngram", "0"], "k_ngram=0 is invalid"),
    (["--max-new-tokens", "1000"], "exceeds the target's window of 256 tokens"),
    (["--self-spec", "{not json"], "is not valid JSON"),
    (["--self-spec", '{"skip_mlp": [99]}'], "names layers [99]"),
    (["--dtype", "float8"], "dtype"),
    (["unknown_key=3"], "unknown_key"),
])
def test_bad_input_is_a_clear_error(tmp_path, tiny_target, prompts, capsys, args, message):
    code, _ = _eval(tmp_path, tiny_target, prompts, *args)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()


def test_missing_target_and_bad_prompt_files(tmp_path, tiny_target, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x"}\n{"id": "b"}\n')
    assert main(["eval", "--target", str(tiny_target), "--prompts", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert main(["eval", "--target", str(tmp_path / "nope"), "--prompts", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["eval", "--prompts", str(bad)]) == 2
    assert "`target` is not set" in capsys.readouterr().err


def test_list_methods_names_every_method(capsys):
    assert main(["eval", "--list-methods"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert listed == set(METHODS)


def test_tune_row_kernels_times_the_target_before_the_run(tmp_path, tiny_target, prompts, monkeypatch):
    import drafttrain.calibration.latency as latency

    tuned = []
    real = latency.tune_row_kernels

    def spy(model, call, counts, context, **kwargs):
        tuned.append(list(counts))
        return real(model, call, counts, context, repeats=1, warmup=0)

    monkeypatch.setattr(latency, "tune_row_kernels", spy)
    code, report = _eval(tmp_path, tiny_target, prompts, "--methods", "ar,sd-ngram", "--tune-row-kernels", "3")
    assert code == 0 and tuned == [[1, 2, 3]]
    assert report["methods"]["sd-ngram"]["lossless"] is True
