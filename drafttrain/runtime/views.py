"""Self-draft views of the target: skip sublayers, reduce precision, share weights and cache.

A `SelfDraftView` is switched on per forward call. Skipped attention and MLP sublayers are left
out of the residual stream. `act_quant` gives layers a reduced precision: "int8" (W8A8: weights
per output channel, each row's activations on its own), "int4" (activations fake-quantized, symmetric, one
scale per token) or "fp16" (weight-only); `head_quant` does the same for the LM head ("int8" or
"fp16").

Where reduced precision saves time: on CPU, int8 and fp16 layers and heads run fbgemm's prepacked
linears (`drafttrain.runtime.cpu_quant`), which read a quarter or half of the float32 weights; on
SmolLM2-135M (2 cores, one row) a view with every layer and the head in int8 costs 0.56 of a
target forward (scripts/bench_cpu_quant.py). On CUDA an int8 layer runs W8A8 through the Triton
int8 GEMM of `drafttrain.kernels.int8_linear` (the GPU figures are still to be measured) and fp16
is computed with float16-rounded weights (same outputs as on CPU, no saving). int4 is fake
everywhere: it measures the accuracy (acceptance) of a 4-bit level but adds work, since no int4
kernel was measured faster than float32 at these shapes. Acceptance of a quantized level must be
calibrated on the device it runs on. Layer skipping saves time on every device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from drafttrain.errors import DrafttrainError

QUANT_LEVELS = {"int8": 127.0, "int4": 7.0}
PRECISIONS = ("int8", "int4", "fp16")  # a layer's act_quant setting: "fp16" is weight-only
HEAD_PRECISIONS = (None, "int8", "fp16")


@dataclass(frozen=True)
class SelfDraftView:
    skip_attn: frozenset[int] = frozenset()
    skip_mlp: frozenset[int] = frozenset()
    act_quant: tuple[tuple[int, str], ...] = ()  # (layer, "int8" | "int4" | "fp16") pairs
    head_quant: str | None = None  # the LM head's precision: None (the target's), "int8" or "fp16"
    _quant_by_layer: dict[int, str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_quant_by_layer", dict(self.act_quant))
        for layer, bits in self.act_quant:
            if bits not in PRECISIONS:
                raise DrafttrainError(
                    f"act_quant for layer {layer} is {bits!r}: use one of {list(PRECISIONS)}")
        if self.head_quant not in HEAD_PRECISIONS:
            raise DrafttrainError(f"head_quant is {self.head_quant!r}: use one of {list(HEAD_PRECISIONS)}")

    def quant_for(self, layer: int) -> str | None:
        return self._quant_by_layer.get(layer)

    def check_layers(self, num_layers: int) -> None:
        used = set(self.skip_attn) | set(self.skip_mlp) | set(self._quant_by_layer)
        bad = sorted(i for i in used if not 0 <= i < num_layers)
        if bad:
            raise DrafttrainError(
                f"self-draft view names layers {bad}, but the model has layers 0..{num_layers - 1}")

    def to_json(self) -> dict:
        data = {"skip_attn": sorted(self.skip_attn), "skip_mlp": sorted(self.skip_mlp),
                "act_quant": {str(layer): bits for layer, bits in self.act_quant}}
        return data if self.head_quant is None else {**data, "head_quant": self.head_quant}

    @classmethod
    def from_json(cls, data: dict, source: str = "self-draft spec") -> SelfDraftView:
        allowed = {"skip_attn", "skip_mlp", "act_quant", "head_quant"}
        unknown = set(data) - allowed
        if unknown:
            raise DrafttrainError(
                f"{source}: unknown key(s) {sorted(unknown)}; valid keys are {sorted(allowed)}")
        try:
            quant = data.get("act_quant", {})
            if isinstance(quant, dict):
                pairs = tuple(sorted((int(layer), bits) for layer, bits in quant.items()))
            else:
                raise TypeError("act_quant must be an object {layer: 'int8'|'int4'|'fp16'}")
            return cls(frozenset(int(i) for i in data.get("skip_attn", [])),
                       frozenset(int(i) for i in data.get("skip_mlp", [])), pairs, data.get("head_quant"))
        except (TypeError, ValueError) as err:
            raise DrafttrainError(
                f"{source}: {err}. Expected e.g. "
                '{"skip_attn": [3, 5], "skip_mlp": [4], "act_quant": {"6": "int8"}}') from err


def parse_self_spec(text_or_path: str) -> SelfDraftView:
    """A view from a JSON file path or an inline JSON object."""
    inline = text_or_path.lstrip().startswith("{")
    path = Path(text_or_path)
    source = "--self-spec" if inline else str(path)
    try:
        raw = text_or_path if inline else path.read_text()
        data = json.loads(raw)
    except FileNotFoundError as err:
        raise DrafttrainError(f"self-draft spec file {path} does not exist") from err
    except json.JSONDecodeError as err:
        raise DrafttrainError(f"{source} is not valid JSON ({err}); give a JSON file or an "
                              'inline object like {"skip_mlp": [2, 3]}') from err
    if not isinstance(data, dict):
        raise DrafttrainError(f"{source}: expected a JSON object with skip_attn/skip_mlp/act_quant")
    return SelfDraftView.from_json(data, source)


def fake_quant(x: torch.Tensor, bits: str) -> torch.Tensor:
    """Symmetric per-token quantize-dequantize of x [..., features] to int8 or int4."""
    qmax = QUANT_LEVELS[bits]
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / qmax
    return (x / scale).round().clamp(-qmax, qmax) * scale
