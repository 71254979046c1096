"""Cosine-similarity search over L2-normalized float32 embeddings: k nearest neighbours and k-means,
exact in torch or through faiss when installed and the base is large.

Memory stays bounded: queries and base are both cut into blocks, so no more than `block` x `block`
similarities exist at once, whatever the sizes. The faiss path uses flat (exact) inner-product indexes,
whose multi-threaded kernels only pay off on large bases: both backends return the same neighbours.
The exact k-means (eval.clustering's) holds N x k distances at once; faiss's does not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

from dinolab.eval.clustering import kmeans as exact_kmeans
from dinolab.eval.retrieval import faiss_available
from dinolab.hub.export import MissingExtraError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "exact", "faiss")
FAISS_MIN_BASE = 50_000  # "auto" uses faiss from this many base vectors on (when installed)
BLOCK = 4096
FAISS_HINT = "pip install 'dinolab[faiss]'"


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 (cosine similarity becomes a dot product)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def choose_backend(backend: str, base_size: int) -> str:
    """'exact' or 'faiss': 'auto' takes faiss for bases of FAISS_MIN_BASE vectors or more when it is installed."""
    if backend not in BACKENDS:
        raise ValueError(f"search backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "faiss" and not faiss_available():
        raise MissingExtraError(f"--search faiss needs faiss: {FAISS_HINT} (or use --search exact)")
    if backend == "auto":
        if base_size < FAISS_MIN_BASE:
            return "exact"
        if not faiss_available():
            log.warning("%d vectors: exact search in torch, which is slow at this size; %s for faiss",
                        base_size, FAISS_HINT)
            return "exact"
        return "faiss"
    return backend


def _faiss_index(base: np.ndarray):
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base))
    return index


def _blocks(n: int, block: int) -> Iterator[slice]:
    return (slice(start, min(start + block, n)) for start in range(0, n, block))


def knn(queries: np.ndarray, base: np.ndarray, k: int, backend: str = "auto",
        block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (len(queries), k), of every query's k most similar base rows, most
    similar first; ties go to the lower base index. Both inputs L2-normalized."""
    k = min(k, len(base))
    if choose_backend(backend, len(base)) == "faiss":
        sims, idx = _faiss_index(base).search(np.ascontiguousarray(queries), k)
        return sims, idx
    q_all, b_all = torch.from_numpy(queries), torch.from_numpy(base)
    sims = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    for qs in _blocks(len(queries), block):
        best_s = torch.full((qs.stop - qs.start, 0), float("-inf"))
        best_i = torch.empty((qs.stop - qs.start, 0), dtype=torch.long)
        for bs in _blocks(len(base), block):  # running top-k over base blocks, in index order
            s = q_all[qs] @ b_all[bs].T
            cand_s = torch.cat((best_s, s), 1)
            cand_i = torch.cat((best_i, torch.arange(bs.start, bs.stop).expand_as(s)), 1)
            order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :k]
            best_s, best_i = cand_s.gather(1, order), cand_i.gather(1, order)
        sims[qs], idx[qs] = best_s.numpy(), best_i.numpy()
    return sims, idx


def kmeans(x: np.ndarray, k: int, backend: str = "auto", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each row, centers (k, D)): k-means++ and Lloyd in torch (eval.clustering), or faiss."""
    if not 1 <= k <= len(x):
        raise ValueError(f"cannot make {k} clusters of {len(x)} images: choose between 1 and {len(x)}")
    if choose_backend(backend, len(x)) == "faiss":
        import faiss

        model = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, verbose=False)
        model.train(np.ascontiguousarray(x))
        return model.index.search(np.ascontiguousarray(x), 1)[1][:, 0].astype(np.int64), model.centroids
    assign, centers, _ = exact_kmeans(torch.from_numpy(x), k, restarts=1, seed=seed)
    return assign.numpy().astype(np.int64), centers.numpy()
