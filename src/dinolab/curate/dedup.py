"""Copy detection on embeddings: near-duplicate groups inside a pool, and pool images too close to a
reference set (evaluation images that must not leak into training data).

Two images are near-duplicates when the cosine similarity of their embeddings is >= `threshold`. As in
DINOv2, the relation is read off the k-nearest-neighbour graph (each image's `neighbors` most similar
ones), so memory stays at N x k whatever the threshold, and groups are its connected components: a chain
a~b~c is one group even when a and c are further apart. A group larger than `neighbors` is still found
whole as long as its members link up through their nearest neighbours (exact copies do under exact search,
where ties go to the lower index). Each group keeps its lowest index, the first path in sorted order:
the choice does not depend on the search backend or on the order pairs are found in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dinolab.curate.search import NPROBE, ArrayRows, Rows, knn, knn_blocks

DEFAULT_THRESHOLD = 0.95
NEIGHBORS = 32


@dataclass
class Dedup:
    keep: np.ndarray  # sorted indices of the rows kept: every singleton and each group's first member
    groups: list[list[int]]  # every group of two or more rows, members sorted, groups by their first member


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Each row's component label: its lowest-index member (union-find, union by the smaller root)."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)])


def duplicate_pairs(x: ArrayRows, threshold: float, neighbors: int = NEIGHBORS, backend: str = "auto",
                    nprobe: int = NPROBE) -> np.ndarray:
    """(P, 2) row pairs (i, j), i != j, where j is among i's `neighbors` nearest rows with similarity >= threshold.
    Read off the k-NN graph a block of rows at a time: memory holds the pairs, never N x k neighbours."""
    pairs = [np.empty((0, 2), dtype=np.int64)]
    for qs, sims, idx in knn_blocks(x, x, neighbors + 1, backend, nprobe=nprobe):  # + 1: a row is its own nearest
        rows = np.broadcast_to(np.arange(qs.start, qs.stop)[:, None], idx.shape)
        linked = (sims >= threshold) & (idx != rows)
        pairs.append(np.stack((rows[linked], idx[linked]), 1))
    return np.concatenate(pairs)


def deduplicate(x: ArrayRows, threshold: float = DEFAULT_THRESHOLD, neighbors: int = NEIGHBORS,
                backend: str = "auto", nprobe: int = NPROBE) -> Dedup:
    """Near-duplicate groups of the rows of `x` (L2-normalized; in memory, memory-mapped or `Rows`) and the rows
    to keep, one per group."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"a cosine-similarity threshold lies in [-1, 1], got {threshold}")
    labels = _components(len(x), duplicate_pairs(x, threshold, neighbors, backend, nprobe))
    keep = np.flatnonzero(labels == np.arange(len(x)))
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(int(label), []).append(i)
    return Dedup(keep, [group for group in members.values() if len(group) > 1])


def too_close(pool: ArrayRows, references: ArrayRows | Sequence[ArrayRows], threshold: float = DEFAULT_THRESHOLD,
              backend: str = "auto", nprobe: int = NPROBE) -> tuple[np.ndarray, np.ndarray]:
    """(mask of pool rows whose most similar reference row has cosine similarity >= threshold, index of
    that reference row for each pool row; -1 where the search found none). All inputs L2-normalized.
    `references`: one array or several (evaluation sets), searched one at a time rather than concatenated;
    the index is then into their concatenation, ties going to the earlier set as one search would."""
    if isinstance(references, (np.ndarray, Rows)):
        references = [references]
    best = np.full(len(pool), -np.inf, dtype=np.float32)  # each pool row's most similar reference row so far
    nearest, offset = np.full(len(pool), -1, dtype=np.int64), 0
    for reference in references:
        sims, idx = knn(pool, reference, 1, backend, nprobe=nprobe)
        closer = sims[:, 0] > best
        best[closer], nearest[closer] = sims[closer, 0], idx[closer, 0] + offset
        offset += len(reference)
    return best >= threshold, nearest
