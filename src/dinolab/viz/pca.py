"""DINOv2's feature visualization: PCA of patch features over a set of images.

1. PCA over all patch features of all images; the first component, min-max scaled to [0, 1] over the
   set, is thresholded (default 0.5) to split foreground from background. The sign of a principal
   component is arbitrary (DINOv2's notebook picks it by eye); here it is oriented so that the patches
   on the image borders score low, i.e. are background, since objects are usually away from the borders.
   On grids with no interior patch (2 x 2 or smaller) the foreground is the smaller side instead.
2. A second PCA on the foreground patches only; its first 3 components, each min-max scaled over the
   set, are the RGB colours. Background patches are black.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dinolab.models.vit import VisionTransformer
from dinolab.viz.attention import upsample
from dinolab.viz.figures import new_figure, show_image, show_mask_overlay
from dinolab.viz.inputs import VizModel, output_stems, read_images

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class PCAMaps:
    """Per image, on the patch grid: first component in [0, 1] (foreground high), bool foreground, RGB in [0, 1]."""

    first: list[np.ndarray]
    foreground: list[np.ndarray]
    rgb: list[np.ndarray]


@torch.inference_mode()
def image_features(backbone: VisionTransformer, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Normalized last-block tokens as float32: [CLS] (B, D) and patches (B, gh, gw, D), registers excluded."""
    out = backbone.forward_features(x)
    gh, gw = x.shape[-2] // backbone.patch_size, x.shape[-1] // backbone.patch_size
    patches = out["x_norm_patchtokens"].float().reshape(x.shape[0], gh, gw, -1)
    return out["x_norm_clstoken"].float().numpy(), patches.numpy()


def principal_components(features: np.ndarray, k: int) -> np.ndarray:
    """(N, D) -> (N, k) projections on the top-k principal axes.

    Deterministic signs: each axis is flipped so that its largest-magnitude loading is positive.
    """
    centered = features.astype(np.float64) - features.mean(axis=0, dtype=np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(centered.T @ centered)
    axes = eigenvectors[:, np.argsort(eigenvalues)[::-1][:k]]
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    return centered @ (axes * np.where(signs == 0, 1, signs))


def minmax(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Scale to [0, 1] (a constant maps to 0)."""
    low, high = values.min(axis=axis, keepdims=True), values.max(axis=axis, keepdims=True)
    return (values - low) / np.where(high > low, high - low, 1)


def border_mask(gh: int, gw: int) -> np.ndarray:
    mask = np.ones((gh, gw), dtype=bool)
    mask[1:-1, 1:-1] = False
    return mask


def orient_foreground_high(first: np.ndarray, border: np.ndarray, threshold: float) -> np.ndarray:
    """Flip the [0, 1] first component if needed so the border patches (else: the majority) score low."""
    if border.all():  # no interior patch: the foreground is the smaller side
        return 1 - first if (first > threshold).mean() > 0.5 else first
    return 1 - first if first[border].mean() > first[~border].mean() else first


def pca_maps(features: list[np.ndarray], threshold: float = DEFAULT_THRESHOLD) -> PCAMaps:
    """Foreground masks and RGB maps for a set of (gh, gw, D) patch-feature grids (sizes may differ)."""
    if not 0 < threshold < 1:
        raise ValueError(f"foreground threshold must be in (0, 1), got {threshold}")
    shapes = [f.shape[:2] for f in features]
    flat = np.concatenate([f.reshape(-1, f.shape[-1]) for f in features])
    border = np.concatenate([border_mask(*s).ravel() for s in shapes])
    first = orient_foreground_high(minmax(principal_components(flat, 1)[:, 0]), border, threshold)
    foreground = first > threshold
    rgb = np.zeros((len(flat), 3))
    if foreground.sum() > 1:
        rgb[foreground] = minmax(principal_components(flat[foreground], 3), axis=0)
    split = np.cumsum([h * w for h, w in shapes])[:-1]
    return PCAMaps(
        first=[a.reshape(s) for a, s in zip(np.split(first, split), shapes, strict=True)],
        foreground=[a.reshape(s) for a, s in zip(np.split(foreground, split), shapes, strict=True)],
        rgb=[a.reshape(*s, 3) for a, s in zip(np.split(rgb, split), shapes, strict=True)],
    )


def save_pca_figure(path: str | Path, image: np.ndarray, maps: PCAMaps, index: int, patch_size: int) -> Path:
    """One image: the image, its foreground mask, its PCA colours."""
    fig, axes = new_figure(1, 3)
    show_image(axes[0, 0], image, "image")
    show_mask_overlay(axes[0, 1], image, upsample(maps.foreground[index], patch_size), "foreground (1st PC)")
    axes[0, 2].imshow(maps.rgb[index], interpolation="nearest")
    axes[0, 2].set_title("PCA of foreground", fontsize=9)
    axes[0, 2].set_axis_off()
    fig.savefig(path, dpi=100)
    return Path(path)


def save_pca_grid(
    path: str | Path, images: list[np.ndarray], maps: PCAMaps, titles: list[str], columns: int = 8
) -> Path:
    """All images: each image (titled) above its PCA colours, `columns` images per row pair."""
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    fig, axes = new_figure(2 * rows, columns, panel_inches=1.5)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, (image, title) in enumerate(zip(images, titles, strict=True)):
        row, col = divmod(i, columns)
        show_image(axes[2 * row, col], image, title)
        axes[2 * row + 1, col].imshow(maps.rgb[i], interpolation="nearest")
    fig.savefig(path, dpi=100)
    return Path(path)


def write_pca_figures(
    model: VizModel, paths: list[Path], out_dir: str | Path, size: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[Path]:
    """PCA fitted over all the images: OUT_DIR/<image stem>_pca.png for each, then OUT_DIR/pca_grid.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = read_images(paths, model, size)
    maps = pca_maps([image_features(model.backbone, model.to_tensor([image]))[1][0] for image in images], threshold)
    stems = output_stems(paths)
    written = [
        save_pca_figure(out_dir / f"{stem}_pca.png", image, maps, i, model.patch_size)
        for i, (image, stem) in enumerate(zip(images, stems, strict=True))
    ]
    return [*written, save_pca_grid(out_dir / "pca_grid.png", images, maps, stems)]
