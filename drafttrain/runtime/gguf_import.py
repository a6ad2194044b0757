"""Import a GGUF file (llama.cpp's format) as a Hugging Face checkpoint directory every verb loads.

The work is transformers' own GGUF support (`from_pretrained(dir, gguf_file=...)`, which needs the
`gguf` package and dequantizes the weights): nothing here decodes a quantized block by hand. What
this module adds is what a user needs around it: the file is checked to be GGUF and of an
architecture drafttrain's runtime loads before anything heavy runs, the quantization settings
transformers leaves on the config are dropped (the weights it returns are plain floating point),
and the directory is written beside its final path and renamed into place when complete.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from drafttrain.errors import DrafttrainError

GGUF_MAGIC = b"GGUF"
GGUF_ARCHITECTURES = ("llama", "qwen2", "mistral")  # the runtime's families, as GGUF names them
DTYPES = ("float32", "bfloat16")
EXTRA_HINT = "install the GGUF extra: pip install 'drafttrain[gguf]' (the gguf and accelerate packages)"


def gguf_architecture(path: Path) -> str:
    """The `general.architecture` of a GGUF file, read from its header (no tensor is loaded)."""
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise DrafttrainError(f"reading {path} needs the gguf package: {EXTRA_HINT}") from err
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except KeyError as err:
        raise DrafttrainError(f"{path}: the GGUF header has no general.architecture field; re-export "
                              "the file with llama.cpp's convert script") from err
    except (ValueError, IndexError, OSError) as err:
        raise DrafttrainError(f"{path}: the GGUF file is damaged or truncated ({err}); download it again") from err


def check_gguf_file(path: Path) -> str:
    """The file's architecture, after checking it exists, is GGUF and is one the runtime loads."""
    if not path.is_file():
        raise DrafttrainError(f"GGUF file {path} does not exist")
    with open(path, "rb") as stream:
        magic = stream.read(4)
    if magic != GGUF_MAGIC:
        raise DrafttrainError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); "
                              "give a .gguf file as written by llama.cpp")
    architecture = gguf_architecture(path)
    if architecture not in GGUF_ARCHITECTURES:
        raise DrafttrainError(f"{path}: architecture {architecture!r} is not one drafttrain's runtime loads "
                              f"({', '.join(GGUF_ARCHITECTURES)})")
    return architecture


def _require_extras(path: Path) -> None:
    for module in ("gguf", "accelerate"):
        try:
            __import__(module)
        except ImportError as err:
            raise DrafttrainError(f"importing {path} needs the {module} package: {EXTRA_HINT}") from err


def import_gguf(path: str | Path, out: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write the GGUF file `path` as a checkpoint directory `out` (config, safetensors, tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path, out = Path(path), Path(out)
    if dtype not in DTYPES:
        raise DrafttrainError(f"--dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    _require_extras(path)
    check_gguf_file(path)
    if out.exists() and not overwrite:
        raise DrafttrainError(f"{out} already exists; remove it or pass --overwrite")
    source = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    config = AutoConfig.from_pretrained(**source)
    if hasattr(config, "quantization_config"):  # transformers records the GGUF source here; the weights are float
        delattr(config, "quantization_config")
    gguf_model = AutoModelForCausalLM.from_pretrained(**source, dtype=getattr(torch, dtype))
    state = gguf_model.state_dict()
    del gguf_model
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(state, assign=True, strict=False)
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(**source)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint directory is an ordinary one
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
