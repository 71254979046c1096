"""A torchvision ResNet as a backbone: a global feature and a grid of local features, behind the ViT's interface.

Feature distillation (train/feature_distill.py) can train a ResNet student from a ViT teacher. The wrapper keeps
torchvision's module names (`conv1`, `bn1`, `layer1` ... `layer4`; the classifier `fc` is the identity, as in
DINO's released ResNet-50), so its state dict is torchvision's and DINO's. It answers the calls evaluation makes
of a backbone: `forward` (the global feature), `forward_features` (the DINOv2 dict: [CLS] = average-pooled last
feature map, patch tokens = its cells) and `get_intermediate_layers` (one "block": the last stage). Weights are
never downloaded: every ResNet starts at random init.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

RESNET_LAYERS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
OUTPUT_STRIDES = (32, 16, 8)


class ResNetBackbone(ResNet):
    """torchvision's ResNet without the classifier, for `in_chans` input channels, with the stem that gives
    `stride` pixels per cell of the last feature map: 32 is torchvision's (7x7 conv stride 2 + max-pool), 16 a 3x3
    stride-1 conv + max-pool, 8 a 3x3 stride-1 conv alone (the CIFAR ResNets). Small images need the smaller
    strides to keep a grid of patches: a 28 px image leaves 1x1 cells at 32, 2x2 at 16, 4x4 at 8 (at 4x the cost)."""

    def __init__(self, arch: str = "resnet50", in_chans: int = 3, stride: int = 32):
        if arch not in RESNET_LAYERS:
            raise ValueError(f"unknown ResNet {arch!r}; choose one of {', '.join(RESNET_LAYERS)}")
        if stride not in OUTPUT_STRIDES:
            raise ValueError(f"a ResNet's output stride is one of {OUTPUT_STRIDES}, got {stride}")
        block, layers = RESNET_LAYERS[arch]
        super().__init__(block, layers)
        self.arguments: dict[str, Any] = dict(arch=arch, in_chans=in_chans, stride=stride)  # rebuilds this model
        self.fc = nn.Identity()
        if stride < 32:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        elif in_chans != 3:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if stride == 8:
            self.maxpool = nn.Identity()
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        self.in_chans = in_chans
        self.embed_dim = 512 * block.expansion
        self.patch_size = stride  # pixels per feature-map cell, what a ViT's patch size is to its token grid

    @property
    def blocks(self) -> tuple[nn.Module]:
        """The stages evaluation may read features from: the last one only (earlier ones have other widths)."""
        return (self.layer4,)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last stage's output, (B, embed_dim, h, w)."""
        if x.shape[1] != self.in_chans:
            raise ValueError(f"the model takes {self.in_chans}-channel images, got {x.shape[1]} channels")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """The global feature (average-pooled last feature map), (B, embed_dim)."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """The ViT's dict for the parts a ResNet has: the pooled feature as [CLS], the map's cells as patch tokens."""
        grid = self.feature_map(x)
        return {"x_norm_clstoken": grid.mean(dim=(2, 3)), "x_norm_patchtokens": grid.flatten(2).transpose(1, 2)}

    def get_intermediate_layers(
        self, x: Tensor, n: int = 1, reshape: bool = False, return_class_token: bool = False
    ) -> tuple:
        """The ViT's call for the one "block" a ResNet offers: patches (B, h*w, D), or (B, D, h, w) with
        `reshape`, and with `return_class_token` the pooled feature beside them."""
        if n != 1:
            raise ValueError(f"a ResNet backbone offers one feature level (its last stage), asked for {n}")
        grid = self.feature_map(x)
        patches = grid if reshape else grid.flatten(2).transpose(1, 2)
        return ((patches, grid.mean(dim=(2, 3))),) if return_class_token else (patches,)

