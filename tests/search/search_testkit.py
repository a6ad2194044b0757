"""Helpers shared by the self-draft search tests: a calibration prompt file and a small config."""

from __future__ import annotations

import json
from pathlib import Path

from drafttrain.search.config import SearchConfig

CALIBRATION = [
    "def add(a, b):\n    return",
    "for i in range(10):\n",
    "class Point:\n    def __init__(self, x, y):\n",
]


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": text}) + "\n"
                            for i, text in enumerate(CALIBRATION)))
    return path


def tiny_config(target: Path, tmp_path: Path, **overrides) -> SearchConfig:
    """A search over the 3-layer tiny target that runs a trial in a few milliseconds."""
    settings = dict(target=target, prompts=write_prompts(tmp_path / "calibration.jsonl"), out=tmp_path / "out",
                    trials=4, keep_first_last=False, num_prompts=2, max_new_tokens=6, calibration_tokens=48,
                    levels=2, heartbeat_seconds=5, threads=1)
    settings.update(overrides)
    return SearchConfig(**settings)
