"""`dinolab embed`: features of every image in a folder, .npy (+ paths) or .parquet, resumable, unreadable
images kept as NaN rows, image sizes that are not a multiple of the patch size cropped down."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_rgb, save_image

import dinolab.hub.embed as embed_module
from dinolab.cli import main
from dinolab.config import IMAGENET_MEAN, IMAGENET_STD
from dinolab.data.datasets import ImageFolder
from dinolab.device import resolve
from dinolab.hub import dinov2_vits14, load_backbone, save_backbone
from dinolab.hub.embed import embed_folder

N_IMAGES = 7
FP32 = resolve("cpu", "fp32")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for i in range(N_IMAGES):
        save_image(root / ("a" if i % 2 else "b") / f"{i}.png", random_rgb(rng, 40 + i, 50))
    return root


@pytest.fixture
def model() -> torch.nn.Module:
    return dinov2_vits14(depth=1, embed_dim=32, num_heads=2, img_size=28).eval()


def expected_features(model: torch.nn.Module, folder: Path, size: int) -> np.ndarray:
    """Straight from the model on the same decoded, normalized crops."""
    dataset = ImageFolder(folder, size=size)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))]).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model.forward_features(x)
    return torch.cat((out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(1)), dim=1).numpy()


def test_npy_with_paths(model, folder: Path, tmp_path: Path) -> None:
    out = embed_folder(model, folder, tmp_path / "feats.npy", image_size=28, features=("cls", "patch_mean"),
                       batch_size=3, chunk_size=4, quiet=True, runtime=FP32)
    feats = np.load(out)
    assert feats.shape == (N_IMAGES, 64) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, expected_features(model, folder, 28), atol=1e-5)
    paths = (tmp_path / "feats.npy.paths.txt").read_text().split()
    assert paths == sorted(paths) and paths[0] == "a/1.png" and len(paths) == N_IMAGES
    assert not (tmp_path / "feats.npy.parts").exists()


def test_parquet_with_file_names(model, folder: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = embed_folder(model, folder, tmp_path / "feats.parquet", image_size=28, features=("patch_mean",), quiet=True,
                       runtime=FP32)
    table = pq.read_table(out)
    assert table.column_names == ["path", "patch_mean"]
    assert table.num_rows == N_IMAGES and len(table["patch_mean"][0]) == 32
    np.testing.assert_allclose(np.array(table["patch_mean"].to_pylist()), expected_features(model, folder, 28)[:, 32:],
                               atol=1e-5)


def test_resumes_after_an_interruption(model, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = embed_folder(model, folder, tmp_path / "ref.npy", image_size=28, chunk_size=2, quiet=True, runtime=FP32)
    calls = []
    features = embed_module._features

    def stop_on_third_batch(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return features(*args)

    monkeypatch.setattr(embed_module, "_features", stop_on_third_batch)
    out = tmp_path / "feats.npy"
    with pytest.raises(KeyboardInterrupt):
        embed_folder(model, folder, out, image_size=28, batch_size=2, chunk_size=2, quiet=True, runtime=FP32)
    assert sorted(p.name for p in (tmp_path / "feats.npy.parts").glob("0*.npy")) == ["000000000.npy", "000000002.npy"]
    assert not out.exists()
    calls.clear()
    embed_folder(model, folder, out, image_size=28, batch_size=2, chunk_size=2, quiet=True, runtime=FP32)
    assert len(calls) == 2  # only the chunks of images 4-5 and 6 were left
    np.testing.assert_array_equal(np.load(out), np.load(reference))


def test_unreadable_image_keeps_its_row(model, folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (folder / "a" / "3.png").write_bytes(b"not a png")
    with caplog.at_level("WARNING"):
        feats = np.load(embed_folder(model, folder, tmp_path / "f.npy", image_size=28, quiet=True, runtime=FP32))
    paths = (tmp_path / "f.npy.paths.txt").read_text().split()
    bad = paths.index("a/3.png")
    assert np.isnan(feats[bad]).all() and not np.isnan(np.delete(feats, bad, axis=0)).any()
    assert "1 of 7 images could not be read" in caplog.text


def test_image_size_not_a_multiple_of_the_patch_size_is_cropped_down(model, folder: Path, tmp_path: Path) -> None:
    feats = np.load(embed_folder(model, folder, tmp_path / "f.npy", image_size=33, quiet=True, runtime=FP32))  # -> 28
    np.testing.assert_allclose(feats, expected_features(model, folder, 28)[:, :32], atol=1e-5)
    with pytest.raises(ValueError, match="smaller than the patch size"):
        embed_folder(model, folder, tmp_path / "g.npy", image_size=10, quiet=True, runtime=FP32)
    with pytest.raises(ValueError, match=r"\.npy or \.parquet"):
        embed_folder(model, folder, tmp_path / "g.csv", quiet=True, runtime=FP32)


def test_cli_embed(model, folder: Path, tmp_path: Path) -> None:
    checkpoint = save_backbone(model, tmp_path / "m.safetensors")
    out = tmp_path / "feats.npy"
    args = ["embed", str(folder), "--checkpoint", str(checkpoint), "--out", str(out), "--image-size", "28",
            "--features", "cls", "patch_mean", "--device", "cpu", "--precision", "fp32", "--quiet"]
    assert main(args) == 0
    np.testing.assert_allclose(np.load(out), expected_features(load_backbone(checkpoint), folder, 28), atol=1e-5)
    assert main(["embed", str(tmp_path / "nowhere"), "--checkpoint", str(checkpoint), "--out", str(out)]) == 1
