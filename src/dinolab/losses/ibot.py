"""iBOT's masked-image-modeling loss: the student must predict, for each patch it saw masked, the
teacher's (centered, sharpened) distribution for that patch of the unmasked view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.losses.centering import TeacherTargetLoss, batch_entropy, entropy


class IBOTPatchLoss(TeacherTargetLoss):
    """Own center (or Sinkhorn-Knopp), own teacher temperature; averaged per image, then over images."""

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, masks: Tensor, teacher_temp: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """student_logits, teacher_logits: (M, K) for the M masked patches, in `masks[masks]` order;
        masks: (n_images, n_patches) bool. Each image's masked patches are averaged, then the images
        (unmasked ones count as 0, as in iBOT and DINOv2) — so every masked image weighs the same."""
        if not masks.any():  # nothing to predict; keep the center as it is
            zero = student_logits.float().sum() * 0.0
            return zero, {"ibot_teacher_entropy": zero.detach(), "ibot_kl": zero.detach(),
                          "ibot_teacher_batch_entropy": zero.detach()}
        q = self.targets(teacher_logits, teacher_temp)
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        per_patch = -(q * log_p).sum(-1)
        per_image_weight = 1.0 / masks.sum(-1).clamp(min=1)
        weights = per_image_weight.unsqueeze(-1).expand_as(masks)[masks]
        loss = (per_patch * weights).sum() / len(masks)
        with torch.no_grad():
            h, h_batch = entropy(q), batch_entropy(q)
        return loss, {"ibot_teacher_entropy": h, "ibot_kl": per_patch.detach().mean() - h,
                      "ibot_teacher_batch_entropy": h_batch}
