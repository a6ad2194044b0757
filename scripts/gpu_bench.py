"""The one-command GPU benchmark (issue 8): the pipeline on one NVIDIA GPU, the memory-bandwidth
roofline of `ar`, and the section "GPU benchmark (issue 8)" of docs/benchmarks.md.

    python scripts/gpu_bench.py [--target DIR] [--out DIR]

Stops at once, with status 2, when torch sees no CUDA device. Otherwise runs `drafttrain run pipeline
--config configs/gpu/pipeline.yaml` (a ~98M-parameter target pretrained on this Python's standard
library, or the checkpoint of --target DIR; a 1-layer draft; self-draft levels; calibration; the
bundle; and the greedy bf16 evaluation of ar, hf, hf-assisted, sd-draft, csd, tree and dytc, all on
CUDA; finished stages are reused) and prints each stage's time. Then it measures the GPU's
device-to-device copy bandwidth with CUDA events and prices `ar` against the roofline: every weight
of the target plus its KV cache read once per new token. Prints and writes dytc's speedup over `hf`,
whether every method's output matched `ar`'s, and the roofline to gpu-bench.json and gpu-bench.md in
the output folder (default outputs/gpu-bench) and to docs/benchmarks.md. Exits 1 when a method was
not lossless.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import markers, replace_section

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/gpu/pipeline.yaml"
DEFAULT_OUT = Path("outputs/gpu-bench")
COPY_BYTES = 1 << 30  # 1 GiB per timed copy: far beyond any cache
COPY_REPEATS = 20
NO_CUDA = ("this benchmark needs an NVIDIA GPU, and torch sees no CUDA device here ({why}); run the CPU "
           "pipeline with `drafttrain quickstart` (or `drafttrain run pipeline --config "
           "configs/pycode/pipeline.yaml`) instead")


# ---------------------------------------------------------------------------------------------
# The roofline arithmetic (pure functions; bytes, tokens and seconds)
# ---------------------------------------------------------------------------------------------


def copy_bandwidth(size_bytes: int, repeats: int, seconds: float) -> float:
    """Bytes per second of `repeats` copies of `size_bytes`: each copy reads and writes them once."""
    return 2 * size_bytes * repeats / seconds


def weight_bytes_read(shapes: dict[str, list[int]], bytes_per_value: int) -> int:
    """Bytes of weights one decode step reads: every stored tensor once, except the input embedding
    when a separate output layer is stored (a step reads one row of it, which is left out)."""
    untied = any(name.endswith("lm_head.weight") for name in shapes)
    total = 0
    for name, shape in shapes.items():
        if untied and name.endswith("embed_tokens.weight"):
            continue
        count = 1
        for size in shape:
            count *= size
        total += count * bytes_per_value
    return total


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, bytes_per_value: int) -> int:
    """Bytes of KV cache (keys and values, every layer) that one cached position holds."""
    return 2 * num_layers * num_kv_heads * head_dim * bytes_per_value


def mean_context_length(prompt_lengths: list[int], new_tokens: list[int]) -> float:
    """Mean number of cached positions a new token attends to, over every new token of every prompt
    (the i-th new token of a prompt of p tokens attends to p + i of them)."""
    attended = sum(n * p + n * (n - 1) / 2 for p, n in zip(prompt_lengths, new_tokens))
    return attended / sum(new_tokens)


def roofline_tokens_per_s(weight_bytes: int, kv_bytes_per_token: int, context_length: float,
                          bandwidth: float) -> float:
    """The most tokens/s one-token decoding can reach when each token reads all weights and the KV
    cache of `context_length` positions at `bandwidth` bytes/s."""
    return bandwidth / (weight_bytes + kv_bytes_per_token * context_length)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def cuda_problem() -> str | None:
    """Why this machine cannot run the benchmark, or None when torch sees a CUDA device."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return "torch.cuda.is_available() is False: no NVIDIA GPU or driver is visible"


def measure_copy_bandwidth(size_bytes: int = COPY_BYTES, repeats: int = COPY_REPEATS) -> float:
    """Device-to-device copy bandwidth in bytes/s, timed with CUDA events after one warm-up copy."""
    source = torch.empty(size_bytes, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        target.copy_(source)
    end.record()
    torch.cuda.synchronize()
    return copy_bandwidth(size_bytes, repeats, start.elapsed_time(end) / 1000)


def stored_weight_shapes(target: Path) -> dict[str, list[int]]:
    """Every tensor's shape in the target's safetensors files, read from their JSON headers (the
    first 8 bytes give the header's length)."""
    shapes = {}
    for path in sorted(target.glob("*.safetensors")):
        with path.open("rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        shapes.update({name: entry["shape"] for name, entry in header.items() if name != "__metadata__"})
    if not shapes:
        raise SystemExit(f"error: no *.safetensors file in the target {target}: the roofline needs its weights")
    return shapes


def kv_shape(target: Path) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) from the target's config.json."""
    config = json.loads((target / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return config["num_hidden_layers"], config.get("num_key_value_heads") or heads, head_dim


def prompt_lengths(target: Path, prompts: Path, count: int) -> list[int]:
    """Token counts of the first `count` evaluation prompts, tokenized as the evaluation did."""
    from drafttrain.evaluation.prompts import load_prompts
    from drafttrain.runtime import load_tokenizer

    tokenizer = load_tokenizer(target)
    return [len(prompt.token_ids(tokenizer)) for prompt in load_prompts(prompts, count, tokenizer)]


def roofline(summary: dict, report: dict, bytes_per_value: int, bandwidth: float) -> dict:
    """`ar`'s tokens/s beside the bandwidth roofline of the target it decoded."""
    target = Path(summary["target"])
    ar = report["methods"]["ar"]
    prompts = next(Path(s["dir"]) for s in summary["stages"] if s["stage"] == "prompts") / "eval.jsonl"
    context = mean_context_length(prompt_lengths(target, prompts, report["prompts"]),
                                  [row["tokens"] for row in ar["per_prompt"]])
    weights = weight_bytes_read(stored_weight_shapes(target), bytes_per_value)
    kv_per_token = kv_bytes_per_token(*kv_shape(target), bytes_per_value)
    bound = roofline_tokens_per_s(weights, kv_per_token, context, bandwidth)
    ar_decode = ar["tokens_per_s_decode"]  # ar runs in our engine, which times prefill apart
    return {"weight_bytes": weights, "kv_bytes_per_token": kv_per_token, "mean_context_length": context,
            "copy_bandwidth_bytes_per_s": bandwidth, "roofline_tokens_per_s": bound,
            "ar_decode_tokens_per_s": ar_decode, "ar_fraction_of_roofline": ar_decode / bound}


# ---------------------------------------------------------------------------------------------
# The pipeline, the verdicts and the section of docs/benchmarks.md
# ---------------------------------------------------------------------------------------------


def pipeline_overrides(target: Path | None, out: Path) -> list[str]:
    overrides = [f"out={json.dumps(str(out))}"]
    if target is not None:
        overrides.append(f"target={json.dumps(str(target))}")
    return overrides


def run_pipeline(overrides: list[str]) -> None:
    from drafttrain.cli import main as drafttrain_main

    command = ["run", "pipeline", "--config", CONFIG, *overrides]
    print("+ drafttrain " + shlex.join(command), flush=True)
    if drafttrain_main(command) != 0:
        raise SystemExit(f"error: the pipeline failed: drafttrain {shlex.join(command)}")


def eval_bytes_per_value(overrides: list[str]) -> int:
    """Bytes per weight in the evaluation's dtype (configs/gpu/eval.yaml: bfloat16, 2)."""
    from drafttrain.config import load_config
    from drafttrain.evaluation.methods import DTYPES
    from drafttrain.pipeline.config import CHECK_WIRING, PipelineConfig

    settings = load_config(PipelineConfig, CONFIG, overrides).eval.build("eval", CHECK_WIRING["eval"])
    return DTYPES[settings.dtype].itemsize


def not_lossless(report: dict) -> list[str]:
    """Methods whose greedy output differed from ar's on some prompt."""
    return [name for name, entry in report["methods"].items() if entry["lossless"] is False]


def stage_lines(summary: dict) -> list[str]:
    lines = ["| stage | ran or reused | seconds |", "| --- | --- | ---: |"]
    return lines + [f"| {s['stage']} | {'reused' if s['cached'] else 'ran'} | {s['seconds']:.0f} |"
                    for s in summary["stages"]]


def method_lines(report: dict) -> list[str]:
    lines = ["| method | tokens/s | vs ar | vs hf | tokens/forward | lossless |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, entry in report["methods"].items():
        lossless = {True: "yes", False: "**NO**", None: "n/a"}[entry["lossless"]]
        lines.append(f"| {name} | {entry['tokens_per_s']:.1f} | {_number(entry['speedup_vs_ar'], 'x')} | "
                     f"{_number(entry['speedup_vs_hf'], 'x')} | {_number(entry['mean_accepted_tokens'])} | "
                     f"{lossless} |")
    return lines


def _number(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def roofline_text(bound: dict) -> str:
    return (f"Memory-bandwidth roofline of `ar`: one new token reads the target's weights "
            f"({bound['weight_bytes'] / 1e6:.0f} MB) and its KV cache ({bound['kv_bytes_per_token'] / 1e3:.1f} kB "
            f"per position, {bound['mean_context_length']:.0f} positions on average), at the measured copy "
            f"bandwidth of {bound['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s (1 GiB copied {COPY_REPEATS} times "
            f"on the GPU, read plus write, timed with CUDA events): {bound['roofline_tokens_per_s']:.0f} tokens/s. "
            f"`ar` decoded {bound['ar_decode_tokens_per_s']:.1f} tokens/s (prefill excluded), "
            f"{bound['ar_fraction_of_roofline']:.2%} of that roofline.")


def verdict_text(report: dict) -> str:
    dytc, broken = report["methods"]["dytc"], not_lossless(report)
    lossless = ("every method's greedy output matched `ar`'s on every prompt" if not broken else
                f"**not lossless**: {', '.join(broken)} differed from `ar` on some prompt")
    return (f"dytc: {dytc['speedup_vs_hf']:.2f}x `hf` greedy ({dytc['speedup_vs_ar']:.2f}x `ar`); "
            f"lossless: {lossless}.")


def section(command: str, device: str, summary: dict, report: dict, bound: dict, seconds: float) -> str:
    start, end = markers("gpu_bench")
    measured = (f"Measured {time.strftime('%Y-%m-%d')} on {device} (Python {platform.python_version()}) by "
                f"`{command}` ({seconds / 60:.1f} min; a stage reused from an earlier run counts its original "
                f"time). Pipeline: `{CONFIG}`.")
    evaluated = (f"Greedy evaluation, {report['prompts']} prompts, {report['max_new_tokens']} new tokens "
                 f"(`{summary['report']}`):")
    lines = [measured, "", *stage_lines(summary), "", evaluated, "", *method_lines(report), "",
             roofline_text(bound), "", verdict_text(report)]
    return start + "\n" + "\n".join(lines) + "\n" + end


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, help="your target checkpoint directory (skips pretraining)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    problem = cuda_problem()
    if problem is not None:
        print("error: " + NO_CUDA.format(why=problem), file=sys.stderr)
        return 2
    started, command = time.perf_counter(), shlex.join(["python", "scripts/gpu_bench.py", *argv])
    target = args.target.resolve() if args.target is not None else None
    out = (args.out if args.out.is_absolute() else Path.cwd() / args.out).resolve()
    os.chdir(REPO)  # the pipeline config names its stage configs relative to the repository root
    overrides = pipeline_overrides(target, out)
    run_pipeline(overrides)
    summary = json.loads((out / "pipeline.json").read_text())
    report = json.loads(Path(summary["report"]).with_name("report.json").read_text())
    bound = roofline(summary, report, eval_bytes_per_value(overrides), measure_copy_bandwidth())
    device = f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    text = section(command, device, summary, report, bound, time.perf_counter() - started)
    result = {"device": device, "command": command, "stages": summary["stages"], "report": summary["report"],
              "roofline": bound, "dytc_speedup_vs_hf": report["methods"]["dytc"]["speedup_vs_hf"],
              "not_lossless": not_lossless(report)}
    (out / "gpu-bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "gpu-bench.md").write_text(text + "\n")
    replace_section("gpu_bench", "GPU benchmark (issue 8)", text)
    print("\n" + "\n".join(stage_lines(summary)) + "\n\n" + roofline_text(bound) + "\n" + verdict_text(report))
    print(f"written: {out / 'gpu-bench.json'}, {out / 'gpu-bench.md'}, docs/benchmarks.md (section gpu_bench)")
    return 1 if result["not_lossless"] else 0


if __name__ == "__main__":
    sys.exit(main())
