"""The command line: `dinolab train` and `dinolab eval knn`, exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_config, write_class_folder

from dinolab import config as config_lib
from dinolab.cli import build_parser, main
from dinolab.eval import Evaluation


@pytest.fixture
def tiny_yaml(fmnist_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    config_lib.save(tiny_config(fmnist_dir, tmp_path / "default_out", optim={"epochs": 1}), path)
    return path


def test_train(tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli_run"
    code = main(["train", str(tiny_yaml), "optim.lr=0.001", "--output-dir", str(out), "--quiet"])
    assert code == 0
    assert (out / "checkpoint.pth").is_file()
    assert (out / "checkpoint_0001.pth").is_file()
    assert f"run directory: {out}" in capsys.readouterr().out
    saved = config_lib.load(out / "config.yaml")
    assert saved.optim.lr == 0.001  # the override was applied
    assert saved.train.output_dir == str(out)
    assert not (tmp_path / "default_out").exists()  # --output-dir wins over the file's train.output_dir


def test_train_twice_resumes(tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "twice"
    assert main(["train", str(tiny_yaml), "--output-dir", str(out), "--quiet"]) == 0
    assert main(["train", str(tiny_yaml), "--output-dir", str(out), "--quiet"]) == 0, capsys.readouterr().err


def test_train_unknown_config_key(tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", str(tiny_yaml), "optim.epochz=3", "--output-dir", str(tmp_path / "x"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("dinolab: error:")
    assert "unknown config key" in err and "optim" in err and "epochz" in err
    assert not (tmp_path / "x").exists()  # failed before any work


def test_train_bad_value_and_unknown_recipe(tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", str(tiny_yaml), "model.in_chans=2", "--output-dir", str(tmp_path / "y")]) == 1
    assert "model.in_chans" in capsys.readouterr().err
    assert main(["train", "no_such_recipe"]) == 1
    assert "dino_vit_tiny_fmnist" in capsys.readouterr().err


def test_train_resume_from_a_missing_file(tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", str(tiny_yaml), "--output-dir", str(tmp_path / "z"), "--resume",
                 str(tmp_path / "missing.pth"), "--quiet"])
    assert code == 1
    assert "no such checkpoint" in capsys.readouterr().err


def test_parser_requires_a_command() -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2
    args = build_parser().parse_args(["eval", "knn", "--checkpoint", "c", "--data", "d", "--k", "1", "3"])
    assert args.k == [1, 3] and args.protocol == "knn"


@pytest.fixture(scope="module")
def labeled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labeled")
    write_class_folder(root / "train", {"a": 6, "b": 6, "c": 6}, seed=0)
    write_class_folder(root / "test", {"a": 3, "b": 3, "c": 3}, seed=1)
    return root


def test_eval_knn_on_a_labeled_folder(trained_run: Path, labeled_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "knn.json"
    code = main(["eval", "knn", "--checkpoint", str(trained_run), "--data", str(labeled_folder), "--k", "1", "3",
                 "--device", "cpu", "--precision", "fp32", "--batch-size", "4", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith("[trained] knn: ")]
    assert len(lines) == 1  # one summary line
    results = json.loads(out.read_text())
    assert set(results) == {"1", "3", "seconds"}
    for k in ("1", "3"):
        assert 0.0 <= results[k]["top1"] <= 100.0 and results[k]["top5"] == 100.0  # 3 classes: top-5 always right
    # the three classes are flat colors of different brightness: even a barely trained ViT separates them
    assert results["1"]["top1"] >= 66.0
    assert f"k-NN k=1 top-1 {results['1']['top1']:.2f}, k-NN k=3 top-1 {results['3']['top1']:.2f}" in lines[0]


def test_eval_knn_checkpoint_file_and_missing_checkpoint(trained_run: Path, labeled_folder: Path, capsys) -> None:
    args = ["--data", str(labeled_folder), "--k", "1", "--device", "cpu", "--precision", "fp32", "--quiet"]
    assert main(["eval", "knn", "--checkpoint", str(trained_run / "checkpoint.pth"), *args]) == 0
    assert "[trained] knn: k-NN k=1 top-1" in capsys.readouterr().out
    assert main(["eval", "knn", "--checkpoint", str(trained_run / "nope.pth"), *args]) == 1
    assert "not found" in capsys.readouterr().err


def test_eval_knn_k_larger_than_the_train_split(trained_run: Path, labeled_folder: Path, capsys) -> None:
    code = main(["eval", "knn", "--checkpoint", str(trained_run), "--data", str(labeled_folder), "--k", "50",
                 "--device", "cpu", "--precision", "fp32", "--quiet"])
    assert code == 1
    assert "k=50 is larger than the 18 training images" in capsys.readouterr().err


def test_eval_knn_test_labels_use_the_train_class_numbering(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "partial"
    write_class_folder(root / "train", {"a": 3, "b": 3, "c": 3})
    write_class_folder(root / "test", {"a": 2, "c": 2})  # no "b" images in the test split
    seen = {}

    def fake_run(evaluation: Evaluation, protocol: str, **options) -> dict:
        seen["train"], seen["test"] = evaluation.train_dataset, evaluation.test_dataset
        return {"1": {"top1": 0.0, "top5": 0.0}, "seconds": 0.0}

    monkeypatch.setattr(Evaluation, "run", fake_run)
    assert main(["eval", "knn", "--checkpoint", str(trained_run), "--data", str(root), "--k", "1", "--quiet"]) == 0
    train_classes = seen["train"].classes
    test = seen["test"]
    for path, label in zip(test.files, test.labels.tolist(), strict=True):
        assert train_classes[label] == path.parent.name, f"{path.name} in {path.parent.name} labeled {label}"
