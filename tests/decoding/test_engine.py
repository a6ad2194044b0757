"""The decode loop end to end on tiny models: lossless greedy and sampling, stops, errors."""

from __future__ import annotations

import pytest
from conftest import make_checkpoint, runtime_model, sampled_pair_pvalue

from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters import (
    BigramTable,
    ModelDrafter,
    NgramDrafter,
    SelfDrafter,
    TreeShape,
)
from drafttrain.errors import DrafttrainError
from drafttrain.runtime import SelfDraftView, load_model, load_tokenizer

SHAPES = [TreeShape.chain(1), TreeShape.chain(4), TreeShape((2, 2, 1)), TreeShape((3, 1, 1, 1))]


@pytest.fixture(scope="module")
def target(tiny_target):
    return load_model(tiny_target), load_tokenizer(tiny_target)


def _prompt(tokenizer) -> list[int]:
    return tokenizer("def add(a, b):\n    return a + b\n\nfor i in range(10):\n").input_ids


def _drafters(decoder, tiny_draft, tokenizer, vocab):
    prompt = _prompt(tokenizer)
    return {
        "self-full": SelfDrafter(decoder, SelfDraftView()),  # accepts everything
        "self-skip": SelfDrafter(decoder, SelfDraftView(skip_attn=frozenset({1}), skip_mlp=frozenset({0, 2}))),
        "self-quant": SelfDrafter(decoder, SelfDraftView(act_quant=((0, "int4"), (1, "int8")))),
        "self-int8": SelfDrafter(decoder, SelfDraftView(act_quant=((0, "int8"), (1, "int8"), (2, "int8")),
                                                         head_quant="int8")),
        "self-fp16": SelfDrafter(decoder, SelfDraftView(skip_mlp=frozenset({1}), act_quant=((0, "fp16"), (2, "fp16")),
                                                         head_quant="fp16")),
        "model": ModelDrafter.from_pretrained(tiny_draft, tokenizer, vocab),
        "ngram": NgramDrafter(bigram=BigramTable.fit([prompt], vocab)),
    }


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s.branching)))
def test_greedy_speculative_equals_autoregressive(target, tiny_draft, shape):
    model, tokenizer = target
    decoder = SpeculativeDecoder(model, tokenizer)
    prompt = _prompt(tokenizer)
    reference = decoder.generate(prompt, None, GenerationConfig(max_new_tokens=60)).tokens
    assert len(reference) == 60
    for name, drafter in _drafters(decoder, tiny_draft, tokenizer, model.args.vocab_size).items():
        result = decoder.generate(prompt, drafter, GenerationConfig(max_new_tokens=60, shape=shape))
        assert result.tokens == reference, f"{name} with {shape} changed the output"
        assert result.stats.new_tokens == 60
        if name == "self-full":  # the full view is the target itself: everything is accepted
            assert result.stats.acceptance_rate == 1.0 or not shape.is_chain


def test_speculation_takes_fewer_target_forwards(target, tiny_draft):
    model, tokenizer = target
    decoder = SpeculativeDecoder(model, tokenizer)
    full = SelfDrafter(decoder, SelfDraftView())
    result = decoder.generate(_prompt(tokenizer), full, GenerationConfig(max_new_tokens=40, shape=TreeShape.chain(4)))
    assert result.stats.target_forwards == 8  # 5 tokens per forward
    assert result.stats.mean_accepted_tokens == 5.0
    assert result.stats.accepted_by_depth == result.stats.drafted_by_depth


def test_draft_cache_survives_many_rollbacks(target, tiny_draft):
    """A long run with a rejecting draft: its own cache must stay consistent with the target."""
    model, tokenizer = target
    decoder = SpeculativeDecoder(model, tokenizer)
    prompt = _prompt(tokenizer)
    reference = decoder.generate(prompt, None, GenerationConfig(max_new_tokens=200)).tokens
    drafter = ModelDrafter.from_pretrained(tiny_draft, tokenizer, model.args.vocab_size)
    for shape in (TreeShape.chain(5), TreeShape((2, 2, 2))):
        result = decoder.generate(prompt, drafter, GenerationConfig(max_new_tokens=200, shape=shape))
        assert result.tokens == reference
        assert 0 < sum(result.stats.accepted.values()) < sum(result.stats.drafted.values())


def test_eos_inside_a_draft_stops_every_mode_at_the_same_token(target, tiny_draft):
    model, tokenizer = target
    decoder = SpeculativeDecoder(model, tokenizer)
    prompt = _prompt(tokenizer)
    free_run = decoder.generate(prompt, None, GenerationConfig(max_new_tokens=40)).tokens
    eos = free_run[17]  # pretend this token is EOS: drafts run past it
    first = free_run.index(eos)
    config = GenerationConfig(max_new_tokens=40, eos_token_ids=(eos,))
    expected = free_run[:first + 1]
    assert decoder.generate(prompt, None, config).tokens == expected
    for drafter in (SelfDrafter(decoder, SelfDraftView()), NgramDrafter()):
        for shape in (TreeShape.chain(8), TreeShape((2, 1, 1, 1, 1, 1, 1))):
            result = decoder.generate(prompt, drafter, GenerationConfig(
                max_new_tokens=40, eos_token_ids=(eos,), shape=shape))
            assert result.tokens == expected


def test_stop_strings_end_generation_in_every_mode(target):
    model, tokenizer = target
    decoder = SpeculativeDecoder(model, tokenizer)
    prompt = _prompt(tokenizer)
    free_run = decoder.generate(prompt, None, GenerationConfig(max_new_tokens=40)).tokens
    text = tokenizer.decode(free_run)
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop
    config = GenerationConfig(max_new_tokens=40, stop_strings=(stop,))
    plain = decoder.generate(prompt, None, config).tokens
    assert stop in tokenizer.decode(plain) and stop not in tokenizer.decode(plain[:-1])
    drafted = decoder.generate(prompt, SelfDrafter(decoder, SelfDraftView()),
                               GenerationConfig(max_new_tokens=40, stop_strings=(stop,), shape=TreeShape.chain(6)))
    assert drafted.tokens == plain


def test_sampling_is_seeded_and_reproducible(target, tiny_draft):
    model, tokenizer = target
    decoder = SpeculativeDecoder(model, tokenizer)
    drafter = ModelDrafter.from_pretrained(tiny_draft, tokenizer, model.args.vocab_size)
    config = GenerationConfig(max_new_tokens=30, sampling=SamplingParams(0.8, top_k=50, top_p=0.9),
                              shape=TreeShape((2, 1, 1)), seed=5)
    first = decoder.generate(_prompt(tokenizer), drafter, config).tokens
    assert decoder.generate(_prompt(tokenizer), drafter, config).tokens == first
    other = GenerationConfig(**{**config.__dict__, "seed": 6})
    assert decoder.generate(_prompt(tokenizer), drafter, other).tokens != first


@pytest.mark.parametrize("kind,shape", [
    ("self", TreeShape.chain(3)),
    ("self-int8", TreeShape((2, 1))),
    pytest.param("self", TreeShape((3, 2)), marks=pytest.mark.slow),
    pytest.param("model", TreeShape.chain(2), marks=pytest.mark.slow),
    ("model", TreeShape((2, 2))),
])
def test_speculative_sampling_is_lossless_end_to_end(kind, shape):
    """Chi-square over the joint distribution of the first two sampled tokens (vocab of 8)."""
    target = runtime_model(0, vocab=8, layers=3)
    decoder = SpeculativeDecoder(target)
    views = {"self": SelfDraftView(skip_attn=frozenset({1}), skip_mlp=frozenset({2})),
             "self-int8": SelfDraftView(act_quant=((0, "int8"), (1, "int8"), (2, "fp16")), head_quant="int8")}
    drafter = SelfDrafter(decoder, views[kind]) if kind in views else ModelDrafter(runtime_model(1, vocab=8), 8)
    sampling = SamplingParams(temperature=1.0, top_k=6)
    prompt = [1, 5, 2, 7, 3]
    assert sampled_pair_pvalue(decoder, target, drafter, shape, sampling, prompt, 3000) > 1e-3


def test_prompt_too_long_is_an_error_before_any_work(target):
    model, tokenizer = target
    decoder = SpeculativeDecoder(model, tokenizer)
    with pytest.raises(DrafttrainError, match=r"exceeds the target's window of 256 tokens"):
        decoder.generate(list(range(200)), None, GenerationConfig(max_new_tokens=100))
    assert decoder.cache is None  # nothing was allocated


def test_bad_draft_settings_are_clear_errors(target, tmp_path):
    model, tokenizer = target
    with pytest.raises(DrafttrainError, match="k=0 is invalid"):
        TreeShape.chain(0)
    with pytest.raises(DrafttrainError, match="tree shape"):
        TreeShape((2, 0))
    decoder = SpeculativeDecoder(model, tokenizer)
    with pytest.raises(DrafttrainError, match="needs a draft shape"):
        decoder.generate([1, 2, 3], NgramDrafter(), GenerationConfig(max_new_tokens=4))
    with pytest.raises(DrafttrainError, match="max_new_tokens=0"):
        GenerationConfig(max_new_tokens=0)


def test_draft_with_a_different_tokenizer_is_refused(target, tmp_path):
    from conftest import make_tokenizer

    model, tokenizer = target
    other = make_checkpoint(tmp_path / "other", "llama", seed=3)
    make_tokenizer(other, vocab_size=300, extra_text="zzzz qqqq " * 50)
    with pytest.raises(DrafttrainError, match="different tokenizer"):
        ModelDrafter.from_pretrained(other, tokenizer, model.args.vocab_size)
