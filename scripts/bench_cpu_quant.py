"""Which reduced-precision kernels pay on CPU for a real target's shapes, and what the views cost.

Two tables on the target (default: SmolLM2-135M-Instruct from scripts/reference_smollm2.py), written
to this script's section of docs/benchmarks.md with the command:

1. Kernels: the four block products of every layer (qkv, o, gate+up, down; each layer's own
   weights, so they stream from memory as in a forward) and the LM head, at 1, 4 and 16 rows,
   under each formulation: float32 `F.linear` over input-major weights (the runtime's default),
   oneDNN over packed float32 weights, bf16 `F.linear`, fbgemm fp16 (weight-only) and int8 (W8A8),
   and PyTorch's generic weight-only int8 and int4 ops. A kernel is used by the views only where it
   is faster than float32 here.
2. Views: one forward after 256 cached tokens of the target and of each reduced-precision view,
   and its cost as a fraction of the target's (the target with the row kernels tuned for it).

    python scripts/bench_cpu_quant.py [--target DIR] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from benchdoc import markers, replace_section

from drafttrain.calibration.latency import cpu_model_name, model_forward_call, robust_average, tune_row_kernels
from drafttrain.runtime import load_model
from drafttrain.runtime.cpu_quant import pack_weight, packed_linear
from drafttrain.runtime.row_kernels import onednn_available, onednn_linear, pack_onednn
from drafttrain.runtime.views import SelfDraftView

REPO = Path(__file__).resolve().parents[1]
START, END = markers("bench_cpu_quant")
ROWS = (1, 4, 16)
CONTEXT = 256


def _int8pack(weight):
    scale = weight.abs().amax(1) / 127
    quantized = (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return lambda x: torch.ops.aten._weight_int8pack_mm(x, quantized, scale)


def _int4pack(weight, group=32):
    rows, cols = weight.shape
    grouped = weight.reshape(rows, cols // group, group)
    low, high = grouped.amin(-1), grouped.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-8)
    quantized = ((grouped - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).reshape(rows, cols)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(quantized, 1)
    scales_zeros = torch.stack([scale.t(), (low + 8 * scale).t()], -1).contiguous()
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, scales_zeros)


def kernel_makers() -> dict:
    """name -> (weight [out, in] -> (x [rows, in] -> x @ weight.T))."""
    makers = {
        "float32 (default)": lambda w: (lambda wt: lambda x: F.linear(x, wt))(w.t().contiguous().t()),
        "bf16 F.linear": lambda w: (lambda wb: lambda x: F.linear(x.bfloat16(), wb))(w.bfloat16()),
        "fbgemm fp16": lambda w: (lambda p: lambda x: packed_linear(x, p, "fp16"))(pack_weight(w, None, "fp16")),
        "fbgemm int8 (W8A8)": lambda w: (lambda p: lambda x: packed_linear(x, p, "int8"))(pack_weight(w, None, "int8")),
        "aten int8 weight-only": _int8pack,
        "aten int4 weight-only": _int4pack,
    }
    if onednn_available():
        makers["oneDNN float32"] = lambda w: (lambda p: lambda x: onednn_linear(x, p, None))(pack_onednn(w))
    return makers


def _time(functions, inputs, repeats: int) -> float:
    """Seconds for one pass over `functions` (each with its input), robust average of `repeats`."""
    for function, x in zip(functions, inputs):
        function(x)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for function, x in zip(functions, inputs):
            function(x)
        samples.append(time.perf_counter() - started)
    return robust_average(samples)


def kernel_table(model, repeats: int) -> list[tuple[str, dict]]:
    """[(kernel, {(part, rows): ms})] for part in blocks (all layers' products) and head."""
    blocks = [layer.weight.detach().contiguous() for block in model.layers
              for layer in (block.attn.wqkv, block.attn.wo, block.mlp.w13, block.mlp.w2)]
    head = [model.lm_head.weight.detach().contiguous()]
    results = []
    for name, make in kernel_makers().items():
        timings = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for part, weights in (("blocks", blocks), ("head", head)):
                try:
                    functions = [make(weight) for weight in weights]
                except RuntimeError as error:  # e.g. int4 packing wants out features divisible by 16
                    print(f"{name}: {part} not timed ({error})", file=sys.stderr)
                    continue
                for rows in ROWS:
                    if name.startswith("aten") and rows > 4:
                        continue  # tens of seconds a pass: slower than float32 at 1 and 4 rows already
                    inputs = [torch.randn(rows, weight.shape[1]) for weight in weights]
                    timings[part, rows] = 1000 * _time(functions, inputs, repeats)
        print(f"{name}: " + ", ".join(f"{part}@{rows} {ms:.1f} ms" for (part, rows), ms in timings.items()),
              file=sys.stderr)
        results.append((name, timings))
    return results


def views(num_layers: int) -> dict[str, SelfDraftView]:
    every = tuple(range(num_layers))
    return {"int8 layers + int8 head": SelfDraftView(act_quant=tuple((i, "int8") for i in every), head_quant="int8"),
            "fp16 layers + fp16 head": SelfDraftView(act_quant=tuple((i, "fp16") for i in every), head_quant="fp16"),
            "int8 layers, float32 head": SelfDraftView(act_quant=tuple((i, "int8") for i in every)),
            "float32 layers, int8 head": SelfDraftView(head_quant="int8")}


def view_table(model, repeats: int) -> tuple[float, dict[int, str], list[tuple[str, float]]]:
    """(target ms, its tuned plan, [(view, ms)]): one-token drafting forwards after CONTEXT tokens."""
    plan = tune_row_kernels(model, model_forward_call(model), range(1, 17), CONTEXT)
    target_call = model_forward_call(model)
    target_ms = 1000 * robust_average([_seconds(target_call) for _ in range(repeats + 1)][1:])
    rows = []
    for name, view in views(model.args.num_layers).items():
        call = model_forward_call(model, view, logits_rows=slice(-1, None))
        rows.append((name, 1000 * robust_average([_seconds(call) for _ in range(repeats + 1)][1:])))
        print(f"{name}: {rows[-1][1]:.1f} ms ({rows[-1][1] / target_ms:.2f} of the target)", file=sys.stderr)
    return target_ms, plan, rows


def _seconds(call) -> float:
    started = time.perf_counter()
    call(1, CONTEXT)
    return time.perf_counter() - started


def section(command: str, kernels, target_ms: float, plan: dict[int, str], view_rows, target: Path) -> str:
    names = [f"{part} x{rows}" for part in ("blocks", "head") for rows in ROWS]
    lines = [START, f"Command: `{command}`", "",
             f"{datetime.date.today()}, {cpu_model_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"target {target}. Milliseconds for one pass over the products (blocks: every layer's four; head: the "
             "LM head), 'x N' = N rows; a blank: not timed (slower than float32 at fewer rows, or the op refuses "
             "the shape).", "",
             "| kernel | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for name, timings in kernels:
        cells = [f"{timings[part, rows]:.1f}" if (part, rows) in timings else "" for part in ("blocks", "head")
                 for rows in ROWS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    tuned = ", ".join(f"{rows}: {kernel}" for rows, kernel in sorted(plan.items())) or "the default at every count"
    lines += ["", f"One-token forward after {CONTEXT} cached tokens: the target {target_ms:.1f} ms (row kernels "
              f"tuned 1-16: {tuned}).", "", "| view | ms | of the target |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {ms:.1f} | {ms / target_ms:.2f} |" for name, ms in view_rows]
    return "\n".join(lines + [END])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=Path, default=Path("outputs/reference/smollm2-135m"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    command = "python scripts/bench_cpu_quant.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    model = load_model(options.target)
    with torch.inference_mode():
        kernels = kernel_table(model, options.repeats)
        target_ms, plan, view_rows = view_table(model, options.repeats)
    replace_section("bench_cpu_quant", "Reduced-precision kernels and views on CPU (issue 33)",
                    section(command.strip(), kernels, target_ms, plan, view_rows, options.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
