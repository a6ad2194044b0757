"""Experiment tracking with Weights & Biases for the recipes that do not train with Lightning.

    with tracked_run("calibrate", config, out, mode=config.wandb) as run:
        ...
        run.log_summary({"ece": 0.02})
        run.log_artifact([out / "predictors.json"], "predictors", "predictors")

`tracked_run` records the recipe's config, metrics, summary, files and artifacts in one wandb run
(project "drafttrain", job type = the recipe) kept under `<out>/wandb/`. Runs are offline unless
the user opts in with mode "online": nothing touches the network, and `wandb sync <run dir>`
uploads a run later. Mode "disabled" is a no-op that never imports wandb. The environment variable
`WANDB_MODE` can only turn tracking down (online -> offline -> disabled), e.g. WANDB_MODE=disabled
in CI; going online always takes the recipe's own setting. (The training recipes log through
Lightning's WandbLogger instead, see `drafttrain.training.run`.)
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drafttrain.config import config_to_dict
from drafttrain.errors import DrafttrainError

PROJECT = "drafttrain"
MODES = ("disabled", "offline", "online")  # from least to most: the env may only move left
ALIASES = {"dryrun": "offline", "run": "online"}  # wandb's older names

# Offline: no network (no machine/cloud metadata probes, no system-metrics sampler), no console
# capture, no pip freeze or code/git snapshot; wandb prints nothing (we print one line at the end).
OFFLINE_SETTINGS = {"silent": True, "console": "off", "disable_git": True, "disable_code": True,
                    "save_code": False, "x_disable_stats": True, "x_disable_meta": True,
                    "x_disable_machine_info": True, "x_save_requirements": False}


class Tracker:
    """What a recipe logs through; every method is a no-op when tracking is disabled (run is None)."""

    def __init__(self, run: Any = None) -> None:
        self.run = run

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """One row of the run's history (charts)."""
        if self.run is not None:
            self.run.log(metrics)

    def log_summary(self, values: dict[str, Any]) -> None:
        """Final values of the run (nested dicts allowed), shown in the runs table."""
        if self.run is not None:
            self.run.summary.update(values)

    def log_files(self, paths: Sequence[str | Path]) -> None:
        """Copy files (report.md, plots) into the run's files; missing paths are skipped."""
        if self.run is None:
            return
        for path in map(Path, paths):
            if path.is_file():
                copy = Path(self.run.dir) / path.name
                shutil.copy2(path, copy)
                self.run.save(str(copy), base_path=self.run.dir, policy="now")

    def log_artifact(self, paths: str | Path | Sequence[str | Path], name: str, type: str) -> None:
        """Log files and directories as one versioned artifact; a lone directory becomes its root.

        Missing paths are skipped. The files are referenced where they are (not staged copies), so
        they must not change until the run is synced.
        """
        if self.run is None:
            return
        import wandb

        single = isinstance(paths, (str, Path))
        found = [path for path in map(Path, [paths] if single else paths) if path.exists()]
        artifact = wandb.Artifact(artifact_name(name), type=type)
        for path in found:
            if path.is_dir():
                artifact.add_dir(str(path), name=None if single else path.name, policy="immutable")
            else:
                artifact.add_file(str(path), policy="immutable")
        if found:
            self.run.log_artifact(artifact)


def resolve_mode(mode: str) -> str:
    """`mode`, or WANDB_MODE from the environment where that is more restrictive."""
    wanted = _known_mode(mode, "the recipe's `wandb` setting")
    env = os.environ.get("WANDB_MODE")
    if not env:
        return wanted
    return min(wanted, _known_mode(env, "WANDB_MODE"), key=MODES.index)


def _known_mode(mode: str, source: str) -> str:
    mode = ALIASES.get(mode, mode)
    if mode not in MODES:
        raise DrafttrainError(f"{source} is {mode!r}: use one of {', '.join(MODES)} (offline keeps runs "
                              "local; online uploads to wandb)")
    return mode


def artifact_name(name: str) -> str:
    """`name` with the characters wandb refuses in artifact names replaced by '-'."""
    return re.sub(r"[^\w.-]", "-", name)[:128]


def redacted(data: Any) -> Any:
    """Plain config data with passwords in URLs (scheme://user:password@host) masked."""
    if isinstance(data, dict):
        return {key: redacted(value) for key, value in data.items()}
    if isinstance(data, list):
        return [redacted(value) for value in data]
    if isinstance(data, str):
        return re.sub(r"(://[^/\s:@]*:)[^/\s@]+@", r"\1***@", data)
    return data


def start_run(recipe: str, config: Any, out_dir: Path, mode: str) -> Any:
    """A new wandb run (never a run already open in this process) writing under `out_dir`/wandb."""
    import wandb

    out_dir.mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(**OFFLINE_SETTINGS) if mode == "offline" else wandb.Settings()
    return wandb.init(project=PROJECT, job_type=recipe, config=redacted(config_to_dict(config)),
                      dir=str(out_dir), mode=mode, reinit="create_new", settings=settings)


def _exit_code(error: BaseException) -> int:
    if isinstance(error, SystemExit) and isinstance(error.code, int):
        return error.code
    return 1


@contextmanager
def tracked_run(recipe: str, config: Any, out_dir: str | Path, mode: str = "offline") -> Iterator[Tracker]:
    """A wandb run around a recipe, finished at the end; an exception marks it failed and propagates."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        yield Tracker()
        return
    run = start_run(recipe, config, Path(out_dir), mode)
    try:
        yield Tracker(run)
    except BaseException as error:
        run.finish(exit_code=_exit_code(error))
        raise
    run.finish()
    if mode == "offline":
        print(f"wandb run (offline) in {run.settings.sync_dir}: upload it with `wandb sync {run.settings.sync_dir}`")
