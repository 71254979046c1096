"""Batches for training: each item is one whole augmented batch, seeded by (seed, epoch, batch index).

Making the batch the unit of work lets a DataLoader worker decode and augment a full batch with
batched tensor ops while the main process trains, and makes every crop reproducible after a
resume regardless of the number of workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dinolab.config import NUM_GLOBAL_CROPS, DataConfig, MaskConfig
from dinolab.data.datasets import FashionMNIST, ImageFolder, ImageList, collate_images
from dinolab.data.masking import BlockMasking
from dinolab.data.transforms import MultiCropAugmentation, Rows, dino_crop_specs


def build_dataset(cfg: DataConfig, in_chans: int, split: str | None = None, path: str | None = None) -> Dataset:
    """The raw (un-augmented) dataset a DataConfig points at: Fashion-MNIST, data.file_list's images (unless a
    `path` is given) or data.path's folder. Folder and list images come at canvas size."""
    if cfg.dataset == "fmnist":
        return FashionMNIST((cfg.path if path is None else path) or None, split or cfg.split)
    canvas = cfg.canvas_size or cfg.global_crops_size * 8 // 7
    if path is None and cfg.file_list:
        return ImageList(cfg.file_list, size=canvas, channels=in_chans)
    path = cfg.path if path is None else path
    if not path:
        raise ValueError("data.path is empty: set it to a folder of images (data.path=/my/images), or name the "
                         "images in a file list (data.file_list=curated.txt)")
    return ImageFolder(path, size=canvas, channels=in_chans)


def build_eval_dataset(
    cfg: DataConfig, in_chans: int, split: str, path: str | Path | None = None, classes: tuple[str, ...] | None = None
) -> Dataset:
    """Un-augmented labeled images for evaluation: Fashion-MNIST as it is; folder images resized to 8/7 of
    the global crop size and center-cropped to it (the usual 256 -> 224). `classes`: the train split's."""
    if cfg.dataset == "fmnist":
        return FashionMNIST(path or cfg.path or None, split)
    if not path:
        raise ValueError(f"no folder given for the {split} split of the evaluation (for the demo: eval.test_path)")
    size = cfg.global_crops_size
    return ImageFolder(path, size, size * 8 // 7, channels=in_chans, classes=classes)


def build_augmentation(cfg: DataConfig) -> MultiCropAugmentation:
    """The multi-crop augmentation with every key of `cfg` applied (crops, flip, color jitter, blur, solarization)."""
    specs = dino_crop_specs(
        cfg.global_crops_size, cfg.global_crops_scale, cfg.local_crops_number, cfg.local_crops_size,
        cfg.local_crops_scale, solarize_prob=0.2 if cfg.solarize else 0.0,
    )
    return MultiCropAugmentation(specs, cfg.mean, cfg.std, cfg.color_jitter, cfg.blur_sigma, hflip=cfg.hflip)


def build_masking(cfg: MaskConfig, global_crops_size: int, patch_size: int) -> BlockMasking | None:
    """iBOT's blockwise masks for the global crops, or None when masked-image modeling is off."""
    if not cfg.enabled:
        return None
    return BlockMasking(global_crops_size // patch_size, cfg.ratio, cfg.probability, cfg.aspect)


class Batch(NamedTuple):
    crops: list[Tensor]  # global crops first, each (B, C, H, W)
    labels: Tensor
    skipped: int  # unreadable images left out of this batch
    # (NUM_GLOBAL_CROPS*B, patches) bool over the global crops (view-major), if masking is on: the patches
    # the student sees as mask tokens and the iBOT loss scores
    masks: Tensor | None


class MultiCropBatches(Dataset):
    """Item i = batch i of one epoch, augmented (and masked) in the loader worker: a `Batch`.

    The batch is the global batch of the run; a process of a multi-process run takes the rows `rows` of it.
    Random draws are made for the whole global batch and each image takes those of its position, so a
    sample's crops and masks do not depend on the number of processes (nor on unreadable neighbours)."""

    def __init__(
        self,
        dataset: Dataset,
        augmentation: MultiCropAugmentation,
        batch_size: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        masking: BlockMasking | None = None,
        rows: slice = slice(None),
    ):
        self.dataset, self.augmentation, self.masking = dataset, augmentation, masking
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        self.batches = order[: batches_per_epoch(dataset, batch_size) * batch_size].view(-1, batch_size)
        self.seed, self.epoch, self.start_batch = seed, epoch, start_batch
        self.positions = torch.arange(batch_size)[rows]  # this process's positions in the global batch

    def __len__(self) -> int:
        return len(self.batches) - self.start_batch

    def __getitem__(self, i: int) -> Batch:
        index = self.start_batch + i
        samples = [self.dataset[int(j)] for j in self.batches[index][self.positions]]
        images, labels, skipped = collate_images(samples)
        if len(images) == 0:
            return Batch([], labels, skipped, None)
        positions = self.positions[[k for k, sample in enumerate(samples) if sample is not None]]
        total = self.batches.shape[1]
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF)
        crops = self.augmentation(images, g, Rows(total, positions))
        masks = None
        if self.masking is not None:  # drawn for every global crop of the global batch, view-major
            every = self.masking(NUM_GLOBAL_CROPS * total, g)
            masks = torch.cat([every[view * total + positions] for view in range(NUM_GLOBAL_CROPS)])
        return Batch(crops, labels, skipped, masks)


def batches_per_epoch(dataset: Dataset, batch_size: int) -> int:
    return len(dataset) // batch_size


def multicrop_loader(batches: MultiCropBatches, num_workers: int) -> DataLoader:
    return DataLoader(
        batches,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_single_thread,
        generator=torch.Generator().manual_seed(batches.seed),  # leaves the global RNG (drop path) alone
    )


def _single_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers share the box with the training process
