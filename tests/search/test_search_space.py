"""The self-draft search space: parameters, lossless encode/decode, baselines, cost estimate, config."""

from __future__ import annotations

import random

import pytest
from conftest import runtime_model

from drafttrain.errors import DrafttrainError
from drafttrain.runtime.views import SelfDraftView
from drafttrain.search.config import SearchConfig
from drafttrain.search.space import QUANT_CHOICES, SearchSpace, cost_fraction


def _random_view(space: SearchSpace, rng: random.Random) -> SelfDraftView:
    attn = frozenset(i for i in space.layers if rng.random() < 0.5)
    mlp = frozenset(i for i in space.layers if rng.random() < 0.5)
    quant = []
    for layers in space.groups:
        bits = rng.choice(QUANT_CHOICES)
        if bits != "none":
            quant += [(layer, bits) for layer in layers]
    return SelfDraftView(attn, mlp, tuple(sorted(quant)))


@pytest.mark.parametrize("layers,keep,groups", [(12, True, 0), (12, True, 3), (5, False, 5), (7, True, 2)])
def test_encode_decode_round_trip(layers, keep, groups):
    space = SearchSpace(layers, keep, groups)
    rng = random.Random(layers * 10 + groups)
    for _ in range(300):
        view = _random_view(space, rng)
        params = space.encode(view)
        assert sorted(params) == sorted(space.param_names)
        assert space.decode(params) == view
        assert space.encode(space.decode(params)) == params
        # the spec JSON (what levels.json stores) round-trips too
        assert SelfDraftView.from_json(view.to_json()) == view


def test_parameter_names():
    space = SearchSpace(4, keep_first_last=True, quant_groups=2)
    assert space.param_names == ["attn_1", "mlp_1", "attn_2", "mlp_2", "quant_0", "quant_1"]
    assert space.groups == ((0, 1), (2, 3))
    assert space.size == 2 ** 4 * 4 ** 2  # none, int8, int4, fp16 per group


def test_views_outside_the_space_are_refused():
    space = SearchSpace(6, keep_first_last=True, quant_groups=2)
    with pytest.raises(DrafttrainError, match="never skips"):
        space.encode(SelfDraftView(skip_attn=frozenset({0})))
    with pytest.raises(DrafttrainError, match="differently"):
        space.encode(SelfDraftView(act_quant=((0, "int8"),)))
    with pytest.raises(DrafttrainError, match="no quantization choice"):
        SearchSpace(6).encode(SelfDraftView(act_quant=((2, "int4"),)))
    with pytest.raises(DrafttrainError, match="missing"):
        space.decode({"attn_1": True})


def test_empty_space_says_why_and_how_to_fix():
    with pytest.raises(DrafttrainError, match="empty.*keep_first_last=false.*quant_groups"):
        SearchSpace(2, keep_first_last=True, quant_groups=0)
    assert SearchSpace(2, keep_first_last=False).param_names == ["attn_0", "mlp_0", "attn_1", "mlp_1"]
    assert SearchSpace(2, keep_first_last=True, quant_groups=1).param_names == ["quant_0"]
    with pytest.raises(DrafttrainError, match="quant_groups"):
        SearchSpace(4, quant_groups=5)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.45, 0.5, 0.6, 0.9, 1.0])
def test_evenly_spread_skips_the_ratio_alternating(ratio):
    space = SearchSpace(32, keep_first_last=True)
    view = space.evenly_spread(ratio)
    searchable = 2 * len(space.layers)
    skipped = len(view.skip_attn) + len(view.skip_mlp)
    assert abs(skipped - ratio * searchable) <= 0.5
    assert space.decode(space.encode(view)) == view  # inside the space: never layer 0 or 31
    if 0 < ratio <= 0.5:
        # one sublayer per chosen layer, kinds alternating, spread over the whole depth
        assert not view.skip_attn & view.skip_mlp
        chosen = sorted(view.skip_attn | view.skip_mlp)
        kinds = ["attn" if i in view.skip_attn else "mlp" for i in chosen]
        assert kinds == ["attn", "mlp"] * (len(kinds) // 2) + ["attn"] * (len(kinds) % 2)
        gaps = [b - a for a, b in zip(chosen, chosen[1:])]
        assert not gaps or max(gaps) - min(gaps) <= 1
        assert not chosen or (chosen[0] <= 1 + 30 / len(chosen) and chosen[-1] >= 30 - 30 / len(chosen))
    with pytest.raises(DrafttrainError):
        space.evenly_spread(1.5)


def test_swift_default_ratio_on_a_12_layer_target():
    view = SearchSpace(12).evenly_spread(0.45)
    assert len(view.skip_attn) + len(view.skip_mlp) == 9  # round(0.45 * 20)


def test_cost_fraction_counts_weights():
    args = runtime_model(0, vocab=16, layers=4).args
    assert cost_fraction(SelfDraftView(), args) == 1.0
    everything = SelfDraftView(frozenset(range(4)), frozenset(range(4)))
    # only the lm_head is left: hidden * vocab over everything
    attn = 16 * (2 * 8 + 2 * 8) + 16 * 16
    mlp = 3 * 16 * 32
    head = 16 * 16
    assert cost_fraction(everything, args) == pytest.approx(head / (4 * (attn + mlp) + head))
    one_mlp = cost_fraction(SelfDraftView(skip_mlp=frozenset({1})), args)
    one_attn = cost_fraction(SelfDraftView(skip_attn=frozenset({1})), args)
    assert one_mlp < one_attn < 1.0  # the MLP holds more weights than attention here
    full = 4 * (attn + mlp) + head
    assert cost_fraction(SelfDraftView(act_quant=((0, "int4"),)), args) == 1.0  # fake: reads every weight
    assert cost_fraction(SelfDraftView(act_quant=((0, "int8"),)), args) == pytest.approx(1 - 0.75 * (attn + mlp) / full)
    assert cost_fraction(SelfDraftView(act_quant=((0, "fp16"),), head_quant="int8"), args) == pytest.approx(
        1 - 0.5 * (attn + mlp) / full - 0.75 * head / full)
    # a skipped sublayer reads nothing, whatever its precision
    assert cost_fraction(SelfDraftView(skip_mlp=frozenset({0}), act_quant=((0, "int8"),)), args) == pytest.approx(
        1 - (0.75 * attn + mlp) / full)


def test_head_choice_round_trips_and_is_checked():
    space = SearchSpace(4, keep_first_last=True, quant_groups=2, quant_choices=("none", "int8"),
                        head_choices=("none", "int8", "fp16"))
    assert space.param_names[-3:] == ["quant_0", "quant_1", "head"]
    assert space.size == 2 ** 4 * 2 ** 2 * 3
    view = SelfDraftView(skip_attn=frozenset({1}), act_quant=((2, "int8"), (3, "int8")), head_quant="fp16")
    assert space.decode(space.encode(view)) == view
    with pytest.raises(DrafttrainError, match="quant_1='fp16' is invalid"):
        space.decode({**space.encode(view), "quant_1": "fp16"})
    with pytest.raises(DrafttrainError, match="no head choice"):
        SearchSpace(4).encode(SelfDraftView(head_quant="int8"))
    with pytest.raises(DrafttrainError, match="'none' included"):
        SearchSpace(4, head_choices=("int8",))
    with pytest.raises(DrafttrainError, match="head_choices"):
        SearchSpace(4, head_choices=("none", "int4"))


def test_config_validation():
    assert SearchConfig().storage_url().startswith("sqlite:///")
    for bad in ({"trials": 0}, {"workers": 0}, {"k": 0}, {"objective": "fast"}, {"sampler": "grid"},
                {"max_cost_fraction": 1.5}, {"baseline_ratios": [0.2, 2.0]}, {"quant_groups": -1},
                {"storage": "sqlite:///:memory:", "workers": 2}):
        with pytest.raises(DrafttrainError):
            SearchConfig(**bad)
    with pytest.raises(DrafttrainError, match="target"):
        SearchConfig().require_inputs()


def test_config_loads_from_yaml(tmp_path):
    from drafttrain.config import load_config

    path = tmp_path / "search.yaml"
    path.write_text("objective: multi\ntrials: 12\nbaseline_ratios: [0.3]\nmax_cost_fraction: 0.5\n")
    config = load_config(SearchConfig, path, ["quant_groups=2", "storage=sqlite:///x.db"])
    assert (config.objective, config.trials, config.baseline_ratios, config.quant_groups) == ("multi", 12, [0.3], 2)
    assert config.storage_url() == "sqlite:///x.db"
    with pytest.raises(DrafttrainError, match="objective"):
        load_config(SearchConfig, None, ["objective=fast"])
