"""`manifest.json`: what a bundle holds, for which target, and the sha256 of every file in it.

The manifest is written last and read first. Its `schema_version` says which layout the bundle
uses: a reader refuses a newer schema than it knows, with the advice to upgrade drafttrain.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from drafttrain import __version__
from drafttrain.errors import DrafttrainError

FORMAT = "drafttrain-cascade-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# the bundle's layout: paths relative to its root
DRAFTS = "drafts"  # drafts/draft0/{config.json, model.safetensors, tokenizer files}
LEVELS = "levels.json"
NGRAM = "ngram"  # ngram/bigram.safetensors (optional)
PREDICTORS = "predictors.json"
LATENCY = "latency.json"
SCHEDULER = "scheduler.json"


def build_manifest(files: dict[str, str], target: dict, levels: dict[str, str], scheduler: str,
                   fingerprint: dict | None) -> dict:
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "drafttrain_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "target": target,
            "levels": levels, "scheduler": scheduler, "latency_fingerprint": fingerprint, "files": files}


def read_manifest(root: Path) -> dict:
    """The validated manifest of the bundle at `root` (schema checked before anything else)."""
    path = root / MANIFEST
    if not path.is_file():
        raise DrafttrainError(f"{root} is not a cascade bundle: {MANIFEST} is missing. Fix: give the directory "
                              "(or .tar.gz) that `drafttrain export` wrote")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DrafttrainError(f"{path}: not valid JSON ({err}); the bundle is damaged: export it again") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DrafttrainError(f"{path}: format is not {FORMAT!r}; this is not a drafttrain cascade bundle")
    _check_schema(manifest.get("schema_version"), manifest.get("drafttrain_version"), path)
    for key, kind in (("files", dict), ("target", dict), ("levels", dict), ("scheduler", str)):
        if not isinstance(manifest.get(key), kind):
            raise DrafttrainError(f"{path}: field {key!r} is missing or not a {kind.__name__}; the bundle is "
                                  "damaged: export it again")
    return manifest


def _check_schema(version, writer, path: Path) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DrafttrainError(f"{path}: schema_version {version!r} is invalid; the bundle is damaged")
    if version > SCHEMA_VERSION:
        raise DrafttrainError(f"{path}: schema_version {version} is newer than this drafttrain reads "
                              f"(up to {SCHEMA_VERSION}); the bundle was written by drafttrain {writer}. Fix: "
                              f"upgrade drafttrain (this is {__version__}) or export the bundle again with this version")
