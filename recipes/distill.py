"""Distill a draft model from a target so the target accepts as many of its tokens as possible.

    drafttrain run distill --config configs/tiny/distill.yaml target=DIR [key=value ...]

The student is a new small Llama with the target's tokenizer, a copy of a few of the target's own
layers (`student.from_target_layers`), or an existing HF model (same tokenizer, checked) fine-tuned
fully or through a LoRA adapter (peft). Its data is a mixture of corpus text, target-generated
continuations (generated once with drafttrain's runtime and cached) and on-policy continuations the
student regenerates every N steps (DistillSpec); the loss is forward/reverse KL, JSD(beta), total
variation or cross-entropy. Validation logs the loss, greedy agreement and expected acceptance =
1 - mean TV(p_target, q_draft). The result is an HF directory (or a peft adapter plus its base)
that `drafttrain eval --draft` loads.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch
from rich.progress import track
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from drafttrain.data import build_packed_corpus
from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters.transformer import check_same_tokenizer
from drafttrain.drafters.vocab import (
    coverage,
    frequent_tokens,
    save_vocab_subset,
    token_counts,
)
from drafttrain.errors import DrafttrainError
from drafttrain.runtime import load_model, load_tokenizer
from drafttrain.runtime.loader import check_weights
from drafttrain.training.batches import batch_rows
from drafttrain.training.config import DistillConfig, DistillData
from drafttrain.training.module import CausalLMTraining, continuation_mask
from drafttrain.training.run import (
    PackedData,
    build_trainer,
    export_atomically,
    resume_from,
    write_run_record,
)
from drafttrain.training.student import student_from_target_layers
from recipes.pretrain import new_llama

CONFIG = DistillConfig


def load_student(config: DistillConfig, target_tokenizer, teacher):
    """A new small Llama with the target's vocabulary, a copy of some target layers, or an existing
    model (optionally LoRA)."""
    student_config = config.student
    if student_config.from_target_layers is not None:
        return student_from_target_layers(teacher, student_config.from_target_layers)
    if student_config.path is None:
        shape = student_config.shape
        shape.max_position_embeddings = teacher.config.max_position_embeddings
        return new_llama(shape, teacher.config.vocab_size)
    path = student_config.path.resolve()  # peft records it as the adapter's base
    check_same_tokenizer(load_tokenizer(path), target_tokenizer, str(path))
    student = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if student_config.lora is None:
        return student
    from peft import LoraConfig, get_peft_model

    lora = student_config.lora
    return get_peft_model(student, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


def prefixes(packed_train: torch.Tensor, data: DistillData, seed: int, step: int) -> torch.Tensor:
    """`generated_sequences` corpus prefixes of `prompt_tokens` tokens, chosen by (seed, step)."""
    rows = batch_rows(len(packed_train), data.generated_sequences, seed + 2, step)
    return packed_train[rows, : data.prompt_tokens]


def target_generated(config: DistillConfig, packed_train: torch.Tensor, cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuations of corpus prefixes sampled from the target with our runtime, cached on disk."""
    data = config.data
    key = hashlib.sha256(json.dumps([_file_digest(config.target), data.prompt_tokens, data.generate_tokens,
                                     data.generated_sequences, data.temperature, config.trainer.seed,
                                     hashlib.sha256(packed_train.numpy().tobytes()).hexdigest()]).encode()).hexdigest()[:16]
    path = cache_dir / f"target-generated-{key}.safetensors"
    if path.is_file():
        saved = load_file(str(path))
        return saved["sequences"], saved["mask"]
    decoder = SpeculativeDecoder(load_model(config.target))
    sampling = SamplingParams(temperature=data.temperature) if data.temperature > 0 else SamplingParams()
    sequences = []
    rows = prefixes(packed_train, data, config.trainer.seed, step=0)
    for index, prefix in enumerate(track(rows, description="target-generated continuations", transient=True)):
        generation = GenerationConfig(data.generate_tokens, sampling, seed=config.trainer.seed + index)
        tokens = decoder.generate(prefix, None, generation).tokens
        tokens += [0] * (data.generate_tokens - len(tokens))  # an early EOS pads with EOS (id 0)
        sequences.append(torch.cat((prefix, torch.tensor(tokens))))
    sequences = torch.stack(sequences)
    mask = continuation_mask(data.prompt_tokens, sequences.shape[1], len(sequences))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"sequences": sequences, "mask": mask}, str(tmp))
    tmp.replace(path)
    return sequences, mask


def _file_digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in sorted(p.name for p in Path(model_dir).glob("*.safetensors")) + ["config.json"]:
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()


def write_vocab_subset(draft_dir, train_rows: torch.Tensor, vocab_size: int, size: int) -> None:
    """The draft's `size` most frequent tokens of its training text, as its vocabulary subset (FR-Spec)."""
    counts = token_counts([train_rows], vocab_size)
    subset = frequent_tokens(counts, min(size, vocab_size))
    save_vocab_subset(draft_dir, subset, int(counts.sum()), coverage(subset, counts))


def main(config: DistillConfig) -> None:
    if config.target is None:
        raise DrafttrainError("distill: `target` is not set; pass target=DIR (a Hugging Face checkpoint directory)")
    out = config.out
    L.seed_everything(config.trainer.seed, workers=True)
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)

    # 1. the target: its tokenizer is used everywhere; the teacher is frozen and never saved
    tokenizer = load_tokenizer(config.target)
    check_weights(config.target)
    teacher = AutoModelForCausalLM.from_pretrained(str(config.target), dtype=torch.float32).eval().requires_grad_(False)

    # 2. data: packed corpus text, plus target-generated continuations when the mixture uses them
    packed = build_packed_corpus(config.corpus, tokenizer, config.trainer.seq_len, config.val_fraction,
                                 config.trainer.seed, config.cache_dir)
    # 3. the student and the training module
    student = load_student(config, tokenizer, teacher)
    module = CausalLMTraining(student, config.optim, config.trainer.max_steps, loss=config.loss, teacher=teacher,
                              beta=config.beta, temperature=config.temperature, top_k=config.top_k,
                              data=config.data, seed=config.trainer.seed,
                              generate_prefixes=lambda step: prefixes(packed.train, config.data, config.trainer.seed, step))
    if config.data.target_generated > 0:
        module.buffers["target_generated"] = target_generated(config, packed.train, config.cache_dir)

    # 4. train (resuming an interrupted run) and export atomically
    trainer = build_trainer(out, config.trainer, config.logging, "distill", config.optim.grad_clip)
    write_run_record(out, config)
    trainer.fit(module, datamodule=PackedData(packed.train, packed.val, config.trainer), ckpt_path=resume_from(out))
    if trainer.is_global_zero:
        def write(tmp):
            student.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            if config.vocab_subset:
                write_vocab_subset(tmp, packed.train, student.config.vocab_size, config.vocab_subset)
        export_atomically(out / "draft", write)
        checksum = getattr(module, "ranks_checksum", None)
        write_run_record(out, config, {"ddp_ranks_identical": checksum is not None, "weights_checksum": checksum}
                         if checksum is not None else None)
        print(f"draft written to {out / 'draft'}")


if __name__ == "__main__":
    from drafttrain.cli import main as cli

    sys.exit(cli(["run", "distill", *sys.argv[1:]]))
