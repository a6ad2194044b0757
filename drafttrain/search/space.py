"""The search space of self-draft views: which sublayers to skip, which layer groups to quantize.

Parameters (Optuna names): `attn_{i}` and `mlp_{i}` (bool: skip that sublayer of layer i) for the
searchable layers (all layers, or all but the first and last with `keep_first_last`), and
`quant_{g}` in ("none", "int8", "int4") for each of `quant_groups` contiguous groups of layers
(every layer of a group gets the group's activation quantization). `encode` and `decode` turn a
view into parameters and back, losslessly for every view in the space.

`cost_fraction` is a static cost estimate of a view from parameter counts: the fraction of the
target's weights a decode forward of the view reads (the lm_head is always computed). Activation
quantization is fake here (it saves no time, see `drafttrain.runtime.views`), so it does not lower
the estimate.
"""

from __future__ import annotations

import math

from drafttrain.errors import DrafttrainError
from drafttrain.runtime.model import ModelArgs
from drafttrain.runtime.views import SelfDraftView

QUANT_CHOICES = ("none", "int8", "int4")


class SearchSpace:
    def __init__(self, num_layers: int, keep_first_last: bool = True, quant_groups: int = 0) -> None:
        if num_layers <= 0:
            raise DrafttrainError(f"num_layers={num_layers}: the target has no layers to search over")
        if quant_groups < 0 or quant_groups > num_layers:
            raise DrafttrainError(f"quant_groups={quant_groups} is invalid for a {num_layers}-layer target: "
                                  f"use 0 (no quantization) up to {num_layers} (one group per layer)")
        self.num_layers = num_layers
        self.keep_first_last = keep_first_last
        self.quant_groups = quant_groups
        self.layers: tuple[int, ...] = (tuple(range(1, num_layers - 1)) if keep_first_last
                                        else tuple(range(num_layers)))
        if not self.layers and quant_groups == 0:
            raise DrafttrainError(
                f"the search space is empty: the target has {num_layers} layer(s) and keep_first_last "
                "protects the first and last, so no sublayer can be skipped, and quant_groups=0 adds no "
                "quantization choice. Fix: set keep_first_last=false, or quant_groups to 1 or more")
        # contiguous groups of near-equal size covering 0 .. num_layers - 1
        self.groups: tuple[tuple[int, ...], ...] = tuple(
            tuple(range(g * num_layers // quant_groups, (g + 1) * num_layers // quant_groups))
            for g in range(quant_groups))

    def __repr__(self) -> str:
        return (f"SearchSpace(num_layers={self.num_layers}, keep_first_last={self.keep_first_last}, "
                f"quant_groups={self.quant_groups})")

    @property
    def param_names(self) -> list[str]:
        names = [f"{kind}_{i}" for i in self.layers for kind in ("attn", "mlp")]
        return names + [f"quant_{g}" for g in range(self.quant_groups)]

    @property
    def size(self) -> int:
        """Number of distinct views in the space."""
        return 2 ** (2 * len(self.layers)) * len(QUANT_CHOICES) ** self.quant_groups

    def suggest(self, trial) -> SelfDraftView:
        """A view sampled through an Optuna trial."""
        params: dict[str, object] = {}
        for i in self.layers:
            params[f"attn_{i}"] = trial.suggest_categorical(f"attn_{i}", [False, True])
            params[f"mlp_{i}"] = trial.suggest_categorical(f"mlp_{i}", [False, True])
        for g in range(self.quant_groups):
            params[f"quant_{g}"] = trial.suggest_categorical(f"quant_{g}", list(QUANT_CHOICES))
        return self.decode(params)

    def decode(self, params: dict) -> SelfDraftView:
        """The view named by Optuna parameters (every parameter of the space must be present)."""
        missing = [name for name in self.param_names if name not in params]
        if missing:
            raise DrafttrainError(f"parameters {missing} are missing for {self!r}; was the study created "
                                  "with other space settings (keep_first_last, quant_groups, target)?")
        skip_attn = frozenset(i for i in self.layers if bool(params[f"attn_{i}"]))
        skip_mlp = frozenset(i for i in self.layers if bool(params[f"mlp_{i}"]))
        quant: list[tuple[int, str]] = []
        for g, layers in enumerate(self.groups):
            bits = params[f"quant_{g}"]
            if bits not in QUANT_CHOICES:
                raise DrafttrainError(f"quant_{g}={bits!r} is invalid: use one of {QUANT_CHOICES}")
            if bits != "none":
                quant += [(layer, bits) for layer in layers]
        return SelfDraftView(skip_attn, skip_mlp, tuple(sorted(quant)))

    def encode(self, view: SelfDraftView) -> dict:
        """Optuna parameters for `view`; a view outside the space is an error that says why."""
        view.check_layers(self.num_layers)
        outside = sorted((set(view.skip_attn) | set(view.skip_mlp)) - set(self.layers))
        if outside:
            raise DrafttrainError(f"view skips sublayers of layers {outside}, which {self!r} never skips")
        params: dict[str, object] = {}
        for i in self.layers:
            params[f"attn_{i}"] = i in view.skip_attn
            params[f"mlp_{i}"] = i in view.skip_mlp
        for g, layers in enumerate(self.groups):
            chosen = {view.quant_for(layer) or "none" for layer in layers}
            if len(chosen) != 1:
                raise DrafttrainError(f"view quantizes layers {list(layers)} (group {g}) differently "
                                      f"({sorted(chosen)}); the space gives a group one setting")
            params[f"quant_{g}"] = chosen.pop()
        grouped = {layer for layers in self.groups for layer in layers}
        stray = sorted(layer for layer, _ in view.act_quant if layer not in grouped)
        if stray:
            raise DrafttrainError(f"view quantizes layers {stray}, but {self!r} has no quantization choice")
        return params

    def evenly_spread(self, ratio: float) -> SelfDraftView:
        """Skip about `ratio` of the searchable sublayers, spread evenly over the depth.

        The skipped sublayers alternate between attention and MLP: the first pass takes one
        sublayer from evenly spaced layers (attention, MLP, attention, ...); past half, a second
        pass also takes the other sublayer of evenly spaced layers. No quantization.
        """
        if not 0.0 <= ratio <= 1.0:
            raise DrafttrainError(f"skip ratio {ratio} is invalid: give a fraction in [0, 1]")
        n = len(self.layers)
        count = min(2 * n, math.floor(ratio * 2 * n + 0.5))
        first = _spread(n, min(count, n))
        kinds = {self.layers[pos]: ("attn" if j % 2 == 0 else "mlp") for j, pos in enumerate(first)}
        skip_attn = {layer for layer, kind in kinds.items() if kind == "attn"}
        skip_mlp = {layer for layer, kind in kinds.items() if kind == "mlp"}
        for pos in _spread(n, count - len(first)):
            layer = self.layers[pos]
            (skip_mlp if layer in skip_attn else skip_attn).add(layer)
        return SelfDraftView(frozenset(skip_attn), frozenset(skip_mlp))


def _spread(n: int, count: int) -> list[int]:
    """`count` distinct indices in 0 .. n - 1, evenly spaced (count <= n)."""
    return [int((j + 0.5) * n / count) for j in range(count)] if count else []


def sublayer_weights(args: ModelArgs) -> tuple[int, int, int]:
    """(attention, MLP, lm_head) weight counts of one layer's sublayers and of the head."""
    q_size, kv_size = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
    attn = args.hidden_size * (q_size + 2 * kv_size) + q_size * args.hidden_size
    mlp = 3 * args.hidden_size * args.intermediate_size
    return attn, mlp, args.hidden_size * args.vocab_size


def cost_fraction(view: SelfDraftView, args: ModelArgs) -> float:
    """Static cost of a decode forward with `view` over the full target's, from weight counts."""
    view.check_layers(args.num_layers)
    attn, mlp, head = sublayer_weights(args)
    full = args.num_layers * (attn + mlp) + head
    kept = full - attn * len(view.skip_attn) - mlp * len(view.skip_mlp)
    return kept / full
