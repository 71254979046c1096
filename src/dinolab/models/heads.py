"""Projection heads: the DINO head (also used, unshared or shared, as iBOT's patch head)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolab.config import NUM_GLOBAL_CROPS


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalization w = g * v / ||v|| per output row.

    Written out (instead of torch's parametrization) so state-dict keys are the official
    `weight_g` / `weight_v`, and so the scale is applied to the (B, K) output rather than by
    materializing a normalized (K, d) weight each step.
    """

    def __init__(self, in_dim: int, out_dim: int, fix_norm: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_norm)
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight_g / torch.linalg.vector_norm(self.weight_v, dim=1, keepdim=True)
        return F.linear(x, self.weight_v) * scale.t().to(x.dtype)


class DINOHead(nn.Module):
    """MLP (GELU, no batch norm) -> bottleneck -> L2 normalization -> weight-normalized prototypes."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


@dataclass
class CropOutputs:
    cls_tokens: Tensor  # (n_crops*B, D) the backbone's normalized [CLS] tokens (KoLeo uses them)
    cls_logits: Tensor  # (n_crops*B, K) the [CLS] head's output, crops stacked view by view
    patch_logits: Tensor | None  # (M, K_patch) the patch head's output for the M scored patches, if asked
    # (NUM_GLOBAL_CROPS*B, patches, D) the backbone's normalized patch tokens of the global crops, if asked
    # (the anchoring losses of continued pretraining compare them with the initial model's)
    patch_tokens: Tensor | None = None


class MultiCropWrapper(nn.Module):
    """Backbone + [CLS] head (+ iBOT patch head) over a list of crops; crops of one resolution go
    through the backbone together. The first resolution group is the global crops, which scored patches refer to."""

    def __init__(self, backbone: nn.Module, head: nn.Module, patch_head: nn.Module | None = None, shared_head=False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.patch_head = patch_head
        self.shared_head = shared_head

    def forward(
        self, crops: list[Tensor], scored_patches: Tensor | None = None, hide_scored: bool = False,
        global_patch_tokens: bool = False,
    ) -> CropOutputs:
        """`scored_patches`: (NUM_GLOBAL_CROPS*B, patches) bool over the global crops, the patches the iBOT
        loss reads; their logits come back in `patch_logits`. `hide_scored`: the backbone sees those
        patches replaced by the mask token (the student under iBOT's masks); False: it sees the crops
        whole (the teacher, and distillation, which scores every patch of unmasked crops).
        `global_patch_tokens`: also return the global crops' patch tokens (`patch_tokens`)."""
        dense = scored_patches is not None or global_patch_tokens  # the global crops' patch tokens are needed
        n_global = NUM_GLOBAL_CROPS if dense else len(crops)  # patches refer to that group
        groups, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and end != n_global and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            groups.append(torch.cat(crops[start:end]))
            start = end
        cls_tokens, patch_logits, patch_tokens = [], None, None
        for i, x in enumerate(groups):
            if i == 0 and dense:
                hidden = scored_patches if hide_scored else None
                out = self.backbone.forward_features(x, hidden)
                if scored_patches is not None:
                    patch_head = self.head if self.shared_head else self.patch_head
                    patch_logits = patch_head(out["x_norm_patchtokens"][scored_patches])
                if global_patch_tokens:
                    patch_tokens = out["x_norm_patchtokens"]
                cls_tokens.append(out["x_norm_clstoken"])
            else:
                cls_tokens.append(self.backbone(x))
        cls = torch.cat(cls_tokens)
        return CropOutputs(cls, self.head(cls), patch_logits, patch_tokens)
