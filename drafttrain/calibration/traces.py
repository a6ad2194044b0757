"""Per-token acceptance traces: one row per drafted token, with the draft's confidence and the outcome.

The decoder hands every verify step to a `TraceRecorder` (`SpeculativeDecoder.generate(trace=...)`).
The verify forward already scores every tree node, so each drafted token gets an outcome whether or
not it ended up on the accepted path: its acceptance *given that its parent was accepted*
(greedy: the token equals the target's argmax after its parent; sampling: min(1, p/q), the chance
the first child is accepted). Rows whose parent was not itself accepted (`parent_on_path` false)
describe contexts the decoder never commits to; predictors are fitted without them.

Columns (`TRACE_COLUMNS`): mode ("greedy" or "t0.7"), level (drafter name), prompt, step, node,
parent, depth, context_length, token, q_token (draft probability of the token; NaN for
deterministic drafters), entropy and margin (top-1 minus top-2) of the draft row, match_length
(n-gram drafters; -1 otherwise), parent_on_path, on_path, outcome. Stored as CSV.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from drafttrain.decoding.engine import VerifiedStep
from drafttrain.decoding.sampling import SamplingParams, logits_to_probs
from drafttrain.drafters.base import DraftTree
from drafttrain.errors import DrafttrainError
from drafttrain.io import write_atomically

TRACE_COLUMNS = ("mode", "level", "prompt", "step", "node", "parent", "depth", "context_length", "token",
                 "q_token", "entropy", "margin", "match_length", "parent_on_path", "on_path", "outcome")
TEXT_COLUMNS = ("mode", "level", "prompt")
INT_COLUMNS = ("step", "node", "parent", "depth", "context_length", "token", "match_length")
BOOL_COLUMNS = ("parent_on_path", "on_path")
FLOAT_COLUMNS = ("q_token", "entropy", "margin", "outcome")


def mode_name(sampling: SamplingParams) -> str:
    """"greedy", or "t" and the temperature ("t0.7") for sampling."""
    return "greedy" if sampling.greedy else f"t{sampling.temperature:g}"


# ---------------------------------------------------------------- per-node math (pure functions)


def greedy_outcomes(tree: DraftTree, target_argmax: torch.Tensor) -> torch.Tensor:
    """[n] 1.0 where node i's token is the target's argmax after its parent (row parent + 1)."""
    parent_rows = torch.tensor(tree.parents, device=target_argmax.device) + 1
    return (target_argmax[parent_rows] == tree.tokens).float()


def sampling_outcomes(tree: DraftTree, p_target: torch.Tensor) -> torch.Tensor:
    """[n] min(1, p(token) / q(token)) with p the target row after the node's parent.

    Deterministic drafts (q_draft None) have q = 1, so the outcome is p(token). This is the
    acceptance chance of a first child; later siblings are judged against a residual p in the
    decoder, which the traces do not model.
    """
    parent_rows = torch.tensor(tree.parents, device=p_target.device) + 1
    p_token = p_target[parent_rows, tree.tokens]
    if tree.q_draft is None:
        return p_token.clamp(max=1.0)
    q_token = tree.q_draft.gather(1, tree.tokens[:, None]).squeeze(1)
    return torch.where(q_token > 0, (p_token / q_token.clamp(min=1e-30)).clamp(max=1.0), 0.0)


def draft_row_features(tree: DraftTree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q_token, entropy, margin) per node from the q_draft rows; NaN for deterministic drafts."""
    n = len(tree)
    if tree.q_draft is None:
        nan = np.full(n, np.nan)
        return nan, nan.copy(), nan.copy()
    q_draft = tree.q_draft.float()
    q_token = q_draft.gather(1, tree.tokens[:, None]).squeeze(1)
    entropy = -(q_draft * q_draft.clamp(min=1e-30).log()).sum(dim=1)
    top2 = q_draft.topk(min(2, q_draft.shape[1]), dim=1).values
    margin = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0.0)
    return tuple(t.cpu().double().numpy() for t in (q_token, entropy, margin))


def parents_on_path(parents: list[int], path: list[int]) -> np.ndarray:
    """[n] whether each node's parent was accepted (the root always is)."""
    accepted = set(path)
    return np.array([parent < 0 or parent in accepted for parent in parents], dtype=bool)


# ---------------------------------------------------------------- recording


@dataclass
class TraceRecorder:
    """Collects trace rows from `VerifiedStep`s; set `prompt` before each prompt's decode."""

    sampling: SamplingParams
    prompt: str = ""
    rows: dict[str, list] = field(default_factory=lambda: {name: [] for name in TRACE_COLUMNS})
    _steps: int = 0

    def __call__(self, step: VerifiedStep) -> None:
        tree, n = step.tree, len(step.tree)
        if self.sampling.greedy:
            outcome = greedy_outcomes(tree, step.target_logits.argmax(dim=-1))
        else:
            outcome = sampling_outcomes(tree, logits_to_probs(step.target_logits, self.sampling))
        q_token, entropy, margin = draft_row_features(tree)
        path = set(step.path)
        columns = {
            "mode": [mode_name(self.sampling)] * n, "level": [step.drafter] * n, "prompt": [self.prompt] * n,
            "step": [self._steps] * n, "node": list(range(n)), "parent": list(tree.parents),
            "depth": list(step.depths), "context_length": [step.context_length] * n,
            "token": tree.tokens.tolist(), "q_token": q_token.tolist(), "entropy": entropy.tolist(),
            "margin": margin.tolist(),
            "match_length": list(tree.match_lengths) if tree.match_lengths is not None else [-1] * n,
            "parent_on_path": parents_on_path(tree.parents, step.path).tolist(),
            "on_path": [node in path for node in range(n)], "outcome": outcome.cpu().tolist(),
        }
        for name, values in columns.items():
            self.rows[name].extend(values)
        self._steps += 1

    def traces(self) -> Traces:
        return Traces.from_rows(self.rows)


# ---------------------------------------------------------------- the table


@dataclass
class Traces:
    """A column table of trace rows (numpy arrays keyed by `TRACE_COLUMNS`)."""

    columns: dict[str, np.ndarray]

    @classmethod
    def from_rows(cls, rows: dict[str, list]) -> Traces:
        missing = [name for name in TRACE_COLUMNS if name not in rows]
        if missing:
            raise DrafttrainError(f"trace rows lack column(s) {missing}")
        return cls({name: _as_column(name, rows[name]) for name in TRACE_COLUMNS})

    @classmethod
    def concat(cls, parts: list[Traces]) -> Traces:
        if not parts:
            return cls.from_rows({name: [] for name in TRACE_COLUMNS})
        return cls({name: np.concatenate([part.columns[name] for part in parts]) for name in TRACE_COLUMNS})

    def __len__(self) -> int:
        return len(self.columns["outcome"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def select(self, rows: np.ndarray) -> Traces:
        """The rows where the boolean mask `rows` is true (or at the given indices)."""
        return Traces({name: values[rows] for name, values in self.columns.items()})

    def levels(self) -> list[str]:
        return list(dict.fromkeys(self.columns["level"].tolist()))

    def modes(self) -> list[str]:
        return list(dict.fromkeys(self.columns["mode"].tolist()))

    def for_fitting(self) -> Traces:
        """Rows whose parent was accepted: the contexts the decoder actually reaches."""
        return self.select(self.columns["parent_on_path"])

    def prompt_folds(self, folds: int, seed: int = 0) -> np.ndarray:
        """[rows] fold index in 0..folds-1; whole prompts share a fold, so no context leaks
        between the rows a predictor is fitted on and the rows it is scored on."""
        prompts = sorted(set(self.columns["prompt"].tolist()))
        if len(prompts) < folds:
            raise DrafttrainError(f"{len(prompts)} calibration prompt(s) cannot be split into {folds} folds: "
                                  "use more prompts or fewer folds")
        order = np.random.default_rng(seed).permutation(len(prompts))
        fold_of = {prompts[index]: rank % folds for rank, index in enumerate(order)}
        return np.array([fold_of[prompt] for prompt in self.columns["prompt"].tolist()], dtype=np.int64)

    # ---- files ---------------------------------------------------------------------------

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(TRACE_COLUMNS)
        columns = [self.columns[name].tolist() for name in TRACE_COLUMNS]
        for row in zip(*columns):
            writer.writerow([repr(value) if isinstance(value, float) else value for value in row])
        return buffer.getvalue()

    def save_csv(self, path: str | Path) -> Path:
        return write_atomically(path, self.to_csv())

    @classmethod
    def load_csv(cls, path: str | Path) -> Traces:
        path = Path(path)
        if not path.is_file():
            raise DrafttrainError(f"trace file {path} does not exist: run `drafttrain run calibrate` to record it")
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(header) != TRACE_COLUMNS:
                raise DrafttrainError(f"{path}: the header is {header}, expected the trace columns "
                                      f"{list(TRACE_COLUMNS)}; re-record it with `drafttrain run calibrate`")
            rows: dict[str, list] = {name: [] for name in TRACE_COLUMNS}
            for number, row in enumerate(reader, start=2):
                if len(row) != len(TRACE_COLUMNS):
                    raise DrafttrainError(f"{path}:{number}: {len(row)} fields, expected {len(TRACE_COLUMNS)}")
                for name, value in zip(TRACE_COLUMNS, row):
                    rows[name].append(value)
        try:
            return cls.from_rows(rows)
        except ValueError as err:
            raise DrafttrainError(f"{path}: a value is malformed ({err}); re-record it with "
                                  "`drafttrain run calibrate`") from err


def _as_column(name: str, values: list) -> np.ndarray:
    if name in TEXT_COLUMNS:
        return np.array([str(value) for value in values], dtype=object)
    if name in INT_COLUMNS:
        return np.array([int(value) for value in values], dtype=np.int64)
    if name in BOOL_COLUMNS:
        return np.array([_as_bool(value) for value in values], dtype=bool)
    return np.array([float(value) for value in values], dtype=np.float64)


def _as_bool(value) -> bool:
    if isinstance(value, str):
        if value not in ("True", "False"):
            raise ValueError(f"{value!r} is not True or False")
        return value == "True"
    return bool(value)
