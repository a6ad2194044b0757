"""`drafttrain import-gguf`: a GGUF file made in the test becomes a checkpoint the runtime loads
with the same logits and tokenizer; bad input is a clear error and writes nothing."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tokenizer
from drafttrain.cli import main
from drafttrain.errors import DrafttrainError
from drafttrain.runtime import load_model, load_tokenizer
from drafttrain.runtime.gguf_import import import_gguf
from gguf_testkit import write_tiny_gguf

pytest.importorskip("gguf")
pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    make_tokenizer(root / "tokenizer")
    model = write_tiny_gguf(root / "tiny.gguf", root / "tokenizer")
    return root, model


def test_round_trip_keeps_logits_and_tokenizer(tiny_gguf, tmp_path):
    root, hf_model = tiny_gguf
    out = import_gguf(root / "tiny.gguf", tmp_path / "ckpt")
    model = load_model(out)
    ids = torch.tensor([1, 5, 7, 9, 11, 40])
    with torch.no_grad():
        expected = hf_model(ids[None]).logits[0]
        got = model(ids, torch.arange(len(ids)), model.new_cache(32), 0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    text = "def add(a, b):\n    return a + b\n"
    original = load_tokenizer(root / "tokenizer")
    assert load_tokenizer(out)(text).input_ids == original(text).input_ids
    assert "quantization_config" not in (out / "config.json").read_text()
    assert load_tokenizer(out).chat_template is not None


def test_cli_writes_the_directory(tiny_gguf, tmp_path, capsys):
    root, _ = tiny_gguf
    assert main(["import-gguf", str(root / "tiny.gguf"), "--out", str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert "--target" in capsys.readouterr().out
    assert main(["import-gguf", str(root / "tiny.gguf"), "--out", str(tmp_path / "ckpt")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_not_a_gguf_file(tmp_path, capsys):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 not gguf")
    assert main(["import-gguf", str(bogus), "--out", str(tmp_path / "out")]) == 2
    assert "is not a GGUF file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path):
    with pytest.raises(DrafttrainError, match="does not exist"):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "out")


def test_unsupported_architecture(tiny_gguf, tmp_path):
    root, _ = tiny_gguf
    path = tmp_path / "gpt2.gguf"
    write_tiny_gguf(path, root / "tokenizer", architecture="gpt2")
    with pytest.raises(DrafttrainError, match="architecture 'gpt2' is not one"):
        import_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [path]  # no staging directory left behind


def test_truncated_file(tiny_gguf, tmp_path):
    root, _ = tiny_gguf
    path = tmp_path / "cut.gguf"
    path.write_bytes((root / "tiny.gguf").read_bytes()[:64])
    with pytest.raises(DrafttrainError, match="damaged or truncated"):
        import_gguf(path, tmp_path / "out")


def test_missing_extra_says_what_to_install(tiny_gguf, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_accelerate(name, *args, **kwargs):
        if name == "accelerate":
            raise ImportError("No module named 'accelerate'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_accelerate)
    root, _ = tiny_gguf
    with pytest.raises(DrafttrainError, match=r"drafttrain\[gguf\]"):
        import_gguf(root / "tiny.gguf", tmp_path / "out")


def test_bad_dtype(tiny_gguf, tmp_path):
    root, _ = tiny_gguf
    with pytest.raises(DrafttrainError, match="float16"):
        import_gguf(root / "tiny.gguf", tmp_path / "out", dtype="float16")
