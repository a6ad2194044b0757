"""Evaluation prompt sets cut from documents: code prompts end after a `def` line, text at a sentence.

:func:`build_prompt_set` picks cut points deterministically (given a seed), at most one per
document while documents last, and keeps up to ``context_tokens`` tokens of the document before
each cut (starting at a line start for code, a sentence start for text). :func:`write_prompts`
writes the JSONL format read by :func:`drafttrain.evaluation.prompts.load_prompts`.
"""

from __future__ import annotations

import bisect
import json
import random
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from drafttrain.data.corpus import Document
from drafttrain.data.packing import encode_texts
from drafttrain.errors import DrafttrainError
from drafttrain.io import write_atomically

PromptKind = Literal["code", "text"]

_DEF_LINE = re.compile(r"^[ \t]*def [^\n]*:[ \t]*\r?\n", re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?][ \n]")
_LINE_START = re.compile(r"^", re.MULTILINE)

# (text) -> sorted (minimal prompt start, cut) pairs; the prompt is text[start:cut] or longer.
_CutFinder = Callable[[str], list[tuple[int, int]]]


def build_prompt_set(documents: Iterable[Document], tokenizer: Any, kind: PromptKind, num_prompts: int,
                     context_tokens: int, seed: int = 0) -> list[dict]:
    """Up to `num_prompts` records {"id", "prompt", "source"} of at most `context_tokens` tokens each."""
    _check_prompt_args(kind, num_prompts, context_tokens)
    documents = list(documents)
    rng = random.Random(seed)
    order = list(range(len(documents)))
    rng.shuffle(order)
    finder, starts_of = _CUT_FINDERS[kind]
    queues = [(documents[i], _shuffled(finder(documents[i].text), rng)) for i in order]
    fitter = _ContextFitter(tokenizer, context_tokens)
    prompts = _round_robin(queues, fitter, starts_of, num_prompts)
    if not prompts:
        raise DrafttrainError(_nothing_built_message(kind, len(documents), context_tokens))
    if len(prompts) < num_prompts:
        warnings.warn(f"only {len(prompts)} of {num_prompts} {kind} prompts could be built from "
                      f"{len(documents)} documents", stacklevel=2)
    width = max(3, len(str(len(prompts) - 1)))
    return [{"id": f"p{i:0{width}d}", "prompt": text, "source": source}
            for i, (source, text) in enumerate(prompts)]


def _check_prompt_args(kind: str, num_prompts: int, context_tokens: int) -> None:
    if kind not in _CUT_FINDERS:
        raise DrafttrainError(f"prompt kind {kind!r} is unknown. Fix: use 'code' or 'text'.")
    if num_prompts < 1:
        raise DrafttrainError(f"num_prompts: {num_prompts} must be at least 1. Fix: ask for e.g. 64 prompts.")
    if context_tokens < 1:
        raise DrafttrainError(f"context_tokens: {context_tokens} must be at least 1. Fix: use e.g. 256.")


def _nothing_built_message(kind: str, num_documents: int, context_tokens: int) -> str:
    need = ("a line 'def ...:' followed by more code" if kind == "code"
            else "a sentence ending in '. ', '! ', '? ' (or before a newline) followed by more text")
    return (f"no {kind} prompt could be built from {num_documents} documents: each prompt needs {need}, "
            f"and the {'def line' if kind == 'code' else 'sentence'} before the cut must fit in "
            f"context_tokens={context_tokens}. Fix: use documents of that kind, or raise context_tokens.")


def _shuffled(items: list, rng: random.Random) -> list:
    items = list(items)
    rng.shuffle(items)
    return items


def _round_robin(queues: list[tuple[Document, list[tuple[int, int]]]], fitter: _ContextFitter,
                 starts_of: Callable[[str], list[int]], num_prompts: int) -> list[tuple[str, str]]:
    """(document id, prompt text) pairs: one per document per round until `num_prompts` or exhausted."""
    prompts: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(prompts) < num_prompts and any(cuts for _, cuts in queues):
        for document, cuts in queues:
            prompt = _next_prompt(document.text, cuts, fitter, starts_of, seen)
            if prompt is not None:
                seen.add(prompt)
                prompts.append((document.id, prompt))
                if len(prompts) == num_prompts:
                    break
    return prompts


def _next_prompt(text: str, cuts: list[tuple[int, int]], fitter: _ContextFitter,
                 starts_of: Callable[[str], list[int]], seen: set[str]) -> str | None:
    """Pop cuts until one gives a new prompt within the budget; None if the document has none left."""
    starts: list[int] | None = None
    while cuts:
        minimal_start, cut = cuts.pop()
        if starts is None:
            starts = starts_of(text)
        candidates = starts[: bisect.bisect_right(starts, minimal_start)]
        start = fitter.earliest_start(text, candidates, cut)
        if start is not None and text[start:cut] not in seen:
            return text[start:cut]
    return None


# --------------------------------------------------------------------------------------------
# Cut points
# --------------------------------------------------------------------------------------------


def code_cuts(text: str) -> list[tuple[int, int]]:
    """(def line start, end of the def line incl. newline) for every one-line `def ...:` with code after."""
    return [(m.start(), m.end()) for m in _DEF_LINE.finditer(text) if text[m.end():].strip()]


def text_cuts(text: str) -> list[tuple[int, int]]:
    """(sentence start, cut after '. ' / '! ' / '? ' / '.\\n'...) for every sentence with text after."""
    cuts = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if text[match.end():].strip() and text[start:match.end()].strip():
            cuts.append((start, match.end()))
        start = match.end()
    return cuts


def line_starts(text: str) -> list[int]:
    """Offsets where lines begin (0 and after each newline)."""
    return [m.start() for m in _LINE_START.finditer(text)]


def sentence_starts(text: str) -> list[int]:
    """Offsets where sentences may begin (0 and after each sentence end)."""
    return [0] + [m.end() for m in _SENTENCE_END.finditer(text)]


_CUT_FINDERS: dict[str, tuple[_CutFinder, Callable[[str], list[int]]]] = {
    "code": (code_cuts, line_starts),
    "text": (text_cuts, sentence_starts),
}


class _ContextFitter:
    """Finds the earliest allowed start whose text up to the cut fits in the token budget."""

    def __init__(self, tokenizer: Any, context_tokens: int):
        self.tokenizer = tokenizer
        self.context_tokens = context_tokens
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
        self.max_chars = context_tokens * max(longest, 1)  # a span longer than this cannot fit

    def fits(self, text: str) -> bool:
        return len(encode_texts(self.tokenizer, [text])[0]) <= self.context_tokens

    def earliest_start(self, text: str, starts: Sequence[int], cut: int) -> int | None:
        """Binary search over `starts` (ascending, last = minimal prompt); only measured fits are returned."""
        if not starts or not self.fits(text[starts[-1]:cut]):
            return None
        low = bisect.bisect_left(starts, cut - self.max_chars)
        high = len(starts) - 1  # invariant: starts[high] fits
        while low < high:
            middle = (low + high) // 2
            if self.fits(text[starts[middle]:cut]):
                high = middle
            else:
                low = middle + 1
        return starts[high]


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def documents_without(documents: Iterable[Document], prompts: Iterable[str]) -> list[Document]:
    """The documents that none of `prompts` was cut from (a prompt is a contiguous slice of its
    document), in their order: held-out text for calibration prompts that is disjoint from the
    evaluation prompts' sources."""
    cut_from = [prompt for prompt in prompts if prompt]
    return [document for document in documents if not any(prompt in document.text for prompt in cut_from)]


def write_prompts(prompts: Sequence[dict], path: str | Path) -> Path:
    """Write `prompts` as JSONL (one {"id", "prompt", ...} per line) atomically; returns the path."""
    path = Path(path)
    _check_prompt_records(prompts, path)
    lines = "".join(json.dumps(record, ensure_ascii=True) + "\n" for record in prompts)
    return write_atomically(path, lines)


def _check_prompt_records(prompts: Sequence[dict], path: Path) -> None:
    if not prompts:
        raise DrafttrainError(f"{path}: no prompts to write. Fix: build at least one prompt first.")
    seen: set[str] = set()
    for index, record in enumerate(prompts):
        if not isinstance(record, dict) or "id" not in record or not isinstance(record.get("prompt"), str):
            raise DrafttrainError(f"{path}: prompt #{index} is not a {{'id': ..., 'prompt': str}} record "
                                  f"(got {record!r:.80}). Fix: pass records from build_prompt_set.")
        if str(record["id"]) in seen:
            raise DrafttrainError(f"{path}: prompt id {record['id']!r} appears twice. "
                                  "Fix: give every prompt a unique id.")
        seen.add(str(record["id"]))
