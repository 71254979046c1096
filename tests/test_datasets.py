"""Datasets: IDX reading, Fashion-MNIST from generated files, image folders (labels, skipping, errors),
and the seeded multi-crop batches."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import N_TEST, N_TRAIN, idx_bytes, make_fmnist_images, random_rgb, save_image, write_fmnist, write_idx

from dinolab import config as config_lib
from dinolab.data import (
    FashionMNIST,
    ImageFolder,
    MultiCropBatches,
    build_augmentation,
    build_dataset,
    collate_images,
    multicrop_loader,
    read_idx,
)
from dinolab.data.datasets import has_labels
from dinolab.data.loader import batches_per_epoch
from dinolab.data.transforms import CropSpec, MultiCropAugmentation

# ---------------------------------------------------------------- IDX / Fashion-MNIST


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_raw_and_gzip(tmp_path: Path, name: str) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / name, array)
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzipped
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (5, 28, 28)
    assert np.array_equal(out, array)


def test_read_idx_one_dimensional(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "labels", labels)), labels)


@pytest.mark.parametrize("header", [b"\x00\x00\x09\x01", b"\x01\x00\x08\x01", b"\x00\x00\x0d\x01", b"\x00"])
def test_read_idx_bad_magic_number(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "bad"
    path.write_bytes(header + b"\x00\x00\x00\x02\x01\x02")
    with pytest.raises(ValueError, match="magic number"):
        read_idx(path)


def test_read_idx_bad_magic_number_gz(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x0b\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="magic number"):
        read_idx(path)


def test_read_idx_size_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(np.zeros((4, 2, 2), dtype=np.uint8))[:-3])
    with pytest.raises(ValueError, match="header says"):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "cut"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 5]))  # 3 dims announced, 1 present
    with pytest.raises(ValueError):
        read_idx(path)


@pytest.mark.parametrize(("split", "n", "seed"), [("train", N_TRAIN, 0), ("test", N_TEST, 1)])
def test_fashion_mnist_from_generated_files(fmnist_dir: Path, split: str, n: int, seed: int) -> None:
    ds = FashionMNIST(fmnist_dir, split)
    images, labels = make_fmnist_images(n, seed)
    assert len(ds) == n
    assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.uint8
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(x[0], torch.from_numpy(images[3]))
    assert isinstance(y, int) and y == int(labels[3])
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    assert len(ds.classes) == 10
    assert has_labels(ds)


def test_fashion_mnist_raw_files(tmp_path: Path) -> None:
    root = write_fmnist(tmp_path / "raw", n_train=8, n_test=4, gz=False)
    assert len(FashionMNIST(root, "train")) == 8
    assert len(FashionMNIST(str(root), "test")) == 4


def test_fashion_mnist_errors(tmp_path: Path, fmnist_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.path"):
        FashionMNIST(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        FashionMNIST(fmnist_dir, "val")
    bad = write_fmnist(tmp_path / "bad", n_train=8, n_test=4)
    write_idx(bad / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(ValueError, match="8 images but 7 labels"):
        FashionMNIST(bad, "train")


# ---------------------------------------------------------------- image folders


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    save_image(root / "cat" / "a.png", random_rgb(rng))
    save_image(root / "cat" / "sub" / "deeper" / "b.jpg", random_rgb(rng))
    save_image(root / "dog" / "c.webp", random_rgb(rng), fmt="WEBP")
    save_image(root / "dog" / "D.JPEG", random_rgb(rng))  # upper-case extension
    save_image(root / "loose.png", random_rgb(rng))
    save_image(root / "gray.png", rng.integers(0, 256, size=(30, 50), dtype=np.uint8))  # mode L
    (root / "notes.txt").write_text("not an image")
    (root / "dog" / "readme.md").write_text("# dogs")
    (root / "empty_class").mkdir()
    return root


def test_image_folder_labels_from_first_level_subfolder(mixed_folder: Path) -> None:
    ds = ImageFolder(mixed_folder, size=16)
    names = {p.relative_to(mixed_folder).as_posix(): int(y) for p, y in zip(ds.files, ds.labels, strict=True)}
    assert names == {
        "cat/a.png": 0,
        "cat/sub/deeper/b.jpg": 0,
        "dog/c.webp": 1,
        "dog/D.JPEG": 1,
        "loose.png": -1,
        "gray.png": -1,
    }
    assert ds.classes == ("cat", "dog")
    assert not has_labels(ds)  # some images have no class
    assert len(ds) == 6


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_items(mixed_folder: Path, channels: int) -> None:
    ds = ImageFolder(mixed_folder, size=16, resize_size=18, channels=channels)
    for i in range(len(ds)):
        item = ds[i]
        assert item is not None
        x, y = item
        assert x.shape == (channels, 16, 16) and x.dtype == torch.uint8
        assert y == int(ds.labels[i])


def test_image_folder_resizes_short_side_and_center_crops(tmp_path: Path) -> None:
    img = np.zeros((30, 90, 3), dtype=np.uint8)
    img[:, :30] = (255, 0, 0)
    img[:, 30:60] = (0, 255, 0)
    img[:, 60:] = (0, 0, 255)
    save_image(tmp_path / "wide" / "x.png", img)
    x, label = ImageFolder(tmp_path / "wide", size=10, resize_size=20)[0]
    assert label == -1
    # 30x90 -> 20x60, center 10x10 lies inside the green third
    assert torch.equal(x, torch.tensor([0, 255, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 10, 10))


def test_corrupt_images_yield_none_and_are_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    save_image(root / "good" / "ok.png", random_rgb(rng))
    save_image(root / "good" / "ok2.jpg", random_rgb(rng, 64, 64))
    bad = root / "good" / "bad.jpg"
    bad.write_bytes(rng.integers(0, 256, size=500, dtype=np.uint8).tobytes())
    truncated = root / "good" / "truncated.jpg"
    truncated.write_bytes((root / "good" / "ok2.jpg").read_bytes()[:300])
    ds = ImageFolder(root, size=16)
    assert len(ds) == 4
    items = [ds[i] for i in range(len(ds))]
    by_name = {p.name: item for p, item in zip(ds.files, items, strict=True)}
    assert by_name["bad.jpg"] is None
    assert by_name["truncated.jpg"] is None
    assert by_name["ok.png"] is not None and by_name["ok2.jpg"] is not None

    images, labels, skipped = collate_images(items)
    assert skipped == 2
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0]


def test_collate_all_unreadable() -> None:
    images, labels, skipped = collate_images([None, None, None])
    assert skipped == 3 and len(images) == 0 and len(labels) == 0


def test_collate_stacks_in_order() -> None:
    a, b = torch.zeros(1, 2, 2, dtype=torch.uint8), torch.ones(1, 2, 2, dtype=torch.uint8)
    images, labels, skipped = collate_images([(a, 3), None, (b, -1)])
    assert torch.equal(images, torch.stack([a, b]))
    assert labels.tolist() == [3, -1] and labels.dtype == torch.long
    assert skipped == 1


def test_empty_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path / "empty", size=16)


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope", size=16)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "file.png", size=16)


def test_build_dataset(fmnist_dir: Path, mixed_folder: Path) -> None:
    cfg = config_lib.load("dino_vit_tiny_fmnist", [f"data.path={fmnist_dir}"])
    ds = build_dataset(cfg.data, in_chans=1)
    assert isinstance(ds, FashionMNIST) and len(ds) == N_TRAIN
    assert len(build_dataset(cfg.data, in_chans=1, split="test")) == N_TEST

    folder_cfg = config_lib.load("dino_vit_tiny_fmnist", ["data.dataset=folder", f"data.path={mixed_folder}"])
    folder = build_dataset(folder_cfg.data, in_chans=1)
    assert isinstance(folder, ImageFolder)
    assert folder.size == 28 * 8 // 7  # the canvas the crops are taken from
    assert folder[0][0].shape == (1, 32, 32)

    empty = config_lib.load("dino_vit_tiny_fmnist", ["data.dataset=folder", "data.path="])
    with pytest.raises(ValueError, match="data.path"):
        build_dataset(empty.data, in_chans=1)


# ---------------------------------------------------------------- seeded multi-crop batches


@pytest.fixture(scope="module")
def small_aug() -> MultiCropAugmentation:
    return MultiCropAugmentation(
        [CropSpec(28, (0.4, 1.0), 1.0), CropSpec(28, (0.4, 1.0), 0.1, 0.2), CropSpec(14, (0.1, 0.4), 0.5)],
        mean=(0.3,), std=(0.35,),
    )


def test_multicrop_batches_are_deterministic(fmnist_dir: Path, small_aug: MultiCropAugmentation) -> None:
    ds = FashionMNIST(fmnist_dir, "train")
    a = MultiCropBatches(ds, small_aug, batch_size=8, seed=3, epoch=1)
    b = MultiCropBatches(ds, small_aug, batch_size=8, seed=3, epoch=1)
    assert len(a) == N_TRAIN // 8 == batches_per_epoch(ds, 8)
    for i in (0, len(a) - 1):
        (crops_a, labels_a, skipped_a, _), (crops_b, labels_b, skipped_b, _) = a[i], b[i]
        assert len(crops_a) == 3
        assert [tuple(c.shape) for c in crops_a] == [(8, 1, 28, 28), (8, 1, 28, 28), (8, 1, 14, 14)]
        assert all(torch.equal(x, y) for x, y in zip(crops_a, crops_b, strict=True))
        assert torch.equal(labels_a, labels_b) and skipped_a == skipped_b == 0
    # the same batch read twice is the same too (no hidden state)
    assert all(torch.equal(x, y) for x, y in zip(a[1][0], a[1][0], strict=True))


def test_multicrop_batches_cover_the_epoch_and_change_with_epoch_and_seed(
    fmnist_dir: Path, small_aug: MultiCropAugmentation
) -> None:
    ds = FashionMNIST(fmnist_dir, "train")
    epoch0 = MultiCropBatches(ds, small_aug, 8, seed=0, epoch=0)
    assert sorted(epoch0.batches.flatten().tolist()) == list(range(N_TRAIN))  # a permutation, each image once
    labels = torch.cat([epoch0[i][1] for i in range(len(epoch0))])
    assert torch.equal(labels, ds.labels[epoch0.batches.flatten()])
    epoch1 = MultiCropBatches(ds, small_aug, 8, seed=0, epoch=1)
    other_seed = MultiCropBatches(ds, small_aug, 8, seed=1, epoch=0)
    assert not torch.equal(epoch0.batches, epoch1.batches)
    assert not torch.equal(epoch0.batches, other_seed.batches)
    assert not torch.equal(epoch0[0][0][0], epoch1[0][0][0])


def test_multicrop_batches_drop_the_last_partial_batch(fmnist_dir: Path, small_aug) -> None:
    ds = FashionMNIST(fmnist_dir, "train")
    batches = MultiCropBatches(ds, small_aug, batch_size=5, seed=0, epoch=0)
    assert len(batches) == N_TRAIN // 5
    assert batches.batches.shape == (N_TRAIN // 5, 5)


def test_multicrop_batches_start_batch(fmnist_dir: Path, small_aug: MultiCropAugmentation) -> None:
    ds = FashionMNIST(fmnist_dir, "train")
    full = MultiCropBatches(ds, small_aug, 8, seed=0, epoch=2)
    resumed = MultiCropBatches(ds, small_aug, 8, seed=0, epoch=2, start_batch=2)
    assert len(resumed) == len(full) - 2
    assert all(torch.equal(x, y) for x, y in zip(resumed[0][0], full[2][0], strict=True))


def test_multicrop_batches_with_unreadable_images(tmp_path: Path, small_aug: MultiCropAugmentation) -> None:
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(3):
        save_image(root / "a" / f"{i}.png", rng.integers(0, 256, size=(32, 32), dtype=np.uint8))
    (root / "a" / "x.jpg").write_bytes(b"garbage")
    ds = ImageFolder(root, size=32, channels=1)
    batches = MultiCropBatches(ds, small_aug, batch_size=4, seed=0, epoch=0)
    crops, labels, skipped, _ = batches[0]
    assert skipped == 1
    assert len(labels) == 3 and crops[0].shape == (3, 1, 28, 28)

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    for i in range(2):
        (only_bad / f"{i}.jpg").write_bytes(b"garbage")
    crops, labels, skipped, _ = MultiCropBatches(ImageFolder(only_bad, size=32, channels=1), small_aug, 2, 0, 0)[0]
    assert crops == [] and skipped == 2


def test_multicrop_loader_yields_the_batches_in_order(fmnist_dir: Path, small_aug: MultiCropAugmentation) -> None:
    ds = FashionMNIST(fmnist_dir, "train")
    batches = MultiCropBatches(ds, small_aug, 8, seed=0, epoch=0)
    loaded = list(multicrop_loader(batches, num_workers=0))
    assert len(loaded) == len(batches)
    for i, (crops, labels, skipped, _) in enumerate(loaded):
        expected = batches[i]
        assert all(torch.equal(x, y) for x, y in zip(crops, expected[0], strict=True))
        assert torch.equal(labels, expected[1]) and skipped == 0


def test_build_augmentation_follows_the_config() -> None:
    cfg = config_lib.load("dino_vit_tiny_fmnist", ["data.local_crops_number=3", "data.color_jitter=false"])
    aug = build_augmentation(cfg.data)
    assert [s.size for s in aug.specs] == [28, 28, 14, 14, 14]
    assert aug.color_jitter is False
    assert aug.blur_sigma == cfg.data.blur_sigma
    assert torch.allclose(aug.mean.flatten(), torch.tensor(cfg.data.mean))
