"""Reduced-precision linears for self-draft views on CPU: fbgemm's int8 (W8A8) and fp16 weight-only.

A decode step of a real target on CPU is bound by memory bandwidth: SmolLM2-135M's 30 blocks read
425 MB of float32 weights per token. A view whose weights are smaller reads less, but only a kernel
that computes from the small weights directly saves time; PyTorch's generic weight-only ops
(`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) and bf16 `F.linear` on a CPU without native
bf16 were measured slower than float32 at these shapes (scripts/bench_cpu_quant.py). fbgemm's
prepacked linears were measured faster, so they are what the views run:

- `int8`: `quantized.linear_dynamic`, weights quantized per output channel (symmetric int8), each
  row's activations quantized by fbgemm (asymmetric, to 7 bits:
  `reduce_range`, without which fbgemm's int16 pair sums saturate and the product is off by far
  more than the rounding). The view's output differs from the target's (a draft: verification
  keeps decoding exact).
- `fp16`: `quantized.linear_dynamic_fp16`, weights stored in float16, activations in float32.

Each packed copy lives on its `nn.Linear` (attribute `QUANT_COPY[kind]`), made on first use by
`quant_linear`.
On CUDA these are not used (the int8 view runs the Triton W8A8 GEMM of `drafttrain.kernels`).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

CPU_WEIGHT_KINDS = ("int8", "fp16")
QUANT_COPY = {"int8": "fbgemm_int8_weight", "fp16": "fbgemm_fp16_weight"}
ROW_LOOP_LIMIT = 8  # int8 calls of up to this many rows run fbgemm once per row (`quant_linear`)


@functools.cache
def fbgemm_available() -> bool:
    """Whether this PyTorch build has fbgemm's quantized linears (x86 builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")


def int8_weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """[out] per-output-channel scale of the symmetric int8 weight (max |w| maps to 127)."""
    return (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)


def pack_weight(weight: torch.Tensor, bias: torch.Tensor | None, kind: str):
    """fbgemm's packed form of a float32 [out, in] weight (and bias) for `kind`."""
    weight = weight.detach().float().contiguous()
    bias = None if bias is None else bias.detach().float()
    if kind == "fp16":
        return torch.ops.quantized.linear_prepack_fp16(weight, bias)
    if kind != "int8":
        raise ValueError(f"unknown CPU weight kind {kind!r}: use one of {CPU_WEIGHT_KINDS}")
    scale = int8_weight_scale(weight).double()
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated, fbgemm's packing still takes them
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(quantized, bias)


def packed_linear(x: torch.Tensor, packed, kind: str) -> torch.Tensor:
    """x [rows, in] float32 times a packed weight: [rows, out] float32 (int8: activations quantized
    over all the rows at once)."""
    if kind == "int8":
        return torch.ops.quantized.linear_dynamic(x.contiguous(), packed, True)
    return torch.ops.quantized.linear_dynamic_fp16(x.contiguous(), packed)


def quant_linear(x: torch.Tensor, layer: nn.Linear, kind: str) -> torch.Tensor:
    """`layer(x)` through its packed `kind` copy (made here on first use).

    int8 quantizes each row's activations on its own, so a token's draft distribution does not depend
    on how many tokens share its call: one call per row up to `ROW_LOOP_LIMIT` rows (decoding's
    drafting calls, a tree level), beyond that (teacher-forced scoring in the search) the same
    numbers computed in float32 from the int8 weight (`int8_rows_reference`)."""
    packed = layer.__dict__.get(QUANT_COPY[kind])
    if packed is None:
        packed = layer.__dict__[QUANT_COPY[kind]] = pack_weight(layer.weight, layer.bias, kind)
    rows = x.shape[0]
    if kind != "int8" or rows == 1:
        return packed_linear(x, packed, kind)
    if rows <= ROW_LOOP_LIMIT:
        return torch.cat([packed_linear(x[row:row + 1], packed, kind) for row in range(rows)])
    return int8_rows_reference(x, layer)


def int8_rows_reference(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """fbgemm's int8 product with each row's activations quantized on its own, in float32: 7-bit
    asymmetric activations over [min(row, 0), max(row, 0)] times the per-channel int8 weight."""
    dequantized = layer.__dict__.get("int8_dequantized_weight")
    if dequantized is None:
        weight = layer.weight.detach().float()
        scale = int8_weight_scale(weight)[:, None]
        dequantized = layer.__dict__["int8_dequantized_weight"] = (weight / scale).round().clamp(-127, 127) * scale
    low, high = x.amin(dim=1, keepdim=True).clamp(max=0), x.amax(dim=1, keepdim=True).clamp(min=0)
    scale = ((high - low) / 127.0).clamp(min=1e-12)
    zero = (-low / scale).round()
    activations = ((x / scale).round() + zero).clamp(0, 127).sub(zero) * scale
    return F.linear(activations, dequantized, layer.bias)


def runs_quantized(x: torch.Tensor, kind: str | None) -> bool:
    """Whether a CPU view computes `kind` through fbgemm here (float32 activations on CPU)."""
    return (kind in CPU_WEIGHT_KINDS and x.device.type == "cpu" and x.dtype == torch.float32
            and fbgemm_available())


def rounded_fp16(layer: nn.Linear) -> torch.Tensor:
    """The layer's weight rounded to float16 and back (kept on the layer): what an fp16 view computes
    with where fbgemm does not run."""
    rounded = layer.__dict__.get("fp16_rounded_weight")
    if rounded is None or rounded.device != layer.weight.device:
        rounded = layer.__dict__["fp16_rounded_weight"] = layer.weight.detach().half().to(layer.weight.dtype)
    return rounded
