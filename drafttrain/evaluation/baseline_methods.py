"""`drafttrain eval` methods for the cascade and tree baselines: vc, hc, csd, tree.

Each runs our engine with the draft model (--draft) and the n-gram drafter (bigram fallback from
--ngram-table): CS Drafting's vertical, horizontal and combined cascades (k_vc, k_hc, k_csd) and
staged speculative decoding's static tree (tree_nodes, tree_depth, tree_ngram). All are lossless.
"""

from __future__ import annotations

from drafttrain.drafters import BigramTable, ModelDrafter, NgramDrafter
from drafttrain.evaluation.methods import EngineMethod, EvalContext, Method, method
from drafttrain.scheduling.cascades import CascadeDrafter
from drafttrain.scheduling.static_tree import StaticTreeDrafter


def _levels(context: EvalContext) -> tuple[ModelDrafter, NgramDrafter]:
    """The draft model and the n-gram drafter below the target."""
    config = context.config
    draft = context.load_draft()
    table = BigramTable.load(config.ngram_table) if config.ngram_table else None
    return draft, NgramDrafter(bigram=table)


def _cascade(context: EvalContext, name: str, k_draft: int, k_ngram_after: int, k_ngram_review: int) -> Method:
    drafter = CascadeDrafter(*_levels(context), k_draft, k_ngram_after, k_ngram_review, name=name)
    return EngineMethod(context, drafter, drafter.capacity())


@method("vc", "our engine, CS Drafting's vertical cascade: the draft model (--draft) drafts k_vc[0] tokens, "
        "reviewing k_vc[1] n-gram tokens per forward", needs=("draft",))
def _vc(context: EvalContext) -> Method:
    k_draft, k_review = context.config.k_vc
    return _cascade(context, "vc", k_draft, 0, k_review)


@method("hc", "our engine, CS Drafting's horizontal cascade: k_hc[0] draft-model (--draft) tokens, then "
        "k_hc[1] n-gram tokens", needs=("draft",))
def _hc(context: EvalContext) -> Method:
    k_draft, k_after = context.config.k_hc
    return _cascade(context, "hc", k_draft, k_after, 0)


@method("csd", "our engine, CS Drafting with both cascades: k_csd = [draft-model (--draft) tokens, n-gram "
        "tokens after them, n-gram tokens the draft model reviews per forward]", needs=("draft",))
def _csd(context: EvalContext) -> Method:
    k_draft, k_after, k_review = context.config.k_csd
    return _cascade(context, "csd", k_draft, k_after, k_review)


@method("tree", "our engine, staged speculative decoding: a static tree of tree_nodes draft-model (--draft) "
        "tokens by cumulative probability, tree_depth deep, and tree_ngram n-gram tokens below its best leaf",
        needs=("draft",))
def _tree(context: EvalContext) -> Method:
    config = context.config
    drafter = StaticTreeDrafter(*_levels(context), config.tree_nodes, config.tree_depth, config.tree_ngram)
    return EngineMethod(context, drafter, drafter.capacity())
