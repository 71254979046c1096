"""Constructors of the released DINO, iBOT and DINOv2 backbones (the table is specs.py).

Each builds the network with the architecture of the official release and loads `weights` when given: a
local file or a URL (fetched through torch.hub's cache). `weights=None` gives a randomly initialized network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from dinolab.hub.loading import load_weights, spec
from dinolab.hub.specs import MODEL_SPECS
from dinolab.models.vit import VisionTransformer


def build(name: str, weights: str | Path | None = None, **kwargs: Any) -> VisionTransformer:
    """The backbone `name` (a key of MODEL_SPECS); `kwargs` override its constructor arguments."""
    model = VisionTransformer(**{**spec(name).vit_kwargs(), **kwargs})
    if weights is not None:
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
        load_weights(model, weights)
    return model.eval()
