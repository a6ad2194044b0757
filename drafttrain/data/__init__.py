"""Data for the training recipes: corpora, BPE tokenizers, packed training tensors, prompt sets."""

from drafttrain.data.corpus import (
    DEFAULT_EXCLUDED_PACKAGES,
    CorpusConfig,
    Document,
    held_out_documents,
    iter_documents,
    stdlib_root,
)
from drafttrain.data.packing import (
    PackedCorpus,
    build_packed_corpus,
    cache_key,
    pack_sequences,
    split_documents,
    tokenize_documents,
)
from drafttrain.data.prompts import build_prompt_set, documents_without, write_prompts
from drafttrain.data.tokenizer import ENDOFTEXT, train_bpe_tokenizer

__all__ = [
    "DEFAULT_EXCLUDED_PACKAGES",
    "ENDOFTEXT",
    "CorpusConfig",
    "Document",
    "PackedCorpus",
    "build_packed_corpus",
    "build_prompt_set",
    "cache_key",
    "documents_without",
    "held_out_documents",
    "iter_documents",
    "pack_sequences",
    "split_documents",
    "stdlib_root",
    "tokenize_documents",
    "train_bpe_tokenizer",
    "write_prompts",
]
