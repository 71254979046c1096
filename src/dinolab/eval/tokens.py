"""What evaluation keeps of a model's output (`TokenFeatures`) and the test-time geometry of its input
(`Preprocess`): the types that feature extraction (features.py) and the feature cache (cache.py) share,
in a module that imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class Preprocess:
    """Test-time geometry for every uint8 batch: shorter side resized to `resize`, then the centered
    `crop` x `crop` window (0 = leave the images as the dataset gives them)."""

    resize: int = 0
    crop: int = 0

    def __call__(self, images: Tensor) -> Tensor:
        if self.resize:
            images = TF.resize(images, self.resize, antialias=True)
        if self.crop:
            images = TF.center_crop(images, [self.crop, self.crop])
        return images


NO_PREPROCESS = Preprocess()


@dataclass
class TokenFeatures:
    """What evaluation keeps of a model's output on a dataset, in dataset order (unreadable images dropped)."""

    cls: Tensor  # (N, n_blocks, D): normalized [CLS] token of each of the last n blocks, the last block last
    avgpool: Tensor  # (N, D): mean of the last block's normalized patch tokens
    labels: Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_blocks(self) -> int:
        return self.cls.shape[1]

    @property
    def embedding(self) -> Tensor:
        """The image embedding of the DINO papers (k-NN, retrieval, clustering): the last block's [CLS]."""
        return self.cls[:, -1]

    def select(self, blocks: int = 1, avgpool: bool = False) -> Tensor:
        """DINOv2's linear-probe input: [CLS] of the last `blocks` blocks, then (optionally) the pooled patches."""
        if not 1 <= blocks <= self.num_blocks:
            raise ValueError(f"asked for the last {blocks} blocks but only {self.num_blocks} were extracted")
        parts = [self.cls[:, -blocks:].flatten(1)] + ([self.avgpool] if avgpool else [])
        return torch.cat(parts, dim=1)
