"""Prompt files: plain and chat rows, rendering through the chat template, and the errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from drafttrain.cli import main
from drafttrain.errors import DrafttrainError
from drafttrain.evaluation.prompts import load_prompts
from drafttrain.runtime import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")
CHAT = [{"role": "user", "content": "Write a function that adds two numbers."}]


@pytest.fixture(scope="module")
def chat_target(tmp_path_factory, tiny_target) -> Path:
    """The tiny target with a chat template in its tokenizer config."""
    path = tmp_path_factory.mktemp("chat") / "target"
    shutil.copytree(tiny_target, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return path


def _write(path: Path, *rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_chat_rows_render_with_the_template_and_generation_prompt(tmp_path, chat_target):
    tokenizer = load_tokenizer(chat_target)
    path = _write(tmp_path / "p.jsonl", {"id": "plain", "prompt": "def f():\n"}, {"id": "chat", "messages": CHAT})
    plain, chat = load_prompts(path, tokenizer=tokenizer)
    assert not plain.chat and plain.text == "def f():\n"
    assert chat.chat and chat.text == ("<|endoftext|>user\nWrite a function that adds two numbers.\n"
                                       "<|endoftext|>assistant\n")
    assert chat.token_ids(tokenizer) == tokenizer.apply_chat_template(CHAT, add_generation_prompt=True,
                                                                      tokenize=True, return_dict=False)


@pytest.mark.parametrize("row,message", [
    ({"id": "a"}, 'neither "prompt"'),
    ({"id": "a", "prompt": 3}, 'neither "prompt"'),
    ({"id": "a", "messages": []}, '"messages" must be a non-empty list'),
    ({"id": "a", "messages": [{"role": "user"}]}, '"messages" must be a non-empty list'),
    ({"prompt": "x"}, 'expected an object'),
])
def test_bad_rows_name_file_and_line(tmp_path, chat_target, row, message):
    path = _write(tmp_path / "p.jsonl", {"id": "ok", "prompt": "x"}, row)
    with pytest.raises(DrafttrainError, match=message) as error:
        load_prompts(path, tokenizer=load_tokenizer(chat_target))
    assert f"{path}:2" in str(error.value)


def test_messages_for_a_tokenizer_without_template(tmp_path, tiny_target):
    path = _write(tmp_path / "p.jsonl", {"id": "chat", "messages": CHAT})
    with pytest.raises(DrafttrainError, match="has no chat template") as error:
        load_prompts(path, tokenizer=load_tokenizer(tiny_target))
    assert f"{path}:1" in str(error.value)


def test_eval_decodes_chat_prompts_for_every_method(tmp_path, chat_target):
    path = _write(tmp_path / "p.jsonl", {"id": "chat", "messages": CHAT}, {"id": "code", "prompt": "def f():\n"})
    out = tmp_path / "out"
    assert main(["eval", "--config", str(REPO / "configs/tiny/eval.yaml"), "--target", str(chat_target),
                 "--prompts", str(path), "--methods", "ar,hf,sd-ngram", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["methods"]["hf"]["lossless"] and report["methods"]["sd-ngram"]["lossless"]


def test_eval_of_chat_prompts_without_template_exits_2(tmp_path, tiny_target, capsys):
    path = _write(tmp_path / "p.jsonl", {"id": "chat", "messages": CHAT})
    assert main(["eval", "--target", str(tiny_target), "--prompts", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "has no chat template" in capsys.readouterr().err


def test_shipped_chat_prompt_set_loads(chat_target):
    path = REPO / "configs" / "smollm2" / "prompts-chat.jsonl"
    prompts = load_prompts(path, tokenizer=load_tokenizer(chat_target))
    assert len(prompts) >= 40 and all(prompt.chat for prompt in prompts)
