"""Pretrain a Llama-architecture target from scratch (for demos, tests and GPU benchmarks).

    drafttrain run pretrain --config configs/tiny/pretrain.yaml [key=value ...]

Reads a corpus, trains (or reuses) a byte-level BPE tokenizer, packs the text, trains with
Lightning (bf16 autocast, AdamW, warm-up + cosine, clipping, periodic checkpoints, exact resume,
validation loss), and writes an HF checkpoint directory that `transformers` and drafttrain's
runtime both load, with the resolved config and library versions beside it.
"""

from __future__ import annotations

import sys

import lightning as L
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from drafttrain.data import (build_packed_corpus, build_prompt_set, held_out_documents, iter_documents,
                            split_documents, train_bpe_tokenizer, write_prompts)
from drafttrain.training.config import PretrainConfig
from drafttrain.training.module import CausalLMTraining
from drafttrain.training.run import PackedData, build_trainer, export_atomically, resume_from, write_run_record

CONFIG = PretrainConfig


def new_llama(shape, vocab_size: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, max_position_embeddings=shape.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta}, rms_norm_eps=1e-6,
        tie_word_embeddings=shape.tie_word_embeddings, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config)


def main(config: PretrainConfig) -> None:
    out = config.out
    L.seed_everything(config.trainer.seed, workers=True)
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)

    # 1. tokenizer: the given one, or a byte-level BPE trained on the corpus (kept in the run dir)
    if config.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(config.tokenizer))
    elif (out / "tokenizer" / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    else:
        texts = (doc.text for doc in iter_documents(config.corpus))
        tokenizer = train_bpe_tokenizer(texts, config.vocab_size, out / "tokenizer")

    # 2. data: packed, split by document, cached by a hash of everything that shapes it
    packed = build_packed_corpus(config.corpus, tokenizer, config.trainer.seq_len, config.val_fraction,
                                 config.trainer.seed, config.cache_dir)

    # 3. model and training (resumes from the last checkpoint of an interrupted run)
    model = new_llama(config.model, len(tokenizer))
    module = CausalLMTraining(model, config.optim, config.trainer.max_steps, loss="ce", seed=config.trainer.seed)
    trainer = build_trainer(out, config.trainer, config.logging, "pretrain", config.optim.grad_clip)
    write_run_record(out, config)
    trainer.fit(module, datamodule=PackedData(packed.train, packed.val, config.trainer), ckpt_path=resume_from(out))

    # 4. the HF checkpoint directory, written atomically, and evaluation prompts from held-out text
    if trainer.is_global_zero:
        def write(tmp):
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        export_atomically(out / "model", write)
        print(f"target written to {out / 'model'}")
        if config.prompts > 0:
            write_prompts(build_prompt_set(evaluation_documents(config), tokenizer, "code" if config.corpus.kind
                                           != "jsonl" else "text", config.prompts, config.prompt_context_tokens,
                                           config.trainer.seed), out / "prompts.jsonl")
            print(f"evaluation prompts written to {out / 'prompts.jsonl'}")


def evaluation_documents(config: PretrainConfig):
    """Text the model never trained on: the held-out stdlib packages, else the validation split."""
    if config.corpus.kind == "stdlib" and config.corpus.exclude_packages:
        return list(held_out_documents(config.corpus))
    return split_documents(list(iter_documents(config.corpus)), config.val_fraction, config.trainer.seed)[1]


if __name__ == "__main__":
    from drafttrain.cli import main as cli

    sys.exit(cli(["run", "pretrain", *sys.argv[1:]]))
