"""Byte-level BPE tokenizers trained from scratch on a corpus, for small from-scratch models.

:func:`train_bpe_tokenizer` builds a GPT-2 style byte-level BPE (every byte string encodes and
decodes back exactly) whose single special token ``<|endoftext|>`` has id 0 and serves as
BOS, EOS and PAD, matching the tiny reference checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from drafttrain.errors import DrafttrainError

ENDOFTEXT = "<|endoftext|>"
BYTE_ALPHABET_SIZE = 256


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int,
                        out_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most `vocab_size` tokens on `texts`; save it to `out_dir` if given."""
    minimum = BYTE_ALPHABET_SIZE + 1
    if vocab_size < minimum:
        raise DrafttrainError(f"vocab_size: {vocab_size} is too small for a byte-level BPE "
                              f"(256 byte tokens + {ENDOFTEXT}). Fix: use vocab_size >= {minimum}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(iter(texts), trainer=trainer)
    fast = wrap_tokenizer(tokenizer)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast


def wrap_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around `tokenizer`, with <|endoftext|> as BOS, EOS and PAD."""
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT,
                                   pad_token=ENDOFTEXT, clean_up_tokenization_spaces=False)
