"""The static KV cache through the model: tree verification, keep_path compaction, free rollback."""

from __future__ import annotations

import pytest
import torch

from conftest import make_checkpoint
from drafttrain.runtime import KVCache, load_model
from drafttrain.runtime.cache import causal_mask, tree_mask, tree_positions

VOCAB = 300
TOL = 1e-4
PREFIX = torch.tensor([5, 17, 42, 99, 3, 250, 61])
ROOT = 77
# root -> node0, node1; node0 -> node2, node3; node2 -> node4
PARENTS = [-1, -1, 0, 0, 2]
NODES = torch.tensor([11, 12, 13, 14, 15])


def _depths(parents: list[int]) -> list[int]:
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return depths


def _path(parents: list[int], node: int) -> list[int]:
    """Node indices from the root's child down to `node`."""
    path = [node]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    return path[::-1]


@pytest.fixture(scope="module", params=("llama", "qwen2"))
def model(request, tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp(f"cache_{request.param}"), request.param, seed=3)
    return load_model(path)


def _sequential_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of a plain sequence in a fresh cache, all rows."""
    with torch.no_grad():
        return model(tokens, torch.arange(len(tokens)), model.new_cache(64), 0)


def _prefilled(model) -> KVCache:
    cache = model.new_cache(64)
    with torch.no_grad():
        model(PREFIX, torch.arange(len(PREFIX)), cache, 0, logits_rows=None)
    cache.length = len(PREFIX)
    return cache


def _tree_forward(model, cache: KVCache) -> torch.Tensor:
    start = cache.length
    tokens = torch.cat((torch.tensor([ROOT]), NODES))
    with torch.no_grad():
        return model(tokens, tree_positions(start, _depths(PARENTS), "cpu"), cache, start,
                     mask=tree_mask(start, PARENTS, "cpu"))


def test_helpers():
    assert _depths(PARENTS) == [1, 1, 2, 2, 3]
    assert _path(PARENTS, 4) == [0, 2, 4]
    assert _path(PARENTS, 1) == [1]


def test_tree_forward_matches_each_root_to_node_path(model):
    logits = _tree_forward(model, _prefilled(model))
    assert logits.shape == (1 + len(PARENTS), VOCAB)
    root_ref = _sequential_logits(model, torch.cat((PREFIX, torch.tensor([ROOT]))))[-1]
    assert (logits[0] - root_ref).abs().max().item() <= TOL
    for node in range(len(PARENTS)):
        seq = torch.cat((PREFIX, torch.tensor([ROOT]), NODES[_path(PARENTS, node)]))
        ref = _sequential_logits(model, seq)[-1]
        assert (logits[1 + node] - ref).abs().max().item() <= TOL, f"node {node}"
    # siblings see different contexts: their logits must differ (the mask matters)
    assert (logits[1] - logits[2]).abs().max().item() > 1e-3


@pytest.mark.parametrize("accepted", ([0, 2, 4], [1], [0, 3]))
def test_keep_path_then_decode_matches_sequential(model, accepted):
    cache = _prefilled(model)
    start = cache.length
    _tree_forward(model, cache)
    slots = [start + 1 + node for node in accepted]
    assert slots != list(range(start + 1, start + 1 + len(slots)))  # non-contiguous
    cache.keep_path(start + 1, slots)
    cache.length = start + 1 + len(accepted)

    next_tokens = [201, 202, 203]
    seq = torch.cat((PREFIX, torch.tensor([ROOT]), NODES[accepted], torch.tensor(next_tokens)))
    ref = _sequential_logits(model, seq)
    with torch.no_grad():
        for offset, token in enumerate(next_tokens):
            pos = cache.length
            step = model(torch.tensor([token]), torch.tensor([pos]), cache, pos)
            cache.length += 1
            assert (step[0] - ref[pos]).abs().max().item() <= TOL, f"step {offset}"


def test_keep_path_without_compaction_is_wrong(model):
    """Sanity check on the test above: skipping keep_path gives different logits."""
    cache = _prefilled(model)
    start = cache.length
    _tree_forward(model, cache)
    accepted = [0, 2, 4]
    cache.length = start + 1 + len(accepted)
    seq = torch.cat((PREFIX, torch.tensor([ROOT]), NODES[accepted], torch.tensor([201])))
    ref = _sequential_logits(model, seq)[-1]
    pos = cache.length
    with torch.no_grad():
        step = model(torch.tensor([201]), torch.tensor([pos]), cache, pos)[0]
    assert (step - ref).abs().max().item() > 1e-3


def test_keep_path_moves_entries_for_all_layers():
    cache = KVCache(num_layers=2, num_kv_heads=1, max_len=8, head_dim=2, dtype=torch.float32, device="cpu")
    cache.k[:] = torch.arange(8, dtype=torch.float32)[None, None, :, None]
    cache.v[:] = -torch.arange(8, dtype=torch.float32)[None, None, :, None]
    cache.keep_path(2, [3, 5, 7])
    expected = torch.tensor([0, 1, 3, 5, 7, 5, 6, 7], dtype=torch.float32)
    for layer in range(2):
        assert torch.equal(cache.k[layer, 0, :, 0], expected)
        assert torch.equal(cache.v[layer, 0, :, 1], -expected)
    # contiguous path: nothing moves
    before = cache.k.clone()
    cache.keep_path(1, [1, 2, 3])
    assert torch.equal(cache.k, before)
    # overlapping source/destination ranges read the sources before writing
    cache.k[:] = torch.arange(8, dtype=torch.float32)[None, None, :, None]
    cache.keep_path(1, [2, 4, 5])
    assert cache.k[0, 0, :, 0].tolist() == [0, 2, 4, 5, 4, 5, 6, 7]


def test_rollback_scratch_is_ignored(model):
    clean = _prefilled(model)
    dirty = _prefilled(model)
    start = dirty.length
    scratch = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        model(scratch, torch.arange(start, start + 4), dirty, start, mask=causal_mask(start, 4, "cpu"))
    # the scratch entries really were written past `length`
    assert not torch.equal(dirty.k[:, :, start:start + 4], clean.k[:, :, start:start + 4])
    assert dirty.length == start
    with torch.no_grad():
        for token in (9, 8, 7):
            pos = dirty.length
            a = model(torch.tensor([token]), torch.tensor([pos]), dirty, pos)
            b = model(torch.tensor([token]), torch.tensor([pos]), clean, pos)
            dirty.length += 1
            clean.length += 1
            assert (a - b).abs().max().item() <= TOL
        # a chunk forward from the committed length after more scratch also ignores it
        pos = dirty.length
        model(scratch, torch.arange(pos, pos + 4), dirty, pos, mask=causal_mask(pos, 4, "cpu"))
        chunk = torch.tensor([30, 31, 32])
        a = model(chunk, torch.arange(pos, pos + 3), dirty, pos, mask=causal_mask(pos, 3, "cpu"))
        b = model(chunk, torch.arange(pos, pos + 3), clean, pos, mask=causal_mask(pos, 3, "cpu"))
    assert (a - b).abs().max().item() <= TOL


def test_reset_rewinds_length():
    cache = KVCache(1, 1, 4, 2, torch.float32, "cpu")
    cache.length = 3
    cache.reset()
    assert cache.length == 0


def test_causal_mask_hand_example():
    mask = causal_mask(2, 3, "cpu")
    expected = torch.tensor([
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)
    assert torch.equal(causal_mask(0, 3, "cpu"), torch.ones(3, 3, dtype=torch.bool).tril())


def test_tree_mask_hand_example():
    mask = tree_mask(2, PARENTS, "cpu")
    assert mask.shape == (1 + len(PARENTS), 2 + 1 + len(PARENTS))
    assert mask.dtype == torch.bool
    #         prefix  root n0 n1 n2 n3 n4
    expected = torch.tensor([
        [1, 1, 1, 0, 0, 0, 0, 0],  # root
        [1, 1, 1, 1, 0, 0, 0, 0],  # n0
        [1, 1, 1, 0, 1, 0, 0, 0],  # n1
        [1, 1, 1, 1, 0, 1, 0, 0],  # n2 (parent n0)
        [1, 1, 1, 1, 0, 0, 1, 0],  # n3 (parent n0)
        [1, 1, 1, 1, 0, 1, 0, 1],  # n4 (parent n2)
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)
    # no prefix, empty tree: the root alone
    assert torch.equal(tree_mask(0, [], "cpu"), torch.ones(1, 1, dtype=torch.bool))


@pytest.mark.parametrize("seed", range(4))
def test_tree_mask_marks_exactly_the_prefix_the_root_and_each_nodes_ancestors(seed):
    generator = torch.Generator().manual_seed(seed)
    parents = [int(torch.randint(-1, node, (1,), generator=generator)) for node in range(30)]
    start = 5 * seed
    mask = tree_mask(start, parents, "cpu")
    for node in range(len(parents)):
        ancestors, walk = {node}, parents[node]
        while walk >= 0:
            ancestors.add(walk)
            walk = parents[walk]
        expected = [True] * (start + 1) + [other in ancestors for other in range(len(parents))]
        assert mask[node + 1].tolist() == expected


def test_tree_positions():
    positions = tree_positions(7, _depths(PARENTS), "cpu")
    assert positions.dtype == torch.long
    assert positions.tolist() == [7, 8, 8, 9, 9, 10]
