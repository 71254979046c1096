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

Out of core: every input may be an in-memory array, a memory-mapped one (`np.load(path, mmap_mode="r")`) or a
`Rows` view (some rows of either, not copied); all of them are read a block of rows at a time, never whole. The
exact search cuts queries and base into blocks (no more than `block` x `block` similarities at once, the base
streamed again for each query block); faiss indexes are filled and searched in blocks of rows. What still grows
with the base is the faiss index itself (flat and IVF hold the vectors, 4 D bytes each; IVF-PQ D / 4 + 8) and
the training samples: IVF trains its lists on at most max(IVF_TRAIN_MAX, 39 per list) vectors (256 per list
below that), k-means on at most max(256 k, KMEANS_MIN_SAMPLE) points, then assigns every point in blocks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch

from dinolab.eval.clustering import kmeans as exact_kmeans
from dinolab.eval.clustering import nearest_center
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
TRAIN_PER_LIST = 256  # IVF training vectors per list (faiss's own cap), but at most IVF_TRAIN_MAX in all unless
MIN_TRAIN_PER_LIST = 39  # this many per list (the fewest faiss accepts without a warning) need more: the sample is
IVF_TRAIN_MAX = 100_000  # held in memory, and training costs sample x lists x D x 10 iterations
KMEANS_PER_CLUSTER = 256  # k-means trains on a sample of at most max(256 k, KMEANS_MIN_SAMPLE) points (faiss's
KMEANS_MIN_SAMPLE = 100_000  # cap, with a floor for small k), then assigns every point in blocks
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


class Rows:
    """Rows `index` of an (N, D) array (e.g. a memory-mapped embedding file), read only when asked for: a stage
    is given the pool images left after the previous ones without a copy of their embeddings (`x[rows]` would
    copy them all). `rows[a:b]` or `rows[indices]` reads those rows alone."""

    def __init__(self, array: ArrayRows, index: np.ndarray) -> None:
        self.array, self.index = array, np.asarray(index, dtype=np.int64)
        self.shape = (len(self.index), *array.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        return np.asarray(self.array[self.index[key]])


ArrayRows = np.ndarray | Rows  # what the stages take: in memory, memory-mapped, or some rows of either


def read_rows(x: ArrayRows, key: slice | np.ndarray) -> np.ndarray:
    """Rows `key` of `x` as a writable C-contiguous float32 array: a view of an in-memory array, a copy of just
    those rows of a memory-mapped one (torch and faiss take it as is)."""
    block = np.asarray(x[key])
    if block.dtype != np.float32 or not block.flags.c_contiguous or not block.flags.writeable:
        block = np.array(block, dtype=np.float32, order="C")
    return block


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


def ivf_train_size(base_size: int, lists: int) -> int:
    """IVF's training sample: 256 vectors per list, at most IVF_TRAIN_MAX unless 39 per list need more."""
    return min(base_size, TRAIN_PER_LIST * lists, max(IVF_TRAIN_MAX, MIN_TRAIN_PER_LIST * lists))


def _sample(n: int, size: int, seed: int) -> slice | np.ndarray:
    """`size` of n rows drawn at random, sorted (read in file order); all of them as a slice when size == n."""
    return slice(None) if size >= n else np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _faiss_index(base: ArrayRows, kind: str, nprobe: int):
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
        index.train(read_rows(base, _sample(len(base), ivf_train_size(len(base), lists), 0)))
        index.nprobe = min(nprobe, lists)
    for rows in _blocks(len(base), FAISS_BLOCK):
        index.add(read_rows(base, rows))
    return index


def _faiss_knn(queries: ArrayRows, base: ArrayRows, k: int, kind: str,
               nprobe: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    index = _faiss_index(base, kind, nprobe)
    dim = base.shape[1]
    fetch = min(len(base), RERANK * k) if kind == "ivfpq" else k
    rows = max(1, min(FAISS_BLOCK, RERANK_FLOATS // (fetch * dim))) if kind == "ivfpq" else FAISS_BLOCK
    for qs in _blocks(len(queries), rows):
        q = read_rows(queries, qs)
        s, i = index.search(q, fetch)
        if kind == "ivfpq":  # PQ's similarities are estimates: score the candidates on the stored vectors
            found = i >= 0
            candidates = read_rows(base, np.where(found, i, 0).ravel()).reshape(*i.shape, dim)
            s = np.where(found, np.einsum("bd,bkd->bk", q, candidates), -np.inf)
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
            s, i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
        yield qs, np.where(i >= 0, s, -np.inf).astype(np.float32), i.astype(np.int64)


def _blocks(n: int, block: int) -> Iterator[slice]:
    return (slice(start, min(start + block, n)) for start in range(0, n, block))


def knn(queries: ArrayRows, base: ArrayRows, k: int, backend: str = "auto", block: int = BLOCK,
        nprobe: int = NPROBE) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (len(queries), k), of every query's k most similar base rows, most
    similar first; exact search breaks ties toward the lower base index. Both inputs L2-normalized, read in
    blocks of rows (memory-mapped arrays and `Rows` work). `nprobe`: the inverted lists an IVF index searches
    per query (more: slower, higher recall)."""
    k = min(k, len(base))
    sims = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    for qs, block_sims, block_idx in knn_blocks(queries, base, k, backend, block, nprobe):
        sims[qs], idx[qs] = block_sims, block_idx
    return sims, idx


def knn_blocks(queries: ArrayRows, base: ArrayRows, k: int, backend: str = "auto", block: int = BLOCK,
               nprobe: int = NPROBE) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """`knn`, a block of queries at a time: (query rows, their similarities, their indices), so that a caller
    keeping only part of each answer (deduplication keeps the pairs above a threshold) never holds N x k."""
    k = min(k, len(base))
    kind = choose_index(backend, len(base))
    if kind != "exact":
        yield from _faiss_knn(queries, base, k, kind, nprobe)
        return
    for qs in _blocks(len(queries), block):
        q = torch.from_numpy(read_rows(queries, qs))
        best_s = torch.full((len(q), 0), float("-inf"))
        best_i = torch.empty((len(q), 0), dtype=torch.long)
        for bs in _blocks(len(base), block):  # running top-k over base blocks, in index order
            block_s, block_i = _top_k(q @ torch.from_numpy(read_rows(base, bs)).T, k)
            cand_s, cand_i = torch.cat((best_s, block_s), 1), torch.cat((best_i, block_i + bs.start), 1)
            order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :k]  # earlier blocks win ties
            best_s, best_i = cand_s.gather(1, order), cand_i.gather(1, order)
        yield qs, best_s.numpy(), best_i.numpy()


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


def kmeans(x: ArrayRows, k: int, backend: str = "auto", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each row, centers (k, D)): k-means++ and Lloyd in torch (eval.clustering), or faiss's, trained
    on at most max(256 k, KMEANS_MIN_SAMPLE) rows drawn at random (all of them below that: faiss's cap, which
    keeps memory bounded) and then every row assigned to its nearest center, a block at a time."""
    if not 1 <= k <= len(x):
        raise ValueError(f"cannot make {k} clusters of {len(x)} images: choose between 1 and {len(x)}")
    size = min(len(x), max(KMEANS_PER_CLUSTER * k, KMEANS_MIN_SAMPLE))
    train = read_rows(x, _sample(len(x), size, seed))
    if choose_index(backend, len(x)) != "exact":  # faiss's k-means, whichever index searches would use
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        model = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, verbose=False,
                             max_points_per_centroid=-(-size // k))  # train on the whole sample, no second one
        model.train(train)
        centers = model.centroids
        assign = np.concatenate([model.index.search(read_rows(x, rows), 1)[1][:, 0]
                                 for rows in _blocks(len(x), FAISS_BLOCK)])
        return assign.astype(np.int64), centers
    sample_assign, centers, _ = exact_kmeans(torch.from_numpy(train), k, restarts=1, seed=seed)
    if size == len(x):
        return sample_assign.numpy().astype(np.int64), centers.numpy()
    assign = np.concatenate([nearest_center(torch.from_numpy(read_rows(x, rows)), centers)[1].numpy()
                             for rows in _blocks(len(x), BLOCK)])
    return assign.astype(np.int64), centers.numpy()
