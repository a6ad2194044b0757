"""Tests for drafttrain.data.packing: order-free splits, token packing and the packed-corpus cache."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from drafttrain.data import packing
from drafttrain.data.corpus import CorpusConfig, Document
from drafttrain.data.packing import (
    build_packed_corpus,
    pack_sequences,
    split_documents,
    tokenize_documents,
)
from drafttrain.data.tokenizer import train_bpe_tokenizer
from drafttrain.errors import DrafttrainError

SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i)\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    main()\n",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(SNIPPETS * 5, vocab_size=320)


def make_documents(count: int) -> list[Document]:
    return [Document(f"doc{i:03d}.py", SNIPPETS[i % len(SNIPPETS)] * (1 + i % 3)) for i in range(count)]


def write_corpus(root: Path, count: int = 12) -> CorpusConfig:
    root.mkdir(parents=True, exist_ok=True)
    for document in make_documents(count):
        (root / document.id).write_text(document.text)
    return CorpusConfig(kind="dir", path=root)


# --------------------------------------------------------------------------------------------
# split_documents
# --------------------------------------------------------------------------------------------


def test_split_is_independent_of_document_order():
    documents = make_documents(60)
    train, val = split_documents(documents, 0.25, seed=3)
    shuffled = documents[:]
    random.Random(1).shuffle(shuffled)
    assert split_documents(shuffled, 0.25, seed=3) == (train, val)
    assert sorted(train + val, key=lambda d: d.id) == documents
    assert not {d.id for d in train} & {d.id for d in val}


def test_split_depends_on_seed_and_follows_fraction():
    documents = make_documents(1000)
    _, val0 = split_documents(documents, 0.2, seed=0)
    _, val1 = split_documents(documents, 0.2, seed=1)
    assert 150 <= len(val0) <= 250 and 150 <= len(val1) <= 250
    assert val0 != val1


@pytest.mark.parametrize(("count", "fraction"), [(2, 0.001), (3, 0.001), (2, 0.999), (5, 0.999)])
def test_split_never_leaves_a_side_empty(count, fraction):
    train, val = split_documents(make_documents(count), fraction)
    assert train and val and len(train) + len(val) == count


def test_split_single_document_goes_to_train():
    assert split_documents(make_documents(1), 0.5) == (make_documents(1), [])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(DrafttrainError, match=rf"val_fraction: {fraction} is outside \(0, 1\).*Fix"):
        split_documents(make_documents(4), fraction)


# --------------------------------------------------------------------------------------------
# tokenize_documents and pack_sequences
# --------------------------------------------------------------------------------------------


def test_tokenize_documents_appends_eos(tokenizer):
    documents = make_documents(3)
    token_lists = tokenize_documents(documents, tokenizer, eos_id=0)
    assert len(token_lists) == 3
    for document, tokens in zip(documents, token_lists):
        assert tokens[-1] == 0 and 0 not in tokens[:-1]
        assert tokens[:-1] == tokenizer(document.text).input_ids
        assert tokenizer.decode(tokens[:-1]) == document.text


@pytest.mark.parametrize(("lengths", "seq_len"), [([5, 7, 11], 4), ([20], 3), ([4, 5], 8), ([9], 8)])
def test_pack_covers_every_token_once_across_inputs_and_labels(lengths, seq_len):
    stream = list(range(1, sum(lengths) + 1))  # distinct tokens, so positions are traceable
    token_lists, start = [], 0
    for length in lengths:
        token_lists.append(stream[start:start + length])
        start += length
    rows = pack_sequences(token_lists, seq_len)
    num_rows = (len(stream) - 1) // seq_len
    assert rows.dtype == torch.long and rows.shape == (num_rows, seq_len + 1)
    inputs, labels = rows[:, :-1].reshape(-1).tolist(), rows[:, 1:].reshape(-1).tolist()
    covered = num_rows * seq_len
    assert inputs == stream[:covered]  # every input position exactly once, in order
    assert labels == stream[1:covered + 1]  # every label exactly once
    assert all(rows[i, -1] == rows[i + 1, 0] for i in range(num_rows - 1))  # rows overlap by one


def test_pack_errors_say_found_and_needed():
    with pytest.raises(DrafttrainError, match=r"corpus: found 5 tokens, need at least 9 .*seq_len 8.*Fix"):
        pack_sequences([[1, 2], [3, 4, 5]], 8)
    with pytest.raises(DrafttrainError, match=r"seq_len: 0 must be a positive number"):
        pack_sequences([[1, 2, 3]], 0)


# --------------------------------------------------------------------------------------------
# build_packed_corpus and its cache
# --------------------------------------------------------------------------------------------


def test_build_packed_corpus_shapes_and_meta(tmp_path, tokenizer):
    config = write_corpus(tmp_path / "corpus")
    corpus = build_packed_corpus(config, tokenizer, seq_len=16, val_fraction=0.25, seed=0, cache_dir=None)
    assert corpus.train.shape[1] == 17 and corpus.val.shape[1] == 17
    assert corpus.meta["train_documents"] + corpus.meta["val_documents"] == 12
    assert corpus.train.shape[0] == (corpus.meta["train_tokens"] - 1) // 16
    assert corpus.val.shape[0] == (corpus.meta["val_tokens"] - 1) // 16
    assert corpus.meta["from_cache"] is False and corpus.meta["eos_id"] == 0
    assert (corpus.train == 0).any()  # documents separated by eos


def test_build_packed_corpus_reuses_cache_without_tokenizing(tmp_path, tokenizer, monkeypatch):
    config = write_corpus(tmp_path / "corpus")
    cache_dir = tmp_path / "cache"
    first = build_packed_corpus(config, tokenizer, 16, 0.25, seed=0, cache_dir=cache_dir)
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temp file left behind

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenized although a cache exists")

    monkeypatch.setattr(packing, "tokenize_documents", fail)
    second = build_packed_corpus(config, tokenizer, 16, 0.25, seed=0, cache_dir=cache_dir)
    assert second.meta["from_cache"] is True and second.meta["cache_key"] == first.meta["cache_key"]
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    assert second.meta["train_tokens"] == first.meta["train_tokens"]


def test_cache_is_keyed_by_settings_and_data(tmp_path, tokenizer):
    config = write_corpus(tmp_path / "corpus")
    cache_dir = tmp_path / "cache"
    base = build_packed_corpus(config, tokenizer, 16, 0.25, 0, cache_dir)
    longer = build_packed_corpus(config, tokenizer, 20, 0.25, 0, cache_dir)
    assert longer.meta["from_cache"] is False and longer.train.shape[1] == 21
    reseeded = build_packed_corpus(config, tokenizer, 16, 0.25, 1, cache_dir)
    assert reseeded.meta["from_cache"] is False
    other_tokenizer = train_bpe_tokenizer(SNIPPETS, vocab_size=300)
    assert build_packed_corpus(config, other_tokenizer, 16, 0.25, 0, cache_dir).meta["from_cache"] is False
    (config.path / "doc000.py").write_text("changed = True\n" * 5)
    edited = build_packed_corpus(config, tokenizer, 16, 0.25, 0, cache_dir)
    assert edited.meta["from_cache"] is False and edited.meta["cache_key"] != base.meta["cache_key"]
    assert len(list(cache_dir.glob("*.safetensors"))) == 5
    assert build_packed_corpus(config, tokenizer, 16, 0.25, 0, cache_dir).meta["from_cache"] is True


def test_corrupt_cache_is_rebuilt(tmp_path, tokenizer):
    config = write_corpus(tmp_path / "corpus")
    first = build_packed_corpus(config, tokenizer, 16, 0.25, 0, tmp_path / "cache")
    Path(first.meta["cache_path"]).write_bytes(b"not a safetensors file")
    again = build_packed_corpus(config, tokenizer, 16, 0.25, 0, tmp_path / "cache")
    assert again.meta["from_cache"] is False and torch.equal(again.train, first.train)
    assert build_packed_corpus(config, tokenizer, 16, 0.25, 0, tmp_path / "cache").meta["from_cache"] is True


def test_build_packed_corpus_errors(tmp_path, tokenizer):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DrafttrainError, match=r"corpus: no documents found for kind 'dir'.*Fix"):
        build_packed_corpus(CorpusConfig(kind="dir", path=empty), tokenizer, 16, 0.25, 0, None)
    single = write_corpus(tmp_path / "single", count=1)
    with pytest.raises(DrafttrainError, match=r"only 1 document found.*needs at least 2"):
        build_packed_corpus(single, tokenizer, 16, 0.25, 0, None)
    small = write_corpus(tmp_path / "small", count=3)
    with pytest.raises(DrafttrainError, match=r"training split \(\d+ documents\): found \d+ tokens, need at "
                                              r"least 4097 .*Fix: add documents, lower seq_len"):
        build_packed_corpus(small, tokenizer, 4096, 0.25, 0, None)
    with pytest.raises(DrafttrainError, match=r"validation split \(1 documents\): found 2 tokens.*"
                                              r"raise val_fraction"):
        pack_sequences([[1, 0]], 4, what="validation split (1 documents)")
    tokenizer_without_eos = type("NoEos", (), {"eos_token_id": None, "get_vocab": lambda self: {}})()
    with pytest.raises(DrafttrainError, match=r"tokenizer: has no eos token"):
        build_packed_corpus(small, tokenizer_without_eos, 16, 0.25, 0, None)
