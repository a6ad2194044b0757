"""Write a cascade bundle: drafts, self-draft levels, n-gram table, predictors, latency, scheduler.

Everything is checked before anything is written (each level has its predictors and latency model,
drafts share the target's tokenizer), then the bundle is built in a temporary directory beside the
destination and renamed into place (or packed into a temporary .tar.gz and renamed): an interrupted
export leaves no half bundle. The manifest, with the sha256 of every file, is written last.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from drafttrain.bundle import manifest as layout
from drafttrain.bundle.identity import TOKENIZER_FILES, target_identity, tree_hashes
from drafttrain.bundle.scheduler import SchedulerSpec
from drafttrain.drafters.vocab import VOCAB_FILE
from drafttrain.errors import DrafttrainError

DRAFT_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


@dataclass
class BundleParts:
    """What goes into a bundle (paths as written by the recipes)."""

    target: Path
    predictors: Path
    latency: Path
    drafts: list[Path] = field(default_factory=list)
    levels: Path | None = None  # levels.json of `drafttrain search`
    ngram: bool = True
    ngram_table: Path | None = None
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)


def export_bundle(parts: BundleParts, out: str | Path, archive: bool = False) -> Path:
    """Write the bundle to `out` (a directory, or `out` + .tar.gz with `archive`); returns its path."""
    out = Path(out)
    final = out.with_name(out.name + ".tar.gz") if archive and not out.name.endswith(".tar.gz") else out
    checked = _checked_parts(parts)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        root = staging / final.name.removesuffix(".tar.gz")
        _write_contents(checked, root)
        if archive:
            packed = staging / "bundle.tar.gz"
            with tarfile.open(packed, "w:gz") as tar:
                tar.add(root, arcname=root.name)
            _replace(packed, final)
        else:
            _replace(root, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


@dataclass
class _Checked:
    parts: BundleParts
    identity: dict
    levels: list  # the self-draft levels the predictors cover (search.study.Level)
    names: dict[str, str]  # level name -> what it is
    fingerprint: dict


def _checked_parts(parts: BundleParts) -> _Checked:
    from drafttrain.calibration import AcceptancePredictors
    from drafttrain.calibration.latency import TARGET_LEVEL, LatencyProfile
    from drafttrain.drafters.cascade import CascadeSpec
    from drafttrain.search.study import read_levels

    identity = target_identity(parts.target)
    predictors, latency = AcceptancePredictors.load(parts.predictors), LatencyProfile.load(parts.latency)
    calibrated = set.intersection(*(set(levels) for levels in predictors.modes.values()))
    levels = read_levels(parts.levels) if parts.levels else []
    levels = levels[:sum(1 for i in range(len(levels)) if f"self{i}" in calibrated)]  # the calibrated prefix
    spec = CascadeSpec(list(parts.drafts), [level.spec for level in levels], parts.ngram, parts.ngram_table)
    names = spec.describe()
    for name in names:
        if name not in calibrated:
            raise DrafttrainError(f"level {name} ({names[name]}) has no acceptance predictors in {parts.predictors} "
                                  f"(calibrated: {sorted(calibrated)}). Fix: calibrate the same levels you export")
    missing = [name for name in [TARGET_LEVEL, *names] if name not in latency.models]
    if missing:
        raise DrafttrainError(f"{parts.latency} has no latency model for {missing}. Fix: re-run `drafttrain run "
                              "calibrate` with latency=true and the same levels")
    parts.scheduler.check_levels(list(names))
    for draft in parts.drafts:
        _check_draft(Path(draft), Path(parts.target), identity)
    return _Checked(parts, identity, levels, names, latency.fingerprint)


def _check_draft(draft: Path, target: Path, identity: dict) -> None:
    """A draft must be a checkpoint directory whose tokenizer (if it has one) equals the target's."""
    from drafttrain.bundle.identity import combined_sha256
    from drafttrain.io import file_sha256

    if not (draft / "config.json").is_file() and not (draft / "adapter_config.json").is_file():
        raise DrafttrainError(f"draft {draft}: no config.json; give a draft model directory (`drafttrain run "
                              "distill` writes <out>/draft)")
    tokenizer = {name: file_sha256(draft / name) for name in TOKENIZER_FILES if (draft / name).is_file()}
    if tokenizer and combined_sha256(tokenizer) != identity["tokenizer_sha256"]:
        from drafttrain.drafters.transformer import check_same_tokenizer
        from drafttrain.runtime import load_tokenizer

        check_same_tokenizer(load_tokenizer(draft), load_tokenizer(target), str(draft))


def _write_contents(checked: _Checked, root: Path) -> None:
    parts = checked.parts
    root.mkdir(parents=True)
    for i, draft in enumerate(parts.drafts):
        _write_draft(Path(draft), parts.target, root / layout.DRAFTS / f"draft{i}")
    if checked.levels:
        payload = {"levels": [level.to_json() for level in checked.levels]}
        (root / layout.LEVELS).write_text(json.dumps(payload, indent=1) + "\n")
    if parts.ngram_table:
        table = Path(parts.ngram_table)
        (root / layout.NGRAM).mkdir()
        shutil.copyfile(table, root / layout.NGRAM / f"bigram{table.suffix}")
    shutil.copyfile(parts.predictors, root / layout.PREDICTORS)
    shutil.copyfile(parts.latency, root / layout.LATENCY)
    parts.scheduler.save(root / layout.SCHEDULER)
    manifest = layout.build_manifest(tree_hashes(root), checked.identity, checked.names, parts.scheduler.name,
                                     checked.fingerprint)
    (root / layout.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _write_draft(draft: Path, target: Path, dest: Path) -> None:
    """safetensors + config + tokenizer; a LoRA adapter is merged onto its base first (peft)."""
    if (draft / "adapter_config.json").is_file():
        _write_merged_adapter(draft, dest)
    else:
        dest.mkdir(parents=True)
        for path in sorted(draft.glob("*.safetensors")):
            shutil.copyfile(path, dest / path.name)
        for name in DRAFT_FILES:
            if (draft / name).is_file():
                shutil.copyfile(draft / name, dest / name)
        if not any(dest.glob("*.safetensors")):
            raise DrafttrainError(f"draft {draft}: no *.safetensors weights (pickled weights are never bundled). "
                                  "Fix: save the draft with safetensors")
    if (draft / VOCAB_FILE).is_file():  # the draft's vocabulary subset (FR-Spec), if it has one
        shutil.copyfile(draft / VOCAB_FILE, dest / VOCAB_FILE)
    source = draft if any((draft / name).is_file() for name in TOKENIZER_FILES) else target
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / name)


def _write_merged_adapter(adapter: Path, dest: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from drafttrain.runtime.loader import adapter_base

    base = AutoModelForCausalLM.from_pretrained(str(adapter_base(adapter)), trust_remote_code=False)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(dest), safe_serialization=True)


def _replace(source: Path, final: Path) -> None:
    """Rename `source` to `final`; an existing `final` is moved aside first and removed after."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(source, final)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
