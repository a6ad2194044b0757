"""Self-draft views of the target: skip sublayers, quantize activations, share weights and cache.

A `SelfDraftView` is switched on per forward call. Skipped attention and MLP sublayers are left
out of the residual stream; `act_quant` fake-quantizes the activations entering a layer's linear
projections to int8 or int4 (symmetric, one scale per token) and dequantizes them again.

Where quantization saves time: on CUDA, an int8 layer runs W8A8 through the Triton int8 GEMM of
`drafttrain.kernels.int8_linear` (weights quantized per output channel as well, so its acceptance
must be calibrated there; the GPU figures are still to be measured). Elsewhere, and for int4, the
fake quantization here measures the accuracy (acceptance) of a quantized level on any device but
adds work, so a quantized view is slower than the unquantized one with the same skips. Layer
skipping saves time on every device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from drafttrain.errors import DrafttrainError

QUANT_LEVELS = {"int8": 127.0, "int4": 7.0}


@dataclass(frozen=True)
class SelfDraftView:
    skip_attn: frozenset[int] = frozenset()
    skip_mlp: frozenset[int] = frozenset()
    act_quant: tuple[tuple[int, str], ...] = ()  # (layer, "int8" | "int4") pairs
    _quant_by_layer: dict[int, str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_quant_by_layer", dict(self.act_quant))
        for layer, bits in self.act_quant:
            if bits not in QUANT_LEVELS:
                raise DrafttrainError(
                    f"act_quant for layer {layer} is {bits!r}: use one of {sorted(QUANT_LEVELS)}")

    def quant_for(self, layer: int) -> str | None:
        return self._quant_by_layer.get(layer)

    def check_layers(self, num_layers: int) -> None:
        used = set(self.skip_attn) | set(self.skip_mlp) | set(self._quant_by_layer)
        bad = sorted(i for i in used if not 0 <= i < num_layers)
        if bad:
            raise DrafttrainError(
                f"self-draft view names layers {bad}, but the model has layers 0..{num_layers - 1}")

    def to_json(self) -> dict:
        return {"skip_attn": sorted(self.skip_attn), "skip_mlp": sorted(self.skip_mlp),
                "act_quant": {str(layer): bits for layer, bits in self.act_quant}}

    @classmethod
    def from_json(cls, data: dict, source: str = "self-draft spec") -> SelfDraftView:
        allowed = {"skip_attn", "skip_mlp", "act_quant"}
        unknown = set(data) - allowed
        if unknown:
            raise DrafttrainError(
                f"{source}: unknown key(s) {sorted(unknown)}; valid keys are {sorted(allowed)}")
        try:
            quant = data.get("act_quant", {})
            if isinstance(quant, dict):
                pairs = tuple(sorted((int(layer), bits) for layer, bits in quant.items()))
            else:
                raise TypeError("act_quant must be an object {layer: 'int8'|'int4'}")
            return cls(frozenset(int(i) for i in data.get("skip_attn", [])),
                       frozenset(int(i) for i in data.get("skip_mlp", [])), pairs)
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
