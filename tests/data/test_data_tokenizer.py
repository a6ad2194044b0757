"""Tests for drafttrain.data.tokenizer: byte-level BPE training, special tokens and saving."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from drafttrain.data.tokenizer import ENDOFTEXT, train_bpe_tokenizer
from drafttrain.errors import DrafttrainError

CODE = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n\tprint(i)  # count\n",
    "import os\n\nif __name__ == '__main__':\n    main()\n",
] * 10


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CODE, vocab_size=400)


@pytest.mark.parametrize("text", [
    CODE[1],
    "def f(x):\n    return  x  .  y  # spaced ,  out\n\n\n",
    "\tindented\twith tabs   and trailing   \n",
    "unicode: naïve café 😀 \u00a0 \x07 bell\n",  # bytes never seen in training
    "",
])
def test_round_trip_of_code_text(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text


def test_endoftext_is_id_zero_and_bos_eos_pad(tokenizer):
    assert tokenizer.convert_tokens_to_ids(ENDOFTEXT) == 0
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == ENDOFTEXT
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == tokenizer.pad_token_id == 0
    assert tokenizer(f"a{ENDOFTEXT}b").input_ids.count(0) == 1
    assert 0 not in tokenizer("def add(a, b):\n").input_ids  # no BOS/EOS added on encode


def test_vocab_size_at_most_requested_and_merges_learned(tokenizer):
    assert 257 < len(tokenizer) <= 400
    assert len(tokenizer("def add(a, b):\n    return a + b\n").input_ids) < 20  # merges shorten code
    small = train_bpe_tokenizer(["ab ab ab"], vocab_size=1000)
    assert 257 <= len(small) < 1000  # a tiny corpus cannot fill the vocabulary


def test_saved_tokenizer_reloads_identically(tmp_path):
    out_dir = tmp_path / "tok"
    trained = train_bpe_tokenizer(iter(CODE), vocab_size=350, out_dir=out_dir)
    assert (out_dir / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(str(out_dir))
    text = CODE[1] + "x = 'é'\n"
    assert loaded(text).input_ids == trained(text).input_ids
    assert loaded.decode(loaded(text).input_ids) == text
    assert loaded.eos_token_id == 0 and loaded.pad_token_id == 0


def test_vocab_size_too_small_is_an_error():
    with pytest.raises(DrafttrainError, match=r"vocab_size: 100 is too small.*Fix: use vocab_size >= 257"):
        train_bpe_tokenizer(CODE, vocab_size=100)
