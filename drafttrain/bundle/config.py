"""`ExportConfig` (`drafttrain export`) and `GenerateConfig` (`drafttrain generate`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from drafttrain.bundle.scheduler import SchedulerSpec
from drafttrain.config import documented as _help
from drafttrain.errors import DrafttrainError


@dataclass
class ExportConfig:
    target: Path | None = _help("the target's Hugging Face checkpoint directory", default=None)
    out: Path = _help("bundle directory to write (with archive=true: <out>.tar.gz)", default=Path("outputs/bundle"))
    drafts: list[Path] = _help("draft model directories (levels draft0, draft1, ...)", default_factory=list)
    levels: Path | None = _help("levels.json of `drafttrain search` (levels self0, self1, ...)", default=None)
    predictors: Path | None = _help("predictors.json of `drafttrain run calibrate`", default=None)
    latency: Path | None = _help("latency.json of `drafttrain run calibrate`", default=None)
    ngram: bool = _help("include the n-gram drafter (level ngram)", default=True)
    ngram_table: Path | None = _help("bigram fallback table of the n-gram drafter (.json or .safetensors)",
                                     default=None)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec, metadata={
        "help": "the scheduler the bundle runs: scheduler.name=dytc|sd-<level>, scheduler.k.<level>=N, "
                "scheduler.dytc.<setting>=..."})
    archive: bool = _help("write a single .tar.gz instead of a directory", default=False)
    wandb: Literal["offline", "online", "disabled"] = _help("wandb logging (the bundle as an artifact)",
                                                            default="offline")

    def require_inputs(self) -> None:
        for name in ("target", "predictors", "latency"):
            if getattr(self, name) is None:
                raise DrafttrainError(f"`{name}` is not set: pass --{name} (export needs the target and the "
                                      "outputs of `drafttrain run calibrate`)")


@dataclass
class GenerateConfig:
    bundle: Path | None = _help("the cascade bundle (directory or .tar.gz of `drafttrain export`)", default=None)
    target: Path | None = _help("the target the bundle was made for (checked against the bundle)", default=None)
    prompt: str | None = _help("one prompt text", default=None)
    prompts: Path | None = _help('a JSONL prompt file ({"id", "prompt"} per line) instead of --prompt',
                                 default=None)
    out: Path | None = _help("with --prompts: also write the generations here as JSONL", default=None)
    max_new_tokens: int = _help("new tokens per prompt", default=128)
    temperature: float = _help("0 for greedy; > 0 samples (lossless by rejection sampling)", default=0.0)
    top_k: int = _help("top-k filter when sampling (0: off)", default=0)
    top_p: float = _help("nucleus filter when sampling (1: off)", default=1.0)
    seed: int = _help("sampling seed (prompt i of --prompts uses seed + i)", default=0)
    dtype: Literal["float32", "bfloat16"] = _help("weights and activations dtype", default="float32")
    device: str = _help("torch device: cpu, cuda, cuda:1, ...", default="cpu")
    threads: int = _help("CPU threads for torch (0: torch's default)", default=0)
    stats: bool = _help("print tokens/s and tokens per target forward to stderr after each prompt", default=True)

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise DrafttrainError(f"max_new_tokens={self.max_new_tokens} is invalid: use a positive integer")

    def require_inputs(self) -> None:
        for name in ("bundle", "target"):
            if getattr(self, name) is None:
                raise DrafttrainError(f"`{name}` is not set: pass --{name}")
        if (self.prompt is None) == (self.prompts is None):
            raise DrafttrainError("give exactly one of --prompt TEXT or --prompts FILE")
