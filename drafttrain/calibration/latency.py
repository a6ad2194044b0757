"""Latency calibration: how long each drafting level and the target's verify take on this machine.

The scheduler chooses draft lengths and tree widths by weighing expected accepted tokens against
cost, so it needs predicted seconds for "level X runs a forward of n tokens at context length L"
and "the target verifies n tokens at context length L". This module

1. times those calls (`measure`) over a grid of token counts and context-length buckets, with
   warm-up sweeps and a robust average over repeats, interleaving the levels at every grid point
   so that drift of a busy machine hits all levels alike;
2. fits one `LatencyModel` per level, a sum of six simple terms in n and L with non-negative
   coefficients (so the fit never decreases when n or L grows), minimizing relative error; the
   target's model also carries its measured shape over every token count (`token_count_shape`),
   since on a CPU a verify over more tokens can cost less;
3. picks, per model level, the fastest row kernel of each token count (`tune_row_kernels`) before
   timing, so that the costs are those of the kernels the decoder will run;
4. stores the fit and those kernel plans with a hardware fingerprint as a JSON `LatencyProfile` (no pickle) whose loader
   validates every field and says how to fix a bad file.

The reported accuracy is the mean absolute percentage error (`mape`) on held-out timings: token
counts and context lengths between the fitted grid points.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters.base import TreeShape
from drafttrain.drafters.ngram import NgramDrafter
from drafttrain.errors import DrafttrainError
from drafttrain.io import write_atomically
from drafttrain.runtime.cache import KVCache, causal_mask
from drafttrain.runtime.model import Transformer
from drafttrain.runtime.row_kernels import DEFAULT_KERNEL, available_kernels, check_plan, pick_row_kernels
from drafttrain.runtime.views import SelfDraftView

PROFILE_FORMAT = "drafttrain-latency"
PROFILE_VERSION = 1
TARGET_LEVEL = "target"  # conventional level name of the target's verify forward

TOKEN_COUNTS = (1, 2, 4, 8, 16, 32, 64)
HELD_OUT_TOKEN_COUNTS = (3, 6, 12, 24, 48)
SMALLEST_CONTEXT = 32
MAX_FIT_CONTEXTS = 5

RECALIBRATE = "run `drafttrain run calibrate` to measure a new latency profile"

Call = Callable[[int, int], None]
"""One timed operation, run with (tokens n, context length L); it returns once the work is done."""


# --------------------------------------------------------------------------------------------
# Hardware fingerprint
# --------------------------------------------------------------------------------------------


def hardware_fingerprint(device: torch.device | str, dtype: torch.dtype) -> dict:
    """What the timings depend on: device name, dtype, intra-op threads and torch version."""
    device = torch.device(device)
    if device.type == "cuda":
        name = f"cuda: {torch.cuda.get_device_name(device)}"
    elif device.type == "cpu":
        name = f"cpu: {cpu_model_name()}"
    else:
        name = str(device)
    return {"device": name, "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows): hosts of one
    architecture differ in speed, so fingerprints and reports name the model."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def fingerprint_differences(recorded: Mapping, current: Mapping) -> list[str]:
    """Human-readable differences between a profile's fingerprint and this machine's."""
    return [f"{key}: {current.get(key)!r} here vs {recorded.get(key)!r} in the profile"
            for key in ("device", "dtype", "threads", "torch") if recorded.get(key) != current.get(key)]


# --------------------------------------------------------------------------------------------
# Timed calls
# --------------------------------------------------------------------------------------------


def model_forward_call(model: Transformer, view: SelfDraftView | None = None, seed: int = 0,
                       head: torch.Tensor | None = None, logits_rows: slice = slice(None)) -> Call:
    """A call running one `model` forward (through `view`, if given) of n tokens after L cached.

    The cache holds zeros and the tokens are random: the cost does not depend on the values.
    Multi-token forwards get an explicit causal mask; a tree mask has the same shape, hence the
    same cost, so this times chain and tree verification alike. Inputs are built once per (n, L)
    (in the warm-up calls), so the timing is the forward itself; `seed` draws the token ids.
    `logits_rows` and `head` are the forward's own (`Transformer.forward`): a verify forward needs
    every row's logits, a drafting forward only its last row's, over its vocabulary subset if it has one.
    """
    if view is not None:
        view.check_layers(model.args.num_layers)
    generator = torch.Generator().manual_seed(seed)
    caches: list[KVCache] = []
    inputs: dict[tuple[int, int], tuple] = {}

    def cache_for(needed: int) -> KVCache:
        if not caches or caches[0].max_len < needed:
            caches[:] = [model.new_cache(needed)]
        return caches[0]

    def call(tokens: int, context: int) -> None:
        if (tokens, context) not in inputs:
            inputs[tokens, context] = _forward_inputs(model, tokens, context, generator)
        ids, positions, mask = inputs[tokens, context]
        cache = cache_for(context + tokens)
        with torch.inference_mode():
            model(ids, positions, cache, start=context, mask=mask, view=view, logits_rows=logits_rows, head=head)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    return call


def _forward_inputs(model: Transformer, tokens: int, context: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    limit = model.args.max_position_embeddings
    if tokens < 1 or context < 0 or context + tokens > limit:
        raise DrafttrainError(
            f"cannot time {tokens} tokens after a context of {context}: the model has "
            f"{limit} positions; choose token counts >= 1 and context + tokens <= {limit}")
    ids = torch.randint(0, model.args.vocab_size, (tokens,), generator=generator).to(model.device)
    positions = torch.arange(context, context + tokens, device=model.device)
    mask = None if tokens == 1 else causal_mask(context, tokens, model.device)
    return ids, positions, mask


def tune_row_kernels(model: Transformer, call: Call, token_counts: Sequence[int], context: int,
                     repeats: int = 5, warmup: int = 1, margin: float = 0.03,
                     before: Callable[[], None] | None = None) -> dict[int, str]:
    """Time `call` (a forward of `model`, e.g. `model_forward_call`) at every token count after
    `context` tokens under each row kernel (`drafttrain.runtime.row_kernels`), apply the plan of
    winners to the model and return it ({} on CUDA, or where the default wins).

    Only the kernel of the timed row count changes between timings; the kernels are interleaved,
    in a rotating order, over `warmup` + `repeats` sweeps, and a kernel replaces the default only
    when it is faster by more than `margin`. `before`, if given, runs untimed before every timed
    call: the work that precedes the forward in decoding. A draft's forward follows the target's,
    which leaves it colder than back-to-back timing does, so a draft is timed as it runs there
    (`scripts/draft_cold_cost.py` compares the kernels after a target forward)."""
    if model.device.type != "cpu":
        return model.apply_row_kernels({})
    kernels = available_kernels(model.dtype)
    plan = model.apply_row_kernels({n: DEFAULT_KERNEL for n in token_counts}, prepare=kernels)
    samples: dict[int, dict[str, list[float]]] = {n: {kernel: [] for kernel in kernels} for n in token_counts}
    for sweep in range(warmup + repeats):
        for n in token_counts:
            for turn in range(len(kernels)):
                kernel = kernels[(sweep + turn) % len(kernels)]
                plan.clear()
                plan[n] = kernel
                if before is not None:
                    before()
                seconds = _seconds(call, n, context)
                if sweep >= warmup:
                    samples[n][kernel].append(seconds)
    averages = {n: {kernel: robust_average(values) for kernel, values in by_kernel.items()}
                for n, by_kernel in samples.items()}
    return model.apply_row_kernels(pick_row_kernels(averages, margin))


NGRAM_STEP_TOKENS = 4  # tokens a decoding step adds to the n-gram drafter's context between its calls


def ngram_call(drafter: NgramDrafter, text_ids: torch.Tensor, windows: int = 64) -> Call:
    """A call asking `drafter` for a chain of n tokens after a context of L ids of `text_ids`.

    The drafter's cost depends on the text (how often the last token recurred, how far earlier
    continuations agree), so successive calls at a grid point read successive windows of the
    text, ending at `windows` positions spread evenly over it (the text wraps around): the
    average over repeats is a typical cost rather than the cost of one particular text. Every
    grid point reads windows with the same ends, so the comparison between context lengths is
    not blurred by different texts.

    In decoding the drafter indexes its context incrementally: between two of its calls a step
    adds a few committed tokens (a tree's path below a node shares the context too). So before
    each timed call, `prepare` (untimed) lets the drafter index the window less its last
    NGRAM_STEP_TOKENS tokens, and the call proposes after the whole window: it is timed as a
    decoding step's lookup, cold after the other levels' forwards, not as indexing a new text
    from scratch (on the reference target that priced a lookup at 0.27 ms, against 0.04 ms).
    """
    text_ids = text_ids.reshape(-1).cpu()
    length = text_ids.numel()
    if length == 0 or windows < 1:
        raise DrafttrainError(f"ngram_call needs a non-empty text and windows >= 1 (got {length} ids, "
                              f"windows={windows})")
    return _NgramCall(drafter, text_ids, windows)


class _NgramCall:
    """`ngram_call`'s call: `prepare(n, L)` indexes the next window but its last tokens, untimed; calling it
    times the proposal after the whole window."""

    def __init__(self, drafter: NgramDrafter, text_ids: torch.Tensor, windows: int) -> None:
        self.drafter, self.text_ids, self.windows = drafter, text_ids, windows
        self.ends = [i * text_ids.numel() // windows for i in range(windows)]
        self.visits: dict[tuple[int, int], int] = {}
        self.tiled = text_ids
        self.sampling = SamplingParams()
        self.prepared: tuple[int, int, torch.Tensor] | None = None

    def window(self, tokens: int, context: int) -> torch.Tensor:
        """The next window of `context` ids for this grid point (successive visits read successive windows)."""
        length = self.text_ids.numel()
        visit = self.visits.get((tokens, context), 0)
        self.visits[tokens, context] = visit + 1
        copies_before = math.ceil(context / length)  # whole copies of the text before the window ends
        if self.tiled.numel() < (copies_before + 1) * length:
            self.tiled = self.text_ids.repeat(copies_before + 1)
        stop = copies_before * length + self.ends[visit % self.windows]
        return self.tiled[stop - context:stop]

    def prepare(self, tokens: int, context: int) -> None:
        window = self.window(tokens, context)
        earlier = window[:max(len(window) - NGRAM_STEP_TOKENS, 1)]
        self.drafter.propose(earlier, TreeShape.chain(tokens), self.sampling, None)
        self.prepared = (tokens, context, window)

    def __call__(self, tokens: int, context: int) -> None:
        if self.prepared is not None and self.prepared[:2] == (tokens, context):
            window = self.prepared[2]
        else:  # called without `prepare`: the next window, indexed from wherever the drafter is
            window = self.window(tokens, context)
        self.prepared = None
        self.drafter.propose(window, TreeShape.chain(tokens), self.sampling, None)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Seconds of one call of `level` with `tokens` new tokens after `context` tokens (the
    `robust_average` of the repeats)."""

    level: str
    tokens: int
    context: int
    seconds: float


def context_buckets(max_positions: int, largest_tokens: int,
                    max_context: int | None = None) -> tuple[list[int], list[int]]:
    """Context lengths to fit on and to hold out.

    Fit: powers of two from 32, plus the longest context that leaves room for `largest_tokens`
    (capped at `max_context`), thinned to at most five values spread over that range, ends kept.
    Held out: the midpoints between consecutive fit contexts.
    """
    longest = max_positions - largest_tokens - 1
    if max_context is not None:
        longest = min(longest, max_context)
    if longest < SMALLEST_CONTEXT:
        raise DrafttrainError(
            f"the model has {max_positions} positions (context cap {max_context}), too few to time "
            f"{largest_tokens} tokens after a context of {SMALLEST_CONTEXT}; time fewer tokens")
    lengths = [SMALLEST_CONTEXT << i for i in range(64) if SMALLEST_CONTEXT << i < longest] + [longest]
    if len(lengths) > MAX_FIT_CONTEXTS:
        picks = np.unique(np.linspace(0, len(lengths) - 1, MAX_FIT_CONTEXTS).round().astype(int))
        lengths = [lengths[i] for i in picks]
    return lengths, [(a + b) // 2 for a, b in pairwise(lengths)]


def measure(calls: Mapping[str, Call], token_counts: Sequence[int], context_lengths: Sequence[int],
            repeats: int = 7, warmup: int = 2, progress: bool = False, seed: int = 0) -> list[Timing]:
    """Time every call at every (n, L) of the grid; one `Timing` per level and point.

    The grid is swept `warmup` times untimed, then `repeats` times timed, each sweep in a fresh
    random order (seeded by `seed`), and at each point every level runs once, in turn. Spreading
    a point's repeats over the whole measurement, rather than running them back to back, keeps a
    busy spell of a shared machine from shifting whole rows or columns of the grid. A point's
    seconds are the `robust_average` of its repeats.
    """
    if repeats < 1 or warmup < 0:
        raise DrafttrainError(f"repeats={repeats}, warmup={warmup}: use repeats >= 1 and warmup >= 0")
    grid = [(n, length) for length in context_lengths for n in token_counts]
    samples: dict[tuple[str, int, int], list[float]] = {(level, n, length): [] for n, length in grid
                                                        for level in calls}
    sweeps = _sweeps(grid, warmup + repeats, seed)
    for sweep, (tokens, context) in _with_progress(sweeps, progress):
        for level, call in calls.items():
            seconds = _seconds(call, tokens, context)
            if sweep >= warmup:
                samples[level, tokens, context].append(seconds)
    return [Timing(level, n, length, robust_average(seconds)) for (level, n, length), seconds in samples.items()]


def robust_average(samples: Sequence[float], trim: float = 0.2) -> float:
    """The mean of the samples left after dropping the `trim` fraction at each end (at least one
    each from three samples on).

    Like the median, it ignores the spikes a busy machine adds to a few repeats. Unlike the
    median, it does not jump between modes when the cost itself is bimodal: the n-gram drafter
    is about twice as slow on texts whose last token recurs often, and in a 25-repeat run on
    the reference target its held-out MAPE was 15% from medians against 5% from this average.
    """
    ordered = sorted(samples)
    cut = max(1, round(trim * len(ordered))) if len(ordered) >= 3 else 0
    kept = ordered[cut:len(ordered) - cut]
    return sum(kept) / len(kept)


def _sweeps(grid: list[tuple[int, int]], count: int, seed: int) -> list[tuple[int, tuple[int, int]]]:
    """(sweep index, grid point) for `count` sweeps over `grid`, each in its own random order."""
    rng = np.random.default_rng(seed)
    return [(sweep, grid[i]) for sweep in range(count) for i in rng.permutation(len(grid))]


def _seconds(call: Call, tokens: int, context: int) -> float:
    """Seconds of one call; a call with a `prepare(tokens, context)` method gets it run first, untimed."""
    prepare = getattr(call, "prepare", None)
    if prepare is not None:
        prepare(tokens, context)
    start = time.perf_counter()
    call(tokens, context)
    return time.perf_counter() - start


def _with_progress(items: list, progress: bool) -> Iterator:
    if not progress:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description="timing forwards", total=len(items), transient=True)


# --------------------------------------------------------------------------------------------
# Latency model
# --------------------------------------------------------------------------------------------


# The cost of a forward: a fixed part (weights read once, per-op overheads), parts growing with the
# tokens (matmuls) and with the context (reading the KV cache), and attention growing with both:
# c0 + c1*n + c3*L + c4*n*L. Two concave terms were added after timing the reference target on CPU:
# - sqrt(n): the cost per token falls from n = 1 to about 16 (weight reads and op overheads are
#   shared while the matmuls turn compute-bound). Without it the forwards' residuals follow n
#   (over at n <= 2 and 64, under at 6..16) and their held-out MAPE is 6-7% instead of 3-4%.
# - log(1 + L): the n-gram drafter's cost saturates in L (it steps up once the last token has
#   recurred more than 64 times, then barely grows). Without it its held-out MAPE is 7-10%, with
#   it 5-7%; for the forwards it changes nothing.
# Every term is non-decreasing in n and L, and the coefficients are >= 0, so predictions are too.
FORM = "c0 + c1*n + c2*sqrt(n) + c3*L + c4*n*L + c5*log(1+L)"
TERM_NAMES = ("1", "n", "sqrt(n)", "L", "n*L", "log(1+L)")


def _features(tokens: np.ndarray, context: np.ndarray) -> np.ndarray:
    """[..., terms] values of the form's terms at (tokens, context)."""
    tokens, context = np.broadcast_arrays(tokens, context)
    return np.stack((np.ones_like(tokens), tokens, np.sqrt(tokens), context, tokens * context,
                     np.log1p(context)), axis=-1)


@dataclass(frozen=True)
class LatencyModel:
    """Predicted seconds = c0 + c1*n + c2*sqrt(n) + c3*L + c4*n*L + c5*log(1+L) for n new tokens
    after L context tokens (`FORM`; `TERM_NAMES` names the coefficients in order), times `shape[n - 1]`
    where a measured shape covers n.

    All coefficients are non-negative, so the smooth part is monotone non-decreasing in n and L. The
    shape (`token_count_shape`) carries what the smooth form cannot: on a CPU the cost of a forward
    over n tokens is not monotone in n, because the BLAS picks its GEMM kernel by the row count (on
    the reference target a 5-token verify is cheaper than a 3-token one). The scheduler sizes its
    trees on this measured curve.
    """

    coefficients: tuple[float, ...]
    shape: tuple[float, ...] = ()  # measured / smooth cost for n = 1 .. len(shape) tokens; 1 beyond

    def __post_init__(self) -> None:
        if len(self.coefficients) != len(TERM_NAMES):
            raise ValueError(f"{FORM} needs {len(TERM_NAMES)} coefficients, got {len(self.coefficients)}")
        if not all(math.isfinite(c) and c >= 0 for c in self.coefficients):
            raise ValueError(f"latency coefficients must be finite and >= 0, got {self.coefficients}")
        if not all(math.isfinite(factor) and factor > 0 for factor in self.shape):
            raise ValueError(f"latency shape factors must be finite and > 0, got {self.shape}")

    def predict(self, tokens: float | np.ndarray, context: float | np.ndarray) -> float | np.ndarray:
        """Seconds for a forward of `tokens` after `context` (scalars, or arrays that broadcast)."""
        tokens = np.asarray(tokens, dtype=np.float64)
        seconds = _features(tokens, np.asarray(context, dtype=np.float64)) @ np.asarray(self.coefficients)
        if self.shape:
            seconds = seconds * shape_factors(self.shape, np.broadcast_to(tokens, seconds.shape))
        return float(seconds) if seconds.ndim == 0 else seconds


def shape_factors(shape: Sequence[float], tokens: np.ndarray) -> np.ndarray:
    """`shape[n - 1]` for each whole token count n the shape covers, 1 elsewhere."""
    table = np.concatenate(([1.0], np.asarray(shape, dtype=np.float64)))
    counts = np.asarray(tokens, dtype=np.float64)
    index = np.where((counts >= 1) & (counts <= len(shape)) & (counts == np.round(counts)), counts, 0)
    return table[index.astype(np.int64)]


def token_count_shape(model: LatencyModel, timings: Sequence[Timing],
                      anchors: Sequence[int] = ()) -> tuple[float, ...]:
    """Per token count n = 1 .. N (every count timed, N the largest), the geometric mean over the timed
    contexts of measured / smooth seconds: the part of the cost curve that depends on n alone.

    anchors: token counts the smooth model was fitted at. The shape is scaled so that its geometric
    mean over them is 1: it then moves costs between the fitted counts, not the level the fit found.
    (The dense timings run one level back to back, which leaves more of its weights in the caches
    than the fit's interleaved grid, where every level runs at every point as in decoding.)"""
    by_count: dict[int, list[float]] = {}
    for timing in timings:
        smooth = LatencyModel(model.coefficients).predict(timing.tokens, timing.context)
        by_count.setdefault(timing.tokens, []).append(math.log(timing.seconds / smooth))
    largest = max(by_count, default=0)
    missing = [n for n in range(1, largest + 1) if n not in by_count]
    if missing:
        raise ValueError(f"a token-count shape needs every count from 1 to {largest}; {missing[:5]} were not timed")
    logs = [sum(values) / len(values) for _, values in sorted(by_count.items())]
    pinned = [logs[n - 1] for n in anchors if 1 <= n <= largest]
    level = sum(pinned) / len(pinned) if pinned else 0.0
    return tuple(math.exp(value - level) for value in logs)


def fit_latency(timings: Sequence[Timing]) -> dict[str, LatencyModel]:
    """One `LatencyModel` per level, fitted to that level's timings."""
    return {level: _fit_level(group) for level, group in _by_level(timings).items()}


def _by_level(timings: Sequence[Timing]) -> dict[str, list[Timing]]:
    groups: dict[str, list[Timing]] = {}
    for timing in timings:
        groups.setdefault(timing.level, []).append(timing)
    return groups


def _fit_level(timings: Sequence[Timing]) -> LatencyModel:
    """Non-negative least squares on relative errors (weights 1/seconds^2).

    The constant term is an ordinary column (no free intercept), so it is constrained to be
    non-negative like the others. Columns are scaled to a maximum of 1 for conditioning and the
    coefficients scaled back.
    """
    from sklearn.linear_model import LinearRegression

    tokens, context, seconds = (np.array([getattr(t, name) for t in timings], dtype=np.float64)
                                for name in ("tokens", "context", "seconds"))
    if np.any(seconds <= 0) or not np.all(np.isfinite(seconds)):
        raise DrafttrainError("latency timings must be positive finite seconds; re-measure them")
    features = _features(tokens, context)
    scale = features.max(axis=0)
    scale[scale == 0] = 1.0
    regression = LinearRegression(fit_intercept=False, positive=True)
    regression.fit(features / scale, seconds, sample_weight=1.0 / seconds**2)
    coefficients = np.clip(regression.coef_ / scale, 0.0, None)  # nnls gives >= 0; -0.0 aside
    return LatencyModel(tuple(float(c) for c in coefficients))


def split_timings(timings: Sequence[Timing], token_counts: Sequence[int],
                  context_lengths: Sequence[int]) -> tuple[list[Timing], list[Timing]]:
    """(timings on the grid token_counts x context_lengths, the others): to fit on and hold out."""
    on_grid = [t for t in timings if t.tokens in token_counts and t.context in context_lengths]
    return on_grid, [t for t in timings if not (t.tokens in token_counts and t.context in context_lengths)]


def mape(model: LatencyModel, timings: Sequence[Timing]) -> float:
    """Mean absolute percentage error of `model` on `timings`, as a fraction (0.05 = 5%)."""
    if not timings:
        raise ValueError("mape needs at least one timing")
    tokens, context, seconds = (np.array([getattr(t, name) for t in timings], dtype=np.float64)
                                for name in ("tokens", "context", "seconds"))
    return float(np.mean(np.abs(model.predict(tokens, context) - seconds) / seconds))


def mape_by_level(models: Mapping[str, LatencyModel], timings: Sequence[Timing]) -> dict[str, float]:
    """`mape` of each level's model on that level's timings (levels without a model are skipped)."""
    return {level: mape(models[level], group) for level, group in _by_level(timings).items() if level in models}


# --------------------------------------------------------------------------------------------
# Profile file
# --------------------------------------------------------------------------------------------


@dataclass
class LatencyProfile:
    """Fitted latency models of every level, with the hardware they were measured on.

    mape: held-out MAPE per level (None where not measured). grid: the token counts and context
    lengths timed, for the record (e.g. {"token_counts": [...], "context_lengths": [...]}).
    row_kernels: per model level, the row-kernel plan its timings ran with (`tune_row_kernels`);
    a decoder on the same hardware applies it (`apply_row_kernels`) to run what was timed.
    """

    fingerprint: dict
    models: dict[str, LatencyModel]
    mape: dict[str, float] = field(default_factory=dict)
    grid: dict[str, list[int]] = field(default_factory=dict)
    row_kernels: dict[str, dict[int, str]] = field(default_factory=dict)  # level -> {rows: kernel} it was timed with

    @classmethod
    def from_timings(cls, fingerprint: dict, fit_timings: Sequence[Timing],
                     held_out_timings: Sequence[Timing] = ()) -> LatencyProfile:
        """Fit on `fit_timings`; score on `held_out_timings` if any."""
        models = fit_latency(fit_timings)
        grid = {"token_counts": sorted({t.tokens for t in fit_timings}),
                "context_lengths": sorted({t.context for t in fit_timings})}
        if held_out_timings:
            grid["held_out_token_counts"] = sorted({t.tokens for t in held_out_timings})
            grid["held_out_context_lengths"] = sorted({t.context for t in held_out_timings})
        return cls(dict(fingerprint), models, mape_by_level(models, held_out_timings), grid)

    def predict(self, level: str, tokens: float, context: float) -> float:
        """Predicted seconds for `level` running `tokens` new tokens after `context` tokens."""
        if level not in self.models:
            raise DrafttrainError(f"the latency profile has no level {level!r} (it has {sorted(self.models)}): "
                                  f"{RECALIBRATE} with that level")
        return self.models[level].predict(tokens, context)

    def check_hardware(self, current_fingerprint: Mapping) -> list[str]:
        """Differences between the profiled hardware and `current_fingerprint` (empty: same)."""
        return fingerprint_differences(self.fingerprint, current_fingerprint)

    def apply_row_kernels(self, level: str, model: Transformer) -> dict[int, str]:
        """Give `model` the row-kernel plan `level` was timed with, if this is the profiled hardware
        (elsewhere the plan's kernels need not be the fast ones, and the default runs); returns the
        plan applied."""
        same = not self.check_hardware(hardware_fingerprint(model.device, model.dtype))
        return model.apply_row_kernels(self.row_kernels.get(level, {}) if same else {})

    # ---- JSON -------------------------------------------------------------------------------

    def to_json(self) -> dict:
        levels = {name: {"form": FORM, "coefficients": list(model.coefficients), "mape": self.mape.get(name),
                         **({"shape": list(model.shape)} if model.shape else {}),
                         **({"row_kernels": {str(rows): kernel for rows, kernel in sorted(self.row_kernels[name].items())}}
                            if self.row_kernels.get(name) else {})}
                  for name, model in self.models.items()}
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "fingerprint": dict(self.fingerprint),
                "levels": levels, "grid": {key: list(values) for key, values in self.grid.items()}}

    @classmethod
    def from_json(cls, data: object, source: str = "latency profile") -> LatencyProfile:
        """Validate a `to_json` document; every error names `source`, the field and the fix."""
        document = _expect(data, dict, source, "(document)", "a JSON object")
        _check_format(document, source)
        fingerprint = _read_fingerprint(document, source)
        levels = _expect(_required(document, "levels", source), dict, source, "levels", "an object {level: ...}")
        if not levels:
            raise _profile_error(source, "levels", "is empty; expected at least one level")
        models, mapes, plans = {}, {}, {}
        for name, entry in levels.items():
            models[name], level_mape = _read_level(entry, source, f"levels.{name}")
            if level_mape is not None:
                mapes[name] = level_mape
            plan = _read_row_kernels(entry, source, f"levels.{name}.row_kernels")
            if plan:
                plans[name] = plan
        return cls(fingerprint, models, mapes, _read_grid(document.get("grid", {}), source), plans)

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON, atomically."""
        return write_atomically(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LatencyProfile:
        """Read and validate a profile written by `save`."""
        path = Path(path)
        source = f"latency profile {path}"
        if not path.is_file():
            raise DrafttrainError(f"{source} does not exist: {RECALIBRATE}, or check the path")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DrafttrainError(f"{source} is not readable JSON ({error}): {RECALIBRATE}") from None
        return cls.from_json(data, source)


def _profile_error(source: str, field_name: str, problem: str) -> DrafttrainError:
    return DrafttrainError(f"{source}: field {field_name!r} {problem}. The file is damaged or not a latency "
                           f"profile: {RECALIBRATE}")


def _required(document: dict, key: str, source: str, prefix: str = "") -> object:
    if key not in document:
        raise _profile_error(source, prefix + key, "is missing")
    return document[key]


def _expect(value: object, kind: type | tuple[type, ...], source: str, field_name: str, expected: str):
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _profile_error(source, field_name, f"is {value!r}; expected {expected}")
    return value


def _check_format(document: dict, source: str) -> None:
    found = _required(document, "format", source)
    if found != PROFILE_FORMAT:
        raise _profile_error(source, "format", f"is {found!r}, expected {PROFILE_FORMAT!r}")
    version = _expect(_required(document, "version", source), int, source, "version", "an integer")
    if version > PROFILE_VERSION:
        raise DrafttrainError(
            f"{source}: field 'version' is {version}, written by a newer drafttrain (this one reads "
            f"version {PROFILE_VERSION}): upgrade drafttrain, or {RECALIBRATE} with this version")
    if version < 1:
        raise _profile_error(source, "version", f"is {version}; expected {PROFILE_VERSION}")


def _read_fingerprint(document: dict, source: str) -> dict:
    fingerprint = _expect(_required(document, "fingerprint", source), dict, source, "fingerprint", "an object")
    for key in ("device", "dtype"):
        _expect(_required(fingerprint, key, source, "fingerprint."), str, source, f"fingerprint.{key}", "a string")
    threads = _expect(_required(fingerprint, "threads", source, "fingerprint."), int, source,
                      "fingerprint.threads", "a positive integer")
    if threads < 1:
        raise _profile_error(source, "fingerprint.threads", f"is {threads}; expected a positive integer")
    if "torch" in fingerprint:
        _expect(fingerprint["torch"], str, source, "fingerprint.torch", "a string")
    return dict(fingerprint)


def _read_level(entry: object, source: str, prefix: str) -> tuple[LatencyModel, float | None]:
    entry = _expect(entry, dict, source, prefix, "an object with 'form' and 'coefficients'")
    form = _required(entry, "form", source, prefix + ".")
    if form != FORM:
        raise _profile_error(source, f"{prefix}.form", f"is {form!r}; this drafttrain fits {FORM!r}")
    coefficients = _expect(_required(entry, "coefficients", source, prefix + "."), list, source,
                           f"{prefix}.coefficients", f"a list of {len(TERM_NAMES)} numbers")
    if len(coefficients) != len(TERM_NAMES):
        raise _profile_error(source, f"{prefix}.coefficients",
                             f"has {len(coefficients)} values; expected {len(TERM_NAMES)} (for {FORM})")
    for index, value in enumerate(coefficients):
        _non_negative_number(value, source, f"{prefix}.coefficients[{index}]")
    level_mape = entry.get("mape")
    if level_mape is not None:
        level_mape = _non_negative_number(level_mape, source, f"{prefix}.mape")
    shape = _expect(entry.get("shape", []), list, source, f"{prefix}.shape", "a list of positive numbers")
    for index, value in enumerate(shape):
        if _non_negative_number(value, source, f"{prefix}.shape[{index}]") == 0:
            raise _profile_error(source, f"{prefix}.shape[{index}]", "is 0; expected a positive number")
    return LatencyModel(tuple(float(c) for c in coefficients), tuple(float(f) for f in shape)), level_mape


def _read_row_kernels(entry: dict, source: str, field_name: str) -> dict[int, str]:
    plan = _expect(entry.get("row_kernels", {}), dict, source, field_name, "an object {\"rows\": kernel}")
    if not all(isinstance(rows, str) and rows.isdigit() for rows in plan):
        raise _profile_error(source, field_name, f"has keys {sorted(plan)}; expected row counts such as \"2\"")
    try:
        return check_plan({int(rows): kernel for rows, kernel in plan.items()})
    except ValueError as error:
        raise _profile_error(source, field_name, str(error)) from None


def _non_negative_number(value: object, source: str, field_name: str) -> float:
    number = _expect(value, (int, float), source, field_name, "a finite number >= 0")
    if not math.isfinite(number) or number < 0:
        raise _profile_error(source, field_name, f"is {number!r}; expected a finite number >= 0")
    return float(number)


def _read_grid(grid: object, source: str) -> dict[str, list[int]]:
    grid = _expect(grid, dict, source, "grid", "an object {name: [integers]}")
    for key, values in grid.items():
        values = _expect(values, list, source, f"grid.{key}", "a list of integers")
        for value in values:
            _expect(value, int, source, f"grid.{key}", "a list of integers")
    return {key: list(values) for key, values in grid.items()}
