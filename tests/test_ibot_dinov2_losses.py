"""iBOT's patch loss, DINOv2's Sinkhorn-Knopp centering and KoLeo regularizer, each against an independent,
written-out reference on small random tensors (values and gradients w.r.t. the student logits), plus the
marginals of Sinkhorn-Knopp and KoLeo on point sets whose answer is known by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinolab.losses import DINOLoss, IBOTPatchLoss, koleo_loss, sinkhorn_knopp, teacher_targets
from dinolab.losses.centering import entropy

# ---------------------------------------------------------------- references


def reference_sinkhorn(logits: torch.Tensor, temperature: float, iterations: int) -> torch.Tensor:
    """DINOv2's Sinkhorn-Knopp written on the (B, K) matrix in float64: start from exp(logits / T) scaled to
    total mass 1, then alternately give every prototype (column) mass 1/K and every sample (row) mass 1/B;
    the answer is B times that, so each row is a distribution."""
    q = torch.exp(logits.double() / temperature)
    q = q / q.sum()
    b, k = q.shape
    for _ in range(iterations):
        q = q / (q.sum(dim=0, keepdim=True) * k)
        q = q / (q.sum(dim=1, keepdim=True) * b)
    return (q * b).float()


def reference_ibot_loss(
    student: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """iBOT's masked-image-modeling loss, image by image and patch by patch: each image's loss is the mean
    over its masked patches of -sum_k q_k log p_k; the batch loss is the mean over ALL images, an image
    without masked patches contributing 0. Rows of student/targets are the masked patches in masks[masks]
    order (image-major, patches in order)."""
    total = student.new_zeros(())
    row = 0
    for image in range(masks.shape[0]):
        terms = []
        for patch in range(masks.shape[1]):
            if not masks[image, patch]:
                continue
            log_p = F.log_softmax(student[row] / student_temp, dim=-1)
            terms.append(-(targets[row] * log_p).sum())
            row += 1
        if terms:
            total = total + sum(terms) / len(terms)
    assert row == len(student)
    return total / masks.shape[0]


def reference_dino_loss_with_targets(
    student: torch.Tensor, targets: torch.Tensor, student_temp: float, n_global: int = 2
) -> torch.Tensor:
    """DINO's double loop (teacher view iq vs every other student view v), given the teacher's targets."""
    batch = len(targets) // n_global
    n_crops = len(student) // batch
    total, terms = student.new_zeros(()), 0
    for iq in range(n_global):
        q = targets[iq * batch : (iq + 1) * batch]
        for v in range(n_crops):
            if v == iq:
                continue
            log_p = F.log_softmax(student[v * batch : (v + 1) * batch] / student_temp, dim=-1)
            total = total + (-(q * log_p).sum(-1)).mean()
            terms += 1
    return total / terms


def random_masks(n_images: int, n_patches: int, generator: torch.Generator, empty_images: int) -> torch.Tensor:
    """Random masks with a different number of masked patches per image; the first `empty_images` rows empty."""
    masks = torch.rand(n_images, n_patches, generator=generator) < torch.linspace(0.1, 0.9, n_images)[:, None]
    masks[:empty_images] = False
    masks[empty_images:, 0] = True  # every other image has at least one masked patch
    return masks


# ---------------------------------------------------------------- iBOT patch loss


@pytest.mark.parametrize(("n_images", "n_patches", "k", "empty_images"), [(4, 9, 16, 0), (6, 16, 32, 2), (3, 4, 8, 1)])
@pytest.mark.parametrize("teacher_temp", [0.04, 0.07])
def test_ibot_loss_matches_the_reference_value_gradient_and_center(
    n_images: int, n_patches: int, k: int, empty_images: int, teacher_temp: float
) -> None:
    g = torch.Generator().manual_seed(n_images * 31 + k)
    masks = random_masks(n_images, n_patches, g, empty_images)
    m = int(masks.sum())
    student = (torch.randn(m, k, generator=g) * 2).requires_grad_(True)
    student_ref = student.detach().clone().requires_grad_(True)
    teacher = torch.randn(m, k, generator=g) * 2
    center = torch.randn(1, k, generator=g) * 0.3

    loss_fn = IBOTPatchLoss(k, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(center)
    loss, stats = loss_fn(student, teacher, masks, teacher_temp)

    targets = torch.softmax((teacher - center) / teacher_temp, dim=-1)  # centered with the center BEFORE the update
    expected = reference_ibot_loss(student_ref, targets, masks, 0.1)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(student.grad, student_ref.grad, rtol=1e-4, atol=1e-7)
    assert student.grad.abs().sum() > 0

    # the center moves by EMA towards the mean of the masked teacher logits
    torch.testing.assert_close(loss_fn.center, 0.9 * center + 0.1 * teacher.mean(0, keepdim=True))
    # collapse statistics: entropy of the targets, and mean cross-entropy minus that entropy
    h = -torch.special.xlogy(targets, targets).sum(-1).mean()
    torch.testing.assert_close(stats["ibot_teacher_entropy"], h, rtol=1e-5, atol=1e-6)
    ce = -(targets * F.log_softmax(student_ref.detach() / 0.1, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(stats["ibot_kl"], ce - h, rtol=1e-4, atol=1e-5)


def test_ibot_loss_weighs_every_masked_image_equally() -> None:
    """Image 0 has 1 masked patch, image 1 has 3, image 2 none: loss = (CE_0 + mean(CE_1..3) + 0) / 3."""
    k = 5
    masks = torch.tensor([[True, False, False, False], [True, True, False, True], [False] * 4])
    student = torch.randn(4, k)
    teacher = torch.randn(4, k)
    loss, _ = IBOTPatchLoss(k, student_temp=0.1)(student, teacher, masks, 0.05)
    q = torch.softmax(teacher / 0.05, dim=-1)  # the center starts at 0
    ce = -(q * F.log_softmax(student / 0.1, dim=-1)).sum(-1)
    torch.testing.assert_close(loss, (ce[0] + ce[1:].mean() + 0.0) / 3)


def test_ibot_loss_without_masked_patches_is_zero_and_keeps_the_center() -> None:
    k = 8
    loss_fn = IBOTPatchLoss(k)
    c0 = torch.randn(1, k)
    loss_fn.center.copy_(c0)
    student = torch.zeros(0, k, requires_grad=True)
    loss, stats = loss_fn(student, torch.zeros(0, k), torch.zeros(4, 9, dtype=torch.bool), 0.04)
    assert loss.item() == 0.0
    assert torch.equal(loss_fn.center, c0)
    assert stats["ibot_teacher_entropy"].item() == 0.0 and stats["ibot_kl"].item() == 0.0
    loss.backward()  # still part of the graph: a training step with no masked image works
    assert student.grad is not None and student.grad.shape == (0, k)


def test_ibot_teacher_receives_no_gradient() -> None:
    masks = torch.tensor([[True, True, False], [False, True, True]])
    student = torch.randn(4, 6, requires_grad=True)
    teacher = torch.randn(4, 6, requires_grad=True)
    loss, _ = IBOTPatchLoss(6)(student, teacher, masks, 0.04)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    assert "center" in IBOTPatchLoss(6).state_dict()  # its own center, saved with checkpoints


@pytest.mark.parametrize("iterations", [1, 3])
def test_ibot_loss_with_sinkhorn_matches_the_reference_and_keeps_the_center(iterations: int) -> None:
    g = torch.Generator().manual_seed(5)
    k = 16
    masks = random_masks(5, 9, g, empty_images=1)
    m = int(masks.sum())
    student = torch.randn(m, k, generator=g).requires_grad_(True)
    student_ref = student.detach().clone().requires_grad_(True)
    teacher = torch.randn(m, k, generator=g)

    loss_fn = IBOTPatchLoss(k, student_temp=0.1, centering="sinkhorn", sinkhorn_iterations=iterations)
    loss, _ = loss_fn(student, teacher, masks, 0.07)
    expected = reference_ibot_loss(student_ref, reference_sinkhorn(teacher, 0.07, iterations), masks, 0.1)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(student.grad, student_ref.grad, rtol=1e-4, atol=1e-7)
    assert torch.equal(loss_fn.center, torch.zeros(1, k))  # Sinkhorn-Knopp has no center


# ---------------------------------------------------------------- DINO loss with Sinkhorn-Knopp


@pytest.mark.parametrize(("n_crops", "batch", "k"), [(2, 4, 16), (6, 3, 8), (4, 8, 32)])
def test_dino_loss_with_sinkhorn_matches_the_reference(n_crops: int, batch: int, k: int) -> None:
    g = torch.Generator().manual_seed(n_crops * 10 + batch)
    student = (torch.randn(n_crops * batch, k, generator=g) * 2).requires_grad_(True)
    student_ref = student.detach().clone().requires_grad_(True)
    teacher = torch.randn(2 * batch, k, generator=g)

    loss_fn = DINOLoss(k, student_temp=0.1, centering="sinkhorn", sinkhorn_iterations=3)
    loss, stats = loss_fn(student, teacher, 0.05)
    # Sinkhorn-Knopp balances the prototypes over both global views together (the whole teacher batch)
    targets = reference_sinkhorn(teacher, 0.05, 3)
    expected = reference_dino_loss_with_targets(student_ref, targets, 0.1)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(student.grad, student_ref.grad, rtol=1e-4, atol=1e-7)
    assert torch.equal(loss_fn.center, torch.zeros(1, k))
    h = -torch.special.xlogy(targets, targets).sum(-1).mean()
    torch.testing.assert_close(stats["teacher_entropy"], h, rtol=1e-5, atol=1e-6)


def test_sinkhorn_targets_differ_from_per_view_balancing() -> None:
    """Balancing over the 2B teacher outputs at once is not the same as balancing each view separately."""
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(8, 6, generator=g)
    teacher[4:] += torch.tensor([3.0, 0, 0, 0, 0, 0])  # view 2 prefers prototype 0
    joint = sinkhorn_knopp(teacher, 0.1, 3)
    separate = torch.cat([sinkhorn_knopp(v, 0.1, 3) for v in teacher.chunk(2)])
    torch.testing.assert_close(joint, reference_sinkhorn(teacher, 0.1, 3), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(joint, separate, atol=1e-3)


# ---------------------------------------------------------------- Sinkhorn-Knopp marginals


def skewed_logits(b: int, k: int, seed: int) -> torch.Tensor:
    """Logits in which a few prototypes win for most samples (so a plain softmax is far from balanced)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * 0.5 + torch.linspace(1.0, -1.0, k)


@pytest.mark.parametrize(("b", "k"), [(16, 8), (32, 32), (8, 32)])
def test_sinkhorn_rows_are_distributions_and_columns_converge_to_b_over_k(b: int, k: int) -> None:
    logits = skewed_logits(b, k, seed=b + k)
    q = sinkhorn_knopp(logits, 0.1, iterations=50)
    assert q.shape == (b, k) and (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.sum(dim=0), torch.full((k,), b / k), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(q, reference_sinkhorn(logits, 0.1, 50), rtol=1e-4, atol=1e-6)


def test_three_sinkhorn_iterations_balance_columns_better_than_softmax() -> None:
    b, k, temp = 32, 16, 0.2
    logits = skewed_logits(b, k, seed=0)
    softmax = torch.softmax(logits / temp, dim=-1)
    sk3 = sinkhorn_knopp(logits, temp, iterations=3)
    torch.testing.assert_close(sk3.sum(dim=1), torch.ones(b), rtol=1e-5, atol=1e-5)
    imbalance_softmax = (softmax.sum(0) - b / k).abs().max()
    imbalance_sk3 = (sk3.sum(0) - b / k).abs().max()
    assert imbalance_softmax > 1.0  # the skew is real: a prototype gets > 1 sample's worth too much
    assert imbalance_sk3 < 0.25 * imbalance_softmax
    # more iterations, better balance
    imbalance_sk1 = (sinkhorn_knopp(logits, temp, iterations=1).sum(0) - b / k).abs().max()
    imbalance_sk10 = (sinkhorn_knopp(logits, temp, iterations=10).sum(0) - b / k).abs().max()
    assert imbalance_softmax > imbalance_sk1 > imbalance_sk3 > imbalance_sk10


def test_sinkhorn_ignores_a_constant_shift_and_keeps_sharpness_ordering() -> None:
    logits = skewed_logits(12, 6, seed=1)
    torch.testing.assert_close(sinkhorn_knopp(logits, 0.1), sinkhorn_knopp(logits + 2.0, 0.1), rtol=1e-5, atol=1e-6)
    # a lower temperature gives sharper (lower-entropy) targets
    assert entropy(sinkhorn_knopp(logits, 0.05)) < entropy(sinkhorn_knopp(logits, 0.5))


def test_sinkhorn_is_finite_for_large_logits_over_temperature() -> None:
    logits = torch.tensor([[5.0, 0.0, 1.0], [0.0, 5.0, 1.0], [1.0, 0.0, 5.0]])
    q = sinkhorn_knopp(logits, 0.04)  # 5 / 0.04 = 125 > log(float32 max) = 88.7
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q, sinkhorn_knopp(logits - 5.0, 0.04))


def test_teacher_targets_by_centering_method() -> None:
    logits = torch.randn(6, 5)
    center = torch.randn(1, 5)
    c0 = center.clone()
    q = teacher_targets(logits, center, 0.07, "ema", momentum=0.8, iterations=3)
    torch.testing.assert_close(q, torch.softmax((logits - c0) / 0.07, dim=-1))
    torch.testing.assert_close(center, 0.8 * c0 + 0.2 * logits.mean(0, keepdim=True))
    c1 = center.clone()
    q = teacher_targets(logits, center, 0.07, "sinkhorn", momentum=0.8, iterations=3)
    torch.testing.assert_close(q, reference_sinkhorn(logits, 0.07, 3), rtol=1e-5, atol=1e-6)
    assert torch.equal(center, c1)


def test_entropy_of_uniform_and_one_hot() -> None:
    assert entropy(torch.full((3, 16), 1 / 16)).item() == pytest.approx(math.log(16), rel=1e-6)
    assert entropy(F.one_hot(torch.tensor([0, 3]), 4).float()).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- KoLeo


def on_circle(degrees: list[float]) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()


def test_koleo_on_points_on_the_unit_circle() -> None:
    """Angles 0, 10, 50, 180 degrees: nearest neighbours 10, 0, 10 and 50 degrees away, at chord
    distances 2 sin(5), 2 sin(5), 2 sin(20), 2 sin(65) degrees."""
    x = on_circle([0.0, 10.0, 50.0, 180.0])
    nearest = [2 * math.sin(math.radians(a)) for a in (5.0, 5.0, 20.0, 65.0)]
    expected = -sum(math.log(d) for d in nearest) / 4
    assert koleo_loss(x).item() == pytest.approx(expected, rel=1e-5)


def test_koleo_on_the_octahedron() -> None:
    """The 6 vertices +-e_i of the octahedron: every nearest neighbour is at distance sqrt(2)."""
    x = torch.cat([torch.eye(3), -torch.eye(3)])
    assert koleo_loss(x).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)


def test_koleo_is_invariant_to_the_scale_of_each_feature() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 7, generator=g)
    scales = torch.rand(10, 1, generator=g) * 10 + 0.1
    torch.testing.assert_close(koleo_loss(x * scales), koleo_loss(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(koleo_loss(x * 1000.0), koleo_loss(x), rtol=1e-5, atol=1e-6)


def test_koleo_gradient_pushes_nearest_neighbours_apart() -> None:
    x = on_circle([0.0, 10.0, 50.0, 180.0]).requires_grad_(True)
    koleo_loss(x).backward()
    grad = x.grad
    with torch.no_grad():
        # descending the gradient moves point 0 away from point 1 (its nearest) and vice versa
        assert torch.dot(-grad[0], x[0] - x[1]) > 0
        assert torch.dot(-grad[1], x[1] - x[0]) > 0
        before = torch.dist(x[0], x[1]).item()
        step = x - 0.01 * grad
        assert torch.dist(step[0], step[1]).item() > before
        assert koleo_loss(step).item() < koleo_loss(x).item()


def test_koleo_duplicates_are_finite_and_a_single_feature_is_an_error() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert torch.isfinite(koleo_loss(x))
    with pytest.raises(ValueError, match="at least 2"):
        koleo_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        koleo_loss(torch.randn(0, 4))
