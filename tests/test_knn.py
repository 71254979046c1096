"""Evaluation: weighted k-NN on known feature geometries, and the image embeddings it reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import N_TEST, N_TRAIN, random_rgb, save_image, small_vit

from dinolab.data import FashionMNIST, ImageFolder
from dinolab.device import resolve
from dinolab.eval import PixelBaseline, extract_tokens, knn, knn_classify

CPU = resolve("cpu", "fp32")


def clusters(n_per_class: int, num_classes: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(dim)[:num_classes] * 5
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    features = centers[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return features, labels


def reference_top1(train_f, train_y, test_f, test_y, k: int, temperature: float) -> float:
    """One test image at a time, votes summed in a Python loop."""
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    correct = 0
    for x, y in zip(test_f, test_y, strict=True):
        sims = train_f @ x
        top = sims.topk(k)
        votes: dict[int, float] = {}
        for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            votes[int(train_y[i])] = votes.get(int(train_y[i]), 0.0) + float(np.exp(s / temperature))
        correct += max(votes, key=votes.get) == int(y)
    return 100.0 * correct / len(test_y)


def test_separable_clusters_are_classified_perfectly() -> None:
    train_f, train_y = clusters(20, 4, 16, noise=0.3, seed=0)
    test_f, test_y = clusters(10, 4, 16, noise=0.3, seed=1)
    results = knn_classify(train_f, train_y, test_f, test_y, ks=(1, 5, 20))
    assert set(results) == {1, 5, 20}
    for r in results.values():
        assert r["top1"] == 100.0 and r["top5"] == 100.0


def test_random_labels_give_chance_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    train_f, test_f = torch.randn(300, 32, generator=g), torch.randn(300, 32, generator=g)
    train_y, test_y = torch.randint(0, 10, (300,), generator=g), torch.randint(0, 10, (300,), generator=g)
    results = knn_classify(train_f, train_y, test_f, test_y, ks=(10, 20))
    for r in results.values():
        assert r["top1"] < 20.0  # chance is 10%
        assert 35.0 < r["top5"] < 65.0  # chance is 50%


@pytest.mark.parametrize("k", [1, 3, 10])
def test_knn_matches_a_loop_reference(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    train_f, test_f = torch.randn(60, 8, generator=g), torch.randn(40, 8, generator=g)
    train_y = torch.randint(0, 5, (60,), generator=g)
    test_y = torch.randint(0, 5, (40,), generator=g)
    result = knn_classify(train_f, train_y, test_f, test_y, ks=(k,), temperature=0.07)
    assert result[k]["top1"] == pytest.approx(reference_top1(train_f, train_y, test_f, test_y, k, 0.07))


def test_several_k_at_once_equal_separate_calls_and_chunking_does_not_matter() -> None:
    g = torch.Generator().manual_seed(1)
    train_f, test_f = torch.randn(80, 8, generator=g), torch.randn(50, 8, generator=g)
    train_y, test_y = torch.randint(0, 6, (80,), generator=g), torch.randint(0, 6, (50,), generator=g)
    together = knn_classify(train_f, train_y, test_f, test_y, ks=(20, 5, 5, 1))
    assert list(together) == [1, 5, 20]  # sorted, duplicates merged
    for k in (1, 5, 20):
        assert together[k] == knn_classify(train_f, train_y, test_f, test_y, ks=(k,))[k]
    assert knn_classify(train_f, train_y, test_f, test_y, ks=(1, 5, 20), chunk_size=7) == together


def test_knn_uses_cosine_similarity() -> None:
    train_f, train_y = clusters(10, 3, 8, noise=0.5, seed=2)
    test_f, test_y = clusters(5, 3, 8, noise=2.0, seed=3)
    base = knn_classify(train_f, train_y, test_f, test_y, ks=(5,))
    scaled = knn_classify(train_f * 10, train_y, test_f * 0.1, test_y, ks=(5,))
    assert base == scaled


def test_top5_with_fewer_than_five_classes_is_always_right() -> None:
    g = torch.Generator().manual_seed(0)
    result = knn_classify(torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g),
                          torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g), ks=(5,))
    assert result[5]["top5"] == 100.0


def test_knn_errors() -> None:
    f, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="dimension 4 but test features 5"):
        knn_classify(f, y, torch.randn(3, 5), torch.zeros(3, dtype=torch.long), ks=(1,))
    with pytest.raises(ValueError, match="k=11 is larger than the 10 training images"):
        knn_classify(f, y, f, y, ks=(1, 11))
    with pytest.raises(ValueError, match="one label"):
        knn_classify(f, y[:5], f, y, ks=(1,))
    with pytest.raises(ValueError, match="label -1"):
        knn_classify(f, torch.full((10,), -1), f, y, ks=(1,))


# ---------------------------------------------------------------- the embeddings k-NN reads


def embeddings(model: torch.nn.Module, dataset, mean, std, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """What `knn` classifies: the last block's [CLS] of `extract_tokens`, and the labels."""
    tokens = extract_tokens(model, dataset, mean, std, n_blocks=1, runtime=CPU, quiet=True, **kwargs)
    return tokens.embedding, tokens.labels


def test_embeddings_shapes_and_values(fmnist_dir: Path) -> None:
    ds = FashionMNIST(fmnist_dir, "test")
    model = small_vit().eval()
    feats, labels = embeddings(model, ds, (0.3,), (0.35,), batch_size=7)
    assert feats.shape == (N_TEST, 32) and feats.dtype == torch.float32
    assert torch.equal(labels, ds.labels)
    with torch.no_grad():
        expected = model((ds.images.float() / 255 - 0.3) / 0.35)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-4)
    one_batch, _ = embeddings(model, ds, (0.3,), (0.35,), batch_size=64)
    torch.testing.assert_close(feats, one_batch, atol=1e-5, rtol=1e-4)


def test_embeddings_are_the_forward_output_to_the_bit(fmnist_dir: Path) -> None:
    """k-NN reads get_intermediate_layers' last [CLS]: the same numbers as forward(), which k-NN read before."""
    ds = FashionMNIST(fmnist_dir, "test")
    model = small_vit().eval()
    feats, _ = embeddings(model, ds, (0.3,), (0.35,), batch_size=7)
    x = (ds.images.float() / 255 - 0.3) / 0.35
    with torch.no_grad():
        expected = torch.cat([model(x[i : i + 7]) for i in range(0, len(x), 7)])
    assert torch.equal(feats, expected)


def test_embeddings_skip_unreadable_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        save_image(tmp_path / "a" / f"{i}.png", random_rgb(rng))
    save_image(tmp_path / "b" / "0.png", random_rgb(rng))
    (tmp_path / "b" / "bad.jpg").write_bytes(b"not a jpeg")
    ds = ImageFolder(tmp_path, size=28, resize_size=32, channels=1)
    feats, labels = embeddings(small_vit(), ds, (0.5,), (0.5,), batch_size=2)
    assert feats.shape == (4, 32)
    assert labels.tolist() == [0, 0, 0, 1]


def test_pixel_baseline_embeddings(fmnist_dir: Path) -> None:
    ds = FashionMNIST(fmnist_dir, "train")
    feats, labels = embeddings(PixelBaseline(7), ds, (0.5,), (0.25,))
    assert feats.shape == (N_TRAIN, 28 * 28)
    torch.testing.assert_close(feats, ((ds.images.float() / 255 - 0.5) / 0.25).flatten(1))
    assert torch.equal(labels, ds.labels)


def test_knn_end_to_end_on_pixels(fmnist_dir: Path) -> None:
    """The fixture's classes are bright squares in different quadrants: raw pixels separate them."""
    train, test = FashionMNIST(fmnist_dir, "train"), FashionMNIST(fmnist_dir, "test")
    results = knn(PixelBaseline(7), train, test, k=(1, 5), mean=(0.3,), std=(0.35,), runtime=CPU, quiet=True)
    assert set(results) == {1, 5}
    assert results[1]["top1"] == 100.0
