"""torch.hub entry points: `torch.hub.load(REPO_DIR, 'dinov2_vits14', source='local', weights=None)`.

`weights`: None (random init), a checkpoint file or a URL; other keyword arguments override the
architecture. The names and architectures are those of the official DINO, iBOT and DINOv2 releases.
"""

dependencies = ["torch", "torchvision", "safetensors"]

from dinolab.hub import (  # noqa: E402, F401
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
