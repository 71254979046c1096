"""What every visualization starts from: a backbone with its input normalization, and images read from disk.

Images keep their own size unless `size` is given; either way they are center-cropped to a multiple of the
patch size (a ViT sees whole patches only), so a 30x45 image with 7-pixel patches becomes 28x42.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from dinolab.data.datasets import IMAGE_EXTENSIONS
from dinolab.data.transforms import normalize_uint8
from dinolab.hub import load_model
from dinolab.models.vit import VisionTransformer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VizModel:
    """A backbone in eval mode and the per-channel mean/std its inputs were normalized with in training."""

    backbone: VisionTransformer
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def channels(self) -> int:
        return self.backbone.in_chans

    @property
    def native_size(self) -> int:
        """The image side the position embeddings were learned for."""
        grid = int(round((self.backbone.pos_embed.shape[1] - 1) ** 0.5))
        return grid * self.patch_size

    def to_tensor(self, images: list[np.ndarray]) -> Tensor:
        """Same-size uint8 (H, W, C) images -> a normalized float (B, C, H, W) batch."""
        return normalize_uint8(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), self.mean, self.std)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path) -> VizModel:
        """The one place visualizations load weights: anything `dinolab.hub.load_model` reads (a dinolab
        checkpoint or run dir -> its EMA teacher, or released DINO / iBOT / DINOv2 weights)."""
        loaded = load_model(checkpoint)
        if not isinstance(loaded.backbone, VisionTransformer):
            raise ValueError(f"{checkpoint} holds a {type(loaded.backbone).__name__}: attention maps, PCA maps and "
                             "the explorer need a ViT's patch tokens; evaluate it with dinolab eval or dinolab embed")
        return cls(loaded.backbone, tuple(loaded.config.data.mean), tuple(loaded.config.data.std))


def read_image(path: str | Path, channels: int, patch_size: int, size: int | None = None) -> np.ndarray:
    """An image file as uint8 (H, W, channels), center-cropped to a multiple of `patch_size`.

    With `size`, the shorter side is first resized to `size` and the image center-cropped to a square.
    A grayscale image for an RGB model (or the reverse) is converted, with a note in the log.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable image file ({err}); give PNG, JPEG, WebP, ... files") from err
    wanted = "L" if channels == 1 else "RGB"
    if img.mode != wanted:
        if (img.mode in ("L", "LA", "I", "I;16", "1")) != (channels == 1):
            log.info("%s: %s image converted to %s for a %d-channel model", path, img.mode, wanted, channels)
        img = img.convert(wanted)
    if size is not None:
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
        img = _center_crop(img, size, size)
    h, w = (img.height // patch_size) * patch_size, (img.width // patch_size) * patch_size
    if h == 0 or w == 0:
        raise ValueError(
            f"{path}: {img.width}x{img.height} pixels is smaller than one {patch_size}x{patch_size} patch; "
            f"give a larger image (or --image-size)"
        )
    array = np.asarray(_center_crop(img, w, h))
    return array.reshape(h, w, channels)


def read_images(paths: list[Path], model: VizModel, size: int | None = None) -> list[np.ndarray]:
    if not paths:
        raise ValueError("no images given")
    return [read_image(p, model.channels, model.patch_size, size) for p in paths]


def expand_image_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; a folder stands for the image files under it (any depth, sorted, by extension)."""
    expanded = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise ValueError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
            expanded += found
        elif path.is_file():
            expanded.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return expanded


def output_stems(paths: list[Path]) -> list[str]:
    """File stems to name outputs by, made unique with a numeric suffix where two images share one."""
    counts: dict[str, int] = {}
    stems = []
    for path in paths:
        seen = counts.get(path.stem, 0)
        counts[path.stem] = seen + 1
        stems.append(path.stem if seen == 0 else f"{path.stem}-{seen}")
    return stems


def _center_crop(img: Image.Image, w: int, h: int) -> Image.Image:
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))
