"""Per-run decoding statistics: forwards, drafted and accepted tokens, and where the time went.

Per level and depth (`*_by_level_depth[level][d - 1]`, for draft depth d >= 1):
- `drafted`: nodes that level drafted at depth d;
- `accepted`: steps whose accepted path holds a node of that level at depth d (at most one a step);
- `reached`: steps in which the accepted path reached depth d - 1 (the root for d = 1) at a node
  with at least one child drafted by that level, i.e. the verifier got to judge that level's
  proposal(s) at depth d. `accepted / reached` is then the level's acceptance rate at depth d
  given that its parent was accepted (for a chain: accepted at d / accepted at d - 1, counting only
  steps that drafted to depth d). Which node is whose parent comes from `parents`; without it a
  chain is assumed when the depths are 1, 2, ..., n, and for other trees `reached` counts the steps
  in which the path reached depth d - 1 and the level drafted any node at depth d (an upper bound).
"""

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
    drafted_by_level_depth: dict[str, list[int]] = field(default_factory=dict)
    accepted_by_level_depth: dict[str, list[int]] = field(default_factory=dict)
    reached_by_level_depth: dict[str, list[int]] = field(default_factory=dict)
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    total_seconds: float = 0.0

    def record_step(self, drafter: str | None, depths: list[int], path: list[int],
                    node_levels: list[str] | None = None, parents: list[int] | None = None) -> None:
        """One verify step: `path` is the accepted nodes, root-down; `node_levels` names the level
        that drafted each node when a scheduler mixes levels in one tree (else every node counts for
        `drafter`); `parents` (the tree's, -1 for the root) makes `reached_by_level_depth` exact
        for trees (see the module docstring)."""
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
        self._record_levels(levels, depths, path, parents)

    def _record_levels(self, levels: list[str], depths: list[int], path: list[int],
                       parents: list[int] | None) -> None:
        for level, depth in zip(levels, depths):
            self._level_row(level, depth)
            self.drafted_by_level_depth[level][depth - 1] += 1
        for depth, node in enumerate(path, start=1):
            self.accepted_by_level_depth[levels[node]][depth - 1] += 1
        if parents is None and depths == list(range(1, len(depths) + 1)):
            parents = list(range(-1, len(depths) - 1))  # a chain
        offered: dict[int, set[str]] = {}  # levels among the children of each node (-1: the root)
        by_depth: dict[int, set[str]] = {}  # levels among the nodes at each depth (when parents are unknown)
        for node, (level, depth) in enumerate(zip(levels, depths)):
            if parents is not None:
                offered.setdefault(parents[node], set()).add(level)
            by_depth.setdefault(depth, set()).add(level)
        for depth, parent in enumerate([-1, *path], start=1):  # the path's node at depth - 1 and its children
            for level in offered.get(parent, ()) if parents is not None else by_depth.get(depth, ()):
                self.reached_by_level_depth[level][depth - 1] += 1

    def _level_row(self, level: str, depth: int) -> None:
        """Make the level's rows in the three per-level tables at least `depth` long."""
        for table in (self.drafted_by_level_depth, self.accepted_by_level_depth, self.reached_by_level_depth):
            row = table.setdefault(level, [])
            row.extend([0] * (depth - len(row)))

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
        for mine_table, theirs_table in ((self.drafted_by_level_depth, other.drafted_by_level_depth),
                                         (self.accepted_by_level_depth, other.accepted_by_level_depth),
                                         (self.reached_by_level_depth, other.reached_by_level_depth)):
            for level, theirs in theirs_table.items():
                self._level_row(level, len(theirs))
                mine = mine_table[level]
                for depth, value in enumerate(theirs):
                    mine[depth] += value

    def to_json(self) -> dict:
        return {
            "new_tokens": self.new_tokens, "target_forwards": self.target_forwards,
            "mean_accepted_tokens": self.mean_accepted_tokens, "acceptance_rate": self.acceptance_rate,
            "drafted": self.drafted, "accepted": self.accepted,
            "drafted_by_depth": self.drafted_by_depth, "accepted_by_depth": self.accepted_by_depth,
            "drafted_by_level_depth": self.drafted_by_level_depth,
            "accepted_by_level_depth": self.accepted_by_level_depth,
            "reached_by_level_depth": self.reached_by_level_depth,
            "seconds": {"prefill": self.prefill_seconds, "draft": self.draft_seconds,
                        "verify": self.verify_seconds, "other": self.other_seconds,
                        "total": self.total_seconds},
        }
