"""ViT backbones and projection heads."""

from dinolab.models.heads import DINOHead, MultiCropWrapper
from dinolab.models.vit import (
    ARCH_SIZES,
    VisionTransformer,
    vit,
    vit_base,
    vit_giant,
    vit_large,
    vit_small,
    vit_tiny,
)

__all__ = [
    "ARCH_SIZES",
    "DINOHead",
    "MultiCropWrapper",
    "VisionTransformer",
    "vit",
    "vit_base",
    "vit_giant",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
