"""Students that start from the target's own weights: a chosen subset of its decoder layers.

A draft distilled from random weights learns the target's embeddings and head from scratch; one cut
from the target (its embeddings, final norm, head and a few decoder layers, LayerSkip/DistilBERT
style) starts with them, and training only has to teach the kept layers to stand in for the dropped.
"""

from __future__ import annotations

import copy

from transformers import AutoModelForCausalLM, PreTrainedModel

from drafttrain.errors import DrafttrainError


def layer_subset_state(target_state: dict, layers: list[int]) -> dict:
    """The target's state dict renumbered so decoder layer `layers[j]` becomes layer j; others dropped."""
    keep = {f"model.layers.{index}.": f"model.layers.{position}." for position, index in enumerate(layers)}
    state = {}
    for key, tensor in target_state.items():
        if not key.startswith("model.layers."):
            state[key] = tensor
            continue
        prefix = ".".join(key.split(".")[:3]) + "."
        if prefix in keep:
            state[keep[prefix] + key[len(prefix):]] = tensor
    return state


def student_from_target_layers(target: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """A new model of the target's architecture holding copies of the target's `layers`, in order."""
    total = target.config.num_hidden_layers
    if max(layers) >= total:
        raise DrafttrainError(f"student.from_target_layers: {layers} names a layer past the target's "
                              f"{total} decoder layers (indices 0-{total - 1})")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None) is not None:  # per-layer attention kinds follow their layers
        config.layer_types = [config.layer_types[index] for index in layers]
    student = AutoModelForCausalLM.from_config(config)
    # load_state_dict copies into the student's own parameters: training it leaves the target alone
    missing, unexpected = student.load_state_dict(layer_subset_state(target.state_dict(), layers), strict=False)
    missing = [key for key in missing if not (key == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise DrafttrainError(f"student.from_target_layers: the target's weights do not map onto a "
                              f"{len(layers)}-layer copy (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                              "use student.shape for this architecture")
    if config.tie_word_embeddings:
        student.tie_weights()
    return student.float()
