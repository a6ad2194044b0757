"""Calibrate a cascade: per-token acceptance traces, isotonic acceptance predictors, latency predictors.

    drafttrain run calibrate --config configs/tiny/calibrate.yaml target=DIR prompts=CALIBRATION.jsonl

1. Decodes the calibration prompts with every level (model drafts, self-draft levels from
   levels.json, the n-gram drafter) drafting chains of `k` tokens, in every decoding mode, and
   records one trace row per drafted token (out/traces/<mode>-<level>.csv; a finished part is
   reused when the run is repeated with the same settings, so an interrupted run resumes).
2. Fits isotonic acceptance predictors (and the logistic baseline) per level and depth bucket,
   and scores them out of fold: each fold of prompts is predicted by predictors fitted on the
   other folds (ECE, Brier, log-loss, AUC, chain acceptance; reliability diagrams).
3. Times every level's forward and the target's verify forward over token counts and context
   lengths, fits latency predictors and scores them on held-out grid points (MAPE).
4. Writes predictors.json, latency.json, traces.csv, report.json, report.md and the plots to `out`.
5. Logs the config, the scores (summary), report.md + plots (files) and predictors.json +
   latency.json + report.md (an artifact of type "predictors") to wandb, offline in out/wandb
   unless `wandb=online` (see drafttrain.tracking).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from drafttrain.calibration.acceptance import fit_predictors
from drafttrain.calibration.config import CalibrateConfig
from drafttrain.calibration.latency import (
    HELD_OUT_TOKEN_COUNTS,
    SMALLEST_CONTEXT,
    TARGET_LEVEL,
    LatencyProfile,
    context_buckets,
    hardware_fingerprint,
    mape,
    measure,
    model_forward_call,
    ngram_call,
    split_timings,
    token_count_shape,
    tune_row_kernels,
)
from drafttrain.calibration.plots import reliability_diagram
from drafttrain.calibration.report import evaluate_predictors, report_markdown
from drafttrain.calibration.traces import TraceRecorder, Traces, mode_name
from drafttrain.config import save_config
from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters import ModelDrafter, NgramDrafter, SelfDrafter
from drafttrain.drafters.base import Drafter, TreeShape
from drafttrain.drafters.cascade import CascadeSpec, build_drafters, draft_models
from drafttrain.errors import DrafttrainError
from drafttrain.evaluation.prompts import load_prompts
from drafttrain.io import file_sha256, write_atomically
from drafttrain.runtime import load_model, load_tokenizer
from drafttrain.runtime.loader import eos_token_ids
from drafttrain.runtime.row_kernels import LARGE_COUNTS
from drafttrain.runtime.views import parse_self_spec
from drafttrain.tracking import tracked_run

CONFIG = CalibrateConfig
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cascade_spec(config: CalibrateConfig) -> CascadeSpec:
    from drafttrain.search.study import read_levels

    views = [level.spec for level in read_levels(config.levels)] if config.levels else []
    if config.max_levels:
        views = views[:config.max_levels]
    views += [parse_self_spec(spec) for spec in config.self_specs]
    return CascadeSpec(list(config.drafts), views, config.ngram, config.ngram_table)


def check_not_eval_prompts(config: CalibrateConfig, texts: list[str], tokenizer) -> None:
    if config.eval_prompts is None:
        return
    shared = set(texts) & {prompt.text for prompt in load_prompts(config.eval_prompts, tokenizer=tokenizer)}
    if shared:
        raise DrafttrainError(f"{len(shared)} calibration prompt(s) in {config.prompts} also appear in the "
                              f"evaluation prompts {config.eval_prompts}: calibrate on other text (e.g. the "
                              "prompts.jsonl that `drafttrain run pretrain` writes from held-out training text)")


def part_key(config: CalibrateConfig, level: str, what: str, temperature: float) -> str:
    """A hash of everything a trace part depends on; a finished part with this key is reused."""
    settings = {"target": str(Path(config.target).resolve()), "prompts": file_sha256(config.prompts),
                "num_prompts": config.num_prompts, "max_new_tokens": config.max_new_tokens, "k": config.k,
                "temperature": temperature, "seed": config.seed, "level": level, "what": what,
                "dtype": config.dtype}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def record_part(decoder, drafter, prompt_ids, prompt_names, generation: GenerationConfig, seed: int,
                bar: Progress, task) -> Traces:
    recorder = TraceRecorder(generation.sampling)
    for index, (name, ids) in enumerate(zip(prompt_names, prompt_ids)):
        recorder.prompt = name
        config = GenerationConfig(generation.max_new_tokens, generation.sampling, generation.shape,
                                  generation.eos_token_ids, (), seed + index)
        decoder.generate(ids, drafter, config, trace=recorder)
        bar.advance(task)
    return recorder.traces()


def timed_calls(decoder: SpeculativeDecoder, drafters: dict[str, Drafter], text_ids: torch.Tensor) -> dict:
    """One timed call per level (its drafting forward) and one for the target's verify forward. A
    drafting forward computes its last row's logits only (what a drafter reads), a model draft's over
    its vocabulary subset when it has one; the verify forward computes every row's."""
    calls = {TARGET_LEVEL: model_forward_call(decoder.target)}
    last_row = slice(-1, None)
    for name, drafter in drafters.items():
        if isinstance(drafter, ModelDrafter):
            calls[name] = model_forward_call(drafter.model, head=drafter.subset_head, logits_rows=last_row)
        elif isinstance(drafter, SelfDrafter):
            calls[name] = model_forward_call(decoder.target, drafter.view, logits_rows=last_row)
        elif isinstance(drafter, NgramDrafter):
            calls[name] = ngram_call(drafter, text_ids)
        else:
            raise DrafttrainError(f"level {name}: no latency measurement for {type(drafter).__name__}")
    return calls


def calibrate_latency(decoder: SpeculativeDecoder, drafters: dict[str, Drafter], prompt_ids: list[list[int]],
                      token_counts: list[int], repeats: int, warmup: int, dtype: torch.dtype,
                      progress: bool, row_kernels: bool = True) -> tuple[LatencyProfile, dict]:
    """Time every level over (token counts + held-out counts) x (fit + held-out contexts), fit on
    the grid, score on the held-out points; returns the profile and a summary for the report. With
    `row_kernels`, each model level first gets its fastest row kernels (`tune_levels`), and is timed
    with them."""
    windows = [decoder.target.args.max_position_embeddings]
    windows += [d.model.args.max_position_embeddings for d in drafters.values() if isinstance(d, ModelDrafter)]
    fit_contexts, held_contexts = context_buckets(min(windows), max(token_counts))
    held_tokens = [n for n in HELD_OUT_TOKEN_COUNTS if min(token_counts) < n < max(token_counts)]
    text_ids = torch.tensor([token for ids in prompt_ids for token in ids])
    calls = timed_calls(decoder, drafters, text_ids)
    plans = tune_levels(decoder, drafters, calls, max(token_counts), median_context(prompt_ids, fit_contexts[-1])) \
        if row_kernels else {}
    timings = measure(calls, sorted(set(token_counts) | set(held_tokens)),
                      sorted(fit_contexts + held_contexts), repeats, warmup, progress)
    fit, held = split_timings(timings, token_counts, fit_contexts)
    profile = LatencyProfile.from_timings(hardware_fingerprint(decoder.target.device, dtype), fit, held)
    profile.row_kernels = {level: plan for level, plan in plans.items() if plan}
    shape_mape = add_verify_shape(profile, decoder, prompt_ids, token_counts, fit_contexts[-1], held, repeats, warmup)
    summary = {"mape": profile.mape, "target_mape_smooth_and_shaped": shape_mape, "fit_timings": _per_level(fit),
               "held_out_timings": _per_level(held),
               "row_kernels": {level: {str(rows): kernel for rows, kernel in sorted(plan.items())}
                               for level, plan in profile.row_kernels.items()},
               "fingerprint": profile.fingerprint, "grid": profile.grid}
    return profile, summary


def tune_levels(decoder: SpeculativeDecoder, drafters: dict[str, Drafter], calls: dict, largest: int,
                context: int) -> dict[str, dict[int, str]]:
    """`tune_row_kernels` for the target and each draft model, over every token count up to
    `largest` after `context` tokens and the larger counts that plans bucket (`LARGE_COUNTS`, so
    prefills are covered) that fit the model's window, on the call that times the level; returns
    the plans, applied. Self-draft views run the target's model, so they share its plan. A draft
    model is timed as it runs in decoding, after a target forward."""
    models = {TARGET_LEVEL: decoder.target, **draft_models(drafters)}
    target_forward = partial(calls[TARGET_LEVEL], 1, context)
    return {name: tune_row_kernels(model, calls[name], tuned_counts(largest, context, model.args.max_position_embeddings),
                                   context, before=None if name == TARGET_LEVEL else target_forward)
            for name, model in models.items()}


def tuned_counts(largest: int, context: int, window: int) -> list[int]:
    """Row counts to tune: 1..largest, then each of `LARGE_COUNTS` beyond it that fits after
    `context` tokens in a `window`-position model."""
    return [*range(1, largest + 1), *(n for n in LARGE_COUNTS if largest < n and context + n <= window)]


def median_context(prompt_ids: list[list[int]], longest: int) -> int:
    """The prompts' median length, within the timed context range."""
    return min(max(int(np.median([len(ids) for ids in prompt_ids])), SMALLEST_CONTEXT), longest)


def add_verify_shape(profile: LatencyProfile, decoder: SpeculativeDecoder, prompt_ids: list[list[int]],
                     token_counts: list[int], longest: int, held: list, repeats: int, warmup: int) -> dict:
    """Time the target's verify at every token count up to the largest fitted, at the prompts' median
    length and half of it, and give its model the measured shape (`token_count_shape`, pinned to the
    fit at `token_counts`): the curve the scheduler sizes trees on. The target's held-out MAPE is
    re-scored with the shape; returns that MAPE without and with it."""
    largest = max(token_counts)
    median = int(np.median([len(ids) for ids in prompt_ids]))
    contexts = sorted({min(max(length, SMALLEST_CONTEXT), longest) for length in (median // 2, median)})
    dense = measure({TARGET_LEVEL: model_forward_call(decoder.target)}, range(1, largest + 1), contexts,
                    repeats, warmup)
    smooth = profile.models[TARGET_LEVEL]
    shaped = profile.models[TARGET_LEVEL] = dataclasses.replace(
        smooth, shape=token_count_shape(smooth, dense, token_counts))
    profile.grid["shape_token_counts"] = [1, largest]
    profile.grid["shape_context_lengths"] = contexts
    target_held = [timing for timing in held if timing.level == TARGET_LEVEL]
    if not target_held:
        return {}
    profile.mape[TARGET_LEVEL] = mape(shaped, target_held)
    return {"smooth": mape(smooth, target_held), "shaped": profile.mape[TARGET_LEVEL]}


def _per_level(timings) -> dict[str, int]:
    counts: dict[str, int] = {}
    for timing in timings:
        counts[timing.level] = counts.get(timing.level, 0) + 1
    return counts


def wandb_summary(report: dict) -> dict:
    """The report's headline numbers: out-of-fold scores per mode and level, latency MAPE per level."""
    acceptance = {mode: {name: {kind: scores[kind] for kind in ("raw", "isotonic", "logistic")}
                         for name, scores in levels.items()}
                  for mode, levels in report["acceptance"].items()}
    return {"acceptance": acceptance, "latency_mape": (report["latency"] or {}).get("mape"),
            "trace_rows": report["trace_rows"], "seconds": report["seconds"]}


def main(config: CalibrateConfig) -> None:
    config.require_inputs()
    out = Path(config.out)
    with tracked_run("calibrate", config, out, mode=getattr(config, "wandb", "offline")) as run:
        report = calibrate(config)
        run.log_summary(wandb_summary(report))
        run.log_files([out / "report.md", *report["plots"]])
        outputs = [out / "predictors.json", out / "report.md"] + ([out / "latency.json"] if config.latency else [])
        run.log_artifact(outputs, f"predictors-{Path(config.target).name}", "predictors")


def calibrate(config: CalibrateConfig) -> dict:
    """Steps 1-4: traces, acceptance and latency predictors, the report (returned)."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    started = time.perf_counter()

    # ---- inputs: prompts, target, levels
    dtype, device = DTYPES[config.dtype], torch.device(config.device)
    tokenizer = load_tokenizer(config.target)
    prompts = load_prompts(config.prompts, config.num_prompts, tokenizer)
    check_not_eval_prompts(config, [prompt.text for prompt in prompts], tokenizer)
    target = load_model(config.target, dtype, device)
    decoder = SpeculativeDecoder(target, tokenizer)
    prompt_ids = [prompt.token_ids(tokenizer) for prompt in prompts]
    for ids in prompt_ids:
        decoder.check_length(len(ids), config.max_new_tokens)
    spec = cascade_spec(config)
    drafters = build_drafters(spec, decoder, tokenizer, dtype, device)
    eos = eos_token_ids(config.target, tokenizer)

    # ---- 1. traces, one resumable part per (mode, level)
    parts = []
    with Progress(disable=not sys.stderr.isatty(), transient=True) as bar:
        for temperature in config.temperatures:
            sampling = SamplingParams(temperature)
            generation = GenerationConfig(config.max_new_tokens, sampling, TreeShape.chain(config.k), eos)
            for name, drafter in drafters.items():
                part_path = out / "traces" / f"{mode_name(sampling)}-{name}.csv"
                key = part_key(config, name, spec.describe()[name], temperature)
                key_path = part_path.with_suffix(".key")
                if part_path.is_file() and key_path.is_file() and key_path.read_text().strip() == key:
                    parts.append(Traces.load_csv(part_path))
                    print(f"traces {part_path.name}: reused ({len(parts[-1])} rows)")
                    continue
                task = bar.add_task(f"traces {mode_name(sampling)} {name}", total=len(prompts))
                part = record_part(decoder, drafter, prompt_ids, [p.id for p in prompts], generation,
                                   config.seed, bar, task)
                part.save_csv(part_path)
                write_atomically(key_path, key + "\n")
                parts.append(part)
                print(f"traces {part_path.name}: {len(part)} rows")
    traces = Traces.concat(parts)
    traces.save_csv(out / "traces.csv")

    # ---- 2. acceptance predictors: fitted on every row, scored out of fold (by prompt)
    edges = tuple(config.depth_edges)
    predictors = fit_predictors(traces, edges, config.min_bucket_rows, config.ema_lambda, config.ema_window,
                                config.isotonic_bins)
    predictors.save(out / "predictors.json")
    scores, predictions = evaluate_predictors(predictors, traces, config.folds, config.seed, edges,
                                              config.min_bucket_rows, config.isotonic_bins)
    plots = [reliability_diagram(oof, f"{name}, {mode}: out-of-fold predictions",
                                 out / f"reliability-{mode}-{name}.png")
             for (mode, name), oof in predictions.items() if oof.rows["parent_on_path"].any()]

    # ---- 3. latency predictors
    latency = None
    if config.latency:
        profile, latency = calibrate_latency(decoder, drafters, prompt_ids, config.latency_tokens,
                                             config.latency_repeats, config.latency_warmup, dtype,
                                             progress=sys.stderr.isatty(), row_kernels=config.latency_row_kernels)
        profile.save(out / "latency.json")

    # ---- 4. report
    from drafttrain.cli import device_name

    report = {"target": str(config.target), "prompts": str(config.prompts), "num_prompts": len(prompts),
              "folds": config.folds, "device": device_name(config.device, config.threads),
              "levels": spec.describe(), "trace_rows": len(traces), "acceptance": scores, "latency": latency,
              "plots": [str(path) for path in plots], "seconds": time.perf_counter() - started,
              "command": shlex.join(sys.argv)}
    write_atomically(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_atomically(out / "report.md", report_markdown(report))
    print(report_markdown(report))
    print(f"predictors written to {out / 'predictors.json'}" + (f", latency to {out / 'latency.json'}"
                                                                  if config.latency else ""))
    return report


if __name__ == "__main__":
    from drafttrain.cli import main as cli

    sys.exit(cli(["run", "calibrate", *sys.argv[1:]]))
