"""What every training recipe shares: the Trainer, its loggers and checkpoints, the step-indexed
data module, exact resume, atomic export of the result, and the run record beside it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from drafttrain.config import config_to_dict
from drafttrain.io import write_atomically
from drafttrain.training.batches import StepBatches
from drafttrain.training.config import LoggingConfig, TrainerConfig

LIBRARIES = ("drafttrain", "torch", "transformers", "lightning", "peft", "tokenizers", "safetensors", "wandb")


class PackedData(L.LightningDataModule):
    """Train batches indexed by step (starting at the restored step on resume); fixed val rows."""

    def __init__(self, train: torch.Tensor, val: torch.Tensor, trainer_config: TrainerConfig) -> None:
        super().__init__()
        self.train, self.val, self.config = train, val, trainer_config

    def train_dataloader(self) -> DataLoader:
        micro_steps = self.config.max_steps * self.config.accumulate
        start = self.trainer.global_step * self.config.accumulate
        dataset = StepBatches(self.train, self.config.batch_size, self.config.seed, start, micro_steps,
                              self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(dataset, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        rows = self.val[: self.config.val_batches * self.config.batch_size]
        return DataLoader(rows, batch_size=self.config.batch_size)


def build_trainer(out: Path, config: TrainerConfig, logging: LoggingConfig, run_name: str,
                  grad_clip: float) -> L.Trainer:
    loggers = [CSVLogger(save_dir=str(out), name="metrics", version="")]
    if logging.wandb != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=logging.project, name=run_name, save_dir=str(out),
                                   offline=logging.wandb == "offline"))
    checkpoints = ModelCheckpoint(dirpath=str(out / "checkpoints"), every_n_train_steps=config.checkpoint_every,
                                  save_last=True, save_top_k=1, monitor=None)
    return L.Trainer(
        max_steps=config.max_steps, max_epochs=-1, accelerator=config.accelerator, strategy=config.strategy,
        devices=_devices(config.devices), num_nodes=config.num_nodes,
        precision=resolve_precision(config.precision, config.accelerator),
        accumulate_grad_batches=config.accumulate, val_check_interval=config.val_every * config.accumulate,
        check_val_every_n_epoch=None, limit_val_batches=config.val_batches, log_every_n_steps=config.log_every,
        num_sanity_val_steps=0, logger=loggers, callbacks=[checkpoints, TQDMProgressBar(refresh_rate=10)],
        gradient_clip_val=grad_clip or None, enable_model_summary=False, default_root_dir=str(out))


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning's precision for `precision`; "auto" is bf16 mixed precision where the hardware computes
    in bf16 (a CUDA GPU with bf16, or a CPU with native bf16 such as AVX512-BF16 or AMX), else float32.
    On a CPU without it bf16 is emulated: a step of the pycode distill took 16 s in bf16-mixed against
    1.1 s in float32 on an AMD EPYC without AVX-512 (docs/benchmarks.md, pipeline section)."""
    if precision != "auto":
        return precision
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    native_bf16 = torch.cuda.is_bf16_supported() if on_cuda else cpu_has_native_bf16()
    resolved = "bf16-mixed" if native_bf16 else "32-true"
    print(f"precision auto -> {resolved} ({'CUDA' if on_cuda else 'CPU'} {'with' if native_bf16 else 'without'} "
          "native bf16)")
    return resolved


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products at native speed: oneDNN's check (AVX512-BF16, AMX, or
    AVX-512 cores, where oneDNN converts in registers), else the AVX512-BF16 / AMX flags."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None:
        return bool(check())
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _devices(value: int | str) -> int | str:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def resume_from(out: Path) -> str | None:
    """The last checkpoint of an interrupted run in `out`, if any (finished work is never redone)."""
    last = out / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_run_record(out: Path, config, extra: dict | None = None) -> None:
    """The resolved config and library versions, so the run can be repeated from them."""
    record = {"config": config_to_dict(config), "versions": library_versions(), **(extra or {})}
    write_atomically(out / "run.json", json.dumps(record, indent=2) + "\n")


def export_atomically(final_dir: Path, write) -> Path:
    """Call write(tmp_dir), then rename tmp_dir to final_dir: never a half-written model."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}."))
    try:
        write(tmp)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final_dir
