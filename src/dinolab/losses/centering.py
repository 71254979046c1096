"""Turning teacher logits into targets: centering (EMA of the batch mean) and sharpening, or
DINOv2's Sinkhorn-Knopp normalization, which balances the prototypes over the batch instead."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def centered_softmax(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """The teacher's target distribution: softmax((logits - center) / temperature)."""
    return torch.softmax((teacher_logits - center) / temperature, dim=-1)


@torch.no_grad()
def update_center(center: Tensor, teacher_logits: Tensor, momentum: float) -> None:
    """center <- m * center + (1 - m) * mean of the teacher logits over the (global) batch."""
    batch_sum = teacher_logits.sum(dim=0, keepdim=True)
    count = torch.tensor(float(len(teacher_logits)), device=teacher_logits.device)
    if _distributed():
        dist.all_reduce(batch_sum)
        dist.all_reduce(count)
    center.mul_(momentum).add_(batch_sum / count, alpha=1 - momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """Targets (B, K) whose rows sum to 1 and whose columns are pushed towards equal mass B/K.

    Alternates normalizing prototypes (columns) and samples (rows) of exp(logits / T), as DINOv2
    does, over the global batch; the last step normalizes rows, so each row is a distribution.
    """
    logits = teacher_logits.float()
    top = logits.max()  # a shift common to all ranks cancels out and keeps exp() finite
    if _distributed():
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp((logits - top) / temperature).t()  # (K, B)
    n_samples = torch.tensor(float(q.shape[1]), device=q.device)
    total = q.sum()
    if _distributed():
        dist.all_reduce(n_samples)
        dist.all_reduce(total)
    q /= total
    n_prototypes = q.shape[0]
    for _ in range(iterations):
        row_sums = q.sum(dim=1, keepdim=True)
        if _distributed():
            dist.all_reduce(row_sums)
        q /= row_sums * n_prototypes
        q /= q.sum(dim=0, keepdim=True) * n_samples
    return (q * n_samples).t()


def teacher_targets(
    teacher_logits: Tensor, center: Tensor, temperature: float, centering: str, momentum: float, iterations: int
) -> Tensor:
    """Target distributions for one loss, by its centering method; EMA centering also updates `center`."""
    teacher_logits = teacher_logits.float().detach()
    if centering == "sinkhorn":
        return sinkhorn_knopp(teacher_logits, temperature, iterations)
    targets = centered_softmax(teacher_logits, center, temperature)
    update_center(center, teacher_logits, momentum)
    return targets


class TeacherTargetLoss(nn.Module):
    """What the DINO and iBOT losses share: a student temperature and the teacher's targets by EMA
    centering (own `center` buffer, saved with the loss) or by Sinkhorn-Knopp."""

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "ema",
        sinkhorn_iterations: int = 3,
    ):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    def targets(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        return teacher_targets(
            teacher_logits, self.center, teacher_temp, self.centering, self.center_momentum, self.sinkhorn_iterations
        )


def entropy(probs: Tensor) -> Tensor:
    """Mean entropy (nats) of a batch of distributions: the collapse monitor's signal."""
    return torch.special.entr(probs).sum(-1).mean()  # entr(p) = -p log p in one pass, 0 at p = 0


def batch_entropy(probs: Tensor) -> Tensor:
    """Entropy (nats) of the batch's mean distribution: about log(prototypes in use). Near 0 only when one
    prototype wins for every image; sharp targets that differ between images keep it high."""
    return entropy(probs.mean(0, keepdim=True))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()
