"""Balancing by hierarchical k-means (Vo et al. 2024, used for DINOv3's data): k-means on the images, then
k-means on those centroids, and so on; a sample then takes the same share from every cluster of each
level, so that dense regions of the pool (many near-identical product photos, say) stop dominating.

`levels` are the cluster counts from the finest to the coarsest (e.g. 1000, 100): the images are cut into
1000 leaf clusters, whose centroids are cut into 100 top clusters. Sampling goes top-down: the target is
split evenly over the top clusters, each share evenly over that cluster's children, down to the leaves,
where images are drawn at random. A cluster smaller than its share gives all it has and the rest is
split over its siblings (`balanced_quotas`), so the sample reaches the target exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dinolab.curate.search import ArrayRows, kmeans


def balanced_quotas(sizes: Sequence[int], n: int) -> np.ndarray:
    """How many to take from each group to take n in all, as evenly as the sizes allow: every group gives
    min(size, t) for the largest t that fits, and the last few left over go to the lowest-index groups
    that still have images."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if n > sizes.sum():
        raise ValueError(f"cannot take {n} from groups holding {int(sizes.sum())}")
    quotas = np.zeros_like(sizes)
    while n > quotas.sum():
        open_groups = np.flatnonzero(quotas < sizes)
        share = max(1, (n - int(quotas.sum())) // len(open_groups))
        for g in open_groups:
            give = min(share, sizes[g] - quotas[g], n - int(quotas.sum()))
            quotas[g] += give
    return quotas


def hierarchical_kmeans(x: ArrayRows, levels: Sequence[int], backend: str = "auto",
                        random_seed: int = 0) -> list[np.ndarray]:
    """For each level (finest first), the cluster of that level each row of `x` belongs to. Only the finest
    level sees the rows (a sample trains it, then all are assigned in blocks: `search.kmeans`); the coarser
    levels cluster the centroids, in memory."""
    if list(levels) != sorted(set(levels), reverse=True):
        raise ValueError(f"cluster levels go from the finest to the coarsest, each one smaller; got {list(levels)}")
    labels, points = [], x
    path = np.arange(len(x))  # the node of the current level each row belongs to
    for k in levels:
        assign, centers = kmeans(points, k, backend, random_seed)
        path = assign[path]
        labels.append(path)
        points = np.ascontiguousarray(centers, dtype=np.float32)
    return labels


def balanced_sample(labels: Sequence[np.ndarray], target: int, random_seed: int = 0) -> np.ndarray:
    """Sorted row indices: `target` rows drawn top-down through the hierarchy `labels` (finest level first)."""
    count = len(labels[0])
    if not 1 <= target <= count:
        raise ValueError(f"--target {target} is not between 1 and the {count} images left to balance; "
                         f"lower it (or curate a larger pool)")
    rng = np.random.default_rng(random_seed)

    def take(rows: np.ndarray, level: int, n: int) -> list[np.ndarray]:
        if level < 0:
            return [rng.choice(rows, n, replace=False)]
        groups = [rows[labels[level][rows] == g] for g in np.unique(labels[level][rows])]
        quotas = balanced_quotas([len(g) for g in groups], n)
        return [part for g, q in zip(groups, quotas, strict=True) if q for part in take(g, level - 1, int(q))]

    return np.sort(np.concatenate(take(np.arange(count), len(labels) - 1, target)))
