"""torch.hub entry points: `torch.hub.load(REPO_DIR, 'dinov2_vits14', source='local', weights=None)`.

`weights`: None (random init), a checkpoint file or a URL; other keyword arguments override the
architecture. The names and architectures are those of the official DINO, iBOT and DINOv2 releases.
"""

dependencies = ["torch", "torchvision", "safetensors"]

from dinolab.hub import MODEL_SPECS, constructors  # noqa: E402

# one module-level name per released backbone (torch.hub looks entry points up by name)
globals().update({name: getattr(constructors, name) for name in (*MODEL_SPECS, "dino_resnet50")})
