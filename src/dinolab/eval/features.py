"""Feature extraction for evaluation: batched, normalized input, progress bar."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dinolab.data.datasets import collate_images
from dinolab.data.transforms import normalize
from dinolab.device import Runtime, resolve


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 256,
    runtime: Runtime | None = None,
    num_workers: int = 0,
    quiet: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run `model` (images -> (B, D) embeddings) over a dataset of uint8 images; returns fp32 (N, D), labels."""
    runtime = runtime or resolve()
    model = model.to(runtime.device).eval()
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images)
    feats, labels = [], []
    for images, y, _ in tqdm(loader, desc="features", disable=quiet, leave=False):
        if len(images) == 0:
            continue
        x = normalize(images.float().div_(255), mean_t, std_t).to(runtime.device)
        with runtime.autocast():
            feats.append(model(x).float().cpu())
        labels.append(y)
    if not feats:
        raise ValueError("no readable images to extract features from")
    return torch.cat(feats), torch.cat(labels)


def pixel_features(dataset: Dataset, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """Raw pixels, normalized and flattened: the baseline a learned representation must beat."""
    flatten = nn.Flatten()
    return extract_features(flatten, dataset, mean, std, runtime=resolve("cpu", "fp32"), quiet=True)
