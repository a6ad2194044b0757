"""Self-draft views: sublayer skipping, activation fake-quantization, and the spec parser."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import make_checkpoint
from drafttrain.errors import DrafttrainError
from drafttrain.runtime import SelfDraftView, load_model
from drafttrain.runtime.views import QUANT_LEVELS, fake_quant, parse_self_spec

TOKENS = torch.tensor([4, 8, 15, 16, 23, 42, 108, 7, 19, 250])
N = len(TOKENS)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(make_checkpoint(tmp_path_factory.mktemp("views_llama"), "llama", seed=5))


def _run(model, view=None, cache=None):
    cache = cache if cache is not None else model.new_cache(32)
    with torch.no_grad():
        return model(TOKENS, torch.arange(N), cache, 0, view=view)


def test_empty_view_is_the_full_model(model):
    full = _run(model)
    assert torch.equal(_run(model, SelfDraftView()), full)
    # incremental decoding with an empty view also matches
    cache = model.new_cache(32)
    with torch.no_grad():
        model(TOKENS[:4], torch.arange(4), cache, 0, view=SelfDraftView(), logits_rows=None)
        step = model(TOKENS[4:5], torch.tensor([4]), cache, 4, view=SelfDraftView())
    assert (step[0] - full[4]).abs().max().item() <= 1e-5


def test_skip_all_mlps_equals_zeroed_mlp_outputs(model):
    layers = model.args.num_layers
    skipped = _run(model, SelfDraftView(skip_mlp=frozenset(range(layers))))
    assert (skipped - _run(model)).abs().max().item() > 1e-2
    manual = copy.deepcopy(model)
    for block in manual.layers:
        block.mlp.w2.weight.zero_()  # llama fixture has no mlp bias: MLP output is exactly zero
        assert block.mlp.w2.bias is None
    assert (skipped - _run(manual)).abs().max().item() <= 1e-5


def test_skip_one_attention_equals_zeroed_attention_output(model):
    skipped = _run(model, SelfDraftView(skip_attn=frozenset({1})))
    assert (skipped - _run(model)).abs().max().item() > 1e-2
    manual = copy.deepcopy(model)
    manual.layers[1].attn.wo.weight.zero_()
    manual.layers[1].attn.wo.bias.zero_()  # llama fixture has attention_bias=True
    assert (skipped - _run(manual)).abs().max().item() <= 1e-5


def test_skipped_attention_does_not_write_its_cache_slot(model):
    cache = model.new_cache(32)
    sentinel = 123.0
    cache.k.fill_(sentinel)
    cache.v.fill_(sentinel)
    _run(model, SelfDraftView(skip_attn=frozenset({1})), cache)
    assert (cache.k[1] == sentinel).all() and (cache.v[1] == sentinel).all()
    for layer in (0, 2):
        assert not (cache.k[layer, :, :N] == sentinel).any()
        assert not (cache.v[layer, :, :N] == sentinel).any()
        assert (cache.k[layer, :, N:] == sentinel).all()


def test_skipped_mlp_still_writes_cache(model):
    cache = model.new_cache(32)
    _run(model, SelfDraftView(skip_mlp=frozenset({0, 1, 2})), cache)
    assert (cache.k[:, :, :N] != 0).any(dim=-1).all()


def test_act_quant_view_is_close_but_not_exact(model):
    full = _run(model)
    int8 = _run(model, SelfDraftView(act_quant=((0, "int8"), (1, "int8"), (2, "int8"))))
    int4 = _run(model, SelfDraftView(act_quant=((0, "int4"), (1, "int4"), (2, "int4"))))
    err8 = (int8 - full).abs().max().item()
    err4 = (int4 - full).abs().max().item()
    # on CPU int8 is fbgemm's W8A8 over all 10 rows at once (7-bit activations): coarser on this
    # random model than per-token fake quantization, still well below the logits' scale
    assert 0 < err8 < 0.3 * full.abs().max().item()
    assert err4 > err8


def test_quant_for_and_to_json():
    view = SelfDraftView(frozenset({3}), frozenset({1, 2}), ((6, "int8"), (0, "int4")))
    assert view.quant_for(6) == "int8" and view.quant_for(0) == "int4" and view.quant_for(1) is None
    data = view.to_json()
    assert data == {"skip_attn": [3], "skip_mlp": [1, 2], "act_quant": {"6": "int8", "0": "int4"}}
    round_trip = SelfDraftView.from_json(json.loads(json.dumps(data)))
    assert round_trip.skip_attn == view.skip_attn and round_trip.skip_mlp == view.skip_mlp
    assert round_trip.quant_for(6) == "int8" and round_trip.quant_for(0) == "int4"


# ---------------------------------------------------------------- fake_quant


@pytest.mark.parametrize("bits", ("int8", "int4"))
def test_fake_quant_grid_and_error_bound(bits):
    qmax = QUANT_LEVELS[bits]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 64, generator=gen) * torch.tensor([0.01, 0.5, 1.0, 3.0, 50.0, 1000.0])[:, None]
    q = fake_quant(x, bits)
    assert q.shape == x.shape and q.dtype == x.dtype
    scale = x.abs().amax(dim=-1, keepdim=True) / qmax  # one scale per token (row)
    levels = q / scale
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.abs().max().item() <= qmax + 1e-3
    assert ((x - q).abs() <= scale / 2 * (1 + 1e-5) + 1e-7).all()
    # the largest magnitude in each row is on the grid's end point
    rows = torch.arange(6)
    idx = x.abs().argmax(dim=-1)
    assert torch.allclose(q[rows, idx], x[rows, idx], rtol=1e-5)
    assert (x - q).abs().max() > 0  # it really quantizes


def test_fake_quant_int4_coarser_than_int8():
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(1))
    assert (fake_quant(x, "int4") - x).abs().mean() > (fake_quant(x, "int8") - x).abs().mean()
    assert fake_quant(x, "int4")[0].unique().numel() <= 15  # levels -7..7


def test_fake_quant_scales_are_per_token():
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[1] *= 1000.0  # a huge row must not change the other rows' quantization
    qx, qy = fake_quant(x, "int8"), fake_quant(y, "int8")
    assert torch.equal(qx[0], qy[0]) and torch.equal(qx[2], qy[2])
    assert torch.allclose(qy[1], qx[1] * 1000.0, rtol=1e-5)
    assert torch.equal(fake_quant(torch.zeros(2, 8), "int8"), torch.zeros(2, 8))


# ---------------------------------------------------------------- parse_self_spec


def test_parse_inline_json():
    view = parse_self_spec('{"skip_attn": [3, 5], "skip_mlp": [4], "act_quant": {"6": "int8"}}')
    assert view.skip_attn == frozenset({3, 5})
    assert view.skip_mlp == frozenset({4})
    assert view.act_quant == ((6, "int8"),)


def test_parse_file(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"skip_mlp": [1, 2], "act_quant": {"0": "int4"}}))
    view = parse_self_spec(str(spec))
    assert view.skip_mlp == frozenset({1, 2}) and view.quant_for(0) == "int4"
    assert view.skip_attn == frozenset()
    # a file without a .json suffix is read as a file too
    other = tmp_path / "spec.txt"
    other.write_text('{"skip_attn": [0]}')
    assert parse_self_spec(str(other)).skip_attn == frozenset({0})


def test_parse_long_inline_json():
    """An inline spec longer than a file name may be (255 bytes) is still inline JSON."""
    data = {"skip_attn": list(range(0, 64, 2)), "skip_mlp": list(range(1, 64, 2)),
            "act_quant": {str(i): "int8" for i in range(8)}}
    text = json.dumps(data)
    assert len(text) > 255
    view = parse_self_spec(text)
    assert view.skip_attn == frozenset(range(0, 64, 2))
    assert view.quant_for(7) == "int8"


def test_parse_bad_json():
    with pytest.raises(DrafttrainError, match="not valid JSON") as err:
        parse_self_spec('{"skip_mlp": [1,')
    assert "skip_mlp" in str(err.value)  # the message shows a valid example


def test_parse_bad_json_file(tmp_path):
    spec = tmp_path / "broken.json"
    spec.write_text("{nope")
    with pytest.raises(DrafttrainError, match="not valid JSON") as err:
        parse_self_spec(str(spec))
    assert "broken.json" in str(err.value)


def test_parse_missing_json_file(tmp_path):
    with pytest.raises(DrafttrainError, match="does not exist") as err:
        parse_self_spec(str(tmp_path / "nowhere.json"))
    assert "nowhere.json" in str(err.value)


def test_parse_unknown_key():
    with pytest.raises(DrafttrainError) as err:
        parse_self_spec('{"skip_attn": [1], "skip_ffn": [2]}')
    message = str(err.value)
    assert "skip_ffn" in message and "skip_mlp" in message and "act_quant" in message


@pytest.mark.parametrize("level", ('"int3"', '"fp8"', "8"))
def test_parse_bad_quant_level(level):
    with pytest.raises(DrafttrainError) as err:
        parse_self_spec('{"act_quant": {"2": %s}}' % level)
    message = str(err.value)
    assert "layer 2" in message and "int4" in message and "int8" in message


@pytest.mark.parametrize("text", ('[1, 2]', '{"skip_mlp": ["x"]}', '{"act_quant": [1]}'))
def test_parse_bad_shapes(text):
    with pytest.raises(DrafttrainError):
        parse_self_spec(text)


def test_check_layers_names_out_of_range_layers(model):
    view = parse_self_spec('{"skip_attn": [1, 7], "skip_mlp": [-1], "act_quant": {"9": "int8"}}')
    with pytest.raises(DrafttrainError) as err:
        view.check_layers(model.args.num_layers)
    message = str(err.value)
    assert "[-1, 7, 9]" in message
    assert "0..2" in message
    SelfDraftView(frozenset({0, 2}), frozenset({1}), ((2, "int4"),)).check_layers(3)  # in range: fine


def test_head_quant_round_trips_and_is_checked():
    view = SelfDraftView(act_quant=((1, "fp16"),), head_quant="int8")
    data = view.to_json()
    assert data["head_quant"] == "int8" and data["act_quant"] == {"1": "fp16"}
    assert SelfDraftView.from_json(json.loads(json.dumps(data))) == view
    assert "head_quant" not in SelfDraftView().to_json()  # older levels.json files read the same
    with pytest.raises(DrafttrainError, match="head_quant is 'int4'"):
        SelfDraftView(head_quant="int4")


@pytest.mark.parametrize("head", ("int8", "fp16"))
def test_reduced_precision_head_is_close_but_not_exact(model, head):
    full = _run(model)
    reduced = _run(model, SelfDraftView(head_quant=head))
    error = (reduced - full).abs().max().item()
    assert 0 < error < 0.05 * full.abs().max().item()
    assert (reduced.argmax(-1) == full.argmax(-1)).float().mean() >= 0.9


def test_fp16_view_without_fbgemm_rounds_the_weights_alike(model, monkeypatch):
    import drafttrain.runtime.model as runtime_model

    view = SelfDraftView(act_quant=tuple((i, "fp16") for i in range(model.args.num_layers)))
    with_fbgemm = _run(model, view)
    monkeypatch.setattr(runtime_model, "runs_quantized", lambda x, kind: False)
    without = _run(model, view)
    torch.testing.assert_close(with_fbgemm, without, atol=1e-4, rtol=1e-4)
