"""Turn measured runs into report.json (the machine-readable shape scripts rely on) and report.md.

Speedups are ratios of tokens/s measured in the same run; their 95% interval comes from a
bootstrap over prompts. `lossless` compares every prompt's tokens with `ar`'s under greedy
decoding: a mismatch is a bug, never a result, except for the lossy runs of speculative cascades
(speccascade-*@alpha with alpha > 0), whose `lossless` is null. Every method also reports its
quality against the target (`drafttrain.evaluation.quality`): `exact_match_rate`,
`matching_prefix` and `target_loglik`; lossy runs name their `deferral` rule and alpha.
`per_prompt` lists each prompt's new tokens and seconds (with the prompt's id when known), and an
engine method's `stats` carry its drafted/accepted/reached counts per draft level and depth
(`drafttrain.decoding.stats`). report.md holds the methods table and links the plots
(`drafttrain.evaluation.plots`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from drafttrain.decoding.stats import RunStats
from drafttrain.evaluation.harness import MethodRuns
from drafttrain.evaluation.plots import plot_files
from drafttrain.io import write_atomically

BOOTSTRAP_SAMPLES = 2000


def _totals(runs: MethodRuns) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.array([len(o.tokens) for o in runs.outputs], dtype=float)
    seconds = np.array([o.seconds for o in runs.outputs], dtype=float)
    return tokens, seconds


def speedup_interval(runs: MethodRuns, baseline: MethodRuns, seed: int = 0) -> list[float]:
    """95% bootstrap interval (over prompts) of tokens/s(method) / tokens/s(baseline)."""
    tokens, seconds = _totals(runs)
    base_tokens, base_seconds = _totals(baseline)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(tokens), size=(BOOTSTRAP_SAMPLES, len(tokens)))
    ratios = (tokens[picks].sum(1) / seconds[picks].sum(1)) / (base_tokens[picks].sum(1) / base_seconds[picks].sum(1))
    low, high = np.percentile(ratios, [2.5, 97.5])
    return [float(low), float(high)]


def tokens_per_s(runs: MethodRuns) -> float:
    tokens, seconds = _totals(runs)
    return float(tokens.sum() / seconds.sum())


def _lossy(runs: MethodRuns) -> bool:
    return runs.deferral is not None and runs.deferral.alpha > 0


def _lossless(runs: MethodRuns, reference: MethodRuns | None, greedy: bool) -> bool | None:
    if not greedy or reference is None or _lossy(runs):
        return None
    return all(o.tokens == r.tokens for o, r in zip(runs.outputs, reference.outputs))


def per_prompt(runs: MethodRuns, prompt_ids: list[str] | None = None) -> list[dict]:
    """Each prompt's new tokens and seconds, in prompt order; `id` is None when ids are not known."""
    if prompt_ids is not None and len(prompt_ids) != len(runs.outputs):
        raise ValueError(f"{len(prompt_ids)} prompt ids for {len(runs.outputs)} runs")
    ids = prompt_ids or [None] * len(runs.outputs)
    return [{"id": prompt_id, "tokens": len(o.tokens), "seconds": float(o.seconds)}
            for prompt_id, o in zip(ids, runs.outputs)]


def method_entry(runs: MethodRuns, all_runs: dict[str, MethodRuns], greedy: bool,
                 prompt_ids: list[str] | None = None) -> dict:
    ar, hf = all_runs.get("ar"), all_runs.get("hf")
    speed = tokens_per_s(runs)
    stats = RunStats()
    engine = runs.outputs[0].stats is not None
    for output in runs.outputs:
        if output.stats is not None:
            stats.merge(output.stats)
    decode_seconds = sum(o.seconds - o.prefill_seconds for o in runs.outputs) if engine else None
    new_tokens = sum(len(o.tokens) for o in runs.outputs)
    quality = runs.quality
    deferral = runs.deferral
    return {
        "tokens_per_s": speed,
        "speedup_vs_ar": speed / tokens_per_s(ar) if ar else None,
        "speedup_vs_hf": speed / tokens_per_s(hf) if hf else None,
        "speedup_ci95": speedup_interval(runs, ar) if ar else None,
        "mean_accepted_tokens": stats.mean_accepted_tokens if engine else None,
        "acceptance_rate": stats.acceptance_rate if engine else None,
        "target_forwards": stats.target_forwards if engine else None,
        "new_tokens": new_tokens,
        "lossless": _lossless(runs, ar, greedy),
        "seconds": float(sum(o.seconds for o in runs.outputs)),
        "tokens_per_s_decode": new_tokens / decode_seconds if decode_seconds else None,
        "stats": stats.to_json() if engine else None,
        "exact_match_rate": quality.exact_match_rate if quality else None,
        "matching_prefix": quality.matching_prefix if quality else None,
        "target_loglik": quality.target_loglik if quality else None,
        "deferral": {"rule": deferral.name, "alpha": deferral.alpha} if deferral else None,
        "per_prompt": per_prompt(runs, prompt_ids),
    }


def build_report(config, device_name: str, num_prompts: int, runs: dict[str, MethodRuns], command: str,
                 prompt_ids: list[str] | None = None) -> dict:
    """The report of every method's runs; `prompt_ids` (in prompt order) name the per-prompt rows."""
    greedy = config.temperature == 0.0
    return {
        "device": device_name,
        "target": str(config.target),
        "prompts": num_prompts,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "methods": {name: method_entry(method_runs, runs, greedy, prompt_ids) for name, method_runs in runs.items()},
        "command": command,
    }


def _fmt(value, spec: str = ".2f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def report_markdown(report: dict) -> str:
    lines = [
        f"# drafttrain eval: {report['target']}",
        "",
        (f"device: {report['device']}; prompts: {report['prompts']}; max_new_tokens: "
         f"{report['max_new_tokens']}; temperature: {report['temperature']}"),
        "",
        f"command: `{report['command']}`",
        "",
        ("| method | tokens/s | vs ar | 95% CI | vs hf | tokens/forward | acceptance | target forwards | lossless "
         "| exact match | matching prefix | target loglik |"),
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, entry in report["methods"].items():
        ci = entry["speedup_ci95"]
        lines.append(
            f"| {name} | {entry['tokens_per_s']:.1f} | {_fmt(entry['speedup_vs_ar'])}x | "
            f"{'-' if ci is None else f'{ci[0]:.2f}-{ci[1]:.2f}'} | {_fmt(entry['speedup_vs_hf'])}x | "
            f"{_fmt(entry['mean_accepted_tokens'])} | {_fmt(entry['acceptance_rate'], '.1%')} | "
            f"{_fmt(entry['target_forwards'], 'd')} | {_lossless_cell(entry)} | "
            f"{_fmt(entry.get('exact_match_rate'), '.0%')} | {_fmt(entry.get('matching_prefix'), '.0%')} | "
            f"{_fmt(entry.get('target_loglik'), '.3f')} |")
    plots = plot_files(report)
    if plots:
        lines += ["", "## Plots", ""]
        for name, caption in plots:
            lines += [f"- [{name}]({name}): {caption}"]
        for name, _ in plots:
            lines += ["", f"![{name}]({name})"]
    return "\n".join(lines) + "\n"


def _lossless_cell(entry: dict) -> str:
    deferral = entry.get("deferral")
    if deferral and deferral["alpha"] > 0:
        return "n/a (lossy)"
    return _fmt(entry["lossless"], "", "n/a (sampling)")


def write_report(report: dict, out_dir: Path) -> None:
    write_atomically(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomically(out_dir / "report.md", report_markdown(report))
