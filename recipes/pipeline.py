"""The whole pipeline: a target (pretrained if none is given), prompts, a distilled draft, self-draft
levels, calibrated predictors, a verified bundle, and the evaluation report.

    drafttrain run pipeline --config configs/pycode/pipeline.yaml [key=value ...]
    drafttrain quickstart [--target DIR]        (this recipe on the embedded default, quickstart.yaml)

Every stage runs a recipe in a directory named by a hash of its config and inputs
(`drafttrain.pipeline.cache`): a repeated run reuses finished stages, and after a change only the
changed stage and the ones downstream run again. An interrupted stage resumes from its recipe's
own checkpoints. Ends with the speedup table and the bundle's path (also linked as <out>/bundle).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

import drafttrain.pipeline
from drafttrain.bundle.identity import combined_sha256, target_identity
from drafttrain.calibration.latency import hardware_fingerprint
from drafttrain.errors import DrafttrainError
from drafttrain.evaluation.methods import DTYPES
from drafttrain.io import file_sha256, write_atomically
from drafttrain.pipeline.cache import StageRecord, run_cached, stage_key
from drafttrain.runtime.loader import check_weights
from drafttrain.pipeline.config import PipelineConfig, PromptsConfig

CONFIG = PipelineConfig
QUICKSTART = Path(drafttrain.pipeline.__file__).parent / "quickstart.yaml"


def stage(config: PipelineConfig, name: str, wiring: dict, inputs: dict, records: list[StageRecord]) -> Path:
    """Run (or reuse) stage `name` with the pipeline's `wiring`; returns its directory."""
    import importlib

    settings = getattr(config, name).build(name, wiring)
    key = stage_key(name, settings, inputs)
    recipe = importlib.import_module(f"recipes.{name}")

    def run(directory: Path) -> None:
        print(f"\n== stage {name} -> {directory}", flush=True)
        recipe.main(getattr(config, name).build(name, {**wiring, "out": _out_for(name, directory)}))

    record = run_cached(config.out, name, key, run, inputs)
    if record.cached:
        print(f"== stage {name}: reused {record.dir} (finished earlier in {record.seconds:.0f} s)", flush=True)
    records.append(record)
    return record.dir


def _out_for(name: str, directory: Path) -> Path:
    return directory / "bundle" if name == "export" else directory


def write_prompt_sets(config: PipelineConfig, target: Path, directory: Path) -> None:
    """calibration.jsonl and eval.jsonl (the given file, or cut from held-out text).

    Calibration prompts come from the corpus's training text, or with `prompts.calibration_text:
    held_out` from held-out text disjoint from the evaluation prompts': the held-out documents none
    of the given evaluation prompts was cut from, or, when the pipeline cuts them itself, a
    seed-chosen half of the held-out documents (the other half gives the evaluation prompts)."""
    from drafttrain.data import build_prompt_set, documents_without, split_documents, write_prompts
    from drafttrain.evaluation.prompts import load_prompts
    from drafttrain.runtime import load_tokenizer

    settings, tokenizer = config.prompts, load_tokenizer(target)
    kind = "text" if settings.corpus.kind == "jsonl" else "code"
    calibration_source, held_out = _training_and_held_out(settings)
    if config.eval_prompts is not None:
        shutil.copyfile(config.eval_prompts, directory / "eval.jsonl")
        if settings.calibration_text == "held_out":
            cut = (prompt.text for prompt in load_prompts(config.eval_prompts, tokenizer=tokenizer))
            calibration_source = documents_without(held_out, cut)
    else:
        if settings.calibration_text == "held_out":
            held_out, calibration_source = split_documents(held_out, 0.5, settings.seed)
        write_prompts(build_prompt_set(held_out, tokenizer, kind, settings.evaluation, settings.context_tokens,
                                       settings.seed), directory / "eval.jsonl")
    if settings.calibration_text == "held_out" and not calibration_source:
        raise DrafttrainError("prompts.calibration_text: held_out, but no held-out document is left once the "
                              "evaluation prompts' sources are set aside. Fix: hold out more text "
                              "(corpus.exclude_packages) or use calibration_text: training")
    write_prompts(build_prompt_set(calibration_source, tokenizer, kind, settings.calibration,
                                   settings.context_tokens, settings.seed), directory / "calibration.jsonl")


def _training_and_held_out(settings: PromptsConfig) -> tuple[list, list]:
    """The corpus's training documents and its held-out ones (the excluded stdlib packages, or a
    seed-chosen tenth of the documents)."""
    from drafttrain.data import held_out_documents, iter_documents, split_documents

    documents = list(iter_documents(settings.corpus))
    if settings.corpus.kind == "stdlib" and settings.corpus.exclude_packages:
        return documents, list(held_out_documents(settings.corpus))
    return split_documents(documents, 0.1, settings.seed)


def link_bundle(out: Path, bundle: Path) -> Path:
    """<out>/bundle -> the export stage's bundle (a relative symlink, replaced atomically)."""
    link, tmp = out / "bundle", out / f".bundle.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(bundle, out))
    os.replace(tmp, link)
    return link


def main(config: PipelineConfig) -> int:
    started = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    records: list[StageRecord] = []
    log = {"logging.wandb": config.wandb}

    # 1. the target: the user's, or pretrained here (cached like any stage)
    if config.target is None:
        target = stage(config, "pretrain", log, {}, records) / "model"
        target_key = records[-1].run
    else:
        check_weights(config.target)  # a damaged checkpoint fails here, not in a stage's library call
        target, target_key = config.target, combined_sha256(_identity_hashes(config.target))

    # 2. calibration prompts (training text) and evaluation prompts (held-out text, or the given file)
    prompt_inputs = {"target": target_key, "eval_prompts": file_sha256(config.eval_prompts) if config.eval_prompts
                     else None}
    key = stage_key("prompts", config.prompts, prompt_inputs)
    prompts = run_cached(config.out, "prompts", key, lambda d: write_prompt_sets(config, target, d), prompt_inputs)
    records.append(prompts)
    calibration, evaluation = prompts.dir / "calibration.jsonl", prompts.dir / "eval.jsonl"
    on_target = {"target": str(target)}
    inputs = {"target": target_key, "prompts": prompts.run}

    # 3. a distilled draft (it reads the target and its own corpus, not the prompts) and 4. self-draft
    # levels (searched on the calibration prompts); each optional
    drafts = []
    if config.distill.enabled:
        drafts = [stage(config, "distill", {**on_target, **log}, {"target": target_key}, records) / "draft"]
    levels = None
    if config.search.enabled:
        levels = stage(config, "search", {**on_target, "prompts": str(calibration), "wandb": config.wandb}, inputs,
                       records) / "levels.json"
    upstream = {record.stage: record.run for record in records}

    # 5. calibration on this hardware, 6. the bundle, 7. its evaluation beside the peers
    measured_on = config.calibrate.build("calibrate")
    hardware = hardware_fingerprint(measured_on.device, DTYPES[measured_on.dtype])
    calibrated = stage(config, "calibrate", {**on_target, "prompts": str(calibration), "eval_prompts": str(evaluation),
                                             "drafts": [str(path) for path in drafts], "levels": str(levels) if levels
                                             else None, "wandb": config.wandb},
                       {**upstream, "hardware": hardware}, records)
    upstream = {record.stage: record.run for record in records}
    bundle = stage(config, "export", {**on_target, "drafts": [str(path) for path in drafts],
                                      "levels": str(levels) if levels else None,
                                      "predictors": str(calibrated / "predictors.json"),
                                      "latency": str(calibrated / "latency.json"), "wandb": config.wandb},
                   upstream, records) / "bundle"
    upstream = {record.stage: record.run for record in records}
    evaluated = stage(config, "eval", {**on_target, "bundle": str(bundle), "prompts": str(evaluation),
                                       "wandb": config.wandb}, {**upstream, "hardware": hardware}, records)

    link = link_bundle(config.out, bundle)
    summary = {"stages": [{"stage": r.stage, "dir": str(r.dir), "key": r.key, "run": r.run, "cached": r.cached,
                           "seconds": r.seconds} for r in records], "target": str(target), "bundle": str(bundle),
               "report": str(evaluated / "report.md"), "seconds": time.perf_counter() - started}
    write_atomically(config.out / "pipeline.json", json.dumps(summary, indent=1) + "\n")
    print(f"\n{(evaluated / 'report.md').read_text()}")
    for record in records:
        print(f"  {record.stage:10s} {'reused' if record.cached else 'ran'} {record.seconds:7.1f} s  {record.dir}")
    print(f"pipeline finished in {summary['seconds'] / 60:.1f} min. Bundle: {link} -> {bundle}")
    print(f"try it: drafttrain generate --bundle {link} --target {target} --prompt 'def fibonacci(n):'")
    return 0


def _identity_hashes(target: Path) -> dict[str, str]:
    identity = target_identity(target)
    return {key: identity[key] for key in ("config_sha256", "weights_sha256", "tokenizer_sha256")}


if __name__ == "__main__":
    from drafttrain.cli import main as cli

    sys.exit(cli(["run", "pipeline", *sys.argv[1:]]))
