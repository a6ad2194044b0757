"""`drafttrain eval` methods for lossy speculative cascades: speccascade-chow|diff|opt|token.

Each method is our engine with the draft model (--draft) drafting a chain of --k-cascade tokens,
verified against the blend pi of a deferral rule (`drafttrain.decoding.deferral`) instead of the
target alone. One method name stands for a sweep: it expands to one measured run per lenience in
--alphas, named `speccascade-<rule>@<alpha>` (e.g. `speccascade-chow@0.1`), and the harness
interleaves those runs with every other method's like any other run. Alpha 0 is exact speculative
decoding (its greedy output must equal ar's); larger alphas trade quality for speed, which the
report measures against the target (exact match with ar, target log-likelihood).
"""

from __future__ import annotations

import dataclasses

from drafttrain.decoding.deferral import RULES, DeferralRule
from drafttrain.drafters import Drafter, TreeShape
from drafttrain.evaluation.methods import EngineMethod, EvalContext, Method, method

RULE_ABOUT = {
    "chow": "keeps the draft where max q >= 1 - alpha",
    "diff": "keeps the draft where max q >= max p - alpha",
    "opt": "keeps the draft where max q >= max p - alpha * TV(q, p)",
    "token": "keeps the draft on tokens with p(v) > (1 - alpha) max p, the rest of its mass goes to p",
}


def variant_name(method_name: str, alpha: float) -> str:
    """The run name of one alpha of a sweep: speccascade-chow@0.1."""
    return f"{method_name}@{alpha:g}"


class CascadeMethod(EngineMethod):
    """An engine run whose verification follows `deferral` (lossy unless alpha is 0)."""

    def __init__(self, context: EvalContext, drafter: Drafter, shape: TreeShape, deferral: DeferralRule) -> None:
        super().__init__(context, drafter, shape)
        self.deferral = deferral
        self.config = dataclasses.replace(self.config, deferral=deferral)


class AlphaSweep:
    """One speccascade method as one run per alpha of --alphas (see `harness.expand_method`).

    Every alpha shares one draft model: runs are sequential and each resets the drafter."""

    def __init__(self, context: EvalContext, method_name: str, rule: str) -> None:
        config = context.config
        drafter = context.load_draft()
        shape = TreeShape.chain(config.k_cascade)
        self.runs: dict[str, Method] = {
            variant_name(method_name, alpha): CascadeMethod(context, drafter, shape, DeferralRule(rule, alpha))
            for alpha in config.alphas}

    def variants(self) -> dict[str, Method]:
        return dict(self.runs)


def _register(rule: str) -> None:
    name = f"speccascade-{rule}"

    @method(name, f"lossy speculative cascade with --draft: {rule} rule ({RULE_ABOUT[rule]}), one run "
            "per --alphas value", needs=("draft",))
    def _build(context: EvalContext) -> AlphaSweep:
        return AlphaSweep(context, name, rule)


for _rule in RULES:
    _register(_rule)
