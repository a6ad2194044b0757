"""Content hashes: of single files, of whole directories, and of a target checkpoint's identity.

A bundle is tuned for one target and one tokenizer. Its manifest records the target's identity
(model type, sha256 of config.json, of the weights and of the tokenizer files), and loading a
bundle compares that record with the target the user points at, so that a bundle can never run
silently against another model. Weights are hashed per file (sorted by name) and the per-file
hashes are hashed together, so a sharded checkpoint has one weights hash too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from drafttrain.errors import DrafttrainError
from drafttrain.io import file_sha256

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "special_tokens_map.json", "tokenizer_config.json")


def combined_sha256(hashes: dict[str, str]) -> str:
    """One hash over named hashes (order-independent: sorted by name)."""
    lines = "".join(f"{name}\t{value}\n" for name, value in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under `root`, by POSIX path relative to it."""
    return {path.relative_to(root).as_posix(): file_sha256(path)
            for path in sorted(root.rglob("*")) if path.is_file()}


def _weight_files(target: Path) -> list[Path]:
    files = sorted(target.glob("*.safetensors"))
    if not files:
        raise DrafttrainError(f"{target}: no *.safetensors weights; a target must be a Hugging Face checkpoint "
                              "directory with safetensors weights")
    return files


def target_identity(target: str | Path) -> dict:
    """The identity a bundle records for its target: model type, vocab size and content hashes."""
    target = Path(target)
    config_path = target / "config.json"
    if not config_path.is_file():
        raise DrafttrainError(f"{target}: no config.json; give the target's Hugging Face checkpoint directory")
    config = json.loads(config_path.read_text())
    tokenizer = {name: file_sha256(target / name) for name in TOKENIZER_FILES if (target / name).is_file()}
    if not tokenizer:
        raise DrafttrainError(f"{target}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}); save the "
                              "tokenizer beside the model")
    weights = {path.name: file_sha256(path) for path in _weight_files(target)}
    return {"model_type": config.get("model_type"), "vocab_size": config.get("vocab_size"),
            "config_sha256": file_sha256(config_path), "weights_sha256": combined_sha256(weights),
            "weight_files": weights, "tokenizer_sha256": combined_sha256(tokenizer), "tokenizer_files": tokenizer}


def identity_differences(recorded: dict, current: dict) -> tuple[list[str], list[str]]:
    """(differences of the model, differences of the tokenizer) between two identities."""
    model = []
    for key, what in (("model_type", "model type"), ("vocab_size", "vocabulary size"),
                      ("config_sha256", "config.json"), ("weights_sha256", "weights")):
        if recorded.get(key) != current.get(key):
            model.append(f"{what}: {_short(recorded.get(key))} in the bundle, {_short(current.get(key))} here")
    if recorded.get("weights_sha256") != current.get("weights_sha256"):
        model += _file_differences(recorded.get("weight_files", {}), current.get("weight_files", {}))
    tokenizer = []
    if recorded.get("tokenizer_sha256") != current.get("tokenizer_sha256"):
        tokenizer = _file_differences(recorded.get("tokenizer_files", {}), current.get("tokenizer_files", {}))
    return model, tokenizer


def _file_differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    notes = []
    for name in sorted(set(recorded) | set(current)):
        if name not in current:
            notes.append(f"{name} is missing here")
        elif name not in recorded:
            notes.append(f"{name} is here but not in the bundle's record")
        elif recorded[name] != current[name]:
            notes.append(f"{name} differs (sha256 {recorded[name][:12]} in the bundle, {current[name][:12]} here)")
    return notes


def _short(value) -> str:
    return value[:12] if isinstance(value, str) and len(value) == 64 else repr(value)
