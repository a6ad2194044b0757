"""Row kernels: which formulation of `x @ W.T` a forward of n rows runs, chosen per row count.

On a CPU the BLAS picks its GEMM kernel by the shapes, and for the few rows of a decode step or a
small verify the pick is often poor: on the reference target (hidden 256, 2 cores) a forward of 4
rows cost 1.6x one of 1 row, although it reads the same weights. The same product computed as
`(W @ x.T).T` with W output-major, as `x @ W.T` from an input-major or an output-major W, or by
oneDNN over a weight it has laid out ahead of time (packed) for few-row products, hits different
kernels, and which is fastest changes with the row count and the machine. So it is
measured, not guessed: `drafttrain.calibration.latency.tune_row_kernels` times whole forwards of the
model under each formulation at each row count, and the winners form a plan {rows: kernel} that the
model applies (`apply_row_kernels`) and the latency profile stores, so that the costs the
scheduler predicts are those of the kernels that run.

Kernels (every one computes the same product; roundings may differ in the last bits, as between
any two GEMM kernels):
- `input_major`: `F.linear` over the input-major weight (`Transformer.use_input_major_weights`),
  the default, and the fastest for one row;
- `output_major`: `F.linear` over an output-major copy of the weight;
- `output_major_t`: `(W @ x.T).T` over the output-major copy;
- `onednn`: oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`, the op PyTorch's own CPU
  inference compiler emits) over a packed copy of the weight. On the reference target's CPU it
  computes the LM head's 8192 x 256 product for one row in 84 us against 310 us for `F.linear`, and
  for 16 rows in 190 against 670 us. Offered where this PyTorch build has oneDNN, for float32 weights.

Row counts above `LARGEST_EXACT` (prefills, large trees) share a plan entry per bucket: a count runs
the kernel of the largest of `LARGE_COUNTS` at or below it (`kernel_for`), so a tuner that times
those counts covers prefills too.

The copies (output-major, packed) each double the block weights' memory; they are made only when a
plan uses them, and only on CPU (CUDA keeps cuBLAS's choice). A copy is taken when the plan is
applied: a model whose weights change in place must apply its plan again.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("input_major", "output_major", "output_major_t", "onednn")
DEFAULT_KERNEL = "input_major"
OUTPUT_MAJOR = "output_major_weight"  # attribute of an nn.Linear holding its output-major copy
ONEDNN_WEIGHT = "onednn_weight"  # attribute of an nn.Linear holding its oneDNN-packed copy
PLAN = "row_kernels"  # attribute of an nn.Linear holding the model's plan {rows: kernel}
COPIES = {"output_major": OUTPUT_MAJOR, "output_major_t": OUTPUT_MAJOR, "onednn": ONEDNN_WEIGHT}
ONEDNN_PACK_ROWS = 16  # the row count oneDNN lays a packed weight out for (any count runs on it)
LARGEST_EXACT = 64  # row counts up to this one have their own plan entry
LARGE_COUNTS = (96, 128, 192, 256, 384, 512)  # buckets for larger counts (`kernel_for`)
_BUCKETS = (LARGEST_EXACT, *LARGE_COUNTS)


def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build can run the `onednn` kernel for weights of `dtype`."""
    return (dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def available_kernels(dtype: torch.dtype) -> tuple[str, ...]:
    """The kernels a CPU model with weights of `dtype` can run on this build."""
    return tuple(kernel for kernel in KERNELS if kernel != "onednn" or onednn_available(dtype))


def kernel_for(plan: Mapping[int, str], rows: int) -> str | None:
    """The plan's kernel for a product over `rows` rows (None: the default): its own entry up to
    `LARGEST_EXACT` rows, beyond that the entry of its bucket."""
    if rows > LARGEST_EXACT:
        rows = _BUCKETS[bisect.bisect_right(_BUCKETS, rows) - 1]
    return plan.get(rows)


def copies_for(kernels: Iterable[str]) -> set[str]:
    """The weight copies (attribute names) that running `kernels` needs."""
    return {COPIES[kernel] for kernel in kernels if kernel in COPIES}


def pack_onednn(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] packed for oneDNN's linear (the `onednn` kernel)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), ONEDNN_PACK_ROWS)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def project(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`F.linear(x, layer.weight, layer.bias)` for x [rows, in], by the kernel the layer's plan gives
    for this many rows."""
    plan = layer.__dict__.get(PLAN)
    kernel = kernel_for(plan, x.shape[0]) if plan and x.dim() == 2 else None
    if kernel is None:
        return F.linear(x, layer.weight, layer.bias)
    copies = layer.__dict__
    return linear_with(x, layer.weight, copies.get(OUTPUT_MAJOR), layer.bias, kernel, copies.get(ONEDNN_WEIGHT))


def linear_with(x: torch.Tensor, weight: torch.Tensor, output_major: torch.Tensor | None,
                bias: torch.Tensor | None, kernel: str, packed: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias) computed by `kernel`; `output_major` is the weight stored [out, in],
    `packed` its oneDNN-packed copy (`pack_onednn`)."""
    if kernel == "onednn":
        return onednn_linear(x, packed, bias)
    if kernel == "output_major_t":
        out = (output_major @ x.t()).t()
        return out if bias is None else out + bias
    if kernel == "output_major":
        return F.linear(x, output_major, bias)
    if kernel == "input_major":
        return F.linear(x, weight, bias)
    raise ValueError(f"unknown row kernel {kernel!r}: use one of {KERNELS}")


def head_logits(x: torch.Tensor, weight: torch.Tensor, kernel: str | None,
                packed: torch.Tensor | None = None) -> torch.Tensor:
    """The LM head's product x @ weight.T by `kernel` (None: the default); the head's weight is
    output-major (tied to the embedding or not), so `output_major` is the default, and `onednn`
    needs the head's packed copy."""
    if kernel == "output_major_t":
        return (weight @ x.t()).t()
    if kernel == "onednn":
        return onednn_linear(x, packed, None)
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
