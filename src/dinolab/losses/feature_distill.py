"""Feature-level distillation from a headless teacher: a global term and a relational patch term.

DINOv2's own distillation (train/distill.py) matches the teacher's DINO/iBOT *head* outputs, so it needs the
teacher's heads; released backbones ship without them. This loss works on the backbone's features alone:

- **global**: cosine distance 1 - cos(P_cls(s_cls), t_cls) between the student's projected global feature (a
  ViT's [CLS], a ResNet's pooled map) and the teacher's normalized [CLS] (`x_norm_clstoken`). Cosine, not MSE,
  because only the direction is what k-NN and linear probes on DINO features use, and the teacher's feature
  norms vary from image to image.
- **patches**: for every patch, the softmax (temperature tau) of its cosine similarities to the other patches of
  the same image, and KL(teacher || student) between these row distributions, averaged over patches and
  images. It asks the student to reproduce the teacher's patch-to-patch similarity *structure* (which parts of
  the image belong together: what makes DINO patch features good for segmentation and retrieval) rather than
  the teacher's coordinates, so it needs no projection to compare across widths and works for a ResNet's
  feature map as well as for a ViT's patch tokens. A patch's similarity to itself (always 1) is left out, so
  the distribution is over the others. The student's grid is resampled (bilinear, on the (B, D, h, w) grid) to
  the teacher's when patch sizes or resolutions differ.

References: Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (match the pairwise
similarity matrices of activations); Park et al., "Relational Knowledge Distillation", CVPR 2019 (distil
relations between embeddings); Fang et al., "SEED", ICLR 2021 and Abbasi Koohpayegani et al., "CompRess",
NeurIPS 2020 (KL between softmaxed similarity distributions, for self-supervised students); Oquab et al.,
"DINOv2", 2023, section 5 (distillation through the heads, which released files lack).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resample_grid(grid: Tensor, size: tuple[int, int]) -> Tensor:
    """A (B, D, h, w) feature grid bilinearly resampled to `size` (itself when it has that size already)."""
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)


def cls_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean cosine distance between (B, D) student and teacher global features: 0 when they point alike."""
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def similarity_log_probs(grid: Tensor, temperature: float) -> Tensor:
    """(B, D, h, w) -> (B, N, N - 1): for each of the N = h * w patches, the log-softmax over the other patches
    of its cosine similarity / `temperature`."""
    b, _, h, w = grid.shape
    n = h * w
    if n < 2:
        raise ValueError(f"a {h}x{w} feature grid has fewer than 2 patches: there are no similarities to match")
    tokens = F.normalize(grid.flatten(2).transpose(1, 2), dim=-1)
    similarity = tokens @ tokens.transpose(1, 2) / temperature
    others = ~torch.eye(n, dtype=torch.bool, device=grid.device)
    return similarity[:, others].view(b, n, n - 1).log_softmax(dim=-1)


def patch_similarity_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) between the patch-similarity distributions of (B, D_s, h, w) and (B, D_t, H, W)
    grids (the student's resampled to H x W), averaged over patches and images; widths may differ."""
    s = similarity_log_probs(resample_grid(student, teacher.shape[-2:]), temperature)
    t = similarity_log_probs(teacher, temperature)
    return F.kl_div(s, t, reduction="none", log_target=True).sum(dim=-1).mean()


class FeatureDistillLoss:
    """cls_weight * cls_distance + patch_weight * patch_similarity_kl, computed in float32."""

    def __init__(self, cls_weight: float = 1.0, patch_weight: float = 1.0, temperature: float = 0.1):
        self.cls_weight, self.patch_weight, self.temperature = cls_weight, patch_weight, temperature

    def __call__(
        self, student_cls: Tensor, student_grid: Tensor, teacher_cls: Tensor, teacher_grid: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss and its two terms (detached, for the metrics)."""
        cls = cls_distance(student_cls.float(), teacher_cls.float())
        patch = patch_similarity_kl(student_grid.float(), teacher_grid.float(), self.temperature)
        loss = self.cls_weight * cls + self.patch_weight * patch
        return loss, {"cls_loss": cls.detach(), "patch_loss": patch.detach()}
