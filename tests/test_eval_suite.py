"""The patch-level probe, every protocol together (library and `dinolab eval`), and bad input at the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_vit, write_idx

from dinolab.cli import main
from dinolab.data import FashionMNIST
from dinolab.device import resolve
from dinolab.eval import (
    PROTOCOLS,
    Evaluation,
    PixelBaseline,
    model_to_evaluate,
    patch_probe,
    run_all,
    silhouette_patch_labels,
)
from dinolab.eval.patch_probe import mean_iou
from dinolab.eval.suite import add_report_section, markdown_tables
from dinolab.io import atomic_save, read_checkpoint

CPU = resolve("cpu", "fp32")
FAST = ["--device", "cpu", "--precision", "fp32", "--quiet", "--k", "1", "3", "--epochs", "2", "--budgets", "1/class",
        "--seeds", "0", "1", "--restarts", "2", "--c-grid", "0.1", "10", "--patch-train-images", "24"]  # eval all
FAST_OPTIONS = {"knn": ["--k", "1", "3"], "lowshot": ["--budgets", "1/class", "--seeds", "0", "1"],
                "cluster": ["--restarts", "2"]}


def fast(protocol: str) -> list[str]:
    """FAST for one protocol, which takes only its own options."""
    return [*FAST[:5], *FAST_OPTIONS[protocol]]


def silhouette_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Garments on black: 28x28 images, background exactly 0, a class-dependent bright rectangle."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    shapes = [(4, 24, 10, 18), (2, 26, 2, 26), (8, 20, 4, 24)]  # rows, cols of each class's "garment"
    for img, y in zip(images, labels, strict=True):
        r0, r1, c0, c1 = shapes[y]
        img[r0:r1, c0:c1] = rng.integers(80, 255, size=(r1 - r0, c1 - c0))
    return images, labels.astype(np.uint8)


@pytest.fixture(scope="module")
def silhouette_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("silhouettes")
    for prefix, n, seed in (("train", 36, 0), ("t10k", 24, 1)):
        images, labels = silhouette_images(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


# ---------------------------------------------------------------- patch probe


def test_silhouette_labels_follow_the_half_of_the_pixels_rule() -> None:
    images = torch.zeros(1, 1, 14, 14, dtype=torch.uint8)
    images[0, 0, :7, :7] = 200  # patch 0 all garment
    images[0, 0, :4, 7:14] = 50  # patch 1: 28 of 49 pixels > 0 (57%)
    images[0, 0, 7:10, :7] = 50  # patch 2: 21 of 49 (43%)
    assert silhouette_patch_labels(images, 7).tolist() == [[1, 1, 0, 0]]
    assert silhouette_patch_labels(images, 7, min_fraction=0.6).tolist() == [[1, 0, 0, 0]]


def test_mean_iou() -> None:
    truth = torch.tensor([0, 0, 1, 1])
    assert mean_iou(truth, truth, 2)[0] == 100.0
    miou, ious = mean_iou(torch.tensor([0, 1, 1, 1]), truth, 2)
    assert ious == [50.0, pytest.approx(200 / 3)] and miou == pytest.approx((50 + 200 / 3) / 2)


def test_patch_probe_on_pixels_and_a_vit(silhouette_dir: Path) -> None:
    train, test = FashionMNIST(silhouette_dir, "train"), FashionMNIST(silhouette_dir, "test")
    pixels = patch_probe(PixelBaseline(7), train, test, (0.3,), (0.35,), 7, c_grid=(0.1, 10.0), runtime=CPU, quiet=True)
    assert pixels["mIoU"] > 90.0  # "is this patch mostly non-black" is nearly linear in its pixels
    assert set(pixels["iou"]) == {"background", "garment"} and pixels["test_images"] == 24
    vit = patch_probe(small_vit(), train, test, (0.3,), (0.35,), 7, max_train_images=12, c_grid=(1.0,), runtime=CPU,
                      quiet=True)
    assert vit["train_images"] == 12 and 0.0 <= vit["mIoU"] <= 100.0
    with pytest.raises(ValueError, match="pass the model's patch size"):
        patch_probe(small_vit(), train, test, (0.3,), (0.35,), 4, c_grid=(1.0,), runtime=CPU, quiet=True)


def test_patch_probe_needs_a_black_background(fmnist_dir: Path) -> None:
    ds = FashionMNIST(fmnist_dir, "train")  # the shared fixture's background is noise, not black
    with pytest.raises(ValueError, match="black background"):
        patch_probe(PixelBaseline(7), ds, ds, (0.3,), (0.35,), 7, runtime=CPU, quiet=True)


# ---------------------------------------------------------------- every protocol


def test_run_all_on_pixels(silhouette_dir: Path) -> None:
    train, test = FashionMNIST(silhouette_dir, "train"), FashionMNIST(silhouette_dir, "test")
    evaluation = Evaluation(PixelBaseline(7), train, test, (0.3,), (0.35,), 7, runtime=CPU, quiet=True)
    options = {"knn": {"ks": (1, 5)}, "linear": {"epochs": 2}, "logreg": {"c_grid": (1.0,)},
               "lowshot": {"budgets": ("2/class",), "seeds": (0, 1)}, "cluster": {"restarts": 2},
               "patch": {"c_grid": (1.0,)}}
    results = run_all(evaluation, options)
    assert list(results) == ["features", *PROTOCOLS]
    assert all(r["seconds"] >= 0 for r in results.values())
    # three classes with different silhouettes: raw pixels separate them
    assert results["knn"]["1"]["top1"] == 100.0 and results["logreg"]["top1"] == 100.0
    assert results["retrieval"]["recall@1"] == 100.0
    table = markdown_tables({"pixels": results, "again": results})
    assert "| k-NN k=1 top-1 | 100.00 | 100.00 |" in table and "| low-shot 2/class top-1 |" in table
    assert "| linear | " in table.split("| seconds |")[1]


def test_report_section_is_appended_once_and_replaced(tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text("# run\n\n## k-NN evaluation\n\ntable\n")
    add_report_section(tmp_path, "first")
    add_report_section(tmp_path, "second")
    text = (tmp_path / "report.md").read_text()
    assert text == "# run\n\n## k-NN evaluation\n\ntable\n\n## Evaluation suite\n\nsecond\n"


def test_model_to_evaluate_kinds(trained_run: Path) -> None:
    trained, cfg = model_to_evaluate(trained_run)
    random_init, _ = model_to_evaluate(trained_run / "checkpoint.pth", "random-init")
    pixels, _ = model_to_evaluate(trained_run, "pixels")
    assert type(trained) is type(random_init) and not torch.equal(trained.cls_token, random_init.cls_token)
    assert isinstance(pixels, PixelBaseline) and pixels.patch_size == cfg.model.patch_size
    with pytest.raises(ValueError, match="model kind must be one of"):
        model_to_evaluate(trained_run, "imagenet")


# ---------------------------------------------------------------- the command line


def test_eval_all_writes_json_tables_and_the_report(trained_run: Path, silhouette_dir: Path, capsys) -> None:
    code = main(["eval", "all", "--checkpoint", str(trained_run), "--data", "fmnist", "--fmnist-dir",
                 str(silhouette_dir), "--model", "trained", "pixels", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = trained_run / "eval"
    for model in ("trained", "pixels"):
        for protocol in PROTOCOLS:
            result = json.loads((out / model / f"{protocol}.json").read_text())
            assert result["seconds"] >= 0
            assert f"[{model}] {protocol}: " in captured.out
    table = (out / "eval.md").read_text()
    assert "| metric | trained | pixels |" in table and "| patch probe mIoU |" in table
    report = (trained_run / "report.md").read_text()
    assert report.count("## Evaluation suite") == 1 and "| copy detection recall@1 |" in report
    assert report.startswith("# dinolab run")  # the training report above the section is kept


def test_eval_one_protocol_to_a_file_with_train_and_test(trained_run: Path, silhouette_dir: Path, tmp_path: Path,
                                                         capsys) -> None:
    out = tmp_path / "cluster.json"
    code = main(["eval", "cluster", "--checkpoint", str(trained_run / "checkpoint.pth"), "--train", "fmnist",
                 "--test", "fmnist", "--fmnist-dir", str(silhouette_dir), "--out", str(out), "--cache-dir",
                 str(tmp_path / "cache"), *fast("cluster")])
    assert code == 0, capsys.readouterr().err
    assert set(json.loads(out.read_text())) >= {"accuracy", "nmi", "ari", "seconds"}
    assert len(list((tmp_path / "cache").iterdir())) == 2  # train and test features


def test_eval_bad_input_is_named(trained_run: Path, silhouette_dir: Path, tmp_path: Path, capsys) -> None:
    def error(*args: str) -> str:
        assert main(["eval", *args]) == 1
        return capsys.readouterr().err

    base = ["--checkpoint", str(trained_run), "--fmnist-dir", str(silhouette_dir)]
    assert "--data fmnist|FOLDER, or both --train DATA and --test DATA" in error("knn", *base, *fast("knn"))
    assert "fewer than the low-shot budget of 30 per class" in error("lowshot", "--data", "fmnist", *base,
                                                                     *fast("lowshot"), "--budgets", "30/class")
    assert "k=50 is larger than the 36 training images" in error("knn", "--data", "fmnist", *base, *fast("knn"),
                                                                 "--k", "50")
    assert "--out FILE.json takes one protocol" in error("all", "--data", "fmnist", *base, *FAST, "--out", "x.json")

    bad_labels = tmp_path / "bad_labels"
    bad_labels.mkdir()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad_labels / name).write_bytes((silhouette_dir / name).read_bytes())
    write_idx(bad_labels / "train-labels-idx1-ubyte", np.zeros(35, dtype=np.uint8))
    err = error("knn", "--data", "fmnist", "--checkpoint", str(trained_run), "--fmnist-dir", str(bad_labels),
                *fast("knn"))
    assert "36 images but 35 labels in the train split" in err

    state = read_checkpoint(trained_run)
    state["teacher"] = {k: v for k, v in state["teacher"].items() if not k.startswith("backbone.")}
    headless = tmp_path / "no_backbone.pth"
    atomic_save(state, headless)
    err = error("knn", "--data", "fmnist", "--checkpoint", str(headless), "--fmnist-dir", str(silhouette_dir),
                *fast("knn"))
    assert "entry 'teacher'" in err and "missing" in err  # names the entry and what a backbone needs
