"""Loading problems give a DrafttrainError that names the file/field and says how to fix it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_checkpoint
from drafttrain.errors import DrafttrainError
from drafttrain.runtime import load_model, load_tokenizer, read_model_args


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("errors_src"), "llama", seed=7)


@pytest.fixture
def ckpt(source, tmp_path):
    """A fresh, editable copy of a valid checkpoint."""
    path = tmp_path / "ckpt"
    shutil.copytree(source, path)
    return path


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_valid_copy_loads(ckpt):
    model = load_model(ckpt)
    assert model.args.model_type == "llama"
    assert load_tokenizer(ckpt).eos_token == "<|endoftext|>"


def test_missing_directory(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(DrafttrainError) as err:
        load_model(missing)
    message = str(err.value)
    assert "no_such_model" in message and "does not exist" in message


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(DrafttrainError) as err:
        load_model(ckpt)
    message = str(err.value)
    assert "config.json" in message and "missing" in message
    assert "Hugging Face checkpoint" in message


def test_invalid_json_config(ckpt):
    (ckpt / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(DrafttrainError) as err:
        read_model_args(ckpt)
    message = str(err.value)
    assert "config.json" in message and "not valid JSON" in message
    assert "line 1" in message  # the decoder's location is passed on


def test_config_not_an_object(ckpt):
    """A config.json holding valid JSON that is not an object is a user error, not a crash."""
    (ckpt / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(DrafttrainError) as err:
        load_model(ckpt)
    assert "config.json" in str(err.value)


def test_unsupported_model_type(ckpt):
    _edit_config(ckpt, model_type="gpt2")
    with pytest.raises(DrafttrainError) as err:
        load_model(ckpt)
    message = str(err.value)
    assert "config.json" in message and "'gpt2'" in message and "model_type" in message
    for family in ("llama", "qwen2", "mistral"):
        assert family in message


def test_unsupported_rope_type(ckpt):
    _edit_config(ckpt, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0})
    with pytest.raises(DrafttrainError) as err:
        load_model(ckpt)
    message = str(err.value)
    assert "config.json" in message and "'yarn'" in message and "rope" in message
    for rope_type in ("default", "linear", "llama3"):
        assert rope_type in message


def test_unsupported_legacy_rope_type(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    del config["rope_parameters"]
    config["rope_scaling"] = {"type": "dynamic", "factor": 2.0}
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(DrafttrainError, match="'dynamic'"):
        read_model_args(ckpt)


def test_unsupported_activation(ckpt):
    _edit_config(ckpt, hidden_act="gelu")
    with pytest.raises(DrafttrainError, match="hidden_act 'gelu'"):
        read_model_args(ckpt)


def test_missing_required_field(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    del config["hidden_size"]
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(DrafttrainError) as err:
        read_model_args(ckpt)
    message = str(err.value)
    assert "'hidden_size'" in message and "save_pretrained" in message


def test_weights_missing(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(DrafttrainError) as err:
        load_model(ckpt)
    message = str(err.value)
    assert "weights missing" in message and "model.safetensors" in message
    assert "pickled" not in message


def test_only_pickled_weights(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    torch.save(state, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(DrafttrainError) as err:
        load_model(ckpt)
    message = str(err.value)
    assert "pytorch_model.bin" in message
    assert "pickled weights are not loaded" in message
    assert "safetensors" in message  # the fix: convert them


def test_weight_missing_from_safetensors(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    key = "model.layers.1.mlp.up_proj.weight"
    del state[key]
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(DrafttrainError) as err:
        load_model(ckpt)
    message = str(err.value)
    assert key in message and "missing" in message and "ckpt" in message


def test_unexpected_weight_in_safetensors(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(DrafttrainError, match="unexpected weights") as err:
        load_model(ckpt)
    assert "model.layers.0.self_attn.extra.weight" in str(err.value)


def test_sharded_index_with_missing_shard(ckpt, source):
    from transformers import AutoModelForCausalLM

    (ckpt / "model.safetensors").unlink()
    AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).save_pretrained(
        str(ckpt), max_shard_size="20KB")
    shards = sorted(ckpt.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(DrafttrainError) as err:
        load_model(ckpt)
    message = str(err.value)
    assert "weights missing" in message and shards[-1].name in message


def test_sharded_index_with_empty_weight_map(ckpt):
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {}}))
    with pytest.raises(DrafttrainError, match="weight_map"):
        load_model(ckpt)


def test_load_tokenizer_without_files(tmp_path):
    empty = tmp_path / "no_tokenizer"
    empty.mkdir()
    with pytest.raises(DrafttrainError) as err:
        load_tokenizer(empty)
    message = str(err.value)
    assert "no_tokenizer" in message and "tokenizer.json" in message


def test_truncated_weights_name_the_file(ckpt):
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(DrafttrainError, match=r"model\.safetensors is damaged"):
        load_model(ckpt)


def test_truncated_weights_exit_2_from_the_cli(ckpt, tmp_path, capsys):
    from drafttrain.cli import main

    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "def f():"}) + "\n")
    code = main(["eval", "--target", str(ckpt), "--prompts", str(prompts), "--methods", "ar",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "model.safetensors is damaged" in capsys.readouterr().err


def test_check_weights_reads_headers_only_and_names_a_cut_file(ckpt):
    from drafttrain.runtime.loader import check_weights

    check_weights(ckpt)  # a whole checkpoint passes
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])
    with pytest.raises(DrafttrainError, match=r"model\.safetensors is damaged \(truncated"):
        check_weights(ckpt)
    weights.write_bytes(b"\xff" * 16)
    with pytest.raises(DrafttrainError, match=r"model\.safetensors is damaged"):
        check_weights(ckpt)


def test_quickstart_on_a_damaged_target_exits_2_before_any_stage(ckpt, tmp_path, capsys):
    from drafttrain.cli import main

    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["quickstart", "--target", str(ckpt), "--out", str(tmp_path / "qs")]) == 2
    assert "model.safetensors is damaged" in capsys.readouterr().err
    assert not (tmp_path / "qs" / "prompts").exists()
