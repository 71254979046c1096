"""On-disk cache of extracted features: memory-mapped .npy files under `cache_dir/<key>/`.

The key is a hash of everything the features depend on: the model's weights (their bytes, so a retrained
checkpoint at the same path misses the cache), the dataset's contents (file names, sizes and modification
times of an image folder; the pixels of Fashion-MNIST), normalization, number of blocks, test-time
preprocessing and precision. A cache entry is written into a temporary folder and renamed into place, so a
crash never leaves a half-written entry that a later run would read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dinolab.data.datasets import FashionMNIST, ImageFolder
from dinolab.eval.tokens import Preprocess, TokenFeatures
from dinolab.io import atomic_directory

FIELDS = ("cls", "avgpool", "labels")


def _hash_tensor(h: hashlib._Hash, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256(repr(model).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, t)
    return h.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> str:
    h = hashlib.sha256(type(dataset).__name__.encode())
    if isinstance(dataset, FashionMNIST):
        _hash_tensor(h, dataset.images)
        _hash_tensor(h, dataset.labels)
    elif isinstance(dataset, ImageFolder):
        h.update(repr((str(dataset.root.resolve()), dataset.size, dataset.resize_size, dataset.channels,
                       dataset.classes)).encode())
        for path in dataset.files:
            stat = path.stat()
            h.update(f"{path.relative_to(dataset.root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        raise ValueError(
            f"the feature cache cannot identify a {type(dataset).__name__} dataset (only FashionMNIST and "
            "ImageFolder): evaluate without a cache directory"
        )
    return h.hexdigest()


def feature_key(
    model: nn.Module,
    dataset: Dataset,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    n_blocks: int,
    preprocess: Preprocess,
    precision: str,
) -> str:
    settings = repr((tuple(mean), tuple(std), n_blocks, preprocess, precision))
    parts = (model_fingerprint(model), dataset_fingerprint(dataset), settings)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def load(cache_dir: str | Path, key: str) -> TokenFeatures | None:
    """The cached features, memory-mapped copy-on-write (read lazily, never written back), or None."""
    folder = Path(cache_dir) / key
    if not all((folder / f"{name}.npy").is_file() for name in FIELDS):
        return None
    arrays = {name: torch.from_numpy(np.load(folder / f"{name}.npy", mmap_mode="c")) for name in FIELDS}
    return TokenFeatures(**arrays)


def save(cache_dir: str | Path, key: str, features: TokenFeatures) -> Path:
    """Write the entry whole or not at all (dinolab.io.atomic_directory); a concurrent writer's copy wins."""
    folder = Path(cache_dir) / key
    with atomic_directory(folder) as tmp:
        for name in FIELDS:
            np.save(tmp / f"{name}.npy", getattr(features, name).numpy())
    return folder
