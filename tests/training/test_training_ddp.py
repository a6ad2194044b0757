"""Distillation under DDP on 2 CPU processes (gloo): identical ranks, the single-process trend."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _distill(target: Path, out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "drafttrain.cli", "run", "distill", "--config",
               str(REPO / "configs/tiny/distill.yaml"), f"target={target}", f"out={out}", f"cache_dir={cache}",
               "corpus.max_documents=20", "val_fraction=0.2", "logging.wandb=disabled", "trainer.max_steps=24",
               "trainer.val_every=8", "trainer.checkpoint_every=24", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)


def _val_losses(out: Path) -> list[float]:
    with open(out / "metrics" / "metrics.csv") as stream:
        return [float(row["val/loss"]) for row in csv.DictReader(stream) if row.get("val/loss")]


@pytest.mark.slow
def test_ddp_ranks_end_identical_and_follow_the_single_process_trend(tiny_target, tmp_path):
    single = _distill(tiny_target, tmp_path / "single", tmp_path / "cache")
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _distill(tiny_target, tmp_path / "ddp", tmp_path / "cache", "trainer.strategy=ddp",
                   "trainer.devices=2", "trainer.accelerator=cpu")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    record = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert record["ddp_ranks_identical"] is True  # checked by all-gathering weight checksums
    single_losses, ddp_losses = _val_losses(tmp_path / "single"), _val_losses(tmp_path / "ddp")
    assert len(single_losses) == len(ddp_losses) == 3
    assert single_losses[-1] < single_losses[0] and ddp_losses[-1] < ddp_losses[0]
    # twice the global batch: the same trend, ending close to the single-process loss
    assert abs(ddp_losses[-1] - single_losses[-1]) < 0.25 * single_losses[0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning's FSDP strategy needs CUDA")
def test_fsdp_shards_the_teacher(tiny_target, tmp_path):
    """GPU only: distill under FSDP on the GPUs there are (1 is enough to exercise the wrapping)."""
    devices = min(torch.cuda.device_count(), 2)
    result = _distill(tiny_target, tmp_path / "fsdp", tmp_path / "cache", "trainer.strategy=fsdp",
                      f"trainer.devices={devices}", "trainer.accelerator=cuda", "trainer.precision=bf16-mixed")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "fsdp" / "draft" / "config.json").is_file()
