"""A draft's vocabulary subset (FR-Spec): counting, the file, and a ModelDrafter that drafts only inside
it, losslessly."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import runtime_model, sampled_pair_pvalue

from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters import ModelDrafter, TreeShape
from drafttrain.drafters.vocab import (
    VOCAB_FILE,
    coverage,
    expand_logits,
    frequent_tokens,
    load_vocab_subset,
    save_vocab_subset,
    token_counts,
)
from drafttrain.errors import DrafttrainError
from drafttrain.runtime import load_model, load_tokenizer
from drafttrain.scheduling.oracle import teacher_forced_matches


def test_counts_frequent_tokens_and_coverage_against_a_direct_count():
    sequences = [[3, 1, 3, 0], [1, 3, 5], [5]]
    counts = token_counts(sequences, vocab_size=6)
    assert counts.tolist() == [1, 2, 0, 3, 0, 2]
    assert frequent_tokens(counts, 3).tolist() == [1, 3, 5]  # 3 (x3), then 1 and 5 (x2)
    assert frequent_tokens(counts, 2).tolist() == [1, 3]  # the tie 1 / 5 goes to the lower id
    assert coverage(frequent_tokens(counts, 2), counts) == pytest.approx(5 / 8)
    with pytest.raises(DrafttrainError, match="outside"):
        token_counts([[6]], vocab_size=6)
    with pytest.raises(DrafttrainError, match="size 0 is invalid"):
        frequent_tokens(counts, 0)


def test_the_vocab_file_round_trips_and_a_bad_one_names_the_file_and_field(tmp_path):
    assert load_vocab_subset(tmp_path, 10) is None  # no file: the whole vocabulary
    save_vocab_subset(tmp_path, torch.tensor([1, 4, 7]), counted_tokens=100, covered=0.9)
    assert load_vocab_subset(tmp_path, 10).tolist() == [1, 4, 7]
    assert not list(tmp_path.glob("*.partial"))
    (tmp_path / VOCAB_FILE).write_text('{"token_ids": [4, 1]}')
    with pytest.raises(DrafttrainError, match=f"{VOCAB_FILE}: field token_ids"):
        load_vocab_subset(tmp_path, 10)
    (tmp_path / VOCAB_FILE).write_text('{"ids": [1]}')
    with pytest.raises(DrafttrainError, match="token_ids"):
        load_vocab_subset(tmp_path, 10)
    save_vocab_subset(tmp_path, torch.tensor([3, 12]), counted_tokens=1, covered=1.0)
    with pytest.raises(DrafttrainError, match=r"\[0, 10\)"):
        load_vocab_subset(tmp_path, 10)


def test_expanded_logits_put_no_probability_outside_the_subset():
    full = expand_logits(torch.tensor([[2.0, 1.0]]), torch.tensor([1, 3]), 5)
    probs = full.softmax(-1)
    assert probs[0, [0, 2, 4]].tolist() == [0.0, 0.0, 0.0]
    assert probs[0, 1] > probs[0, 3] > 0


def test_the_subset_head_gives_the_full_heads_logits_on_its_rows():
    model = runtime_model(1, vocab=16)
    subset = torch.tensor([0, 3, 7, 8, 15])
    tokens, positions = torch.tensor([1, 5, 2]), torch.arange(3)
    with torch.inference_mode():
        full = model(tokens, positions, model.new_cache(8), 0)
        drafter = ModelDrafter(model, 16, vocab_subset=subset)
        cut = drafter._forward(model, model.new_cache(8), tokens, positions, 0, None)
    assert torch.allclose(cut[:, subset], full[:, subset], atol=1e-5)
    outside = torch.ones(16, dtype=torch.bool)
    outside[subset] = False
    assert torch.isinf(cut[:, outside]).all()


@pytest.mark.parametrize("shape", [TreeShape.chain(4), TreeShape((2, 2, 1))], ids=["chain4", "tree221"])
def test_a_subset_draft_proposes_inside_it_and_greedy_output_equals_ar(tiny_target, tiny_draft, shape):
    target, tokenizer = load_model(tiny_target), load_tokenizer(tiny_target)
    vocab = target.args.vocab_size
    prompt = tokenizer("def add(a, b):\n    return a + b\n\nfor i in range(10):\n").input_ids
    decoder = SpeculativeDecoder(target, tokenizer)
    reference = decoder.generate(prompt, None, GenerationConfig(max_new_tokens=40)).tokens
    subset = torch.tensor(sorted(set(reference[::2]) | set(range(0, vocab, 3))))  # some output tokens left out
    drafter = ModelDrafter(load_model(tiny_draft), vocab, vocab_subset=subset)
    seen: list[int] = []
    propose = drafter.propose

    def recording(*args):
        tree = propose(*args)
        seen.extend(tree.tokens.tolist())
        assert bool((tree.q_draft[:, ~torch.isin(torch.arange(vocab), subset)] == 0).all())
        return tree

    drafter.propose = recording
    result = decoder.generate(prompt, drafter, GenerationConfig(max_new_tokens=40, shape=shape))
    assert result.tokens == reference
    assert seen and set(seen) <= set(subset.tolist())
    static = SpeculativeDecoder(target, tokenizer, verify="static")
    static_drafter = ModelDrafter(load_model(tiny_draft), vocab, verify="static", vocab_subset=subset)
    assert static.generate(prompt, static_drafter, GenerationConfig(max_new_tokens=40, shape=shape)).tokens == reference


def test_from_pretrained_reads_the_subset_beside_the_weights(tiny_target, tiny_draft, tmp_path):
    tokenizer = load_tokenizer(tiny_target)
    vocab = load_model(tiny_target).args.vocab_size
    draft_dir = tmp_path / "draft"
    shutil.copytree(tiny_draft, draft_dir)
    assert ModelDrafter.from_pretrained(draft_dir, tokenizer, vocab).vocab_subset is None
    save_vocab_subset(draft_dir, torch.arange(0, vocab, 2), counted_tokens=10, covered=0.5)
    drafter = ModelDrafter.from_pretrained(draft_dir, tokenizer, vocab)
    assert drafter.vocab_subset.tolist() == list(range(0, vocab, 2))


def test_the_oracle_replays_a_subset_draft_by_its_own_argmax():
    model = runtime_model(2, vocab=16)
    ids = torch.tensor([1, 4, 2, 9, 3, 3, 7, 0, 5, 11])
    with torch.inference_mode():
        logits = model(ids, torch.arange(len(ids)), model.new_cache(16), 0)[2:-1]
    subset = torch.tensor([0, 2, 3, 5, 7, 9, 11])
    expected = (subset[logits[:, subset].argmax(-1)] == ids[3:]).numpy()
    assert (teacher_forced_matches(model, ids, 3, 16, vocab_subset=subset) == expected).all()


def test_sampling_with_a_subset_draft_is_lossless():
    """Chi-square over the joint distribution of the first two sampled tokens (vocab of 8)."""
    target = runtime_model(0, vocab=8, layers=3)
    drafter = ModelDrafter(runtime_model(1, vocab=8), 8, vocab_subset=torch.tensor([1, 2, 5, 7]))
    sampling = SamplingParams(temperature=1.0, top_k=6)
    decoder = SpeculativeDecoder(target)
    assert sampled_pair_pvalue(decoder, target, drafter, TreeShape((2, 2)), sampling, [1, 5, 2, 7, 3], 3000) > 1e-3
