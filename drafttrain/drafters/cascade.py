"""The draft levels of a cascade, built by name: model drafts, self-draft views, the n-gram drafter.

Names are stable across recipes, bundles and reports: `draft0, draft1, ...` for draft models in
the order given, `self0, self1, ...` for self-draft views (the levels of `levels.json` first,
then any extra specs), and `ngram` for the n-gram drafter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from drafttrain.drafters.base import Drafter
from drafttrain.drafters.ngram import BigramTable, NgramDrafter
from drafttrain.drafters.transformer import ModelDrafter, SelfDrafter
from drafttrain.runtime.views import SelfDraftView


@dataclass
class CascadeSpec:
    """What a cascade is made of, before anything is loaded."""

    drafts: list[Path] = field(default_factory=list)
    views: list[SelfDraftView] = field(default_factory=list)
    ngram: bool = True
    ngram_table: Path | None = None

    def level_names(self) -> list[str]:
        names = [f"draft{i}" for i in range(len(self.drafts))] + [f"self{i}" for i in range(len(self.views))]
        return names + (["ngram"] if self.ngram else [])

    def describe(self) -> dict[str, str]:
        """Level name -> what it is (a path, a view spec or the n-gram settings), for reports."""
        described = {f"draft{i}": str(path) for i, path in enumerate(self.drafts)}
        described.update({f"self{i}": _view_text(view) for i, view in enumerate(self.views)})
        if self.ngram:
            described["ngram"] = f"prompt lookup, bigram table {self.ngram_table}" if self.ngram_table else \
                "prompt lookup"
        return described


def build_drafters(spec: CascadeSpec, decoder, tokenizer, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> dict[str, Drafter]:
    """Load every level of `spec` against `decoder` (a `SpeculativeDecoder`) by name."""
    vocab = decoder.target.args.vocab_size
    drafters: dict[str, Drafter] = {}
    for i, path in enumerate(spec.drafts):
        drafter = ModelDrafter.from_pretrained(path, tokenizer, vocab, dtype, device, getattr(decoder, "verify", "eager"),
                                               getattr(decoder, "compile", None))
        drafter.name = f"draft{i}"
        drafters[drafter.name] = drafter
    for i, view in enumerate(spec.views):
        drafters[f"self{i}"] = SelfDrafter(decoder, view, name=f"self{i}")
    if spec.ngram:
        table = BigramTable.load(spec.ngram_table) if spec.ngram_table else None
        drafters["ngram"] = NgramDrafter(bigram=table)
    return drafters


def draft_models(levels: dict[str, Drafter]) -> dict:
    """The levels that run a model of their own (draft models, not views of the target), by name:
    the levels besides the target that get a row-kernel plan (`drafttrain.runtime.row_kernels`)."""
    return {name: drafter.model for name, drafter in levels.items() if isinstance(drafter, ModelDrafter)}


def _view_text(view: SelfDraftView) -> str:
    import json

    return json.dumps(view.to_json(), separators=(",", ":"))
