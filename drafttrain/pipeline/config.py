"""`PipelineConfig`: the pipeline's stages, each a recipe config (its YAML file plus overrides).

A stage names the YAML file of its recipe (`config`, relative to the directory you run from, or
none for the recipe's defaults) and key overrides on top (`set`, dotted keys allowed). The keys
that connect stages (targets, prompt files, inputs and `out`) are set by the pipeline itself and
win over both. Every stage's config is built and validated when the pipeline config is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from drafttrain.config import config_class_for, load_config
from drafttrain.config import documented as _help
from drafttrain.data.corpus import CorpusConfig
from drafttrain.errors import DrafttrainError

STAGES = ("pretrain", "distill", "search", "calibrate", "export", "eval")
# what the pipeline wires in before a stage can be validated on its own (eval evaluates the bundle)
CHECK_WIRING = {"eval": {"bundle": "bundle"}}


@dataclass
class StageConfig:
    config: Path | None = _help("the recipe's YAML file (none: the recipe's defaults)", default=None)
    set: dict[str, Any] = _help("overrides on top of the file, e.g. {trainer.max_steps: 100}",
                                default_factory=dict)
    enabled: bool = _help("run this stage (distill and search may be turned off)", default=True)

    def overrides(self) -> list[str]:
        return [f"{key}={json.dumps(_plain(value))}" for key, value in self.set.items()]

    def build(self, stage: str, wiring: dict[str, Any] | None = None):
        """The stage's recipe config: file, then `set`, then the pipeline's wiring."""
        wired = [f"{key}={json.dumps(_plain(value))}" for key, value in (wiring or {}).items()]
        return load_config(config_class_for(stage), self.config, self.overrides() + wired)


@dataclass
class PromptsConfig:
    """Prompt sets the pipeline builds from the corpus with the target's tokenizer."""

    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(kind="stdlib", max_documents=400))
    calibration: int = _help("calibration prompts (search, calibrate, and the tuning in scripts/)", default=24)
    calibration_text: Literal["training", "held_out"] = _help(
        "where calibration prompts are cut from: the corpus's training text, or held-out text the evaluation "
        "prompts were not cut from (text neither the target nor the draft trained on, like what evaluation "
        "and serving see)", default="training")
    evaluation: int = _help("evaluation prompts from the held-out packages when eval_prompts is not given",
                            default=20)
    context_tokens: int = _help("tokens of context per prompt (at most)", default=256)
    seed: int = _help("prompt selection seed", default=2)

    def __post_init__(self) -> None:
        if min(self.calibration, self.evaluation, self.context_tokens) <= 0:
            raise DrafttrainError("prompts: calibration, evaluation and context_tokens must be positive")


@dataclass
class PipelineConfig:
    out: Path = _help("directory of every stage's outputs (cached by a hash of their config and inputs)",
                      default=Path("outputs/pipeline"))
    target: Path | None = _help("the target checkpoint directory; none: pretrain one (stage pretrain)",
                                default=None)
    eval_prompts: Path | None = _help("evaluation prompts (JSONL); none: built from held-out text", default=None)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    threads: int = _help("CPU threads for torch in every stage (0: torch's default)", default=0)
    wandb: Literal["offline", "online", "disabled"] = _help("wandb logging of every stage", default="offline")
    pretrain: StageConfig = field(default_factory=StageConfig)
    distill: StageConfig = field(default_factory=StageConfig)
    search: StageConfig = field(default_factory=StageConfig)
    calibrate: StageConfig = field(default_factory=StageConfig)
    export: StageConfig = field(default_factory=StageConfig)
    eval: StageConfig = field(default_factory=StageConfig)

    def __post_init__(self) -> None:
        for stage in STAGES:
            try:
                getattr(self, stage).build(stage, CHECK_WIRING.get(stage))
            except DrafttrainError as err:
                raise DrafttrainError(f"stage {stage}: {err}") from err
        if not self.calibrate.enabled or not self.export.enabled:
            raise DrafttrainError("the calibrate and export stages cannot be turned off: the bundle needs them")


def _plain(value: Any) -> Any:
    """JSON-safe form of an override value (paths as strings)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
