"""Online acceptance estimate per draft level: an exponential moving average over recent steps.

The calibrated predictors say how likely a token is to be accepted from what the drafter knew
when it drafted it; the online estimate says how the level has been doing on *this* sequence.
After each verify step a level reports how many of its tokens the target judged (`judged`: the
accepted ones, plus the one that was rejected, if any) and how many it accepted. The estimate
of the per-token acceptance rate is the lambda-weighted ratio over the level's last `window`
steps,

    a = sum(lambda^age * accepted) / sum(lambda^age * judged)      (newest step: age 0),

which for a geometric run of acceptances is the weighted maximum-likelihood estimate (counting
drafted rather than judged tokens would bias it low for long drafts). The prior (the level's
calibrated mean acceptance) counts as `prior_weight` judged tokens in both sums, so one early
rejection does not drive a good level's estimate to zero (and shut it out of the schedule).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from operator import mul

from drafttrain.errors import DrafttrainError


@lru_cache(maxsize=256)
def age_weights(ema_lambda: float, count: int) -> tuple[float, ...]:
    """lambda^age of `count` steps, oldest first (the newest step has age 0)."""
    return tuple(ema_lambda ** age for age in range(count - 1, -1, -1))


def ema_acceptance(steps: list[tuple[int, int]], ema_lambda: float, prior: float = 0.0,
                   prior_weight: float = 0.0) -> float:
    """The weighted ratio above for `steps` of (accepted, judged), oldest first, with the prior
    counted as `prior_weight` judged tokens."""
    weights = age_weights(ema_lambda, len(steps))
    accepted, judged_counts = zip(*steps) if steps else ((), ())
    judged = sum(map(mul, weights, judged_counts)) + prior_weight
    if judged <= 0:
        return prior
    return (sum(map(mul, weights, accepted)) + prior * prior_weight) / judged


def judged_tokens(accepted: int, drafted_depth: int) -> int:
    """Tokens the target judged on a path: the accepted ones, plus the rejected one if the path
    stopped before the draft's depth."""
    return accepted + (1 if accepted < drafted_depth else 0)


@dataclass
class AcceptanceEMA:
    """Per-level moving averages of acceptance, with calibrated priors."""

    ema_lambda: float = 0.7
    window: int = 20
    priors: dict[str, float] = field(default_factory=dict)
    prior_weight: float = 2.0
    _steps: dict[str, deque] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.ema_lambda <= 1.0:
            raise DrafttrainError(f"ema_lambda={self.ema_lambda} is invalid: use a value in (0, 1]")
        if self.window < 1:
            raise DrafttrainError(f"window={self.window} is invalid: use 1 or more steps")
        if self.prior_weight < 0:
            raise DrafttrainError(f"prior_weight={self.prior_weight} is invalid: use 0 or more tokens")

    def observe(self, level: str, accepted: int, judged: int) -> None:
        """Record one step in which the target judged `judged` of `level`'s tokens, accepting `accepted`."""
        if judged <= 0:
            return
        if not 0 <= accepted <= judged:
            raise ValueError(f"accepted={accepted} must be between 0 and judged={judged}")
        self._steps.setdefault(level, deque(maxlen=self.window)).append((accepted, judged))

    def idle(self, level: str) -> None:
        """Record a step in which `level` drafted nothing judged: its observations age by one step,
        so a level the scheduler left out drifts back to its prior and gets tried again (otherwise
        a bad stretch would shut it out for the rest of the sequence)."""
        steps = self._steps.get(level)
        if steps:
            steps.append((0, 0))

    def estimate(self, level: str, default: float = 0.5) -> float:
        """The level's moving average, else its prior, else `default`."""
        steps = self._steps.get(level)
        prior = self.priors.get(level, default)
        if steps:
            return ema_acceptance(list(steps), self.ema_lambda, prior, self.prior_weight if level in self.priors else 0.0)
        return prior

    def reset(self) -> None:
        """Forget every observation (before a new sequence); the priors stay."""
        self._steps.clear()
