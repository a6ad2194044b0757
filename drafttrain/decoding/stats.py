"""Per-run decoding statistics: forwards, drafted and accepted tokens, and where the time went."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunStats:
    new_tokens: int = 0
    target_forwards: int = 0  # verify forwards; the prefill is counted in prefill_forwards
    prefill_forwards: int = 0
    drafted: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    drafted_by_depth: list[int] = field(default_factory=list)
    accepted_by_depth: list[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    total_seconds: float = 0.0

    def record_step(self, drafter: str | None, depths: list[int], path: list[int],
                    node_levels: list[str] | None = None) -> None:
        """One verify step: `path` is the accepted nodes; `node_levels` names the level that drafted
        each node when a scheduler mixes levels in one tree (else every node counts for `drafter`)."""
        self.target_forwards += 1
        if drafter is None:
            return
        levels = [drafter] * len(depths) if node_levels is None else node_levels
        for level in levels if node_levels is not None else [drafter]:
            self.drafted.setdefault(level, 0)
            self.accepted.setdefault(level, 0)
        for level in levels:
            self.drafted[level] += 1
        for node in path:
            self.accepted[levels[node]] += 1
        accepted = len(path)
        deepest = max(depths, default=0)
        for counts in (self.drafted_by_depth, self.accepted_by_depth):
            counts.extend([0] * (deepest - len(counts)))
        for depth in depths:
            self.drafted_by_depth[depth - 1] += 1
        for depth in range(accepted):
            self.accepted_by_depth[depth] += 1

    @property
    def other_seconds(self) -> float:
        return self.total_seconds - self.prefill_seconds - self.draft_seconds - self.verify_seconds

    @property
    def mean_accepted_tokens(self) -> float:
        """New tokens per verify forward (1.0 for plain autoregressive decoding)."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        drafted = sum(self.drafted.values())
        return sum(self.accepted.values()) / drafted if drafted else None

    def merge(self, other: RunStats) -> None:
        """Add another run's counts into this one (for totals over prompts)."""
        for name in ("new_tokens", "target_forwards", "prefill_forwards", "prefill_seconds",
                     "draft_seconds", "verify_seconds", "total_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.drafted, other.drafted), (self.accepted, other.accepted)):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        for mine, theirs in ((self.drafted_by_depth, other.drafted_by_depth),
                             (self.accepted_by_depth, other.accepted_by_depth)):
            mine.extend([0] * (len(theirs) - len(mine)))
            for depth, value in enumerate(theirs):
                mine[depth] += value

    def to_json(self) -> dict:
        return {
            "new_tokens": self.new_tokens, "target_forwards": self.target_forwards,
            "mean_accepted_tokens": self.mean_accepted_tokens, "acceptance_rate": self.acceptance_rate,
            "drafted": self.drafted, "accepted": self.accepted,
            "drafted_by_depth": self.drafted_by_depth, "accepted_by_depth": self.accepted_by_depth,
            "seconds": {"prefill": self.prefill_seconds, "draft": self.draft_seconds,
                        "verify": self.verify_seconds, "other": self.other_seconds,
                        "total": self.total_seconds},
        }
