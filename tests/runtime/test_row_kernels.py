"""Row kernels compute the same projections and logits whichever a plan picks, and the plan logic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import runtime_model

from drafttrain.runtime.cache import causal_mask
from drafttrain.runtime.row_kernels import (
    KERNELS,
    ONEDNN_WEIGHT,
    OUTPUT_MAJOR,
    available_kernels,
    check_plan,
    kernel_for,
    linear_with,
    pack_onednn,
    pick_row_kernels,
)

RUNNABLE = available_kernels(torch.float32)


@pytest.mark.parametrize("kernel", RUNNABLE)
@pytest.mark.parametrize("with_bias", [False, True])
def test_every_kernel_computes_the_linear_product(kernel: str, with_bias: bool):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(12, 8, generator=generator)
    bias = torch.randn(12, generator=generator) if with_bias else None
    rows = torch.randn(5, 8, generator=generator)
    input_major = weight.t().contiguous().t()
    packed = pack_onednn(weight) if kernel == "onednn" else None
    out = linear_with(rows, input_major, weight.contiguous(), bias, kernel, packed)
    assert torch.allclose(out, F.linear(rows, weight, bias), atol=1e-5)


def test_onednn_is_offered_for_float32_weights_only():
    assert "onednn" not in available_kernels(torch.bfloat16)
    assert set(RUNNABLE) <= set(KERNELS) and "input_major" in RUNNABLE


def test_counts_beyond_the_exact_range_use_their_bucket_entry():
    plan = {3: "output_major", 64: "output_major_t", 128: "onednn", 512: "output_major"}
    assert kernel_for(plan, 3) == "output_major" and kernel_for(plan, 4) is None
    assert kernel_for(plan, 64) == kernel_for(plan, 95) == "output_major_t"
    assert kernel_for(plan, 96) is None  # the 96 bucket was tuned and the default won
    assert kernel_for(plan, 128) == kernel_for(plan, 191) == "onednn"
    assert kernel_for(plan, 700) == "output_major"


def test_unknown_kernels_and_bad_row_counts_are_rejected():
    with pytest.raises(ValueError, match="unknown row kernel 'fast'"):
        linear_with(torch.ones(1, 2), torch.ones(2, 2), torch.ones(2, 2), None, "fast")
    with pytest.raises(ValueError, match="kernel 'fast' for 2 rows is unknown"):
        check_plan({2: "fast"})
    with pytest.raises(ValueError, match="row count 0 is invalid"):
        check_plan({0: "output_major"})


def test_pick_keeps_the_default_unless_another_kernel_wins_by_the_margin():
    seconds = {1: {"input_major": 1.0, "output_major": 0.99, "output_major_t": 1.2},  # within 3%: default
               2: {"input_major": 1.0, "output_major": 0.95, "output_major_t": 0.8},  # clear winner
               3: {"input_major": 1.0, "output_major": 0.9, "output_major_t": 1.1}}
    assert pick_row_kernels(seconds, margin=0.03) == {2: "output_major_t", 3: "output_major"}
    assert pick_row_kernels(seconds, margin=0.25) == {}


def _forward(model, tokens, start, cache):
    n = len(tokens)
    mask = causal_mask(start, n, "cpu") if start > 0 and n > 1 else None
    return model(tokens, torch.arange(start, start + n), cache, start, mask)


@pytest.mark.parametrize("kernel", RUNNABLE)
def test_a_plan_leaves_logits_and_cache_unchanged(kernel: str):
    model = runtime_model(3, vocab=40, layers=2).use_input_major_weights()
    tokens = torch.randint(0, 40, (9,), generator=torch.Generator().manual_seed(1))
    reference_cache = model.new_cache(32)
    reference = [_forward(model, tokens[:6], 0, reference_cache), _forward(model, tokens[6:], 6, reference_cache)]
    plan = model.apply_row_kernels({6: kernel, 3: kernel})
    assert plan == {6: kernel, 3: kernel} and model.row_kernels is plan
    cache = model.new_cache(32)
    planned = [_forward(model, tokens[:6], 0, cache), _forward(model, tokens[6:], 6, cache)]
    for got, want in zip(planned, reference):
        assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(cache.k, reference_cache.k, atol=1e-5)


def test_an_empty_plan_drops_the_output_major_copies_and_reloading_weights_remakes_them():
    model = runtime_model(4, vocab=40, layers=2).use_input_major_weights()
    layer = model.layers[0].mlp.w13
    model.apply_row_kernels({2: "output_major_t"})
    copy = layer.__dict__[OUTPUT_MAJOR]
    assert copy.is_contiguous() and torch.equal(copy, layer.weight)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # a new weight, laid out again: the copy must follow it
    model.use_input_major_weights()
    assert model.row_kernels == {2: "output_major_t"}
    assert torch.equal(layer.__dict__[OUTPUT_MAJOR], layer.weight)
    model.apply_row_kernels({})
    assert OUTPUT_MAJOR not in layer.__dict__ and model.row_kernels == {}


@pytest.mark.skipif("onednn" not in RUNNABLE, reason="this PyTorch build has no oneDNN")
def test_onednn_copies_are_made_for_the_plan_and_the_head_is_packed_once():
    model = runtime_model(5, vocab=40, layers=2).use_input_major_weights()
    layer = model.layers[1].attn.wo
    model.apply_row_kernels({1: "onednn"})
    assert ONEDNN_WEIGHT in layer.__dict__ and OUTPUT_MAJOR not in layer.__dict__
    cache = model.new_cache(8)
    reference = runtime_model(5, vocab=40, layers=2)
    want = _forward(reference, torch.tensor([3]), 0, reference.new_cache(8))
    assert torch.allclose(_forward(model, torch.tensor([3]), 0, cache), want, atol=1e-5)
    heads = model.__dict__["_packed_heads"]
    assert len(heads) == 1
    _forward(model, torch.tensor([4]), 1, cache)
    assert len(heads) == 1  # the same weight: packed once
    model.apply_row_kernels({2: "output_major"})
    assert ONEDNN_WEIGHT not in layer.__dict__ and OUTPUT_MAJOR in layer.__dict__


def test_a_kernel_this_build_cannot_run_is_left_out_with_a_warning():
    model = runtime_model(6, vocab=40, layers=1).to(torch.bfloat16)
    with pytest.warns(UserWarning, match="cannot run here"):
        plan = model.apply_row_kernels({2: "onednn", 3: "output_major"})
    assert plan == {3: "output_major"}
