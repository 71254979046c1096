"""Recipe values measured from the images themselves, for `data.auto` (the `small_images` preset).

ImageNet's mean/std and 224 px crops are wrong for a folder of 28 px grayscale scans: the input is then
neither zero-centered nor unit-scaled, and the patch grid is whatever 224/16 leaves. Here a seeded sample
of the folder gives the channel count, the per-channel mean/std and the typical image size, and the patch
and crop sizes follow from that size by one rule (below), so every small data set gets the same recipe.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dinolab import config as config_lib
from dinolab.config import Config
from dinolab.data.datasets import IMAGE_EXTENSIONS, read_file_list
from dinolab.progress import write

SAMPLE_SIZE = 1000  # images measured; the mean/std of 1000 images is within ~1% of the full set's
GRAYSCALE_TOLERANCE = 2  # an RGB file whose channels differ by at most this (of 255) everywhere is grayscale
# The patch grid a global crop is cut into: 4x4, the demo's (ViT/7 on 28 px), the grid the small-data study
# measured (docs/small_data.md; a 7x7 grid was not measured). Local crops: half the grid on a side.
TARGET_GRID = 4
LARGE_IMAGE = 160  # from this short side on, images are not small: the paper's 224 px crops, patch 16


@dataclass(frozen=True)
class ImageStats:
    """What a sample of a folder's images says about them."""

    measured: int  # images read (unreadable ones are skipped)
    total: int  # images in the folder
    channels: int  # 1 when every sampled image is grayscale, else 3
    size: int  # median shorter side, in pixels
    mean: tuple[float, ...]  # per channel, pixel values scaled to [0, 1]
    std: tuple[float, ...]


def image_files(root: str | Path) -> list[Path]:
    """Every image under `root`, at any depth, in a fixed order (the files `ImageFolder` reads)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def measure_images(root: str | Path | list[Path], sample: int = SAMPLE_SIZE, seed: int = 0) -> ImageStats:
    """Channels, median shorter side and per-channel mean/std (at native resolution) of a seeded sample of the
    images under a folder, or of given image files (a file list's)."""
    files = root if isinstance(root, list) else image_files(root)
    where = f"the {len(files)} listed images" if isinstance(root, list) else f"the images under {root}"
    chosen = random.Random(seed).sample(files, min(sample, len(files)))
    arrays, sizes, gray = [], [], True
    for path in chosen:
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            continue
        sizes.append(min(rgb.shape[:2]))
        gray = gray and float(np.ptp(rgb, axis=2).max()) <= GRAYSCALE_TOLERANCE / 255
        arrays.append(rgb.reshape(-1, 3))
    if not arrays:
        raise ValueError(f"none of {len(chosen)} sampled images of {where} could be read")
    pixels = np.concatenate(arrays)
    if gray:
        pixels = pixels[:, :1]
    mean, std = pixels.mean(0), pixels.std(0)
    return ImageStats(
        measured=len(arrays), total=len(files), channels=1 if gray else 3, size=int(np.median(sizes)),
        mean=tuple(round(float(m), 4) for m in mean), std=tuple(round(max(float(s), 1e-3), 4) for s in std),
    )


def crop_sizes(size: int) -> tuple[int, int, int]:
    """(patch, global crop, local crop) for images whose shorter side is `size`: the global crop is the image
    (cut to a whole number of patches) on a TARGET_GRID x TARGET_GRID grid; large images get the paper's."""
    if size >= LARGE_IMAGE:
        return 16, 224, 96
    patch = max(size // TARGET_GRID, 1)
    grid = size // patch
    return patch, grid * patch, max(grid // 2, 1) * patch


def resolve_from_images(cfg: Config, quiet: bool = False) -> Config:
    """`cfg` with channels, normalization, patch and crop sizes measured from the training images (data.file_list
    or data.path) when `data.auto` is on (printed unless `quiet`); `cfg` itself otherwise. The result has
    `data.auto` off, so the run's saved config holds the values used and evaluation normalizes as training did."""
    if not cfg.data.auto:
        return cfg
    if not (cfg.data.file_list or cfg.data.path):
        raise ValueError("data.auto measures the images under data.path, which is empty: set data.path=/my/images "
                         "(or data.file_list=curated.txt)")
    source = read_file_list(cfg.data.file_list) if cfg.data.file_list else cfg.data.path
    stats = measure_images(source, seed=cfg.train.seed)
    patch, global_size, local_size = crop_sizes(stats.size)
    model = dataclasses.replace(cfg.model, in_chans=stats.channels, patch_size=patch, img_size=global_size)
    data = dataclasses.replace(cfg.data, auto=False, mean=stats.mean, std=stats.std, global_crops_size=global_size,
                               local_crops_size=local_size, canvas_size=0)
    resolved = dataclasses.replace(cfg, model=model, data=data)
    config_lib.validate(resolved)
    if not quiet:
        write(describe_choice(stats, resolved))
    return resolved


def describe_choice(stats: ImageStats, cfg: Config) -> str:
    """What data.auto measured and chose, as the overrides that pin the same values."""
    kind = "grayscale" if stats.channels == 1 else "RGB"
    values = ", ".join(f"{v:g}" for v in cfg.data.mean), ", ".join(f"{v:g}" for v in cfg.data.std)
    chosen = (
        f"model.in_chans={cfg.model.in_chans} model.patch_size={cfg.model.patch_size} "
        f"model.img_size={cfg.model.img_size} data.global_crops_size={cfg.data.global_crops_size} "
        f"data.local_crops_size={cfg.data.local_crops_size} data.mean=[{values[0]}] data.std=[{values[1]}]"
    )
    return (
        f"data.auto: measured {stats.measured} of the {stats.total} images in {cfg.data.file_list or cfg.data.path}: "
        f"{kind}, median shorter side {stats.size} px. Chose (pin them with data.auto=false and these "
        f"overrides):\n  {chosen}"
    )
