"""Frozen features for evaluation, shared by every protocol.

A model is run once over each dataset: `extract_tokens` keeps the normalized [CLS] token of the last n blocks
and the average-pooled patch tokens of the last block (what DINOv2's linear probe concatenates), and with
`cache_dir` it keeps them on disk (see cache.py) so a second evaluation of the same weights runs no model at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dinolab.data.datasets import collate_images
from dinolab.data.transforms import normalize_uint8
from dinolab.device import Runtime, resolve
from dinolab.eval import cache
from dinolab.eval.tokens import NO_PREPROCESS, Preprocess, TokenFeatures
from dinolab.progress import progress


def image_batches(
    dataset: Dataset, preprocess: Preprocess, batch_size: int, num_workers: int, quiet: bool, desc: str
) -> Iterator[tuple[Tensor, Tensor]]:
    """(uint8 images after `preprocess`, labels) batches in dataset order, unreadable images left out."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images)
    for images, labels, _ in progress(loader, desc=desc, unit="batch", disable=quiet):
        if len(images):
            yield preprocess(images), labels


def _model_input(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...], runtime: Runtime) -> Tensor:
    return normalize_uint8(images, mean, std).to(runtime.device)


def model_depth(model: nn.Module) -> int:
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "get_intermediate_layers"):
        raise ValueError(
            f"{type(model).__name__} has no transformer blocks / get_intermediate_layers: evaluation needs a ViT "
            "backbone (dinolab.models.vit.VisionTransformer) or dinolab.eval.PixelBaseline"
        )
    return len(blocks)


@torch.no_grad()
def extract_tokens(
    model: nn.Module, dataset: Dataset, mean: tuple[float, ...], std: tuple[float, ...], n_blocks: int = 4,
    preprocess: Preprocess = NO_PREPROCESS, batch_size: int = 256, runtime: Runtime | None = None,
    num_workers: int = 0, quiet: bool = False, cache_dir: str | None = None,
) -> TokenFeatures:
    """[CLS] of the last `n_blocks` blocks (fewer if the model is shallower) and average-pooled patch tokens."""
    runtime = runtime or resolve()
    n_blocks = min(n_blocks, model_depth(model))
    key = None
    if cache_dir:
        key = cache.feature_key(model, dataset, mean, std, n_blocks, preprocess, runtime.precision)
        cached = cache.load(cache_dir, key)
        if cached is not None:
            return cached
    model = model.to(runtime.device).eval()
    cls, pooled, labels = [], [], []
    for images, y in image_batches(dataset, preprocess, batch_size, num_workers, quiet, "features"):
        with runtime.autocast():
            layers = model.get_intermediate_layers(_model_input(images, mean, std, runtime), n_blocks,
                                                   return_class_token=True)
        cls.append(torch.stack([c for _, c in layers], dim=1).float().cpu())
        pooled.append(layers[-1][0].float().mean(dim=1).cpu())
        labels.append(y)
    if not cls:
        raise ValueError("no readable images to extract features from")
    features = TokenFeatures(torch.cat(cls), torch.cat(pooled), torch.cat(labels))
    if key is not None:
        cache.save(cache_dir, key, features)
    return features


@torch.no_grad()
def extract_patch_tokens(
    model: nn.Module, dataset: Dataset, mean: tuple[float, ...], std: tuple[float, ...],
    preprocess: Preprocess = NO_PREPROCESS, batch_size: int = 256, runtime: Runtime | None = None,
    num_workers: int = 0, quiet: bool = False,
) -> tuple[Tensor, Tensor]:
    """Normalized last-block patch tokens (N, P, D) and the uint8 images (after `preprocess`) they describe."""
    runtime = runtime or resolve()
    model_depth(model)
    model = model.to(runtime.device).eval()
    tokens, kept = [], []
    for images, _ in image_batches(dataset, preprocess, batch_size, num_workers, quiet, "patch tokens"):
        with runtime.autocast():
            (patches,) = model.get_intermediate_layers(_model_input(images, mean, std, runtime), 1)
        tokens.append(patches.float().cpu())
        kept.append(images)
    if not tokens:
        raise ValueError("no readable images to extract patch tokens from")
    return torch.cat(tokens), torch.cat(kept)


def check_features(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, names: tuple[str, str] = ("train", "test")
) -> None:
    """The errors every protocol on features needs, raised before any work, naming what is wrong."""
    a, b = names
    if train_x.ndim != 2 or test_x.ndim != 2:
        raise ValueError(f"features must be (N, D) matrices, got {a} {tuple(train_x.shape)}, {b} {tuple(test_x.shape)}")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"{a} features have dimension {train_x.shape[1]} but {b} features {test_x.shape[1]}: "
            "both must come from the same model and feature choice"
        )
    for split, x, y in ((a, train_x, train_y), (b, test_x, test_y)):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} {split} feature rows but {len(y)} labels: every feature row needs one label")
    if (train_y < 0).any() or (test_y < 0).any():
        raise ValueError("this protocol needs labeled data: some images have no class (label -1)")


def holdout_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, validation) with a seeded `fraction` of n held out: how DINOv2 picks hyperparameters
    without looking at the test set."""
    n_val = int(n * fraction)
    if not 0 < n_val < n:
        raise ValueError(f"a validation fraction of {fraction} of {n} training images leaves an empty split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]
