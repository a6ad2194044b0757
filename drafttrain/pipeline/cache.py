"""Stage caching: a stage's outputs live in a directory named by a hash of its config and inputs.

A finished stage leaves `stage.json` (its key, inputs and seconds) in its directory, written
last. Running the pipeline again skips every stage whose key has a finished directory, so after a
config change only the changed stage and those downstream of it run again; an interrupted stage
runs again in the same directory, where its recipe resumes from its own checkpoints.

Downstream stages key on an upstream stage's *run* (`StageRecord.run`, the hash of its
`stage.json`), not on its key alone: a stage that runs again under the same key (its directory
was removed, or its marker, to redo it) writes a new `stage.json`, so everything after it runs
again too instead of reusing outputs made from the old run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drafttrain.config import config_to_dict
from drafttrain.io import write_atomically

MARKER = "stage.json"
# keys that only say where a stage writes or logs: they do not change what it computes
PLACE_KEYS = ("out", "logging", "wandb")


def stage_key(stage: str, config: Any, inputs: dict[str, Any]) -> str:
    """sha256 of the stage name, its resolved config (output paths left out) and its inputs' keys."""
    settings = {key: value for key, value in config_to_dict(config).items() if key not in PLACE_KEYS}
    document = json.dumps({"stage": stage, "config": settings, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(document.encode()).hexdigest()


@dataclass
class StageRecord:
    stage: str
    key: str
    dir: Path
    cached: bool
    seconds: float
    run: str  # sha256 of the stage.json that finished this run: what downstream stages key on


def stage_dir(root: Path, stage: str, key: str) -> Path:
    return root / stage / key[:16]


def run_cached(root: Path, stage: str, key: str, run: Callable[[Path], Any], inputs: dict | None = None
               ) -> StageRecord:
    """Run `run(dir)` unless the stage's directory for `key` holds a finished run."""
    directory = stage_dir(root, stage, key)
    marker = directory / MARKER
    if marker.is_file():
        text = marker.read_text()
        finished = json.loads(text)
        if finished.get("key") == key:
            return StageRecord(stage, key, directory, True, finished.get("seconds", 0.0), _sha256(text))
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run(directory)
    seconds = time.perf_counter() - started
    text = json.dumps({"stage": stage, "key": key, "inputs": inputs or {}, "seconds": seconds,
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1, default=str) + "\n"
    write_atomically(marker, text)
    return StageRecord(stage, key, directory, False, seconds, _sha256(text))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
