"""Visualization inputs: checkpoint loading, image reading, cropping to whole patches, conversions, bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_image, tiny_config

from dinolab.io import CheckpointError
from dinolab.models.build import build_backbone
from dinolab.viz.inputs import VizModel, read_image, read_images


def write_viz_checkpoint(root: Path, **model: object) -> Path:
    """A checkpoint file shaped like a training run's, holding a random-init 2-block ViT-Tiny/7 (28 px, 1 channel)."""
    cfg = tiny_config(root, root / "run", model={"depth": 2, **model})
    backbone = build_backbone(cfg, drop_path_rate=0.0)
    state = {"teacher": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "config": cfg.to_dict()}
    path = root / "checkpoint.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def viz_model(tmp_path_factory: pytest.TempPathFactory) -> VizModel:
    return VizModel.from_checkpoint(write_viz_checkpoint(tmp_path_factory.mktemp("viz_ckpt")))


def test_from_checkpoint(viz_model: VizModel) -> None:
    assert (viz_model.patch_size, viz_model.channels, viz_model.native_size) == (7, 1, 28)
    assert viz_model.mean == (0.3,) and viz_model.std == (0.35,)
    assert not viz_model.backbone.training


def test_from_checkpoint_errors(tmp_path: Path) -> None:
    no_weights = tmp_path / "weights.pth"
    torch.save({"model": {}}, no_weights)
    with pytest.raises(CheckpointError, match="entry 'model' is not a dict of tensors"):
        VizModel.from_checkpoint(no_weights)
    path = write_viz_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    del state["teacher"]["backbone.blocks.1.attn.qkv.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.attn\.qkv\.weight"):
        VizModel.from_checkpoint(path)


def test_to_tensor_normalizes(viz_model: VizModel) -> None:
    x = viz_model.to_tensor([np.full((28, 28, 1), 255, np.uint8), np.zeros((28, 28, 1), np.uint8)])
    assert x.shape == (2, 1, 28, 28)
    assert torch.allclose(x[0], torch.full_like(x[0], (1 - 0.3) / 0.35))
    assert torch.allclose(x[1], torch.full_like(x[1], -0.3 / 0.35))


def test_read_image_crops_to_whole_patches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(30, 45, 3), dtype=np.uint8)
    img = read_image(save_image(tmp_path / "a.png", array), channels=3, patch_size=7)
    assert img.shape == (28, 42, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, array[1:29, 1:43])  # a center crop
    resized = read_image(tmp_path / "a.png", channels=3, patch_size=7, size=56)
    assert resized.shape == (56, 56, 3)


def test_read_image_converts_channels_with_a_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gray = save_image(tmp_path / "gray.png", np.full((14, 14), 100, np.uint8))
    rgb = save_image(tmp_path / "rgb.png", np.full((14, 14, 3), 100, np.uint8))
    with caplog.at_level(logging.INFO, logger="dinolab.viz.inputs"):
        as_rgb = read_image(gray, channels=3, patch_size=7)
        as_gray = read_image(rgb, channels=1, patch_size=7)
    assert as_rgb.shape == (14, 14, 3) and (as_rgb == 100).all()
    assert as_gray.shape == (14, 14, 1) and (as_gray == 100).all()
    assert "gray.png: L image converted to RGB for a 3-channel model" in caplog.text
    assert "rgb.png: RGB image converted to L for a 1-channel model" in caplog.text


def test_bad_images_name_the_file(tmp_path: Path, viz_model: VizModel) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.txt: not a readable image file"):
        read_images([text], viz_model)
    tiny = save_image(tmp_path / "tiny.png", np.zeros((5, 20), np.uint8))
    with pytest.raises(ValueError, match=r"tiny\.png: 20x5 pixels is smaller than one 7x7 patch"):
        read_images([tiny], viz_model)
    with pytest.raises(ValueError, match="no images given"):
        read_images([], viz_model)
