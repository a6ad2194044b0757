"""Knowledge-distillation losses that train a draft (student, q) toward a target (teacher, p).

Pure functions on logits of shape [..., vocab]. Leading dims are flattened, an optional `mask` [...]
keeps the valid positions, and every loss is the mean over those positions (0 when none are valid).
DistillSpec picks the divergence to suit the decoding mode: forward KL, reverse KL, JSD(beta) or
total variation. Total variation matters most, because the speculative-sampling acceptance rate of
one token is a = 1 - TV(p, q) (see `expected_acceptance`). Cross-entropy on hard tokens (corpus
text, target generations) needs no teacher.

Options shared by the divergences:
- `temperature`: both logits are divided by it. Nothing is rescaled by temperature**2; a caller that
  wants Hinton-style scaling multiplies the loss itself.
- `top_k` (0: off): both distributions are cut down to the teacher's top-k tokens at each position
  and renormalized there. Every divergence then stays finite, even where the student puts mass on
  tokens that the teacher rules out.

The maths is done in float32, or float64 when the inputs are float64 (gradcheck), with log_softmax.
A term whose weight is exactly 0 counts as 0 (0 * log 0 = 0), so probabilities of 0 give no NaN.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

LossKind = Literal["fkl", "rkl", "jsd", "tvd", "ce"]
LOSS_KINDS: tuple[str, ...] = ("fkl", "rkl", "jsd", "tvd", "ce")

# Log-probabilities are clamped here inside JSD so that (-inf) - (-inf) never happens;
# exp(-1e30) is 0 in any float dtype, so the values themselves are unchanged.
_LOG_FLOOR = -1e30


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _flat_mask(mask: torch.Tensor | None, leading_shape: torch.Size) -> torch.Tensor | None:
    """The mask as a flat bool vector over positions, after checking its shape and dtype."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(leading_shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected the logits' leading shape "
                         f"{tuple(leading_shape)}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"mask must be bool (or integer 0/1), got {mask.dtype}")
    return mask.reshape(-1).to(torch.bool)


def _valid_rows(logits: torch.Tensor, flat_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Logits [..., vocab] -> [valid positions, vocab] in the compute dtype."""
    rows = logits.reshape(-1, logits.shape[-1])
    rows = rows if flat_mask is None else rows[flat_mask]
    return rows.to(dtype)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None,
               temperature: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log q_student and log p_teacher, [valid positions, vocab or top_k], each row normalized."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape [..., vocab]")
    if student_logits.dim() == 0:
        raise ValueError("logits need a vocab dimension: shape [..., vocab]")
    _check_temperature(temperature)
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
    flat_mask = _flat_mask(mask, student_logits.shape[:-1])
    dtype = _compute_dtype(student_logits, teacher_logits)
    student_rows = _valid_rows(student_logits, flat_mask, dtype) / temperature
    teacher_rows = _valid_rows(teacher_logits, flat_mask, dtype) / temperature
    if 0 < top_k < teacher_rows.shape[-1]:
        top_ids = teacher_rows.topk(top_k, dim=-1).indices
        student_rows = student_rows.gather(-1, top_ids)
        teacher_rows = teacher_rows.gather(-1, top_ids)
    return F.log_softmax(student_rows, dim=-1), F.log_softmax(teacher_rows, dim=-1)


def _mean(per_position: torch.Tensor) -> torch.Tensor:
    """Mean over positions; 0 (still attached to the graph) when there are none."""
    return per_position.sum() / max(per_position.numel(), 1)


def _expectation(log_weights: torch.Tensor, values: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """sum_v scale * exp(log_weights) * values per row; terms of weight 0 are 0, never 0 * inf."""
    weights = scale * log_weights.exp()
    return (weights * torch.where(weights > 0, values, torch.zeros_like(values))).sum(-1)


def _kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row."""
    return _expectation(log_a, log_a - log_b)


def _jsd_rows(log_p_teacher: torch.Tensor, log_q_student: torch.Tensor, beta: float) -> torch.Tensor:
    """beta * KL(p || m) + (1 - beta) * KL(q || m) per row, m = beta * p + (1 - beta) * q.

    log m is the logsumexp of (log beta + log p, log(1 - beta) + log q); it is taken relative to
    log p and log q (log m/p, log m/q) so that no large logs cancel when beta is near 0 or 1.
    """
    log_p = log_p_teacher.clamp(min=_LOG_FLOOR)
    log_q = log_q_student.clamp(min=_LOG_FLOOR)
    log_beta = math.log(beta) if beta > 0 else -math.inf
    log_rest = math.log1p(-beta) if beta < 1 else -math.inf
    log_m_over_p = torch.logaddexp(torch.full_like(log_p, log_beta), log_rest + (log_q - log_p))
    log_m_over_q = torch.logaddexp(torch.full_like(log_q, log_rest), log_beta + (log_p - log_q))
    return _expectation(log_p, -log_m_over_p, beta) + _expectation(log_q, -log_m_over_q, 1.0 - beta)


def _tv_rows(log_p_teacher: torch.Tensor, log_q_student: torch.Tensor) -> torch.Tensor:
    return 0.5 * (log_p_teacher.exp() - log_q_student.exp()).abs().sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               *, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """KL(p_teacher || q_student), mean over valid positions: mass-covering."""
    log_q_student, log_p_teacher = _log_probs(student_logits, teacher_logits, mask, temperature, top_k)
    return _mean(_kl_rows(log_p_teacher, log_q_student))


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               *, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """KL(q_student || p_teacher), mean over valid positions: mode-seeking."""
    log_q_student, log_p_teacher = _log_probs(student_logits, teacher_logits, mask, temperature, top_k)
    return _mean(_kl_rows(log_q_student, log_p_teacher))


def jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
        *, beta: float = 0.5, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Generalized JSD(beta) of GKD / DistillSpec, mean over valid positions.

    With m = beta * p + (1 - beta) * q: beta * KL(p || m) + (1 - beta) * KL(q || m). It is 0 at
    beta = 0 and 1; JSD(beta) / beta -> KL(p || q) as beta -> 0 and JSD(beta) / (1 - beta) -> KL(q || p)
    as beta -> 1.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    log_q_student, log_p_teacher = _log_probs(student_logits, teacher_logits, mask, temperature, top_k)
    return _mean(_jsd_rows(log_p_teacher, log_q_student, beta))


def total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                    *, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """TV(p_teacher, q_student) = 0.5 * sum_v |p - q|, mean over valid positions; 1 - TV is acceptance."""
    log_q_student, log_p_teacher = _log_probs(student_logits, teacher_logits, mask, temperature, top_k)
    return _mean(_tv_rows(log_p_teacher, log_q_student))


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
                  *, temperature: float = 1.0, ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy of the student on hard target tokens `labels` [...]: mean over positions that
    are valid in `mask` and whose label is not `ignore_index`."""
    if tuple(labels.shape) != tuple(student_logits.shape[:-1]):
        raise ValueError(f"labels have shape {tuple(labels.shape)}; expected the logits' leading shape "
                         f"{tuple(student_logits.shape[:-1])}")
    _check_temperature(temperature)
    flat_labels = labels.reshape(-1)
    valid = flat_labels != ignore_index
    flat_mask = _flat_mask(mask, student_logits.shape[:-1])
    if flat_mask is not None:
        valid = valid & flat_mask
    targets = flat_labels[valid].long()
    vocab = student_logits.shape[-1]
    if targets.numel() and (targets.min() < 0 or targets.max() >= vocab):
        raise ValueError(f"labels must be in [0, {vocab}) or ignore_index={ignore_index}")
    rows = _valid_rows(student_logits, valid, _compute_dtype(student_logits)) / temperature
    log_q_student = F.log_softmax(rows, dim=-1)
    return _mean(-log_q_student.gather(-1, targets[:, None]).squeeze(-1))


def distill_loss(kind: LossKind, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, mask: torch.Tensor | None = None, temperature: float = 1.0,
                 beta: float = 0.5, top_k: int = 0) -> torch.Tensor:
    """The loss named by `kind` (one of LOSS_KINDS). The divergences need `teacher_logits` and
    ignore `labels`; "ce" needs `labels` and ignores the teacher, `beta` and `top_k`."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {', '.join(LOSS_KINDS)}")
    if kind == "ce":
        if labels is None:
            raise ValueError('loss kind "ce" needs labels (the hard target tokens)')
        return cross_entropy(student_logits, labels, mask, temperature=temperature)
    if teacher_logits is None:
        raise ValueError(f"loss kind {kind!r} needs teacher_logits; only \"ce\" trains without a teacher")
    options = {"temperature": temperature, "top_k": top_k}
    if kind == "jsd":
        return jsd(student_logits, teacher_logits, mask, beta=beta, **options)
    divergence = {"fkl": forward_kl, "rkl": reverse_kl, "tvd": total_variation}[kind]
    return divergence(student_logits, teacher_logits, mask, **options)


@torch.no_grad()
def expected_acceptance(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Speculative-sampling acceptance rate of one draft token, 1 - TV(p_teacher, q_student), mean
    over valid positions (temperature 1, no truncation; 0 when no position is valid)."""
    log_q_student, log_p_teacher = _log_probs(student_logits, teacher_logits, mask, 1.0, 0)
    return _mean(1.0 - _tv_rows(log_p_teacher, log_q_student))


@torch.no_grad()
def greedy_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of valid positions where the student's and the teacher's argmax tokens agree."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape [..., vocab]")
    flat_mask = _flat_mask(mask, student_logits.shape[:-1])
    dtype = _compute_dtype(student_logits, teacher_logits)
    student_top = _valid_rows(student_logits, flat_mask, dtype).argmax(-1)
    teacher_top = _valid_rows(teacher_logits, flat_mask, dtype).argmax(-1)
    return _mean((student_top == teacher_top).to(dtype))
