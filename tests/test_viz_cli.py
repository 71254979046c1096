"""`dinolab viz attention|pca|curves` and `dinolab explore`: the files they write, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_fmnist_images, save_image
from test_viz_curves import logged_steps, write_metrics
from test_viz_inputs import write_viz_checkpoint

from dinolab.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_viz_checkpoint(tmp_path_factory.mktemp("cli_ckpt"))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_images")
    images, _ = make_fmnist_images(3, seed=5)
    for i, img in enumerate(images):
        save_image(root / f"img{i}.png", img)
    save_image(root / "nested" / "img0.png", images[0])  # same stem as img0.png: gets its own output name
    return root


def test_viz_attention(checkpoint: Path, image_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["viz", "attention", str(image_dir / "img1.png"), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path), "--mass", "0.5"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "img1_attention.png")]


def test_viz_pca_over_a_folder(checkpoint: Path, image_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["viz", "pca", str(image_dir), "--checkpoint", str(checkpoint), "--out", str(tmp_path),
                 "--image-size", "56"]) == 0
    names = [Path(p).name for p in capsys.readouterr().out.split()]
    assert names == ["img0_pca.png", "img1_pca.png", "img2_pca.png", "img0-1_pca.png", "pca_grid.png"]
    assert all((tmp_path / n).is_file() for n in names)


def test_viz_curves(tmp_path: Path, capsys) -> None:
    write_metrics(tmp_path / "run", logged_steps())
    assert main(["viz", "curves", str(tmp_path / "run")]) == 0
    assert Path(capsys.readouterr().out.split()[0]) == tmp_path / "run" / "training_curves.png"
    assert main(["viz", "curves", str(tmp_path / "nothing")]) == 1
    assert "no logged steps in metrics.jsonl" in capsys.readouterr().err


def test_explore(checkpoint: Path, image_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "page" / "explorer.html"
    assert main(["explore", str(image_dir), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--max-images", "2"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out


@pytest.mark.parametrize("command", [["viz", "attention"], ["viz", "pca"], ["explore"]])
def test_bad_inputs_are_one_line_errors(command: list[str], checkpoint: Path, tmp_path: Path, capsys) -> None:
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    assert main([*command, str(text), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 1
    assert f"{text}: not a readable image file" in capsys.readouterr().err
    assert main([*command, str(tmp_path / "missing.png"), "--checkpoint", str(checkpoint)]) == 1
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    image = save_image(tmp_path / "ok.png", np.zeros((28, 28), np.uint8))
    assert main([*command, str(image), "--checkpoint", str(tmp_path / "none.pth")]) == 1
    assert "none.pth not found" in capsys.readouterr().err
