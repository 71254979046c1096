"""[CLS] self-attention of the last block, per head, and the DINO paper's attention-mass masks.

The map of a head is the attention of [CLS] on the patch tokens (register tokens dropped), renormalized
to sum to 1 over the patches. Maps live on the patch grid; `upsample` repeats each value over its
patch's pixels (nearest neighbour), as in the DINO paper's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dinolab.models.vit import VisionTransformer
from dinolab.viz.figures import new_figure, show_image, show_mask_overlay
from dinolab.viz.inputs import VizModel, output_stems, read_images

DEFAULT_MASS = 0.6


@dataclass(frozen=True)
class AttentionMaps:
    """One image's maps on the patch grid: float (heads, gh, gw) and (gh, gw); masks are bool, same shapes."""

    heads: np.ndarray
    mean: np.ndarray
    head_masks: np.ndarray
    mean_mask: np.ndarray


@torch.inference_mode()
def cls_attention(backbone: VisionTransformer, x: Tensor) -> np.ndarray:
    """(B, heads, gh, gw) float32: last-block attention of [CLS] on each patch, summing to 1 per head."""
    attn = backbone.get_last_selfattention(x)[:, :, 0, 1 + backbone.num_register_tokens :].float()
    attn = attn / attn.sum(dim=-1, keepdim=True)
    gh, gw = x.shape[-2] // backbone.patch_size, x.shape[-1] // backbone.patch_size
    return attn.reshape(x.shape[0], -1, gh, gw).numpy()


def mass_mask(attention: np.ndarray, fraction: float = DEFAULT_MASS) -> np.ndarray:
    """Keep the fewest highest-attention patches that hold at least `fraction` of the attention mass.

    Works on the last two axes (one map per leading index). This is the DINO paper's thresholding
    (its `--threshold 0.6`): sort the patches by attention and keep them until the kept mass reaches
    `fraction`; the patch that crosses the line is kept. Ties are broken by position (row-major).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"mass fraction must be in (0, 1], got {fraction}")
    flat = attention.reshape(*attention.shape[:-2], -1).astype(np.float64)
    flat = flat / flat.sum(axis=-1, keepdims=True)
    order = np.argsort(-flat, axis=-1, kind="stable")
    ranked = np.take_along_axis(flat, order, axis=-1)
    mass_before = np.cumsum(ranked, axis=-1) - ranked  # the mass of every higher-ranked patch
    keep = np.empty(order.shape, dtype=bool)
    np.put_along_axis(keep, order, mass_before < fraction, axis=-1)
    return keep.reshape(attention.shape)


def attention_maps(backbone: VisionTransformer, x: Tensor, fraction: float = DEFAULT_MASS) -> list[AttentionMaps]:
    """Per-head and head-mean [CLS] attention with their `fraction`-mass masks, for each image of a batch."""
    heads = cls_attention(backbone, x)
    mean = heads.mean(axis=1)
    head_masks, mean_masks = mass_mask(heads, fraction), mass_mask(mean, fraction)
    return [AttentionMaps(heads[i], mean[i], head_masks[i], mean_masks[i]) for i in range(len(heads))]


def upsample(grid: np.ndarray, patch_size: int) -> np.ndarray:
    """Repeat every patch-grid value over its patch_size x patch_size pixels (last two axes)."""
    return grid.repeat(patch_size, axis=-2).repeat(patch_size, axis=-1)


def save_attention_figure(
    path: str | Path, image: np.ndarray, maps: AttentionMaps, patch_size: int, fraction: float = DEFAULT_MASS
) -> Path:
    """Top row: the image, each head's map, the head mean. Bottom row: the `fraction`-mass masks over the image."""
    num_heads = len(maps.heads)
    fig, axes = new_figure(2, num_heads + 2)
    show_image(axes[0, 0], image, "image")
    axes[1, 0].set_axis_off()
    titles = [f"head {h}" for h in range(num_heads)] + ["mean"]
    for col, (title, grid, mask) in enumerate(
        zip(titles, [*maps.heads, maps.mean], [*maps.head_masks, maps.mean_mask], strict=True), start=1
    ):
        axes[0, col].imshow(grid, cmap="inferno", interpolation="nearest")
        axes[0, col].set_title(title, fontsize=9)
        axes[0, col].set_axis_off()
        show_mask_overlay(axes[1, col], image, upsample(mask, patch_size), f"{title}: {fraction:.0%} mass")
    fig.savefig(path, dpi=100)
    return Path(path)


def write_attention_figures(
    model: VizModel, paths: list[Path], out_dir: str | Path, size: int | None = None, fraction: float = DEFAULT_MASS
) -> list[Path]:
    """OUT_DIR/<image stem>_attention.png for each image (see save_attention_figure)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image, stem in zip(read_images(paths, model, size), output_stems(paths), strict=True):
        maps = attention_maps(model.backbone, model.to_tensor([image]), fraction)[0]
        path = out_dir / f"{stem}_attention.png"
        written.append(save_attention_figure(path, image, maps, model.patch_size, fraction))
    return written
