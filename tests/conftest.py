"""Shared test fixtures: tiny random HF checkpoints (Llama, Qwen2, Mistral) and a tiny tokenizer.

Everything is built in the test session (random weights, a few layers, a small vocabulary) and
saved with `save_pretrained`, so the runtime's real loading code is what the tests exercise.
"""

from __future__ import annotations

import os
from pathlib import Path

# The Triton kernels (drafttrain.kernels) run in Triton's CPU interpreter in this suite; it must be
# chosen before triton is imported. TRITON_INTERPRET=0 in the environment keeps compiled kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

TINY_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    main()\n",
] * 20

EOS = "<|endoftext|>"


def make_tokenizer(out_dir: Path, vocab_size: int = 300, extra_text: str = ""):
    """A byte-level BPE tokenizer trained on a small code corpus, saved to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TINY_CORPUS + [extra_text], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=EOS)
    fast.save_pretrained(str(out_dir))
    return fast


def hf_config(family: str, vocab_size: int, **overrides):
    """A tiny transformers config of `family`: GQA everywhere, family-specific extras."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, initializer_range=0.2, bos_token_id=0, eos_token_id=0,
                  pad_token_id=0)
    if family == "llama":
        common.update(tie_word_embeddings=False, attention_bias=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
        cls = LlamaConfig
    elif family == "qwen2":
        common.update(tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        cls = Qwen2Config
    elif family == "mistral":
        common.update(tie_word_embeddings=False, sliding_window=4096)
        cls = MistralConfig
    else:
        raise ValueError(family)
    common.update(overrides)
    return cls(**common)


def make_checkpoint(out_dir: Path, family: str = "llama", seed: int = 0, tokenizer_dir: Path | None = None,
                    vocab_size: int = 300, perturb_from: Path | None = None, noise: float = 0.0,
                    **overrides) -> Path:
    """Save a random tiny model of `family` (and a tokenizer) with `save_pretrained`.

    With `perturb_from`, start from that checkpoint's weights and add Gaussian noise: a draft
    that agrees with the target often but not always.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if perturb_from is not None:
        model = AutoModelForCausalLM.from_pretrained(str(perturb_from), dtype=torch.float32)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(noise * torch.randn_like(param))
    else:
        model = AutoModelForCausalLM.from_config(hf_config(family, vocab_size, **overrides))
    model.save_pretrained(str(out_dir))
    if tokenizer_dir is None:
        make_tokenizer(out_dir, vocab_size)
    else:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out_dir))
    return out_dir


def runtime_model(seed: int, vocab: int = 16, layers: int = 2, max_pos: int = 64):
    """A random runtime `Transformer` built directly (no files), with peaked distributions."""
    from drafttrain.runtime.model import ModelArgs, Transformer
    from drafttrain.runtime.rope import RopeScaling

    args = ModelArgs("llama", vocab_size=vocab, hidden_size=16, intermediate_size=32, num_layers=layers,
                     num_heads=2, num_kv_heads=1, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0,
                     rope_scaling=RopeScaling(), max_position_embeddings=max_pos, tie_word_embeddings=False,
                     qkv_bias=False, o_bias=False, mlp_bias=False)
    torch.manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0, 0.6)
    return model.eval()


@pytest.fixture(autouse=True, scope="session")
def no_wandb():
    """Recipes log to wandb (offline) by default; the suite turns that off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        yield


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory) -> Path:
    """A tiny random Llama target with its tokenizer."""
    return make_checkpoint(tmp_path_factory.mktemp("target"), "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_draft(tmp_path_factory, tiny_target) -> Path:
    """The target with noisy weights: agrees with the target often, not always."""
    return make_checkpoint(tmp_path_factory.mktemp("draft"), seed=1, tokenizer_dir=tiny_target,
                           perturb_from=tiny_target, noise=0.05)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: extra intra-op threads only add hand-offs and contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def joint_target_distribution(model, prompt: list[int], sampling) -> torch.Tensor:
    """p(x1, x2 | prompt) for the processed target distribution, [8, 8]."""
    from drafttrain.decoding.sampling import logits_to_probs

    with torch.inference_mode():
        sequences = torch.tensor([prompt + [x1] for x1 in range(8)])
        rows = []
        for seq in sequences:
            logits = model(seq, torch.arange(len(seq)), model.new_cache(), 0)
            rows.append(logits_to_probs(logits[-2:], sampling))
    p_first = rows[0][0]
    return torch.stack([p_first[x1] * rows[x1][1] for x1 in range(8)])


def sampled_pair_pvalue(decoder, target, drafter, shape, sampling, prompt: list[int], draws: int) -> float:
    """Chi-square p-value of the first two tokens sampled by `decoder` with `drafter` against the
    target's joint distribution of them (vocab of 8); bins expecting fewer than 5 are pooled."""
    from scipy.stats import chisquare

    from drafttrain.decoding.engine import GenerationConfig

    expected = joint_target_distribution(target, prompt, sampling).flatten() * draws
    counts = torch.zeros(64)
    for seed in range(draws):
        tokens = decoder.generate(prompt, drafter, GenerationConfig(2, sampling=sampling, shape=shape, seed=seed)).tokens
        counts[tokens[0] * 8 + tokens[1]] += 1
    keep = expected >= 5
    observed = torch.cat((counts[keep], counts[~keep].sum()[None]))
    expected = torch.cat((expected[keep], expected[~keep].sum()[None]))
    return float(chisquare(observed.numpy(), (expected * observed.sum() / expected.sum()).numpy()).pvalue)
