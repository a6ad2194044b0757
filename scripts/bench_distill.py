"""Distillation on the reference target: how a draft starts, and what it is trained on.

For drafts of 1 and 2 layers (hidden 256) and the same token budget, distill from random weights
with (a) plain cross-entropy on corpus text and (b) JSD(0.5) on a mixture of corpus text, target
samples and on-policy student samples (DistillSpec); and drafts cut from the target's own layers
(`student.from_target_layers`) with (c) cross-entropy and (d) forward KL on corpus text. Then
evaluate each draft with `drafttrain eval` (sd-draft vs ar, greedy, 128 new tokens). Also times one
training step in Lightning against a plain PyTorch loop on the same model and batch. Replaces this
script's section of docs/benchmarks.md with the tables and the commands.

    python scripts/bench_distill.py [--steps 1000] [--num-prompts 20] [--out outputs/bench-distill]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from benchdoc import markers, replace_section

from drafttrain.cli import main as drafttrain_main

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path("../shared/reference")
START, END = markers("bench_distill")
# equal tokens per step for every data source: generated rows are prompt + continuation = seq_len + 1
BUDGET = ["trainer.batch_size=8", "trainer.seq_len=128", "data.prompt_tokens=65", "data.generate_tokens=64",
          "data.generated_sequences=64", "logging.wandb=disabled", "trainer.val_batches=8"]
CORPUS_ONLY = ["data.corpus=1.0", "data.target_generated=0.0", "data.on_policy=0.0"]
RECIPES = {
    "ce-corpus": ["loss=ce", *CORPUS_ONLY],
    "fkl-corpus": ["loss=fkl", *CORPUS_ONLY],
    "jsd-mixture": ["loss=jsd", "beta=0.5", "data.corpus=0.5", "data.target_generated=0.25",
                    "data.on_policy=0.25", "data.refresh_every=100"],
}


# (run name, how the draft is described, the student's settings, recipe)
VARIANTS = [
    ("L1-ce-corpus", "1 layer, random", ["student.shape.num_layers=1"], "ce-corpus"),
    ("L1-jsd-mixture", "1 layer, random", ["student.shape.num_layers=1"], "jsd-mixture"),
    ("L2-ce-corpus", "2 layers, random", ["student.shape.num_layers=2"], "ce-corpus"),
    ("L2-jsd-mixture", "2 layers, random", ["student.shape.num_layers=2"], "jsd-mixture"),
    ("T0-ce-corpus", "1 layer, the target's layer 0", ["student.from_target_layers=[0]"], "ce-corpus"),
    ("T0-fkl-corpus", "1 layer, the target's layer 0", ["student.from_target_layers=[0]"], "fkl-corpus"),
    ("T0-11-fkl-corpus", "2 layers, the target's 0 and 11", ["student.from_target_layers=[0,11]"], "fkl-corpus"),
]


def distill_args(out: Path, student: list[str], recipe: str, steps: int) -> list[str]:
    return ["run", "distill", "--config", "configs/pycode/distill.yaml", f"out={out}",
            *student, f"trainer.max_steps={steps}", f"trainer.val_every={max(steps // 3, 1)}",
            f"trainer.checkpoint_every={steps}", *BUDGET, *RECIPES[recipe]]


def eval_args(draft: Path, out: Path, num_prompts: int) -> list[str]:
    return ["eval", "--target", str(REFERENCE / "pycode-12L"), "--prompts", str(REFERENCE / "prompts-dev.jsonl"),
            "--methods", "ar,sd-draft", "--draft", str(draft), "--k-draft", "4", "--max-new-tokens", "128",
            "--num-prompts", str(num_prompts), "--out", str(out)]


def final_metric(run_dir: Path, name: str) -> float:
    with open(run_dir / "metrics" / "metrics.csv") as stream:
        values = [row[name] for row in csv.DictReader(stream) if row.get(name)]
    return float(values[-1])


def training_overhead(steps: int = 12) -> dict:
    """Tokens/s of the same distillation step in a plain PyTorch loop and in Lightning (fp32, CPU)."""
    import lightning as L
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM

    from drafttrain.training.config import ModelShape, OptimConfig
    from drafttrain.training.module import CausalLMTraining
    from recipes.pretrain import new_llama

    teacher = AutoModelForCausalLM.from_pretrained(str(REFERENCE / "pycode-12L"), dtype=torch.float32).eval()
    teacher.requires_grad_(False)
    rows = torch.randint(1, 8192, (8, 129), generator=torch.Generator().manual_seed(0))
    batches = [(step, rows) for step in range(steps)]

    def module() -> CausalLMTraining:
        torch.manual_seed(0)
        student = new_llama(ModelShape(num_layers=1), 8192)
        return CausalLMTraining(student, OptimConfig(warmup_steps=1), steps, loss="tvd", teacher=teacher)

    plain = module()
    optimizer = plain.configure_optimizers()["optimizer"]
    mask = torch.ones(8, 128, dtype=torch.bool)
    timings = []
    for _, batch in batches:
        started = time.perf_counter()
        loss, _ = plain._loss(batch, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - started)

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            self.starts.append(time.perf_counter())

        def on_train_end(self, *args) -> None:
            self.starts.append(time.perf_counter())

    timer = StepTimer()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, precision="32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module(), DataLoader(batches, batch_size=None))
    lightning_steps = [b - a for a, b in zip(timer.starts, timer.starts[1:])]
    skip = 2  # warm-up steps left out of both
    tokens = rows[:, :-1].numel()
    plain_tps = tokens * (steps - skip) / sum(timings[skip:])
    lightning_tps = tokens * (steps - skip) / sum(lightning_steps[skip:])
    return {"plain_tokens_per_s": plain_tps, "lightning_tokens_per_s": lightning_tps,
            "overhead": plain_tps / lightning_tps - 1.0, "steps_timed": steps - skip, "tokens_per_step": tokens}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--num-prompts", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-distill"))
    options = parser.parse_args()
    os.chdir(REPO)
    torch.set_num_threads(os.cpu_count() or 1)
    rows, commands = [], []
    for name, draft, student, recipe in VARIANTS:
        run_dir = options.out / name
        args = distill_args(run_dir, student, recipe, options.steps)
        if not (run_dir / "draft").is_dir() and drafttrain_main(args) != 0:
            return 1
        eval_dir = run_dir / "eval"
        e_args = eval_args(run_dir / "draft", eval_dir, options.num_prompts)
        if drafttrain_main(e_args) != 0:
            return 1
        report = json.loads((eval_dir / "report.json").read_text())["methods"]["sd-draft"]
        rows.append({"draft": draft, "recipe": recipe,
                     "expected_acceptance": final_metric(run_dir, "val/expected_acceptance"),
                     "greedy_agreement": final_metric(run_dir, "val/greedy_agreement"),
                     "acceptance_rate": report["acceptance_rate"], "mean_accepted": report["mean_accepted_tokens"],
                     "speedup": report["speedup_vs_ar"], "ci": report["speedup_ci95"], "lossless": report["lossless"]})
        commands += [f"drafttrain {shlex.join(args)}", f"drafttrain {shlex.join(e_args)}"]
        (options.out / "rows.json").write_text(json.dumps(rows, indent=2))  # partial results survive a stop
    overhead = training_overhead()
    write_doc(rows, commands, overhead, options)
    print(json.dumps({"rows": rows, "overhead": overhead}, indent=2))
    return 0


def write_doc(rows: list[dict], commands: list[str], overhead: dict, options) -> None:
    lines = [START, f"Measured {datetime.date.today().isoformat()} by `python scripts/bench_distill.py "
             f"--steps {options.steps} --num-prompts {options.num_prompts}` (CPU, 2 threads), which ran:", "",
             "```", *commands, "```", "",
             "| draft | recipe | expected acceptance (val) | greedy agreement (val) | sd-draft acceptance | "
             "tokens/forward | speedup vs ar [95% CI] | lossless |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['draft']} | {row['recipe']} | {row['expected_acceptance']:.3f} | "
                     f"{row['greedy_agreement']:.3f} | {row['acceptance_rate']:.1%} | {row['mean_accepted']:.2f} | "
                     f"{row['speedup']:.2f}x [{row['ci'][0]:.2f}-{row['ci'][1]:.2f}] | {row['lossless']} |")
    lines += ["", f"Training throughput, same 1-layer student, teacher and batch ({overhead['tokens_per_step']} tokens "
              f"a step, fp32, {overhead['steps_timed']} steps timed after 2 warm-up steps): plain PyTorch loop "
              f"{overhead['plain_tokens_per_s']:.0f} tokens/s, Lightning {overhead['lightning_tokens_per_s']:.0f} "
              f"tokens/s: Lightning's overhead {overhead['overhead']:+.1%}.", END]
    replace_section("bench_distill", "Distilled drafts on the reference target (issue 3)", "\n".join(lines))

if __name__ == "__main__":
    sys.exit(main())
