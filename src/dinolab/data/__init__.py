"""Data: datasets that decode, batched multi-crop augmentation, and the training batch loader."""

from dinolab.data.datasets import FashionMNIST, ImageFiles, ImageFolder, ImageList, collate_images, read_idx
from dinolab.data.loader import MultiCropBatches, build_augmentation, build_dataset, multicrop_loader
from dinolab.data.transforms import CropSpec, MultiCropAugmentation, dino_crop_specs

__all__ = [
    "CropSpec",
    "FashionMNIST",
    "ImageFiles",
    "ImageFolder",
    "ImageList",
    "MultiCropAugmentation",
    "MultiCropBatches",
    "build_augmentation",
    "build_dataset",
    "collate_images",
    "dino_crop_specs",
    "multicrop_loader",
    "read_idx",
]
