"""`drafttrain generate`: stream text from a target through the scheduler of a verified bundle.

Text is printed as each decode step commits its tokens. A byte-level tokenizer may split one
character over several tokens, so the printed text holds back a trailing incomplete character
until the next step completes it.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

import torch

from drafttrain.bundle.config import GenerateConfig
from drafttrain.bundle.load import load_bundle
from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.evaluation.methods import DTYPES


class TextStream:
    """Decodes the growing token list and writes only the new, complete text."""

    def __init__(self, tokenizer, out: TextIO) -> None:
        self.tokenizer, self.out = tokenizer, out
        self.tokens: list[int] = []
        self.written = 0

    def __call__(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)
        text = self.tokenizer.decode(self.tokens)
        stable = len(text.rstrip("\ufffd"))  # an incomplete UTF-8 sequence decodes to U+FFFD
        if stable > self.written:
            self.out.write(text[self.written:stable])
            self.out.flush()
            self.written = stable

    def finish(self) -> str:
        text = self.tokenizer.decode(self.tokens)
        self.out.write(text[self.written:] + "\n")
        self.out.flush()
        return text


def generate(config: GenerateConfig, out: TextIO | None = None, err: TextIO | None = None) -> list[dict]:
    """Generate for every prompt of `config`, streaming to `out` (stdout; stats to `err`, stderr);
    returns one record per prompt."""
    from drafttrain.evaluation.prompts import Prompt, load_prompts
    from drafttrain.runtime import load_model, load_tokenizer
    from drafttrain.runtime.loader import eos_token_ids

    config.require_inputs()
    out, err = out or sys.stdout, err or sys.stderr
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    dtype, device = DTYPES[config.dtype], torch.device(config.device)
    bundle = load_bundle(config.bundle, config.target, device, dtype, warn=False)
    for message in bundle.warnings:
        print(f"warning: {message}", file=err)
    bundle.check_sampling(SamplingParams(config.temperature, config.top_k, config.top_p))
    tokenizer = load_tokenizer(config.target)
    decoder = SpeculativeDecoder(load_model(config.target, dtype, device), tokenizer)
    scheduler = bundle.build_scheduler(decoder, dtype, device)
    prompts = [Prompt("prompt", config.prompt)] if config.prompt is not None else \
        load_prompts(config.prompts, tokenizer=tokenizer)
    sampling = SamplingParams(config.temperature, config.top_k, config.top_p)
    records = []
    for index, prompt in enumerate(prompts):
        generation = GenerationConfig(config.max_new_tokens, sampling, scheduler.shape,
                                      eos_token_ids(config.target, tokenizer), seed=config.seed + index)
        if config.prompts is not None:
            out.write(f"==> {prompt.id} <==\n")
        stream = TextStream(tokenizer, out)
        result = decoder.generate(prompt.token_ids(tokenizer), scheduler.drafter, generation, on_tokens=stream)
        records.append({"id": prompt.id, "prompt": prompt.text, "completion": stream.finish(), "tokens": result.tokens})
        if config.stats:
            stats = result.stats
            print(f"[{prompt.id}] {stats.new_tokens} tokens in {stats.total_seconds:.2f} s "
                  f"({stats.new_tokens / max(stats.total_seconds, 1e-9):.1f} tokens/s), "
                  f"{stats.mean_accepted_tokens:.2f} tokens per target forward, scheduler {bundle.scheduler.name}",
                  file=err)
    if config.out is not None:
        from drafttrain.io import write_atomically

        write_atomically(config.out, "".join(json.dumps(record) + "\n" for record in records))
    return records
