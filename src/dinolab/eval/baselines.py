"""The two baselines a learned representation is compared with, built in one place for `dinolab eval
--model ...` and the demo: the same architecture at random init, and raw pixels behind the ViT interface."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolab.models.build import vit_kwargs_of
from dinolab.models.resnet import ResNetBackbone
from dinolab.models.vit import VisionTransformer

MODEL_KINDS = ("trained", "random-init", "pixels")


class PixelBaseline(nn.Module):
    """Raw pixels behind the ViT interface: [CLS] = the whole flattened image, patch tokens = flattened
    `patch_size` x `patch_size` pixel patches, one "block" that is the identity. The baseline a learned
    representation has to beat, evaluated by exactly the same code."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.blocks = nn.ModuleList([nn.Identity()])

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def get_intermediate_layers(
        self, x: Tensor, n: int = 1, reshape: bool = False, return_class_token: bool = False
    ) -> tuple:
        if n != 1:
            raise ValueError(f"raw pixels have one 'block', asked for {n}")
        patches = F.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)  # (B, P, C * p * p)
        return ((patches, x.flatten(1)),) if return_class_token else (patches,)



def random_init_like(
    model: VisionTransformer | ResNetBackbone, seed: int | None = None
) -> VisionTransformer | ResNetBackbone:
    """`model`'s architecture (a ViT, or a distilled ResNet) with fresh weights, in eval mode. With `seed` the
    global torch RNG is seeded first; with None the weights are drawn from it as it stands (the demo seeds it
    once for several models)."""
    if seed is not None:
        torch.manual_seed(seed)
    if isinstance(model, ResNetBackbone):
        return ResNetBackbone(**model.arguments).eval()
    return VisionTransformer(**vit_kwargs_of(model)).eval()


def check_model_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")


def model_of_kind(trained: VisionTransformer, kind: str, seed: int | None = None) -> nn.Module:
    """What `kind` evaluates in place of `trained`: itself, `random_init_like(trained, seed)`, or raw pixels
    cut into its patches."""
    check_model_kind(kind)
    if kind == "random-init":
        return random_init_like(trained, seed)
    if kind == "pixels":
        return PixelBaseline(trained.patch_size)
    return trained
