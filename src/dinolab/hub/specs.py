"""The released DINO, iBOT and DINOv2 backbones as a table of architectures, and their constructors.

Each constructor builds the network with the architecture of the official release (patch size, width,
depth, heads, LayerScale, SwiGLU, registers, the image size its position embedding was trained at, the
way it interpolates that embedding) and loads `weights` when given: a local file or a URL (fetched
through torch.hub's cache). `weights=None` gives a randomly initialized network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dinolab.models.vit import ARCH_SIZES, VisionTransformer


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


def build(name: str, weights: str | Path | None = None, **kwargs: Any) -> VisionTransformer:
    """The backbone `name` (a key of MODEL_SPECS); `kwargs` override its constructor arguments."""
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_SPECS)}")
    model = VisionTransformer(**{**MODEL_SPECS[name].vit_kwargs(), **kwargs})
    if weights is not None:
        from dinolab.hub.loading import load_weights

        load_weights(model, weights)
    return model.eval()


def _constructor(name: str) -> Callable[..., VisionTransformer]:
    def construct(weights: str | Path | None = None, **kwargs: Any) -> VisionTransformer:
        return build(name, weights, **kwargs)

    spec = MODEL_SPECS[name]
    construct.__name__ = construct.__qualname__ = name
    construct.__doc__ = (
        f"{name}: {spec.arch}/{spec.patch_size} at {spec.img_size} px"
        + (f", {spec.num_register_tokens} registers" if spec.num_register_tokens else "")
        + (", SwiGLU" if spec.ffn == "swiglu" else "")
        + ". `weights`: None (random init), a checkpoint file or a URL; `kwargs` override the architecture."
    )
    return construct


dino_vits16 = _constructor("dino_vits16")
dino_vits8 = _constructor("dino_vits8")
dino_vitb16 = _constructor("dino_vitb16")
dino_vitb8 = _constructor("dino_vitb8")
ibot_vits16 = _constructor("ibot_vits16")
ibot_vitb16 = _constructor("ibot_vitb16")
ibot_vitl16 = _constructor("ibot_vitl16")
dinov2_vits14 = _constructor("dinov2_vits14")
dinov2_vitb14 = _constructor("dinov2_vitb14")
dinov2_vitl14 = _constructor("dinov2_vitl14")
dinov2_vitg14 = _constructor("dinov2_vitg14")
dinov2_vits14_reg = _constructor("dinov2_vits14_reg")
dinov2_vitb14_reg = _constructor("dinov2_vitb14_reg")
dinov2_vitl14_reg = _constructor("dinov2_vitl14_reg")
dinov2_vitg14_reg = _constructor("dinov2_vitg14_reg")


def dino_resnet50(weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """DINO's ResNet-50: torchvision's ResNet-50 with the classifier replaced by the identity (2048-d output).

    `weights`: None (random init), DINO's `dino_resnet50_pretrain.pth` (or a full DINO checkpoint) or a URL.
    """
    from torchvision.models import resnet50

    model = resnet50(weights=None, **kwargs)
    model.fc = nn.Identity()
    if weights is not None:
        from dinolab.hub.loading import load_weights

        load_weights(model, weights)
    return model.eval()
