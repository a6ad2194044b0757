"""`scheduler.json`: which scheduler a bundle runs and its settings, and building it from the levels.

The scheduler is `dytc` (the Dynamic Tree Cascade over every level, `drafttrain.scheduling.dytc`)
or `sd-<level>` (plain speculative decoding with one level and a fixed draft length, the fallback
when a cascade does not pay on some hardware). `k` holds each level's fixed draft length, used by
`sd-<level>` and by `drafttrain eval --bundle` when it measures every level on its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from drafttrain.config import config_from_dict, config_to_dict
from drafttrain.config import documented as _help
from drafttrain.drafters.base import Drafter, TreeShape
from drafttrain.errors import DrafttrainError
from drafttrain.scheduling.dytc import DyTCSettings

DEFAULT_K = {"draft": 4, "self": 3, "ngram": 8}
LEVEL_NAME = re.compile(r"draft\d+|self\d+|ngram")


def default_k(level: str) -> int:
    """A level's fixed draft length when none is given: by its kind (draft*, self*, ngram)."""
    return next(k for prefix, k in DEFAULT_K.items() if level.startswith(prefix))


@dataclass
class SchedulerSpec:
    name: str = _help("dytc, or sd-<level> for one level with a fixed draft length", default="dytc")
    dytc: DyTCSettings = _help("DyTC's settings", default_factory=DyTCSettings)
    tree_capacity: int = _help("tree nodes the decoder reserves room for per step (dytc)", default=64)
    k: dict[str, int] = _help("fixed draft length per level (sd-<level>)", default_factory=dict)

    def __post_init__(self) -> None:
        if self.name != "dytc" and not self.name.startswith("sd-"):
            raise DrafttrainError(f"scheduler {self.name!r} is unknown: use dytc or sd-<level> (e.g. sd-ngram)")
        if self.tree_capacity <= 0 or any(k <= 0 for k in self.k.values()):
            raise DrafttrainError("tree_capacity and every k must be positive integers")
        named = [self.name.removeprefix("sd-")] if self.name != "dytc" else []
        odd = [level for level in named + list(self.k) + list(self.dytc.levels) if not LEVEL_NAME.fullmatch(level)]
        if odd:
            raise DrafttrainError(f"{odd} are not level names: levels are draft0, draft1, ..., self0, self1, ... "
                                  "and ngram")

    def check_levels(self, levels: list[str]) -> None:
        """A clear error when the scheduler runs a level the cascade does not have (k may name levels
        a cascade lacks: a pipeline sets them before it knows how many levels the search finds)."""
        named = [self.name.removeprefix("sd-")] if self.name != "dytc" else list(self.dytc.levels)
        unknown = [level for level in named if level not in levels]
        if unknown:
            raise DrafttrainError(f"scheduler names level(s) {unknown} that the cascade does not have "
                                  f"(it has {levels})")

    def k_for(self, level: str) -> int:
        return self.k.get(level, default_k(level))

    def save(self, path: Path) -> None:
        from drafttrain.io import write_atomically

        write_atomically(path, json.dumps(config_to_dict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SchedulerSpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise DrafttrainError(f"{path} does not exist: give a scheduler.json written by `drafttrain export`") \
                from err
        except json.JSONDecodeError as err:
            raise DrafttrainError(f"{path} is not valid JSON ({err})") from err
        return config_from_dict(cls, data, str(path))


@dataclass
class Scheduler:
    """A built scheduler: the drafter the decoder calls and the tree shape it reserves room for."""

    drafter: Drafter
    shape: TreeShape
    levels: dict[str, Drafter] = field(default_factory=dict)


def build_scheduler(spec: SchedulerSpec, levels: dict[str, Drafter], predictors_path: Path | None,
                    latency, vocab_size: int) -> Scheduler:
    """The drafter `spec` describes over the built `levels` (`drafttrain.drafters.cascade`)."""
    spec.check_levels(list(levels))
    if spec.name != "dytc":
        level = spec.name.removeprefix("sd-")
        return Scheduler(levels[level], TreeShape.chain(spec.k_for(level)), levels)
    from drafttrain.calibration import AcceptanceEMA, AcceptancePredictors
    from drafttrain.scheduling.dytc import DyTCDrafter, capacity_shape

    if predictors_path is None or latency is None:
        raise DrafttrainError("the dytc scheduler needs predictors.json and latency.json from "
                              "`drafttrain run calibrate`")
    predictors = AcceptancePredictors.load(predictors_path)
    ema = AcceptanceEMA(predictors.ema_lambda, predictors.ema_window)
    drafter = DyTCDrafter(spec.dytc.scheduled(levels), predictors.modes, latency, vocab_size, ema, spec.dytc)
    return Scheduler(drafter, capacity_shape(spec.tree_capacity, spec.dytc.max_depth), levels)
