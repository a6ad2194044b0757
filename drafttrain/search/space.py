"""The search space of self-draft views: which sublayers to skip, which layer groups to quantize.

Parameters (Optuna names): `attn_{i}` and `mlp_{i}` (bool: skip that sublayer of layer i) for the
searchable layers (all layers, or all but the first and last with `keep_first_last`),
`quant_{g}` in `quant_choices` (default "none", "int8", "int4", "fp16") for each of `quant_groups`
contiguous groups of layers (every layer of a group gets the group's precision), and with
`head_choices` (e.g. "none", "int8", "fp16") `head`, the LM head's precision. `encode` and `decode`
turn a view into parameters and back, losslessly for every view in the space.

`cost_fraction` is a static cost estimate of a view from parameter counts: the fraction of the
target's weight bytes a decode forward of the view reads (the lm_head is always computed), an int8
weight counting a quarter and an fp16 one half of a float32 one (`WEIGHT_BYTES`). int4 is fake
quantization (it saves no time, see `drafttrain.runtime.views`), so it does not lower the estimate.
Bytes are not time (on SmolLM2-135M's CPU the int8 blocks cost 0.38 of float32's, not 0.25:
scripts/bench_cpu_quant.py); the objectives time each view.
"""

from __future__ import annotations

import math

from drafttrain.errors import DrafttrainError
from drafttrain.runtime.model import ModelArgs
from drafttrain.runtime.views import SelfDraftView

QUANT_CHOICES = ("none", "int8", "int4", "fp16")
HEAD_CHOICES = ("none", "int8", "fp16")
WEIGHT_BYTES = {None: 1.0, "int4": 1.0, "int8": 0.25, "fp16": 0.5}  # of float32's, as a forward reads them


class SearchSpace:
    def __init__(self, num_layers: int, keep_first_last: bool = True, quant_groups: int = 0,
                 quant_choices: tuple[str, ...] = QUANT_CHOICES, head_choices: tuple[str, ...] = ()) -> None:
        if num_layers <= 0:
            raise DrafttrainError(f"num_layers={num_layers}: the target has no layers to search over")
        if quant_groups < 0 or quant_groups > num_layers:
            raise DrafttrainError(f"quant_groups={quant_groups} is invalid for a {num_layers}-layer target: "
                                  f"use 0 (no quantization) up to {num_layers} (one group per layer)")
        self.num_layers = num_layers
        self.keep_first_last = keep_first_last
        self.quant_groups = quant_groups
        self.quant_choices, self.head_choices = _checked("quant_choices", quant_choices, QUANT_CHOICES), \
            _checked("head_choices", head_choices, HEAD_CHOICES)
        self.layers: tuple[int, ...] = (tuple(range(1, num_layers - 1)) if keep_first_last
                                        else tuple(range(num_layers)))
        if not self.layers and quant_groups == 0 and not self.head_choices:
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
                f"quant_groups={self.quant_groups}, quant_choices={self.quant_choices}, "
                f"head_choices={self.head_choices})")

    @property
    def param_names(self) -> list[str]:
        names = [f"{kind}_{i}" for i in self.layers for kind in ("attn", "mlp")]
        return names + [f"quant_{g}" for g in range(self.quant_groups)] + (["head"] if self.head_choices else [])

    @property
    def size(self) -> int:
        """Number of distinct views in the space."""
        return (2 ** (2 * len(self.layers)) * len(self.quant_choices) ** self.quant_groups
                * max(1, len(self.head_choices)))

    def suggest(self, trial) -> SelfDraftView:
        """A view sampled through an Optuna trial."""
        params: dict[str, object] = {}
        for i in self.layers:
            params[f"attn_{i}"] = trial.suggest_categorical(f"attn_{i}", [False, True])
            params[f"mlp_{i}"] = trial.suggest_categorical(f"mlp_{i}", [False, True])
        for g in range(self.quant_groups):
            params[f"quant_{g}"] = trial.suggest_categorical(f"quant_{g}", list(self.quant_choices))
        if self.head_choices:
            params["head"] = trial.suggest_categorical("head", list(self.head_choices))
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
            if bits not in self.quant_choices:
                raise DrafttrainError(f"quant_{g}={bits!r} is invalid: use one of {self.quant_choices}")
            if bits != "none":
                quant += [(layer, bits) for layer in layers]
        head = params.get("head", "none")
        if head not in (*self.head_choices, "none"):
            raise DrafttrainError(f"head={head!r} is invalid: use one of {self.head_choices}")
        return SelfDraftView(skip_attn, skip_mlp, tuple(sorted(quant)), None if head == "none" else head)

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
        head = view.head_quant or "none"
        if self.head_choices:
            params["head"] = head
        elif head != "none":
            raise DrafttrainError(f"view gives the LM head {head}, but {self!r} has no head choice")
        grouped = {layer for layers in self.groups for layer in layers}
        stray = sorted(layer for layer, _ in view.act_quant if layer not in grouped)
        if stray:
            raise DrafttrainError(f"view quantizes layers {stray}, but {self!r} has no quantization choice")
        return params

    def reduced_precision(self, kind: str) -> SelfDraftView | None:
        """Every layer (and the head, where the space chooses it) in precision `kind`, no skips: the
        target's own weights at lower precision (ML-SpecQD's draft). None if the space has no such view."""
        if kind not in self.quant_choices or not self.groups:
            return None
        every = tuple((layer, kind) for layers in self.groups for layer in layers)
        return SelfDraftView(act_quant=every, head_quant=kind if kind in self.head_choices else None)

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


def _checked(name: str, choices: tuple[str, ...], allowed: tuple[str, ...]) -> tuple[str, ...]:
    choices = tuple(choices)
    bad = [choice for choice in choices if choice not in allowed]
    if bad or (choices and "none" not in choices):
        raise DrafttrainError(f"{name}={list(choices)} is invalid: choose among {list(allowed)}, 'none' included "
                              "(the target's own precision)")
    return choices


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
    kept = head * WEIGHT_BYTES[view.head_quant]
    for layer in range(args.num_layers):
        share = WEIGHT_BYTES[view.quant_for(layer)]
        kept += share * (attn * (layer not in view.skip_attn) + mlp * (layer not in view.skip_mlp))
    return kept / full
