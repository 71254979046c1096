"""Retrieval from an uncurated pool with a curated seed set (how DINOv2 built LVD-142M).

Per-image: each seed image brings its `n` nearest pool images; the result is their union. DINOv2 used it
for large seed sets (N = 4). Cluster: the pool is cut into k-means clusters, each seed image picks the
cluster of its nearest centroid, and up to `per_cluster` images are drawn from every picked cluster: a
small seed set then still brings many images, all from its own region of the embedding space.
"""

from __future__ import annotations

import numpy as np

from dinolab.curate.search import NPROBE, ArrayRows, kmeans, knn, normalized

PER_IMAGE_MIN_SEEDS = 1000  # "auto" retrieval: per image from this many seed images on, clusters below


def retrieve_per_image(pool: ArrayRows, seed: ArrayRows, n: int = 4, backend: str = "auto",
                       nprobe: int = NPROBE) -> np.ndarray:
    """Sorted pool indices: the union of every seed row's n most similar pool rows (L2-normalized inputs)."""
    if n < 1:
        raise ValueError(f"each seed image needs at least 1 neighbour, got n={n}")
    found = knn(seed, pool, n, backend, nprobe=nprobe)[1]
    return np.unique(found[found >= 0])  # -1: an approximate index found fewer than n


def retrieve_clusters(pool: ArrayRows, seed: ArrayRows, clusters: int, per_cluster: int | None = None,
                      backend: str = "auto", random_seed: int = 0) -> np.ndarray:
    """Sorted pool indices drawn from the pool clusters nearest to the seed rows: all their members, or
    `per_cluster` of each drawn at random (fewer where a cluster is smaller)."""
    assign, centers = kmeans(pool, clusters, backend, random_seed)
    picked = np.unique(knn(seed, normalized(centers), 1, backend)[1])  # the most similar centroid direction
    rng = np.random.default_rng(random_seed)
    chosen = []
    for c in picked:
        members = np.flatnonzero(assign == c)
        if per_cluster is not None and len(members) > per_cluster:
            members = rng.choice(members, per_cluster, replace=False)
        chosen.append(members)
    return np.unique(np.concatenate(chosen))
