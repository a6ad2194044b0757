"""Config dataclasses of the training recipes (pretrain, distill): one source of truth per setting."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from drafttrain.data.corpus import CorpusConfig
from drafttrain.errors import DrafttrainError

LossKind = Literal["fkl", "rkl", "jsd", "tvd", "ce"]


@dataclass
class ModelShape:
    """A new Llama's shape (vocabulary and context come from the tokenizer/target)."""

    num_layers: int = 2
    hidden_size: int = 256
    intermediate_size: int = 704
    num_heads: int = 4
    num_kv_heads: int = 4
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 1024

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise DrafttrainError(f"model shape: hidden_size {self.hidden_size} must divide by num_heads "
                                  f"{self.num_heads}, and num_heads by num_kv_heads {self.num_kv_heads}")


@dataclass
class OptimConfig:
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0


@dataclass
class TrainerConfig:
    """Lightning Trainer settings; strategy/devices/num_nodes scale the same recipe to many GPUs."""

    max_steps: int = 1000
    batch_size: int = 16
    seq_len: int = 512
    accumulate: int = 1
    precision: str = "auto"  # Lightning's precision; auto: bf16-mixed where the hardware has native bf16, else 32-true
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: int | str = "auto"  # a count, or Lightning's "auto" / "0,1" forms
    num_nodes: int = 1
    val_every: int = 200
    val_batches: int = 8
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "seq_len", "accumulate", "val_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise DrafttrainError(f"trainer.{name}={getattr(self, name)} is invalid: use a positive integer")


@dataclass
class LoggingConfig:
    wandb: Literal["offline", "online", "disabled"] = "offline"
    project: str = "drafttrain"


@dataclass
class PretrainConfig:
    out: Path = Path("outputs/pretrain")
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: Path | None = None  # an existing tokenizer directory; None trains a byte-level BPE
    vocab_size: int = 8192
    val_fraction: float = 0.02
    prompts: int = 40  # evaluation prompts written from held-out text (0: none)
    prompt_context_tokens: int = 320
    model: ModelShape = field(default_factory=ModelShape)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cache_dir: Path = Path(".cache/drafttrain")


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class StudentConfig:
    """A new small Llama (`shape`), a copy of some of the target's layers (`from_target_layers`), or an
    existing HF model at `path`, fully or LoRA fine-tuned.

    `from_target_layers: [0, 11]` starts the student as the target with only those decoder layers
    kept, in that order (embeddings, final norm and head copied too; `shape` is ignored): a draft
    that starts where the target's own early and late layers are, not from random weights.
    """

    path: Path | None = None
    shape: ModelShape = field(default_factory=ModelShape)
    from_target_layers: list[int] | None = None
    lora: LoraSettings | None = None

    def __post_init__(self) -> None:
        if self.lora is not None and self.path is None:
            raise DrafttrainError("student.lora needs student.path (an existing model to adapt); "
                                  "a new student is trained fully")
        layers = self.from_target_layers
        if layers is None:
            return
        if self.path is not None:
            raise DrafttrainError("student.from_target_layers and student.path are exclusive: set one "
                                  "(a student copied from the target's layers, or an existing model)")
        if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
            raise DrafttrainError(f"student.from_target_layers: {layers} must be distinct, non-negative "
                                  "indices of the target's decoder layers, at least one")


@dataclass
class DistillData:
    """Where training sequences come from; the fractions are the mixture (they must sum to 1)."""

    corpus: float = 1.0
    target_generated: float = 0.0
    on_policy: float = 0.0
    refresh_every: int = 50  # on-policy continuations are regenerated by the student every N steps
    prompt_tokens: int = 64
    generate_tokens: int = 64
    generated_sequences: int = 256
    temperature: float = 1.0

    def __post_init__(self) -> None:
        total = self.corpus + self.target_generated + self.on_policy
        if abs(total - 1.0) > 1e-6 or min(self.corpus, self.target_generated, self.on_policy) < 0:
            raise DrafttrainError(f"data: corpus + target_generated + on_policy = {total}; the mixture "
                                  "fractions must be >= 0 and sum to 1")


@dataclass
class DistillConfig:
    target: Path | None = None
    out: Path = Path("outputs/distill")
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossKind = "tvd"
    beta: float = 0.5
    temperature: float = 1.0
    top_k: int = 0
    data: DistillData = field(default_factory=DistillData)
    val_fraction: float = 0.02
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cache_dir: Path = Path(".cache/drafttrain")
    vocab_subset: int = 0  # > 0: also write the draft's N most frequent training tokens (FR-Spec, drafters.vocab)

    def __post_init__(self) -> None:
        if self.vocab_subset < 0:
            raise DrafttrainError(f"vocab_subset={self.vocab_subset} is invalid: use 0 (the whole vocabulary) or the "
                                  "number of most frequent tokens the draft may propose, e.g. 2048")
