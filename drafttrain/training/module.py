"""The LightningModule both recipes train: a causal LM student, optionally taught by a frozen target.

Pretraining is cross-entropy on packed corpus text. Distillation draws each step's sequences from
a mixture chosen by (seed, step): packed corpus text (teacher-forced), continuations the target
generated once (cached on disk), or on-policy continuations the student itself regenerates every
N steps (DistillSpec); the loss is the configured divergence to the teacher on the positions that
count. The on-policy buffer travels in checkpoints, so a resumed run sees the same data.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from drafttrain.training.batches import batch_rows
from drafttrain.training.config import DistillData, OptimConfig
from drafttrain.training.losses import distill_loss, expected_acceptance, greedy_agreement

SOURCES = ("corpus", "target_generated", "on_policy")


def pick_source(data: DistillData | None, seed: int, step: int) -> str:
    """The data source of `step`, drawn from the mixture fractions (deterministic)."""
    if data is None:
        return "corpus"
    draw = torch.rand((), generator=torch.Generator().manual_seed(seed * 7919 + step)).item()
    cumulative = 0.0
    for name in SOURCES:
        cumulative += getattr(data, name)
        if draw < cumulative:
            return name
    return "corpus"


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CausalLMTraining(L.LightningModule):
    def __init__(self, student: torch.nn.Module, optim: OptimConfig, max_steps: int, loss: str = "ce",
                 teacher: torch.nn.Module | None = None, beta: float = 0.5, temperature: float = 1.0,
                 top_k: int = 0, data: DistillData | None = None, seed: int = 0,
                 generate_prefixes=None) -> None:
        super().__init__()
        self.student = student
        self._teacher = [teacher]  # a list keeps the frozen teacher out of state_dict and checkpoints
        self.optim, self.max_steps, self.loss_kind = optim, max_steps, loss
        self.beta, self.temperature, self.top_k = beta, temperature, top_k
        self.data, self.seed = data, seed
        self.generate_prefixes = generate_prefixes  # step -> [n, prompt_tokens] prefixes (on-policy)
        self.buffers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # source -> (sequences, loss mask)
        self.on_policy_round = -1  # which refresh round the on-policy buffer was generated in

    @property
    def teacher(self) -> torch.nn.Module | None:
        return self._teacher[0]

    def configure_model(self) -> None:
        """Under FSDP, shard the frozen teacher by decoder layer too, so no rank holds all of it.

        GPU only (Lightning's FSDP needs CUDA); not yet run in this project: see
        tests/training/test_training_ddp.py::test_fsdp_shards_the_teacher for the check to run.
        """
        from lightning.pytorch.strategies import FSDPStrategy
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        teacher = self.teacher
        if teacher is None or isinstance(teacher, FullyShardedDataParallel) or not isinstance(
                self.trainer.strategy, FSDPStrategy):
            return
        layer_class = type(teacher.model.layers[0])
        self._teacher[0] = FullyShardedDataParallel(teacher.requires_grad_(False).eval(), device_id=self.device,
                                                    auto_wrap_policy=ModuleWrapPolicy({layer_class}))

    def on_fit_start(self) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self.teacher is not None and not isinstance(self.teacher, FullyShardedDataParallel):
            self.teacher.to(self.device).eval().requires_grad_(False)

    def _logits(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(input_ids=inputs, use_cache=False).logits

    def _sequences(self, step: int, rows: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
        """(source, token rows [B, L+1], loss mask over the L predicted positions)."""
        source = pick_source(self.data, self.seed, step)
        refresh_round = self.global_step // self.data.refresh_every if self.data else 0
        if source == "on_policy" and self.on_policy_round != refresh_round:
            self.buffers["on_policy"] = self._generate_on_policy(step)
            self.on_policy_round = refresh_round
        if source == "corpus":
            return source, rows, torch.ones_like(rows[:, 1:], dtype=torch.bool)
        sequences, mask = self.buffers[source]
        picked = batch_rows(len(sequences), rows.shape[0], self.seed + 1, step, self.global_rank,
                            self.trainer.world_size)  # each rank its own share, as for corpus batches
        return source, sequences[picked].to(self.device), mask[picked].to(self.device)

    @torch.no_grad()
    def _generate_on_policy(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        prefixes = self.generate_prefixes(step).to(self.device)
        was_training = self.student.training
        self.student.eval()
        with torch.random.fork_rng(devices=[]):  # seeded by (seed, step, rank): resumed runs regenerate alike
            torch.manual_seed(self.seed * 1_000_003 + step * 97 + self.global_rank)
            out = self._sample_continuations(prefixes)
        self.student.train(was_training)
        return out.cpu(), continuation_mask(prefixes.shape[1], out.shape[1], len(out))

    def _sample_continuations(self, prefixes: torch.Tensor) -> torch.Tensor:
        return self.student.generate(prefixes, attention_mask=torch.ones_like(prefixes), do_sample=True,
                                    temperature=self.data.temperature, top_k=0, top_p=1.0,
                                    max_new_tokens=self.data.generate_tokens,
                                    min_new_tokens=self.data.generate_tokens, pad_token_id=0)

    def _loss(self, rows: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        inputs, labels = rows[:, :-1], rows[:, 1:]
        student_logits = self._logits(self.student, inputs)
        if self.teacher is None or self.loss_kind == "ce":
            loss = distill_loss("ce", student_logits, labels=labels.masked_fill(~mask, -100))
            return loss, {}
        with torch.no_grad():
            teacher_logits = self._logits(self.teacher, inputs)
        loss = distill_loss(self.loss_kind, student_logits, teacher_logits, labels=labels, mask=mask,
                            temperature=self.temperature, beta=self.beta, top_k=self.top_k)
        return loss, {"teacher_logits": teacher_logits, "student_logits": student_logits}

    def training_step(self, batch, batch_idx):
        step, rows = batch
        source, rows, mask = self._sequences(int(step), rows)
        loss, _ = self._loss(rows, mask)
        self.log("train/loss", loss, prog_bar=True)
        self.log(f"train/loss_{source}", loss)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, rows, batch_idx):
        mask = torch.ones_like(rows[:, 1:], dtype=torch.bool)
        loss, logits = self._loss(rows, mask)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        if self.teacher is not None:
            if not logits:
                with torch.no_grad():
                    logits = {"student_logits": self._logits(self.student, rows[:, :-1]),
                              "teacher_logits": self._logits(self.teacher, rows[:, :-1])}
            self.log("val/expected_acceptance", expected_acceptance(logits["student_logits"], logits["teacher_logits"]),
                     prog_bar=True, sync_dist=True)
            self.log("val/greedy_agreement", greedy_agreement(logits["student_logits"], logits["teacher_logits"]),
                     sync_dist=True)

    def configure_optimizers(self):
        decay = [p for p in self.student.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.student.parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.optim.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=self.optim.lr, betas=tuple(self.optim.betas))
        ratio = self.optim.min_lr / self.optim.lr
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.optim.warmup_steps, self.max_steps, ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_end(self) -> None:
        """Under DDP every rank must end with the same weights; fail loudly if they diverged."""
        if self.trainer.world_size == 1:
            return
        probe = torch.Generator().manual_seed(1234)  # fixed random weights: differences cannot cancel out
        checksum = sum((p.detach().double().cpu() * torch.randn(p.shape, generator=probe, dtype=torch.float64)).sum()
                       for p in self.student.parameters())
        gathered = self.all_gather(checksum.to(self.device))
        if not torch.all(gathered == gathered[0]):
            raise RuntimeError(f"DDP ranks ended with different weights (checksums {gathered.tolist()})")
        self.ranks_checksum = float(gathered[0])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if "on_policy" in self.buffers:
            sequences, mask = self.buffers["on_policy"]
            checkpoint["drafttrain_on_policy"] = {"sequences": sequences, "mask": mask, "round": self.on_policy_round}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("drafttrain_on_policy")
        if saved is not None:
            self.buffers["on_policy"] = (saved["sequences"], saved["mask"])
            self.on_policy_round = saved["round"]


def continuation_mask(prefix_len: int, total_len: int, rows: int) -> torch.Tensor:
    """Loss mask over the predicted positions [rows, total_len - 1]: only generated tokens count."""
    positions = torch.arange(1, total_len)
    return (positions >= prefix_len).expand(rows, -1).clone()
