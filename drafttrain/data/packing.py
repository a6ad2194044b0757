"""Turn a corpus into packed training tensors: split, tokenize, concatenate and cut into rows.

Rows hold ``seq_len + 1`` tokens and consecutive rows share one token, so ``inputs = row[:-1]``
and ``labels = row[1:]`` predict every token of the packed stream exactly once. The
train/validation split is decided per document by a stable hash of (seed, document id), so
it does not depend on the order documents arrive in. :func:`build_packed_corpus` caches the
result as safetensors keyed by everything that affects it and reuses it on the next call.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from drafttrain.config import config_to_dict
from drafttrain.data.corpus import (
    CorpusConfig,
    Document,
    dir_files,
    iter_documents,
    stdlib_root,
)
from drafttrain.errors import DrafttrainError
from drafttrain.io import write_atomically

CACHE_FORMAT = "drafttrain-packed"
CACHE_VERSION = 1
_TOKENIZE_BATCH = 64


# --------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------


def split_documents(documents: Iterable[Document], val_fraction: float,
                    seed: int = 0) -> tuple[list[Document], list[Document]]:
    """(train, val): each document goes to val when its hash of (seed, id) falls under `val_fraction`.

    Both lists are sorted by id, so the result does not depend on the input order. With two or
    more documents neither side is left empty (the closest document is moved across).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DrafttrainError(f"val_fraction: {val_fraction} is outside (0, 1). "
                              "Fix: use a fraction such as 0.05.")
    scored = sorted(((_unit_hash(seed, doc.id), doc) for doc in documents), key=lambda pair: pair[0])
    cut = sum(1 for score, _ in scored if score < val_fraction)
    if len(scored) >= 2:
        cut = min(max(cut, 1), len(scored) - 1)
    val = sorted((doc for _, doc in scored[:cut]), key=lambda doc: doc.id)
    train = sorted((doc for _, doc in scored[cut:]), key=lambda doc: doc.id)
    return train, val


def _unit_hash(seed: int, document_id: str) -> float:
    """A stable pseudo-random number in [0, 1) for (seed, document id)."""
    digest = hashlib.sha256(f"{seed}\0{document_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


# --------------------------------------------------------------------------------------------
# Tokenize and pack
# --------------------------------------------------------------------------------------------


def tokenize_documents(documents: Iterable[Document], tokenizer: Any, eos_id: int) -> list[list[int]]:
    """Each document's token ids (no special tokens added) followed by `eos_id`."""
    documents = list(documents)
    token_lists: list[list[int]] = []
    for start in range(0, len(documents), _TOKENIZE_BATCH):
        texts = [doc.text for doc in documents[start:start + _TOKENIZE_BATCH]]
        token_lists.extend(ids + [eos_id] for ids in encode_texts(tokenizer, texts))
    return token_lists


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (uses the fast backend when there is one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast path, and no "sequence longer than model_max_length" warning
        return [list(encoding.ids) for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    return [list(tokenizer.encode(text, add_special_tokens=False)) for text in texts]


def pack_sequences(token_lists: Sequence[Sequence[int]], seq_len: int, what: str = "corpus") -> torch.Tensor:
    """All tokens concatenated and cut into [num_sequences, seq_len + 1] rows sharing one token.

    Row i holds stream[i * seq_len : i * seq_len + seq_len + 1]; the incomplete tail is dropped.
    """
    if seq_len < 1:
        raise DrafttrainError(f"seq_len: {seq_len} must be a positive number of tokens. Fix: use e.g. 256.")
    stream = torch.tensor([token for tokens in token_lists for token in tokens], dtype=torch.long)
    needed = seq_len + 1
    if stream.numel() < needed:
        raise DrafttrainError(f"{what}: found {stream.numel()} tokens, need at least {needed} for one "
                              f"row of seq_len {seq_len} + 1. Fix: add documents, lower seq_len"
                              f"{' or raise val_fraction' if what.startswith('validation') else ''}.")
    return stream.unfold(0, needed, seq_len).contiguous()


# --------------------------------------------------------------------------------------------
# Packed corpus with a cache
# --------------------------------------------------------------------------------------------


@dataclass
class PackedCorpus:
    """Packed train and validation rows ([n, seq_len + 1] int64) and how they were made."""

    train: torch.Tensor
    val: torch.Tensor
    meta: dict = field(default_factory=dict)


def build_packed_corpus(config: CorpusConfig, tokenizer: Any, seq_len: int, val_fraction: float,
                        seed: int = 0, cache_dir: Path | None = None) -> PackedCorpus:
    """Read, split, tokenize and pack `config`'s corpus, reusing a cached result in `cache_dir`."""
    key = cache_key(config, tokenizer, seq_len, val_fraction, seed)
    cache_path = Path(cache_dir) / f"packed-{key[:24]}.safetensors" if cache_dir is not None else None
    if cache_path is not None and cache_path.is_file():
        cached = _load_cache(cache_path, key)
        if cached is not None:
            return cached
    corpus = _pack_corpus(config, tokenizer, seq_len, val_fraction, seed)
    corpus.meta["cache_key"] = key
    if cache_path is not None:
        _save_cache(corpus, cache_path)
        corpus.meta["cache_path"] = str(cache_path)
    return corpus


def _pack_corpus(config: CorpusConfig, tokenizer: Any, seq_len: int, val_fraction: float,
                 seed: int) -> PackedCorpus:
    eos_id = _eos_id(tokenizer)
    documents = list(iter_documents(config))
    if not documents:
        raise DrafttrainError(f"corpus: no documents found for {_describe(config)}. "
                              "Fix: check corpus.path, corpus.include and corpus.exclude.")
    train_docs, val_docs = split_documents(documents, val_fraction, seed)
    if not val_docs:
        raise DrafttrainError(f"corpus: only {len(documents)} document found, a train/validation split "
                              "needs at least 2. Fix: add documents or raise corpus.max_documents.")
    train_tokens = tokenize_documents(train_docs, tokenizer, eos_id)
    val_tokens = tokenize_documents(val_docs, tokenizer, eos_id)
    train = pack_sequences(train_tokens, seq_len, what=f"training split ({len(train_docs)} documents)")
    val = pack_sequences(val_tokens, seq_len, what=f"validation split ({len(val_docs)} documents)")
    meta = {"seq_len": seq_len, "val_fraction": val_fraction, "seed": seed, "eos_id": eos_id,
            "train_documents": len(train_docs), "val_documents": len(val_docs),
            "train_tokens": sum(map(len, train_tokens)), "val_tokens": sum(map(len, val_tokens)),
            "from_cache": False}
    return PackedCorpus(train, val, meta)


def _eos_id(tokenizer: Any) -> int:
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise DrafttrainError("tokenizer: has no eos token, needed to separate documents. "
                              "Fix: use a tokenizer with eos_token set "
                              "(train_bpe_tokenizer sets <|endoftext|>).")
    return int(eos_id)


def _describe(config: CorpusConfig) -> str:
    return f"kind {config.kind!r}" + (f" at {config.path}" if config.path is not None else "")


def cache_key(config: CorpusConfig, tokenizer: Any, seq_len: int, val_fraction: float, seed: int) -> str:
    """sha256 hex of everything the packed tensors depend on (config, data, tokenizer, shapes)."""
    payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "corpus": config_to_dict(config),
               "data": corpus_fingerprint(config), "tokenizer": tokenizer_hash(tokenizer),
               "seq_len": seq_len, "val_fraction": val_fraction, "seed": seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 hex of the tokenizer's full definition (vocab, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    text += f"\0eos={getattr(tokenizer, 'eos_token_id', None)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def corpus_fingerprint(config: CorpusConfig) -> list:
    """What identifies the corpus's current content cheaply: file names, sizes and mtimes."""
    if config.kind == "stdlib":
        return [str(stdlib_root(config)), sys.version]
    path = Path(config.path)
    if config.kind == "jsonl":
        return [_stat_entry(path, path)] if path.is_file() else [str(path)]
    return [_stat_entry(p, path) for p in dir_files(config)]


def _stat_entry(path: Path, root: Path) -> list:
    stat = path.stat()
    name = path.name if path == root else path.relative_to(root).as_posix()
    return [name, stat.st_size, stat.st_mtime_ns]


def _save_cache(corpus: PackedCorpus, path: Path) -> None:
    """Write both tensors and the meta to `path` atomically (temp file + os.replace)."""
    data = save({"train": corpus.train, "val": corpus.val},
                metadata={"format": CACHE_FORMAT, "meta": json.dumps(corpus.meta, sort_keys=True)})
    write_atomically(path, data)


def _load_cache(path: Path, key: str) -> PackedCorpus | None:
    """The cached corpus at `path`, or None when it is unreadable or for another key."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        meta = json.loads(metadata.get("meta", "{}"))
        if metadata.get("format") != CACHE_FORMAT or meta.get("cache_key") != key:
            return None
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None
    meta.update(from_cache=True, cache_path=str(path))
    return PackedCorpus(tensors["train"], tensors["val"], meta)
