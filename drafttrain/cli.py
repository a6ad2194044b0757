"""The `drafttrain` command line: one verb per workflow, each landing when it works.

Flags of a verb are generated from its config dataclass (one source of truth): every field is a
`--flag`, `--config FILE` loads a YAML file, and trailing `key=value` arguments override either.
User errors print one clear line and exit with status 2; a lossless check that fails exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import types
import typing
from pathlib import Path

from drafttrain import __version__
from drafttrain.config import load_config
from drafttrain.errors import DrafttrainError
from drafttrain.evaluation.config import EvalConfig


def _field_type(cls: type, name: str):
    """The field's type with Optional stripped (list[int] | None -> list[int])."""
    hint = typing.get_type_hints(cls)[name]
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """A --flag for every field of `cls`, plus --config FILE and trailing key=value overrides."""
    parser.add_argument("--config", type=Path, help="YAML config file (flags and key=value override it)")
    for spec in dataclasses.fields(cls):
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        if dataclasses.is_dataclass(default) or isinstance(default, dict):
            continue  # nested settings: set them as dotted key=value overrides
        if isinstance(default, list):
            default = ",".join(map(str, default)) or "none"
        parser.add_argument(f"--{spec.name.replace('_', '-')}", dest=spec.name, default=argparse.SUPPRESS,
                            metavar=spec.name.upper(), help=f"{spec.metadata.get('help', '')} (default: {default})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key")


def flags_to_overrides(args: argparse.Namespace, cls: type) -> list[str]:
    """The given --flags as key=value overrides typed by their field; lists are comma-separated."""
    overrides = []
    for spec in dataclasses.fields(cls):
        if spec.name not in vars(args):
            continue
        value, kind = getattr(args, spec.name), _field_type(cls, spec.name)
        if value.lower() in ("none", "null"):
            overrides.append(f"{spec.name}=null")
        elif typing.get_origin(kind) is list:
            items = [item for item in value.split(",") if item]
            element = typing.get_args(kind)[0]
            overrides.append(f"{spec.name}=" + (json.dumps(items) if element is str else f"[{','.join(items)}]"))
        elif kind in (int, float, bool):
            overrides.append(f"{spec.name}={value}")
        else:  # str, Path, Literal of strings: keep the text as given
            overrides.append(f"{spec.name}={json.dumps(value)}")
    return overrides + list(args.overrides)


def device_name(device: str, threads: int) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (torch {torch.__version__})"
    from drafttrain.calibration.latency import cpu_model_name

    return (f"cpu {cpu_model_name()}, {threads or torch.get_num_threads()} threads "
            f"(torch {torch.__version__})")


def cmd_eval(args: argparse.Namespace) -> int:
    if args.list_methods:
        from drafttrain.evaluation.methods import METHODS

        for name, spec in METHODS.items():
            print(f"{name:14s} {spec.about}")
        return 0
    config = load_config(EvalConfig, args.config, flags_to_overrides(args, EvalConfig))
    from recipes.eval import main as evaluate

    report = evaluate(config, "drafttrain " + shlex.join(args.argv))
    broken = [name for name, entry in report["methods"].items() if entry["lossless"] is False]
    if broken:
        print(f"error: not lossless (output differs from ar under greedy decoding): {broken}", file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from drafttrain.bundle.config import ExportConfig
    from recipes.export import main as export

    export(load_config(ExportConfig, args.config, flags_to_overrides(args, ExportConfig)))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from drafttrain.bundle.config import GenerateConfig
    from drafttrain.bundle.generate import generate

    generate(load_config(GenerateConfig, args.config, flags_to_overrides(args, GenerateConfig)))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from drafttrain.pipeline.config import PipelineConfig
    from recipes.pipeline import QUICKSTART
    from recipes.pipeline import main as pipeline

    overrides = [f"out={json.dumps(str(args.out))}"]
    if args.target is not None:
        from drafttrain.pipeline.defaults import target_overrides

        overrides += [f"target={json.dumps(str(args.target))}", *target_overrides(args.target)]
    if args.threads:
        overrides.append(f"threads={args.threads}")
    return pipeline(load_config(PipelineConfig, QUICKSTART, overrides + list(args.overrides)))


def cmd_import_gguf(args: argparse.Namespace) -> int:
    from drafttrain.runtime.gguf_import import import_gguf

    out = import_gguf(args.file, args.out, args.dtype, overwrite=args.overwrite)
    print(f"wrote {out} (a Hugging Face checkpoint directory: --target {out})")
    return 0


RECIPES = {"pipeline": "the whole pipeline as cached stages: pretrain (without a target), distill, search, "
                       "calibrate, export, eval",
           "pretrain": "pretrain a small Llama target from scratch on a corpus",
           "distill": "distill a draft model from a target (KD losses, on-policy data, LoRA)",
           "search": "search self-draft levels of a target with Optuna (same as `drafttrain search`)",
           "calibrate": "fit acceptance and latency predictors of a cascade's levels on calibration prompts",
           "export": "write a verified cascade bundle (same as `drafttrain export`)",
           "eval": "compare decoding methods (same as `drafttrain eval`)"}


def cmd_run(args: argparse.Namespace) -> int:
    import importlib

    from drafttrain.config import config_class_for

    config = load_config(config_class_for(args.recipe), args.config, args.overrides)
    result = importlib.import_module(f"recipes.{args.recipe}").main(config)
    return result if isinstance(result, int) else 0


def cmd_search(args: argparse.Namespace) -> int:
    from drafttrain.search.config import SearchConfig
    from recipes.search import main as search_recipe

    search_recipe(load_config(SearchConfig, args.config, flags_to_overrides(args, SearchConfig)))
    return 0


def config_verb(verbs, name: str, cls: type, run, summary: str, description: str) -> argparse.ArgumentParser:
    """A verb whose flags come from the config dataclass `cls` (see `add_config_flags`)."""
    verb = verbs.add_parser(name, help=summary, description=description)
    add_config_flags(verb, cls)
    verb.set_defaults(run=run)
    return verb


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drafttrain", description=(
        "Train and tune draft hierarchies and schedulers for lossless speculative decoding."))
    parser.add_argument("--version", action="version", version=f"drafttrain {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    evaluate = config_verb(verbs, "eval", EvalConfig, cmd_eval, "compare decoding methods side by side (speed, "
                           "losslessness)", "Run decoding methods on a prompt set, interleaved per prompt, and write "
                           "report.json, report.md and the plots (speedup, acceptance by depth, tokens/s per prompt).")
    evaluate.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    from drafttrain.bundle.config import ExportConfig, GenerateConfig
    from drafttrain.search.config import SearchConfig

    config_verb(verbs, "search", SearchConfig, cmd_search, "search self-draft levels (layer skip, activation "
                "quantization)", "Run or resume (by --study name) an Optuna study over self-draft views of the target "
                "and write levels.json and plots to --out.")
    config_verb(verbs, "export", ExportConfig, cmd_export, "write a verified cascade bundle (drafts, levels, "
                "predictors, latency, scheduler)", "Check the parts against each other, write the bundle atomically "
                "with a manifest of sha256s and the target's identity, and verify it by loading it back. Scheduler "
                "settings: scheduler.name=dytc|sd-<level>, scheduler.k.<level>=N, scheduler.dytc.<setting>=VALUE.")
    config_verb(verbs, "generate", GenerateConfig, cmd_generate, "stream text through a bundle's scheduler",
                "Verify the bundle against --target, then generate for --prompt or every prompt of --prompts, "
                "streaming the text to stdout (stats to stderr).")
    quick = verbs.add_parser("quickstart", help="the whole pipeline on the embedded default (about 5 minutes "
                             "on 2 CPU cores)", description="Pretrain a small target on this Python's standard "
                             "library (or use --target DIR), distill a draft, search self-draft levels, calibrate, "
                             "export a bundle and evaluate it. Stages are cached: a second run reuses them. With "
                             "--target, the stages are sized for a pretrained model (drafttrain.pipeline.defaults: "
                             "a draft cut from its first and last layers, int8/fp16 levels, shorter calibration; "
                             "docs/benchmarks.md times it on SmolLM2-135M).")
    quick.add_argument("--target", type=Path, help="your target checkpoint directory (default: pretrain one)")
    quick.add_argument("--out", type=Path, default=Path("outputs/quickstart"), help="output directory "
                       "(default: outputs/quickstart)")
    quick.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's)")
    quick.add_argument("overrides", nargs="*", metavar="key=value", help="override any pipeline key, e.g. "
                       "pretrain.set={trainer.max_steps: 100}")
    quick.set_defaults(run=cmd_quickstart)
    gguf = verbs.add_parser("import-gguf", help="turn a GGUF file (llama.cpp's format) into a checkpoint "
                            "directory", description="Dequantize a GGUF file through transformers' GGUF support "
                            "and write it as a Hugging Face checkpoint directory (config, safetensors, tokenizer) "
                            "that every verb takes as --target. Needs the extra: pip install 'drafttrain[gguf]'.")
    gguf.add_argument("file", type=Path, help="the .gguf file (Llama, Qwen2 or Mistral architecture)")
    gguf.add_argument("--out", type=Path, required=True, help="the checkpoint directory to write")
    gguf.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                      help="weight dtype of the checkpoint (default: float32)")
    gguf.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    gguf.set_defaults(run=cmd_import_gguf)
    run = verbs.add_parser("run", help="run a training recipe: " + ", ".join(RECIPES),
                           description="Run a recipe from recipes/ with its YAML config and key=value overrides "
                           "(e.g. trainer.max_steps=100). An interrupted run resumes from its last checkpoint.")
    run.add_argument("recipe", choices=sorted(RECIPES), help="; ".join(f"{k}: {v}" for k, v in RECIPES.items()))
    run.add_argument("--config", type=Path, help="the recipe's YAML config (configs/<family>/<recipe>.yaml)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key (dotted)")
    run.set_defaults(run=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come anywhere after the verb; argparse only takes them before options
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = list(getattr(args, "overrides", [])) + extra
    args.argv = argv  # recorded in reports as the command that produced them
    try:
        return args.run(args)
    except DrafttrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
