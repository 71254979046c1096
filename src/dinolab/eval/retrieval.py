"""Image retrieval by cosine similarity: recall@k and mAP (the DINO paper's retrieval protocol, on labeled sets).

Every query ranks the whole gallery by cosine similarity; gallery images with the query's label are relevant.
recall@k: fraction of queries with at least one relevant image among the first k. AP of a query: the mean,
over its relevant gallery images, of the precision at each one's rank (AP over the first `depth` ranks is
normalized by min(relevant, depth); the default depth is the whole gallery, the exact AP). Queries without any
relevant gallery image are left out and counted. When the queries are the gallery (`exclude_self`), a query
never retrieves itself.

Search is exact either way: chunked matrix products in torch, or faiss's flat inner-product index
(faiss-cpu, optional) whose multi-threaded kernels pay off on big galleries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.eval.features import check_features


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def ranked_chunks(
    queries: Tensor, gallery: Tensor, depth: int, exclude_self: bool, backend: str, chunk_size: int
) -> Iterator[tuple[int, Tensor]]:
    """(first query index, (chunk, depth) gallery indices sorted by decreasing cosine similarity)."""
    q, g = F.normalize(queries.float(), dim=1), F.normalize(gallery.float(), dim=1)
    extra = int(exclude_self)
    if backend == "faiss":
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())  # as many threads as torch may use, no more
        index = faiss.IndexFlatIP(g.shape[1])
        index.add(g.contiguous().numpy())
    for start in range(0, len(q), chunk_size):
        chunk = q[start : start + chunk_size]
        own = torch.arange(start, start + len(chunk)).unsqueeze(1)
        if backend == "faiss":
            idx = torch.from_numpy(index.search(chunk.contiguous().numpy(), depth + extra)[1])
        else:
            sims = chunk @ g.T
            if exclude_self:
                sims.scatter_(1, own, float("-inf"))
            idx = sims.topk(depth + extra, dim=1).indices
        if exclude_self:  # drop each query's own index (with torch: always the last, ranked at -inf)
            keep = idx != own
            keep[keep.sum(dim=1) > depth, -1] = False  # own index not retrieved: drop the deepest instead
            idx = idx[keep].view(len(chunk), depth)
        yield start, idx


def retrieval(
    query_x: Tensor,
    query_y: Tensor,
    gallery_x: Tensor,
    gallery_y: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    exclude_self: bool = False,
    depth: int | None = None,
    backend: str = "auto",
    chunk_size: int = 256,
) -> dict[str, float]:
    """recall@k (%) for every k and mAP (%) of the queries against the gallery."""
    check_features(gallery_x, gallery_y, query_x, query_y, names=("gallery", "query"))
    if exclude_self and len(query_x) != len(gallery_x):
        raise ValueError("exclude_self means the queries are the gallery, but their sizes differ")
    available = len(gallery_x) - int(exclude_self)
    depth = min(depth or available, available)
    if max(ks) > depth:
        raise ValueError(f"recall@{max(ks)} needs at least {max(ks)} ranked gallery images, only {depth} are ranked")
    if backend == "auto":
        backend = "faiss" if faiss_available() and len(query_x) * len(gallery_x) >= 10**8 else "torch"
    if backend not in ("torch", "faiss"):
        raise ValueError(f"retrieval backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    classes = int(max(gallery_y.max(), query_y.max())) + 1
    per_class = torch.bincount(gallery_y, minlength=classes)
    relevant_total = per_class[query_y] - (1 if exclude_self else 0)  # the query itself is not in its gallery
    hits = {k: 0.0 for k in ks}
    ap_sum, counted = 0.0, 0
    ranks = torch.arange(1, depth + 1, dtype=torch.float64)
    for start, idx in ranked_chunks(query_x, gallery_x, depth, exclude_self, backend, chunk_size):
        truth = query_y[start : start + len(idx)]
        relevant = gallery_y[idx] == truth.unsqueeze(1)
        n_rel = relevant_total[start : start + len(idx)]
        valid = n_rel > 0
        for k in ks:
            hits[k] += float(relevant[valid, :k].any(dim=1).sum())
        precision = relevant.cumsum(dim=1, dtype=torch.float64) / ranks
        ap = (precision * relevant).sum(dim=1) / n_rel.clamp(max=depth).clamp(min=1)
        ap_sum += float(ap[valid].sum())
        counted += int(valid.sum())
    if counted == 0:
        raise ValueError("no query has a relevant (same-class) image in the gallery")
    result = {f"recall@{k}": 100.0 * hits[k] / counted for k in ks}
    result["mAP"] = 100.0 * ap_sum / counted
    result.update(queries=counted, queries_without_relevant=len(query_x) - counted, gallery=len(gallery_x),
                  backend=backend)
    return result
