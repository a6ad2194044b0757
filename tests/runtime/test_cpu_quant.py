"""fbgemm's reduced-precision linears as the CPU views run them: the products they compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from drafttrain.runtime.cpu_quant import QUANT_COPY, fbgemm_available, pack_weight, packed_linear, quant_linear

pytestmark = pytest.mark.skipif(not fbgemm_available(), reason="this PyTorch build has no fbgemm")


def _layer(out_features=48, in_features=64, bias=True):
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features, bias=bias)
    return layer.requires_grad_(False)


def test_fp16_is_the_product_with_float16_weights():
    layer = _layer()
    x = torch.randn(5, 64)
    got = packed_linear(x, pack_weight(layer.weight, layer.bias, "fp16"), "fp16")
    expected = nn.functional.linear(x, layer.weight.half().float(), layer.bias)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_int8_matches_the_quantized_product():
    """W8A8: int8 weights per output channel, activations to 7 bits over the call's rows."""
    layer = _layer(bias=False)
    x = torch.randn(3, 64)
    got = packed_linear(x, pack_weight(layer.weight, None, "int8"), "int8")
    scale = layer.weight.abs().amax(1, keepdim=True) / 127
    weight = (layer.weight / scale).round().clamp(-127, 127) * scale
    x_scale = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 127
    zero = (-x.min().clamp(max=0) / x_scale).round()
    x_deq = ((x / x_scale).round() + zero).clamp(0, 127).sub(zero) * x_scale
    expected = x_deq @ weight.t()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    exact = x @ layer.weight.t()
    assert 0 < (got - exact).abs().max() < 0.05 * exact.abs().max()


def test_quant_linear_packs_once_and_keeps_the_copy():
    layer = _layer()
    x = torch.randn(2, 64)
    first = quant_linear(x, layer, "int8")
    packed = layer.__dict__[QUANT_COPY["int8"]]
    assert torch.equal(quant_linear(x, layer, "int8"), first)
    assert layer.__dict__[QUANT_COPY["int8"]] is packed


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="int3"):
        pack_weight(torch.zeros(2, 2), None, "int3")


@pytest.mark.parametrize("rows", (3, 20))
def test_int8_rows_are_quantized_each_on_its_own(rows):
    """A row's output is the same whether it is computed alone or beside others (the per-row loop up
    to ROW_LOOP_LIMIT rows, the float32 reference beyond)."""
    layer = _layer()
    x = torch.randn(rows, 64) * torch.linspace(0.1, 5.0, rows)[:, None]  # rows of very different ranges
    together = quant_linear(x, layer, "int8")
    alone = torch.cat([quant_linear(x[row:row + 1], layer, "int8") for row in range(rows)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
