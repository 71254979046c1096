"""The DINO loss: cross-entropy between the teacher's centered, sharpened distribution of each
global view and the student's distribution of every other view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.config import NUM_GLOBAL_CROPS
from dinolab.losses.centering import TeacherTargetLoss, batch_entropy, entropy


class DINOLoss(TeacherTargetLoss):
    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, teacher_temp: float, n_global: int = NUM_GLOBAL_CROPS
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """student_logits: (n_crops*B, K), crops stacked view by view, global views first;
        teacher_logits: (n_global*B, K). Returns the loss and collapse statistics; updates the center.

        Pairs (teacher view i, student view v != i) are summed as q_i * (sum_v log p_v - log p_i),
        which equals the paper's double loop with n_global instead of n_global * n_crops products.
        """
        n_crops = len(student_logits) // (len(teacher_logits) // n_global)
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1).chunk(n_crops)
        q_all = self.targets(teacher_logits, teacher_temp)
        q = q_all.chunk(n_global)
        log_p_sum = torch.stack(log_p).sum(0)
        total = sum(-(q[i] * (log_p_sum - log_p[i])).sum(-1).mean() for i in range(n_global))
        loss = total / (n_global * (n_crops - 1))
        with torch.no_grad():
            h, h_batch = entropy(q_all), batch_entropy(q_all)
        return loss, {"teacher_entropy": h, "kl": loss.detach() - h, "teacher_batch_entropy": h_batch}
