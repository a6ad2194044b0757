"""W8A8 linear layers for activation-quantized self-draft levels: a Triton int8 GEMM with its reference.

A self-draft level that quantizes activations to int8 only pays on a GPU if the matrix multiply
itself runs in int8. `int8_linear` does: activations are quantized per token (symmetric, scale =
max |x| / 127, as `drafttrain.runtime.views.fake_quant` does), weights per output channel (once, by
`quantize_weight`), the kernel accumulates int8 x int8 products in int32 and rescales in fp32:

    y[m, n] = (sum_k x_q[m, k] * w_q[n, k]) * x_scale[m] * w_scale[n] + bias[n]

`int8_linear_reference` is the exact definition (integer products summed in float64, which is exact
for any layer width below 2^38). Note the numerics differ from the CPU fake-quant view, whose weights
stay in floating point: a level run this way must be calibrated on the GPU (it is anyway: acceptance
and latency are measured on the hardware that decodes).
"""

from __future__ import annotations

import functools

import torch

from drafttrain.errors import DrafttrainError
from drafttrain.kernels.launch import check_launchable

INT8_MAX = 127
BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 64


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of each row: (int8 values [rows, cols], fp32 scales [rows])."""
    scale = matrix.float().abs().amax(dim=-1).clamp(min=1e-8) / INT8_MAX
    values = (matrix.float() / scale[:, None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return values, scale


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer's weight [out_features, in_features] quantized per output channel."""
    return quantize_rows(weight)


def int8_linear_reference(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [tokens, in_features] (float) through the quantized weight; the result in x's dtype."""
    x_q, x_scale = quantize_rows(x)
    products = x_q.double() @ weight_q.double().T
    out = products * x_scale.double()[:, None] * weight_scale.double()[None, :]
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)


def int8_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """`int8_linear_reference` with the GEMM in the Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1)."""
    check_launchable("int8_linear", x, weight_q, weight_scale)
    if x.dim() != 2 or weight_q.dim() != 2 or x.shape[1] != weight_q.shape[1]:
        raise DrafttrainError(f"int8_linear: x {tuple(x.shape)} and weight {tuple(weight_q.shape)} do not chain: "
                              "expected x [tokens, in_features] and weight [out_features, in_features]")
    if weight_q.dtype != torch.int8:
        raise DrafttrainError(f"int8_linear: the weight is {weight_q.dtype}; quantize it with quantize_weight first")
    import triton

    x_q, x_scale = quantize_rows(x)
    weight_q = weight_q.contiguous()
    tokens, out_features = x.shape[0], weight_q.shape[0]
    out = torch.empty(tokens, out_features, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(tokens, BLOCK_M), triton.cdiv(out_features, BLOCK_N))
    _kernel()[grid](x_q, weight_q, x_scale, weight_scale.float().contiguous(),
                    bias if bias is not None else out, out, tokens, out_features, x.shape[1],
                    x_q.stride(0), weight_q.stride(0), out.stride(0), HAS_BIAS=bias is not None,
                    BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out



def _define_kernel():
    """The jitted kernel (defined on first use, see `_kernel`, so importing this module does not import triton)."""
    import triton
    import triton.language as tl

    @triton.jit
    def int8_gemm_kernel(x_ptr, w_ptr, x_scale_ptr, w_scale_ptr, bias_ptr, out_ptr, tokens, out_features,
                         in_features, stride_x, stride_w, stride_out, HAS_BIAS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok, col_ok = rows < tokens, cols < out_features
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        for first in range(0, in_features, BLOCK_K):
            ks = first + tl.arange(0, BLOCK_K)
            k_ok = ks < in_features
            x = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0)
            w = tl.load(w_ptr + cols[None, :] * stride_w + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0)
            acc += tl.dot(x, w, out_dtype=tl.int32)
        x_scale = tl.load(x_scale_ptr + rows, mask=row_ok, other=0.0)
        w_scale = tl.load(w_scale_ptr + cols, mask=col_ok, other=0.0)
        out = acc.to(tl.float32) * x_scale[:, None] * w_scale[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])

    return int8_gemm_kernel


_kernel = functools.cache(_define_kernel)
