"""Fixed-shape verify forwards (drafttrain.runtime.static) and the CUDA-graph verifier built on them."""

from __future__ import annotations

import pytest
import torch
from conftest import runtime_model

from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.drafters import ModelDrafter, NgramDrafter, SelfDrafter, TreeShape
from drafttrain.errors import DrafttrainError
from drafttrain.runtime import SelfDraftView, load_model, load_tokenizer
from drafttrain.runtime.cache import tree_mask, tree_positions
from drafttrain.runtime.graphs import GraphedForward
from drafttrain.runtime.static import StaticForward, bucket_for, padded_inputs


def depths_of(parents: list[int]) -> list[int]:
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return depths


def test_buckets_are_the_smallest_that_fit():
    assert [bucket_for(size) for size in (1, 2, 3, 8, 9, 65, 128)] == [1, 2, 4, 8, 16, 128, 128]
    with pytest.raises(DrafttrainError, match="larger than the largest bucket"):
        bucket_for(129)


@pytest.mark.parametrize("parents", [[], [-1, 0, 1], [-1, 0, -1, 2, 2]])
def test_padded_forward_gives_the_eager_logits_and_cache(parents):
    model = runtime_model(seed=4, vocab=32, layers=2, max_pos=128)
    prompt = torch.randint(0, 32, (20,), generator=torch.Generator().manual_seed(1))
    tokens = torch.randint(0, 32, (1 + len(parents),), generator=torch.Generator().manual_seed(2))
    depths = depths_of(parents)
    start = len(prompt)
    eager_cache, static_cache = model.new_cache(128), model.new_cache(128)
    with torch.inference_mode():
        for cache in (eager_cache, static_cache):
            model(prompt, torch.arange(start), cache, 0, logits_rows=None)
        positions = tree_positions(start, depths, "cpu")
        eager = model(tokens, positions, eager_cache, start, tree_mask(start, parents, "cpu"))
        static = StaticForward(model, static_cache)(tokens, positions, start, tree_mask(start, parents, "cpu"))
    torch.testing.assert_close(static, eager, rtol=1e-5, atol=1e-5)
    used = start + len(tokens)
    torch.testing.assert_close(static_cache.k[:, :, :used], eager_cache.k[:, :, :used])


def test_padding_rows_see_only_themselves():
    inputs = padded_inputs(torch.tensor([5, 6]), torch.tensor([3, 4]), 3, tree_mask(3, [-1], "cpu"), 4, 10)
    assert inputs.tokens.tolist() == [5, 6, 0, 0] and inputs.slots.tolist() == [3, 4, 5, 6]
    assert inputs.positions.tolist() == [3, 4, 3, 3]
    assert inputs.mask.int().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
                                          [0, 0, 0, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0, 0, 0]]
    with pytest.raises(DrafttrainError, match="allocate the cache"):
        padded_inputs(torch.tensor([5]), torch.tensor([9]), 9, tree_mask(9, [], "cpu"), 2, 10)


def test_a_step_beyond_the_largest_bucket_runs_at_its_own_size():
    model = runtime_model(seed=2, vocab=32, layers=2, max_pos=256)
    tokens = torch.randint(0, 32, (40,), generator=torch.Generator().manual_seed(3))
    eager_cache, static_cache = model.new_cache(64), model.new_cache(64)
    with torch.inference_mode():
        eager = model(tokens, torch.arange(40), eager_cache, 0)
        static = StaticForward(model, static_cache, buckets=(1, 2, 4, 8))(tokens, torch.arange(40), 0)
    torch.testing.assert_close(static, eager)


@pytest.mark.parametrize("kind", ["self-skip", "self-quant", "model"])
@pytest.mark.parametrize("shape", [TreeShape.chain(3), TreeShape((2, 2, 1))])
def test_draft_levels_step_through_fixed_shapes_with_the_eager_drafts(tiny_target, tiny_draft, kind, shape):
    model, tokenizer = load_model(tiny_target), load_tokenizer(tiny_target)
    prompt = tokenizer("def add(a, b):\n    return a + b\n\nfor i in range(10):\n").input_ids
    runs = []
    for verify in ("eager", "static"):
        decoder = SpeculativeDecoder(model, tokenizer, verify)
        if kind == "model":
            drafter = ModelDrafter.from_pretrained(tiny_draft, tokenizer, model.args.vocab_size, verify=verify)
        else:
            view = SelfDraftView(skip_attn=frozenset({1})) if kind == "self-skip" else \
                SelfDraftView(act_quant=((0, "int8"),))
            drafter = SelfDrafter(decoder, view)
        result = decoder.generate(prompt, drafter, GenerationConfig(24, shape=shape))
        runs.append((result.tokens, result.stats.drafted, result.stats.accepted))
    assert runs[0] == runs[1]  # the same tokens, and the same drafts accepted at every step


@pytest.mark.parametrize("shape", [None, TreeShape.chain(4), TreeShape((3, 2, 1))])
def test_static_verify_decodes_the_same_tokens_as_eager(shape):
    model = runtime_model(seed=5, vocab=24, layers=2, max_pos=256)
    prompt = [3, 5, 7, 3, 5, 7, 3, 5, 9, 3, 5, 7, 11]
    config = GenerationConfig(40, shape=shape)
    drafter = NgramDrafter() if shape else None
    eager = SpeculativeDecoder(model).generate(prompt, drafter, config).tokens
    static = SpeculativeDecoder(model, verify="static").generate(prompt, drafter, config).tokens
    assert static == eager and len(eager) == 40


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_fixed_shape_forward_decodes_the_eager_tokens(backend):
    """torch.compile over the fixed-shape forward ("eager": dynamo's tracing only, quick; "inductor":
    generated kernels, slow on CPU); the first call of each bucket is setup time, apart."""
    model = runtime_model(seed=5, vocab=24, layers=2, max_pos=256)
    prompt = [3, 5, 7, 3, 5, 7, 3, 5, 9, 3, 5, 7, 11]
    config = GenerationConfig(30, shape=TreeShape.chain(4))
    eager = SpeculativeDecoder(model).generate(prompt, NgramDrafter(), config).tokens
    decoder = SpeculativeDecoder(model, verify="static", compile=backend)
    assert decoder.generate(prompt, NgramDrafter(), config).tokens == eager
    assert decoder.verifier.setup_seconds > 0
    with pytest.raises(DrafttrainError, match="use it with verify='static'"):
        SpeculativeDecoder(model, compile=backend)


def test_cuda_graphs_need_cuda_and_say_so():
    model = runtime_model(seed=1)
    with pytest.raises(DrafttrainError, match="needs an NVIDIA GPU"):
        SpeculativeDecoder(model, verify="cuda-graphs")
    with pytest.raises(DrafttrainError, match="needs an NVIDIA GPU"):
        GraphedForward(model, model.new_cache(32))
    with pytest.raises(DrafttrainError, match="verify='fast' is invalid"):
        SpeculativeDecoder(model, verify="fast")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("shape", [None, TreeShape.chain(4), TreeShape((3, 2, 1))])
def test_graph_replayed_decode_gives_the_eager_tokens(shape):
    model = runtime_model(seed=5, vocab=24, layers=2, max_pos=256).cuda()
    prompt = [3, 5, 7, 3, 5, 7, 3, 5, 9, 3, 5, 7, 11]
    config = GenerationConfig(40, shape=shape)
    drafter = NgramDrafter() if shape else None
    eager = SpeculativeDecoder(model).generate(prompt, drafter, config).tokens
    graphed_decoder = SpeculativeDecoder(model, verify="cuda-graphs")
    for _ in range(2):  # the second run replays graphs captured in the first
        assert graphed_decoder.generate(prompt, drafter, config).tokens == eager
    assert graphed_decoder.verifier.graphs and graphed_decoder.verifier.setup_seconds > 0
