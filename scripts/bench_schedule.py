"""Scheduling on the reference target: DyTC against tuned baselines and the hindsight oracle, greedy
and at temperature 0.7, and the lossy speculative cascades' quality/speed curve.

1. Tune every baseline's fixed settings (k, k-matrix, tree size) and DyTC's (which levels it schedules,
   how deep and large its trees grow) on calibration prompts (the pipeline's: held-out files that
   prompts-dev was not cut from, or training text; never prompts-dev): each candidate runs
   interleaved with the others on the same prompts in one process;
   each method's two fastest then run again on as many further prompts, and the one with the most
   tokens/s over both rounds wins. Separately per mode.
2. `drafttrain eval` on prompts-dev with every method at its tuned settings, greedy (with the
   oracle bound) and at temperature 0.7.
3. `drafttrain eval` of speccascade-chow|diff|opt|token over alpha (greedy), for the curve.

Its inputs are either a cascade bundle (`--bundle`: the draft, levels, predictors and latency profile
of one pipeline run, e.g. `drafttrain run pipeline --config configs/pycode/pipeline.yaml`, with that
run's calibration prompts as `--tune-prompts-file`) or the outputs of scripts/bench_distill.py (the
draft), bench_search.py (levels.json) and bench_calibrate.py (predictors.json, latency.json,
calibration prompts). Replaces this script's section of docs/benchmarks.md; plots go to
docs/img/schedule/.

    python scripts/bench_schedule.py [--bundle DIR --tune-prompts-file FILE] [--num-prompts 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
from benchdoc import markers, replace_section

from drafttrain.cli import main as drafttrain_main

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path("../shared/reference")
IMAGES = Path("docs/img/schedule")
START, END = markers("bench_schedule")
BASELINES = ["sd-draft", "sd-self", "sd-ngram", "vc", "hc", "csd", "tree", "hf-heuristic"]


DYTC_LEVEL_SETS = ([], ["ngram"], ["draft0", "ngram"])  # every level; the n-gram drafter; it and the draft
DYTC_SIZES = ((16, 2.0), (32, 4.0), (64, 6.0))  # (max_depth, budget_factor): how deep and large a tree may grow


def dytc_candidates(out: Path) -> list[dict]:
    """DyTC's tuned settings, as scheduler.json files under `out`: which levels it schedules (a level
    that does not pay on this hardware only costs exploration), how large its trees may grow, and,
    with more than one level, whether a node may get another level's chain beside its first."""
    from drafttrain.bundle.scheduler import SchedulerSpec
    from drafttrain.scheduling.dytc import DyTCSettings

    out.mkdir(parents=True, exist_ok=True)
    options = []
    for level_set in DYTC_LEVEL_SETS:
        for max_depth, budget_factor in DYTC_SIZES:
            for alternatives in (False, True) if len(level_set) != 1 else (False,):
                settings = DyTCSettings(max_depth=max_depth, budget_factor=budget_factor, levels=list(level_set),
                                        alternatives=alternatives)
                path = out / f"{'-'.join(level_set) or 'all'}-d{max_depth}{'-alt' if alternatives else ''}.json"
                SchedulerSpec(dytc=settings).save(path)
                options.append({"scheduler": str(path)})
    return options


def described(option: dict) -> dict:
    """A candidate's settings for the tuning table: a scheduler file by its DyTC settings."""
    if "scheduler" not in option:
        return option
    dytc = json.loads(Path(option["scheduler"]).read_text())["dytc"]
    return {"levels": dytc["levels"] or "all", "max_depth": dytc["max_depth"], "budget_factor": dytc["budget_factor"],
            "alternatives": dytc.get("alternatives", False)}


def candidates(levels: list[dict], out: Path) -> dict[str, list[dict]]:
    """The settings tried for each baseline and for DyTC (hf-heuristic adapts k itself: its start is not
    tuned)."""
    specs = [json.dumps(level["spec"], separators=(",", ":")) for level in levels]
    return {
        "dytc": dytc_candidates(out / "dytc-candidates"),
        "sd-draft": [{"k_draft": k} for k in (1, 2, 3, 4)],
        "sd-self": [{"self_spec": spec, "k_self": k} for spec in specs for k in (1, 2, 3)],
        # every chain from 1 to 16: the verify's cost is not monotone in its length on a CPU (the BLAS,
        # and the row kernels calibrate picks, change with the row count), so a coarse grid could miss
        # the baseline's best chain
        "sd-ngram": [{"k_ngram": k} for k in range(1, 17)],
        "vc": [{"k_vc": k} for k in ([2, 4], [3, 4], [4, 4], [4, 8])],
        "hc": [{"k_hc": k} for k in ([1, 4], [1, 8], [2, 4], [2, 8])],
        "csd": [{"k_csd": k} for k in ([1, 8, 4], [2, 8, 4], [2, 4, 4], [3, 8, 4])],
        "tree": [{"tree_nodes": n, "tree_depth": d, "tree_ngram": g} for n, d, g in
                 ((4, 3, 8), (8, 4, 8), (16, 6, 8), (8, 4, 0))],
    }


FINALISTS = 2  # the best candidates of each method that a second round re-measures on fresh prompts


def interleaved(runners: dict, ids: list[list[int]], seed: int, label: str = "tuning") -> dict:
    """{key: (tokens, seconds)} of every runner over `ids`, interleaved per prompt (a rotating order, so
    that the machine's drift spreads over all of them), with a progress bar over the runs."""
    from rich.progress import Progress

    totals = {key: [0, 0.0] for key in runners}
    order = list(runners)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"{label}: {len(order)} runners x {len(ids)} prompts", total=len(order) * len(ids))
        for index, prompt in enumerate(ids):
            shift = (index * 7) % len(order)
            for key in order[shift:] + order[:shift]:
                output = runners[key].run(prompt, seed + index)
                totals[key][0] += len(output.tokens)
                totals[key][1] += output.seconds
                progress.advance(task)
    return totals


def speedups(totals: dict, ar_key) -> dict:
    """Each key's tokens/s over ar's on the same prompts."""
    ar_tokens, ar_seconds = totals[ar_key]
    return {key: tokens / seconds / (ar_tokens / ar_seconds) for key, (tokens, seconds) in totals.items()}


def finalists(speedup: dict, count: int = FINALISTS) -> list:
    """The `count` fastest keys of each method (keys are (method, settings))."""
    by_method: dict[str, list] = {}
    for key in sorted(speedup, key=speedup.get, reverse=True):
        by_method.setdefault(key[0], []).append(key)
    return [key for keys in by_method.values() for key in keys[:count]]


def tune(base: dict, temperature: float, prompts: Path, num_prompts: int, levels: list[dict], out: Path) -> dict:
    """Best settings per baseline and for DyTC on the tuning prompts, with every candidate's speedup over ar.

    Two rounds: every candidate on the first `num_prompts` prompts, then each method's FINALISTS best
    (and ar) on as many further prompts; a finalist is ranked by its speedup over both rounds. Close
    candidates differ by a few percent, which one round of a dozen prompts cannot tell apart on a shared
    machine."""
    from drafttrain.evaluation.config import EvalConfig
    from drafttrain.evaluation.methods import METHODS, EvalContext
    from drafttrain.evaluation.prompts import load_prompts

    config = EvalConfig(**{**base, "prompts": prompts, "temperature": temperature, "methods": ["ar"]})
    context = EvalContext(config)
    ar_key = ("ar", "{}")
    runners = {ar_key: METHODS["ar"].build(context)}
    for name, options in candidates(levels, out).items():
        for option in options:
            context.config = dataclasses.replace(config, **option)
            runners[(name, json.dumps(option))] = METHODS[name].build(context)
    context.config = config
    ids = [p.token_ids(context.tokenizer) for p in load_prompts(prompts, 2 * num_prompts, context.tokenizer)]
    first, second = ids[:num_prompts], ids[num_prompts:]
    for runner in runners.values():
        runner.run(ids[0], 0)  # warm-up
    mode = "greedy" if temperature == 0 else f"T={temperature}"
    totals = interleaved(runners, first, config.seed, f"tuning {mode}, round 1")
    speedup = speedups(totals, ar_key)
    final = [ar_key, *finalists({key: value for key, value in speedup.items() if key != ar_key})]
    if second:
        more = interleaved({key: runners[key] for key in final}, second, config.seed + len(first),
                           f"tuning {mode}, round 2")
        both = {key: [totals[key][0] + more[key][0], totals[key][1] + more[key][1]] for key in final}
        speedup.update(speedups(both, ar_key))
    results: dict[str, dict] = {}
    for (name, option), value in speedup.items():
        if name == "ar":
            continue
        entry = results.setdefault(name, {"tried": [], "best": None, "best_speedup": 0.0})
        is_final = (name, option) in final
        entry["tried"].append({"settings": json.loads(option), "speedup": value, "finalist": is_final})
        if is_final and value > entry["best_speedup"]:
            entry["best"], entry["best_speedup"] = json.loads(option), value
    return results


def flag_args(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
        args += [f"--{key.replace('_', '-')}", text]
    return args


def run_eval(args: list[str]) -> dict:
    out = Path(args[args.index("--out") + 1])
    if drafttrain_main(["eval", *args]) != 0:
        raise SystemExit(f"drafttrain eval failed: {shlex.join(args)}")
    return json.loads((out / "report.json").read_text())


def level_acceptance(entry: dict) -> str:
    stats = entry.get("stats") or {}
    drafted, accepted = stats.get("drafted", {}), stats.get("accepted", {})
    return ", ".join(f"{level} {accepted.get(level, 0) / count:.0%} of {count}"
                     for level, count in sorted(drafted.items()) if count) or "-"


def methods_table(report: dict, baselines: list[str]) -> tuple[list[str], dict]:
    methods = report["methods"]
    best_name = max((name for name in baselines if name in methods), key=lambda n: methods[n]["tokens_per_s"])
    oracle = methods.get("oracle")
    lines = ["| method | tokens/s | vs ar [95% CI] | vs best baseline | decode tokens/s (vs best) | of oracle | "
             "tokens/forward | acceptance per level | lossless |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    best_decode = methods[best_name]["tokens_per_s_decode"]
    for name, entry in methods.items():
        ci = entry["speedup_ci95"]
        vs_best = entry["tokens_per_s"] / methods[best_name]["tokens_per_s"]
        of_oracle = f"{entry['speedup_vs_ar'] / oracle['speedup_vs_ar']:.0%}" if oracle and name != "oracle" else "-"
        tokens = "-" if entry["mean_accepted_tokens"] is None else f"{entry['mean_accepted_tokens']:.2f}"
        lossless = {True: "yes", False: "**NO**", None: "n/a (sampling)"}[entry["lossless"]]
        label = f"{name} (bound)" if name == "oracle" else name
        decode = entry.get("tokens_per_s_decode")
        decode_text = "-" if decode is None else f"{decode:.1f} ({decode / best_decode:.2f}x)"
        lines.append(f"| {label} | {entry['tokens_per_s']:.1f} | {entry['speedup_vs_ar']:.2f}x "
                     f"[{ci[0]:.2f}-{ci[1]:.2f}] | {vs_best:.2f}x | {decode_text} | "
                     f"{of_oracle} | {tokens} | "
                     f"{level_acceptance(entry)} | {lossless} |")
    dytc = methods.get("dytc")
    summary = {"best_baseline": best_name,
               "dytc_vs_best": dytc["tokens_per_s"] / methods[best_name]["tokens_per_s"] if dytc else None,
               "dytc_vs_best_decode": dytc["tokens_per_s_decode"] / best_decode if dytc else None,
               "dytc_of_oracle": dytc["speedup_vs_ar"] / oracle["speedup_vs_ar"] if dytc and oracle else None}
    return lines, summary


def tuning_lines(tuned: dict) -> list[str]:
    lines = ["| method | tuned settings | speedup vs ar on the tuning prompts | candidates |",
             "| --- | --- | ---: | ---: |"]
    for name, entry in tuned.items():
        lines.append(f"| {name} | `{json.dumps(described(entry['best']))}` | {entry['best_speedup']:.2f}x | "
                     f"{len(entry['tried'])} |")
    return lines


def bundle_inputs(bundle: Path) -> dict[str, Path]:
    """The parts of a cascade bundle directory the evaluation reads (its single draft model)."""
    drafts = sorted((bundle / "drafts").iterdir()) if (bundle / "drafts").is_dir() else []
    if len(drafts) != 1:
        raise SystemExit(f"{bundle}: expected one draft model under drafts/, found {len(drafts)}")
    parts = {"draft": drafts[0], "levels": bundle / "levels.json", "predictors": bundle / "predictors.json",
             "latency": bundle / "latency.json"}
    missing = [str(path) for path in parts.values() if not path.exists()]
    if missing:
        raise SystemExit(f"{bundle} is not a complete bundle: missing {', '.join(missing)}")
    return parts


def calibrated_inputs(options: argparse.Namespace) -> dict[str, Path]:
    calibrated = Path(options.calibrated)
    return {"draft": Path(options.draft), "levels": Path(options.levels),
            "predictors": calibrated / "run" / "predictors.json", "latency": calibrated / "run" / "latency.json"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=40)
    parser.add_argument("--tune-prompts", type=int, default=12, help="calibration prompts each candidate is tuned on "
                        "(fewer made the choices move between runs); each method's finalists run on as many more")
    parser.add_argument("--lossy-prompts", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-schedule"))
    parser.add_argument("--draft", default="outputs/bench-distill/L1-ce-corpus/draft")
    parser.add_argument("--levels", default="outputs/bench-search/tpe/levels.json")
    parser.add_argument("--calibrated", default="outputs/bench-calibrate")
    parser.add_argument("--bundle", type=Path, help="take the draft, levels, predictors and latency from this "
                        "bundle directory instead of --draft, --levels and --calibrated")
    parser.add_argument("--tune-prompts-file", type=Path, help="calibration prompts to tune the baselines on "
                        "(default: calibration.jsonl of --calibrated); never the evaluation prompts")
    options = parser.parse_args()
    os.chdir(REPO)
    torch.set_num_threads(options.threads)
    started = time.perf_counter()
    inputs = bundle_inputs(options.bundle) if options.bundle else calibrated_inputs(options)
    tune_prompts = options.tune_prompts_file or Path(options.calibrated) / "calibration.jsonl"
    levels = json.loads(inputs["levels"].read_text())["levels"]
    base = {"target": REFERENCE / "pycode-12L", **inputs, "threads": options.threads}
    common = ["--target", str(base["target"]), "--prompts", str(REFERENCE / "prompts-dev.jsonl"), "--draft",
              str(base["draft"]), "--levels", str(base["levels"]), "--predictors", str(base["predictors"]),
              "--latency", str(base["latency"]), "--max-new-tokens", "128", "--threads", str(options.threads)]
    reports, tuned, commands = {}, {}, []
    for mode, temperature in (("greedy", 0.0), ("t0.7", 0.7)):
        tuned[mode] = tune(base, temperature, tune_prompts, options.tune_prompts, levels, options.out / mode)
        settings = {}
        for entry in tuned[mode].values():
            settings.update(entry["best"])
        methods = ["ar", "hf", *BASELINES, "dytc"] + (["oracle"] if temperature == 0 else [])
        args = [*common, "--methods", ",".join(methods), "--temperature", str(temperature),
                "--num-prompts", str(options.num_prompts), "--out", str(options.out / mode), *flag_args(settings)]
        commands.append("drafttrain eval " + shlex.join(args))
        reports[mode] = run_eval(args)
    k_cascade = tuned["greedy"]["sd-draft"]["best"]["k_draft"]
    lossy_args = [*common, "--methods", "ar,sd-draft,speccascade-chow,speccascade-diff,speccascade-opt,"
                  "speccascade-token", "--alphas", "0,0.1,0.3,0.5", "--k-draft", str(k_cascade), "--k-cascade",
                  str(k_cascade), "--num-prompts", str(options.lossy_prompts), "--out", str(options.out / "lossy")]
    commands.append("drafttrain eval " + shlex.join(lossy_args))
    reports["lossy"] = run_eval(lossy_args)
    (options.out / "tuned.json").write_text(json.dumps(tuned, indent=2) + "\n")
    shutil.rmtree(IMAGES, ignore_errors=True)
    IMAGES.mkdir(parents=True)
    curve = Path(shutil.copy(options.out / "lossy" / "lossy-curve.png", IMAGES / "lossy-curve.png"))
    minutes = (time.perf_counter() - started) / 60
    replace_section("bench_schedule", "Scheduling: DyTC, the baselines, the oracle, lossy cascades (issue 6)",
                    section(reports, tuned, commands, curve, minutes, sys.argv[1:],
                            options.tune_prompts, tune_prompts))
    print(f"docs/benchmarks.md updated ({minutes:.1f} min)")
    return 0


def lossy_table(report: dict) -> list[str]:
    lines = ["| method | vs ar | exact match with ar | matching prefix | target log-lik / token |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, entry in report["methods"].items():
        lines.append(f"| {name} | {entry['speedup_vs_ar']:.2f}x | {entry['exact_match_rate']:.0%} | "
                     f"{entry['matching_prefix']:.0%} | {entry['target_loglik']:.3f} |")
    return lines


def section(reports: dict, tuned: dict, commands: list[str], curve: Path, minutes: float, argv: list[str],
            tune_prompts: int, tune_file: Path) -> str:
    greedy_table, greedy = methods_table(reports["greedy"], BASELINES)
    sampling_table, sampling = methods_table(reports["t0.7"], BASELINES)
    lines = [START, "", f"Measured {datetime.date.today()} on {reports['greedy']['device']} by "
             f"`python scripts/bench_schedule.py {shlex.join(argv)}` ({minutes:.0f} min in all), which ran:", "",
             "```", *commands, "```", "",
             f"Greedy, {reports['greedy']['prompts']} prompts of prompts-dev, 128 new tokens. Best baseline: "
             f"`{greedy['best_baseline']}`; dytc is {greedy['dytc_vs_best']:.2f}x its tokens/s (goal >= 1.25x; "
             f"{greedy['dytc_vs_best_decode']:.2f}x with the prefill, the same for every method, left out) and "
             f"reaches {greedy['dytc_of_oracle']:.0%} of the oracle's speedup (goal >= 90%).", "",
             *greedy_table, "",
             f"Sampling at temperature 0.7 (no oracle: there is no single hindsight output). Best baseline: "
             f"`{sampling['best_baseline']}`; dytc is {sampling['dytc_vs_best']:.2f}x its tokens/s "
             f"({sampling['dytc_vs_best_decode']:.2f}x without the prefill).", "",
             *sampling_table, "",
             (f"Baseline and DyTC settings tuned on the calibration prompts in `{tune_file}` (greedy; DyTC's "
              "candidates: which levels it schedules, its trees' max_depth and budget_factor, and whether a node may "
              "get another level's chain beside its first). Every candidate "
              f"ran on {tune_prompts} prompts, each method's {FINALISTS} fastest on {tune_prompts} more; the "
              "speedup shown is the winner's over both rounds:"), "",
             *tuning_lines(tuned["greedy"]), "", "And at temperature 0.7:", "", *tuning_lines(tuned["t0.7"]), "",
             f"Lossy speculative cascades (greedy, {reports['lossy']['prompts']} prompts; the draft model drafts "
             "for every rule):", "", *lossy_table(reports["lossy"]), "",
             f"![lossy quality/speed curve]({curve.relative_to('docs')})", "", END]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
