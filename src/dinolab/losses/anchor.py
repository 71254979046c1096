"""Feature anchoring: keep the student's [CLS] and patch features pointing where a frozen model's do.

The plain alternative to Gram anchoring (losses/gram.py) for continued pretraining: a feature-distillation term
to the initial backbone, 1 - cosine similarity per [CLS] token and per patch token. It is stricter than the Gram
loss (it pins the features, not only their similarities), so it guards more against forgetting and lets the
model adapt less.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def feature_anchor_loss(
    student_cls: Tensor, student_patches: Tensor, anchor_cls: Tensor, anchor_patches: Tensor
) -> Tensor:
    """mean(1 - cos) over the [CLS] tokens (B, D) plus mean(1 - cos) over the patch tokens (B, N, D), computed
    in fp32 against the (detached) anchor's tokens of the same images; 0 when they are equal."""
    cls = 1 - F.cosine_similarity(student_cls.float(), anchor_cls.float().detach(), dim=-1)
    patches = 1 - F.cosine_similarity(student_patches.float(), anchor_patches.float().detach(), dim=-1)
    return cls.mean() + patches.mean()
