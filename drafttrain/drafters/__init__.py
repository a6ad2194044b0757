"""Drafters: everything that proposes draft tokens for the target to verify."""

from drafttrain.drafters.base import Drafter, DraftTree, TreeShape
from drafttrain.drafters.ngram import BigramTable, NgramDrafter
from drafttrain.drafters.transformer import ModelDrafter, SelfDrafter

__all__ = ["BigramTable", "Drafter", "DraftTree", "ModelDrafter", "NgramDrafter", "SelfDrafter", "TreeShape"]
