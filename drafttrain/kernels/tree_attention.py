"""Tree-verification attention over the static KV cache, as one Triton kernel (flash-attention style).

A verify step feeds n new tokens (the root and the draft tree's nodes) whose keys and values were
just written to cache slots start .. start + n - 1. Query i sees every committed slot (0 .. start - 1)
and, among the new slots, only those `tree_mask[i]` marks (its ancestors and itself). The kernel takes
the number of leading slots every query sees (`prefix_length`) and a mask for the slots after them,
so a verify step passes only its [n, n] tree part; a caller that cannot vouch for a prefix passes
prefix_length = 0 and the whole [n, slots] mask. Keys stream in blocks with an online softmax (fp32
statistics), with no float mask materialized.

`tree_attention_reference` is the plain torch definition the kernel must match.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from drafttrain.errors import DrafttrainError
from drafttrain.kernels.launch import check_launchable

BLOCK_M = 16  # queries per program (a tree of up to 16 nodes in one block)
BLOCK_N = 64  # keys per inner step


def tree_attention_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, prefix_length: int,
                             tree_mask: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """q [heads, n, head_dim]; keys, values [kv_heads, slots, head_dim]; tree_mask [n, slots -
    prefix_length] bool: whether query i may see slot prefix_length + j (every query sees the slots
    before prefix_length). Returns [heads, n, head_dim]."""
    n = q.shape[1]
    visible = torch.cat((torch.ones(n, prefix_length, dtype=torch.bool, device=q.device), tree_mask.bool()), dim=1)
    return F.scaled_dot_product_attention(q[None], keys[None], values[None], attn_mask=visible[None, None],
                                          scale=scale, enable_gqa=q.shape[0] != keys.shape[0])[0]


def check_shapes(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, prefix_length: int,
                 tree_mask: torch.Tensor) -> None:
    heads, n, head_dim = q.shape
    kv_heads, n_keys, key_dim = keys.shape
    problems = []
    if values.shape != keys.shape:
        problems.append(f"values {tuple(values.shape)} differ from keys {tuple(keys.shape)}")
    if key_dim != head_dim:
        problems.append(f"keys have head_dim {key_dim}, queries {head_dim}")
    if heads % kv_heads:
        problems.append(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
    if not 0 <= prefix_length <= n_keys:
        problems.append(f"prefix_length {prefix_length} is outside the {n_keys} key slots")
    if tuple(tree_mask.shape) != (n, n_keys - prefix_length):
        problems.append(f"tree_mask is {tuple(tree_mask.shape)}, expected (n, slots - prefix_length) = "
                        f"({n}, {n_keys - prefix_length})")
    if problems:
        raise DrafttrainError("tree_attention: " + "; ".join(problems))


def tree_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, prefix_length: int,
                   tree_mask: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """`tree_attention_reference` computed by the Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1)."""
    check_launchable("tree_attention", q, keys, values, tree_mask)
    check_shapes(q, keys, values, prefix_length, tree_mask)
    import triton

    q, keys, values = (tensor if tensor.stride(-1) == 1 else tensor.contiguous() for tensor in (q, keys, values))
    heads, n, head_dim = q.shape
    mask = tree_mask.to(torch.int8).contiguous()
    out = torch.empty_like(q)
    grid = (heads, triton.cdiv(n, BLOCK_M))
    _kernel()[grid](
        q, keys, values, mask, out, scale if scale is not None else 1.0 / math.sqrt(head_dim),
        n, keys.shape[1], prefix_length, heads // keys.shape[0],
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), values.stride(0), values.stride(1),
        out.stride(0), out.stride(1), mask.stride(0),
        HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=triton.next_power_of_2(head_dim),
        IEEE=q.dtype == torch.float32)
    return out



def _define_kernel():
    """The jitted kernel (defined on first use, see `_kernel`, so importing this module does not import triton)."""
    import triton
    import triton.language as tl

    @triton.jit
    def tree_attention_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, scale, n_queries, n_keys, prefix_length,
                              group, stride_qh, stride_qn, stride_kh, stride_kn, stride_vh, stride_vn,
                              stride_oh, stride_on, stride_mask, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
        head = tl.program_id(0)
        kv_head = head // group
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        row_ok, dim_ok = rows < n_queries, dims < HEAD_DIM
        q = tl.load(q_ptr + head * stride_qh + rows[:, None] * stride_qn + dims[None, :],
                    mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        running_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for first in range(0, n_keys, BLOCK_N):
            cols = first + tl.arange(0, BLOCK_N)
            col_ok = cols < n_keys
            tile = col_ok[:, None] & dim_ok[None, :]
            k = tl.load(k_ptr + kv_head * stride_kh + cols[:, None] * stride_kn + dims[None, :], mask=tile, other=0.0)
            if IEEE:
                scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                scores = tl.dot(q, tl.trans(k)) * scale
            in_tree = cols >= prefix_length
            tree_bits = tl.load(mask_ptr + rows[:, None] * stride_mask + (cols - prefix_length)[None, :],
                                mask=row_ok[:, None] & (in_tree & col_ok)[None, :], other=0)
            visible = ((tree_bits != 0) | (~in_tree)[None, :]) & col_ok[None, :]
            scores = tl.where(visible, scores, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, 1))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows that have seen nothing yet
            weights = tl.exp(scores - safe_max[:, None])
            rescale = tl.exp(running_max - safe_max)
            running_sum = running_sum * rescale + tl.sum(weights, 1)
            v = tl.load(v_ptr + kv_head * stride_vh + cols[:, None] * stride_vn + dims[None, :], mask=tile, other=0.0)
            if IEEE:
                acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
            running_max = new_max
        out = acc / tl.where(running_sum > 0, running_sum, 1.0)[:, None]
        tl.store(out_ptr + head * stride_oh + rows[:, None] * stride_on + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])

    return tree_attention_kernel


_kernel = functools.cache(_define_kernel)
