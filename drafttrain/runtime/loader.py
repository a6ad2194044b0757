"""Load a Hugging Face causal-LM checkpoint directory into the runtime's `Transformer`.

Reads config.json (Llama, Qwen2 and Mistral families; anything else is refused by name), one or
sharded safetensors files, and the tokenizer. Weights are never unpickled and no remote code runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from drafttrain.errors import DrafttrainError
from drafttrain.runtime.model import ModelArgs, Transformer
from drafttrain.runtime.rope import SUPPORTED_ROPE_TYPES, RopeScaling

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DrafttrainError(f"{path} is missing: a Hugging Face checkpoint directory needs it")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DrafttrainError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DrafttrainError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _field(config: dict, key: str, source: Path, default=None):
    value = config.get(key, default)
    if value is None:
        raise DrafttrainError(f"{source}: field {key!r} is missing; re-save the model with "
                              "save_pretrained or add it")
    return value


def _rope_settings(config: dict, source: Path) -> tuple[float, RopeScaling]:
    """(theta, scaling) from transformers 5 `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise DrafttrainError(f"{source}: rope type {rope_type!r} is not supported; drafttrain "
                              f"supports {list(SUPPORTED_ROPE_TYPES)}")
    known = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    return theta, RopeScaling(rope_type, **{k: v for k, v in params.items() if k in known})


def read_model_args(path: str | Path) -> ModelArgs:
    """ModelArgs from a checkpoint directory's config.json, checking the family is supported."""
    source = Path(path) / "config.json"
    config = _read_json(source)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise DrafttrainError(f"{source}: model_type {model_type!r} is not supported; drafttrain "
                              f"loads {list(SUPPORTED_MODEL_TYPES)}")
    if config.get("hidden_act", "silu") != "silu":
        raise DrafttrainError(f"{source}: hidden_act {config['hidden_act']!r} is not supported (silu only)")
    hidden, heads = _field(config, "hidden_size", source), _field(config, "num_attention_heads", source)
    theta, scaling = _rope_settings(config, source)
    use_window = model_type == "mistral" or config.get("use_sliding_window", False)
    return ModelArgs(
        model_type=model_type,
        vocab_size=_field(config, "vocab_size", source),
        hidden_size=hidden,
        intermediate_size=_field(config, "intermediate_size", source),
        num_layers=_field(config, "num_hidden_layers", source),
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=_field(config, "max_position_embeddings", source),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
        o_bias=model_type != "qwen2" and bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        sliding_window=config.get("sliding_window") if use_window else None,
    )


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        if not shards:
            raise DrafttrainError(f"{index}: 'weight_map' is empty or missing")
        files = [path / shard for shard in shards]
    else:
        files = [path / "model.safetensors"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        pickled = sorted(p.name for p in path.glob("*.bin"))
        hint = (f" (found {pickled}: pickled weights are not loaded; convert them to safetensors)"
                if pickled else "")
        raise DrafttrainError(f"weights missing: {missing}{hint}")
    return files


def check_weights(path: str | Path) -> None:
    """Refuse a checkpoint whose safetensors files are missing or cut short, before a library that
    would fail on them with a raw error (transformers' `from_pretrained`) reads them: each file's
    header must parse and its tensors' byte ranges must fit in the file. Reads only the headers."""
    for file in _weight_files(Path(path)):
        size = file.stat().st_size
        try:
            with open(file, "rb") as stream:
                length = int.from_bytes(stream.read(8), "little")
                if not 0 < length <= size - 8:
                    raise ValueError(f"header length {length} does not fit in the file's {size} bytes")
                header = json.loads(stream.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
                      default=0)
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise DrafttrainError(f"{file} is damaged (not a readable safetensors file: {err}); copy or download "
                                  "it again, or re-save the model with save_pretrained") from err
        if 8 + length + end > size:
            raise DrafttrainError(f"{file} is damaged (truncated: its tensors need {8 + length + end} bytes, the "
                                  f"file has {size}); copy or download it again")


def _hf_state(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    state[key] = handle.get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise DrafttrainError(f"{file} is damaged (truncated or not a safetensors file: {err}); copy or "
                                  "download it again, or re-save the model with save_pretrained") from err
    return state


def _runtime_state(hf: dict[str, torch.Tensor], args: ModelArgs, source: Path) -> dict[str, torch.Tensor]:
    """Rename HF weights to the runtime's fused layout; every expected weight must be present."""
    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise DrafttrainError(f"{source}: weight {key!r} is missing from the checkpoint")
        return hf.pop(key)

    state = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    if not args.tie_word_embeddings:
        state["lm_head.weight"] = take("lm_head.weight")
    hf.pop("lm_head.weight", None)
    for i in range(args.num_layers):
        hf_prefix, prefix = f"model.layers.{i}.", f"layers.{i}."
        attn = hf_prefix + "self_attn."
        state[prefix + "attn.wqkv.weight"] = torch.cat([take(attn + f"{p}_proj.weight") for p in "qkv"])
        if args.qkv_bias:
            state[prefix + "attn.wqkv.bias"] = torch.cat([take(attn + f"{p}_proj.bias") for p in "qkv"])
        state[prefix + "attn.wo.weight"] = take(attn + "o_proj.weight")
        if args.o_bias:
            state[prefix + "attn.wo.bias"] = take(attn + "o_proj.bias")
        mlp = hf_prefix + "mlp."
        state[prefix + "mlp.w13.weight"] = torch.cat([take(mlp + "gate_proj.weight"), take(mlp + "up_proj.weight")])
        state[prefix + "mlp.w2.weight"] = take(mlp + "down_proj.weight")
        if args.mlp_bias:
            state[prefix + "mlp.w13.bias"] = torch.cat([take(mlp + "gate_proj.bias"), take(mlp + "up_proj.bias")])
            state[prefix + "mlp.w2.bias"] = take(mlp + "down_proj.bias")
        state[prefix + "input_norm.weight"] = take(hf_prefix + "input_layernorm.weight")
        state[prefix + "post_attn_norm.weight"] = take(hf_prefix + "post_attention_layernorm.weight")
    leftover = sorted(k for k in hf if "rotary_emb" not in k)
    if leftover:
        raise DrafttrainError(f"{source}: unexpected weights {leftover[:5]} for a {args.model_type} model")
    return state


def adapter_base(path: Path) -> Path | None:
    """The base model directory of a peft LoRA adapter directory, or None for a plain checkpoint."""
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        return None
    config = _read_json(config_path)
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("fan_in_fan_out"):
        raise DrafttrainError(f"{config_path}: only plain LoRA adapters are supported "
                              "(peft_type LORA, no DoRA, no fan_in_fan_out)")
    base = Path(str(config.get("base_model_name_or_path") or ""))
    if not (base / "config.json").is_file():
        raise DrafttrainError(f"{config_path}: base_model_name_or_path {str(base)!r} is not a local checkpoint "
                              "directory; point it at the base model the adapter was trained on")
    return base


def _merge_lora(state: dict[str, torch.Tensor], adapter_dir: Path) -> None:
    """Fold LoRA deltas into the base weights: W += B @ A * alpha / r (alpha / sqrt(r) with rsLoRA)."""
    config = _read_json(adapter_dir / "adapter_config.json")
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
    adapter = _hf_state([adapter_dir / "adapter_model.safetensors"])
    for key_a in [k for k in adapter if k.endswith("lora_A.weight")]:
        module = key_a.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        lora_b = adapter[key_a.replace("lora_A", "lora_B")]
        if module + ".weight" not in state:
            raise DrafttrainError(f"{adapter_dir}: adapter weight {key_a} has no base weight {module}.weight")
        weight = state[module + ".weight"]
        state[module + ".weight"] = (weight.float() + (lora_b.float() @ adapter[key_a].float()) * scale).to(weight.dtype)


def load_model(path: str | Path, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Transformer:
    """A runtime `Transformer` with the checkpoint's weights (a LoRA adapter is merged), in eval mode."""
    path = Path(path)
    if not path.is_dir():
        raise DrafttrainError(f"model directory {path} does not exist")
    base = adapter_base(path)
    weights_dir = base or path
    args = read_model_args(weights_dir)
    hf_state = _hf_state(_weight_files(weights_dir))
    if base is not None:
        _merge_lora(hf_state, path)
    state = _runtime_state(hf_state, args, path)
    with torch.device("meta"):
        model = Transformer(args)
    model.load_state_dict(state, assign=True, strict=False)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise DrafttrainError(f"{path}: weights not found for {missing[:5]}")
    model._init_rope()
    model = model.to(device=device, dtype=dtype)
    model._init_rope(device)
    model = model.eval().requires_grad_(False)
    return model.use_input_major_weights() if model.device.type == "cpu" else model


def load_tokenizer(path: str | Path):
    """The checkpoint's tokenizer through `transformers` (never with remote code)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise DrafttrainError(f"{path}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)")
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def eos_token_ids(path: str | Path, tokenizer=None) -> tuple[int, ...]:
    """End-of-sequence ids: generation_config.json's, else config.json's, else the tokenizer's."""
    path = Path(path)
    for name in ("generation_config.json", "config.json"):
        if (path / name).is_file():
            eos = _read_json(path / name).get("eos_token_id")
            if eos is not None:
                return tuple(eos) if isinstance(eos, list) else (int(eos),)
    eos = getattr(tokenizer, "eos_token_id", None)
    return () if eos is None else (int(eos),)
