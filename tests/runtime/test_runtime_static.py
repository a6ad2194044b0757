"""Fixed-shape verify forwards (drafttrain.runtime.static) and the CUDA-graph verifier built on them."""

from __future__ import annotations

import pytest
import torch
from conftest import runtime_model

from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.drafters import NgramDrafter, TreeShape
from drafttrain.errors import DrafttrainError
from drafttrain.runtime.cache import tree_mask, tree_positions
from drafttrain.runtime.graphs import GraphedVerifier
from drafttrain.runtime.static import StaticVerifier, bucket_for, padded_inputs


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
        static = StaticVerifier(model, static_cache)(tokens, positions, start, tree_mask(0, parents, "cpu"))
    torch.testing.assert_close(static, eager, rtol=1e-5, atol=1e-5)
    used = start + len(tokens)
    torch.testing.assert_close(static_cache.k[:, :, :used], eager_cache.k[:, :, :used])


def test_padding_rows_see_only_the_prefix_and_themselves():
    inputs = padded_inputs(torch.tensor([5, 6]), torch.tensor([3, 4]), 3, tree_mask(0, [-1], "cpu"), 4, 10)
    assert inputs.tokens.tolist() == [5, 6, 0, 0] and inputs.slots.tolist() == [3, 4, 5, 6]
    assert inputs.positions.tolist() == [3, 4, 3, 3]
    assert inputs.mask.int().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
                                          [1, 1, 1, 0, 0, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 1, 0, 0, 0]]
    with pytest.raises(DrafttrainError, match="allocate the cache"):
        padded_inputs(torch.tensor([5]), torch.tensor([9]), 9, tree_mask(0, [], "cpu"), 2, 10)


@pytest.mark.parametrize("shape", [None, TreeShape.chain(4), TreeShape((3, 2, 1))])
def test_static_verify_decodes_the_same_tokens_as_eager(shape):
    model = runtime_model(seed=5, vocab=24, layers=2, max_pos=256)
    prompt = [3, 5, 7, 3, 5, 7, 3, 5, 9, 3, 5, 7, 11]
    config = GenerationConfig(40, shape=shape)
    drafter = NgramDrafter() if shape else None
    eager = SpeculativeDecoder(model).generate(prompt, drafter, config).tokens
    static = SpeculativeDecoder(model, verify="static").generate(prompt, drafter, config).tokens
    assert static == eager and len(eager) == 40


def test_cuda_graphs_need_cuda_and_say_so():
    model = runtime_model(seed=1)
    with pytest.raises(DrafttrainError, match="needs an NVIDIA GPU"):
        SpeculativeDecoder(model, verify="cuda-graphs")
    with pytest.raises(DrafttrainError, match="needs an NVIDIA GPU"):
        GraphedVerifier(model, model.new_cache(32))
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
    assert graphed_decoder.verifier.graphs and graphed_decoder.verifier.capture_seconds > 0
