"""How well attention and PCA masks find the object: IoU against silhouettes, like the DINO paper's Jaccard.

For images on a black background (Fashion-MNIST), the silhouette is the set of pixels > 0. The masks
live on the patch grid and are upsampled to pixels (each patch fully in or out), and IoU is computed
per image at pixel resolution (precision and recall too), then averaged over images. Two masks are scored:
- attention: the patches holding `fraction` of the head-mean [CLS] attention mass (attention.mass_mask);
- PCA: the foreground of pca.pca_maps, fitted over the whole set of images.
The all-foreground mask (every pixel) is the baseline: its IoU is the silhouette's share of the image.
"""

from __future__ import annotations

import numpy as np

from dinolab.viz.attention import DEFAULT_MASS, attention_maps, upsample
from dinolab.viz.inputs import VizModel
from dinolab.viz.pca import DEFAULT_THRESHOLD, image_features, pca_maps

BATCH_SIZE = 256


def per_image_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """IoU, precision and recall of each bool (H, W) mask pair in (N, H, W).

    An empty union scores IoU 1; an empty prediction scores precision 0; an empty target scores recall 1.
    """
    inter = (pred & target).sum(axis=(1, 2))
    union = (pred | target).sum(axis=(1, 2))
    predicted, actual = pred.sum(axis=(1, 2)), target.sum(axis=(1, 2))
    return {
        "iou": np.where(union > 0, inter / np.maximum(union, 1), 1.0),
        "precision": inter / np.maximum(predicted, 1),
        "recall": np.where(actual > 0, inter / np.maximum(actual, 1), 1.0),
    }


def silhouette_scores(
    model: VizModel, images: np.ndarray, fraction: float = DEFAULT_MASS, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, dict[str, np.ndarray]]:
    """uint8 (N, H, W, C) images on black, H and W multiples of the patch -> mask name -> per-image scores."""
    attention_masks, patch_grids = [], []
    for start in range(0, len(images), BATCH_SIZE):
        x = model.to_tensor(list(images[start : start + BATCH_SIZE]))
        attention_masks += [m.mean_mask for m in attention_maps(model.backbone, x, fraction)]
        patch_grids += list(image_features(model.backbone, x)[1])
    foreground = pca_maps(patch_grids, threshold).foreground
    target = images.max(axis=-1) > 0
    p = model.patch_size
    return {
        "attention_mass": per_image_scores(upsample(np.stack(attention_masks), p), target),
        "pca_foreground": per_image_scores(upsample(np.stack(foreground), p), target),
        "all_foreground": per_image_scores(np.ones_like(target), target),
    }


def silhouette_iou(
    model: VizModel, images: np.ndarray, fraction: float = DEFAULT_MASS, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, float]:
    """Mask name -> IoU averaged over images: the numbers for a report."""
    scores = silhouette_scores(model, images, fraction, threshold)
    return {name: float(s["iou"].mean()) for name, s in scores.items()}


def iou_markdown(scores: dict[str, dict[str, float]], fraction: float = DEFAULT_MASS) -> str:
    """A table of mean IoU, one row per model name -> silhouette_iou result."""
    rows = [
        f"| model | attention {fraction:.0%}-mass mask | PCA foreground mask | all-foreground baseline |",
        "|---|---|---|---|",
    ]
    keys = ("attention_mass", "pca_foreground", "all_foreground")
    for name, s in scores.items():
        rows.append(f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |")
    return "\n".join(rows)
