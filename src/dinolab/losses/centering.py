"""Turning teacher logits into targets: centering (EMA of the batch mean) and sharpening."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def centered_softmax(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """The teacher's target distribution: softmax((logits - center) / temperature)."""
    return torch.softmax((teacher_logits - center) / temperature, dim=-1)


@torch.no_grad()
def update_center(center: Tensor, teacher_logits: Tensor, momentum: float) -> None:
    """center <- m * center + (1 - m) * mean of the teacher logits over the (global) batch."""
    batch_sum = teacher_logits.sum(dim=0, keepdim=True)
    count = torch.tensor(float(len(teacher_logits)), device=teacher_logits.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_sum)
        dist.all_reduce(count)
    center.mul_(momentum).add_(batch_sum / count, alpha=1 - momentum)
