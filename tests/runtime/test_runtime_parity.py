"""The runtime reproduces `transformers`' logits for Llama, Qwen2 and Mistral checkpoints.

Each family's conftest config exercises GQA (4 heads / 2 kv heads); Llama adds llama3 RoPE
scaling, attention biases and untied embeddings, Qwen2 adds qkv biases and tied embeddings.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_checkpoint
from drafttrain.runtime import load_model, read_model_args
from drafttrain.runtime.cache import causal_mask
from drafttrain.runtime.rope import RopeScaling

FAMILIES = ("llama", "qwen2", "mistral")
VOCAB = 300
SEQ = 24
TOL = 1e-4


def _tokens(seed: int = 0, n: int = SEQ) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=gen)


def _hf_logits(path, tokens: torch.Tensor) -> torch.Tensor:
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(tokens[None]).logits[0].float()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny checkpoint per family, with HF's full-sequence logits on a fixed token sequence."""
    tokens = _tokens()
    built = {}
    for index, family in enumerate(FAMILIES):
        path = make_checkpoint(tmp_path_factory.mktemp(f"parity_{family}"), family, seed=10 + index)
        built[family] = (path, _hf_logits(path, tokens))
    return tokens, built


@pytest.fixture(scope="module")
def runtime_models(checkpoints):
    _, built = checkpoints
    return {family: load_model(path) for family, (path, _) in built.items()}


def test_config_features_are_read(checkpoints):
    """The fixtures really exercise what the parity tests claim (GQA, biases, tying, llama3)."""
    _, built = checkpoints
    llama = read_model_args(built["llama"][0])
    qwen = read_model_args(built["qwen2"][0])
    mistral = read_model_args(built["mistral"][0])
    for args in (llama, qwen, mistral):
        assert (args.num_heads, args.num_kv_heads) == (4, 2)
    assert llama.rope_scaling.rope_type == "llama3" and llama.rope_scaling.factor == 8.0
    assert llama.rope_scaling.original_max_position_embeddings == 32
    assert llama.qkv_bias and llama.o_bias and not llama.tie_word_embeddings
    assert qwen.qkv_bias and not qwen.o_bias and qwen.tie_word_embeddings
    assert qwen.rope_theta == 1e6 and qwen.sliding_window is None
    assert mistral.sliding_window == 4096 and not mistral.qkv_bias


@pytest.mark.parametrize("family", FAMILIES)
def test_full_sequence_prefill_matches_hf(family, checkpoints, runtime_models):
    tokens, built = checkpoints
    model = runtime_models[family]
    cache = model.new_cache(64)
    with torch.no_grad():
        logits = model(tokens, torch.arange(SEQ), cache, 0)
    assert logits.dtype == torch.float32
    assert _max_diff(logits, built[family][1]) <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_decode_matches_hf(family, checkpoints, runtime_models):
    tokens, built = checkpoints
    ref = built[family][1]
    model = runtime_models[family]
    cache = model.new_cache(64)
    prefill = 5
    with torch.no_grad():
        first = model(tokens[:prefill], torch.arange(prefill), cache, 0)
        assert _max_diff(first, ref[:prefill]) <= TOL
        for pos in range(prefill, SEQ):
            step = model(tokens[pos:pos + 1], torch.tensor([pos]), cache, pos)
            assert _max_diff(step, ref[pos:pos + 1]) <= TOL, f"position {pos}"


@pytest.mark.parametrize("family", FAMILIES)
def test_chunk_after_prefill_matches_hf(family, checkpoints, runtime_models):
    tokens, built = checkpoints
    ref = built[family][1]
    model = runtime_models[family]
    cache = model.new_cache(64)
    with torch.no_grad():
        model(tokens[:7], torch.arange(7), cache, 0, logits_rows=None)
        chunk = model(tokens[7:15], torch.arange(7, 15), cache, 7, mask=causal_mask(7, 8, "cpu"))
        tail = model(tokens[15:], torch.arange(15, SEQ), cache, 15, mask=causal_mask(15, SEQ - 15, "cpu"))
    assert _max_diff(chunk, ref[7:15]) <= TOL
    assert _max_diff(tail, ref[15:]) <= TOL


def test_multi_token_forward_after_slot_zero_needs_a_mask(runtime_models):
    model = runtime_models["llama"]
    cache = model.new_cache(32)
    model(_tokens(n=4), torch.arange(4), cache, 0)
    with pytest.raises(ValueError, match="explicit mask"):
        model(_tokens(n=3), torch.arange(4, 7), cache, 4)


def test_logits_rows_selects_rows(checkpoints, runtime_models):
    tokens, built = checkpoints
    model = runtime_models["qwen2"]
    with torch.no_grad():
        last = model(tokens, torch.arange(SEQ), model.new_cache(64), 0, logits_rows=slice(-1, None))
    assert last.shape == (1, VOCAB)
    assert _max_diff(last, built["qwen2"][1][-1:]) <= TOL


@pytest.mark.parametrize("family", ("llama", "qwen2"))
def test_sharded_checkpoint_matches(family, checkpoints, tmp_path_factory):
    tokens, built = checkpoints
    path, ref = built[family]
    sharded = tmp_path_factory.mktemp(f"sharded_{family}")
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    hf.save_pretrained(str(sharded), max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert not (sharded / "model.safetensors").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    model = load_model(sharded)
    with torch.no_grad():
        logits = model(tokens, torch.arange(SEQ), model.new_cache(64), 0)
    assert _max_diff(logits, ref) <= TOL


def test_legacy_rope_scaling_keys(checkpoints, tmp_path_factory):
    """transformers-4.x style `rope_theta` + `rope_scaling={"type": "linear"}` config keys."""
    tokens, built = checkpoints
    legacy = tmp_path_factory.mktemp("legacy_rope") / "ckpt"
    shutil.copytree(built["llama"][0], legacy)
    config = json.loads((legacy / "config.json").read_text())
    del config["rope_parameters"]
    config["rope_theta"] = 10000.0
    config["rope_scaling"] = {"type": "linear", "factor": 2.0}
    (legacy / "config.json").write_text(json.dumps(config))

    args = read_model_args(legacy)
    assert args.rope_theta == 10000.0
    assert args.rope_scaling == RopeScaling("linear", factor=2.0)

    ref = _hf_logits(legacy, tokens)
    # the rope change is real: the legacy config gives different logits from the llama3 one
    assert _max_diff(ref, built["llama"][1]) > 1e-3
    model = load_model(legacy)
    with torch.no_grad():
        logits = model(tokens, torch.arange(SEQ), model.new_cache(64), 0)
    assert _max_diff(logits, ref) <= TOL


@pytest.mark.parametrize("family", ("llama", "qwen2"))
def test_bf16_load_is_close_to_fp32(family, checkpoints, runtime_models):
    tokens, built = checkpoints
    model = load_model(built[family][0], dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.rope_cos.dtype == torch.float32  # tables are rebuilt in float32 after the cast
    if family == "qwen2":
        assert model.lm_head.weight is model.embed.weight  # tying survives the dtype cast
    cache = model.new_cache(64)
    assert cache.k.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(tokens, torch.arange(SEQ), cache, 0)
    ref = runtime_models[family](tokens, torch.arange(SEQ), runtime_models[family].new_cache(64), 0)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    scale = ref.abs().max().item()
    assert _max_diff(logits, ref) <= 0.05 * scale + 0.05
    agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= 0.8


def test_cpu_loads_keep_projections_input_major_with_the_same_logits(checkpoints, runtime_models):
    tokens, built = checkpoints
    model = runtime_models["llama"]
    for layer in (model.layers[0].attn.wqkv, model.layers[-1].mlp.w2):
        out_features, in_features = layer.weight.shape
        assert layer.weight.stride() == (1, out_features)  # [in, out] in memory, read as [out, in]
    assert model.lm_head.weight.stride() == (model.args.hidden_size, 1)  # the head (tied or not) keeps rows
    torch.manual_seed(0)
    fresh = type(model)(model.args)
    fresh.load_state_dict({name: value.contiguous() for name, value in model.state_dict().items()})
    with torch.no_grad():
        before = fresh(tokens, torch.arange(SEQ), fresh.new_cache(64), 0)
        after = fresh.use_input_major_weights()(tokens, torch.arange(SEQ), fresh.new_cache(64), 0)
    assert fresh.layers[0].mlp.w13.weight.stride()[0] == 1
    assert _max_diff(before, after) <= 1e-5 and _max_diff(after, built["llama"][1]) <= TOL


@pytest.mark.parametrize("layers", (1, 2))
def test_the_last_layer_computes_only_the_rows_asked_for(layers):
    """Leaving out the last layer's other rows returns the same logits and writes the same cache."""
    from conftest import runtime_model
    from drafttrain.runtime.cache import tree_mask

    model = runtime_model(seed=3, vocab=40, layers=layers)
    tokens = torch.randint(0, 40, (12,), generator=torch.Generator().manual_seed(0))
    full_cache, pruned_cache = model.new_cache(32), model.new_cache(32)
    with torch.no_grad():
        full = model(tokens[:8], torch.arange(8), full_cache, 0)  # every row (a prefill from slot 0)
        assert torch.allclose(model(tokens[:8], torch.arange(8), pruned_cache, 0, logits_rows=slice(-1, None)),
                              full[-1:], atol=1e-5)
        assert model(tokens[:8], torch.arange(8), pruned_cache, 0, logits_rows=None) is None
        assert torch.equal(full_cache.k, pruned_cache.k) and torch.equal(full_cache.v, pruned_cache.v)
        parents = [-1, 0, 0]  # a tree after slot 8: the root, two children of the first node
        mask, positions = tree_mask(8, parents, "cpu"), torch.tensor([8, 9, 10, 10])
        full = model(tokens[8:12], positions, full_cache, 8, mask)
        rows = torch.tensor([0, 3])
        assert torch.allclose(model(tokens[8:12], positions, pruned_cache, 8, mask, logits_rows=rows), full[rows],
                              atol=1e-5)
        assert torch.equal(full_cache.k, pruned_cache.k)
