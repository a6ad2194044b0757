"""scripts/gpu_bench.py on CPU: the roofline arithmetic, reading a target's weights and KV shape, the
verdicts, and the clear stop when there is no CUDA device."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import gpu_bench


def test_copy_bandwidth_counts_read_and_write():
    assert gpu_bench.copy_bandwidth(size_bytes=1000, repeats=4, seconds=2.0) == 4000.0


def test_kv_bytes_per_token_is_keys_and_values_of_every_layer():
    assert gpu_bench.kv_bytes_per_token(num_layers=12, num_kv_heads=12, head_dim=64, bytes_per_value=2) == 36864


def test_mean_context_length_weights_every_new_token():
    # prompt of 10 tokens, 4 new: they attend to 10, 11, 12, 13 positions; prompt of 2, 1 new: to 2
    assert gpu_bench.mean_context_length([10], [4]) == 11.5
    assert gpu_bench.mean_context_length([10, 2], [4, 1]) == (10 + 11 + 12 + 13 + 2) / 5


def test_roofline_tokens_per_s_divides_bandwidth_by_bytes_per_token():
    # 200 MB of weights plus 36,864 B per position at 300 positions, at 3 TB/s
    bound = gpu_bench.roofline_tokens_per_s(200_000_000, 36_864, 300, 3e12)
    assert bound == pytest.approx(3e12 / (200_000_000 + 36_864 * 300))
    assert gpu_bench.roofline_tokens_per_s(100, 0, 1000, 1000) == 10


def test_weight_bytes_read_leaves_out_an_untied_input_embedding():
    tied = {"model.embed_tokens.weight": [10, 4], "model.layers.0.mlp.up_proj.weight": [8, 4]}
    untied = {**tied, "lm_head.weight": [10, 4]}
    assert gpu_bench.weight_bytes_read(tied, 2) == (40 + 32) * 2
    assert gpu_bench.weight_bytes_read(untied, 2) == (32 + 40) * 2


def test_roofline_reads_the_target_and_prompts(tiny_target, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_target))  # llama, untied, 3 layers, 2 KV heads
    read = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    assert gpu_bench.weight_bytes_read(gpu_bench.stored_weight_shapes(tiny_target), 2) == read * 2
    assert gpu_bench.kv_shape(tiny_target) == (3, 2, 8)

    prompts = tmp_path / "prompts" / "eval.jsonl"
    prompts.parent.mkdir()
    texts = ["def add(a, b):\n", "for i in range(10):\n    print(i)\n", "unused"]
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": text}) + "\n" for i, text in enumerate(texts)))
    lengths = [len(AutoTokenizer.from_pretrained(str(tiny_target))(text).input_ids) for text in texts[:2]]
    summary = {"target": str(tiny_target), "stages": [{"stage": "prompts", "dir": str(prompts.parent)}]}
    report = {"prompts": 2, "methods": {"ar": {"tokens_per_s_decode": 50.0,
                                               "per_prompt": [{"tokens": 4}, {"tokens": 6}]}}}
    bound = gpu_bench.roofline(summary, report, bytes_per_value=2, bandwidth=1e9)
    kv = gpu_bench.kv_bytes_per_token(3, 2, 8, 2)
    context = gpu_bench.mean_context_length(lengths, [4, 6])
    assert bound["mean_context_length"] == context
    assert bound["roofline_tokens_per_s"] == pytest.approx(1e9 / (read * 2 + kv * context))
    assert bound["ar_fraction_of_roofline"] == pytest.approx(50.0 / bound["roofline_tokens_per_s"])


def test_verdict_names_the_methods_that_were_not_lossless():
    entry = {"speedup_vs_ar": 1.5, "speedup_vs_hf": 2.0}
    report = {"methods": {"ar": {**entry, "lossless": True}, "hf": {**entry, "lossless": False},
                          "dytc": {**entry, "lossless": True}}}
    assert gpu_bench.not_lossless(report) == ["hf"]
    assert "2.00x `hf`" in gpu_bench.verdict_text(report)
    assert "not lossless**: hf" in gpu_bench.verdict_text(report)


def test_main_stops_with_a_clear_message_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_bench, "run_pipeline", lambda overrides: pytest.fail("the pipeline must not run"))
    assert gpu_bench.main(["--out", "outputs/never-written"]) != 0
    error = capsys.readouterr().err
    assert "this benchmark needs an NVIDIA GPU" in error
    assert "drafttrain quickstart" in error
