"""The demo: pretrain, then k-NN of the teacher, a random-init model and raw pixels, written into the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_config, write_class_folder

from dinolab.demo import knn_table, run_demo


def test_knn_table() -> None:
    results = {"model": {10: {"top1": 91.234, "top5": 99.0}, 20: {"top1": 92.0, "top5": 99.5}}}
    table = knn_table(results, (10, 20)).splitlines()
    assert table[0] == "| features | k=10 top-1 | k=20 top-1 | k=20 top-5 |"
    assert table[1] == "|---|---|---|---|"
    assert table[2] == "| model | 91.23 | 92.00 | 99.50 |"
    assert knn_table({"m": {5: {"top1": 1.0, "top5": 2.0}}}, (5,)).splitlines()[2] == "| m | 1.00 | - |"


def test_demo_on_generated_fashion_mnist(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    cfg = tiny_config(fmnist_dir, tmp_path / "demo", optim={"epochs": 1}, eval={"knn_k": [3, 5]})
    results = run_demo(cfg, quiet=True)
    assert len(results) == 3
    names = list(results)
    assert names[0].startswith("DINO vit_tiny/7") and names[1] == "same architecture, random init"
    assert names[2] == "raw pixels"
    for scores in results.values():
        assert set(scores) == {3, 5}
        assert all(0 <= s["top1"] <= 100 for s in scores.values())
    # the fixture's classes are bright squares in different quadrants: pixels separate them perfectly
    assert results["raw pixels"][3]["top1"] == 100.0
    saved = json.loads((tmp_path / "demo" / "knn.json").read_text())
    assert saved == {name: {str(k): v for k, v in r.items()} for name, r in results.items()}
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "## k-NN evaluation" in report and "| features | k=3 top-1 | k=5 top-1 |" in report
    assert "32 test images against 32 training images" in report
    assert "## Do the masks find the garment?" in report  # silhouette IoU of attention / PCA masks
    assert "| trained (EMA teacher) | " in report and "| random init | " in report
    assert "raw pixels" in capsys.readouterr().out


@pytest.fixture(scope="module")
def train_test_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo_folders")
    write_class_folder(root / "train", {"a": 8, "b": 8}, seed=0)
    write_class_folder(root / "test", {"a": 4, "b": 4}, seed=1)
    return root


def test_demo_on_an_image_folder(train_test_folders: Path, tmp_path: Path) -> None:
    cfg = tiny_config(train_test_folders / "train", tmp_path / "folder_demo", optim={"epochs": 1},
                      data={"dataset": "folder"}, eval={"knn_k": [3], "test_path": str(train_test_folders / "test")})
    results = run_demo(cfg, quiet=True)
    assert len(results) == 3 and all(set(r) == {3} for r in results.values())
    report = (tmp_path / "folder_demo" / "report.md").read_text()
    assert "8 test images against 16 training images" in report


def test_demo_on_a_folder_needs_a_separate_test_folder(train_test_folders: Path, tmp_path: Path) -> None:
    """Without eval.test_path the k-NN 'test' images would be the training images: refuse before training."""
    cfg = tiny_config(train_test_folders / "train", tmp_path / "leak", optim={"epochs": 1},
                      data={"dataset": "folder"}, eval={"knn_k": [3]})
    with pytest.raises(ValueError, match="test_path"):
        run_demo(cfg, quiet=True)
    assert not (tmp_path / "leak" / "checkpoint.pth").exists()


def test_demo_refuses_unlabeled_images_before_training(train_test_folders: Path, tmp_path: Path) -> None:
    """An image outside any class folder has no label for k-NN: refuse before spending the training time."""
    import shutil

    train = tmp_path / "train"
    shutil.copytree(train_test_folders / "train", train)
    shutil.copy(next((train / "a").iterdir()), train / "loose.png")
    cfg = tiny_config(train, tmp_path / "unlabeled", optim={"epochs": 1}, data={"dataset": "folder"},
                      eval={"knn_k": [3], "test_path": str(train_test_folders / "test")})
    with pytest.raises(ValueError, match="class labels"):
        run_demo(cfg, quiet=True)
    assert not (tmp_path / "unlabeled" / "checkpoint.pth").exists()
