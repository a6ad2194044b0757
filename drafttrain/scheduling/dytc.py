"""The Dynamic Tree Cascade (DyTC) scheduler: one draft tree per step, grown best-first across levels.

Each step starts from the root (the last committed token) and repeats:

1. take the tree node with the highest cumulative acceptance probability that has not been
   expanded yet (the root first);
2. for it, pick the level S and draft length k whose expansion most raises the step's expected
   committed tokens per second (`scores.rate_after`; `choice="cas-spec"` uses CAS-Spec's T(S, k),
   `scores.dytc_score`, instead), with a_S the level's online acceptance estimate and the cost
   of drafting k tokens from that node predicted by the latency profile
   (`scores.draft_seconds`: feeding the context tokens the level's cache lacks and the path to
   the node, then k - 1 single steps) plus the larger verify forward;
3. stop if the expected gain of that expansion per second (its expected accepted tokens over
   its drafting cost plus the larger verify forward) is below the rate the step already has
   (expected committed tokens per second, the bonus token included), or the tree is at its
   budget, the largest size whose verify costs at most `budget_factor` x a one-token forward
   on the target's measured cost curve;
4. otherwise draft the chain with S, graft it, and give each new token an acceptance
   probability: the calibrated predictor's P(accept | confidence, depth) for that level,
   shifted in logit space by how far the level's online estimate has moved from its calibrated
   mean (`shifted_acceptance`); a node's cumulative
   probability is the product along its path. The runner-up token of the first new node's
   draft distribution is added as a sibling when its expected gain per second of extra
   verify cost beats the current rate (it costs no drafting).
5. with `alternatives`, the node just drafted below goes back into the queue, ranked by its open
   mass (its cumulative probability less its children's: the chance that none of them is
   accepted), for another level's chain beside the first, scored as in 2 with that mass as the
   chance of reaching it; its first token's probability is taken of that mass too. Under greedy
   decoding the tokens such a chain shares with the tree's existing path are not drafted twice:
   the rest hangs where the two part (a model draft that agrees with an n-gram copy for a few
   tokens and then differs proposes an alternative exactly where the copy may go wrong).

After verification, `observe` feeds each level's accepted / judged counts to the online
estimator (`AcceptanceEMA`). The tree is verified like any other, so decoding stays lossless:
greedy output equals the target's, and sampling reproduces the target's distribution.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from drafttrain.calibration.acceptance import LevelPredictor
from drafttrain.calibration.latency import TARGET_LEVEL, LatencyProfile
from drafttrain.calibration.online import AcceptanceEMA
from drafttrain.calibration.traces import mode_name
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters.base import Drafter, DraftTree, TreeShape
from drafttrain.errors import DrafttrainError
from drafttrain.scheduling.scores import (
    LevelTerms,
    StepTotals,
    best_choice,
    best_rate,
    best_scored,
    draft_seconds,
    expected_accepted,
    geometric_tails,
    verify_budget,
)
from drafttrain.scheduling.tree import TreeBuilder

MAX_ACCEPT = 0.999  # keeps a_S / (1 - a_S) finite
LOGIT_EDGE = 1e-6  # probabilities are kept this far from 0 and 1 before taking their logit
COST_BUCKET = 16  # context lengths within a bucket share predicted costs
MAX_PENDING = 64  # a level's first forward is priced as feeding at most this many context tokens


@dataclass
class DyTCSettings:
    k_max: int = 8  # longest chain one expansion of a model level drafts (an n-gram draft: max_depth)
    max_depth: int = 16  # deepest node of a tree
    budget_factor: float = 2.0  # tree budget: verify cost <= factor x a one-token forward
    bottom: str = "ngram"  # the level credited by the a^k * a_bottom term of T (if present)
    choice: str = "rate"  # "rate": the expansion that most raises the step's expected rate; "cas-spec": T(S, k)
    siblings: bool = True
    alternatives: bool = False  # a node one level drafted below may get another level's chain beside it
    levels: list[str] = field(default_factory=list)  # the levels DyTC schedules (empty: every level of the cascade)

    def __post_init__(self) -> None:
        if self.choice not in ("rate", "cas-spec"):
            raise DrafttrainError(f"DyTC choice={self.choice!r} is invalid: use 'rate' or 'cas-spec'")
        if self.max_depth < 1 or self.k_max < 1 or self.budget_factor <= 0:
            raise DrafttrainError(f"DyTC max_depth={self.max_depth}, k_max={self.k_max} and budget_factor="
                                  f"{self.budget_factor} must be positive")
        if len(set(self.levels)) != len(self.levels):
            raise DrafttrainError(f"DyTC levels={self.levels} names a level twice: list each level once")

    def scheduled(self, levels: dict[str, Drafter]) -> dict[str, Drafter]:
        """The levels of a cascade DyTC schedules: `levels` in the cascade's order, or all of them.
        Which levels pay is a property of the hardware (a self-draft view can cost nearly a target
        forward on a CPU), so a tuner may leave some out; naming one the cascade lacks is an error."""
        if not self.levels:
            return levels
        missing = [name for name in self.levels if name not in levels]
        if missing:
            raise DrafttrainError(f"DyTC levels names {missing}, which the cascade does not have (it has "
                                  f"{list(levels)}): fix `levels` in the scheduler settings")
        return {name: drafter for name, drafter in levels.items() if name in self.levels}


@dataclass
class _Expansion:
    node: int
    level: str
    k: int
    gain: float  # expected accepted tokens the expansion adds
    seconds: float  # drafting cost


@dataclass
class _Step:
    """The state of one step's tree growth."""

    context_length: int
    builder: TreeBuilder
    verify: list[float]  # [n + 1]: predicted seconds to verify the root and n nodes
    accept: dict[str, float]  # level -> its acceptance estimate (fixed during a step)
    terms: dict[str, LevelTerms] = field(default_factory=dict)  # level -> what scoring its expansions needs
    cumulative: list[float] = field(default_factory=list)  # per node: P(path to it is accepted)
    gain: float = 0.0  # expected accepted draft tokens of the tree
    draft_seconds: float = 0.0
    spent: set[tuple[int, str]] = field(default_factory=set)  # (node, level) that drafted there, or drafted nothing
    child_mass: dict[int, float] = field(default_factory=dict)  # node -> sum of its children's cumulative probability
    expansions: list[tuple[int, str, int]] = field(default_factory=list)  # (node, level, tokens drafted)

    def totals(self) -> StepTotals:
        return StepTotals(self.gain, self.draft_seconds, len(self.builder), self.verify)

    def open_mass(self, node: int) -> float:
        """P(the path to `node` is accepted and none of its children is): what a new child of it
        can still win (children hold distinct tokens, so at most one of them is accepted)."""
        reach = 1.0 if node < 0 else self.cumulative[node]
        return max(reach - self.child_mass.get(node, 0.0), 0.0)

    def add_node(self, parent: int, cumulative: float) -> None:
        """Record the cumulative probability of the node just added below `parent`."""
        self.cumulative.append(cumulative)
        self.child_mass[parent] = self.child_mass.get(parent, 0.0) + cumulative
        self.gain += cumulative


def _one_call(drafter: Drafter) -> bool:
    """Whether a chain of any length costs the drafter one call (the n-gram drafter), not k steps."""
    return bool(getattr(drafter, "drafts_in_one_call", False))


def _pending(drafter: Drafter, context_length: int) -> int:
    """Context tokens (the root included) the drafter's next forward must feed before the path: a
    draft model with its own cache lags by every token committed since it last drafted
    (`ModelDrafter.uncached_tokens`); a level over the target's cache lacks the root alone."""
    uncached = getattr(drafter, "uncached_tokens", None)
    return 1 if uncached is None else min(uncached(context_length), MAX_PENDING)


@dataclass(frozen=True)
class StepPlan:
    """What the scheduler expected of the tree it proposed: for diagnostics and tests."""

    nodes: int
    expected_accepted: float  # sum over nodes of P(the path to the node is accepted)
    draft_seconds: float  # predicted
    verify_seconds: float  # predicted
    expansions: tuple[tuple[int, str, int], ...] = ()  # (node drafted below, level, tokens drafted), in order

    @property
    def expected_rate(self) -> float:
        """Expected committed tokens per predicted second, the bonus token included."""
        return (1.0 + self.expected_accepted) / (self.draft_seconds + self.verify_seconds)


def capacity_shape(max_nodes: int, max_depth: int) -> TreeShape:
    """A shape as deep as `max_depth` with at least `max_nodes` nodes: what the decoder reserves
    room for. DyTC's trees stay within its depth and node count (the decoder cuts the depth near
    the end of a generation)."""
    width = -(-max_nodes // max_depth)
    return TreeShape((width,) + (1,) * (max_depth - 1))


class DyTCDrafter:
    """Drafter protocol over several levels; predictors are per level, for the active mode.

    The per-step constants (each level's acceptance estimate and 1 - a^k, the cost tables as Python
    lists, the verify budget) are computed once per step or per context-length bucket, and the
    options of an expansion are scored in plain Python (`scores.best_rate`): the trees equal those of
    the vectorized scoring, at a fraction of its small-array overhead. Under greedy decoding the tree
    carries no q rows (greedy verification never reads them); under sampling every node has one.
    """

    name = "dytc"

    def __init__(self, levels: dict[str, Drafter], predictors: dict[str, dict[str, LevelPredictor]],
                 latency: LatencyProfile, vocab_size: int, ema: AcceptanceEMA | None = None,
                 settings: DyTCSettings | None = None) -> None:
        missing = [name for name in [TARGET_LEVEL, *levels] if name not in latency.models]
        if missing:
            raise DrafttrainError(f"the latency profile has no model for {missing}: re-run `drafttrain run "
                                  "calibrate` with the same levels")
        self.levels, self.predictors, self.latency = levels, predictors, latency
        self.vocab_size = vocab_size
        self.settings = settings or DyTCSettings()
        self.ema = ema or AcceptanceEMA()
        self._mode_predictors: dict[str, LevelPredictor] = {}
        self._mode: str | None = None
        self._largest = max(latency.grid.get("token_counts", [64])) - 1  # the largest verify the profile timed
        self.last_plan: StepPlan | None = None
        self._cost_tables: dict[tuple[str, int, int], list[float]] = {}
        self._budgets: dict[tuple[int, int], int] = {}
        self._tails_cache: dict[float, list[float]] = {}
        self._one_call = {name: _one_call(drafter) for name, drafter in levels.items()}

    # ---- protocol --------------------------------------------------------------------------

    def reset(self) -> None:
        self.ema.reset()
        for drafter in self.levels.values():
            drafter.reset()

    def propose(self, context: torch.Tensor, shape: TreeShape, sampling: SamplingParams,
                generator: torch.Generator | None) -> DraftTree:
        step, budget = self._start_step(context, shape, sampling)
        max_depth = min(self.settings.max_depth, shape.depth)
        frontier = [(-1.0, -1)]  # (-cumulative probability, node); the root is certain
        while frontier and len(step.builder) < budget:
            cumulative, node = heapq.heappop(frontier)
            expansion = self._choose(node, -cumulative, step, budget, max_depth)
            if expansion is None:
                continue
            if expansion.gain / self._marginal_seconds(expansion, step) < self._rate(step):
                break
            new_nodes = self._draft(context, expansion, step, sampling, generator)
            step.spent.add((node, expansion.level))
            if not new_nodes:
                heapq.heappush(frontier, (cumulative, node))
                continue
            step.draft_seconds += expansion.seconds
            step.expansions.append((expansion.node, expansion.level, len(new_nodes)))
            if self.settings.siblings and len(step.builder) < budget:
                self._add_sibling(new_nodes[0], step, sampling, generator, frontier)
            tip = new_nodes[-1]
            heapq.heappush(frontier, (-step.cumulative[tip], tip))
            open_mass = step.open_mass(node) if self.settings.alternatives else 0.0
            if open_mass > 0:
                heapq.heappush(frontier, (-open_mass, node))  # for another level's chain beside
        nodes = len(step.builder)
        self.last_plan = StepPlan(nodes, step.gain, step.draft_seconds, self._verify_seconds(nodes, step),
                                  tuple(step.expansions))
        return step.builder.build(self.vocab_size, with_q=not sampling.greedy)

    def observe(self, tree: DraftTree, accepted: list[int]) -> None:
        """Feed each level's accepted / judged counts (nodes whose parent was accepted) to the EMA;
        levels with nothing judged this step age their estimate toward the prior."""
        on_path = set(accepted)
        judged: dict[str, list[int]] = {}
        for node, (parent, level) in enumerate(zip(tree.parents, tree.levels or [self.name] * len(tree))):
            if parent < 0 or parent in on_path:
                counts = judged.setdefault(level, [0, 0])
                counts[0] += node in on_path
                counts[1] += 1
        for level in self.levels:
            if level in judged:
                self.ema.observe(level, *judged[level])
            else:
                self.ema.idle(level)

    # ---- per-step constants ----------------------------------------------------------------

    def _start_step(self, context: torch.Tensor, shape: TreeShape, sampling: SamplingParams) -> tuple[_Step, int]:
        """The step's empty tree with its constants, and its node budget."""
        self._use_mode(sampling)
        largest = min(self._largest, shape.num_nodes)
        verify = self._cost_table(TARGET_LEVEL, len(context), largest + 2)[1:]
        accept = {name: min(self.ema.estimate(name), MAX_ACCEPT) for name in self.levels}
        step = _Step(len(context), TreeBuilder(context.device), verify, accept)
        step.terms = {name: self._terms(name, step) for name in self.levels}
        return step, self._budget(len(context), largest, verify)

    def _budget(self, context_length: int, largest: int, verify: list[float]) -> int:
        """`verify_budget` of the step's verify costs, which depend on the context-length bucket only."""
        key = (context_length // COST_BUCKET, largest)
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = verify_budget(verify.__getitem__, largest, self.settings.budget_factor)
        return budget

    def _terms(self, level: str, step: _Step) -> LevelTerms:
        """What scoring the level's expansions needs this step."""
        size = max(self.settings.max_depth, self.settings.k_max) + 2 + MAX_PENDING
        feed = self._cost_table(level, step.context_length, size)
        accept = step.accept[level]
        return LevelTerms(level, accept, self._tails(accept), feed, self._one_call[level],
                          _pending(self.levels[level], step.context_length))

    def _tails(self, accept: float) -> list[float]:
        """`geometric_tails` up to the deepest chain, cached by value: a level the schedule leaves out
        keeps the same estimate (its prior) step after step."""
        tails = self._tails_cache.get(accept)
        if tails is None:
            if len(self._tails_cache) >= 1024:
                self._tails_cache.clear()
            tails = self._tails_cache[accept] = geometric_tails(accept, self.settings.max_depth)
        return tails

    def _cost_table(self, level: str, context_length: int, size: int) -> list[float]:
        """Predicted seconds of a forward of 0 .. size - 1 tokens by `level` (the target included),
        at the start of the context-length bucket: costs move little within a bucket, and the
        cache saves a latency-model evaluation per level and step."""
        bucket = context_length // COST_BUCKET
        key = (level, bucket, size)
        table = self._cost_tables.get(key)
        if table is None:
            counts = np.arange(0, size)
            predicted = self.latency.models[level].predict(counts, max(bucket * COST_BUCKET, 1))
            table = self._cost_tables[key] = np.asarray(predicted, dtype=np.float64).tolist()
        return table

    # ---- choosing --------------------------------------------------------------------------

    def _use_mode(self, sampling: SamplingParams) -> None:
        mode = mode_name(sampling)
        if mode == self._mode:
            return
        if mode not in self.predictors:
            raise DrafttrainError(f"no acceptance predictors for mode {mode} (have {sorted(self.predictors)}): "
                                  f"calibrate with temperatures=[{sampling.temperature}]")
        self._mode_predictors = self.predictors[mode]
        for name, predictor in self._mode_predictors.items():
            self.ema.priors.setdefault(name, predictor.mean_acceptance)
        self._mode = mode

    def _draft_seconds(self, level: str, depth: int, k: int, step: _Step) -> float:
        """A model level feeds the context tokens its cache lacks and the path to the node, then
        takes k - 1 one-token steps; the n-gram drafter answers k tokens in one call, timed as such.
        Everything is priced at the step's context length (a few tokens more change little)."""
        terms = step.terms[level]
        return float(draft_seconds(terms.feed, depth, k, terms.one_call, terms.pending))

    def _choose(self, node: int, cumulative: float, step: _Step, budget: int, max_depth: int) -> _Expansion | None:
        depth = step.builder.depth(node)
        room = min(budget - len(step.builder), max_depth - depth)
        if room <= 0:
            return None
        names = [name for name in self.levels if (node, name) not in step.spent]
        if self.settings.choice == "cas-spec":
            choice = self._choose_cas_spec(names, depth, room, step)
        else:
            options = [(step.terms[name], self._k_max(name, room)) for name in names]
            choice = best_rate(options, cumulative, depth, step.totals())
        if choice is None:
            return None
        gain = cumulative * expected_accepted(step.accept[choice.level], choice.k)
        return _Expansion(node, choice.level, choice.k, gain, self._draft_seconds(choice.level, depth, choice.k, step))

    def _k_max(self, level: str, room: int) -> int:
        return room if self._one_call[level] else min(room, self.settings.k_max)

    def _choose_cas_spec(self, names: list[str], depth: int, room: int, step: _Step):
        """CAS-Spec's rule: argmax of T(S, k) (drafting cost only, bottom credit)."""
        bottom = self.settings.bottom if self.settings.bottom in self.levels else None
        bottom_accept = step.accept[bottom] if bottom else 0.0
        bottom_cost = self._draft_seconds(bottom, 0, 1, step) if bottom else 0.0
        per_level = (best_choice([(name, step.accept[name], lambda k, name=name: self._draft_seconds(
            name, depth, k, step))], self._k_max(name, room), bottom_accept, bottom_cost) for name in names)
        return best_scored((choice.level, choice.k, choice.score) for choice in per_level)

    @staticmethod
    def _verify_seconds(nodes: int, step: _Step) -> float:
        return float(step.verify[min(nodes, len(step.verify) - 1)])

    def _rate(self, step: _Step) -> float:
        """Expected committed tokens per second of the step as it stands (the bonus token included)."""
        return (1.0 + step.gain) / (step.draft_seconds + self._verify_seconds(len(step.builder), step))

    def _marginal_seconds(self, expansion: _Expansion, step: _Step) -> float:
        nodes = len(step.builder)
        extra_verify = self._verify_seconds(nodes + expansion.k, step) - self._verify_seconds(nodes, step)
        return expansion.seconds + max(extra_verify, 0.0)

    # ---- drafting --------------------------------------------------------------------------

    def _draft(self, context: torch.Tensor, expansion: _Expansion, step: _Step, sampling: SamplingParams,
               generator: torch.Generator | None) -> list[int]:
        builder = step.builder
        drafter = self.levels[expansion.level]
        draft = drafter.propose(_extend(context, builder.path(expansion.node)), TreeShape.chain(expansion.k),
                                sampling, generator)
        if hasattr(drafter, "keep_prefix"):
            drafter.keep_prefix(step.context_length)
        terms = step.terms[expansion.level]
        pending = _pending(drafter, step.context_length)
        if pending != terms.pending:
            step.terms[expansion.level] = terms._replace(pending=pending)
        if not len(draft):
            return []
        parent, skip = expansion.node, 0
        if self.settings.alternatives and sampling.greedy:  # tokens the tree holds already are not verified twice
            parent, skip = builder.shared_prefix(expansion.node, draft.tokens.tolist())
        probabilities = self._token_accept(expansion.level, draft, builder.depth(expansion.node), step, skip)
        nodes = builder.graft(parent, draft, expansion.level, skip)
        for index, (node, probability) in enumerate(zip(nodes, probabilities)):
            above = builder.parents[node]
            # the first new node competes with the children `parent` has (distinct tokens: one is right at most)
            reach = step.open_mass(above) if index == 0 else step.cumulative[above]
            step.add_node(above, reach * probability)
        return nodes

    def _token_accept(self, level: str, draft: DraftTree, depth: int, step: _Step, skip: int = 0) -> list[float]:
        """Calibrated P(accept) of each token of a chain drafted below a node at `depth`, the first `skip`
        left out, shifted by the level's online estimate."""
        accept = step.accept[level]
        predictor = self._mode_predictors.get(level)
        if predictor is None:
            return [accept] * (len(draft) - skip)
        confidence = self._confidence(predictor.feature, draft)[skip:]
        shift = logit(accept) - logit(predictor.mean_acceptance)
        return [shifted_acceptance(predictor.predict_one(value, depth + offset), shift)
                for offset, value in enumerate(confidence, start=skip + 1)]

    @staticmethod
    def _confidence(feature: str, draft: DraftTree) -> list[float]:
        if feature == "match_length":
            return [float(length) for length in draft.match_lengths or [0] * len(draft)]
        if draft.q_draft is None:
            return [1.0] * len(draft)
        return draft.q_draft.gather(1, draft.tokens[:, None]).squeeze(1).tolist()

    def _add_sibling(self, first: int, step: _Step, sampling: SamplingParams, generator: torch.Generator | None,
                     frontier: list) -> None:
        """The runner-up of `first`'s draft distribution, as a sibling, when it pays for its verify."""
        builder = step.builder
        q_row = builder.q_rows[first]
        if q_row is None:
            return
        remaining = q_row.clone()
        remaining[builder.tokens[first]] = 0.0
        total = remaining.sum()
        if float(total) <= 0:
            return
        remaining = remaining / total
        # Whether to add the sibling is decided from the runner-up, before any sampling: a sibling
        # kept or dropped by its own sampled value would bias rejection sampling.
        runner_up = _first_argmax(remaining)
        level, parent = builder.levels[first], builder.parents[first]
        predictor = self._mode_predictors.get(level)
        probability = (predictor.predict_one(float(q_row[runner_up]), builder.depths[first])
                       if predictor is not None and predictor.feature == "q_token" else 0.0)
        cumulative = (1.0 if parent < 0 else step.cumulative[parent]) * min(probability, MAX_ACCEPT)
        nodes = len(builder)
        extra_verify = self._verify_seconds(nodes + 1, step) - self._verify_seconds(nodes, step)
        if cumulative <= 0 or cumulative / max(extra_verify, 1e-9) < self._rate(step):
            return
        token = runner_up if sampling.greedy else int(torch.multinomial(remaining, 1, generator=generator))
        sibling = builder.add(parent, token, level, remaining)
        step.add_node(parent, cumulative)
        heapq.heappush(frontier, (-cumulative, sibling))


def logit(probability: float) -> float:
    """log(p / (1 - p)), with p kept in [LOGIT_EDGE, 1 - LOGIT_EDGE] so that it stays finite."""
    probability = min(max(probability, LOGIT_EDGE), 1.0 - LOGIT_EDGE)
    return math.log(probability / (1.0 - probability))


def shifted_acceptance(calibrated: float, shift: float) -> float:
    """A calibrated P(accept) moved by `shift` in logit space, kept in [0, MAX_ACCEPT].

    DyTC's shift is logit(the level's online estimate) - logit(its calibrated mean): the prior-shift
    correction of a calibrated classifier whose base rate has moved (this sequence accepts the level
    more or less often than the calibration prompts did). Unlike scaling P by online / mean, it keeps
    the predictor's ranking without saturating: a confident token stays below certainty when the
    level does well, and an unlikely one is not pushed to zero when it does badly."""
    if calibrated <= 0.0:
        return 0.0
    if calibrated >= 1.0:
        return MAX_ACCEPT
    moved = 1.0 / (1.0 + math.exp(-(logit(calibrated) + shift)))
    return min(moved, MAX_ACCEPT)


def _first_argmax(row: torch.Tensor) -> int:
    """`int(row.argmax())` (the first of equal maxima), through numpy for a CPU row: torch's CPU
    argmax over a vocabulary costs several times more."""
    if row.device.type == "cpu" and row.dtype in (torch.float32, torch.float64):
        return int(row.detach().numpy().argmax())
    return int(row.argmax())


def _extend(context: torch.Tensor, path: list[int]) -> torch.Tensor:
    """The context followed by the path's tokens (the context itself below the root)."""
    if not path:
        return context
    return torch.cat((context, torch.tensor(path, dtype=context.dtype, device=context.device)))
