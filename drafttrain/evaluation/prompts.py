"""Prompt sets: JSONL files with one {"id": ..., "prompt": ...} object per line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from drafttrain.errors import DrafttrainError


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


def load_prompts(path: str | Path, limit: int = 0) -> list[Prompt]:
    """Every prompt of the file (or the first `limit`), checking each line's shape."""
    path = Path(path)
    if not path.is_file():
        raise DrafttrainError(f"prompt file {path} does not exist")
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DrafttrainError(f"{where}: not valid JSON ({err})") from err
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or "id" not in record:
            raise DrafttrainError(f'{where}: expected an object {{"id": ..., "prompt": "..."}}')
        if str(record["id"]) in seen:
            raise DrafttrainError(f"{where}: id {record['id']!r} appears twice; ids must be unique")
        seen.add(str(record["id"]))
        prompts.append(Prompt(str(record["id"]), record["prompt"]))
    if not prompts:
        raise DrafttrainError(f"prompt file {path} holds no prompts")
    return prompts[:limit] if limit > 0 else prompts
