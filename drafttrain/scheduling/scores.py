"""The scheduler's math, as pure functions: expected accepted tokens, DyTC's T(S, k), the verify budget.

With per-token acceptance a and a draft of k tokens, the expected number of accepted tokens is
a + a^2 + ... + a^k = a (1 - a^k) / (1 - a). CAS-Spec's Dynamic Tree Cascade scores drafting k
tokens with level S by expected accepted tokens per unit of drafting cost,

    T(S, k) = [ a_S (1 - a_S^k) / (1 - a_S) + a_S^k * a_bottom ] / ( c_S(k) + c_bottom ),

where the a_S^k * a_bottom term credits the cheap bottom drafter (n-gram) for continuing after a
fully accepted draft, and c_S(k) is the measured cost of drafting k tokens with S (in CAS-Spec
c_S * k; here the latency predictors' cost, which also prices feeding the path to the leaf).

T ignores what the draft adds to the verify forward and that splitting a chain into several
expansions pays the feed again. `rate_after` scores an expansion by the step's expected rate once
it is added: (1 + G + g) / (D + V + d + dV), with G, D, V the step's expected accepted tokens,
drafting and verify seconds so far, g = P(reach the node) * E_S(k) the expansion's expected
tokens, d its drafting seconds and dV the larger verify. Growing while the best expansion raises
that rate maximizes expected committed tokens per second of the step, the quantity the oracle
(`drafttrain.scheduling.oracle`) optimizes in hindsight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


def expected_accepted(accept_prob: float, k: int) -> float:
    """a + a^2 + ... + a^k: expected accepted tokens of a k-token chain with per-token acceptance a."""
    if not 0.0 <= accept_prob <= 1.0:
        raise ValueError(f"accept_prob must be in [0, 1], got {accept_prob}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if accept_prob > 1.0 - 1e-12:
        return float(k)
    return accept_prob * (1.0 - accept_prob ** k) / (1.0 - accept_prob)


def dytc_score(accept_prob: float, k: int, draft_cost: float, bottom_accept: float, bottom_cost: float) -> float:
    """T(S, k) above; `draft_cost` is c_S(k), the seconds S needs for the k tokens."""
    denominator = draft_cost + bottom_cost
    if denominator <= 0:
        raise ValueError(f"the cost of a draft must be positive, got {draft_cost} + {bottom_cost}")
    return (expected_accepted(accept_prob, k) + accept_prob ** k * bottom_accept) / denominator


@dataclass(frozen=True)
class Choice:
    level: str
    k: int
    score: float


def draft_seconds(feed, depth: int, k, one_call: bool, pending: int = 1):
    """Seconds to draft k tokens below a node at `depth`, from `feed[n]` (a forward over n tokens):
    a model level first feeds the context tokens its cache lacks (`pending`: the root alone for a
    level that shares the target's cache) and the path (depth tokens), at least one token, then
    takes k - 1 one-token steps; a one-call level (the n-gram drafter) answers k tokens in one
    call. `k` may be an array."""
    return feed[k] if one_call else feed[first_feed(depth, pending)] + (k - 1) * feed[1]


def first_feed(depth: int, pending: int) -> int:
    """Tokens in a model level's first forward below a node at `depth` when its cache lacks the last
    `pending` context tokens: those and the path, and at least the node itself."""
    return max(depth + pending, 1)


def geometric_tails(accept_prob: float, k_max: int) -> list[float]:
    """1 - a^k for k = 1 .. k_max, the powers taken by numpy (whose pow may differ from Python's in the
    last bit) so that rates computed from them equal the vectorized ones they replace."""
    return (1.0 - accept_prob ** np.arange(1, k_max + 1)).tolist()


class LevelTerms(NamedTuple):
    """What scoring expansions by one level needs: its acceptance estimate a, 1 - a^k
    (`geometric_tails`), the seconds of a forward of n tokens `feed[n]`, whether a chain of any
    length costs it one call, and how many context tokens its cache lacks (`draft_seconds`'s
    `pending`). Fixed for a step, but `pending`, which falls to 0 once the level has drafted in
    the step. (Named tuples: built several times per step, cheaply.)"""

    name: str
    accept_prob: float
    tails: Sequence[float]
    feed: Sequence[float]
    one_call: bool
    pending: int = 1


class StepTotals(NamedTuple):
    """A step's tree so far: expected accepted tokens, drafting seconds, node count, and
    `verify[n]`, the seconds to verify the root and n nodes (clamped to the last entry)."""

    gain: float
    draft_seconds: float
    nodes: int
    verify: Sequence[float]


def chain_seconds(feed: Sequence[float], depth: int, k_max: int, one_call: bool, pending: int = 1) -> list[float]:
    """`draft_seconds` for k = 1 .. k_max, the same sums in plain Python."""
    if one_call:
        return list(feed[1:k_max + 1])
    first, single = feed[first_feed(depth, pending)], feed[1]
    return [first + steps * single for steps in range(k_max)]


def best_rate(levels: Iterable[tuple[LevelTerms, int]], cumulative: float, depth: int,
              step: StepTotals) -> Choice | None:
    """argmax over (level, k <= that level's k_max) of the step's expected rate once the expansion of
    k tokens below a node at `depth` reached with probability `cumulative` is added:
    (1 + G + g) / (D + d + V(n + k)), g = cumulative * a (1 - a^k) / (1 - a) and d = `draft_seconds`
    (the first option wins ties). Plain Python: per node the options are few, and numpy's per-call
    overhead was most of the scheduler's time."""
    levels = list(levels)
    k_most = max((k_max for _, k_max in levels), default=0)
    verify_after = list(step.verify[step.nodes + 1:step.nodes + 1 + k_most])  # V(n + k), k = 1 .. k_most,
    verify_after += [step.verify[-1]] * (k_most - len(verify_after))  # the last entry past the table
    base, spent = 1.0 + step.gain, step.draft_seconds
    best: Choice | None = None
    for terms, k_max in levels:
        reach, spread = cumulative * terms.accept_prob, 1.0 - terms.accept_prob
        drafting = chain_seconds(terms.feed, depth, k_max, terms.one_call, terms.pending)
        rates = [(base + reach * tail / spread) / (spent + seconds + verify)
                 for tail, seconds, verify in zip(terms.tails, drafting, verify_after)]  # k = 1 .. k_max
        if rates:
            rate = max(rates)
            if best is None or rate > best.score:
                best = Choice(terms.name, rates.index(rate) + 1, rate)  # the first of equal maxima
    return best


def rate_after(gain: float, seconds: float, add_gain: float, add_seconds: float) -> float:
    """Expected committed tokens per second of a step (the bonus token included) after adding an
    expansion of expected `add_gain` tokens costing `add_seconds` (drafting and larger verify)."""
    total = seconds + add_seconds
    if total <= 0:
        raise ValueError(f"a step must cost time, got {seconds} + {add_seconds} seconds")
    return (1.0 + gain + add_gain) / total


def best_choice(levels: Iterable[tuple[str, float, Callable[[int], float]]], k_max: int,
                bottom_accept: float, bottom_cost: float) -> Choice | None:
    """argmax over (level, k <= k_max) of T; `levels` are (name, accept_prob, k -> draft cost)."""
    return best_scored(((name, k, dytc_score(accept_prob, k, cost(k), bottom_accept, bottom_cost))
                        for name, accept_prob, cost in levels for k in range(1, k_max + 1)))


def best_scored(options: Iterable[tuple[str, int, float]]) -> Choice | None:
    """The (level, k, score) option with the highest score (the first on ties); None if none."""
    best = None
    for name, k, score in options:
        if best is None or score > best.score:
            best = Choice(name, k, score)
    return best


def verify_budget(verify_cost: Callable[[int], float], max_nodes: int, factor: float) -> int:
    """The most draft nodes n <= max_nodes whose verify forward (root + n tokens) costs at most
    `factor` times a plain one-token forward: the knee of the target's measured cost curve."""
    single = verify_cost(0)
    nodes = 0
    for n in range(1, max_nodes + 1):
        if verify_cost(n) > factor * single:
            break
        nodes = n
    return nodes
