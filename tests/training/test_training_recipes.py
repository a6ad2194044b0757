"""The training recipes end to end on tiny models: pretrain, distill, exact resume, LoRA, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drafttrain.cli import main
from drafttrain.config import load_recipe_config
from drafttrain.errors import DrafttrainError
from drafttrain.runtime import load_model

REPO = Path(__file__).resolve().parents[2]
QUICK = ["corpus.max_documents=20", "val_fraction=0.2", "logging.wandb=disabled"]


def _run(recipe: str, out: Path, cache: Path, *overrides: str) -> int:
    return main(["run", recipe, "--config", str(REPO / f"configs/tiny/{recipe}.yaml"), f"out={out}",
                 f"cache_dir={cache}", *QUICK, *overrides])


def _metrics(out: Path) -> list[dict]:
    with open(out / "metrics" / "metrics.csv") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """The tiny pretrain recipe, run once: it must write an HF target both stacks load."""
    out = tmp_path_factory.mktemp("pretrain")
    assert _run("pretrain", out, out / "cache", "trainer.max_steps=12", "trainer.val_every=6", "prompts=4") == 0
    return out


def test_pretrain_writes_a_target_both_stacks_load(pretrained):
    from transformers import AutoModelForCausalLM

    model_dir = pretrained / "model"
    ours = load_model(model_dir)
    theirs = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tokens = torch.arange(1, 30)
    with torch.inference_mode():
        difference = (ours(tokens, torch.arange(29), ours.new_cache(), 0) - theirs(tokens[None]).logits[0]).abs().max()
    assert difference < 1e-4
    val_losses = [float(row["val/loss"]) for row in _metrics(pretrained) if row.get("val/loss")]
    assert len(val_losses) == 2 and val_losses[1] < val_losses[0]
    record = json.loads((pretrained / "run.json").read_text())
    assert record["config"]["trainer"]["max_steps"] == 12 and "torch" in record["versions"]
    assert (pretrained / "checkpoints" / "last.ckpt").is_file()
    from drafttrain.evaluation.prompts import load_prompts

    prompts = load_prompts(pretrained / "prompts.jsonl")
    assert len(prompts) == 4 and all(p.text.rstrip().endswith(":") for p in prompts)


def test_distill_mixture_raises_expected_acceptance(pretrained, tmp_path):
    out = tmp_path / "distill"
    assert _run("distill", out, tmp_path / "cache", f"target={pretrained / 'model'}") == 0
    rows = _metrics(out)
    acceptance = [float(r["val/expected_acceptance"]) for r in rows if r.get("val/expected_acceptance")]
    assert len(acceptance) == 2 and acceptance[1] > acceptance[0]
    sources = {key for r in rows for key, value in r.items() if key.startswith("train/loss_") and value}
    assert sources == {"train/loss_corpus", "train/loss_target_generated", "train/loss_on_policy"}
    assert any((tmp_path / "cache").glob("target-generated-*.safetensors"))
    load_model(out / "draft")  # the runtime (and so ModelDrafter / eval --draft) loads it


def test_distill_can_start_from_the_targets_own_layers(pretrained, tmp_path):
    out = tmp_path / "cut"
    assert _run("distill", out, tmp_path / "cache", f"target={pretrained / 'model'}", "student.from_target_layers=[0]",
                "loss=ce", "data.corpus=1.0", "data.target_generated=0.0", "data.on_policy=0.0",
                "trainer.max_steps=4", "trainer.val_every=4", "vocab_subset=32") == 0
    draft = json.loads((out / "draft" / "config.json").read_text())
    target = json.loads((pretrained / "model" / "config.json").read_text())
    assert draft["num_hidden_layers"] == 1 and draft["hidden_size"] == target["hidden_size"]
    load_model(out / "draft")
    from drafttrain.drafters.vocab import VOCAB_FILE, load_vocab_subset

    written = json.loads((out / "draft" / VOCAB_FILE).read_text())
    assert len(load_vocab_subset(out / "draft", draft["vocab_size"])) == 32 and 0 < written["coverage"] <= 1


def test_greedy_target_generated_text_is_the_targets_own_greedy_output(pretrained, tmp_path, monkeypatch):
    """data.temperature=0: each cached continuation is the target's argmax, token by token (through
    transformers: an independent stack)."""
    from transformers import AutoModelForCausalLM

    import recipes.distill
    from recipes.distill import target_generated

    config = load_recipe_config(REPO / "configs/tiny/distill.yaml", [
        f"target={pretrained / 'model'}", "data.temperature=0.0", "data.prompt_tokens=6", "data.generate_tokens=5",
        "data.generated_sequences=3"])
    packed = torch.randint(3, 200, (10, 17))
    sequences, mask = target_generated(config, packed, tmp_path)
    teacher = AutoModelForCausalLM.from_pretrained(str(pretrained / "model"), dtype=torch.float32).eval()
    for row in sequences:
        expected = row[:6].tolist()
        with torch.inference_mode():
            for _ in range(5):
                expected.append(int(teacher(torch.tensor([expected])).logits[0, -1].argmax()))
        assert row.tolist() == expected
        assert any(row[:6].tolist() == packed_row[:6].tolist() for packed_row in packed)
    assert mask.shape == (3, 10) and not mask[:, :5].any() and mask[:, 5:].all()
    monkeypatch.setattr(recipes.distill, "SpeculativeDecoder", None)  # a second call must not decode again
    cached = target_generated(config, packed, tmp_path)
    assert torch.equal(cached[0], sequences)


class _Crash(Exception):
    pass


def test_killed_distill_resumes_at_the_same_step_with_the_same_data(pretrained, tmp_path, monkeypatch):
    """Crash after step 5 (checkpoint at 4); the resumed run must equal an uninterrupted one."""
    from drafttrain.training import module as module_code

    seen: dict[str, list[int]] = {"full": [], "crashed": [], "resumed": []}
    run_name = {"value": "full"}
    original = module_code.CausalLMTraining.training_step

    def recording_step(self, batch, batch_idx):
        step, rows = batch
        seen[run_name["value"]].append((int(step), int(rows.sum())))
        if run_name["value"] == "crashed" and self.global_step == 5:
            raise _Crash()
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module_code.CausalLMTraining, "training_step", recording_step)
    common = [f"target={pretrained / 'model'}", "trainer.max_steps=8", "trainer.checkpoint_every=4",
              "trainer.val_every=8", "data.refresh_every=3"]
    assert _run("distill", tmp_path / "full", tmp_path / "cache", *common) == 0
    run_name["value"] = "crashed"
    with pytest.raises(_Crash):
        _run("distill", tmp_path / "run", tmp_path / "cache", *common)
    assert not (tmp_path / "run" / "draft").exists()  # nothing half-written
    run_name["value"] = "resumed"
    assert _run("distill", tmp_path / "run", tmp_path / "cache", *common) == 0
    assert seen["resumed"][0][0] == 4  # continues at the checkpointed step...
    assert seen["resumed"] == seen["full"][4:]  # ...with the same batches as the uninterrupted run
    full = load_file(str(tmp_path / "full" / "draft" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "run" / "draft" / "model.safetensors"))
    assert all(torch.equal(full[name], resumed[name]) for name in full)


def test_lora_distill_writes_an_adapter_that_loads_back(pretrained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    base = pretrained / "model"
    assert _run("distill", out, tmp_path / "cache", f"target={base}", f"student.path={base}",
                "student.lora={r: 4, alpha: 8}", "loss=ce", "trainer.max_steps=6", "data.corpus=1.0",
                "data.target_generated=0.0", "data.on_policy=0.0", "trainer.val_every=6") == 0
    adapter = out / "draft"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter)).merge_and_unload()
    ours = load_model(adapter)
    tokens = torch.arange(1, 20)
    with torch.inference_mode():
        expected = merged(tokens[None]).logits[0]
        got = ours(tokens, torch.arange(19), ours.new_cache(), 0)
        unadapted = load_model(base)(tokens, torch.arange(19), ours.new_cache(), 0)
    assert (got - expected).abs().max() < 1e-4
    assert (got - unadapted).abs().max() > 1e-4  # the adapter really changed the model


@pytest.mark.parametrize("overrides,message", [
    (["data.corpus=0.7"], "mixture fractions must be >= 0 and sum to 1"),
    (["student.lora={r: 4}"], "student.lora needs student.path"),
    (["loss=kl"], "loss"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 is invalid"),
    (["student.shape.hidden_size=33"], "must divide by num_heads"),
    (["vocab_subset=-1"], "vocab_subset=-1 is invalid"),
])
def test_distill_config_errors_are_clear(overrides, message):
    with pytest.raises(DrafttrainError, match=None) as error:
        load_recipe_config(REPO / "configs/tiny/distill.yaml", overrides)
    assert message in str(error.value)


def test_student_with_another_tokenizer_is_refused(pretrained, tmp_path, capsys):
    from conftest import make_checkpoint

    other = make_checkpoint(tmp_path / "other", "llama", seed=2)  # its own, different tokenizer
    assert _run("distill", tmp_path / "o", tmp_path / "c", f"target={pretrained / 'model'}",
                f"student.path={other}") == 2
    assert "different tokenizer" in capsys.readouterr().err


def test_distill_without_target_is_a_clear_cli_error(tmp_path, capsys):
    assert _run("distill", tmp_path / "o", tmp_path / "c") == 2
    assert "`target` is not set" in capsys.readouterr().err


def test_warmup_cosine_schedule():
    from drafttrain.training.module import warmup_cosine

    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.55)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(native, monkeypatch):
    from drafttrain.training import run

    monkeypatch.setattr(run, "cpu_has_native_bf16", lambda: native)
    assert run.resolve_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")
    assert run.resolve_precision("16-mixed", "cpu") == "16-mixed"  # an explicit choice stands


def test_a_cpu_with_bf16_instructions_counts_as_native_bf16():
    from drafttrain.training.run import cpu_has_native_bf16

    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        assert cpu_has_native_bf16()
    elif not torch.cpu._is_avx512_supported():  # oneDNN runs bf16 on AVX-512 cores too; below that, never
        assert not cpu_has_native_bf16()
