"""drafttrain.kernels: each Triton kernel equals its torch reference, run in Triton's CPU interpreter.

TRITON_INTERPRET=1 is set by tests/conftest.py before anything imports triton; the kernels are
defined on first use, so they are built as interpreted functions here (on a GPU the same tests run
the compiled kernels if the variable is unset). Without triton installed the kernel tests skip.
"""

from __future__ import annotations

import pytest
import torch

from drafttrain.errors import DrafttrainError
from drafttrain.kernels.int8_linear import (
    int8_linear,
    int8_linear_reference,
    quantize_rows,
    quantize_weight,
)
from drafttrain.kernels.launch import check_launchable, triton_installed
from drafttrain.kernels.tree_attention import tree_attention, tree_attention_reference
from drafttrain.runtime.cache import tree_mask
from drafttrain.runtime.views import fake_quant

needs_triton = pytest.mark.skipif(not triton_installed(), reason="triton is not installed")


def random_parents(nodes: int, generator: torch.Generator) -> list[int]:
    """A random tree: node i's parent is the root (-1) or an earlier node."""
    return [int(torch.randint(-1, i, (1,), generator=generator)) if i else -1 for i in range(nodes)]


@needs_triton
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 2, 16), (2, 2, 24), (6, 1, 8)])
@pytest.mark.parametrize("prefix_length, nodes", [(0, 0), (5, 3), (70, 19), (130, 40)])
def test_tree_attention_matches_sdpa_over_the_cache(heads, kv_heads, head_dim, prefix_length, nodes):
    generator = torch.Generator().manual_seed(prefix_length * 100 + nodes + head_dim)
    size = 1 + nodes
    parents = random_parents(nodes, generator)
    local = tree_mask(prefix_length, parents, "cpu")[:, prefix_length:]  # the engine's own mask, tree part
    # keys and values as the decoder reads them: a prefix of a larger static cache (strided view)
    cache_k = torch.randn(3, kv_heads, prefix_length + size + 9, head_dim, generator=generator)
    cache_v = torch.randn(3, kv_heads, prefix_length + size + 9, head_dim, generator=generator)
    keys, values = cache_k[1, :, :prefix_length + size], cache_v[1, :, :prefix_length + size]
    q = torch.randn(heads, size, head_dim, generator=generator)
    expected = tree_attention_reference(q, keys, values, prefix_length, local)
    got = tree_attention(q, keys, values, prefix_length, local)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_triton
def test_tree_attention_with_the_whole_mask_as_draft_levels_pass_it():
    """prefix_length 0 and a mask over every slot (a draft level's later tree level hides earlier
    tree slots that are not its ancestors)."""
    generator = torch.Generator().manual_seed(11)
    prefix_length, parents = 9, [-1, -1, 0, 1, 2, 3]
    full = tree_mask(prefix_length - 1, parents, "cpu")  # root at slot 8, nodes after it
    rows = full[1 + 2:]  # the third and later nodes, fed after the first two
    q = torch.randn(4, rows.shape[0], 16, generator=generator)
    keys = torch.randn(2, full.shape[1], 16, generator=generator)
    values = torch.randn(2, full.shape[1], 16, generator=generator)
    expected = tree_attention_reference(q, keys, values, 0, rows)
    torch.testing.assert_close(tree_attention(q, keys, values, 0, rows), expected, rtol=1e-5, atol=1e-5)


@needs_triton
def test_tree_attention_sees_only_ancestors_in_the_tree():
    """Changing a node's value changes exactly the outputs of that node and its descendants."""
    generator = torch.Generator().manual_seed(7)
    parents = [-1, 0, -1, 1, 2]  # root -> 0 -> 1 -> 3 and root -> 2 -> 4
    prefix_length, size = 6, 6
    local = tree_mask(prefix_length, parents, "cpu")[:, prefix_length:]
    q = torch.randn(2, size, 8, generator=generator)
    keys = torch.randn(2, prefix_length + size, 8, generator=generator)
    values = torch.randn(2, prefix_length + size, 8, generator=generator)
    before = tree_attention(q, keys, values, prefix_length, local)
    values[:, prefix_length + 1 + 1] += 10.0  # node 1's value
    changed = (tree_attention(q, keys, values, prefix_length, local) - before).abs().amax(dim=(0, 2)) > 1e-4
    assert changed.tolist() == [False, False, True, False, True, False]  # node 1 (row 2) and node 3 (row 4)


@needs_triton
@pytest.mark.parametrize("tokens, in_features, out_features, bias", [(1, 40, 70, True), (5, 96, 64, False),
                                                                     (33, 130, 17, True)])
def test_int8_linear_matches_its_reference(tokens, in_features, out_features, bias):
    generator = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, in_features, generator=generator) * 3
    weight_q, weight_scale = quantize_weight(torch.randn(out_features, in_features, generator=generator))
    bias_values = torch.randn(out_features, generator=generator) if bias else None
    expected = int8_linear_reference(x, weight_q, weight_scale, bias_values)
    got = int8_linear(x, weight_q, weight_scale, bias_values)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_int8_reference_is_w8a8_of_the_fake_quant_activations():
    """The reference quantizes activations exactly as the CPU view's fake_quant does; with weights that
    are already int8 multiples of their scale, the two agree."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 32, generator=generator)
    weight_q, weight_scale = quantize_weight(torch.randn(8, 32, generator=generator))
    dequantized_weight = weight_q.float() * weight_scale[:, None]
    expected = fake_quant(x, "int8") @ dequantized_weight.T
    torch.testing.assert_close(int8_linear_reference(x, weight_q, weight_scale), expected, rtol=1e-5, atol=1e-5)
    values, scales = quantize_rows(x)
    assert values.dtype == torch.int8 and values.abs().max() == 127 and scales.shape == (4,)


def test_kernels_refuse_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr("drafttrain.kernels.launch.triton_installed", lambda: True)
    with pytest.raises(DrafttrainError, match="NVIDIA GPU.*TRITON_INTERPRET=1"):
        check_launchable("tree_attention", torch.zeros(1))
    monkeypatch.setattr("drafttrain.kernels.launch.triton_installed", lambda: False)
    with pytest.raises(DrafttrainError, match="pip install triton"):
        check_launchable("int8_linear", torch.zeros(1))


@needs_triton
def test_tree_attention_names_the_shape_that_is_wrong():
    q, keys = torch.zeros(4, 3, 8), torch.zeros(3, 10, 8)
    with pytest.raises(DrafttrainError, match=r"not a multiple of 3 kv heads.*expected .* = \(3, 5\)"):
        tree_attention(q, keys, keys, 5, torch.ones(3, 3, dtype=torch.bool))
