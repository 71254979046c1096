"""Datasets that yield uint8 image tensors (C, H, W) of one size and an integer label (-1 = none).

All augmentation happens later on whole batches (see transforms.py), so datasets only decode.
An image that cannot be decoded yields None; `collate_images` drops it and counts it.
"""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from dinolab.distributed import computed_on_main

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or .gz), the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = int(np.prod(shape))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes) but the file holds {body.size}")
    return body.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}; install Debian's dataset-fashion-mnist "
        f"(apt-get install dataset-fashion-mnist) or set data.path to the folder holding the IDX files"
    )


class FashionMNIST(Dataset):
    """Fashion-MNIST from its IDX files, held in memory as a (N, 1, 28, 28) uint8 tensor."""

    def __init__(self, root: str | Path | None = None, split: str = "train"):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        root = Path(root) if root else FMNIST_DIR
        prefix = "train" if split == "train" else "t10k"
        images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classes = FMNIST_CLASSES

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


class ImageFiles(Dataset):
    """Given image files, each resized (shorter side to `resize_size`) and center-cropped to `size` x `size`.

    Files that fail to decode are skipped at load time (None) and counted by `collate_images`. `labels`:
    one class index per file, or -1 for all when None. `ImageFolder` and `ImageList` say which files.
    """

    def __init__(
        self,
        files: list[Path],
        size: int,
        resize_size: int | None = None,
        channels: int = 3,
        labels: Tensor | None = None,
        classes: tuple[str, ...] = (),
    ):
        self.files, self.size, self.resize_size, self.channels = files, size, resize_size or size, channels
        self.labels = torch.full((len(files),), -1) if labels is None else labels
        self.classes = classes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        try:
            with Image.open(self.files[i]) as img:
                img.draft("RGB" if self.channels == 3 else "L", (self.resize_size, self.resize_size))
                x = TF.pil_to_tensor(img.convert("L" if self.channels == 1 else "RGB"))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            log.debug("skipping unreadable image %s: %s", self.files[i], err)
            return None
        x = TF.resize(x, self.resize_size, antialias=True)
        x = TF.center_crop(x, [self.size, self.size])
        return x, int(self.labels[i])


class ImageFolder(ImageFiles):
    """Images under a folder, nested to any depth; the first-level subfolder is the class label.

    Images directly in `root` get label -1. Files with other extensions are ignored. Pass the training
    split's `classes` when building a test split so both number the classes alike.
    """

    def __init__(
        self,
        root: str | Path,
        size: int,
        resize_size: int | None = None,
        channels: int = 3,
        classes: tuple[str, ...] | None = None,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
        self.root = root
        # listed once, by rank 0, and shared: every process of a run sees the same files in the same order
        files = computed_on_main(
            lambda: sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        )
        if not files:
            raise ValueError(f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        parts = [p.relative_to(root).parts for p in files]
        found = sorted({rel[0] for rel in parts if len(rel) > 1})
        if classes is not None:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise ValueError(f"{root} has class folders {unknown} that are not among the known classes {classes}")
        classes = tuple(found) if classes is None else tuple(classes)
        index = {name: i for i, name in enumerate(classes)}
        labels = torch.tensor([index[rel[0]] if len(rel) > 1 else -1 for rel in parts])
        super().__init__(files, size, resize_size, channels, labels, classes)


MISSING_SHOWN = 3  # missing files named in ImageList's error


def read_file_list(list_file: str | Path) -> list[Path]:
    """The image paths a file list names: one per line (blank lines ignored), relative ones taken from the
    list's folder, so a list and its images can move together. Every file must exist: a list is a choice of
    images, and silently training on fewer of them than chosen would hide a stale list."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"file list {list_file} does not exist (write one with dinolab curate --out)")
    files = [list_file.parent / line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not files:
        raise ValueError(f"file list {list_file} names no images: it is empty")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(files)} files listed in {list_file} do not exist, e.g. "
            f"{', '.join(missing[:MISSING_SHOWN])}: were the images moved? (relative paths are read from the "
            f"list's folder {list_file.parent})")
    return files


class ImageList(ImageFiles):
    """The images a file list names (`read_file_list`; `dinolab curate --out` writes one), label -1 each."""

    def __init__(self, list_file: str | Path, size: int, resize_size: int | None = None, channels: int = 3):
        self.list_file = Path(list_file)
        # read by every process: the list is fixed, and an error in it then stops every rank, not only rank 0
        super().__init__(read_file_list(list_file), size, resize_size, channels)


def collate_images(samples: list[tuple[Tensor, int] | None]) -> tuple[Tensor, Tensor, int]:
    """Stack the readable samples; return (images uint8, labels, number skipped as unreadable)."""
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([s[0] for s in good])
    labels = torch.tensor([s[1] for s in good], dtype=torch.long)
    return images, labels, skipped


def has_labels(dataset: Dataset) -> bool:
    labels = getattr(dataset, "labels", None)
    return labels is not None and bool((labels >= 0).all())
