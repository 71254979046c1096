"""Patch-level linear probe: what a frozen patch token knows about its own image region, as mIoU.

The small-scale analogue of DINOv2's linear segmentation: a linear classifier on the last block's patch
tokens predicts a per-patch label, and the score is the mean over classes of the intersection-over-union of
predicted and true patches. The labels come from the pixels: on Fashion-MNIST (garments on an exactly black
background) a patch is "garment" when at least half of its pixels are above 0 (`silhouette_patch_labels`),
"background" otherwise. The classifier is the logistic regression of logreg.py, C chosen on the patches of a
held-out 10% of the training images (split by image, so no image has patches on both sides).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from dinolab.device import Runtime
from dinolab.eval.features import extract_patch_tokens, holdout_split
from dinolab.eval.logreg import C_GRID, fit_with_c_sweep
from dinolab.eval.tokens import NO_PREPROCESS, Preprocess

PATCH_CLASSES = ("background", "garment")


def silhouette_patch_labels(images: Tensor, patch_size: int, min_fraction: float = 0.5) -> Tensor:
    """(N, patches) labels of uint8 (N, C, H, W) images: 1 where >= `min_fraction` of a patch's pixels are
    above 0 in some channel (the object's silhouette), else 0; patches in row-major order like ViT tokens."""
    foreground = (images > 0).any(dim=1, keepdim=True).float()
    fraction = F.avg_pool2d(foreground, patch_size, stride=patch_size)  # (N, 1, H/p, W/p)
    return (fraction >= min_fraction).long().flatten(1)


def mean_iou(predicted: Tensor, truth: Tensor, num_classes: int) -> tuple[float, list[float]]:
    """mIoU (%) over the classes present in truth or prediction, and each class's IoU (%)."""
    ious = []
    for c in range(num_classes):
        union = ((predicted == c) | (truth == c)).sum()
        inter = ((predicted == c) & (truth == c)).sum()
        ious.append(100.0 * float(inter) / float(union) if union else float("nan"))
    present = [v for v in ious if v == v]
    return sum(present) / len(present), ious


def _subsample(dataset: Dataset, max_images: int | None, seed: int) -> Dataset:
    if not max_images or len(dataset) <= max_images:
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:max_images].sort().values.tolist())


def patch_probe(
    model: nn.Module, train_dataset: Dataset, test_dataset: Dataset, mean: tuple[float, ...], std: tuple[float, ...],
    patch_size: int,
    max_train_images: int | None = 5000,
    max_test_images: int | None = None,
    c_grid: Sequence[float] = C_GRID,
    sweep_patches: int | None = 10_000,
    min_fraction: float = 0.5,
    preprocess: Preprocess = NO_PREPROCESS, batch_size: int = 256, runtime: Runtime | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> dict:
    """Fit the probe on (a seeded subsample of) the train images' patches; mIoU (%) on the test images'."""

    def tokens_and_labels(dataset: Dataset, max_images: int | None) -> tuple[Tensor, Tensor, int]:
        tokens, images = extract_patch_tokens(model, _subsample(dataset, max_images, seed), mean, std, preprocess,
                                              batch_size, runtime, quiet=quiet)
        labels = silhouette_patch_labels(images, patch_size, min_fraction)
        if labels.shape[1] != tokens.shape[1]:
            raise ValueError(
                f"{labels.shape[1]} pixel patches of size {patch_size} but the model gives {tokens.shape[1]} patch "
                "tokens: pass the model's patch size"
            )
        return tokens.flatten(0, 1), labels.flatten(), len(images)

    train_x, train_y, n_train = tokens_and_labels(train_dataset, max_train_images)
    test_x, test_y, n_test = tokens_and_labels(test_dataset, max_test_images)
    if len(train_y.unique()) < 2:
        raise ValueError("every training patch has the same label: the silhouette rule needs images with a black "
                         "background (like Fashion-MNIST)")
    patches_per_image = len(train_y) // n_train
    fit_images, val_images = holdout_split(n_train, 0.1, seed)  # split by image: no image on both sides

    def patches_of(image_idx: Tensor) -> Tensor:
        return (image_idx.unsqueeze(1) * patches_per_image + torch.arange(patches_per_image)).flatten()

    probe, info = fit_with_c_sweep(train_x, train_y, patches_of(fit_images), patches_of(val_images), c_grid,
                                   sweep_patches, quiet=quiet)
    miou, ious = mean_iou(probe.predict(test_x), test_y, len(PATCH_CLASSES))
    return {
        "mIoU": miou, "iou": dict(zip(PATCH_CLASSES, ious, strict=True)),
        "patch_accuracy": probe.accuracy(test_x, test_y), **info, "train_images": n_train, "test_images": n_test,
        "garment_fraction": float(test_y.float().mean()),
    }
