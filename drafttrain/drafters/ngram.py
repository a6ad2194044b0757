"""Model-free n-gram drafting: prompt lookup with a bigram-table fallback.

`NgramDrafter` implements the `Drafter` protocol without any neural network, as in prompt lookup
decoding and CS Drafting's Max-Gram: it finds the longest suffix of the committed tokens that
already occurred earlier in the sequence and proposes the tokens that followed that earlier
occurrence. Repetitive outputs (code edits, summaries quoting their input, retrieval answers)
get long, cheap, often-accepted drafts this way. When no suffix recurs, an optional
`BigramTable` fitted on a corpus proposes the most frequent successors of the last token.

The drafter is deterministic: its trees carry `q_draft=None` (a point mass on every proposed
token), which speculative sampling handles losslessly. It keeps a `TokenIndex` of the context it
last saw (every token's positions), brought up to date by re-indexing only the tail that changed
(a decoder's context grows by a few tokens per step; a scheduler's differs by a draft path), and
matches over it in plain Python: a call costs tens of microseconds, mostly fixed overhead (run
this module, `python -m drafttrain.drafters.ngram`, to benchmark it). `longest_match` is the
vectorized numpy reference of the same match.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters.base import DraftTree, TreeShape
from drafttrain.errors import DrafttrainError

BIGRAM_FORMAT = "drafttrain-bigram"
BIGRAM_VERSION = 1
BIGRAM_SUFFIXES = (".json", ".safetensors")
_NO_MATCH = np.empty(0, dtype=np.int64)
_EMPTY_CODES = np.empty(0, dtype=np.int64)
_FEW_OCCURRENCES = 64  # up to this many occurrences, compare all suffix tokens in one array


# --------------------------------------------------------------------------------------------
# Bigram table
# --------------------------------------------------------------------------------------------


class BigramTable:
    """For every token id, its `top` most frequent successors in a corpus, most frequent first.

    successors: [vocab_size, top] int64 token ids, -1 where a token has fewer successors.
    counts:     [vocab_size, top] int64 how often each successor followed the token (0 for -1).
    """

    def __init__(self, successors: np.ndarray, counts: np.ndarray, source: str = "BigramTable"):
        self.successors = np.ascontiguousarray(successors, dtype=np.int64)
        self.counts = np.ascontiguousarray(counts, dtype=np.int64)
        _check_table_arrays(self.successors, self.counts, source)

    @property
    def vocab_size(self) -> int:
        return int(self.successors.shape[0])

    @property
    def top(self) -> int:
        return int(self.successors.shape[1])

    def next_tokens(self, token: int, b: int) -> list[int]:
        """Up to `b` most frequent successors of `token` (fewer if it has fewer or is unknown)."""
        if not 0 <= token < self.vocab_size or b <= 0:
            return []
        row = self.successors[token, :b]
        return row[row >= 0].tolist()

    # ---- fitting ----------------------------------------------------------------------------

    @classmethod
    def fit(
        cls, sequences: Iterable[Sequence[int] | torch.Tensor], vocab_size: int, top: int = 4,
    ) -> BigramTable:
        """Count successor frequencies over `sequences`; keep each token's `top` most frequent
        successors (ties broken by the smaller token id)."""
        if vocab_size <= 0:
            raise DrafttrainError(
                f"vocab_size={vocab_size} is invalid: give the tokenizer's vocabulary size"
            )
        if top <= 0:
            raise DrafttrainError(f"top={top} is invalid: keep at least 1 successor per token")
        pair_codes = _pair_codes(sequences, vocab_size)
        codes, pair_counts = np.unique(pair_codes, return_counts=True)
        firsts, seconds = np.divmod(codes, vocab_size)
        # group by first token, most frequent successor first, smaller id on ties
        order = np.lexsort((seconds, -pair_counts, firsts))
        firsts, seconds, pair_counts = firsts[order], seconds[order], pair_counts[order]
        ranks = _rank_within_groups(firsts)
        keep = ranks < top
        successors = np.full((vocab_size, top), -1, dtype=np.int64)
        counts = np.zeros((vocab_size, top), dtype=np.int64)
        successors[firsts[keep], ranks[keep]] = seconds[keep]
        counts[firsts[keep], ranks[keep]] = pair_counts[keep]
        return cls(successors, counts)

    # ---- files ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table atomically as `.json` or `.safetensors` (chosen by the suffix)."""
        path = Path(path)
        suffix = _table_suffix(path)
        if suffix == ".json":
            payload = json.dumps({
                "format": BIGRAM_FORMAT, "version": BIGRAM_VERSION, "vocab_size": self.vocab_size,
                "top": self.top, "successors": self.successors.tolist(),
                "counts": self.counts.tolist(),
            }).encode()
        else:
            payload = safetensors_bytes(
                {"successors": self.successors, "counts": self.counts},
                metadata={"format": BIGRAM_FORMAT, "version": str(BIGRAM_VERSION),
                          "vocab_size": str(self.vocab_size), "top": str(self.top)},
            )
        _write_atomically(path, payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BigramTable:
        """Read and validate a table written by `save`."""
        path = Path(path)
        suffix = _table_suffix(path)
        if not path.is_file():
            raise DrafttrainError(
                f"bigram table {path} does not exist: check the path, or create it with "
                "BigramTable.fit(...).save(path)"
            )
        header, successors, counts = (
            _read_json_table(path) if suffix == ".json" else _read_safetensors_table(path)
        )
        _check_header(header, path)
        vocab_size = int(header["vocab_size"])
        if successors.ndim != 2 or successors.shape[0] != vocab_size:
            raise _table_error(path, "successors", f"has shape {list(successors.shape)} but "
                               f"vocab_size is {vocab_size}; expected [vocab_size, top]")
        top = int(header["top"])
        if successors.shape[1] != top:
            raise _table_error(path, "successors", f"has {successors.shape[1]} columns but top "
                               f"is {top}; expected [vocab_size, top]")
        return cls(successors, counts, source=f"bigram table {path}")


def _pair_codes(sequences: Iterable[Sequence[int] | torch.Tensor], vocab_size: int) -> np.ndarray:
    """Every adjacent (token, successor) pair of the sequences, as token * vocab + successor."""
    codes = [_EMPTY_CODES]
    for index, sequence in enumerate(sequences):
        ids = _as_id_array(sequence)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise DrafttrainError(
                f"sequence {index} has token ids outside [0, {vocab_size}): pass the tokenizer's "
                "full vocabulary size as vocab_size"
            )
        codes.append(ids[:-1] * vocab_size + ids[1:])
    return np.concatenate(codes)


def _as_id_array(sequence: Sequence[int] | torch.Tensor) -> np.ndarray:
    if isinstance(sequence, torch.Tensor):
        return sequence.detach().cpu().reshape(-1).numpy().astype(np.int64, copy=False)
    return np.asarray(sequence, dtype=np.int64).reshape(-1)


def _rank_within_groups(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of an already sorted array."""
    if sorted_keys.size == 0:
        return sorted_keys.copy()
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    run_lengths = np.diff(np.r_[starts, sorted_keys.size])
    return np.arange(sorted_keys.size) - np.repeat(starts, run_lengths)


def _table_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in BIGRAM_SUFFIXES:
        raise DrafttrainError(
            f"bigram table {path} has suffix {path.suffix or '(none)'!r}: name the file "
            f"with one of {', '.join(BIGRAM_SUFFIXES)}"
        )
    return suffix


def _write_atomically(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the target directory, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(payload)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _table_error(path: Path, field: str, problem: str) -> DrafttrainError:
    return DrafttrainError(
        f"bigram table {path}: field {field!r} {problem}. The file is damaged or not a bigram "
        "table: refit it with BigramTable.fit(...) and save it again"
    )


def _read_json_table(path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DrafttrainError(
            f"bigram table {path} is not readable JSON ({error}): refit it with "
            "BigramTable.fit(...) and save it again"
        ) from None
    if not isinstance(document, dict):
        raise _table_error(path, "format", "is missing (the file is not a JSON object)")
    arrays = [_json_int_array(document, field, path) for field in ("successors", "counts")]
    return document, arrays[0], arrays[1]


def _json_int_array(document: dict, field: str, path: Path) -> np.ndarray:
    if field not in document:
        raise _table_error(path, field, "is missing")
    try:
        array = np.asarray(document[field])
    except ValueError:
        problem = "has rows of different lengths; expected [vocab_size, top]"
        raise _table_error(path, field, problem) from None
    if array.ndim != 2:
        raise _table_error(path, field, f"has {array.ndim} dimensions; expected [vocab_size, top]")
    if array.dtype.kind not in "iu":
        raise _table_error(path, field, f"holds {array.dtype} values; expected integers")
    return array.astype(np.int64)


def _read_safetensors_table(path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = dict(handle.metadata() or {})
            names = set(handle.keys())
            for field in ("successors", "counts"):
                if field not in names:
                    raise _table_error(path, field, "is missing from the tensors")
            successors, counts = handle.get_tensor("successors"), handle.get_tensor("counts")
    except (OSError, SafetensorError) as error:
        raise DrafttrainError(
            f"bigram table {path} is not a readable safetensors file ({error}): refit it with "
            "BigramTable.fit(...) and save it again"
        ) from None
    for field, array in (("successors", successors), ("counts", counts)):
        if array.dtype.kind not in "iu":
            raise _table_error(path, field, f"holds {array.dtype} values; expected integers")
    return header, successors.astype(np.int64), counts.astype(np.int64)


def _check_header(header: dict, path: Path) -> None:
    if header.get("format") != BIGRAM_FORMAT:
        found = header.get("format")
        raise _table_error(path, "format", f"is {found!r}, expected {BIGRAM_FORMAT!r}")
    if str(header.get("version")) != str(BIGRAM_VERSION):
        raise _table_error(path, "version", f"is {header.get('version')!r}; this drafttrain reads "
                           f"version {BIGRAM_VERSION}")
    for field in ("vocab_size", "top"):
        value = header.get(field)
        if not _is_positive_int(value):
            raise _table_error(path, field, f"is {value!r}; expected a positive integer")


def _is_positive_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return value.isdigit() and int(value) > 0
    return isinstance(value, int) and value > 0


def _check_table_arrays(successors: np.ndarray, counts: np.ndarray, source: str) -> None:
    def fail(field: str, problem: str) -> DrafttrainError:
        return DrafttrainError(f"{source}: field {field!r} {problem}. Refit the table with "
                               "BigramTable.fit(...) and save it again")

    if successors.ndim != 2 or successors.shape[0] == 0 or successors.shape[1] == 0:
        raise fail("successors", f"has shape {list(successors.shape)}; expected [vocab_size, top] "
                   "with both at least 1")
    if counts.shape != successors.shape:
        raise fail("counts", f"has shape {list(counts.shape)} but successors has "
                   f"{list(successors.shape)}; they must match")
    vocab_size = successors.shape[0]
    if successors.min() < -1 or successors.max() >= vocab_size:
        raise fail("successors", f"holds token ids outside [-1, {vocab_size})")
    if counts.min() < 0:
        raise fail("counts", "holds negative counts")


# --------------------------------------------------------------------------------------------
# Drafter
# --------------------------------------------------------------------------------------------


class NgramDrafter:
    """Prompt-lookup drafter (longest recurring suffix) with an optional bigram fallback.

    min_match:  shortest suffix (in tokens, root included) that counts as a match. Default 1: a
                single recurring token already predicts well in repetitive text, and without a
                bigram table there is no better guess.
    max_match:  longest suffix compared. Default 8: longer matches rarely change which earlier
                occurrence wins, and the cost grows with it.
    bigram:     fallback when no suffix of at least `min_match` tokens recurs; None means the
                drafter returns an empty draft then (the engine does a plain target step).
    max_occurrences: continuations are read from at most this many of the most recent earlier
                occurrences of the matched suffix (bounds the per-call cost on very repetitive
                contexts; the match itself is always found over the whole context). Default 64.

    Tree shapes: the root gets up to `shape.branching[0]` children. With prompt lookup every
    branch is a continuation copied from one earlier occurrence of the longest matched suffix
    (a single path; most recent occurrence first); continuations are merged into a trie, so a
    node at depth d gets more than one child only where continuations diverge there and
    `branching[d] > 1` allows it (deeper factors otherwise go unused). A chain shape follows the
    most recent occurrence; where its continuation reaches the end of the context, an older
    occurrence whose continuation agrees so far extends it. The bigram fallback gives each node
    at depth d its top `branching[d]` successors, so (b, 1, 1, ...) is the top-b successors of
    the last token, each continued greedily.
    """

    name = "ngram"
    drafts_in_one_call = True  # a chain of any length costs one lookup: schedulers price it so

    def __init__(
        self, min_match: int = 1, max_match: int = 8, bigram: BigramTable | None = None,
        max_occurrences: int = 64,
    ):
        if min_match < 1:
            raise DrafttrainError(f"min_match={min_match} is invalid: use 1 or more tokens")
        if max_match < min_match:
            raise DrafttrainError(
                f"max_match={max_match} is smaller than min_match={min_match}: "
                "use max_match >= min_match"
            )
        if max_occurrences < 1:
            raise DrafttrainError(f"max_occurrences={max_occurrences} is invalid: use 1 or more")
        self.min_match = min_match
        self.max_match = max_match
        self.bigram = bigram
        self.max_occurrences = max_occurrences
        self.index = TokenIndex()

    def reset(self) -> None:
        """Drop the token index (a cache: any context is re-checked against it anyway)."""
        self.index = TokenIndex()

    def observe(self, tree: DraftTree, accepted: list[int]) -> None:
        """Nothing to learn: drafts depend on the context only."""

    def propose(
        self, context: torch.Tensor, shape: TreeShape, sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> DraftTree:
        """Draft from the longest recurring suffix of `context`, else from the bigram table."""
        del sampling, generator  # deterministic: every proposed token is a point mass
        ids = self.index.update(_cpu_ids(context))
        match_length, tokens, parents = self._lookup_tree(shape)
        if not tokens and self.bigram is not None and ids:
            tokens, parents = _bigram_tree(self.bigram, ids[-1], shape.branching)
        if not tokens:
            return DraftTree.empty(context.device)
        return DraftTree(torch.tensor(tokens, dtype=torch.long, device=context.device), parents,
                         match_lengths=[match_length] * len(tokens))

    def _lookup_tree(self, shape: TreeShape) -> tuple[int, list[int], list[int]]:
        """(length of the matched suffix, tokens, parents) for the indexed context; (0, [], []) without
        a match."""
        length, ends = self.index.longest_match(self.min_match, self.max_match)
        if not ends:
            return 0, [], []
        if shape.is_chain:
            tokens = self.index.chain_continuation(ends[: self.max_occurrences], shape.depth)
            return length, tokens, list(range(-1, len(tokens) - 1))
        continuations = self.index.continuations(ends[: self.max_occurrences], shape.depth)
        distinct = list(dict.fromkeys(continuations))  # keeps most recent first
        return length, *_merge_into_trie(distinct, shape)


class TokenIndex:
    """The tokens of the last context seen, with each token's positions (ascending).

    `update` compares a new context with the indexed one in numpy and re-indexes only from the
    first difference on, so growing a context by a few tokens, or swapping the draft path after
    it, costs a few list operations. `longest_match` is `longest_match` (the numpy reference)
    over the indexed context, by the same step-by-step extension, in plain Python.
    """

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.positions: dict[int, list[int]] = {}
        self._mirror = np.empty(0, dtype=np.int64)  # the indexed tokens, for comparing in numpy

    def update(self, ids: np.ndarray) -> list[int]:
        """Index `ids` (a 1-D integer array), reusing the longest prefix it shares with the indexed
        context; returns the indexed tokens (do not modify them)."""
        keep = _common_prefix(self._mirror[:len(self.tokens)], ids)
        if keep < len(self.tokens) // 2:
            self.tokens, self.positions = [], {}  # re-indexing is cheaper than undoing most of it
            keep = 0
        self._truncate(keep)
        self._append(ids[keep:])
        return self.tokens

    def _truncate(self, length: int) -> None:
        while len(self.tokens) > length:
            self.positions[self.tokens.pop()].pop()

    def _append(self, ids: np.ndarray) -> None:
        start = len(self.tokens)
        if self._mirror.size < start + ids.size:
            grown = np.empty(max(2 * self._mirror.size, start + ids.size, 256), dtype=np.int64)
            grown[:start] = self._mirror[:start]
            self._mirror = grown
        self._mirror[start:start + ids.size] = ids
        for position, token in enumerate(ids.tolist(), start):
            self.tokens.append(token)
            self.positions.setdefault(token, []).append(position)

    def longest_match(self, min_match: int, max_match: int) -> tuple[int, list[int]]:
        """(length, ends) of the longest recurring suffix of the indexed context, ends most recent
        first; (0, []) when no suffix of at least `min_match` tokens recurs."""
        tokens = self.tokens
        last = len(tokens) - 1
        if last < 1:
            return 0, []
        ends = self.positions[tokens[last]][-2::-1]  # the root token's earlier occurrences
        if not ends:
            return 0, []
        length, max_length = 1, min(max_match, last)
        while length < max_length:
            wanted = tokens[last - length]
            agreeing = [end for end in ends if end >= length and tokens[end - length] == wanted]
            if not agreeing:
                break
            ends, length = agreeing, length + 1
        return (length, ends) if length >= min_match else (0, [])

    def chain_continuation(self, ends: list[int], depth: int) -> list[int]:
        """The chain `_merge_into_trie` makes of the `continuations` of `ends` (most recent first) under
        a chain shape, without building them all: the most recent end's continuation, replaced by an
        older one's wherever that one agrees with it and runs further before the context ends."""
        tokens = self.tokens
        best: list[int] = []
        for end in ends:
            row = tokens[end + 1:end + 1 + depth]
            if len(row) > len(best) and row[:len(best)] == best:
                best = row
                if len(best) == depth:
                    break
        return best

    def continuations(self, ends: list[int], depth: int) -> list[tuple[int, ...]]:
        """The `depth` tokens following each end position, -1 past the end of the context."""
        tokens = self.tokens
        rows = []
        for end in ends:
            row = tuple(tokens[end + 1:end + 1 + depth])
            rows.append(row + (-1,) * (depth - len(row)))
        return rows


def _common_prefix(first: np.ndarray, second: np.ndarray) -> int:
    """How many leading tokens two 1-D arrays share."""
    length = min(first.size, second.size)
    differ = np.flatnonzero(first[:length] != second[:length])
    return int(differ[0]) if differ.size else length


def _cpu_ids(context: torch.Tensor) -> np.ndarray:
    """The context as a 1-D numpy array (a view, without a copy, for a CPU tensor)."""
    if context.device.type != "cpu":
        context = context.cpu()
    return context.reshape(-1).numpy()


def longest_match_ends(ids: np.ndarray, min_match: int, max_match: int) -> np.ndarray:
    """End positions (inclusive) of the earlier occurrences of the longest suffix of `ids` of
    length in [min_match, max_match] that recurs, most recent first; empty if none does."""
    return longest_match(ids, min_match, max_match)[1]


def longest_match(ids: np.ndarray, min_match: int, max_match: int) -> tuple[int, np.ndarray]:
    """(length, ends) of the longest recurring suffix, as in `longest_match_ends`; (0, empty)
    when no suffix of at least `min_match` tokens recurs."""
    last = ids.size - 1
    if last < 1:
        return 0, _NO_MATCH
    ends = np.flatnonzero(ids[:last] == ids[last])[::-1]  # the root token's earlier occurrences
    if ends.size == 0:
        return 0, _NO_MATCH
    max_length = min(max_match, last)
    if ends.size <= _FEW_OCCURRENCES:
        length, ends = _extend_all_at_once(ids, ends, max_length)
    else:
        length, ends = _extend_step_by_step(ids, ends, max_length)
    return (length, ends) if length >= min_match else (0, _NO_MATCH)


def _extend_all_at_once(
    ids: np.ndarray, ends: np.ndarray, max_length: int,
) -> tuple[int, np.ndarray]:
    """Compare all `max_length` tokens before every occurrence in one [occurrences, max_length]
    array; return the longest match length and the occurrences that reach it."""
    last = ids.size - 1
    offsets = np.arange(max_length)
    positions = ends[:, None] - offsets
    agree = ids[positions] == ids[last - offsets]
    if ends[-1] < offsets[-1]:  # the oldest occurrences start too early for the longest suffix
        agree &= positions >= 0  # (negative positions wrapped around to the end of `ids`)
    lengths = np.logical_and.accumulate(agree, axis=1).sum(axis=1)
    longest = int(lengths.max())
    return longest, ends[lengths == longest]


def _extend_step_by_step(
    ids: np.ndarray, ends: np.ndarray, max_length: int,
) -> tuple[int, np.ndarray]:
    """Extend the match one token further back at a time, keeping only the occurrences that
    still agree (cheaper than `_extend_all_at_once` when there are many occurrences)."""
    last, length = ids.size - 1, 1
    while length < max_length:
        before = ends - length  # the token just before the current match
        agreeing = ends[(before >= 0) & (ids[before] == ids[last - length])]
        if agreeing.size == 0:
            break
        ends, length = agreeing, length + 1
    return length, ends


def _continuations(ids: np.ndarray, ends: np.ndarray, depth: int) -> np.ndarray:
    """[occurrences, depth] tokens following each end position, -1 past the end of `ids`."""
    positions = ends[:, None] + 1 + np.arange(depth)
    inside = positions < ids.size
    return np.where(inside, ids[np.where(inside, positions, 0)], -1)


def _merge_into_trie(
    paths: Sequence[Sequence[int]], shape: TreeShape,
) -> tuple[list[int], list[int]]:
    """Merge token paths (-1 = path ended) into a trie in topological order; a node at depth d
    keeps at most `shape.branching[d]` children, earlier paths first."""
    branching, capacity = shape.branching, shape.num_nodes
    tokens: list[int] = []
    parents: list[int] = []
    child_of: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    child_count = [0]  # children per node, shifted by one: index 0 is the root
    for path in paths:
        parent = -1
        for depth, token in enumerate(path):
            node = child_of.get((parent, token))
            if node is None:
                if token < 0 or child_count[parent + 1] >= branching[depth]:
                    break
                node = len(tokens)
                tokens.append(token)
                parents.append(parent)
                child_of[(parent, token)] = node
                child_count[parent + 1] += 1
                child_count.append(0)
            parent = node
        if len(tokens) >= capacity:
            break
    return tokens, parents


def _bigram_tree(
    table: BigramTable, root_token: int, branching: tuple[int, ...],
) -> tuple[list[int], list[int]]:
    """Breadth-first tree of each node's top `branching[d]` successors, from the root token."""
    tokens: list[int] = []
    parents: list[int] = []
    frontier = [(-1, root_token)]
    for width in branching:
        next_frontier = []
        for parent, token in frontier:
            for successor in table.next_tokens(token, width):
                next_frontier.append((len(tokens), successor))
                tokens.append(successor)
                parents.append(parent)
        if not next_frontier:
            break
        frontier = next_frontier
    return tokens, parents


def benchmark_propose(
    context_len: int = 1000, vocab_size: int = 32000, shape: TreeShape | None = None,
    repeats: int = 2000, seed: int = 0,
) -> float:
    """Mean seconds per `propose` call on a synthetic context with repeated spans (not a test)."""
    rng = np.random.default_rng(seed)
    pieces = [rng.integers(0, vocab_size, size=int(rng.integers(5, 40))) for _ in range(12)]
    ids = np.concatenate([pieces[int(rng.integers(0, len(pieces)))] for _ in range(context_len)])
    context = torch.from_numpy(ids[:context_len].astype(np.int64))
    drafter, shape = NgramDrafter(), shape or TreeShape.chain(8)
    sampling = SamplingParams()
    for _ in range(50):
        drafter.propose(context, shape, sampling, None)
    start = time.perf_counter()
    for _ in range(repeats):
        drafter.propose(context, shape, sampling, None)
    return (time.perf_counter() - start) / repeats


if __name__ == "__main__":
    for bench_shape in (TreeShape.chain(8), TreeShape((4, 1, 1, 1, 1)), TreeShape((3, 2, 1, 1))):
        for length in (1000, 2000):
            seconds = benchmark_propose(length, shape=bench_shape)
            print(f"shape={bench_shape.branching} len={length}: {seconds * 1e6:.1f} us/call")
