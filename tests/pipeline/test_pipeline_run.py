"""The pipeline: the tiny config end to end, stage caching by hash, the embedded quickstart config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drafttrain.bundle import load_bundle
from drafttrain.cli import main
from drafttrain.config import load_config
from drafttrain.errors import DrafttrainError
from drafttrain.pipeline.cache import run_cached, stage_key
from drafttrain.pipeline.config import PipelineConfig
from recipes.pipeline import QUICKSTART

REPO = Path(__file__).parents[2]


def ran(out: Path) -> dict[str, bool]:
    """Stage -> whether it ran (True) or was reused (False) in the last pipeline run."""
    return {stage["stage"]: not stage["cached"] for stage in json.loads((out / "pipeline.json").read_text())["stages"]}


def test_tiny_pipeline_end_to_end_then_cached_then_only_what_changed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the config's stage files are relative to the repository root
    out = tmp_path / "pipeline"
    command = ["run", "pipeline", "--config", "configs/tiny/pipeline.yaml", f"out={out}", "threads=1"]
    assert main(command) == 0
    assert ran(out) == dict.fromkeys(["pretrain", "prompts", "distill", "search", "calibrate", "export", "eval"], True)
    summary = json.loads((out / "pipeline.json").read_text())
    bundle = load_bundle(out / "bundle", summary["target"])
    assert bundle.level_names[0] == "draft0" and bundle.level_names[-1] == "ngram"
    report = json.loads((Path(summary["report"]).parent / "report.json").read_text())
    assert {"ar", "sd-draft0", "sd-ngram", "dytc"} <= set(report["methods"])
    assert all(entry["lossless"] is True for entry in report["methods"].values())
    assert "Bundle:" in capsys.readouterr().out

    assert main(command) == 0  # nothing changed: every stage is reused
    assert not any(ran(out).values())

    assert main(command + ["eval.set.max_new_tokens=12"]) == 0  # only the evaluation changed
    assert ran(out) == {"pretrain": False, "prompts": False, "distill": False, "search": False,
                        "calibrate": False, "export": False, "eval": True}

    # a stage redone under the same key (its marker removed) is a new run: what it feeds runs again
    stages = {stage["stage"]: stage for stage in json.loads((out / "pipeline.json").read_text())["stages"]}
    (Path(stages["calibrate"]["dir"]) / "stage.json").unlink()
    assert main(command + ["eval.set.max_new_tokens=12"]) == 0
    assert ran(out) == {"pretrain": False, "prompts": False, "distill": False, "search": False,
                        "calibrate": True, "export": True, "eval": True}
    redone = {stage["stage"]: stage for stage in json.loads((out / "pipeline.json").read_text())["stages"]}
    assert redone["calibrate"]["dir"] == stages["calibrate"]["dir"] and redone["calibrate"]["run"] != \
        stages["calibrate"]["run"]
    assert redone["export"]["dir"] != stages["export"]["dir"]

    # calibration prompts from held-out text: new prompts, so everything that reads them runs again,
    # but not the draft's distillation, which reads the target and its own corpus only
    assert main(command + ["eval.set.max_new_tokens=12", "prompts.calibration_text=held_out"]) == 0
    assert ran(out) == {"pretrain": False, "prompts": True, "distill": False, "search": True,
                        "calibrate": True, "export": True, "eval": True}
    prompts_dir = Path(next(s for s in json.loads((out / "pipeline.json").read_text())["stages"]
                            if s["stage"] == "prompts")["dir"])
    sources = {name: {json.loads(line)["source"] for line in (prompts_dir / name).read_text().splitlines()}
               for name in ("calibration.jsonl", "eval.jsonl")}
    assert not sources["calibration.jsonl"] & sources["eval.jsonl"]
    held_out = ("json/", "email/", "http/", "urllib/", "xml/", "asyncio/", "tomllib/", "zoneinfo/")
    assert all(source.startswith(held_out) for source in sources["calibration.jsonl"])


def test_stage_key_follows_config_and_inputs_but_not_where_outputs_go():
    from drafttrain.search.config import SearchConfig

    base = SearchConfig(trials=4)
    key = stage_key("search", base, {"target": "a"})
    assert key == stage_key("search", SearchConfig(trials=4, out=Path("elsewhere"), wandb="disabled"), {"target": "a"})
    assert key != stage_key("search", SearchConfig(trials=5), {"target": "a"})
    assert key != stage_key("search", base, {"target": "b"})
    assert key != stage_key("distill", base, {"target": "a"})


def test_run_cached_reruns_an_interrupted_stage_in_the_same_directory(tmp_path):
    calls = []

    def interrupted(directory: Path) -> None:
        calls.append(directory)
        (directory / "partial").write_text("checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cached(tmp_path, "distill", "k" * 64, interrupted)
    resumed = run_cached(tmp_path, "distill", "k" * 64, lambda directory: calls.append(directory))
    assert not resumed.cached and calls[0] == calls[1] == resumed.dir
    assert (resumed.dir / "partial").read_text() == "checkpoint"  # the recipe resumes from what it left
    assert run_cached(tmp_path, "distill", "k" * 64, lambda directory: calls.append(directory)).cached
    assert len(calls) == 2


def test_the_embedded_quickstart_config_validates_every_stage():
    config = load_config(PipelineConfig, QUICKSTART)
    assert config.target is None and config.pretrain.build("pretrain").model.num_layers == 6
    assert "dytc" in config.eval.build("eval", {"bundle": "b"}).methods


def test_quickstart_on_a_users_target_scales_its_stages_to_it(tiny_target):
    from drafttrain.pipeline.defaults import target_overrides

    config = load_config(PipelineConfig, QUICKSTART, [f"target={tiny_target}", *target_overrides(tiny_target)])
    distill = config.distill.build("distill", {"target": str(tiny_target)})
    assert distill.student.from_target_layers == [0, 2]  # the tiny target's first and last of 3 layers
    assert distill.loss == "tvd" and distill.data.target_generated > 0 and distill.vocab_subset == 300
    search = config.search.build("search", {"target": str(tiny_target), "prompts": "p.jsonl"})
    assert search.quant_groups == 3 and "int8" in search.head_choices
    assert "hf-assisted" in config.eval.build("eval", {"bundle": "b"}).methods
    overridden = load_config(PipelineConfig, QUICKSTART, [f"target={tiny_target}", *target_overrides(tiny_target),
                                                          "search.set.trials=3"])
    assert overridden.search.build("search", {"target": str(tiny_target), "prompts": "p.jsonl"}).trials == 3


def test_a_bad_stage_setting_names_the_stage_and_key(tmp_path):
    with pytest.raises(DrafttrainError, match=r"stage distill: .*trainer\.max_stepz: unknown key"):
        load_config(PipelineConfig, QUICKSTART, ["distill.set={trainer.max_stepz: 3}"])
    with pytest.raises(DrafttrainError, match="calibrate and export stages cannot be turned off"):
        load_config(PipelineConfig, QUICKSTART, ["calibrate.enabled=false"])


def test_quickstart_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quickstart", "--help"])
    assert exit_info.value.code == 0 and "--target" in capsys.readouterr().out


def test_held_out_calibration_prompts_skip_the_given_evaluation_prompts_sources(tmp_path, tiny_target):
    from drafttrain.data import held_out_documents
    from drafttrain.data.corpus import CorpusConfig
    from recipes.pipeline import write_prompt_sets

    corpus = {"kind": "stdlib", "exclude_packages": ["json", "tomllib"]}
    documents = {d.id: d.text for d in held_out_documents(CorpusConfig(**corpus))}
    cut_from = sorted(documents)[:2]  # the evaluation prompts are cut from these two files
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text("".join(json.dumps({"id": f"e{i}", "prompt": documents[name][:200]}) + "\n"
                                  for i, name in enumerate(cut_from)))

    def calibration_sources(calibration_text: str) -> set[str]:
        config = load_config(PipelineConfig, None, [f"eval_prompts={evaluation}", f"prompts.corpus={json.dumps(corpus)}",
                                                    f"prompts.calibration_text={calibration_text}",
                                                    "prompts.calibration=20", "prompts.context_tokens=64"])
        out = tmp_path / calibration_text
        out.mkdir()
        write_prompt_sets(config, tiny_target, out)
        assert (out / "eval.jsonl").read_text() == evaluation.read_text()
        return {json.loads(line)["source"] for line in (out / "calibration.jsonl").read_text().splitlines()}

    held_out = calibration_sources("held_out")
    assert held_out and held_out <= set(documents) - set(cut_from)
    assert not calibration_sources("training") & set(documents)  # training text: never held-out files


def test_the_smollm2_pipeline_is_the_quickstart_for_a_30_layer_target(tmp_path):
    """configs/smollm2/pipeline.yaml spells out what `quickstart --target` runs on SmolLM2 (timed in
    docs/benchmarks.md): every stage's config is the same."""
    import dataclasses
    import json as json_module

    from drafttrain.config import config_class_for
    from drafttrain.pipeline.defaults import target_overrides

    target = tmp_path / "smollm2"
    target.mkdir()
    (target / "config.json").write_text(json_module.dumps({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "max_position_embeddings": 8192, "tie_word_embeddings": True}))
    repo = Path(__file__).resolve().parents[2]
    spelled = load_config(PipelineConfig, repo / "configs/smollm2/pipeline.yaml", [f"target={target}"])
    quick = load_config(PipelineConfig, QUICKSTART, [f"target={target}", *target_overrides(target)])
    assert spelled.prompts == quick.prompts
    wiring = {"target": str(target), "prompts": "p.jsonl", "bundle": "b", "out": "o"}
    for name in ("distill", "search", "calibrate", "export", "eval"):
        fields = {field.name for field in dataclasses.fields(config_class_for(name))}
        keys = {key: value for key, value in wiring.items() if key in fields}
        ours = getattr(spelled, name).build(name, keys)
        theirs = getattr(quick, name).build(name, keys)
        if name == "search":
            ours, theirs = dataclasses.replace(ours, study="x"), dataclasses.replace(theirs, study="x")
        assert ours == theirs, name
