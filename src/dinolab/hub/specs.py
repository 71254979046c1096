"""The released DINO, iBOT and DINOv2 backbones as a table of architectures (data only; the constructors
that build them and load weights are in constructors.py).

Each entry is the architecture of the official release: patch size, width, depth, heads, LayerScale, SwiGLU,
registers, the image size its position embedding was trained at, the way it interpolates that embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dinolab.models.vit import ARCH_SIZES


@dataclass(frozen=True)
class ModelSpec:
    """Constructor arguments of one released backbone (see VisionTransformer for their meaning)."""

    arch: str  # a key of dinolab.models.ARCH_SIZES
    patch_size: int
    img_size: int
    layerscale_init: float | None = None
    ffn: str = "mlp"
    num_register_tokens: int = 0
    interpolate_offset: float = 0.0
    interpolate_antialias: bool = False

    def vit_kwargs(self) -> dict[str, Any]:
        kwargs = asdict(self)
        return {**ARCH_SIZES[kwargs.pop("arch")], **kwargs}


# DINO and iBOT: plain ViT at 224 px, position embedding resized by scale factor (grid + 0.1) / side.
_DINO = dict(img_size=224, interpolate_offset=0.1)
# DINOv2: 518 px (a 37x37 grid of 14 px patches), LayerScale (1e-5 at init in pretraining). Without
# registers it resizes like DINO; the register models resize to the target size with antialiasing.
_DINOV2 = dict(patch_size=14, img_size=518, layerscale_init=1e-5, interpolate_offset=0.1)
_DINOV2_REG = dict(_DINOV2, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)

MODEL_SPECS: dict[str, ModelSpec] = {
    "dino_vits16": ModelSpec("vit_small", patch_size=16, **_DINO),
    "dino_vits8": ModelSpec("vit_small", patch_size=8, **_DINO),
    "dino_vitb16": ModelSpec("vit_base", patch_size=16, **_DINO),
    "dino_vitb8": ModelSpec("vit_base", patch_size=8, **_DINO),
    "ibot_vits16": ModelSpec("vit_small", patch_size=16, **_DINO),
    "ibot_vitb16": ModelSpec("vit_base", patch_size=16, **_DINO),
    "ibot_vitl16": ModelSpec("vit_large", patch_size=16, **_DINO),
    "dinov2_vits14": ModelSpec("vit_small", **_DINOV2),
    "dinov2_vitb14": ModelSpec("vit_base", **_DINOV2),
    "dinov2_vitl14": ModelSpec("vit_large", **_DINOV2),
    "dinov2_vitg14": ModelSpec("vit_giant", ffn="swiglu", **_DINOV2),
    "dinov2_vits14_reg": ModelSpec("vit_small", **_DINOV2_REG),
    "dinov2_vitb14_reg": ModelSpec("vit_base", **_DINOV2_REG),
    "dinov2_vitl14_reg": ModelSpec("vit_large", **_DINOV2_REG),
    "dinov2_vitg14_reg": ModelSpec("vit_giant", ffn="swiglu", **_DINOV2_REG),
}
