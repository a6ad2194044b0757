"""Decoding edge cases: wide trees near the window, multi-byte stop strings, exact losslessness."""

from __future__ import annotations

import pytest
import torch

from conftest import runtime_model
from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams, logits_to_probs
from drafttrain.decoding.stopping import StopChecker
from drafttrain.decoding.verify import accept_prob, residual
from drafttrain.drafters import ModelDrafter, TreeShape
from drafttrain.runtime.cache import KVCache


# ---------------------------------------------------------------------------------- findings


def test_model_drafter_tree_near_the_draft_window_does_not_crash():
    """FINDING: ModelDrafter's cache has max_position_embeddings slots, but a tree level is written
    at slots n_ctx + node (node up to num_nodes of all but the last level), not at positions.
    check_length only guarantees prompt + max_new_tokens <= window, so a wide tree near the end
    writes past the cache: RuntimeError in KVCache.write."""
    target, draft = runtime_model(0, max_pos=64), runtime_model(1, max_pos=64)
    decoder = SpeculativeDecoder(target)
    prompt = list(range(16)) * 2  # 32 + 32 = 64 = both windows: accepted by check_length
    reference = decoder.generate(prompt, None, GenerationConfig(max_new_tokens=32)).tokens
    result = decoder.generate(prompt, ModelDrafter(draft, 16),
                              GenerationConfig(max_new_tokens=32, shape=TreeShape((4, 4, 2))))
    assert result.tokens == reference


class _ByteTokenizer:
    """A byte-fallback tokenizer: one token per UTF-8 byte (as Llama/Qwen do for rare characters)."""

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_stop_string_made_of_many_byte_tokens_is_detected():
    """FINDING (low): StopChecker decodes only the last len(longest stop string) + 8 tokens; a stop
    string whose characters take several byte tokens each (emoji, rare CJK) spans more tokens
    than that and is never found."""
    stop = "\U0001F600" * 4  # 4 characters, 16 UTF-8 bytes / tokens
    checker = StopChecker(100, (), (stop,), _ByteTokenizer())
    fired = [checker.feed(b) for b in ("x = 1\n" + stop).encode()]
    assert fired[-1] and not any(fired[:-1])


# ------------------------------------------------------------------ checked and found correct


def _exact_first_token(p, q, k, without_replacement):
    out = torch.zeros_like(p)

    def walk(p_node, q_cur, i, mass):
        if i == k or q_cur is None:
            out.add_(mass * p_node)
            return
        for x in range(len(p)):
            if q_cur[x] <= 0:
                continue
            a = accept_prob(p_node, q_cur, x)
            out[x] += mass * q_cur[x] * a
            if a < 1:
                q_next = q_cur
                if without_replacement:
                    q_next = q_cur.clone()
                    q_next[x] = 0
                    q_next = q_next / q_next.sum() if q_next.sum() > 0 else None
                walk(residual(p_node, q_cur), q_next, i + 1, mass * q_cur[x] * (1 - a))

    walk(p, q, 0, 1.0)
    return out


@pytest.mark.parametrize("without_replacement", [False, True])
def test_recursive_rejection_is_exactly_lossless(without_replacement):
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        p = (torch.randn(4, generator=gen, dtype=torch.float64) * 2).softmax(-1)
        q = (torch.randn(4, generator=gen, dtype=torch.float64) * 3).softmax(-1)
        if trial % 3 == 0:
            p[0] = 0
            p /= p.sum()
        for k in (1, 2, 3):
            torch.testing.assert_close(_exact_first_token(p, q, k, without_replacement), p)


def test_top_p_keeps_the_smallest_set_reaching_top_p():
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        logits = torch.randn(10, generator=gen) * 3
        top_p = float(torch.rand((), generator=gen)) * 0.98 + 0.01
        out = logits_to_probs(logits, SamplingParams(0.7, top_p=top_p))
        p = (logits.double() / 0.7).softmax(-1)
        order = p.argsort(descending=True)
        n = int((p[order].cumsum(0) < top_p - 1e-9).sum()) + 1
        ref = torch.zeros(10, dtype=torch.float64)
        ref[order[:n]] = p[order[:n]]
        torch.testing.assert_close(out.double(), ref / ref.sum(), atol=1e-5, rtol=0)


def test_keep_path_with_overlapping_slots():
    cache = KVCache(2, 1, 20, 1, torch.float32, "cpu")
    cache.k[:, 0, :, 0] = torch.arange(20.0)
    cache.v[:, 0, :, 0] = torch.arange(20.0)
    cache.keep_path(5, [6, 8, 9, 13])
    assert cache.k[1, 0, 5:9, 0].tolist() == [6.0, 8.0, 9.0, 13.0]
    assert cache.v[0, 0, 5:9, 0].tolist() == [6.0, 8.0, 9.0, 13.0]


@pytest.mark.parametrize("branching", [(1,), (3, 2, 2), (1, 3, 1), (2, 1, 1, 1, 1)])
def test_greedy_model_drafter_many_steps_and_early_stop(branching):
    target, draft = runtime_model(3, layers=3, max_pos=128), runtime_model(4, max_pos=128)
    decoder = SpeculativeDecoder(target)
    drafter = ModelDrafter(draft, 16)
    prompt = [3, 1, 4, 1, 5]
    reference = decoder.generate(prompt, None, GenerationConfig(max_new_tokens=40)).tokens
    for max_new in (40, 7, 40):  # an early stop, then a fresh call with the same drafter
        result = decoder.generate(prompt, drafter, GenerationConfig(max_new_tokens=max_new,
                                                                      shape=TreeShape(branching)))
        assert result.tokens == reference[:max_new]
