"""Drafters: everything that proposes draft tokens for the target to verify."""

from drafttrain.drafters.base import Drafter, DraftTree, TreeShape

__all__ = ["Drafter", "DraftTree", "TreeShape"]
