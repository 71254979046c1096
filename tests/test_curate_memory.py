"""`dinolab curate` out of core: every stage gives the same answer on a memory-mapped embedding file (and on
`Rows`, row indices into it) as on the array in memory, reads it a bounded block of rows at a time, and the
pipeline writes the normalized embeddings once and reads them memory-mapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import needs_faiss

import dinolab.curate.search as search_module
from dinolab.curate import (
    Rows,
    balanced_sample,
    deduplicate,
    hierarchical_kmeans,
    kmeans,
    knn,
    normalized,
    retrieve_clusters,
    retrieve_per_image,
    too_close,
)
from dinolab.curate.pipeline import embed_images, weights_digest
from dinolab.hub import dinov2_vits14, load_model, save_backbone

BACKENDS = ["exact", pytest.param("faiss", marks=needs_faiss), pytest.param("ivf", marks=needs_faiss)]


def pool_with_copies(n: int, dim: int = 16, copies: int = 40, seed: int = 0) -> np.ndarray:
    """Unit rows around 20 directions, the last `copies` rows near-duplicates of earlier ones."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((20, dim))
    x = means[rng.integers(0, 20, n - copies)] + 0.5 * rng.standard_normal((n - copies, dim))
    originals = rng.choice(n - copies, copies, replace=False)
    return normalized(np.concatenate([x, x[originals] + 0.01 * rng.standard_normal((copies, dim))]))


@pytest.fixture
def on_disk(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(in memory, the same rows memory-mapped from a .npy)."""
    x = pool_with_copies(1500)
    np.save(tmp_path / "x.npy", x)
    return x, np.load(tmp_path / "x.npy", mmap_mode="r")


@pytest.mark.parametrize("backend", BACKENDS)
def test_stages_on_a_memmap_equal_the_stages_in_memory(backend: str, on_disk: tuple[np.ndarray, np.ndarray]) -> None:
    x, mapped = on_disk
    in_memory, from_disk = deduplicate(x, 0.95, backend=backend), deduplicate(mapped, 0.95, backend=backend)
    assert from_disk.groups == in_memory.groups and len(in_memory.groups) >= 40
    np.testing.assert_array_equal(from_disk.keep, in_memory.keep)
    seeds = x[:30]
    np.testing.assert_array_equal(retrieve_per_image(mapped, seeds, 4, backend),
                                  retrieve_per_image(x, seeds, 4, backend))
    np.testing.assert_array_equal(retrieve_clusters(mapped, seeds, 12, per_cluster=5, backend=backend),
                                  retrieve_clusters(x, seeds, 12, per_cluster=5, backend=backend))
    kmeans_backend = "exact" if backend == "exact" else "faiss"
    labels = hierarchical_kmeans(mapped, [30, 5], kmeans_backend)
    for a, b in zip(labels, hierarchical_kmeans(x, [30, 5], kmeans_backend), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(balanced_sample(labels, 200), balanced_sample(hierarchical_kmeans(
        x, [30, 5], kmeans_backend), 200))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_of_a_memmap_equal_the_copied_rows(backend: str, on_disk: tuple[np.ndarray, np.ndarray]) -> None:
    """What the pipeline passes on after a stage: indices into the file, not `x[rows]`."""
    x, mapped = on_disk
    rows = np.flatnonzero(np.random.default_rng(1).random(len(x)) < 0.7)
    subset, copied = Rows(mapped, rows), x[rows]
    assert subset.shape == copied.shape and len(subset) == len(copied)
    for a, b in zip(knn(subset, subset, 5, backend), knn(copied, copied, 5, backend), strict=True):
        np.testing.assert_array_equal(a, b)
    assert deduplicate(subset, 0.95, backend=backend).groups == deduplicate(copied, 0.95, backend=backend).groups
    for a, b in zip(too_close(subset, x[:10], 0.99, backend), too_close(copied, x[:10], 0.99, backend), strict=True):
        np.testing.assert_array_equal(a, b)
    kmeans_backend = "exact" if backend == "exact" else "faiss"
    for a, b in zip(kmeans(subset, 8, kmeans_backend), kmeans(copied, 8, kmeans_backend), strict=True):
        np.testing.assert_array_equal(a, b)


class CountingRows:
    """An (N, D) array that records how many rows each read returns (as a memory-mapped file would be read)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, self.shape, self.reads = x, x.shape, []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        block = self.x[key]
        self.reads.append(len(block) if block.ndim == 2 else 1)
        return block


@pytest.mark.parametrize("backend", ["exact", pytest.param("faiss", marks=needs_faiss),
                                     pytest.param("ivf", marks=needs_faiss), pytest.param("ivfpq", marks=needs_faiss)])
def test_no_stage_reads_the_whole_array_at_once(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    n, bound = 12_000, 4096  # the exact search's block; faiss's and the samples' are lowered below it
    for name, value in (("FAISS_BLOCK", 3000), ("IVF_TRAIN_MAX", 2000), ("MIN_TRAIN_PER_LIST", 4),
                        ("KMEANS_MIN_SAMPLE", 1000), ("KMEANS_PER_CLUSTER", 100), ("RERANK_FLOATS", 1 << 16)):
        monkeypatch.setattr(search_module, name, value)
    x = pool_with_copies(n)
    counted = CountingRows(x)
    pool = Rows(counted, np.arange(n))
    dedup = deduplicate(pool, 0.95, neighbors=8, backend=backend)
    assert len(dedup.groups) >= 40 - (backend != "exact") * 4  # approximate indexes may miss a few
    retrieve_per_image(pool, x[:50], 4, backend)
    kmeans_backend = "exact" if backend == "exact" else "faiss"
    labels = hierarchical_kmeans(pool, [20, 4], kmeans_backend)
    assert len(balanced_sample(labels, 500)) == 500
    assert counted.reads and max(counted.reads) <= bound < n, max(counted.reads)
    assert sum(counted.reads) >= 3 * n  # every row was read, by each stage


def test_the_pipeline_writes_normalized_embeddings_once_and_maps_them(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import random_rgb, save_image

    rng = np.random.default_rng(0)
    for i in range(6):
        save_image(tmp_path / "pool" / f"{i}.png", random_rgb(rng, 32, 32))
    (tmp_path / "pool" / "broken.png").write_bytes(b"not a png")
    model = dinov2_vits14(depth=1, embed_dim=32, num_heads=2, img_size=28, layerscale_init=None)
    loaded = load_model(save_backbone(model, tmp_path / "tiny.safetensors"))

    def embed() -> object:
        return embed_images(loaded, weights_digest(loaded), tmp_path / "pool", "pool", tmp_path / "work", 28, 4,
                            None, quiet=True)

    data = embed()
    assert isinstance(data.x, np.memmap) and data.x.shape == (6, 32) and len(data.unreadable) == 1
    raw = np.load(next((tmp_path / "work").glob("pool-*[0-9a-f].npy")))
    np.testing.assert_allclose(data.x, normalized(raw[~np.isnan(raw).any(axis=1)]), rtol=1e-6)
    monkeypatch.setattr("dinolab.curate.pipeline.write_normalized", lambda *a: pytest.fail("normalized again"))
    np.testing.assert_array_equal(embed().x, data.x)
