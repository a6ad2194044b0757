"""The speculative decoder: draft, verify in one target forward, keep the accepted path, repeat.

Readable top to bottom (gpt-fast style). The target's static KV cache holds every committed token
but the newest, the root of the next draft tree; one target forward over the root and the tree
(ancestor-only mask, depth-based positions) scores every draft token, verification picks the
accepted path and the next token, and the cache keeps only that path. Plain autoregressive
decoding (`drafter=None`) is the same loop with an empty tree.

With a deferral rule in the config (a lossy speculative cascade, `drafttrain.decoding.deferral`)
verification runs against pi, a blend of the target's and the draft's distributions, instead of
against the target's alone; without one (or with alpha = 0) decoding is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from drafttrain.decoding.deferral import DeferralRule, blend_tree_rows
from drafttrain.decoding.sampling import SamplingParams, logits_to_probs
from drafttrain.decoding.stats import RunStats
from drafttrain.decoding.stopping import StopChecker
from drafttrain.decoding.verify import verify_greedy, verify_sampling
from drafttrain.drafters.base import Drafter, DraftTree, TreeShape
from drafttrain.errors import DrafttrainError
from drafttrain.runtime.cache import KVCache, tree_mask, tree_positions
from drafttrain.runtime.model import Transformer
from drafttrain.runtime.static import BUCKETS, fixed_shape_forward


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    shape: TreeShape | None = None  # the draft tree asked of the drafter each step
    eos_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int = 0
    deferral: DeferralRule | None = None  # lossy speculative cascade: verify against pi, not p

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise DrafttrainError(f"max_new_tokens={self.max_new_tokens} is invalid: use a positive integer")


@dataclass
class VerifiedStep:
    """What one verify forward saw, for calibration traces (see `drafttrain.calibration.traces`).

    target_logits: [1 + n, vocab] float32, row 0 after the root, row 1 + i after tree node i.
    context_length: committed tokens of the sequence, prompt and root included.
    """

    drafter: str
    tree: DraftTree
    depths: list[int]
    target_logits: torch.Tensor
    path: list[int]
    context_length: int


@dataclass
class GenerationResult:
    tokens: list[int]  # the new tokens only
    stats: RunStats


VERIFY_MODES = ("eager", "static", "cuda-graphs")


class SpeculativeDecoder:
    """Decodes with a runtime `Transformer` target and any `Drafter` (or none: autoregressive).

    verify: how the target's verify forward runs. "eager" (the default) sizes it to the step;
    "static" pads it to a size bucket with a whole-cache mask (`drafttrain.runtime.static`);
    "cuda-graphs" replays that fixed-shape forward from a CUDA graph per bucket (CUDA only). All
    three give the same tokens. compile: a `torch.compile` backend for the fixed-shape forwards
    (e.g. "inductor"), or None; their first call per bucket (compiling, capturing) is counted in
    `self.verifier.setup_seconds`, not in the decoding stats.
    """

    def __init__(self, target: Transformer, tokenizer=None, verify: str = "eager", compile: str | None = None) -> None:
        if verify not in VERIFY_MODES:
            raise DrafttrainError(f"verify={verify!r} is invalid: use one of {', '.join(VERIFY_MODES)}")
        if compile is not None and verify == "eager":
            raise DrafttrainError(f"compile={compile!r} compiles the fixed-shape forwards: use it with verify='static' "
                                  "or verify='cuda-graphs'")
        if verify == "cuda-graphs":
            from drafttrain.runtime.graphs import require_cuda

            require_cuda("verify='cuda-graphs'", target.device)
        self.target = target
        self.tokenizer = tokenizer
        self.verify, self.compile = verify, compile
        self.cache: KVCache | None = None
        self.verifier = None  # the fixed-shape forward over the current cache (static and cuda-graphs); self-draft
        # levels, which share the cache, run their steps through it too

    def check_length(self, prompt_len: int, max_new_tokens: int, drafter: Drafter | None = None) -> None:
        """A clear error, before any work, when the sequence cannot fit the model's window."""
        if prompt_len == 0:
            raise DrafttrainError("the prompt is empty: give at least one token")
        window = self.target.args.max_position_embeddings
        limits = [("the target", window)]
        if self.target.args.sliding_window:
            limits.append(("the target's sliding window", self.target.args.sliding_window))
        if drafter is not None and getattr(drafter, "max_positions", None):
            limits.append((f"drafter {drafter.name}", drafter.max_positions))
        for what, limit in limits:
            if prompt_len + max_new_tokens > limit:
                raise DrafttrainError(
                    f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = "
                    f"{prompt_len + max_new_tokens} exceeds {what}'s window of {limit} tokens; "
                    "shorten the prompt or lower max_new_tokens")

    def _prepare_cache(self, needed: int) -> KVCache:
        if self.verify != "eager":
            needed += BUCKETS[-1]  # a padded step writes up to a whole bucket past the committed length
        if self.cache is None or self.cache.max_len < needed:
            # grown geometrically (up to the model's window) so that a run over prompts of rising
            # length reallocates a few times, not at every longer prompt
            grown = 0 if self.cache is None else min(2 * self.cache.max_len, self.target.args.max_position_embeddings)
            self.cache = self.target.new_cache(max(needed, grown))
            self.verifier = fixed_shape_forward(self.verify, self.target, self.cache, self.compile)
        self.cache.reset()
        return self.cache

    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[int] | torch.Tensor, drafter: Drafter | None = None,
                 config: GenerationConfig = GenerationConfig(),
                 trace: Callable[[VerifiedStep], None] | None = None,
                 on_tokens: Callable[[list[int]], None] | None = None) -> GenerationResult:
        """Decode `prompt_ids`; `trace`, if given, sees every verify step that had a draft, and
        `on_tokens` the new tokens each step commits (for streaming)."""
        device = self.target.device
        prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).flatten()
        self.check_length(len(prompt), config.max_new_tokens, drafter)
        if drafter is not None and config.shape is None:
            raise DrafttrainError(f"drafter {drafter.name} needs a draft shape (k or tree) in the config")
        if config.deferral is not None and drafter is None:
            raise DrafttrainError(f"deferral rule {config.deferral.name} needs a drafter: speculative cascades "
                                  "blend the draft's distribution into the target's")
        tree_nodes = config.shape.num_nodes if drafter is not None else 0
        total = len(prompt) + config.max_new_tokens
        cache = self._prepare_cache(total + tree_nodes + 1)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        stop = StopChecker(config.max_new_tokens, config.eos_token_ids, config.stop_strings, self.tokenizer)
        stats = RunStats()
        ids = torch.empty(total + tree_nodes + 1, dtype=torch.long, device=device)
        ids[:len(prompt)] = prompt
        length = len(prompt)  # committed tokens; the last one is not in the cache yet
        if drafter is not None:
            drafter.reset()

        started = time.perf_counter()
        self._prefill(prompt, cache, stats)
        while not stop.done:
            t_draft = time.perf_counter()
            shape = _clip_shape(config.shape, stop.remaining - 1) if drafter is not None else None
            tree = drafter.propose(ids[:length], shape, config.sampling, generator) if shape else DraftTree.empty(device)
            t_verify = _sync_time(device)
            depths = tree.depths()
            path, next_token, logits = self._verify(ids[length - 1], tree, depths, cache, config.sampling, generator,
                                                    config.deferral)
            stats.verify_seconds += _sync_time(device) - t_verify
            stats.draft_seconds += t_verify - t_draft
            if shape:
                drafter.observe(tree, path)
            if trace is not None and len(tree):
                trace(VerifiedStep(drafter.name, tree, depths, logits, path, length))
            stats.record_step(drafter.name if shape else None, depths, path, tree.levels, tree.parents)
            committed = len(stop.tokens)
            for token in tree.tokens[path].tolist() + [next_token]:
                ids[length] = token
                length += 1
                if stop.feed(token):
                    break
            if on_tokens is not None:
                on_tokens(stop.tokens[committed:])
        stats.total_seconds = time.perf_counter() - started
        stats.new_tokens = len(stop.tokens)
        return GenerationResult(stop.tokens, stats)

    def _prefill(self, prompt: torch.Tensor, cache: KVCache, stats: RunStats) -> None:
        """Put every prompt token but the last into the cache (the last is the first root)."""
        started = time.perf_counter()
        if len(prompt) > 1:
            self.target(prompt[:-1], torch.arange(len(prompt) - 1, device=prompt.device), cache, 0,
                        logits_rows=None)
            stats.prefill_forwards += 1
        cache.length = len(prompt) - 1
        stats.prefill_seconds += _sync_time(prompt.device) - started

    def _verify(self, root: torch.Tensor, tree: DraftTree, depths: list[int], cache: KVCache,
                sampling: SamplingParams, generator: torch.Generator,
                deferral: DeferralRule | None = None) -> tuple[list[int], int, torch.Tensor]:
        """One target forward over root + tree; keeps the accepted path in the cache.

        With `deferral`, each row's target distribution is replaced by the rule's blend pi with the
        draft distribution there (see `drafttrain.decoding.deferral`) before verification."""
        start = cache.length
        if self.verifier is not None:
            tokens = torch.cat((root[None], tree.tokens))
            visible = tree_mask(start, tree.parents, "cpu")
            logits = self.verifier(tokens, tree_positions(start, depths, root.device), start, visible)
        elif len(tree) == 0:
            logits = self.target(root[None], torch.tensor([start], device=root.device), cache, start)
        else:
            tokens = torch.cat((root[None], tree.tokens))
            positions = tree_positions(start, depths, root.device)
            mask = tree_mask(start, tree.parents, root.device)
            logits = self.target(tokens, positions, cache, start, mask)
        if sampling.greedy:
            path, next_token = verify_greedy(tree, _greedy_choices(logits, tree, deferral))
        else:
            probs = logits_to_probs(logits, sampling)
            if deferral is not None and len(tree):
                probs = blend_tree_rows(probs, tree, deferral)
            path, next_token = verify_sampling(tree, probs, generator)
        cache.keep_path(start + 1, [start + 1 + node for node in path])
        cache.length = start + 1 + len(path)
        return path, next_token, logits


def _greedy_choices(logits: torch.Tensor, tree: DraftTree, deferral: DeferralRule | None) -> torch.Tensor:
    """The token greedy verification wants at each row: the target's argmax, or under a deferral
    rule the argmax of pi (built from the temperature-1 distributions, as the draft's q is) at the
    rows where the rule changed the target's distribution; elsewhere the target's own argmax."""
    argmax = logits.argmax(dim=-1)
    if deferral is None or not len(tree):
        return argmax
    p_target = logits_to_probs(logits, SamplingParams(1.0))
    pi = blend_tree_rows(p_target, tree, deferral)
    changed = (pi != p_target).any(dim=-1)
    return torch.where(changed, pi.argmax(dim=-1), argmax)


def _clip_shape(shape: TreeShape, max_depth: int) -> TreeShape | None:
    """The draft shape cut to the tokens still wanted (a step yields depth + 1 tokens at most)."""
    if max_depth <= 0:
        return None
    return shape if shape.depth <= max_depth else TreeShape(shape.branching[:max_depth])


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
