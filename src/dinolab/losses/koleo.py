"""DINOv2's KoLeo regularizer: the Kozachenko-Leonenko differential entropy estimator on the
batch's L2-normalized features, which pushes each feature away from its nearest neighbour so the
features spread uniformly over the sphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """-mean_i log(min_{j != i} ||x_i - x_j||) for the L2-normalized rows x of `features` (B >= 2)."""
    if len(features) < 2:
        raise ValueError(f"KoLeo needs at least 2 features per batch, got {len(features)}")
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():  # the neighbour is chosen without gradient, as in DINOv2
        similarity = x @ x.t()
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distances + eps).mean()
