"""Released DINO / iBOT / DINOv2 backbones: constructors, checkpoint loading and saving in the official
layouts, export (safetensors, ONNX) and folder embedding.

    model = dinolab.hub.dinov2_vits14(weights="dinov2_vits14_pretrain.pth")  # or weights=None
    model = dinolab.hub.load_backbone("any checkpoint, run dir or URL")     # architecture from the file
"""

from dinolab.hub.constructors import (
    build,
    dino_resnet50,
    dino_vitb8,
    dino_vitb16,
    dino_vits8,
    dino_vits16,
    dinov2_vitb14,
    dinov2_vitb14_reg,
    dinov2_vitg14,
    dinov2_vitg14_reg,
    dinov2_vitl14,
    dinov2_vitl14_reg,
    dinov2_vits14,
    dinov2_vits14_reg,
    ibot_vitb16,
    ibot_vitl16,
    ibot_vits16,
)
from dinolab.hub.convert import from_dinolab, to_dinolab
from dinolab.hub.loading import (
    LoadedModel,
    LoadReport,
    infer_vit_kwargs,
    load_backbone,
    load_backbone_with_heads,
    load_model,
    load_weights,
    save_backbone,
)
from dinolab.hub.specs import MODEL_SPECS, ModelSpec

__all__ = [
    "MODEL_SPECS",
    "LoadReport",
    "LoadedModel",
    "ModelSpec",
    "build",
    "dino_resnet50",
    "dino_vitb8",
    "dino_vitb16",
    "dino_vits8",
    "dino_vits16",
    "dinov2_vitb14",
    "dinov2_vitb14_reg",
    "dinov2_vitg14",
    "dinov2_vitg14_reg",
    "dinov2_vitl14",
    "dinov2_vitl14_reg",
    "dinov2_vits14",
    "dinov2_vits14_reg",
    "from_dinolab",
    "ibot_vitb16",
    "ibot_vitl16",
    "ibot_vits16",
    "infer_vit_kwargs",
    "load_backbone",
    "load_backbone_with_heads",
    "load_model",
    "load_weights",
    "save_backbone",
    "to_dinolab",
]
