"""The in-training k-NN check scores a slice spread over each split, not its first images: a folder dataset
lists its images class by class, so its first images would be one or two classes only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinolab.device import Runtime
from dinolab.train.monitor import KNNMonitor, spread_indices

CPU = Runtime(torch.device("cpu"), "fp32")


def test_spread_indices_are_even_distinct_and_in_range() -> None:
    assert spread_indices(4, 20) == [0, 5, 10, 15]
    assert spread_indices(30, 20) == list(range(20))
    picked = spread_indices(2000, 5000)
    assert len(set(picked)) == 2000 and max(picked) < 5000


def write_class_folders(root: Path, classes: int, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / f"class_{c}" / f"{i:03d}.png")
    return root


def test_knn_monitor_slice_of_a_class_folder_covers_every_class(make_config, tmp_path: Path) -> None:
    write_class_folders(tmp_path / "train", classes=5, per_class=12)
    write_class_folders(tmp_path / "test", classes=5, per_class=4)
    cfg = make_config("knn", data={"dataset": "folder", "path": str(tmp_path / "train")},
                      eval={"knn_every": 1, "knn_monitor_train": 20, "knn_monitor_test": 10,
                            "test_path": str(tmp_path / "test")})
    monitor = KNNMonitor(cfg, CPU)
    train_labels = {int(monitor.train[i][1]) for i in range(len(monitor.train))}
    test_labels = {int(monitor.test[i][1]) for i in range(len(monitor.test))}
    assert len(monitor.train) == 20 and len(monitor.test) == 10
    assert train_labels == test_labels == set(range(5))  # the first 20 / 10 images would be 2 / 3 classes
