"""The command line: `dinolab train`, `dinolab eval`, `dinolab config show`, `python -m dinolab`; each eval
protocol's own options and their defaults; the README's command lines; exit codes, messages and logging."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config, write_class_folder

from dinolab import config as config_lib
from dinolab.cli import PROTOCOL_OPTIONS, build_parser, configure_logging, main, protocol_keywords
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


def test_eval_of_an_exported_backbone_takes_the_training_normalization_again(
    trained_run: Path, labeled_folder: Path, tmp_path: Path, capsys
) -> None:
    """An exported file carries no training config: --mean/--std give its normalization back, and then it
    scores exactly as its run does."""
    from dinolab.hub import load_backbone, save_backbone
    from dinolab.io import read_training_checkpoint

    exported = save_backbone(load_backbone(trained_run), tmp_path / "exported.pth")
    data = read_training_checkpoint(trained_run / "checkpoint.pth").config.data
    args = ["--data", str(labeled_folder), "--k", "1", "3", "--device", "cpu", "--precision", "fp32", "--quiet"]
    scores = []
    for checkpoint, extra in ((trained_run, []), (exported, ["--mean", *map(str, data.mean), "--std",
                                                              *map(str, data.std)])):
        out = tmp_path / f"{checkpoint.name}.json"
        assert main(["eval", "knn", "--checkpoint", str(checkpoint), *args, *extra, "--out", str(out)]) == 0
        scores.append({k: v for k, v in json.loads(out.read_text()).items() if k != "seconds"})
    assert scores[0] == scores[1]
    for wrong in (["--mean", "0.5", "0.5"], ["--std", "-0.5"]):
        assert main(["eval", "knn", "--checkpoint", str(exported), *args, *wrong]) == 1
        message = "--mean/--std: the model takes 1-channel images, so give 1 mean(s) and 1 positive std(s)"
        assert message in capsys.readouterr().err


def test_safetensors_export_carries_the_training_normalization(
    trained_run: Path, labeled_folder: Path, tmp_path: Path, capsys
) -> None:
    """`export safetensors` records the run's mean/std, so the exported file scores as its run does with no
    --mean/--std, and `embed` gives the run's features."""
    exported = tmp_path / "exported.safetensors"
    assert main(["export", "safetensors", "--checkpoint", str(trained_run), "--out", str(exported)]) == 0
    assert "normalization mean" in capsys.readouterr().out
    args = ["--data", str(labeled_folder), "--k", "1", "3", "--device", "cpu", "--precision", "fp32", "--quiet"]
    scores = []
    for checkpoint in (trained_run, exported):
        out = tmp_path / f"{checkpoint.name}.json"
        assert main(["eval", "knn", "--checkpoint", str(checkpoint), *args, "--out", str(out)]) == 0
        scores.append({k: v for k, v in json.loads(out.read_text()).items() if k != "seconds"})
    assert scores[0] == scores[1]
    features = []
    for checkpoint in (trained_run, exported):
        out = tmp_path / f"{checkpoint.name}.npy"
        assert main(["embed", str(labeled_folder / "test"), "--checkpoint", str(checkpoint), "--out", str(out),
                     "--image-size", "28", "--device", "cpu", "--precision", "fp32", "--quiet"]) == 0
        features.append(np.load(out))
    np.testing.assert_array_equal(features[0], features[1])


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


# ---------------------------------------------------------------- the parser: subcommands and their options


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_each_eval_protocol_lists_only_its_own_options(capsys) -> None:
    knn = help_text(["eval", "knn"], capsys)
    assert "--k K" in knn and "--temperature" in knn and "--checkpoint" in knn and "--seed" in knn
    assert "--restarts" not in knn and "--budgets" not in knn and "--c-grid" not in knn
    cluster = help_text(["eval", "cluster"], capsys)
    assert "--restarts" in cluster and "--k K" not in cluster
    every = help_text(["eval", "all"], capsys)
    for flag in ("--k", "--temperature", "--epochs", "--c-grid", "--dinov2-c-grid", "--budgets", "--seeds",
                 "--lowshot-classifier", "--lowshot-c", "--lowshot-k", "--backend", "--queries", "--restarts",
                 "--patch-train-images"):
        assert f"{flag} " in every, flag
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["eval", "knn", "--checkpoint", "c", "--restarts", "3"])
    assert info.value.code == 2
    assert "unrecognized arguments: --restarts 3" in capsys.readouterr().err


def readme_command_lines() -> list[list[str]]:
    """Every `dinolab ...` line of the README, `a|b|c` alternatives spelled out; lines with placeholders skipped."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    found = []
    for line in readme.read_text().splitlines():
        match = re.match(r"^(?:\w+=\S+ )*dinolab ([a-z].*?)(\s+#.*)?$", line)
        if not match or "..." in match.group(1) or "[" in match.group(1) or " img/s" in line:
            continue
        argv = shlex.split(match.group(1))
        alternatives = argv[1].split("|") if len(argv) > 1 and "|" in argv[1] else [None]
        found += [[argv[0], alt, *argv[2:]] if alt else argv for alt in alternatives]
    return found


def test_the_readme_command_lines_parse() -> None:
    lines = readme_command_lines()
    assert len(lines) >= 20 and ["eval", "cluster", "--checkpoint", "runs/mine", "--data", "fmnist"] in lines
    for argv in lines:
        build_parser().parse_args(argv)  # exits (code 2) on an option a subcommand does not take


def test_protocol_keywords_keep_the_defaults() -> None:
    from dinolab.eval.logreg import C_GRID, DINOV2_C_GRID

    args = build_parser().parse_args(["eval", "all", "--checkpoint", "c"])
    assert {protocol: protocol_keywords(protocol, args) for protocol in PROTOCOL_OPTIONS} == {
        "knn": {"ks": (10, 20, 100, 200), "temperature": 0.07},
        "linear": {"epochs": 10, "seed": 0},
        "logreg": {"c_grid": C_GRID, "seed": 0},
        "lowshot": {"budgets": ("1%", "10%", "5/class"), "seeds": (0, 1, 2), "classifier": "logreg", "C": 1.0,
                    "k": 20, "temperature": 0.07},
        "retrieval": {"backend": "auto", "max_queries": 2000, "seed": 0},
        "copydetect": {"seed": 0},
        "cluster": {"restarts": 10, "seed": 0},
        "patch": {"max_train_images": 5000, "c_grid": C_GRID, "seed": 0},
    }
    args = build_parser().parse_args(["eval", "all", "--checkpoint", "c", "--queries", "0", "--patch-train-images",
                                      "0", "--dinov2-c-grid", "--seed", "3", "--temperature", "0.1"])
    assert protocol_keywords("retrieval", args)["max_queries"] is None  # 0: every test image
    assert protocol_keywords("patch", args) == {"max_train_images": None, "c_grid": DINOV2_C_GRID, "seed": 3}
    assert protocol_keywords("lowshot", args)["temperature"] == protocol_keywords("knn", args)["temperature"] == 0.1
    args = build_parser().parse_args(["eval", "logreg", "--checkpoint", "c", "--c-grid", "1", "2", "--dinov2-c-grid"])
    assert protocol_keywords("logreg", args)["c_grid"] == (1.0, 2.0)  # an explicit grid wins


def test_config_show(capsys) -> None:
    assert main(["config", "show", "dino_vit_tiny_fmnist", "optim.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert out == config_lib.show("dino_vit_tiny_fmnist", ["optim.epochs=3"])
    assert "epochs: 3" in out
    assert main(["config", "show", "dino_vit_tiny_fmnist", "optim.epochz=3"]) == 1
    assert "unknown config key" in capsys.readouterr().err


def test_verbose_is_dinolab_debug_and_other_libraries_stay_at_warning() -> None:
    import logging

    dinolab_logger = logging.getLogger("dinolab")
    before = dinolab_logger.level
    try:
        configure_logging(verbose=True)
        assert dinolab_logger.level == logging.DEBUG
        configure_logging()
        assert dinolab_logger.level == logging.INFO
    finally:
        dinolab_logger.setLevel(before)


def run_dinolab(*argv: str) -> subprocess.CompletedProcess:
    """`python -m dinolab ARGV` in a fresh interpreter, stdout and stderr captured (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "dinolab", *argv], capture_output=True, text=True, timeout=300)


def test_python_m_dinolab() -> None:
    done = run_dinolab("config", "show", "dino_vit_tiny_fmnist")
    assert done.returncode == 0, done.stderr
    assert done.stdout == config_lib.show("dino_vit_tiny_fmnist")
    done = run_dinolab("train", "no_such_recipe")
    assert done.returncode == 1 and done.stderr.startswith("dinolab: error:")


def test_eval_logs_no_third_party_chatter_and_no_bar_into_a_pipe(trained_run: Path, fmnist_dir: Path) -> None:
    """faiss's loader logs its failed AVX512 / AVX2 attempts at INFO ('Could not load library ...
    ModuleNotFoundError'): only dinolab's own INFO lines reach the console, and progress comes as log lines."""
    pytest.importorskip("faiss")
    done = run_dinolab("eval", "retrieval", "--backend", "faiss", "--checkpoint", str(trained_run), "--data", "fmnist",
                       "--fmnist-dir", str(fmnist_dir), "--device", "cpu", "--precision", "fp32", "--queries", "0")
    assert done.returncode == 0, done.stderr
    assert "[trained] retrieval: retrieval recall@1" in done.stdout
    assert "faiss" not in done.stderr and "Could not load library" not in done.stderr
    assert "INFO dinolab.progress: features: 1/1 batch in " in done.stderr
    assert "\r" not in done.stderr
