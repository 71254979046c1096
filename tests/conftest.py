"""Shared fixtures: tiny generated data sets (IDX files, image folders) and a tiny training config.

Nothing here downloads anything or reads the system's Fashion-MNIST: every file is written into a
pytest temporary directory.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab import config as config_lib
from dinolab.config import Config
from dinolab.eval.retrieval import faiss_available
from dinolab.models.vit import VisionTransformer

# One intra-op thread: the models are tiny, and on a shared 2-core box two OpenMP threads per process
# oversubscribe the CPU and run ~10x slower than one.
torch.set_num_threads(1)

# Kept deliberately small: every test suite run has to stay in the ~minute range on 2 CPU cores.
N_TRAIN = 32
N_TEST = 32
N_CLASSES = 4

# The faiss paths are tested where the optional extra is installed (CI installs it) and skipped elsewhere.
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed (pip install 'dinolab[faiss]')")


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file (the MNIST format): 0, 0, 0x08, ndim, big-endian dims, then the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write `array` as IDX; gzip-compressed when the name ends in .gz."""
    path = Path(path)
    data = idx_bytes(array)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_fmnist_images(n: int, seed: int, num_classes: int = N_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """n random 28x28 uint8 images with a class-dependent bright square, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for img, y in zip(images, labels, strict=True):
        r, c = divmod(int(y), 2)
        img[2 + 12 * r : 12 + 12 * r, 2 + 12 * c : 12 + 12 * c] = 220
    return images, labels


def write_fmnist(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, gz: bool = True) -> Path:
    """A Fashion-MNIST-shaped folder: train-/t10k- images and labels as IDX (gzipped or raw)."""
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_fmnist_images(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return root


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 train + 32 test random images in gzipped IDX files (session-wide, read-only by convention)."""
    return write_fmnist(tmp_path_factory.mktemp("fmnist"))


def save_image(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def random_rgb(rng: np.random.Generator, h: int = 40, w: int = 36) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_class_folder(root: Path, classes: dict[str, int], seed: int = 0, size: int = 32) -> Path:
    """root/<class>/<i>.png, `classes` maps class name -> number of images; each class has its own color."""
    rng = np.random.default_rng(seed)
    palette = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230)]
    for ci, (name, count) in enumerate(sorted(classes.items())):
        for i in range(count):
            base = np.array(palette[ci % len(palette)], dtype=np.int16)
            noise = rng.integers(-20, 20, size=(size, size, 3))
            img = np.clip(base + noise, 0, 255).astype(np.uint8)
            save_image(root / name / f"{i}.png", img)
    return root


TINY_OVERRIDES: dict[str, dict] = {
    "model": {
        "arch": "vit_tiny", "depth": 1, "patch_size": 7, "in_chans": 1, "img_size": 28, "drop_path_rate": 0.1,
    },
    "head": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "nlayers": 3, "norm_last_layer": True},
    "data": {
        "dataset": "fmnist", "global_crops_size": 28, "global_crops_scale": [0.4, 1.0], "local_crops_number": 2,
        "local_crops_size": 14, "local_crops_scale": [0.1, 0.4], "blur_sigma": [0.1, 1.0], "mean": [0.3],
        "std": [0.35], "num_workers": 0,
    },
    "loss": {"student_temp": 0.1, "teacher_temp": 0.05, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 1},
    "optim": {
        "epochs": 2, "batch_size": 8, "lr": 0.005, "min_lr": 1e-5, "warmup_epochs": 0.5, "weight_decay": 0.04,
        "weight_decay_end": 0.1, "clip_grad": 3.0, "freeze_last_layer_epochs": 0.5, "momentum_teacher": 0.9,
    },
    "train": {"seed": 0, "device": "cpu", "precision": "fp32", "log_every": 1, "keep_last": 2},
    "eval": {"knn_k": [3, 5], "batch_size": 32},
}


def tiny_config(data_path: Path, output_dir: Path, **sections: dict) -> Config:
    """A validated tiny config (ViT-Tiny with 2 blocks on 28x28, 64 prototypes) for `data_path`.

    Keyword arguments are per-section dicts merged over the defaults, e.g. optim={"epochs": 1}.
    """
    raw = {k: dict(v) for k, v in TINY_OVERRIDES.items()}
    raw["data"]["path"] = str(data_path)
    raw["train"]["output_dir"] = str(output_dir)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_lib.from_dict(raw)


@pytest.fixture
def make_config(fmnist_dir: Path, tmp_path: Path):
    """Factory: make_config(name, **sections) -> tiny Config writing into tmp_path/name."""

    def make(name: str = "run", **sections: dict) -> Config:
        return tiny_config(fmnist_dir, tmp_path / name, **sections)

    return make


@pytest.fixture(scope="session")
def trained_run(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding a 1-epoch tiny training run (shared by checkpoint, eval and CLI tests)."""
    from dinolab.train import fit

    cfg = tiny_config(fmnist_dir, tmp_path_factory.mktemp("trained") / "run", optim={"epochs": 1})
    fit(cfg, quiet=True)
    return Path(cfg.train.output_dir)


def small_vit(**kwargs) -> VisionTransformer:
    """A very small ViT: 32-dim, 2 blocks, 2 heads, 28x28 grayscale in 7x7 patches."""
    defaults = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=2)
    return VisionTransformer(**{**defaults, **kwargs})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
