"""A draft model's vocabulary subset (FR-Spec): the draft proposes only its most frequent tokens.

A small draft's LM head reads a [vocab, hidden] matrix at every step; for the pycode draft (one or two
layers, hidden 256, vocab 8192) that read is most of the step's memory traffic. Restricting the head to
the `size` tokens most frequent in the draft's training text reads a fraction of it (Zhao et al.,
"FR-Spec: Accelerating Large-Vocabulary Language Models via Frequency-Ranked Speculative Sampling",
2025). Decoding stays exact: the draft's distribution is zero outside the subset, and verification
against the target does not change; a token outside the subset is simply never drafted by this level.

The subset lives beside the draft's weights as `vocab_subset.json` (`VOCAB_FILE`): the token ids, and
how much of the counted text they cover. `ModelDrafter.from_pretrained` uses it when present.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from drafttrain.errors import DrafttrainError

VOCAB_FILE = "vocab_subset.json"


def token_counts(sequences: Iterable[Sequence[int] | torch.Tensor], vocab_size: int) -> torch.Tensor:
    """[vocab_size] int64: how often each token id occurs in `sequences` (lists or tensors of ids)."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for sequence in sequences:
        ids = torch.as_tensor(sequence, dtype=torch.int64).flatten()
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise DrafttrainError(f"token ids outside [0, {vocab_size}) while counting the draft's vocabulary: "
                                  "count text tokenized with the target's tokenizer")
        counts += torch.bincount(ids, minlength=vocab_size)
    return counts


def frequent_tokens(counts: torch.Tensor, size: int) -> torch.Tensor:
    """The `size` most frequent token ids (ties to the lower id), in ascending id order."""
    if not 0 < size <= len(counts):
        raise DrafttrainError(f"draft vocabulary size {size} is invalid: use 1 .. {len(counts)} (the vocabulary)")
    order = torch.argsort(-counts, stable=True)  # equal counts keep ascending ids
    return order[:size].sort().values


def coverage(token_ids: torch.Tensor, counts: torch.Tensor) -> float:
    """The share of the counted tokens that fall inside the subset."""
    total = int(counts.sum())
    return float(counts[token_ids].sum()) / total if total else 0.0


def save_vocab_subset(draft_dir: str | Path, token_ids: torch.Tensor, counted_tokens: int, covered: float) -> Path:
    """Write `VOCAB_FILE` into the draft's directory (temporary file, then rename)."""
    path = Path(draft_dir) / VOCAB_FILE
    payload = {"token_ids": [int(token) for token in token_ids], "counted_tokens": counted_tokens,
               "coverage": covered}
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(payload) + "\n")
    os.replace(partial, path)
    return path


def load_vocab_subset(draft_dir: str | Path, vocab_size: int) -> torch.Tensor | None:
    """The draft's subset token ids (ascending), or None when the draft has no `VOCAB_FILE`."""
    path = Path(draft_dir) / VOCAB_FILE
    if not path.exists():
        return None
    try:
        token_ids = json.loads(path.read_text())["token_ids"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DrafttrainError(f"{path}: not a draft vocabulary file ({error}); it needs a 'token_ids' list. "
                              "Fix: write it with `save_vocab_subset`, or delete it to draft over the whole "
                              "vocabulary") from error
    ids = torch.tensor(token_ids, dtype=torch.long)
    if ids.ndim != 1 or not len(ids) or int(ids.min()) < 0 or int(ids.max()) >= vocab_size \
            or bool((ids[1:] <= ids[:-1]).any()):
        raise DrafttrainError(f"{path}: field token_ids must be distinct ascending ids in [0, {vocab_size}). "
                              "Fix: write it again with `save_vocab_subset`")
    return ids


def expand_logits(subset_logits: torch.Tensor, token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, size] logits over the subset -> [rows, vocab_size], -inf outside it (probability zero)."""
    full = subset_logits.new_full((subset_logits.shape[0], vocab_size), float("-inf"))
    full[:, token_ids] = subset_logits
    return full
