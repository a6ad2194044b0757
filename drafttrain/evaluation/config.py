"""`EvalConfig`: every setting of `drafttrain eval`, loaded from YAML, flags or key=value overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from drafttrain.config import documented as _help
from drafttrain.errors import DrafttrainError


BUNDLED = ("draft", "levels", "predictors", "latency", "ngram_table", "scheduler")  # what --bundle supplies


@dataclass
class EvalConfig:
    target: Path | None = _help("target model: a Hugging Face checkpoint directory", default=None)
    prompts: Path | None = _help('prompt set: JSONL with one {"id", "prompt"} object per line', default=None)
    methods: list[str] = _help("methods to compare, comma-separated (see `drafttrain eval --list-methods`)",
                               default_factory=lambda: ["ar", "hf", "sd-ngram"])
    out: Path = _help("output directory for report.json, report.md and plots", default=Path("outputs/eval"))
    max_new_tokens: int = _help("new tokens per prompt", default=128)
    num_prompts: int = _help("evaluate only the first N prompts (0: all)", default=0)
    draft: Path | None = _help("draft model directory (sd-draft, hf-assisted)", default=None)
    self_spec: str | None = _help("self-draft view for sd-self: a JSON file or inline JSON", default=None)
    temperature: float = _help("0 for greedy; > 0 samples (lossless by rejection sampling)", default=0.0)
    top_k: int = _help("top-k filter when sampling (0: off)", default=0)
    top_p: float = _help("nucleus filter when sampling (1: off)", default=1.0)
    seed: int = _help("base seed; prompt i uses seed + i", default=0)
    k_draft: int = _help("draft length of sd-draft", default=4)
    k_self: int = _help("draft length of sd-self", default=3)
    k_ngram: int = _help("draft length of sd-ngram", default=8)
    tree: list[int] | None = _help("static tree branching for sd-draft and sd-self, e.g. 2,2,1 "
                                   "(default: a chain of k tokens)", default=None)
    ngram_table: Path | None = _help("bigram fallback table (.json or .safetensors) for sd-ngram", default=None)
    levels: Path | None = _help("levels.json of `drafttrain search`: self-draft levels self0, self1, ... of dytc",
                                default=None)
    predictors: Path | None = _help("predictors.json of `drafttrain run calibrate` (dytc)", default=None)
    latency: Path | None = _help("latency.json of `drafttrain run calibrate` (dytc)", default=None)
    scheduler: Path | None = _help("scheduler.json of `drafttrain export` (dytc's settings, each level's k for "
                                   "`levels`)", default=None)
    bundle: Path | None = _help("a cascade bundle (directory or .tar.gz of `drafttrain export`): supplies the "
                                "draft, levels, predictors, latency, n-gram table and scheduler, verified "
                                "against --target (an explicit --scheduler replaces the bundle's)", default=None)
    k_heuristic: int = _help("first draft length of hf-heuristic", default=5)
    k_vc: list[int] = _help("vc: [draft-model tokens per step, n-gram tokens the draft model reviews per "
                            "forward]", default_factory=lambda: [4, 4])
    k_hc: list[int] = _help("hc: [draft-model tokens per step, n-gram tokens appended after them]",
                            default_factory=lambda: [2, 4])
    k_csd: list[int] = _help("csd k-matrix, flattened: [draft-model tokens for the target, n-gram tokens for "
                             "the target, n-gram tokens for the draft model]", default_factory=lambda: [3, 4, 4])
    tree_nodes: int = _help("tree: draft-model nodes of the static tree, chosen by cumulative draft "
                            "probability", default=16)
    tree_depth: int = _help("tree: deepest draft-model node", default=6)
    tree_ngram: int = _help("tree: n-gram stage tokens grafted below the most probable leaf (0: none)",
                            default=4)
    alphas: list[float] = _help("speccascade-*: lenience values alpha to sweep (0 is exact speculative "
                                "decoding)", default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5])
    k_cascade: int = _help("speccascade-*: draft length of the draft model", default=4)
    pld_tokens: int = _help("prompt_lookup_num_tokens for hf-pld", default=10)
    stop_strings: list[str] = _help("stop generation at any of these strings", default_factory=list)
    dtype: Literal["float32", "bfloat16"] = _help("weights and activations dtype", default="float32")
    device: str = _help("torch device: cpu, cuda, cuda:1, ...", default="cpu")
    verify: Literal["eager", "static", "cuda-graphs"] = _help(
        "how our engine runs the target's verify forward: eager (sized to each step), static (padded to size "
        "buckets) or cuda-graphs (those buckets captured as CUDA graphs; CUDA only)", default="eager")
    compile: str | None = _help("torch.compile backend for the fixed-shape forwards of verify=static|cuda-graphs "
                                "(inductor; eager only traces); compiling is reported apart, as setup_seconds",
                                default=None)
    threads: int = _help("CPU threads for torch (0: torch's default)", default=0)
    tune_row_kernels: int = _help("without a latency profile: before the run, time the target's forwards of 1..N "
                                  "rows under each row kernel and keep the fastest (CPU; 0: the default kernel)",
                                  default=0)
    warmup: bool = _help("run every method once on the first prompt before measuring", default=True)
    wandb: Literal["offline", "online", "disabled"] = _help("wandb logging of the report", default="offline")

    def __post_init__(self) -> None:
        from drafttrain.evaluation.methods import METHODS

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise DrafttrainError(f"methods: unknown method(s) {unknown}; available: {sorted(METHODS)}")
        if not self.methods:
            raise DrafttrainError("methods: give at least one method, e.g. methods=[ar,sd-ngram]")
        for name in self.methods:
            for needed in METHODS[name].needs:
                if getattr(self, needed) is None and not (self.bundle is not None and needed in BUNDLED):
                    raise DrafttrainError(f"method {name} needs `{needed}`; set --{needed.replace('_', '-')}")
        for name, size in (("k_vc", 2), ("k_hc", 2), ("k_csd", 3)):
            values = getattr(self, name)
            if len(values) != size or any(v < 0 for v in values) or values[0] <= 0:
                raise DrafttrainError(f"{name}={values} is invalid: give {size} non-negative integers, the first "
                                      "positive (see `drafttrain eval --help`)")
        if self.compile is not None and self.verify == "eager":
            raise DrafttrainError(f"compile={self.compile} compiles the fixed-shape forwards: set verify=static or "
                                  "verify=cuda-graphs as well")
        if self.verify == "cuda-graphs" and not self.device.startswith("cuda"):
            raise DrafttrainError(f"verify=cuda-graphs needs a CUDA device, but device={self.device!r}: set "
                                  "device=cuda, or use verify=eager or verify=static")
        if any(not 0.0 <= alpha <= 1.0 for alpha in self.alphas) or not self.alphas:
            raise DrafttrainError(f"alphas={self.alphas} is invalid: give one or more values in [0, 1]")
        if self.tune_row_kernels < 0:
            raise DrafttrainError(f"tune_row_kernels={self.tune_row_kernels} is invalid: give 0 (off) or the "
                                  "largest row count to tune, e.g. 16")
        for name in ("max_new_tokens", "k_draft", "k_self", "k_ngram", "pld_tokens", "k_heuristic",
                     "tree_nodes", "tree_depth", "k_cascade"):
            if getattr(self, name) <= 0:
                raise DrafttrainError(f"{name}={getattr(self, name)} is invalid: it must be a positive integer")

    def require_inputs(self) -> None:
        """Check the settings a run needs (not needed merely to load or validate a config)."""
        for name in ("target", "prompts"):
            if getattr(self, name) is None:
                raise DrafttrainError(f"`{name}` is not set: pass --{name} (or set it in the YAML config)")
