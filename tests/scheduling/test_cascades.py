"""The cascade and static-tree baselines (vc, hc, csd, tree): lossless, the draft model's own choices,
best-first node order, per-node levels, cache upkeep across steps, and the eval methods end to end."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import (
    TINY_CORPUS,
    joint_target_distribution,
    runtime_model,
    sampled_pair_pvalue,
)
from scipy.stats import chisquare

from drafttrain.cli import main
from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams, logits_to_probs
from drafttrain.drafters import BigramTable, ModelDrafter, NgramDrafter, TreeShape
from drafttrain.errors import DrafttrainError
from drafttrain.scheduling.cascades import CascadeDrafter
from drafttrain.scheduling.static_tree import StaticTreeDrafter

GREEDY = SamplingParams(0.0)
SAMPLING = SamplingParams(temperature=1.0, top_k=6)
PROMPTS = ([1, 2, 3, 1, 2], [5, 5, 5, 5], [7, 3, 9, 1, 4, 7, 3])
METHODS = ("vc", "hc", "csd", "tree")


def near_copy(seed: int, vocab: int, noise: float, layers: int = 3) -> torch.nn.Module:
    """The target built from `seed` with Gaussian noise on its weights: a draft that mostly agrees."""
    model = runtime_model(seed, vocab=vocab, layers=layers)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(noise * torch.randn(param.shape, generator=generator))
    return model


def make_drafter(method: str, draft_model, vocab: int):
    draft = ModelDrafter(draft_model, vocab)
    if method == "tree":
        return StaticTreeDrafter(draft, NgramDrafter(), nodes=8, max_depth=4, ngram_tokens=3)
    k_draft, k_after, k_review = {"vc": (4, 0, 3), "hc": (3, 3, 0), "csd": (3, 3, 3)}[method]
    return CascadeDrafter(draft, NgramDrafter(), k_draft, k_after, k_review, name=method)


def fresh_q(model, ids: list[int], sampling: SamplingParams = GREEDY) -> torch.Tensor:
    """The draft's q after `ids`, from a plain forward on a new cache."""
    with torch.inference_mode():
        logits = model(torch.tensor(ids), torch.arange(len(ids)), model.new_cache(len(ids)), 0)[-1]
    return logits_to_probs(logits, SamplingParams(1.0) if sampling.greedy else sampling)


def node_path(tree, node: int) -> list[int]:
    tokens = []
    while node >= 0:
        tokens.append(int(tree.tokens[node]))
        node = tree.parents[node]
    return tokens[::-1]


# ---------------------------------------------------------------- lossless


@pytest.mark.parametrize("method", METHODS)
def test_greedy_equals_autoregressive(method, one_thread):
    decoder = SpeculativeDecoder(runtime_model(0, vocab=16, layers=3))
    for draft_model, good in ((near_copy(0, 16, 0.02), True), (runtime_model(1, vocab=16, layers=3), False)):
        drafter = make_drafter(method, draft_model, 16)
        for prompt in PROMPTS:
            expected = decoder.generate(prompt, None, GenerationConfig(40)).tokens
            result = decoder.generate(prompt, drafter, GenerationConfig(40, shape=drafter.capacity()))
            assert result.tokens == expected
            if good:  # a near-copy of the target: most drafts are accepted
                assert result.stats.target_forwards <= 16


@pytest.mark.parametrize("method", METHODS)
def test_sampling_is_lossless(method, one_thread):
    """Chi-square over the joint distribution of the first two sampled tokens (vocab of 8)."""
    target = runtime_model(0, vocab=8, layers=1)  # one layer: a cheap forward for many draws
    decoder = SpeculativeDecoder(target)
    drafter = make_drafter(method, near_copy(0, 8, 0.3, layers=1), 8)
    prompt = [1, 5, 2, 7, 1, 5]  # recurring tokens: the n-gram level drafts too
    assert sampled_pair_pvalue(decoder, target, drafter, drafter.capacity(), SAMPLING, prompt, 2000) > 1e-3


@pytest.mark.parametrize("method", ["csd", "tree"])
def test_sampling_is_lossless_two_levels_deep(method, one_thread):
    """As above, generating three tokens: the first step's draft is two deep, so the second token
    comes from a draft-model child (tree) or an n-gram token after a reviewed draft token (csd)."""
    target = runtime_model(0, vocab=8, layers=1)
    decoder = SpeculativeDecoder(target)
    draft = ModelDrafter(near_copy(0, 8, 0.3, layers=1), 8)
    drafter = (StaticTreeDrafter(draft, NgramDrafter(), nodes=6, max_depth=2, ngram_tokens=1) if method == "tree"
               else CascadeDrafter(draft, NgramDrafter(), 1, 1, 1, name="csd"))
    prompt, draws = [1, 5, 2, 7, 1, 5], 1500
    expected = joint_target_distribution(target, prompt, SAMPLING).flatten() * draws
    counts = torch.zeros(64)
    for seed in range(draws):
        config = GenerationConfig(3, sampling=SAMPLING, shape=drafter.capacity(), seed=seed)
        tokens = decoder.generate(prompt, drafter, config).tokens
        counts[tokens[0] * 8 + tokens[1]] += 1
    assert chi_square_pvalue(counts, expected) > 1e-3


def chi_square_pvalue(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Bins expecting fewer than 5 are pooled, as in `sampled_pair_pvalue`."""
    keep = expected >= 5
    observed = torch.cat((counts[keep], counts[~keep].sum()[None]))
    expected = torch.cat((expected[keep], expected[~keep].sum()[None]))
    return float(chisquare(observed.numpy(), (expected * observed.sum() / expected.sum()).numpy()).pvalue)


# ---------------------------------------------------------------- the draft model's own choices


class Recorder:
    """Wraps a drafter; keeps every (context, tree) it proposed."""

    def __init__(self, drafter) -> None:
        self.drafter, self.name, self.steps = drafter, drafter.name, []
        self.max_positions = drafter.max_positions

    def reset(self) -> None:
        self.steps.clear()
        self.drafter.reset()

    def propose(self, context, shape, sampling, generator):
        tree = self.drafter.propose(context, shape, sampling, generator)
        self.steps.append((context.tolist(), tree))
        return tree

    def observe(self, tree, accepted) -> None:
        self.drafter.observe(tree, accepted)


def test_vertical_review_is_the_draft_models_own_greedy_chain(one_thread):
    draft_model = near_copy(0, 16, 0.3)
    vc = Recorder(make_drafter("vc", draft_model, 16))
    draft = vc.drafter.draft
    forwards = []
    score = draft.score
    draft.score = lambda sequence, rows: forwards.append(rows) or score(sequence, rows)
    decoder = SpeculativeDecoder(runtime_model(0, vocab=16, layers=3))
    decoder.generate([1, 2, 3, 1, 2, 3, 1], vc, GenerationConfig(40, shape=TreeShape.chain(4)))
    drafted = sum(len(tree) for _, tree in vc.steps)
    assert len(vc.steps) < len(forwards) < drafted  # reviews kept some n-gram tokens and rejected others
    reference = ModelDrafter(draft_model, 16)
    for context, tree in vc.steps:
        reference.reset()
        with torch.inference_mode():
            own = reference.propose(torch.tensor(context), TreeShape.chain(len(tree)), GREEDY, None)
        assert tree.tokens.tolist() == own.tokens.tolist()
        torch.testing.assert_close(tree.q_draft, own.q_draft, atol=1e-5, rtol=1e-4)


def test_vertical_review_samples_the_draft_models_distribution(one_thread):
    """The first two drafted tokens, reviewed from n-gram proposals, follow the draft model's q."""
    draft_model = runtime_model(3, vocab=8, layers=2)
    vc = CascadeDrafter(ModelDrafter(draft_model, 8), NgramDrafter(), 2, 0, 2, name="vc")
    # the n-gram drafter proposes 3, 1 (after "1"), which the draft model keeps about half the time
    prompt, draws = [2, 1, 1, 1, 1, 1, 1, 1, 3, 1], 2000
    context, generator = torch.tensor(prompt), torch.Generator()
    counts = torch.zeros(64)
    with torch.inference_mode():
        for seed in range(draws):
            vc.reset()
            tree = vc.propose(context, TreeShape.chain(2), SAMPLING, generator.manual_seed(seed))
            counts[int(tree.tokens[0]) * 8 + int(tree.tokens[1])] += 1
    torch.testing.assert_close(tree.q_draft[0], fresh_q(draft_model, prompt, SAMPLING))
    torch.testing.assert_close(tree.q_draft[1], fresh_q(draft_model, prompt + tree.tokens[:1].tolist(), SAMPLING))
    expected = joint_target_distribution(draft_model, prompt, SAMPLING).flatten() * draws
    assert 0.3 * draws < counts[3 * 8 + 1] < 0.7 * draws  # the draft keeps both proposals about half the time
    assert chi_square_pvalue(counts, expected) > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_draft_cache_stays_right_across_steps(method, one_thread):
    """Every draft-model node's q row is the draft's distribution after its path, computed afresh:
    the kept, rolled-back and tree-scratch cache entries never leak into a later step."""
    draft_model = near_copy(0, 16, 0.3)
    drafter = Recorder(make_drafter(method, draft_model, 16))
    decoder = SpeculativeDecoder(runtime_model(0, vocab=16, layers=3))
    decoder.generate([1, 2, 3, 1, 2, 3, 1], drafter, GenerationConfig(40, shape=drafter.drafter.capacity()))
    assert len(drafter.steps) > 3
    for context, tree in drafter.steps:
        for node, level in enumerate(tree.levels):
            if level == "draft0":
                q_row = fresh_q(draft_model, context + node_path(tree, node)[:-1])
                torch.testing.assert_close(tree.q_draft[node], q_row, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- the static tree


def brute_force_paths(model, prompt: list[int], vocab: int, depth: int) -> dict[tuple[int, ...], float]:
    """Cumulative draft probability of every path up to `depth` tokens."""
    cumulative = {}
    for length in range(1, depth + 1):
        for path in itertools.product(range(vocab), repeat=length):
            parent = cumulative.get(path[:-1], 1.0)
            cumulative[path] = parent * float(fresh_q(model, prompt + list(path[:-1]))[path[-1]])
    return cumulative


def test_static_tree_picks_the_most_probable_paths(one_thread):
    draft_model = runtime_model(2, vocab=6, layers=2)
    prompt = [1, 4, 2]
    tree_drafter = StaticTreeDrafter(ModelDrafter(draft_model, 6), NgramDrafter(), nodes=12, max_depth=3,
                                     ngram_tokens=0)
    with torch.inference_mode():
        tree = tree_drafter.propose(torch.tensor(prompt), tree_drafter.capacity(), GREEDY, None)
    cumulative = brute_force_paths(draft_model, prompt, 6, 3)
    best = sorted(cumulative, key=cumulative.get, reverse=True)[:12]
    assert [tuple(node_path(tree, node)) for node in range(len(tree))] == best
    assert tree.levels == ["draft0"] * 12
    assert max(tree.depths()) > 1 and len(tree.children(-1)) > 1  # a real tree, not a chain or a fan


def test_sampled_static_tree_shape_does_not_depend_on_the_draws(one_thread):
    """Sampled trees share one shape (the greedy best-first plan); siblings are drawn without replacement."""
    draft_model = runtime_model(2, vocab=8, layers=2)
    drafter = StaticTreeDrafter(ModelDrafter(draft_model, 8), NgramDrafter(), nodes=10, max_depth=4,
                                ngram_tokens=0)
    context, sampling = torch.tensor([1, 4, 2, 6]), SamplingParams(temperature=1.5)

    def shape_of(tree) -> list[tuple[int, int]]:
        return sorted((depth, len(tree.children(node))) for node, depth in enumerate(tree.depths()))

    shapes = set()
    with torch.inference_mode():
        for seed in range(6):
            drafter.reset()
            sampled = drafter.propose(context, drafter.capacity(), sampling, torch.Generator().manual_seed(seed))
            shapes.add(tuple(shape_of(sampled)))
            for node in range(len(sampled)):  # each child's q is its parent's q minus its earlier siblings
                siblings = sampled.children(sampled.parents[node])
                row = fresh_q(draft_model, context.tolist() + node_path(sampled, node)[:-1], sampling)
                for earlier in siblings[:siblings.index(node)]:
                    row[sampled.tokens[earlier]] = 0.0
                torch.testing.assert_close(sampled.q_draft[node], row / row.sum(), atol=1e-5, rtol=1e-4)
    assert len(shapes) == 1 and len(sampled) == 10


# ---------------------------------------------------------------- levels and settings


def test_levels_are_recorded_per_node(one_thread):
    draft_model = runtime_model(0, vocab=16, layers=3)
    context = torch.tensor([3, 8, 9, 10, 11, 3, 8])
    ngram = NgramDrafter(bigram=BigramTable.fit([list(range(16)) * 2], 16))  # always continues: t -> t + 1
    csd = CascadeDrafter(ModelDrafter(draft_model, 16), ngram, 3, 3, 3, name="csd")
    tree_drafter = StaticTreeDrafter(ModelDrafter(draft_model, 16), ngram, nodes=8, max_depth=4, ngram_tokens=3)
    with torch.inference_mode():
        chain = csd.propose(context, TreeShape.chain(6), GREEDY, None)
        tree = tree_drafter.propose(context, tree_drafter.capacity(), GREEDY, None)
    assert chain.levels == ["draft0"] * 3 + ["ngram"] * 3 and chain.is_chain
    assert chain.q_draft[3:].max(dim=-1).values.tolist() == [1.0, 1.0, 1.0]  # n-gram tokens: point masses
    assert tree.levels == ["draft0"] * 8 + ["ngram"] * (len(tree) - 8) and len(tree) > 8
    ngram_root = tree.parents[8]
    assert tree.levels[ngram_root] == "draft0" and not [c for c in tree.children(ngram_root) if c < 8]
    with torch.inference_mode():  # a shorter shape near the end of a generation is respected
        clipped = tree_drafter.propose(context, TreeShape.chain(2), GREEDY, None)
    assert len(clipped) <= 2 and max(clipped.depths()) <= 2


def test_bad_settings_are_clear_errors():
    draft, ngram = ModelDrafter(runtime_model(0, vocab=8), 8), NgramDrafter()
    with pytest.raises(DrafttrainError, match="k_draft=0"):
        CascadeDrafter(draft, ngram, 0, 2, 2, name="csd")
    with pytest.raises(DrafttrainError, match="k_ngram_review=-1"):
        CascadeDrafter(draft, ngram, 2, 0, -1, name="vc")
    with pytest.raises(DrafttrainError, match="nodes=0"):
        StaticTreeDrafter(draft, ngram, nodes=0)
    with pytest.raises(DrafttrainError, match="ngram_tokens=-2"):
        StaticTreeDrafter(draft, ngram, ngram_tokens=-2)


# ---------------------------------------------------------------- drafttrain eval


def test_eval_runs_the_baselines_losslessly(tmp_path, tiny_target, tiny_draft, capsys):
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"e{i}", "prompt": text}) + "\n"
                               for i, text in enumerate(TINY_CORPUS[:3])))
    out = tmp_path / "eval"
    code = main(["eval", "--target", str(tiny_target), "--prompts", str(prompts), "--methods", "ar,vc,hc,csd,tree",
                 "--draft", str(tiny_draft), "--max-new-tokens", "24", "--out", str(out), "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    for name in METHODS:
        entry = report["methods"][name]
        assert entry["lossless"] is True, name
        assert set(entry["stats"]["drafted"]) <= {"draft0", "ngram"} and entry["stats"]["drafted"]["draft0"] > 0
