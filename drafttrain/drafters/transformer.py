"""Drafters backed by a runtime transformer: a separate draft model, or a self-draft view.

Both grow the requested tree level by level, one forward per level (the last level needs none):
greedy takes each node's top-b tokens; sampling draws b tokens without replacement, recording for
each the distribution it was drawn from, which keeps verification lossless.

`ModelDrafter` owns a second model and its cache, and keeps the cache entries of accepted draft
tokens. `SelfDrafter` runs a `SelfDraftView` of the target itself over the target's own cache:
it reads the committed prefix and writes only scratch slots that the verify forward overwrites.
"""

from __future__ import annotations

from pathlib import Path

import torch

from drafttrain.decoding.sampling import SamplingParams, logits_to_probs
from drafttrain.drafters.base import DraftTree, TreeShape
from drafttrain.drafters.vocab import expand_logits, load_vocab_subset
from drafttrain.errors import DrafttrainError
from drafttrain.runtime.cache import KVCache, causal_mask, tree_mask
from drafttrain.runtime.loader import load_model, load_tokenizer
from drafttrain.runtime.model import Transformer
from drafttrain.runtime.static import BUCKETS, fixed_shape_forward
from drafttrain.runtime.views import SelfDraftView


def pick_children(probs: torch.Tensor, logits: torch.Tensor, count: int, sampling: SamplingParams,
                  generator: torch.Generator | None) -> tuple[list[int], list[torch.Tensor]]:
    """`count` child tokens of one node and, for each, the distribution it was drawn from."""
    if sampling.greedy:
        tokens = torch.topk(logits, count).indices.tolist()
        return tokens, [probs] * len(tokens)
    tokens, rows, remaining = [], [], probs
    for _ in range(count):
        token = int(torch.multinomial(remaining, 1, generator=generator))
        tokens.append(token)
        rows.append(remaining)
        remaining = remaining.clone()
        remaining[token] = 0.0
        total = remaining.sum()
        if total <= 0:
            break
        remaining = remaining / total
    return tokens, rows


class _TransformerDrafter:
    """Shared tree-growing logic; subclasses say which model, cache and view to use."""

    name = "transformer"
    view: SelfDraftView | None = None

    def __init__(self) -> None:
        self._start = 0  # slot of the first tree node in the last propose
        self._fed = 0  # tree nodes whose keys/values were computed in the last propose

    def _model_and_cache(self) -> tuple[Transformer, KVCache, int]:
        """The model, its cache and how many context tokens that cache already holds."""
        raise NotImplementedError

    def _fixed_shape(self):
        """The fixed-shape forward (`drafttrain.runtime.static`) this level's steps run through, or None
        to call the model directly (the default)."""

    def _forward(self, model: Transformer, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor,
                 start: int, mask: torch.Tensor | None, logits_rows: slice = slice(None)) -> torch.Tensor:
        fixed = self._fixed_shape()
        if fixed is None:
            return model(tokens, positions, cache, start, mask, self.view, logits_rows=logits_rows)
        return fixed(tokens, positions, start, mask, self.view)[logits_rows]

    def _vocab(self) -> int:
        return self._model_and_cache()[0].args.vocab_size

    def _distribution(self, logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
        return logits_to_probs(logits, sampling if not sampling.greedy else SamplingParams(1.0))

    def propose(self, context: torch.Tensor, shape: TreeShape, sampling: SamplingParams,
                generator: torch.Generator | None) -> DraftTree:
        model, cache, cached = self._model_and_cache()
        n_ctx = len(context)
        feed = context[cached:]
        mask = causal_mask(cached, len(feed), context.device) if len(feed) > 1 and cached > 0 else None
        logits = self._forward(model, cache, feed, torch.arange(cached, n_ctx, device=context.device), cached, mask,
                               slice(-1, None))
        tokens: list[int] = []
        parents: list[int] = []
        q_rows: list[torch.Tensor] = []
        frontier = [-1]
        self._start, self._fed = n_ctx, 0
        for depth, branching in enumerate(shape.branching, start=1):
            logits = _fit_vocab(logits, self._vocab())
            probs = self._distribution(logits, sampling)
            level_first = len(tokens)
            for row, node in enumerate(frontier):
                children, rows = pick_children(probs[row], logits[row], branching, sampling, generator)
                tokens += children
                parents += [node] * len(children)
                q_rows += rows
            frontier = list(range(level_first, len(tokens)))
            if depth == shape.depth:
                break
            logits = self._forward_level(model, cache, context.device, tokens, parents, frontier, n_ctx + depth - 1)
            self._fed = len(tokens)
        return DraftTree(torch.tensor(tokens, dtype=torch.long, device=context.device), parents,
                         torch.stack(q_rows))

    def _forward_level(self, model: Transformer, cache: KVCache, device: torch.device, tokens: list[int],
                       parents: list[int], level: list[int], position: int) -> torch.Tensor:
        """Logits after each node of the newest level, whose slots follow the earlier nodes'."""
        first, end = level[0], level[-1] + 1
        is_chain = all(parent == i - 1 for i, parent in enumerate(parents))
        mask = None if is_chain else tree_mask(self._start - 1, parents, device)[1 + first:1 + end]
        level_tokens = torch.tensor(tokens[first:end], dtype=torch.long, device=device)
        positions = torch.full((end - first,), position, dtype=torch.long, device=device)
        return self._forward(model, cache, level_tokens, positions, self._start + first, mask)

    def observe(self, tree: DraftTree, accepted: list[int]) -> None:
        pass

    def reset(self) -> None:
        pass


def _fit_vocab(logits: torch.Tensor, target_vocab: int) -> torch.Tensor:
    """Draft logits cut or padded (with -inf) to the target's vocabulary size."""
    vocab = logits.shape[-1]
    if vocab == target_vocab:
        return logits
    if vocab > target_vocab:
        return logits[..., :target_vocab]
    pad = logits.new_full((*logits.shape[:-1], target_vocab - vocab), float("-inf"))
    return torch.cat((logits, pad), dim=-1)


class SelfDrafter(_TransformerDrafter):
    """A self-draft view of the target, drafting over the decoder's own cache."""

    def __init__(self, decoder, view: SelfDraftView, name: str = "self") -> None:
        super().__init__()
        view.check_layers(decoder.target.args.num_layers)
        self.decoder, self.view, self.name = decoder, view, name

    def _model_and_cache(self) -> tuple[Transformer, KVCache, int]:
        cache = self.decoder.cache
        return self.decoder.target, cache, cache.length

    def _fixed_shape(self):
        return self.decoder.verifier  # over the decoder's cache, with this level's view per call


class ModelDrafter(_TransformerDrafter):
    """A separate small model with its own cache; accepted draft tokens keep their cache entries.

    vocab_subset: ascending token ids the draft may propose (`drafttrain.drafters.vocab`, FR-Spec), or
    None for the whole vocabulary. Eager steps then compute only those rows of the LM head; fixed-shape
    steps compute the whole head and cut the subset from it (the same distribution, without the saving).
    """

    def __init__(self, model: Transformer, target_vocab: int, name: str = "draft", verify: str = "eager",
                 compile: str | None = None, vocab_subset: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model, self.name, self.target_vocab = model, name, target_vocab
        self.max_positions = model.args.max_position_embeddings
        self.cache = model.new_cache(0)
        self.cached = 0
        self.verify, self.compile = verify, compile  # how its steps run, as the decoder's verify and compile
        self._fixed = None  # the fixed-shape forward over the current cache
        self.vocab_subset, self.subset_head = None, None
        if vocab_subset is not None:
            limit = min(model.args.vocab_size, target_vocab)
            if not len(vocab_subset) or int(vocab_subset.max()) >= limit:
                raise DrafttrainError(f"draft {name}: its vocabulary subset must be ids below {limit} (the draft's "
                                      "and the target's vocabulary): write it again from the target's tokenizer")
            self.vocab_subset = vocab_subset.to(model.device)
            self.subset_head = model.lm_head.weight.detach()[self.vocab_subset].contiguous()

    @classmethod
    def from_pretrained(cls, path: str | Path, target_tokenizer, target_vocab: int,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                        verify: str = "eager", compile: str | None = None) -> ModelDrafter:
        """The draft at `path` (an HF checkpoint directory), with its vocabulary subset if it has one."""
        check_same_tokenizer(load_tokenizer(path), target_tokenizer, str(path))
        model = load_model(path, dtype, device)
        return cls(model, target_vocab, name=Path(path).name or "draft", verify=verify, compile=compile,
                   vocab_subset=load_vocab_subset(path, min(model.args.vocab_size, target_vocab)))

    def _forward(self, model: Transformer, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor,
                 start: int, mask: torch.Tensor | None, logits_rows: slice = slice(None)) -> torch.Tensor:
        if self.vocab_subset is None:
            return super()._forward(model, cache, tokens, positions, start, mask, logits_rows)
        fixed = self._fixed_shape()
        if fixed is None:
            subset = model(tokens, positions, cache, start, mask, logits_rows=logits_rows, head=self.subset_head)
        else:
            subset = fixed(tokens, positions, start, mask, None)[logits_rows][:, self.vocab_subset]
        return expand_logits(subset, self.vocab_subset, self.target_vocab)

    def _fixed_shape(self):
        if self.verify == "eager":
            return None
        if self._fixed is None or self._fixed.cache is not self.cache:
            self._fixed = fixed_shape_forward(self.verify, self.model, self.cache, self.compile)
        return self._fixed

    def _model_and_cache(self) -> tuple[Transformer, KVCache, int]:
        return self.model, self.cache, self.cached

    def _vocab(self) -> int:
        return self.target_vocab

    def reset(self) -> None:
        self.cached = 0
        self.cache.reset()

    def propose(self, context: torch.Tensor, shape: TreeShape, sampling: SamplingParams,
                generator: torch.Generator | None) -> DraftTree:
        self.cached = min(self.cached, len(context) - 1)
        self._ensure_capacity(len(context) + shape.num_nodes)
        return super().propose(context, shape, sampling, generator)

    def _ensure_capacity(self, slots: int) -> None:
        """Grow the cache (keeping its entries) so a tree of any width fits past the context (and, for
        fixed-shape steps, a whole padded bucket past any step)."""
        if self.verify != "eager":
            slots += BUCKETS[-1]
        if self.cache.max_len >= slots:
            return
        grown = self.model.new_cache(max(slots, 2 * self.cache.max_len))
        grown.k[:, :, :self.cache.max_len] = self.cache.k
        grown.v[:, :, :self.cache.max_len] = self.cache.v
        self.cache = grown

    def uncached_tokens(self, context_length: int) -> int:
        """Tokens of a `context_length`-token context (the root included) that a propose there feeds
        before the path below the root: those past the cache entries it trusts (0 when it trusts the
        whole context, as after `keep_prefix` of that length). Schedulers price the feed by it."""
        return context_length - min(self.cached, context_length)

    def keep_prefix(self, length: int) -> None:
        """Trust only the cache entries of the first `length` context tokens from now on: a scheduler
        that drafts below several tree nodes in one step calls this (with the committed length)
        after each `propose`, instead of `observe`."""
        self.cached = min(length, self._start)

    def observe(self, tree: DraftTree, accepted: list[int]) -> None:
        """Keep the cache entries of accepted nodes that were fed through the draft model."""
        kept = [node for node in accepted if node < self._fed]
        self.cache.keep_path(self._start, [self._start + node for node in kept])
        self.cached = self._start + len(kept)

    # ---- direct feeding, for schedulers that drive the draft model themselves (see
    # drafttrain.scheduling.cascades and static_tree). They manage `cached` with `score`,
    # `rollback` and `keep_path` instead of calling `propose` / `observe`.

    def score(self, sequence: torch.Tensor, rows: int) -> torch.Tensor:
        """Logits after each of the last `rows` tokens of `sequence`, [rows, target vocab], in one forward.

        `sequence` is the whole sequence so far (committed context, then any draft tokens); the
        tokens past the trusted cache entries (at least the last `rows`) are fed with a causal mask.
        Afterwards every token of `sequence` counts as cached: `rollback` forgets the entries of
        tokens that turn out to be wrong.
        """
        length = len(sequence)
        if not 0 < rows <= length:
            raise ValueError(f"score: asked for {rows} logits rows of a {length}-token sequence")
        start = self.cached = min(self.cached, length - rows)
        fed = length - start
        mask = causal_mask(start, fed, sequence.device) if fed > 1 and start > 0 else None
        positions = torch.arange(start, length, device=sequence.device)
        logits = self.forward_at(sequence[start:], positions, start, mask, slice(-rows, None))
        self.cached = length
        return logits

    def forward_at(self, tokens: torch.Tensor, positions: torch.Tensor, slot: int, mask: torch.Tensor | None,
                   logits_rows: slice = slice(None)) -> torch.Tensor:
        """Feed `tokens` [n] into cache slots slot .. slot + n - 1 (the cache grows as needed) at RoPE
        `positions` [n], each seeing the slots `mask` [n, slot + n] allows (None: causal); returns
        logits fitted to the target's vocabulary. Which entries are trusted (`cached`) is unchanged:
        a tree's nodes live in scratch slots until `keep_path` keeps an accepted path."""
        self._ensure_capacity(slot + len(tokens))
        logits = self._forward(self.model, self.cache, tokens, positions, slot, mask, logits_rows)
        return _fit_vocab(logits, self.target_vocab)

    def rollback(self, length: int) -> None:
        """Trust only the cache entries of the first `length` tokens from now on (free: the cache is
        static, later writes overwrite the rest)."""
        self.cached = min(self.cached, length)

    def keep_path(self, start: int, slots: list[int]) -> None:
        """Make the entries at `slots` (an accepted path of tree nodes fed with `forward_at`, root
        side first) the tokens following the first `start` (which must be cached already), and
        trust exactly those."""
        self.cache.keep_path(start, slots)
        self.cached = start + len(slots)


def check_same_tokenizer(draft_tokenizer, target_tokenizer, draft_source: str) -> None:
    """Refuse a draft whose tokenizer maps any token differently from the target's."""
    draft_vocab, target_vocab = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    if draft_vocab != target_vocab:
        differing = sorted(set(draft_vocab.items()) ^ set(target_vocab.items()), key=str)[:3]
        raise DrafttrainError(
            f"draft {draft_source} uses a different tokenizer from the target "
            f"({len(draft_vocab)} vs {len(target_vocab)} tokens; e.g. {differing}); a draft must "
            "share the target's tokenizer: distill one with the target's tokenizer")
