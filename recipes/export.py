"""Export a cascade bundle: the drafts, self-draft levels, n-gram table, predictors, latency and scheduler.

    drafttrain export --target DIR --predictors P --latency L [--drafts D] [--levels levels.json] [--archive]
    drafttrain run export --config configs/tiny/export.yaml [key=value ...]     (the same)

Checks every part against the others (each level calibrated, drafts on the target's tokenizer),
writes the bundle atomically with a manifest holding the target's identity and the sha256 of every
file, then verifies it by loading it back, and logs it to wandb as an artifact (offline by default).
"""

from __future__ import annotations

import sys

from drafttrain.bundle import BundleParts, export_bundle, load_bundle
from drafttrain.bundle.config import ExportConfig

CONFIG = ExportConfig


def main(config: ExportConfig):
    config.require_inputs()
    parts = BundleParts(config.target, config.predictors, config.latency, list(config.drafts), config.levels,
                        config.ngram, config.ngram_table, config.scheduler)
    path = export_bundle(parts, config.out, archive=config.archive)
    bundle = load_bundle(path, config.target, warn=False)  # read back: the bundle a user gets must verify
    print(f"bundle written to {path}: levels {', '.join(bundle.level_names)}, scheduler {bundle.scheduler.name}, "
          f"{len(bundle.manifest['files'])} files")
    from drafttrain.tracking import tracked_run

    with tracked_run("export", config, path.parent, config.wandb) as run:
        run.log_artifact(path, "cascade-bundle", "cascade-bundle")
    return path


if __name__ == "__main__":
    from drafttrain.cli import main as cli

    sys.exit(cli(["run", "export", *sys.argv[1:]]))
