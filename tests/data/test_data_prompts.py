"""Tests for drafttrain.data.prompts: code/text prompt sets, context budgets and JSONL writing."""

from __future__ import annotations

import json
import re

import pytest

from drafttrain.data.corpus import CorpusConfig, Document, held_out_documents
from drafttrain.data.prompts import (
    build_prompt_set,
    code_cuts,
    documents_without,
    text_cuts,
    write_prompts,
)
from drafttrain.data.tokenizer import train_bpe_tokenizer
from drafttrain.errors import DrafttrainError
from drafttrain.evaluation.prompts import load_prompts

DEF_LINE = re.compile(r"^[ \t]*def [^\n]*:[ \t]*\r?\n\Z")


def code_document(index: int, functions: int = 3, filler: int = 0) -> Document:
    lines = [f"# module {index}\n", "import os\n"] + [f"value_{index}_{k} = {k} * 2\n" for k in range(filler)]
    for k in range(functions):
        lines += [f"def function_{index}_{k}(a, b={k}):\n", f"    return a + b * {k}\n", "\n"]
    lines += ["class Thing:\n", "    def method(self) -> int:  \n", "        return 1\n"]
    return Document(f"mod{index}.py", "".join(lines))


PROSE = ("The cat sat on the mat. It was warm! Was it happy? Nobody knew.\n"
         "A second paragraph starts here. It has two sentences.\nno boundary here\n")


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [code_document(i, filler=3).text for i in range(5)] + [PROSE] * 3
    return train_bpe_tokenizer(corpus, vocab_size=400)


def num_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text).input_ids)


def assert_cut_inside_source(prompt: dict, documents: dict[str, str]) -> tuple[str, int, int]:
    """The prompt is a slice text[start:cut] of its source, with text after it; returns (text, start, cut)."""
    text = documents[prompt["source"]]
    start = text.find(prompt["prompt"])
    assert start >= 0
    cut = start + len(prompt["prompt"])
    assert text[cut:].strip()
    return text, start, cut


# --------------------------------------------------------------------------------------------
# Code prompts
# --------------------------------------------------------------------------------------------


def test_code_prompts_end_after_a_def_line_and_start_at_a_line(tokenizer):
    documents = [code_document(i) for i in range(8)]
    by_id = {d.id: d.text for d in documents}
    prompts = build_prompt_set(documents, tokenizer, "code", num_prompts=6, context_tokens=200, seed=0)
    assert [p["id"] for p in prompts] == [f"p{i:03d}" for i in range(6)]
    assert len({p["source"] for p in prompts}) == 6  # at most one prompt per document
    for prompt in prompts:
        text, start, _ = assert_cut_inside_source(prompt, by_id)
        last_line = prompt["prompt"].splitlines(keepends=True)[-1]
        assert DEF_LINE.match(last_line), last_line
        assert start == 0 or text[start - 1] == "\n"
        assert num_tokens(tokenizer, prompt["prompt"]) <= 200


def test_code_prompts_respect_the_context_budget(tokenizer):
    documents = [code_document(i, functions=6, filler=40) for i in range(4)]
    by_id = {d.id: d.text for d in documents}
    for budget in (16, 40, 90):
        prompts = build_prompt_set(documents, tokenizer, "code", num_prompts=4, context_tokens=budget, seed=1)
        assert len(prompts) == 4
        for prompt in prompts:
            text, start, cut = assert_cut_inside_source(prompt, by_id)
            assert num_tokens(tokenizer, prompt["prompt"]) <= budget
            previous_line_start = text.rfind("\n", 0, start - 1) + 1 if start > 0 else None
            if previous_line_start is not None:  # the prompt keeps as much context as fits
                assert num_tokens(tokenizer, text[previous_line_start:cut]) > budget


def test_code_prompts_are_deterministic_per_seed(tokenizer):
    documents = [code_document(i) for i in range(10)]
    first = build_prompt_set(documents, tokenizer, "code", 5, 100, seed=4)
    assert build_prompt_set(documents, tokenizer, "code", 5, 100, seed=4) == first
    others = [build_prompt_set(documents, tokenizer, "code", 5, 100, seed=s) for s in range(5, 9)]
    assert any(other != first for other in others)


def test_more_prompts_than_documents_spreads_over_all_documents(tokenizer):
    documents = [code_document(i, functions=4) for i in range(3)]
    prompts = build_prompt_set(documents, tokenizer, "code", num_prompts=9, context_tokens=100)
    sources = [p["source"] for p in prompts]
    assert len(prompts) == 9 and len({p["prompt"] for p in prompts}) == 9
    assert sorted(sources[:3]) == ["mod0.py", "mod1.py", "mod2.py"]  # one per document per round
    assert all(sources.count(s) == 3 for s in set(sources))


def test_code_prompts_from_held_out_stdlib(tokenizer):
    documents = list(held_out_documents(CorpusConfig(exclude_packages=["json"])))
    prompts = build_prompt_set(documents, tokenizer, "code", num_prompts=3, context_tokens=64)
    assert len(prompts) == 3 and all(p["source"].startswith("json/") for p in prompts)
    assert all(num_tokens(tokenizer, p["prompt"]) <= 64 for p in prompts)


def test_documents_without_drops_every_document_a_prompt_was_cut_from(tokenizer):
    documents = list(held_out_documents(CorpusConfig(exclude_packages=["json"])))
    prompts = build_prompt_set(documents, tokenizer, "code", num_prompts=2, context_tokens=64)
    kept = documents_without(documents, [p["prompt"] for p in prompts])
    assert {d.id for d in kept} == {d.id for d in documents} - {p["source"] for p in prompts}
    assert [d.id for d in kept] == [d.id for d in documents if d in kept]  # order kept
    assert documents_without(documents, []) == documents
    assert documents_without(documents, [""]) == documents  # an empty prompt is cut from nothing


def test_code_cuts_find_only_single_line_defs():
    text = ("def a():\n    pass\n"
            "def multi(\n    x,\n):\n    pass\n"
            "    async def b():\n        pass\n"
            "  def c(self):  \n        pass\n"
            "define = 1\n"
            "def last():\n")
    assert [text[s:c] for s, c in code_cuts(text)] == ["def a():\n", "  def c(self):  \n"]


def test_too_few_prompts_warns(tokenizer):
    with pytest.warns(UserWarning, match="only 4 of 50 code prompts could be built from 1 documents"):
        prompts = build_prompt_set([code_document(0)], tokenizer, "code", 50, 100)
    assert len(prompts) == 4


def test_no_code_prompt_is_an_error(tokenizer):
    documents = [Document("a.py", "x = 1\ny = 2\n"), Document("b.py", "def tail():\n")]
    with pytest.raises(DrafttrainError, match=r"no code prompt could be built from 2 documents.*'def \.\.\.:'"
                                              r".*context_tokens=50.*Fix"):
        build_prompt_set(documents, tokenizer, "code", 3, 50)
    long_def = Document("c.py", "def f(" + ", ".join(f"argument_{i}" for i in range(40)) + "):\n    pass\n")
    with pytest.raises(DrafttrainError, match="must fit in context_tokens=8"):
        build_prompt_set([long_def], tokenizer, "code", 1, 8)


@pytest.mark.parametrize(("kind", "num_prompts", "context_tokens", "message"), [
    ("poetry", 1, 10, r"prompt kind 'poetry' is unknown.*'code' or 'text'"),
    ("code", 0, 10, r"num_prompts: 0 must be at least 1"),
    ("text", 1, 0, r"context_tokens: 0 must be at least 1"),
])
def test_bad_prompt_arguments(tokenizer, kind, num_prompts, context_tokens, message):
    with pytest.raises(DrafttrainError, match=message):
        build_prompt_set([code_document(0)], tokenizer, kind, num_prompts, context_tokens)


# --------------------------------------------------------------------------------------------
# Text prompts
# --------------------------------------------------------------------------------------------


def test_text_prompts_end_at_a_sentence_boundary(tokenizer):
    documents = [Document(f"t{i}", f"Story {i}. " + PROSE) for i in range(6)]
    by_id = {d.id: d.text for d in documents}
    prompts = build_prompt_set(documents, tokenizer, "text", num_prompts=12, context_tokens=25, seed=2)
    assert len(prompts) == 12
    for prompt in prompts:
        text, start, _ = assert_cut_inside_source(prompt, by_id)
        assert prompt["prompt"][-2:] in {". ", "! ", "? ", ".\n", "!\n", "?\n"}
        assert start == 0 or text[start - 2:start] in {". ", "! ", "? ", ".\n"}
        assert num_tokens(tokenizer, prompt["prompt"]) <= 25


def test_text_cuts():
    text = "One. Two!\nThree? Four.five.\nend"
    assert [text[s:c] for s, c in text_cuts(text)] == ["One. ", "Two!\n", "Three? ", "Four.five.\n"]
    assert text_cuts("No boundary at all.") == []


def test_no_text_prompt_is_an_error(tokenizer):
    with pytest.raises(DrafttrainError, match=r"no text prompt could be built from 1 documents.*sentence"):
        build_prompt_set([Document("x", "no sentence ends here\n")], tokenizer, "text", 2, 50)


# --------------------------------------------------------------------------------------------
# write_prompts
# --------------------------------------------------------------------------------------------


def test_written_prompts_load_with_the_evaluation_loader(tmp_path, tokenizer):
    unicode_document = Document("u.py", "# ünï 😀\ndef f():\n    return 'é'\n")
    documents = [code_document(i) for i in range(4)] + [unicode_document]
    prompts = build_prompt_set(documents, tokenizer, "code", 5, 100)
    path = write_prompts(prompts, tmp_path / "sets" / "code.jsonl")
    loaded = load_prompts(path)
    assert [(p.id, p.text) for p in loaded] == [(p["id"], p["prompt"]) for p in prompts]
    assert all(json.loads(line)["source"] for line in path.read_text().splitlines())
    assert [f.name for f in path.parent.iterdir()] == ["code.jsonl"]  # written atomically, no temp left


@pytest.mark.parametrize(("records", "message"), [
    ([], r"no prompts to write.*Fix"),
    ([{"id": "p0", "prompt": "a"}, {"id": "p0", "prompt": "b"}], r"prompt id 'p0' appears twice.*Fix"),
    ([{"id": "p0"}], r"prompt #0 is not a .*record.*Fix"),
    ([{"id": "p0", "prompt": 3}], r"prompt #0 is not a .*record"),
])
def test_write_prompts_rejects_bad_records(tmp_path, records, message):
    path = tmp_path / "bad.jsonl"
    with pytest.raises(DrafttrainError, match=message):
        write_prompts(records, path)
    assert not path.exists()
