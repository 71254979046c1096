"""Retrieval (torch and faiss), copy detection and clustering metrics on inputs with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_vit
from sklearn.metrics import adjusted_rand_score, average_precision_score, normalized_mutual_info_score

from dinolab.data import FashionMNIST
from dinolab.device import resolve
from dinolab.eval import (
    PixelBaseline,
    ari,
    cluster_accuracy,
    clustering,
    copy_detection,
    kmeans,
    make_copy,
    nmi,
    retrieval,
)
from dinolab.eval.clustering import nearest_center

CPU = resolve("cpu", "fp32")


def random_set(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randint(0, classes, (n,), generator=g)


def reference_map(query_x, query_y, gallery_x, gallery_y, exclude_self: bool) -> float:
    """scikit-learn's average precision of each query's cosine ranking, averaged."""
    q = torch.nn.functional.normalize(query_x, dim=1)
    g = torch.nn.functional.normalize(gallery_x, dim=1)
    aps = []
    for i, (x, y) in enumerate(zip(q, query_y, strict=True)):
        scores, relevant = (g @ x).numpy(), (gallery_y == y).numpy()
        if exclude_self:
            scores, relevant = np.delete(scores, i), np.delete(relevant, i)
        if relevant.any():
            aps.append(average_precision_score(relevant, scores))
    return 100.0 * float(np.mean(aps))


def test_exact_copies_in_the_gallery_are_found_first() -> None:
    gallery_x, _ = random_set(50, 16, 5, seed=0)
    ids = torch.arange(50)
    result = retrieval(gallery_x[10:30] * 3.0, ids[10:30], gallery_x, ids)  # scaled copies: same cosine
    assert result["recall@1"] == 100.0 and result["mAP"] == 100.0 and result["queries"] == 20


def test_map_and_recall_match_a_reference() -> None:
    query_x, query_y = random_set(30, 8, 4, seed=1)
    gallery_x, gallery_y = random_set(80, 8, 4, seed=2)
    result = retrieval(query_x, query_y, gallery_x, gallery_y, ks=(1, 5, 10))
    assert result["mAP"] == pytest.approx(reference_map(query_x, query_y, gallery_x, gallery_y, False), abs=1e-4)
    sims = torch.nn.functional.normalize(query_x, dim=1) @ torch.nn.functional.normalize(gallery_x, dim=1).T
    top5 = gallery_y[sims.topk(5).indices]
    assert result["recall@5"] == pytest.approx(100.0 * float((top5 == query_y[:, None]).any(1).float().mean()))


def test_query_set_equal_to_gallery_excludes_itself() -> None:
    x, y = random_set(40, 8, 3, seed=3)
    result = retrieval(x, y, x, y, exclude_self=True, chunk_size=7)
    assert result["recall@1"] < 100.0  # a query that found itself would always be right
    assert result["mAP"] == pytest.approx(reference_map(x, y, x, y, True), abs=1e-4)
    with pytest.raises(ValueError, match="sizes differ"):
        retrieval(x[:5], y[:5], x, y, exclude_self=True)


def test_faiss_and_torch_give_the_same_results() -> None:
    query_x, query_y = random_set(60, 12, 5, seed=4)
    gallery_x, gallery_y = random_set(200, 12, 5, seed=5)
    for args in ((query_x, query_y, gallery_x, gallery_y), (gallery_x, gallery_y, gallery_x, gallery_y)):
        exclude = args[0] is args[2]
        for depth in (None, 20):
            a = retrieval(*args, exclude_self=exclude, depth=depth, backend="torch")
            b = retrieval(*args, exclude_self=exclude, depth=depth, backend="faiss")
            assert (a["backend"], b["backend"]) == ("torch", "faiss")
            for key in ("recall@1", "recall@5", "recall@10", "mAP"):
                assert a[key] == pytest.approx(b[key], abs=1e-9), key


def test_retrieval_rejects_bad_input() -> None:
    x, y = random_set(10, 4, 2, seed=0)
    with pytest.raises(ValueError, match="gallery features have dimension 4 but query features 5"):
        retrieval(torch.randn(3, 5), y[:3], x, y)
    with pytest.raises(ValueError, match="recall@10 needs at least 10 ranked gallery images, only 9"):
        retrieval(x, y, x, y, exclude_self=True)
    with pytest.raises(ValueError, match="backend must be"):
        retrieval(x, y, x, y, ks=(1,), backend="annoy")


# ---------------------------------------------------------------- copy detection


def test_copies_are_edited_versions_of_the_same_shape() -> None:
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 24), dtype=np.uint8))
    copy = make_copy(image, np.random.default_rng(1))
    assert copy.shape == image.shape and copy.dtype == torch.uint8
    assert not torch.equal(copy, image)
    assert torch.equal(copy, make_copy(image, np.random.default_rng(1)))
    gray = make_copy(image[:1], np.random.default_rng(2))
    assert gray.shape == (1, 32, 24)


def test_copy_detection_end_to_end(fmnist_dir: Path) -> None:
    ds = FashionMNIST(fmnist_dir, "test")
    pixels = copy_detection(PixelBaseline(7), ds, (0.3,), (0.35,), runtime=CPU, quiet=True)
    assert pixels["images"] == len(ds) and 0.0 < pixels["recall@1"] <= 100.0
    assert pixels["mAP"] >= pixels["recall@1"]  # AP is 1 for a hit at rank 1, above 0 otherwise
    vit = copy_detection(small_vit(), ds, (0.3,), (0.35,), runtime=CPU, quiet=True)
    assert 0.0 <= vit["recall@1"] <= 100.0


# ---------------------------------------------------------------- clustering


def test_hungarian_matching_on_a_permuted_clustering_is_perfect() -> None:
    labels = torch.randint(0, 6, (300,), generator=torch.Generator().manual_seed(0))
    permuted = torch.tensor([3, 5, 0, 1, 4, 2])[labels]
    assert cluster_accuracy(permuted, labels) == 1.0
    assert nmi(permuted, labels) == pytest.approx(1.0) and ari(permuted, labels) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_and_ari_match_scikit_learn(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 7, (200,), generator=g)
    b[:100] = a[:100]  # partly agreeing partitions
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a.numpy(), b.numpy()), abs=1e-10)
    assert ari(a, b) == pytest.approx(adjusted_rand_score(a.numpy(), b.numpy()), abs=1e-10)
    single = torch.zeros(10, dtype=torch.long)
    assert nmi(single, single) == normalized_mutual_info_score(single, single)
    assert ari(single, single) == adjusted_rand_score(single, single)


def test_kmeans_recovers_separated_clusters_and_random_labels_score_near_zero() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat_interleave(40)
    x = 4 * torch.eye(16)[labels] + 0.3 * torch.randn(200, 16, generator=g)
    result = clustering(x, labels, restarts=3)
    assert result["accuracy"] == 100.0 and result["nmi"] == pytest.approx(100.0) and result["k"] == 5
    shuffled = labels[torch.randperm(200, generator=g)]
    noise = clustering(x, shuffled, restarts=3)
    assert noise["accuracy"] < 40.0 and abs(noise["ari"]) < 5.0  # chance accuracy is ~20%
    assign, centers, inertia = kmeans(x, 5, restarts=2, seed=1)
    assert centers.shape == (5, 16) and len(assign.unique()) == 5 and inertia > 0
    with pytest.raises(ValueError, match="k=300"):
        kmeans(x, 300)


def test_nearest_center_in_blocks_equals_the_whole_distance_matrix() -> None:
    """k-means assigns a block of rows at a time (bounded memory): the same nearest centers and distances."""
    g = torch.Generator().manual_seed(0)
    x, centers = torch.randn(1000, 24, generator=g), torch.randn(37, 24, generator=g)
    whole_dist, whole_assign = torch.cdist(x, centers).square().min(dim=1)
    dist, assign = nearest_center(x, centers, block=96)  # the last block is partial
    torch.testing.assert_close(dist, whole_dist)
    assert torch.equal(assign, whole_assign)
