"""The DINO loss against a written-out reference of the paper's double loop; centering; collapse statistics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinolab.losses import DINOLoss, centered_softmax, update_center


def reference_dino_loss(
    student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temp: float, teacher_temp: float,
    n_global: int = 2,
) -> torch.Tensor:
    """Algorithm 1 of the DINO paper / the official `DINOLoss.forward`, loop for loop."""
    batch = len(teacher) // n_global
    n_crops = len(student) // batch
    student_out = [student[v * batch : (v + 1) * batch] / student_temp for v in range(n_crops)]
    teacher_out = [
        torch.softmax((teacher[i * batch : (i + 1) * batch] - center) / teacher_temp, dim=-1).detach()
        for i in range(n_global)
    ]
    total_loss, n_loss_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue  # no loss between a view and itself
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss = total_loss + loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


@pytest.mark.parametrize(("n_crops", "batch", "k"), [(2, 4, 16), (6, 3, 32), (4, 1, 8)])
@pytest.mark.parametrize("teacher_temp", [0.04, 0.07])
def test_dino_loss_matches_the_reference_value_and_gradient(n_crops: int, batch: int, k: int, teacher_temp: float):
    g = torch.Generator().manual_seed(n_crops * 100 + batch)
    student = (torch.randn(n_crops * batch, k, generator=g) * 3).requires_grad_(True)
    student_ref = student.detach().clone().requires_grad_(True)
    teacher = torch.randn(2 * batch, k, generator=g) * 3
    center = torch.randn(1, k, generator=g) * 0.5

    loss_fn = DINOLoss(k, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(center)
    loss, stats = loss_fn(student, teacher, teacher_temp)
    expected = reference_dino_loss(student_ref, teacher, center, 0.1, teacher_temp)

    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(student.grad, student_ref.grad, rtol=1e-4, atol=1e-7)
    assert student.grad.abs().sum() > 0
    assert set(stats) == {"teacher_entropy", "kl", "teacher_batch_entropy"}


def test_each_student_view_learns_only_from_the_other_teacher_views() -> None:
    """2 global views, no local ones: loss = (CE(q0, p1) + CE(q1, p0)) / 2, so the gradient of student view 0
    comes from teacher view 1 alone: (softmax(s0 / T) - q1) / (T * B * 2)."""
    k, b, temp = 8, 2, 0.1
    student = torch.randn(2 * b, k, requires_grad=True)
    teacher = torch.randn(2 * b, k)
    teacher[b:] = 0.0  # teacher view 1 is uniform; view 0 is not
    loss, _ = DINOLoss(k, student_temp=temp)(student, teacher, 0.04)
    loss.backward()
    q1 = torch.full((b, k), 1.0 / k)
    p0 = torch.softmax(student.detach()[:b] / temp, dim=-1)
    torch.testing.assert_close(student.grad[:b], (p0 - q1) / (temp * b * 2))


def test_teacher_receives_no_gradient() -> None:
    student = torch.randn(8, 16, requires_grad=True)
    teacher = torch.randn(4, 16, requires_grad=True)
    loss, _ = DINOLoss(16)(student, teacher, 0.04)
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None


def test_center_is_updated_by_ema_of_the_teacher_batch_mean() -> None:
    k = 10
    loss_fn = DINOLoss(k, center_momentum=0.9)
    c0 = torch.randn(1, k)
    loss_fn.center.copy_(c0)
    teacher = torch.randn(6, k)
    loss_fn(torch.randn(12, k), teacher, 0.04)
    torch.testing.assert_close(loss_fn.center, 0.9 * c0 + 0.1 * teacher.mean(0, keepdim=True))
    assert loss_fn.center.shape == (1, k)
    assert "center" in loss_fn.state_dict()  # saved with checkpoints


def test_the_loss_uses_the_center_before_the_update() -> None:
    k = 10
    teacher, student = torch.randn(4, k), torch.randn(8, k)
    loss_fn = DINOLoss(k)
    c0 = torch.randn(1, k)
    loss_fn.center.copy_(c0)
    loss, _ = loss_fn(student, teacher, 0.05)
    torch.testing.assert_close(loss, reference_dino_loss(student, teacher, c0, 0.1, 0.05))


def test_update_center_function() -> None:
    center = torch.ones(1, 3)
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    update_center(center, logits, momentum=0.75)
    torch.testing.assert_close(center, torch.tensor([[0.75 + 0.25 * 2.0, 0.75 + 0.25 * 3.0, 0.75 + 0.25 * 4.0]]))


def test_centered_softmax() -> None:
    logits = torch.tensor([[1.0, 2.0, 4.0]])
    center = torch.tensor([[0.0, 1.0, 3.0]])
    # centering makes every logit 1 -> uniform, whatever the temperature
    torch.testing.assert_close(centered_softmax(logits, center, 0.04), torch.full((1, 3), 1 / 3))
    sharp = centered_softmax(logits, torch.zeros(1, 3), 0.04)
    soft = centered_softmax(logits, torch.zeros(1, 3), 1.0)
    assert sharp[0, 2] > soft[0, 2] > 1 / 3
    torch.testing.assert_close(sharp.sum(-1), torch.ones(1))


def test_entropy_of_a_uniform_teacher_is_log_k() -> None:
    k = 64
    loss, stats = DINOLoss(k)(torch.randn(8, k), torch.zeros(4, k), 0.04)
    torch.testing.assert_close(stats["teacher_entropy"], torch.tensor(math.log(k)))
    torch.testing.assert_close(stats["kl"], loss.detach() - stats["teacher_entropy"])


def test_entropy_and_kl_statistics() -> None:
    k, b = 16, 5
    g = torch.Generator().manual_seed(3)
    student = torch.randn(4 * b, k, generator=g)
    teacher = torch.randn(2 * b, k, generator=g) * 2
    loss_fn = DINOLoss(k)
    loss, stats = loss_fn(student, teacher, 0.1)
    q = torch.softmax(teacher / 0.1, dim=-1)
    entropy = -(q * q.log()).sum(-1).mean()
    torch.testing.assert_close(stats["teacher_entropy"], entropy)
    torch.testing.assert_close(stats["kl"], loss - entropy)
    assert stats["kl"] >= 0  # a mean of KL divergences
    assert not stats["kl"].requires_grad and not stats["teacher_entropy"].requires_grad


def test_a_one_hot_teacher_has_zero_entropy() -> None:
    k = 8
    teacher = torch.full((4, k), -1000.0)
    teacher[:, 3] = 1000.0
    loss, stats = DINOLoss(k)(torch.randn(8, k), teacher, 0.04)
    assert stats["teacher_entropy"].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(loss)


def test_batch_entropy_tells_one_prototype_for_every_image_from_sharp_targets_that_differ() -> None:
    """Both teachers give one-hot targets (entropy 0 per image); only the first is collapsed."""
    k = 8
    same = torch.full((4, k), -1000.0)
    same[:, 3] = 1000.0
    differ = torch.full((4, k), -1000.0)
    differ[torch.arange(4), torch.arange(4)] = 1000.0
    _, collapsed = DINOLoss(k)(torch.randn(8, k), same, 0.04)
    _, healthy = DINOLoss(k)(torch.randn(8, k), differ, 0.04)
    assert collapsed["teacher_entropy"].item() == healthy["teacher_entropy"].item() == pytest.approx(0.0, abs=1e-6)
    assert collapsed["teacher_batch_entropy"].item() == pytest.approx(0.0, abs=1e-6)
    assert healthy["teacher_batch_entropy"].item() == pytest.approx(math.log(4), rel=1e-5)


def test_student_equal_to_teacher_target_minimizes_kl() -> None:
    """If every student view predicts exactly the teacher's distribution, KL = 0 and loss = entropy."""
    k, b = 12, 3
    teacher = torch.randn(b, k).repeat(2, 1)  # both global views identical
    q = torch.softmax(teacher[:b] / 0.05, dim=-1)
    student_view = (q.log() * 0.1).repeat(4, 1)  # log_softmax(s / 0.1) == log q
    loss, stats = DINOLoss(k)(student_view, teacher, 0.05)
    assert stats["kl"].item() == pytest.approx(0.0, abs=1e-5)
    torch.testing.assert_close(loss, stats["teacher_entropy"])


def test_loss_is_float32_for_low_precision_logits() -> None:
    student = torch.randn(8, 16, dtype=torch.bfloat16)
    teacher = torch.randn(4, 16, dtype=torch.bfloat16)
    loss_fn = DINOLoss(16)
    loss, _ = loss_fn(student, teacher, 0.04)
    assert loss.dtype == torch.float32
    assert loss_fn.center.dtype == torch.float32
    expected = reference_dino_loss(student.float(), teacher.float(), torch.zeros(1, 16), 0.1, 0.04)
    torch.testing.assert_close(loss, expected)
