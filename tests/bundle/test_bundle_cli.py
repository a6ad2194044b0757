"""`drafttrain export`, `generate` and `eval --bundle` on a tiny calibrated cascade."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import TINY_CORPUS
from test_bundle_roundtrip import calibrated  # noqa: F401  (module fixture)

from drafttrain.bundle.generate import TextStream
from drafttrain.cli import main

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, calibrated, tiny_target, tiny_draft) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("exported") / "bundle"
    assert main(["export", "--config", str(REPO / "configs/tiny/export.yaml"), "--target", str(tiny_target),
                 "--drafts", str(tiny_draft), "--levels", str(calibrated["levels"]), "--predictors",
                 str(calibrated["predictors"]), "--latency", str(calibrated["latency"]), "--out", str(out),
                 "--wandb", "disabled", "scheduler.k.draft0=2"]) == 0
    return out


def test_export_cli_writes_a_bundle_with_the_configured_scheduler(exported):
    scheduler = json.loads((exported / "scheduler.json").read_text())
    assert scheduler["name"] == "dytc" and scheduler["k"] == {"ngram": 4, "draft0": 2}
    assert scheduler["dytc"]["max_depth"] == 8


def test_generate_streams_the_targets_greedy_text(exported, tiny_target, capsys):
    assert main(["generate", "--bundle", str(exported), "--target", str(tiny_target), "--prompt", TINY_CORPUS[0],
                 "--max-new-tokens", "12"]) == 0
    captured = capsys.readouterr()
    from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
    from drafttrain.runtime import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_target)
    reference = SpeculativeDecoder(load_model(tiny_target), tokenizer).generate(
        tokenizer(TINY_CORPUS[0]).input_ids, None, GenerationConfig(max_new_tokens=12))
    assert captured.out == tokenizer.decode(reference.tokens) + "\n"
    assert "tokens per target forward, scheduler dytc" in captured.err


def test_generate_over_a_prompt_file_writes_jsonl(exported, tiny_target, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t}) + "\n" for i, t in enumerate(TINY_CORPUS[:2])))
    out = tmp_path / "generations.jsonl"
    assert main(["generate", "--bundle", str(exported), "--target", str(tiny_target), "--prompts", str(prompts),
                 "--max-new-tokens", "8", "--out", str(out), "--stats", "false"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1"] and all(len(r["tokens"]) == 8 for r in records)
    assert "==> q1 <==" in capsys.readouterr().out


def test_generate_refuses_an_uncalibrated_mode_before_decoding(exported, tiny_target, capsys):
    assert main(["generate", "--bundle", str(exported), "--target", str(tiny_target), "--prompt", "x",
                 "--temperature", "0.7"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "calibrated for decoding modes ['greedy'], not t0.7" in captured.err


def test_generate_refuses_a_tampered_bundle_with_exit_2(exported, tiny_target, tmp_path, capsys):
    import shutil

    copy = Path(shutil.copytree(exported, tmp_path / "copy"))
    (copy / "scheduler.json").write_text('{"name": "sd-ngram"}\n')
    assert main(["generate", "--bundle", str(copy), "--target", str(tiny_target), "--prompt", "x"]) == 2
    assert "changed file scheduler.json" in capsys.readouterr().err


def test_generate_needs_exactly_one_prompt_source(exported, tiny_target, capsys):
    assert main(["generate", "--bundle", str(exported), "--target", str(tiny_target)]) == 2
    assert "exactly one of --prompt TEXT or --prompts FILE" in capsys.readouterr().err


def test_eval_with_a_bundle_runs_every_level_and_dytc_losslessly(exported, tiny_target, tmp_path):
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"e{i}", "prompt": t}) + "\n" for i, t in enumerate(TINY_CORPUS[6:8])))
    out = tmp_path / "eval"
    assert main(["eval", "--bundle", str(exported), "--target", str(tiny_target), "--prompts", str(prompts),
                 "--methods", "ar,levels,dytc", "--max-new-tokens", "16", "--threads", "1", "--out", str(out),
                 "--wandb", "disabled"]) == 0
    methods = json.loads((out / "report.json").read_text())["methods"]
    assert set(methods) == {"ar", "sd-draft0", "sd-self0", "sd-self1", "sd-ngram", "dytc"}
    assert all(entry["lossless"] is True for entry in methods.values())
    assert methods["sd-draft0"]["stats"]["drafted"].keys() == {"draft0"}


def test_eval_with_a_bundle_takes_an_explicit_scheduler_over_the_bundles(exported, tiny_target, tmp_path):
    bundled = json.loads((exported / "scheduler.json").read_text())
    assert bundled["dytc"]["levels"] == []  # every level; with the bundle's settings the n-gram level drafts here
    scheduler = tmp_path / "scheduler.json"
    scheduler.write_text(json.dumps({**bundled, "dytc": {**bundled["dytc"], "levels": ["draft0"]}}))
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text(json.dumps({"id": "e0", "prompt": TINY_CORPUS[6]}) + "\n")
    out = tmp_path / "eval"
    assert main(["eval", "--bundle", str(exported), "--scheduler", str(scheduler), "--target", str(tiny_target),
                 "--prompts", str(prompts), "--methods", "ar,dytc", "--max-new-tokens", "16", "--threads", "1",
                 "--out", str(out), "--wandb", "disabled"]) == 0
    dytc = json.loads((out / "report.json").read_text())["methods"]["dytc"]
    assert set(dytc["stats"]["drafted"]) <= {"draft0"} and dytc["lossless"] is True


def test_eval_refuses_a_calibrated_input_given_beside_a_bundle(exported, tiny_target, tmp_path, capsys):
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text(json.dumps({"id": "e0", "prompt": TINY_CORPUS[6]}) + "\n")
    assert main(["eval", "--bundle", str(exported), "--draft", str(tiny_target), "--target", str(tiny_target),
                 "--prompts", str(prompts), "--methods", "ar,dytc", "--out", str(tmp_path / "eval"),
                 "--wandb", "disabled"]) == 2
    assert "--draft and --bundle" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_eval_refuses_a_run_asked_for_twice(exported, tiny_target, tmp_path, capsys):
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text(json.dumps({"id": "e0", "prompt": TINY_CORPUS[6]}) + "\n")
    assert main(["eval", "--bundle", str(exported), "--target", str(tiny_target), "--prompts", str(prompts),
                 "--methods", "ar,levels,sd-ngram", "--out", str(tmp_path / "eval"), "--wandb", "disabled"]) == 2
    assert "sd-ngram is asked for twice" in capsys.readouterr().err


class _ByteTokenizer:
    """Decodes token ids as UTF-8 bytes, like a byte-level BPE splitting one character in two."""

    def decode(self, tokens):
        return bytes(tokens).decode("utf-8", errors="replace")


def test_text_stream_holds_back_an_incomplete_character():
    out = io.StringIO()
    stream = TextStream(_ByteTokenizer(), out)
    euro = list("€".encode())  # three bytes
    stream([ord("a"), euro[0]])
    assert out.getvalue() == "a"
    stream(euro[1:] + [ord("b")])
    assert out.getvalue() == "a€b"
    assert stream.finish() == "a€b" and out.getvalue() == "a€b\n"
