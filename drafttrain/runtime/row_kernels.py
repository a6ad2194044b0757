"""Row kernels: which formulation of `x @ W.T` a forward of n rows runs, chosen per row count.

On a CPU the BLAS picks its GEMM kernel by the shapes, and for the few rows of a decode step or a
small verify the pick is often poor: on the reference target (hidden 256, 2 cores) a forward of 4
rows cost 1.6x one of 1 row, although it reads the same weights. The same product computed as
`(W @ x.T).T` with W output-major, or as `x @ W.T` from an input-major or an output-major W, hits
different kernels, and which is fastest changes with the row count and the machine. So it is
measured, not guessed: `drafttrain.calibration.latency.tune_row_kernels` times whole forwards of the
model under each formulation at each row count, and the winners form a plan {rows: kernel} that the
model applies (`apply_row_kernels`) and the latency profile stores, so that the costs the
scheduler predicts are those of the kernels that run.

Kernels (every one computes the same product; roundings may differ in the last bits, as between
any two GEMM kernels):
- `input_major`: `F.linear` over the input-major weight (`Transformer.use_input_major_weights`),
  the default, and the fastest for one row;
- `output_major`: `F.linear` over an output-major copy of the weight;
- `output_major_t`: `(W @ x.T).T` over the output-major copy.

The output-major copies double the block weights' memory; they are made only when a plan uses
them, and only on CPU (CUDA keeps cuBLAS's choice).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("input_major", "output_major", "output_major_t")
DEFAULT_KERNEL = "input_major"
OUTPUT_MAJOR = "output_major_weight"  # attribute of an nn.Linear holding its output-major copy
PLAN = "row_kernels"  # attribute of an nn.Linear holding the model's plan {rows: kernel}


def project(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`F.linear(x, layer.weight, layer.bias)` for x [rows, in], by the kernel the layer's plan gives
    for this many rows."""
    plan = layer.__dict__.get(PLAN)
    kernel = plan.get(x.shape[0]) if plan and x.dim() == 2 else None
    if kernel is None:
        return F.linear(x, layer.weight, layer.bias)
    return linear_with(x, layer.weight, layer.__dict__[OUTPUT_MAJOR], layer.bias, kernel)


def linear_with(x: torch.Tensor, weight: torch.Tensor, output_major: torch.Tensor, bias: torch.Tensor | None,
                kernel: str) -> torch.Tensor:
    """x @ weight.T (+ bias) computed by `kernel`; `output_major` is the weight stored [out, in]."""
    if kernel == "output_major_t":
        out = (output_major @ x.t()).t()
        return out if bias is None else out + bias
    if kernel == "output_major":
        return F.linear(x, output_major, bias)
    if kernel == "input_major":
        return F.linear(x, weight, bias)
    raise ValueError(f"unknown row kernel {kernel!r}: use one of {KERNELS}")


def head_logits(x: torch.Tensor, weight: torch.Tensor, plan: Mapping[int, str] | None) -> torch.Tensor:
    """The LM head's product x @ weight.T; the head's weight is output-major (tied to the embedding
    or not), so only `output_major_t` changes how it is computed."""
    if plan and x.dim() == 2 and plan.get(x.shape[0]) == "output_major_t":
        return (weight @ x.t()).t()
    return F.linear(x, weight)


def check_plan(plan: Mapping[int, str]) -> dict[int, str]:
    """The plan as {rows: kernel}, checked: row counts >= 1, known kernels."""
    checked = {}
    for rows, kernel in plan.items():
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"row kernel plan: row count {rows!r} is invalid; use integers >= 1")
        if kernel not in KERNELS:
            raise ValueError(f"row kernel plan: kernel {kernel!r} for {rows} rows is unknown; use one of {KERNELS}")
        checked[rows] = kernel
    return checked


def pick_row_kernels(seconds: Mapping[int, Mapping[str, float]], margin: float = 0.03) -> dict[int, str]:
    """The plan from timings {rows: {kernel: seconds}}: for each row count the fastest kernel, kept
    only when it beats the default by more than `margin` (a fraction), so that timing noise does not
    swap kernels that cost the same."""
    plan = {}
    for rows, by_kernel in seconds.items():
        default = by_kernel[DEFAULT_KERNEL]
        kernel = min(by_kernel, key=by_kernel.__getitem__)
        if kernel != DEFAULT_KERNEL and by_kernel[kernel] < default * (1.0 - margin):
            plan[rows] = kernel
    return plan
