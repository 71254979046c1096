"""Cosine-similarity search over L2-normalized float32 embeddings: k nearest neighbours and k-means, with
the index chosen by the size of the base searched.

| base vectors | `auto` (the default) | without faiss |
|---|---|---|
| < FAISS_MIN_BASE (50k) | exact, in torch | the same |
| 50k - IVF_MIN_BASE (200k) | faiss flat: exact, multi-threaded | exact in torch, with a warning |
| 200k - IVFPQ_MIN_BASE (10M) | faiss IVF: 4 sqrt(N) lists, `nprobe` searched per query | an error naming the extra |
| more | faiss IVF-PQ: compressed codes, candidates re-ranked with the exact vectors | the same |

IVF and IVF-PQ are approximate in *which* neighbours they find (recall < 1; raise `nprobe` to trade time for
recall), never in the similarities they report: IVF stores the vectors themselves, and IVF-PQ's candidates
are re-scored against the base, so thresholds keep their meaning. Where an approximate index finds fewer
than k neighbours a row is padded with index -1 and similarity -inf.

Memory stays bounded: the exact search cuts queries and base into blocks, so no more than `block` x `block`
similarities exist at once; faiss indexes are filled and searched in blocks of rows, so the inputs may be
memory-mapped arrays. IVF trains its lists on at most 256 vectors per list. The exact k-means
(eval.clustering's) holds N x k distances at once; faiss's trains on a sample of at most 256 per cluster.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch

from dinolab.eval.clustering import kmeans as exact_kmeans
from dinolab.eval.retrieval import faiss_available
from dinolab.hub.export import MissingExtraError

log = logging.getLogger(__name__)

# 'faiss': faiss with the index chosen by size; 'flat', 'ivf', 'ivfpq': that index whatever the size
BACKENDS = ("auto", "exact", "faiss", "flat", "ivf", "ivfpq")
FAISS_MIN_BASE = 50_000  # "auto" uses faiss from this many base vectors on (when installed)
# faiss: IVF from this many on, flat (exact) below. Flat costs N^2 D: deduplicating 60k x 192 Fashion-MNIST
# embeddings on one thread took 29 s flat and 18 s with IVF (nprobe 32, recall 0.993); at 200k flat would take
# ~11x as long, IVF ~6x (benchmarks/curate_scale.py, docs/curate.md)
IVF_MIN_BASE = 200_000
IVFPQ_MIN_BASE = 10_000_000  # faiss: IVF-PQ from this many on (IVF holds 4 D bytes per vector: 15 GB at 10M x 384)
NPROBE = 32  # inverted lists an IVF search visits per query
TRAIN_PER_LIST = 256  # IVF training vectors per list (faiss's own cap)
PQ_MIN_BASE = 10_000  # below this, PQ's 256 codewords per sub-vector cannot be trained: IVF instead
RERANK = 4  # IVF-PQ: candidates fetched per neighbour wanted, then re-scored exactly
BLOCK = 4096
FAISS_BLOCK = 16_384  # rows per faiss add/search call
RERANK_FLOATS = 1 << 25  # IVF-PQ re-ranking gathers RERANK * k vectors per query: at most this many floats at once
FAISS_HINT = "pip install 'dinolab[faiss]'"


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 (cosine similarity becomes a dot product)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def choose_index(backend: str, base_size: int) -> str:
    """What `backend` means for a base of `base_size` vectors: 'exact' (torch), 'flat' (faiss, exact), 'ivf' or
    'ivfpq' (faiss, approximate recall); see the module docstring's table."""
    if backend not in BACKENDS:
        raise ValueError(f"search backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "exact" or (backend == "auto" and base_size < FAISS_MIN_BASE):
        return "exact"
    if not faiss_available():
        if backend != "auto":
            raise MissingExtraError(f"--search {backend} needs faiss: {FAISS_HINT} (or use --search exact)")
        if base_size >= IVF_MIN_BASE:
            raise MissingExtraError(f"{base_size} vectors are too many for exact search without faiss (its time "
                                    f"grows as N^2): {FAISS_HINT}, or insist with --search exact")
        log.warning("%d vectors: exact search in torch, which is slow at this size; %s for faiss", base_size,
                    FAISS_HINT)
        return "exact"
    if backend in ("auto", "faiss"):
        backend = "flat" if base_size < IVF_MIN_BASE else "ivf" if base_size < IVFPQ_MIN_BASE else "ivfpq"
    return "ivf" if backend == "ivfpq" and base_size < PQ_MIN_BASE else backend


def ivf_lists(base_size: int) -> int:
    """IVF's inverted lists: 4 sqrt(N) (faiss's guideline), with at least 39 training vectors each."""
    return max(1, min(round(4 * math.sqrt(base_size)), base_size // 39))


def pq_subvectors(dim: int) -> int:
    """IVF-PQ's sub-vectors per vector: the most that still leaves 4 dimensions each (one byte per 4 floats)."""
    return max(m for m in range(1, max(dim // 4, 1) + 1) if dim % m == 0)


def _faiss_index(base: np.ndarray, kind: str, nprobe: int):
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    dim = base.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        lists = ivf_lists(len(base))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, lists, pq_subvectors(dim), 8, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(len(base), min(len(base), TRAIN_PER_LIST * lists), replace=False)
        index.train(np.ascontiguousarray(base[np.sort(sample)], dtype=np.float32))
        index.nprobe = min(nprobe, lists)
    for rows in _blocks(len(base), FAISS_BLOCK):
        index.add(np.ascontiguousarray(base[rows], dtype=np.float32))
    return index


def _faiss_knn(queries: np.ndarray, base: np.ndarray, k: int, kind: str,
               nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    index = _faiss_index(base, kind, nprobe)
    fetch = min(len(base), RERANK * k) if kind == "ivfpq" else k
    rows = max(1, min(FAISS_BLOCK, RERANK_FLOATS // (fetch * base.shape[1]))) if kind == "ivfpq" else FAISS_BLOCK
    sims = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    for qs in _blocks(len(queries), rows):
        q = np.ascontiguousarray(queries[qs], dtype=np.float32)
        s, i = index.search(q, fetch)
        if kind == "ivfpq":  # PQ's similarities are estimates: score the candidates on the stored vectors
            found = i >= 0
            s = np.where(found, np.einsum("bd,bkd->bk", q, base[np.where(found, i, 0)]), -np.inf)
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
            s, i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
        sims[qs], idx[qs] = np.where(i >= 0, s, -np.inf), i
    return sims, idx


def _blocks(n: int, block: int) -> Iterator[slice]:
    return (slice(start, min(start + block, n)) for start in range(0, n, block))


def knn(queries: np.ndarray, base: np.ndarray, k: int, backend: str = "auto", block: int = BLOCK,
        nprobe: int = NPROBE) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (len(queries), k), of every query's k most similar base rows, most
    similar first; exact search breaks ties toward the lower base index. Both inputs L2-normalized (faiss reads
    them in blocks of rows: memory-mapped arrays work). `nprobe`: the inverted lists an IVF index searches per
    query (more: slower, higher recall)."""
    k = min(k, len(base))
    kind = choose_index(backend, len(base))
    if kind != "exact":
        return _faiss_knn(queries, base, k, kind, nprobe)
    q_all, b_all = torch.from_numpy(queries), torch.from_numpy(base)
    sims = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    for qs in _blocks(len(queries), block):
        best_s = torch.full((qs.stop - qs.start, 0), float("-inf"))
        best_i = torch.empty((qs.stop - qs.start, 0), dtype=torch.long)
        for bs in _blocks(len(base), block):  # running top-k over base blocks, in index order
            block_s, block_i = _top_k(q_all[qs] @ b_all[bs].T, k)
            cand_s, cand_i = torch.cat((best_s, block_s), 1), torch.cat((best_i, block_i + bs.start), 1)
            order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :k]  # earlier blocks win ties
            best_s, best_i = cand_s.gather(1, order), cand_i.gather(1, order)
        sims[qs], idx[qs] = best_s.numpy(), best_i.numpy()
    return sims, idx


def _top_k(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k largest values of `s` and their columns, largest first, equal values by column: topk (a
    partial selection, ~10x cheaper than sorting the row) and then the few rows where topk may have picked a
    higher column over an equal lower one, sorted whole."""
    k = min(k, s.shape[1])
    vals, cols = torch.topk(s, k, dim=1)
    kth = vals[:, -1:]
    ambiguous = ((s == kth).sum(1) > (vals == kth).sum(1)).nonzero()[:, 0]  # ties across the k-th place
    if len(ambiguous):
        cols[ambiguous] = torch.sort(s[ambiguous], dim=1, descending=True, stable=True).indices[:, :k]
        vals[ambiguous] = s[ambiguous].gather(1, cols[ambiguous])
    cols, by_column = torch.sort(cols, dim=1)
    order = torch.sort(vals.gather(1, by_column), dim=1, descending=True, stable=True).indices
    return vals.gather(1, by_column).gather(1, order), cols.gather(1, order)


def kmeans(x: np.ndarray, k: int, backend: str = "auto", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each row, centers (k, D)): k-means++ and Lloyd in torch (eval.clustering), or faiss."""
    if not 1 <= k <= len(x):
        raise ValueError(f"cannot make {k} clusters of {len(x)} images: choose between 1 and {len(x)}")
    if choose_index(backend, len(x)) != "exact":  # faiss's k-means, whichever index searches would use
        import faiss

        model = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, verbose=False)
        model.train(np.ascontiguousarray(x))
        return model.index.search(np.ascontiguousarray(x), 1)[1][:, 0].astype(np.int64), model.centroids
    assign, centers, _ = exact_kmeans(torch.from_numpy(x), k, restarts=1, seed=seed)
    return assign.numpy().astype(np.int64), centers.numpy()
