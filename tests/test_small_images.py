"""The small_images preset: normalization, channels and crop sizes measured from the folder (data.auto)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image

from dinolab import cli
from dinolab import config as config_lib
from dinolab.config import ConfigError
from dinolab.data.stats import crop_sizes, measure_images, resolve_from_images


def gray_folder(root: Path, size: int = 28) -> Path:
    """Half the images black, half white, in two class folders: mean 0.5, std 0.5 exactly."""
    for i in range(6):
        value = 255 if i % 2 else 0
        save_image(root / f"class{i % 2}" / f"{i}.png", np.full((size, size), value, np.uint8))
    return root


def test_mean_std_and_channels_are_measured_from_the_images(tmp_path: Path) -> None:
    stats = measure_images(gray_folder(tmp_path / "gray"))
    assert (stats.channels, stats.size, stats.measured, stats.total) == (1, 28, 6, 6)
    assert stats.mean == pytest.approx((0.5,), abs=1e-4) and stats.std == pytest.approx((0.5,), abs=1e-4)

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[:10, :, 2] = 255, 51, 255  # red 1, green 0.2, blue half 1 / half 0
    save_image(tmp_path / "rgb" / "a.png", rgb)
    save_image(tmp_path / "rgb" / "b.jpg", rgb)  # JPEG's small color errors must not matter much
    stats = measure_images(tmp_path / "rgb")
    assert (stats.channels, stats.size) == (3, 20)
    assert stats.mean == pytest.approx((1.0, 0.2, 0.5), abs=0.02)
    assert stats.std == pytest.approx((0.001, 0.001, 0.5), abs=0.02)  # a constant channel gets a floor, not 0


def test_grayscale_saved_as_rgb_counts_as_one_channel(tmp_path: Path) -> None:
    save_image(tmp_path / "x" / "a.png", np.repeat(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1), 3, 2))
    assert measure_images(tmp_path / "x").channels == 1


def test_unreadable_and_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        measure_images(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="could be read"):
        measure_images(tmp_path / "bad")


@pytest.mark.parametrize(
    ("size", "expected"),
    [(28, (7, 28, 14)), (32, (8, 32, 16)), (30, (7, 28, 14)), (64, (16, 64, 32)), (300, (16, 224, 96))],
)
def test_patch_and_crop_sizes_follow_the_image_size(size: int, expected: tuple[int, int, int]) -> None:
    patch, global_size, local_size = crop_sizes(size)
    assert (patch, global_size, local_size) == expected
    assert global_size % patch == 0 and local_size % patch == 0


def test_small_images_preset_resolves_from_the_folder_and_says_what_it_chose(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = gray_folder(tmp_path / "imgs", size=32)
    cfg = resolve_from_images(config_lib.load("small_images", [f"data.path={folder}"]))
    assert (cfg.model.in_chans, cfg.model.patch_size, cfg.model.img_size) == (1, 8, 32)
    assert (cfg.data.global_crops_size, cfg.data.local_crops_size) == (32, 16)
    assert cfg.data.mean == pytest.approx((0.5,), abs=1e-4) and cfg.data.std == pytest.approx((0.5,), abs=1e-4)
    assert not cfg.data.auto  # the saved config holds the values used
    printed = capsys.readouterr().out
    assert "grayscale" in printed and "model.patch_size=8" in printed and "data.mean=[0.5]" in printed
    plain = config_lib.load("dino_vit_tiny_fmnist")
    assert resolve_from_images(plain) is plain  # without data.auto nothing is measured


def test_auto_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.auto"):
        config_lib.load("dino_vit_tiny_fmnist", ["data.auto=true"])
    with pytest.raises(ValueError, match="data.path"):
        resolve_from_images(config_lib.load("small_images"))


def test_train_command_measures_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dinolab train small_images data.path=...` trains on the measured config (fit measures it first)."""
    class Handed(Exception):  # stops the command once fit has measured its config
        pass

    def fake_prepare_run(cfg, _world):
        raise Handed(cfg)

    monkeypatch.setattr(importlib.import_module("dinolab.train.fit"), "prepare_run", fake_prepare_run)
    folder = gray_folder(tmp_path / "imgs")
    with pytest.raises(Handed) as handed:
        cli.main(["train", "small_images", f"data.path={folder}", "--quiet"])
    cfg = handed.value.args[0]
    assert cfg.data.mean == pytest.approx((0.5,), abs=1e-4) and cfg.model.patch_size == 7 and not cfg.data.auto
