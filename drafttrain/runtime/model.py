"""The decoding transformer: Llama/Qwen2/Mistral blocks over a static KV cache (gpt-fast style).

One `forward` serves every use: prefill, single-token decode, chain and tree verification, and
self-draft views. The caller says where the new tokens sit (`positions` for RoPE, `start` for the
cache slots) and which earlier slots each may see (`mask`); q/k/v and gate/up projections are
fused so a decode step issues few kernels. Batch size is 1.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from drafttrain.kernels.launch import kernels_enabled
from drafttrain.kernels.tree_attention import tree_attention
from drafttrain.runtime.cache import KVCache, causal_mask
from drafttrain.runtime.cpu_quant import quant_linear, rounded_fp16, runs_quantized
from drafttrain.runtime.row_kernels import (
    COPIES,
    ONEDNN_WEIGHT,
    OUTPUT_MAJOR,
    PLAN,
    available_kernels,
    check_plan,
    copies_for,
    head_logits,
    kernel_for,
    pack_onednn,
    project,
)
from drafttrain.runtime.rope import (
    RopeScaling,
    apply_rope,
    inverse_frequencies,
    rope_tables,
)
from drafttrain.runtime.views import SelfDraftView, fake_quant


@dataclass(frozen=True)
class ModelArgs:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    sliding_window: int | None = None


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, as `transformers` does, then scaled in the model dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _linear(x: torch.Tensor, layer: nn.Linear, quant: str | None) -> torch.Tensor:
    """The layer's projection called functionally (no module-call overhead on the decode path).

    An int8-quantized view runs W8A8 with the weight quantized per output channel once and kept on the
    layer: on CUDA through the Triton int8 GEMM (`drafttrain.kernels`), on CPU through fbgemm
    (`drafttrain.runtime.cpu_quant`), as does an fp16 (weight-only) view. Elsewhere, and for int4,
    the activations are fake-quantized and the weight stays in floating point."""
    if quant is None:  # the target's own projection: the hot path, no precision checks
        return project(x, layer)
    if quant == "int8" and kernels_enabled(x.device):
        from drafttrain.kernels.int8_linear import int8_linear, quantize_weight

        quantized = getattr(layer, "int8_weight", None)
        if quantized is None or quantized[0].device != x.device:
            quantized = layer.int8_weight = quantize_weight(layer.weight.detach())
        return int8_linear(x.reshape(-1, x.shape[-1]), *quantized, layer.bias).view(*x.shape[:-1], -1)
    if runs_quantized(x, quant):
        return quant_linear(x, layer, quant)
    if quant == "fp16":  # no fbgemm here: the same rounding of the weights, without the saving
        return F.linear(x, rounded_fp16(layer), layer.bias)
    return project(fake_quant(x, quant), layer)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = args.num_heads, args.num_kv_heads, args.head_dim
        q_size, kv_size = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
        self.wqkv = nn.Linear(args.hidden_size, q_size + 2 * kv_size, bias=args.qkv_bias)
        self.wo = nn.Linear(q_size, args.hidden_size, bias=args.o_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
                layer: int, start: int | torch.Tensor, mask: torch.Tensor | None, quant: str | None,
                rows: slice | torch.Tensor | None = None) -> torch.Tensor | None:
        """Write every token's keys and values; return the attention output of the query `rows` (None:
        all of them; an empty selection: none, and None is returned)."""
        n = x.shape[0]
        qkv = _linear(x, self.wqkv, quant).view(n, -1, self.head_dim)
        qk = apply_rope(qkv[:, :self.num_heads + self.num_kv_heads], cos, sin)  # one rotation for q and k
        q, k = qk[:, :self.num_heads], qk[:, self.num_heads:]
        new_values = qkv[:, self.num_heads + self.num_kv_heads:].transpose(0, 1)
        fixed = isinstance(start, torch.Tensor)
        if fixed:  # fixed shapes: slots as a tensor, attend over the whole cache
            cache.write_slots(layer, start, k.transpose(0, 1), new_values)
            keys, values = cache.read_all(layer)
        else:
            cache.write(layer, start, k.transpose(0, 1), new_values)
            keys, values = cache.read(layer, start + n)
        if rows is not None:  # the caller reads these rows only: the other queries need no attention
            if mask is None and n > 1:
                mask = causal_mask(start, n, x.device)
            q, mask = q[rows], None if mask is None else mask[rows]
            n = q.shape[0]
            if n == 0:
                return None
        if mask is not None and not fixed and kernels_enabled(x.device):
            # a draft level's tree hides earlier tree slots too: the kernel reads the whole mask
            out = tree_attention(q.transpose(0, 1), keys, values, 0, mask)
            return _linear(out.transpose(0, 1).reshape(n, -1), self.wo, quant)
        causal_from_zero = mask is None and n > 1
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], keys[None], values[None],
            attn_mask=None if mask is None else mask[None, None],
            is_causal=causal_from_zero, enable_gqa=self.num_heads != self.num_kv_heads)
        return _linear(out[0].transpose(0, 1).reshape(n, -1), self.wo, quant)


def _pruned_rows(logits_rows: slice | torch.Tensor | None, fixed: bool) -> slice | torch.Tensor | None:
    """The rows the last layer computes past its keys and values: those whose logits are asked for (an
    empty selection for none), or None for every row. No later layer reads the others, so leaving them
    out changes nothing that is returned or cached; it saves most of a one-layer draft's catch-up feed
    and 1/num_layers of a prefill. Fixed-shape forwards (CUDA graphs, the Triton tree kernel) keep every
    row."""
    if fixed or (isinstance(logits_rows, slice) and logits_rows == slice(None)):
        return None
    return slice(0, 0) if logits_rows is None else logits_rows


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.intermediate = args.intermediate_size
        self.w13 = nn.Linear(args.hidden_size, 2 * args.intermediate_size, bias=args.mlp_bias)
        self.w2 = nn.Linear(args.intermediate_size, args.hidden_size, bias=args.mlp_bias)

    def forward(self, x: torch.Tensor, quant: str | None) -> torch.Tensor:
        gate, up = _linear(x, self.w13, quant).split(self.intermediate, dim=-1)
        return _linear(F.silu(gate) * up, self.w2, quant)


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.input_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.attn = Attention(args)
        self.post_attn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = MLP(args)


def _make_copies(layer: nn.Linear, needed: set[str]) -> None:
    """Give `layer` the weight copies `needed` (attribute names) and drop the others."""
    makers = {OUTPUT_MAJOR: lambda weight: weight.contiguous(), ONEDNN_WEIGHT: pack_onednn}
    for copy, make in makers.items():
        if copy not in needed:
            layer.__dict__.pop(copy, None)
        elif copy not in layer.__dict__:
            layer.__dict__[copy] = make(layer.weight.detach())


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.row_kernels: dict[int, str] = {}  # rows -> kernel (`apply_row_kernels`); empty: the default
        self._init_rope()

    def _init_rope(self, device: torch.device | str | None = None) -> None:
        """(Re)build the float32 RoPE tables, e.g. after loading weights onto a device."""
        args = self.args
        cos, sin = rope_tables(args.max_position_embeddings,
                               inverse_frequencies(args.head_dim, args.rope_theta, args.rope_scaling))
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def use_input_major_weights(self) -> Transformer:
        """Store each block's projection weights input-major ([in, out] contiguous, seen as the usual
        [out, in] through a transposed view), in place, and return the model.

        On CPU, MKL's GEMM over a few rows (decode, verify of a small tree) reads an input-major weight
        faster than an output-major one (docs/benchmarks.md, scheduling section). The math is the same
        product (the rounding of a sum may differ in the last bits, as between any two GEMM
        kernels). The LM head keeps its layout: it is usually tied to the embedding, whose lookups
        want rows."""
        for block in self.layers:
            for layer in (block.attn.wqkv, block.attn.wo, block.mlp.w13, block.mlp.w2):
                weight = layer.weight.detach()
                layer.weight = nn.Parameter(weight.t().contiguous().t(), requires_grad=weight.requires_grad)
                for copy in set(COPIES.values()):
                    layer.__dict__.pop(copy, None)  # copies of the old weight: remade below
        self.apply_row_kernels(self.row_kernels)
        return self

    def apply_row_kernels(self, plan: dict[int, str], prepare: tuple[str, ...] = ()) -> dict[int, str]:
        """Run forwards of n rows with the kernel `plan[n]` (`drafttrain.runtime.row_kernels`), in place;
        returns the plan the layers share (changing it changes what they run, for the kernels
        `prepare` names besides the plan's own). Kernels other than the default need a copy of each
        block weight (output-major or oneDNN-packed), made here; copies no kernel needs are dropped.
        On CUDA the plan is ignored (an empty plan is returned): cuBLAS chooses its own kernels. Kernels
        this build cannot run (`available_kernels`) are left out of the plan, with a warning."""
        plan = check_plan(plan) if self.device.type == "cpu" else {}
        runnable = available_kernels(self.dtype)
        if any(kernel not in runnable for kernel in plan.values()):
            warnings.warn(f"row kernels {sorted(set(plan.values()) - set(runnable))} cannot run here (this PyTorch "
                          f"build and dtype {self.dtype} run {runnable}): those row counts use the default")
            plan = {rows: kernel for rows, kernel in plan.items() if kernel in runnable}
        needed = copies_for([*plan.values(), *(kernel for kernel in prepare if kernel in runnable)])
        for block in self.layers:
            for layer in (block.attn.wqkv, block.attn.wo, block.mlp.w13, block.mlp.w2):
                _make_copies(layer, needed)
                if plan or needed:
                    layer.__dict__[PLAN] = plan
                else:
                    layer.__dict__.pop(PLAN, None)
        self.__dict__["_packed_heads"] = {}  # the heads' packed copies, remade on first use
        self.row_kernels = plan
        return plan

    def _head_kernel(self, weight: torch.Tensor, rows: int) -> tuple[str | None, torch.Tensor | None]:
        """The plan's kernel for a head product over `rows` rows, and for `onednn` the packed copy of
        `weight` (the LM head's or a draft's vocabulary subset), packed once per weight."""
        kernel = kernel_for(self.row_kernels, rows) if self.row_kernels else None
        if kernel != "onednn":
            return kernel, None
        packed_heads = self.__dict__.setdefault("_packed_heads", {})
        entry = packed_heads.get(id(weight))
        if entry is None or entry[0] is not weight:
            entry = packed_heads[id(weight)] = (weight, pack_onednn(weight))
        return kernel, entry[1]

    def new_cache(self, max_len: int | None = None) -> KVCache:
        args = self.args
        return KVCache(args.num_layers, args.num_kv_heads, args.max_position_embeddings if max_len is None else max_len,
                       args.head_dim, self.dtype, self.device)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int | torch.Tensor,
                mask: torch.Tensor | None = None, view: SelfDraftView | None = None,
                logits_rows: slice | torch.Tensor | None = slice(None),
                head: torch.Tensor | None = None) -> torch.Tensor | None:
        """Run `tokens` [n], writing their keys/values at cache slots start .. start + n - 1.

        positions: [n] RoPE positions. mask: [n, start + n] bool of the slots each token may see;
        None means causal over slots 0 .. start + n - 1 (n == 1, or a prefill from slot 0).
        Fixed shapes (`drafttrain.runtime.static`): `start` is a tensor of the n slots to write and
        `mask` is [n, cache.max_len]; nothing then depends on host values (CUDA graphs can capture it).
        Returns float32 logits [rows, vocab] for `logits_rows` of the new tokens (None: no logits);
        `head` replaces the LM head's weight (e.g. some of its rows: a draft's vocabulary subset).
        """
        fixed = isinstance(start, torch.Tensor)
        if mask is None and tokens.shape[0] > 1 and (fixed or start > 0):
            raise ValueError("a multi-token forward after slot 0 needs an explicit mask")
        if fixed and mask is None:
            raise ValueError("a fixed-shape forward (slots as a tensor) needs a mask over the whole cache")
        cos = self.rope_cos[positions].to(self.dtype)[:, None, :]
        sin = self.rope_sin[positions].to(self.dtype)[:, None, :]
        x = F.embedding(tokens, self.embed.weight)
        last, rows = len(self.layers) - 1, _pruned_rows(logits_rows, fixed or kernels_enabled(tokens.device))
        for index, block in enumerate(self.layers):
            quant = view.quant_for(index) if view is not None else None
            wanted = rows if index == last else None
            if view is None or index not in view.skip_attn:
                normed = rms_norm(x, block.input_norm.weight, block.input_norm.eps)
                out = block.attn.forward(normed, cos, sin, cache, index, start, mask, quant, wanted)
                if out is None:  # no logits wanted: the last layer only had keys and values to write
                    return None
                x = (x if wanted is None else x[wanted]) + out
            elif wanted is not None:
                x = x[wanted]
            if view is None or index not in view.skip_mlp:
                normed = rms_norm(x, block.post_attn_norm.weight, block.post_attn_norm.eps)
                x = x + block.mlp.forward(normed, quant)
        if logits_rows is None:
            return None
        selected = x if rows is not None else x[logits_rows]
        if head is None and view is not None and view.head_quant is not None:
            return _linear(rms_norm(selected, self.norm.weight, self.norm.eps), self.lm_head, view.head_quant).float()
        weight = self.lm_head.weight if head is None else head
        kernel, packed = self._head_kernel(weight, selected.shape[0])
        return head_logits(rms_norm(selected, self.norm.weight, self.norm.eps), weight, kernel, packed).float()
