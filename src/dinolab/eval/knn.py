"""Weighted k-NN classification on L2-normalized features (the DINO paper's protocol, T = 0.07).

Each test image votes with its k most cosine-similar training images, weighted by exp(sim / T).
All k values are scored from one top-k search. Every k-NN score of dinolab comes from `knn_scores` on the
embeddings of `extract_tokens`: `dinolab eval knn` (through `Evaluation.knn`), and through `knn` the demo's
table and the k-NN check during training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from dinolab.device import Runtime
from dinolab.eval.features import check_features, extract_tokens
from dinolab.eval.tokens import TokenFeatures


@torch.no_grad()
def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: tuple[int, ...] | list[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 accuracy (%) of weighted k-NN for every k in `ks`."""
    check_features(train_features, train_labels, test_features, test_labels)
    ks = sorted(set(ks))
    if ks[-1] > len(train_features):
        raise ValueError(f"k={ks[-1]} is larger than the {len(train_features)} training images")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    kmax = ks[-1]
    correct = {k: torch.zeros(2) for k in ks}
    for start in range(0, len(test), chunk_size):
        sims, idx = (test[start : start + chunk_size] @ train.T).topk(kmax, dim=1)
        neighbor_labels = train_labels[idx]
        weights = (sims / temperature).exp()
        truth = test_labels[start : start + chunk_size].unsqueeze(1)
        for k in ks:
            votes = torch.zeros(len(idx), num_classes)
            votes.scatter_add_(1, neighbor_labels[:, :k], weights[:, :k])
            top = votes.topk(min(5, num_classes), dim=1).indices
            correct[k][0] += (top[:, :1] == truth).sum()
            correct[k][1] += (top == truth).any(dim=1).sum()
    n = len(test)
    return {k: {"top1": 100.0 * float(c[0]) / n, "top5": 100.0 * float(c[1]) / n} for k, c in correct.items()}


def knn_scores(
    train: TokenFeatures, test: TokenFeatures, ks: tuple[int, ...] | list[int], temperature: float = 0.07
) -> dict[int, dict[str, float]]:
    """Weighted k-NN of the test set's image embeddings (the last block's [CLS]) against the training set's."""
    return knn_classify(train.embedding, train.labels, test.embedding, test.labels, ks, temperature)


def knn(
    model: nn.Module,
    train_dataset: Dataset,
    test_dataset: Dataset,
    k: int | tuple[int, ...] = 20,
    temperature: float = 0.07,
    mean: tuple[float, ...] = (0.485, 0.456, 0.406),
    std: tuple[float, ...] = (0.229, 0.224, 0.225),
    batch_size: int = 256,
    runtime: Runtime | None = None,
    quiet: bool = False,
) -> dict[int, dict[str, float]]:
    """Extract the embeddings of both datasets with `model` (a ViT or a baseline) and score weighted k-NN."""
    ks = (k,) if isinstance(k, int) else tuple(k)
    train, test = (
        extract_tokens(model, dataset, mean, std, n_blocks=1, batch_size=batch_size, runtime=runtime, quiet=quiet)
        for dataset in (train_dataset, test_dataset)
    )
    return knn_scores(train, test, ks, temperature)
