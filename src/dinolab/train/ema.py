"""The EMA teacher: teacher <- m * teacher + (1 - m) * student, in one fused pass."""

from __future__ import annotations

import torch
from torch import nn


class EMATeacher:
    """Pairs teacher and student parameters by name once, then updates them with one foreach call."""

    def __init__(self, teacher: nn.Module, student: nn.Module):
        student_params = dict(student.named_parameters())
        names = [name for name, _ in teacher.named_parameters()]
        missing = [n for n in names if n not in student_params]
        if missing:
            raise ValueError(f"teacher parameters absent from the student: {missing[:5]}")
        self.teacher = [p for _, p in teacher.named_parameters()]
        self.student = [student_params[n] for n in names]
        for p in self.teacher:
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        torch._foreach_lerp_(self.teacher, [p.detach() for p in self.student], 1.0 - momentum)
