"""`CalibrateConfig`: every setting of `drafttrain run calibrate`, loaded from YAML or key=value overrides.

Calibration runs each draft level of a cascade against the target on calibration prompts
(never the evaluation prompts: predictors tuned on the prompts they are scored on flatter the
benchmark), records per-token traces and per-call timings, and fits acceptance and latency
predictors.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

from drafttrain.config import documented as _help
from drafttrain.errors import DrafttrainError


@dataclass
class CalibrateConfig:
    target: Path | None = _help("target model: a Hugging Face checkpoint directory", default=None)
    prompts: Path | None = _help('calibration prompts: JSONL of {"id", "prompt"} objects; never the '
                                 "evaluation prompts", default=None)
    eval_prompts: Path | None = _help("the evaluation prompt set, if known: calibration refuses prompts "
                                      "that also appear there", default=None)
    out: Path = _help("output directory: traces/, predictors.json, latency.json, report, plots",
                      default=Path("outputs/calibrate"))
    drafts: list[Path] = _help("draft model directories (levels draft0, draft1, ...)", default_factory=list)
    levels: Path | None = _help("levels.json from `drafttrain search` (levels self0, self1, ...)", default=None)
    max_levels: int = _help("use only the first N levels of `levels` (0: all)", default=0)
    self_specs: list[str] = _help("extra self-draft views, inline JSON or files, appended after `levels`",
                                  default_factory=list)
    ngram: bool = _help("include the n-gram drafter (level ngram)", default=True)
    ngram_table: Path | None = _help("bigram fallback table for the n-gram drafter", default=None)
    num_prompts: int = _help("calibration prompts decoded per level (0: all)", default=48)
    max_new_tokens: int = _help("new tokens per calibration prompt", default=128)
    k: int = _help("chain length drafted by every level while recording traces", default=8)
    temperatures: list[float] = _help("decoding modes to calibrate: 0 is greedy, > 0 samples",
                                      default_factory=lambda: [0.0])
    folds: int = _help("the predictors are scored out of fold: prompts are split into this many folds and "
                       "each fold is predicted by predictors fitted on the others", default=5)
    depth_edges: list[int] = _help("lower edges of the depth buckets (1, 2, 3-4, 5-8, 9+ by default)",
                                   default_factory=lambda: [1, 2, 3, 5, 9])
    isotonic_bins: int = _help("fit each isotonic map on the means of this many quantile bins of confidence "
                               "(0: on every row)", default=16)
    min_bucket_rows: int = _help("a depth bucket with fewer fit rows merges into its neighbour", default=200)
    ema_lambda: float = _help("online acceptance estimate: weight decay per step", default=0.7)
    ema_window: int = _help("online acceptance estimate: steps remembered", default=20)
    latency: bool = _help("time every level and the target, fit latency predictors", default=True)
    latency_tokens: list[int] = _help("tokens per timed forward", default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    latency_repeats: int = _help("timed sweeps over the grid (each point keeps a trimmed mean of them)",
                                 default=7)
    latency_row_kernels: bool = _help("on CPU, time each model level's forwards under every row kernel first and "
                                      "keep the fastest per token count (drafttrain.runtime.row_kernels)",
                                      default=True)
    latency_warmup: int = _help("untimed sweeps over the grid before the timed ones", default=2)
    seed: int = _help("seed of the prompt split and of sampling", default=0)
    dtype: Literal["float32", "bfloat16"] = _help("weights and activations dtype", default="float32")
    device: str = _help("torch device: cpu, cuda, cuda:1, ...", default="cpu")
    wandb: Literal["offline", "online", "disabled"] = _help(
        "experiment tracking: offline keeps the wandb run in <out>/wandb (upload later with `wandb sync`), "
        "online uploads as it runs, disabled logs nothing", default="offline")
    threads: int = _help("CPU threads for torch (0: torch's default)", default=0)

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "k", "ema_window", "latency_repeats", "min_bucket_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DrafttrainError(f"{name}={value!r} is invalid: it must be a positive integer")
        for name in ("num_prompts", "max_levels", "latency_warmup", "threads", "isotonic_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DrafttrainError(f"{name}={value!r} is invalid: it must be an integer >= 0")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise DrafttrainError(f"folds={self.folds!r} is invalid: use 2 or more folds")
        if not 0.0 < self.ema_lambda <= 1.0:
            raise DrafttrainError(f"ema_lambda={self.ema_lambda} is invalid: use a value in (0, 1]")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise DrafttrainError(f"temperatures={self.temperatures} is invalid: give one or more values >= 0 "
                                  "(0 is greedy)")
        edges = self.depth_edges
        if not edges or edges[0] != 1 or any(b <= a for a, b in pairwise(edges)):
            raise DrafttrainError(f"depth_edges={edges} is invalid: give increasing depths starting at 1, "
                                  "e.g. [1, 2, 3, 5, 9]")
        if not self.latency_tokens or any(n <= 0 for n in self.latency_tokens):
            raise DrafttrainError(f"latency_tokens={self.latency_tokens} is invalid: give positive token counts")

    def require_inputs(self) -> None:
        """Check the settings a run needs (not needed merely to load or validate a config)."""
        for name in ("target", "prompts"):
            if getattr(self, name) is None:
                raise DrafttrainError(f"`{name}` is not set: pass {name}=... (or set it in the YAML config)")
        if not (self.drafts or self.levels or self.self_specs or self.ngram):
            raise DrafttrainError("no draft level to calibrate: give drafts=[...], levels=levels.json, "
                                  "self_specs=[...] or ngram=true")
