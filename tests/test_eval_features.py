"""Feature extraction for the evaluation protocols: tokens, preprocessing, the pixel baseline, the disk cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import N_TEST, small_vit
from torch import nn

from dinolab.data import FashionMNIST
from dinolab.device import resolve
from dinolab.eval import PixelBaseline, Preprocess, extract_patch_tokens, extract_tokens
from dinolab.eval.features import check_features, holdout_split

CPU = resolve("cpu", "fp32")
MEAN, STD = (0.3,), (0.35,)


def normalized(ds: FashionMNIST) -> torch.Tensor:
    return (ds.images.float() / 255 - 0.3) / 0.35


def test_tokens_are_the_models_cls_and_pooled_patches(fmnist_dir: Path) -> None:
    ds = FashionMNIST(fmnist_dir, "test")
    model = small_vit(depth=3).eval()
    feats = extract_tokens(model, ds, MEAN, STD, n_blocks=2, batch_size=5, runtime=CPU, quiet=True)
    assert feats.cls.shape == (N_TEST, 2, 32) and feats.avgpool.shape == (N_TEST, 32) and len(feats) == N_TEST
    with torch.no_grad():
        out = model.forward_features(normalized(ds))
        layers = model.get_intermediate_layers(normalized(ds), 2, return_class_token=True)
    torch.testing.assert_close(feats.embedding, out["x_norm_clstoken"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(feats.cls[:, 0], layers[0][1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(feats.avgpool, out["x_norm_patchtokens"].mean(1), atol=1e-5, rtol=1e-4)
    assert torch.equal(feats.labels, ds.labels)
    # DINOv2's linear inputs: [CLS] of the last n blocks, then the pooled patches
    assert feats.select(1).shape == (N_TEST, 32)
    both = feats.select(2, avgpool=True)
    assert both.shape == (N_TEST, 96)
    torch.testing.assert_close(both[:, 32:64], feats.embedding)
    with pytest.raises(ValueError, match="last 3 blocks but only 2"):
        feats.select(3)


def test_a_shallow_model_gives_the_blocks_it_has(fmnist_dir: Path) -> None:
    feats = extract_tokens(small_vit(depth=1), FashionMNIST(fmnist_dir, "test"), MEAN, STD, n_blocks=4, runtime=CPU,
                           quiet=True)
    assert feats.num_blocks == 1


def test_preprocess_resizes_and_center_crops() -> None:
    images = torch.arange(2 * 1 * 28 * 28, dtype=torch.uint8).view(2, 1, 28, 28)
    assert Preprocess()(images) is images
    assert Preprocess(resize=32, crop=28)(images).shape == (2, 1, 28, 28)
    assert torch.equal(Preprocess(crop=14)(images), images[:, :, 7:21, 7:21])


def test_test_time_resize_changes_the_patch_grid(fmnist_dir: Path) -> None:
    ds = FashionMNIST(fmnist_dir, "test")
    tokens, images = extract_patch_tokens(small_vit(), ds, MEAN, STD, Preprocess(resize=42, crop=42), runtime=CPU,
                                          quiet=True)
    assert tokens.shape == (N_TEST, 36, 32) and images.shape == (N_TEST, 1, 42, 42) and images.dtype == torch.uint8


def test_pixel_baseline_tokens_are_pixels(fmnist_dir: Path) -> None:
    ds = FashionMNIST(fmnist_dir, "test")
    feats = extract_tokens(PixelBaseline(7), ds, MEAN, STD, runtime=CPU, quiet=True)
    torch.testing.assert_close(feats.embedding, normalized(ds).flatten(1))
    tokens, _ = extract_patch_tokens(PixelBaseline(7), ds, MEAN, STD, runtime=CPU, quiet=True)
    assert tokens.shape == (N_TEST, 16, 49)
    torch.testing.assert_close(tokens[:, 1], normalized(ds)[:, 0, :7, 7:14].flatten(1))  # row-major patch order


def test_a_model_without_blocks_is_refused(fmnist_dir: Path) -> None:
    with pytest.raises(ValueError, match="Flatten has no transformer blocks"):
        extract_tokens(nn.Flatten(), FashionMNIST(fmnist_dir, "test"), MEAN, STD, runtime=CPU, quiet=True)


def test_cache_hits_without_running_the_model_and_misses_on_new_weights(fmnist_dir: Path, tmp_path: Path) -> None:
    ds = FashionMNIST(fmnist_dir, "test")
    model = small_vit().eval()
    calls = []
    model.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    first = extract_tokens(model, ds, MEAN, STD, runtime=CPU, quiet=True, cache_dir=tmp_path)
    ran = len(calls)
    assert ran > 0 and len(list(tmp_path.iterdir())) == 1
    again = extract_tokens(model, ds, MEAN, STD, runtime=CPU, quiet=True, cache_dir=tmp_path)
    assert len(calls) == ran  # served from the memory-mapped cache
    for name in ("cls", "avgpool", "labels"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    extract_tokens(model, ds, MEAN, STD, preprocess=Preprocess(35, 28), runtime=CPU, quiet=True, cache_dir=tmp_path)
    with torch.no_grad():
        model.cls_token.add_(1.0)  # other weights, same object and path
    extract_tokens(model, ds, MEAN, STD, runtime=CPU, quiet=True, cache_dir=tmp_path)
    assert len(calls) == 3 * ran and len(list(tmp_path.iterdir())) == 3


def test_cache_refuses_a_dataset_it_cannot_identify(tmp_path: Path) -> None:
    images, labels = torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)
    data = torch.utils.data.TensorDataset(images, labels)
    with pytest.raises(ValueError, match="cannot identify a TensorDataset"):
        extract_tokens(small_vit(), data, MEAN, STD, runtime=CPU, quiet=True, cache_dir=tmp_path)


def test_feature_checks_name_the_problem() -> None:
    x, y = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="train features have dimension 4 but test features 6"):
        check_features(x, y, torch.randn(3, 6), y[:3])
    with pytest.raises(ValueError, match="10 train feature rows but 9 labels"):
        check_features(x, y[:9], x, y)
    with pytest.raises(ValueError, match="label -1"):
        check_features(x, y - 1, x, y)


def test_holdout_split_is_seeded_and_disjoint() -> None:
    fit, val = holdout_split(100, 0.1, seed=3)
    assert len(val) == 10 and len(fit) == 90 and len(set(fit.tolist()) | set(val.tolist())) == 100
    assert torch.equal(val, holdout_split(100, 0.1, seed=3)[1])
    with pytest.raises(ValueError, match="empty split"):
        holdout_split(5, 0.1, seed=0)
