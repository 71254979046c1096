"""DINOv3's Gram anchoring: keep the student's patch-to-patch similarity structure close to a frozen model's.

DINOv3 (Siméoni et al., 2025, section 4) found that long self-distillation keeps the global features but lets the
dense (patch) features degrade; penalizing the change of each image's Gram matrix of L2-normalized patch features,
against an earlier model, restores them. It constrains only the similarities between patches, not the features
themselves, so the student may still rotate or reshape its feature space. Continued pretraining (docs/adapt.md)
uses it against the frozen initial backbone, to keep what the released model knew while it adapts.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def gram_matrices(patches: Tensor) -> Tensor:
    """(B, N, D) patch features -> (B, N, N) cosine similarities between the patches of each image (in fp32)."""
    x = F.normalize(patches.float(), dim=-1)
    return x @ x.transpose(1, 2)


def gram_loss(student_patches: Tensor, anchor_patches: Tensor) -> Tensor:
    """Mean squared difference between the per-image Gram matrices of `student_patches` and `anchor_patches`,
    both (B, N, D) for the same B images (the anchor's may have another width D); 0 when they are equal."""
    if student_patches.shape[:2] != anchor_patches.shape[:2]:
        raise ValueError(
            f"Gram anchoring compares the same images and patches: student {tuple(student_patches.shape[:2])} vs "
            f"anchor {tuple(anchor_patches.shape[:2])} (images, patches)"
        )
    return F.mse_loss(gram_matrices(student_patches), gram_matrices(anchor_patches).detach())
