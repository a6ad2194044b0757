"""Prompt sets: JSONL files with one object per line, a plain prompt or a chat.

A line is `{"id": ..., "prompt": "..."}` (text the model continues) or `{"id": ..., "messages":
[{"role": "user", "content": "..."}, ...]}` (a chat, rendered with the tokenizer's chat template and
its generation prompt, so the model answers as the assistant). Every method, the transformers peers
included, decodes from the same token ids: `Prompt.token_ids`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drafttrain.errors import DrafttrainError


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    chat: bool = False  # rendered from messages: the template wrote its special tokens already

    def token_ids(self, tokenizer: Any) -> list[int]:
        """The ids every method decodes from (a rendered chat gets no second BOS)."""
        return tokenizer(self.text, add_special_tokens=not self.chat).input_ids


def render_chat(messages: Any, tokenizer: Any, where: str) -> str:
    """The chat `messages` as text through the tokenizer's template, with the generation prompt."""
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise DrafttrainError(f'{where}: "messages" must be a non-empty list of {{"role": "...", '
                              '"content": "..."}} objects')
    if tokenizer is None:
        raise DrafttrainError(f"{where}: a chat prompt needs the target's tokenizer to be rendered")
    if not getattr(tokenizer, "chat_template", None):
        raise DrafttrainError(f"{where}: the prompt is a chat (messages), but the target's tokenizer has no "
                              "chat template. Fix: use plain {\"id\", \"prompt\"} rows for this model, or a "
                              "checkpoint whose tokenizer_config.json or chat_template.jinja has a template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _parse_line(line: str, where: str, tokenizer: Any) -> Prompt:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DrafttrainError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(record, dict) or "id" not in record:
        raise DrafttrainError(f'{where}: expected an object {{"id": ..., "prompt": "..."}} or '
                              '{"id": ..., "messages": [...]}')
    if isinstance(record.get("prompt"), str):
        return Prompt(str(record["id"]), record["prompt"])
    if "messages" in record:
        return Prompt(str(record["id"]), render_chat(record["messages"], tokenizer, where), chat=True)
    raise DrafttrainError(f'{where}: the row has neither "prompt" (a string) nor "messages" (a chat); '
                          'give one of them')


def load_prompts(path: str | Path, limit: int = 0, tokenizer: Any = None) -> list[Prompt]:
    """Every prompt of the file (or the first `limit`), checking each line's shape; chat rows are
    rendered with `tokenizer`'s chat template."""
    path = Path(path)
    if not path.is_file():
        raise DrafttrainError(f"prompt file {path} does not exist")
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        prompt = _parse_line(line, f"{path}:{number}", tokenizer)
        if prompt.id in seen:
            raise DrafttrainError(f"{path}:{number}: id {prompt.id!r} appears twice; ids must be unique")
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise DrafttrainError(f"prompt file {path} holds no prompts")
    return prompts[:limit] if limit > 0 else prompts
