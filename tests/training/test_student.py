"""Students cut from the target's own layers (`student.from_target_layers`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from drafttrain.config import load_recipe_config
from drafttrain.errors import DrafttrainError
from drafttrain.training.student import layer_subset_state, student_from_target_layers

from conftest import make_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("target"), "llama", seed=3)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def test_layer_subset_state_renumbers_kept_layers_and_drops_the_rest():
    state = {"model.embed_tokens.weight": 0, "model.layers.0.mlp.w": 1, "model.layers.1.mlp.w": 2,
             "model.layers.10.mlp.w": 3, "model.norm.weight": 4}
    assert layer_subset_state(state, [10, 0]) == {"model.embed_tokens.weight": 0, "model.layers.0.mlp.w": 3,
                                                  "model.layers.1.mlp.w": 1, "model.norm.weight": 4}


def test_every_layer_in_order_reproduces_the_target(target):
    layers = list(range(target.config.num_hidden_layers))
    student = student_from_target_layers(target, layers).eval()
    tokens = torch.arange(1, 25)[None]
    with torch.inference_mode():
        assert torch.allclose(student(tokens).logits, target(tokens).logits, atol=1e-5)


def test_a_subset_copies_those_layers_and_owns_its_weights(target):
    last = target.config.num_hidden_layers - 1
    student = student_from_target_layers(target, [last])
    assert student.config.num_hidden_layers == 1
    copied, original = student.model.layers[0].mlp.up_proj.weight, target.model.layers[last].mlp.up_proj.weight
    assert torch.equal(copied, original) and copied.data_ptr() != original.data_ptr()
    assert torch.equal(student.model.embed_tokens.weight, target.model.embed_tokens.weight)
    if target.config.tie_word_embeddings:
        assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        copied.add_(1.0)  # training the student leaves the frozen target alone
    assert not torch.equal(copied, original)


def test_a_layer_past_the_target_is_refused_by_name(target):
    with pytest.raises(DrafttrainError, match=r"student.from_target_layers: \[0, 9\] names a layer past"):
        student_from_target_layers(target, [0, 9])


@pytest.mark.parametrize("overrides,message", [
    (["student.from_target_layers=[0, 0]"], "must be distinct"),
    (["student.from_target_layers=[]"], "at least one"),
    (["student.from_target_layers=[0]", "student.path=/some/model"], "are exclusive"),
])
def test_bad_layer_lists_are_refused_on_load(overrides, message):
    with pytest.raises(DrafttrainError) as error:
        load_recipe_config(REPO / "configs/tiny/distill.yaml", overrides)
    assert message in str(error.value)
