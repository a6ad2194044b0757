"""Load a cascade bundle, verified before any use.

`load_bundle` reads the manifest (refusing a newer schema), checks the sha256 of every file
against it (a changed, missing or extra file is refused), compares the recorded target identity
with the target given (a different model or a different tokenizer is refused, naming what
differs), and warns when the latency profile was measured on other hardware. Nothing in a bundle
is executed or unpickled: weights are safetensors, everything else is JSON. An archive is
unpacked into a private temporary directory (regular files and directories only).
"""

from __future__ import annotations

import tarfile
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from drafttrain.bundle import manifest as layout
from drafttrain.bundle.identity import (
    identity_differences,
    target_identity,
    tree_hashes,
)
from drafttrain.bundle.scheduler import Scheduler, SchedulerSpec, build_scheduler
from drafttrain.errors import DrafttrainError


class BundleWarning(UserWarning):
    """Something about a bundle that still works but should be fixed (e.g. other hardware)."""


@dataclass
class Bundle:
    """A verified bundle: where its parts are, its manifest, its scheduler and any warnings."""

    root: Path
    target: Path
    manifest: dict
    scheduler: SchedulerSpec
    warnings: list[str] = field(default_factory=list)
    _unpacked: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def path(self, relative: str) -> Path | None:
        return self.root / relative if (self.root / relative).exists() else None

    @property
    def drafts(self) -> list[Path]:
        names = sorted(name for name in self.manifest["levels"] if name.startswith("draft"))
        return [self.root / layout.DRAFTS / name for name in names]

    @property
    def ngram_table(self) -> Path | None:
        tables = sorted((self.root / layout.NGRAM).glob("bigram.*")) if self.path(layout.NGRAM) else []
        return tables[0] if tables else None

    @property
    def level_names(self) -> list[str]:
        return list(self.manifest["levels"])

    def cascade_spec(self):
        from drafttrain.drafters.cascade import CascadeSpec
        from drafttrain.search.study import read_levels

        views = [level.spec for level in read_levels(self.root / layout.LEVELS)] if self.path(layout.LEVELS) else []
        return CascadeSpec(self.drafts, views, "ngram" in self.manifest["levels"], self.ngram_table)

    def check_sampling(self, sampling) -> None:
        """A clear error, before any decoding, when DyTC has no predictors for this decoding mode."""
        from drafttrain.calibration import AcceptancePredictors
        from drafttrain.calibration.traces import mode_name

        if self.scheduler.name != "dytc":
            return
        modes = sorted(AcceptancePredictors.load(self.root / layout.PREDICTORS).modes)
        if mode_name(sampling) not in modes:
            raise DrafttrainError(f"bundle {self.root} was calibrated for decoding modes {modes}, not "
                                  f"{mode_name(sampling)}. Fix: decode in one of those modes (greedy is temperature "
                                  "0), or calibrate with that temperature and export again")

    def build_scheduler(self, decoder, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> Scheduler:
        """The bundle's scheduler over its levels, for `decoder` (a `SpeculativeDecoder` on the target).
        The target and the draft models get the row kernels their latency was timed with (on the
        profiled hardware)."""
        from drafttrain.calibration.latency import TARGET_LEVEL, LatencyProfile
        from drafttrain.drafters.cascade import build_drafters, draft_models

        levels = build_drafters(self.cascade_spec(), decoder, decoder.tokenizer, dtype, device)
        latency = LatencyProfile.load(self.root / layout.LATENCY)
        for name, model in {TARGET_LEVEL: decoder.target, **draft_models(levels)}.items():
            latency.apply_row_kernels(name, model)
        return build_scheduler(self.scheduler, levels, self.root / layout.PREDICTORS, latency,
                               decoder.target.args.vocab_size)


def load_bundle(path: str | Path, target: str | Path, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, warn: bool = True) -> Bundle:
    """Verify the bundle at `path` (directory or .tar.gz) against `target` and return it."""
    path, target = Path(path), Path(target)
    unpacked = None
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        unpacked = tempfile.TemporaryDirectory(prefix="drafttrain-bundle-")
        root = _unpack(path, Path(unpacked.name))
    elif path.is_dir():
        root = path
    else:
        raise DrafttrainError(f"bundle {path} does not exist: give the directory or .tar.gz `drafttrain export` wrote")
    manifest = layout.read_manifest(root)
    _check_files(root, manifest["files"], path)
    _check_target(manifest["target"], target, path)
    scheduler = SchedulerSpec.load(root / layout.SCHEDULER)
    scheduler.check_levels(list(manifest["levels"]))
    bundle = Bundle(root, target, manifest, scheduler, _latency_warnings(root, path, device, dtype), unpacked)
    if warn:
        for message in bundle.warnings:
            warnings.warn(message, BundleWarning, stacklevel=2)
    return bundle


def _unpack(archive: Path, into: Path) -> Path:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if not (member.isfile() or member.isdir()):
                    raise DrafttrainError(f"{archive}: member {member.name!r} is not a regular file or directory; "
                                          "a bundle archive holds only files: refusing to unpack it")
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DrafttrainError(f"{archive}: not a readable .tar.gz ({err}); export the bundle again") from err
    roots = [entry for entry in into.iterdir()]
    return roots[0] if len(roots) == 1 and roots[0].is_dir() else into


def _check_files(root: Path, recorded: dict[str, str], source: Path) -> None:
    present = tree_hashes(root)
    present.pop(layout.MANIFEST, None)
    missing = sorted(set(recorded) - set(present))
    extra = sorted(set(present) - set(recorded))
    changed = sorted(name for name in set(recorded) & set(present) if recorded[name] != present[name])
    problems = [f"missing file {name}" for name in missing] + [f"changed file {name} (sha256 differs from the "
                                                                f"manifest)" for name in changed]
    problems += [f"unexpected file {name} (not in the manifest)" for name in extra]
    if problems:
        raise DrafttrainError(f"bundle {source} failed verification: {'; '.join(problems)}. Fix: the bundle was "
                              "modified or damaged after export; export it again (or restore it from a copy)")


def _check_target(recorded: dict, target: Path, source: Path) -> None:
    model, tokenizer = identity_differences(recorded, target_identity(target))
    if model:
        raise DrafttrainError(f"bundle {source} was made for a different target than {target}: {'; '.join(model)}. "
                              "Fix: pass the target the bundle was exported for, or run the pipeline for this one")
    if tokenizer:
        raise DrafttrainError(f"bundle {source} was made with a different tokenizer than {target}'s: "
                              f"{'; '.join(tokenizer)}. Fix: use the target's original tokenizer files, or "
                              "export a bundle for this tokenizer")


def _latency_warnings(root: Path, source: Path, device, dtype: torch.dtype) -> list[str]:
    from drafttrain.calibration.latency import LatencyProfile, hardware_fingerprint

    profile = LatencyProfile.load(root / layout.LATENCY)
    differences = profile.check_hardware(hardware_fingerprint(device, dtype))
    if not differences:
        return []
    message = (f"bundle {source}: its latency profile was measured on other hardware ({'; '.join(differences)}); "
               "the scheduler's costs may be off. Fix: re-run `drafttrain run calibrate` here and export again")
    return [message]
