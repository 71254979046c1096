"""Unsupervised classification (iBOT): k-means on L2-normalized features, scored against the true classes.

k-means: k-means++ seeding, Lloyd iterations, several restarts, the lowest inertia kept. Scores, all from the
contingency table of clusters x classes: accuracy under the best one-to-one matching of clusters to classes
(Hungarian algorithm), normalized mutual information (arithmetic-mean normalization, scikit-learn's default)
and the adjusted Rand index.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ASSIGN_BLOCK = 16_384  # rows whose distances to every center are held at once (64 MB at 1,000 centers)


def _kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++: each next center drawn with probability proportional to the squared distance to the nearest."""
    centers = [x[torch.randint(len(x), (1,), generator=generator)]]
    nearest = torch.cdist(x, centers[0]).squeeze(1).square()
    for _ in range(1, k):
        pick = torch.multinomial(nearest + 1e-12, 1, generator=generator)
        centers.append(x[pick])
        nearest = torch.minimum(nearest, torch.cdist(x, centers[-1]).squeeze(1).square())
    return torch.cat(centers)


def nearest_center(x: Tensor, centers: Tensor, block: int = ASSIGN_BLOCK) -> tuple[Tensor, Tensor]:
    """(squared distance to the nearest center, its index) for each row of `x`, `block` rows at a time: the
    whole N x k distance matrix would be the largest allocation of k-means (0.8 GB at 200,000 x 1,000)."""
    nearest = torch.empty(len(x), dtype=x.dtype, device=x.device)
    assign = torch.empty(len(x), dtype=torch.long, device=x.device)
    for start in range(0, len(x), block):
        rows = slice(start, start + block)
        nearest[rows], assign[rows] = torch.cdist(x[rows], centers).square().min(dim=1)
    return nearest, assign


def kmeans(
    x: Tensor, k: int, restarts: int = 10, max_iter: int = 100, tol: float = 1e-6, seed: int = 0
) -> tuple[Tensor, Tensor, float]:
    """(cluster of each row, centers (k, D), inertia) of the best of `restarts` runs."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means with k={k} needs between 1 and {len(x)} clusters (the number of points)")
    x = x.float()
    generator = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(restarts):
        centers = _kmeans_plus_plus(x, k, generator)
        previous = math.inf
        for _ in range(max_iter):
            nearest, assign = nearest_center(x, centers)
            inertia = float(nearest.sum())
            counts = torch.bincount(assign, minlength=k)
            sums = torch.zeros_like(centers).index_add_(0, assign, x)
            empty = counts == 0
            centers = torch.where(empty.unsqueeze(1), centers, sums / counts.clamp(min=1).unsqueeze(1))
            if empty.any():  # re-seed an empty cluster at the points farthest from their centers
                centers[empty] = x[nearest.topk(int(empty.sum())).indices]
            if previous - inertia <= tol * previous:
                break
            previous = inertia
        if best is None or inertia < best[2]:
            best = (assign, centers, inertia)
    return best


def contingency(a: Tensor, b: Tensor) -> Tensor:
    """(distinct values of a) x (distinct values of b) counts, float64."""
    _, ai = a.unique(return_inverse=True)
    _, bi = b.unique(return_inverse=True)
    table = torch.zeros(int(ai.max()) + 1, int(bi.max()) + 1, dtype=torch.float64)
    return table.index_put_((ai, bi), torch.ones(len(a), dtype=torch.float64), accumulate=True)


def cluster_accuracy(clusters: Tensor, labels: Tensor) -> float:
    """Fraction of points whose cluster maps to their class under the best one-to-one matching."""
    from scipy.optimize import linear_sum_assignment  # scipy.optimize costs ~0.5 s: only this protocol needs it

    table = contingency(clusters, labels)
    rows, cols = linear_sum_assignment(table.numpy(), maximize=True)
    return float(table[rows, cols].sum()) / len(labels)


def _entropy(counts: Tensor) -> Tensor:
    p = counts[counts > 0] / counts.sum()
    return -(p * p.log()).sum()


def nmi(clusters: Tensor, labels: Tensor) -> float:
    """Mutual information / mean of the two entropies; 1.0 when both partitions are a single set."""
    table = contingency(clusters, labels)
    n = table.sum()
    joint = table / n
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    nonzero = joint > 0
    mutual = (joint[nonzero] * (joint[nonzero] / outer[nonzero]).log()).sum()
    mean_entropy = (_entropy(table.sum(1)) + _entropy(table.sum(0))) / 2
    return 1.0 if mean_entropy == 0 else float(mutual / mean_entropy)


def ari(clusters: Tensor, labels: Tensor) -> float:
    """Rand index adjusted for chance: 1 for identical partitions, about 0 for independent ones."""
    table = contingency(clusters, labels)

    def pairs(t: Tensor) -> Tensor:
        return (t * (t - 1) / 2).sum()

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(table.sum().view(1))
    maximum = (rows + cols) / 2
    return 1.0 if maximum == expected else float((index - expected) / (maximum - expected))


def clustering(
    x: Tensor, labels: Tensor, k: int | None = None, restarts: int = 10, max_iter: int = 100, seed: int = 0
) -> dict[str, float]:
    """k-means (k = number of classes unless given) on normalized features; accuracy, NMI, ARI in %."""
    if len(x) != len(labels):
        raise ValueError(f"{len(x)} feature rows but {len(labels)} labels: every feature row needs one label")
    k = k or len(labels.unique())
    assign, _, inertia = kmeans(F.normalize(x.float(), dim=1), k, restarts, max_iter, seed=seed)
    return {
        "accuracy": 100.0 * cluster_accuracy(assign, labels), "nmi": 100.0 * nmi(assign, labels),
        "ari": 100.0 * ari(assign, labels), "k": k, "inertia": inertia,
    }
