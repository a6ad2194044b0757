"""`SearchConfig`: every setting of `drafttrain search`, loaded from YAML or key=value overrides.

The self-draft search tunes a `SelfDraftView` of the target (which attention / MLP sublayers to
skip, which layer groups to fake-quantize) with Optuna, on calibration prompts. The calibration
prompts must never be the evaluation prompts: a view tuned on the prompts it is scored on flatters
the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from drafttrain.config import documented as _help
from drafttrain.errors import DrafttrainError

SAMPLERS = ("tpe", "random", "cmaes", "nsga2")
OBJECTIVES = ("measured", "cheap", "multi")


@dataclass
class SearchConfig:
    target: Path | None = _help("target model: a Hugging Face checkpoint directory", default=None)
    prompts: Path | None = _help('calibration prompts: JSONL of {"id", "prompt"} objects; never the '
                                 "evaluation prompts", default=None)
    out: Path = _help("output directory: study.db (default storage), levels.json, plots",
                      default=Path("outputs/search"))
    study: str = _help("Optuna study name; an existing study of that name is resumed", default="self-draft")
    storage: str | None = _help("SQLAlchemy URL of the Optuna storage (default: sqlite:///<out>/study.db)",
                                default=None)
    objective: Literal["measured", "cheap", "multi"] = _help(
        "cheap: expected speedup from teacher-forced acceptance and a timed 1-token forward; "
        "measured: tokens/s of speculative decoding over AR; multi: Pareto front of "
        "(acceptance, cost ratio)", default="cheap")
    trials: int = _help("finished (complete or pruned) trials the study should hold", default=60)
    workers: int = _help("processes optimizing the same study in parallel", default=1)
    sampler: str = _help(f"Optuna sampler: {', '.join(SAMPLERS)}", default="tpe")
    seed: int = _help("sampler seed (each worker process adds its index)", default=0)
    keep_first_last: bool = _help("never skip sublayers of the first and last layer", default=True)
    quant_groups: int = _help("0: no quantization; else split layers into this many contiguous groups, "
                              "each choosing a precision of quant_choices", default=0)
    quant_choices: list[str] = _help("precisions a layer group may take: none, int8 (W8A8), int4 (fake "
                                     "activation quantization), fp16 (weight-only)",
                                     default_factory=lambda: ["none", "int8", "int4", "fp16"])
    head_choices: list[str] = _help("precisions the LM head may take (e.g. none,int8,fp16); empty: the "
                                    "target's own", default_factory=list)
    max_cost_fraction: float | None = _help("prune views whose static cost estimate (fraction of the "
                                            "target's weights computed) exceeds this", default=None)
    k: int = _help("draft length (chain) used by the objectives", default=3)
    num_prompts: int = _help("calibration prompts used (measured: decoded; cheap: continued once by "
                             "the target to build calibration rows); 0: all", default=8)
    max_new_tokens: int = _help("new tokens per calibration prompt", default=64)
    calibration_tokens: int = _help("token rows scored by the cheap objective (prompt + continuation)",
                                    default=2048)
    levels: int = _help("number of draft levels (K) exported to levels.json", default=3)
    baseline_ratios: list[float] = _help("evenly spread skip ratios enqueued as baseline trials "
                                         "(SWIFT's default is 0.45)",
                                         default_factory=lambda: [0.25, 0.45, 0.6])
    heartbeat_seconds: int = _help("trial heartbeat; a trial silent for twice this is failed and retried "
                                   "(0: off)", default=30)
    dtype: Literal["float32", "bfloat16"] = _help("weights and activations dtype", default="float32")
    device: str = _help("torch device: cpu, cuda, cuda:1, ...", default="cpu")
    wandb: Literal["offline", "online", "disabled"] = _help(
        "experiment tracking: offline keeps the wandb run in <out>/wandb (upload later with `wandb sync`), "
        "online uploads as it runs, disabled logs nothing", default="offline")
    threads: int = _help("CPU threads for torch per worker (0: torch's default, divided among workers)",
                         default=0)

    def __post_init__(self) -> None:
        for name in ("trials", "workers", "k", "max_new_tokens", "calibration_tokens", "levels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DrafttrainError(f"{name}={value!r} is invalid: it must be a positive integer")
        for name in ("quant_groups", "num_prompts", "heartbeat_seconds", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DrafttrainError(f"{name}={value!r} is invalid: it must be an integer >= 0")
        if self.objective not in OBJECTIVES:
            raise DrafttrainError(f"objective={self.objective!r} is unknown: use one of {', '.join(OBJECTIVES)}")
        if self.sampler not in SAMPLERS:
            raise DrafttrainError(f"sampler={self.sampler!r} is unknown: use one of {', '.join(SAMPLERS)}")
        if self.max_cost_fraction is not None and not 0.0 < self.max_cost_fraction <= 1.0:
            raise DrafttrainError(f"max_cost_fraction={self.max_cost_fraction} is invalid: give a fraction "
                                  "in (0, 1] of the target's cost, or leave it unset")
        bad = [r for r in self.baseline_ratios if not 0.0 <= r <= 1.0]
        if bad:
            raise DrafttrainError(f"baseline_ratios {bad} are invalid: each ratio must be in [0, 1]")
        if not self.study.strip():
            raise DrafttrainError("study is empty: give the study a name, e.g. study=self-draft")
        if self.storage is not None and ":memory:" in self.storage and self.workers > 1:
            raise DrafttrainError(f"storage {self.storage!r} is in memory, so {self.workers} worker processes "
                                  "cannot share it: use a file or server URL, or workers=1")

    def require_inputs(self) -> None:
        """Check the settings a run needs (not needed merely to load or validate a config)."""
        for name in ("target", "prompts"):
            if getattr(self, name) is None:
                raise DrafttrainError(f"`{name}` is not set: pass {name}=... (or set it in the YAML config)")

    def storage_url(self) -> str:
        """The storage URL: `storage`, or a SQLite file in `out`."""
        if self.storage is not None:
            return self.storage
        return f"sqlite:///{Path(self.out).resolve() / 'study.db'}"
