"""Distillation losses: each divergence against a reference written another way (float64 numpy
sums, torch.distributions, F.kl_div), their gradients, limits, options and the acceptance metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from drafttrain.training.losses import (
    LOSS_KINDS,
    cross_entropy,
    distill_loss,
    expected_acceptance,
    forward_kl,
    greedy_agreement,
    jsd,
    reverse_kl,
    total_variation,
)

LEADING = (2, 3, 4)
VOCAB = 11
DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")


pytestmark = pytest.mark.usefixtures("one_thread")


def random_logits(seed: int, leading=LEADING, vocab=VOCAB, scale=2.0, dtype=torch.float32):
    """Student logits, teacher logits and a mask with about a third of the positions invalid."""
    gen = torch.Generator().manual_seed(seed)
    student_logits = (scale * torch.randn(*leading, vocab, generator=gen, dtype=torch.float64)).to(dtype)
    teacher_logits = (scale * torch.randn(*leading, vocab, generator=gen, dtype=torch.float64)).to(dtype)
    mask = torch.rand(*leading, generator=gen) > 0.35
    mask.view(-1)[0] = True
    return student_logits, teacher_logits, mask


def reference_probs(logits: torch.Tensor, mask: torch.Tensor | None, top_ids: np.ndarray | None = None) -> np.ndarray:
    """Probabilities [valid positions, vocab] in float64 numpy; with top_ids, zero outside them."""
    rows = logits.double().reshape(-1, logits.shape[-1]).numpy()
    if mask is not None:
        rows = rows[mask.reshape(-1).numpy()]
    if top_ids is not None:
        keep = np.zeros_like(rows, dtype=bool)
        np.put_along_axis(keep, top_ids, True, axis=-1)
        rows = np.where(keep, rows, -np.inf)
    weights = np.exp(rows - rows.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def xlogy_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * log(a / b) with 0 where a == 0."""
    safe_a = np.where(a > 0, a, 1.0)
    safe_b = np.where(a > 0, b, 1.0)
    return np.where(a > 0, a * np.log(safe_a / safe_b), 0.0)


def reference_divergence(kind: str, p_teacher: np.ndarray, q_student: np.ndarray, beta: float = 0.5) -> float:
    """Mean over rows of the divergence, straight from the definitions."""
    if kind == "fkl":
        per_row = xlogy_ratio(p_teacher, q_student).sum(-1)
    elif kind == "rkl":
        per_row = xlogy_ratio(q_student, p_teacher).sum(-1)
    elif kind == "jsd":
        m_mix = beta * p_teacher + (1 - beta) * q_student
        per_row = beta * xlogy_ratio(p_teacher, m_mix).sum(-1) + (1 - beta) * xlogy_ratio(q_student, m_mix).sum(-1)
    else:
        per_row = 0.5 * np.abs(p_teacher - q_student).sum(-1)
    return float(per_row.mean())


def loss_of(kind: str, student_logits, teacher_logits, mask=None, **options) -> torch.Tensor:
    return distill_loss(kind, student_logits, teacher_logits, mask=mask, **options)


# --- values against references -------------------------------------------------------------------

@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergence_matches_float64_reference(kind):
    student_logits, teacher_logits, mask = random_logits(0)
    expected = reference_divergence(kind, reference_probs(teacher_logits, mask), reference_probs(student_logits, mask),
                                    beta=0.3)
    got = loss_of(kind, student_logits, teacher_logits, mask, beta=0.3)
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_kl_matches_torch_distributions_and_kl_div():
    student_logits, teacher_logits, mask = random_logits(1, dtype=torch.float64)
    teacher = Categorical(logits=teacher_logits[mask])
    student = Categorical(logits=student_logits[mask])
    torch.testing.assert_close(forward_kl(student_logits, teacher_logits, mask), kl_divergence(teacher, student).mean())
    torch.testing.assert_close(reverse_kl(student_logits, teacher_logits, mask), kl_divergence(student, teacher).mean())
    log_q_student = F.log_softmax(student_logits[mask], -1)
    log_p_teacher = F.log_softmax(teacher_logits[mask], -1)
    kl_div_fkl = F.kl_div(log_q_student, log_p_teacher, log_target=True, reduction="batchmean")
    torch.testing.assert_close(forward_kl(student_logits, teacher_logits, mask), kl_div_fkl)


def test_expected_acceptance_is_mean_sum_of_min():
    student_logits, teacher_logits, mask = random_logits(2)
    p_teacher, q_student = reference_probs(teacher_logits, mask), reference_probs(student_logits, mask)
    expected = np.minimum(p_teacher, q_student).sum(-1).mean()
    got = expected_acceptance(student_logits, teacher_logits, mask)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert 0.0 < got.item() < 1.0
    assert expected_acceptance(student_logits, student_logits).item() == pytest.approx(1.0, abs=1e-6)


def test_expected_acceptance_ignores_grad_and_temperature_options():
    student_logits, teacher_logits, _ = random_logits(3)
    student_logits.requires_grad_(True)
    got = expected_acceptance(student_logits, teacher_logits)
    assert not got.requires_grad
    torch.testing.assert_close(got, 1.0 - total_variation(student_logits, teacher_logits).detach())


def test_greedy_agreement_hand_example():
    student_logits = torch.tensor([[[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    teacher_logits = torch.tensor([[[0.0, 5.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 2.0]]])
    assert greedy_agreement(student_logits, teacher_logits).item() == pytest.approx(2 / 3)
    assert greedy_agreement(student_logits, teacher_logits, torch.tensor([[True, False, True]])).item() == 1.0
    assert greedy_agreement(student_logits, teacher_logits, torch.tensor([[False, True, False]])).item() == 0.0


def test_cross_entropy_matches_f_cross_entropy():
    student_logits, _, mask = random_logits(4)
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, VOCAB, LEADING, generator=gen)
    labels.view(-1)[::5] = -100
    expected = F.cross_entropy(student_logits.reshape(-1, VOCAB) / 1.7, labels.reshape(-1), ignore_index=-100)
    got = distill_loss("ce", student_logits, labels=labels, temperature=1.7)
    torch.testing.assert_close(got, expected)
    masked_expected = F.cross_entropy(student_logits.reshape(-1, VOCAB), labels.masked_fill(~mask, -100).reshape(-1))
    torch.testing.assert_close(cross_entropy(student_logits, labels, mask), masked_expected)
    other_ignore = F.cross_entropy(student_logits.reshape(-1, VOCAB), labels.masked_fill(labels == -100, 3).reshape(-1),
                                   ignore_index=3)
    torch.testing.assert_close(cross_entropy(student_logits, labels.masked_fill(labels == -100, 3), ignore_index=3),
                               other_ignore)


def test_low_precision_inputs_are_computed_in_float32():
    student_logits, teacher_logits, mask = random_logits(5)
    half_student, half_teacher = student_logits.bfloat16(), teacher_logits.bfloat16()
    got = forward_kl(half_student, half_teacher, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, forward_kl(half_student.float(), half_teacher.float(), mask))


# --- gradients -------------------------------------------------------------------------------------

def test_forward_kl_gradient_is_q_minus_p_over_n():
    student_logits, teacher_logits, mask = random_logits(6, dtype=torch.float64)
    student_logits.requires_grad_(True)
    forward_kl(student_logits, teacher_logits, mask).backward()
    num_valid = int(mask.sum())
    q_student = torch.softmax(student_logits.detach(), -1)
    p_teacher = torch.softmax(teacher_logits, -1)
    expected = torch.where(mask[..., None], (q_student - p_teacher) / num_valid, torch.zeros_like(q_student))
    torch.testing.assert_close(student_logits.grad, expected)


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("top_k", [0, 4])
def test_gradcheck_every_kind(kind, top_k):
    student_logits, teacher_logits, mask = random_logits(7, leading=(2, 3), vocab=7, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 3), generator=torch.Generator().manual_seed(7))
    student_logits.requires_grad_(True)
    teacher_logits.requires_grad_(kind != "ce")

    def loss_fn(student, teacher):
        return distill_loss(kind, student, teacher, labels=labels, mask=mask, temperature=1.3, beta=0.3, top_k=top_k)

    assert torch.autograd.gradcheck(loss_fn, (student_logits, teacher_logits))


def test_total_variation_gradcheck_without_mask():
    student_logits, teacher_logits, _ = random_logits(8, leading=(3,), vocab=6, dtype=torch.float64)
    student_logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda student: total_variation(student, teacher_logits), (student_logits,))


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_sgd_on_student_logits_lowers_the_loss(kind):
    _, teacher_logits, mask = random_logits(9)
    labels = teacher_logits.argmax(-1)
    student_logits = torch.nn.Parameter(torch.zeros_like(teacher_logits))
    # The loss is a mean over positions: a step of lr = (valid positions) moves each position by 1 x its gradient.
    optimizer = torch.optim.SGD([student_logits], lr=float(mask.sum()))
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = distill_loss(kind, student_logits, teacher_logits, labels=labels, mask=mask)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    assert all(later <= earlier + 1e-6 for earlier, later in itertools.pairwise(losses))


# --- JSD(beta) -----------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_is_exactly_zero_at_the_ends(beta):
    student_logits, teacher_logits, mask = random_logits(10)
    student_logits.requires_grad_(True)
    loss = jsd(student_logits, teacher_logits, mask, beta=beta)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(student_logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jsd_limits_are_the_kls(dtype):
    student_logits, teacher_logits, mask = random_logits(11, scale=1.0, dtype=dtype)
    small = 1e-4
    fkl = forward_kl(student_logits, teacher_logits, mask).item()
    rkl = reverse_kl(student_logits, teacher_logits, mask).item()
    assert (jsd(student_logits, teacher_logits, mask, beta=small).item() / small) == pytest.approx(fkl, rel=1e-2)
    assert (jsd(student_logits, teacher_logits, mask, beta=1 - small).item() / small) == pytest.approx(rkl, rel=1e-2)
    assert fkl != pytest.approx(rkl, rel=1e-2)


def test_jsd_symmetric_at_half_and_zero_for_equal_distributions():
    student_logits, teacher_logits, mask = random_logits(12)
    torch.testing.assert_close(jsd(student_logits, teacher_logits, mask, beta=0.5),
                               jsd(teacher_logits, student_logits, mask, beta=0.5))
    assert jsd(student_logits, teacher_logits, mask, beta=0.2).item() != pytest.approx(
        jsd(teacher_logits, student_logits, mask, beta=0.2).item(), rel=1e-3)
    for beta in (0.1, 0.5, 0.9):
        assert jsd(student_logits, student_logits.clone(), mask, beta=beta).item() == pytest.approx(0.0, abs=1e-7)
    assert 0.0 < jsd(student_logits, teacher_logits, mask).item() <= np.log(2)


@pytest.mark.parametrize("beta", [-0.1, 1.1, float("nan")])
def test_jsd_beta_outside_unit_interval_raises(beta):
    student_logits, teacher_logits, _ = random_logits(13)
    with pytest.raises(ValueError, match="beta"):
        jsd(student_logits, teacher_logits, beta=beta)
    with pytest.raises(ValueError, match="beta"):
        distill_loss("jsd", student_logits, teacher_logits, beta=beta)


# --- temperature, top_k, mask ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_temperature_equals_dividing_the_logits(kind):
    student_logits, teacher_logits, mask = random_logits(14)
    labels = teacher_logits.argmax(-1)
    temperature = 2.5
    scaled = loss_of(kind, student_logits / temperature, teacher_logits / temperature, mask, labels=labels)
    with_option = loss_of(kind, student_logits, teacher_logits, mask, labels=labels, temperature=temperature)
    torch.testing.assert_close(with_option, scaled)
    at_one = loss_of(kind, student_logits, teacher_logits, mask, labels=labels)
    assert with_option.item() != pytest.approx(at_one.item(), rel=1e-3)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_top_k_matches_reference_restricted_to_teacher_top_k(kind):
    student_logits, teacher_logits, mask = random_logits(15)
    top_k = 4
    teacher_rows = teacher_logits.reshape(-1, VOCAB)[mask.reshape(-1)].numpy()
    top_ids = np.argsort(-teacher_rows, axis=-1)[:, :top_k]
    expected = reference_divergence(kind, reference_probs(teacher_logits, mask, top_ids),
                                    reference_probs(student_logits, mask, top_ids), beta=0.4)
    got = loss_of(kind, student_logits, teacher_logits, mask, top_k=top_k, beta=0.4)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert got.item() != pytest.approx(loss_of(kind, student_logits, teacher_logits, mask, beta=0.4).item(), rel=1e-3)
    torch.testing.assert_close(loss_of(kind, student_logits, teacher_logits, mask, top_k=VOCAB, beta=0.4),
                               loss_of(kind, student_logits, teacher_logits, mask, beta=0.4))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_top_k_ignores_student_logits_outside_teacher_top_k(kind):
    student_logits, teacher_logits, mask = random_logits(16)
    top_k = 3
    top_ids = teacher_logits.topk(top_k, dim=-1).indices
    outside = torch.ones_like(student_logits, dtype=torch.bool).scatter(-1, top_ids, False)
    noise = 5.0 * torch.randn(student_logits.shape, generator=torch.Generator().manual_seed(16))
    changed_outside = student_logits + torch.where(outside, noise, torch.zeros_like(noise))
    changed_inside = student_logits + torch.where(outside, torch.zeros_like(noise), noise)
    base = loss_of(kind, student_logits, teacher_logits, mask, top_k=top_k)
    torch.testing.assert_close(loss_of(kind, changed_outside, teacher_logits, mask, top_k=top_k), base)
    changed = loss_of(kind, changed_inside, teacher_logits, mask, top_k=top_k)
    assert changed.item() != pytest.approx(base.item(), rel=1e-3)


def test_top_k_keeps_reverse_kl_finite_where_the_teacher_rules_tokens_out():
    teacher_logits = torch.tensor([[5.0, 4.0, 3.0, -float("inf"), -float("inf"), -1e4]])
    student_logits = torch.zeros(1, 6, requires_grad=True)
    assert reverse_kl(student_logits, teacher_logits).item() == float("inf")
    restricted = reverse_kl(student_logits, teacher_logits, top_k=3)
    p_teacher = np.exp([5.0, 4.0, 3.0]) / np.exp([5.0, 4.0, 3.0]).sum()
    expected = reference_divergence("rkl", p_teacher[None], np.full((1, 3), 1 / 3))
    assert restricted.item() == pytest.approx(expected, rel=1e-5)
    restricted.backward()
    assert torch.isfinite(student_logits.grad).all()
    assert student_logits.grad[0, 3:].abs().sum() == 0


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_zero_probabilities_give_no_nan(kind):
    big = 200.0  # float32 softmax underflows to exactly 0 here; -inf is a hard 0 (e.g. padded vocab)
    teacher_logits = torch.tensor([[big, 0.0, 1.0, -float("inf")], [0.0, 1.0, 2.0, -float("inf")]])
    student_logits = torch.tensor([[1.0, big, 0.0, -float("inf")], [2.0, 1.0, 0.0, -float("inf")]],
                                  requires_grad=True)
    loss = loss_of(kind, student_logits, teacher_logits)
    assert torch.isfinite(loss)
    loss.backward()
    assert not torch.isnan(student_logits.grad).any()


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_masked_positions_do_not_change_the_loss(kind):
    student_logits, teacher_logits, mask = random_logits(17)
    labels = teacher_logits.argmax(-1)
    base = loss_of(kind, student_logits, teacher_logits, mask, labels=labels)
    junk = 50.0 * torch.randn(student_logits.shape, generator=torch.Generator().manual_seed(17))
    invalid = ~mask[..., None]
    torch.testing.assert_close(
        loss_of(kind, torch.where(invalid, junk, student_logits), torch.where(invalid, -junk, teacher_logits), mask,
                labels=labels.masked_fill(~mask, 0)), base)
    torch.testing.assert_close(loss_of(kind, student_logits[mask], teacher_logits[mask], labels=labels[mask]), base)
    assert base.item() != pytest.approx(loss_of(kind, student_logits, teacher_logits, labels=labels).item(), rel=1e-4)


def test_integer_mask_is_accepted_and_empty_mask_gives_zero():
    student_logits, teacher_logits, mask = random_logits(18)
    torch.testing.assert_close(forward_kl(student_logits, teacher_logits, mask.long()),
                               forward_kl(student_logits, teacher_logits, mask))
    student_logits.requires_grad_(True)
    empty = torch.zeros(LEADING, dtype=torch.bool)
    loss = distill_loss("jsd", student_logits, teacher_logits, mask=empty)
    assert loss.item() == 0.0
    loss.backward()
    assert student_logits.grad.abs().sum() == 0


# --- errors --------------------------------------------------------------------------------------

def test_loss_kinds_and_dispatch_errors():
    assert LOSS_KINDS == ("fkl", "rkl", "jsd", "tvd", "ce")
    student_logits, teacher_logits, mask = random_logits(19)
    with pytest.raises(ValueError, match="fkl, rkl, jsd, tvd, ce"):
        distill_loss("kl", student_logits, teacher_logits)
    for kind in DIVERGENCES:
        with pytest.raises(ValueError, match="teacher_logits"):
            distill_loss(kind, student_logits, labels=teacher_logits.argmax(-1))
    with pytest.raises(ValueError, match="labels"):
        distill_loss("ce", student_logits, teacher_logits)
    with pytest.raises(ValueError, match="same shape"):
        distill_loss("fkl", student_logits, teacher_logits[..., :-1])
    with pytest.raises(ValueError, match="mask"):
        distill_loss("fkl", student_logits, teacher_logits, mask=mask[0])
    with pytest.raises(ValueError, match="mask"):
        distill_loss("fkl", student_logits, teacher_logits, mask=mask.float())
    with pytest.raises(ValueError, match="temperature"):
        distill_loss("rkl", student_logits, teacher_logits, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        distill_loss("tvd", student_logits, teacher_logits, top_k=-1)
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(student_logits, torch.full(LEADING, VOCAB))
