"""The demo: pretrain on Fashion-MNIST with any recipe (DINO, iBOT, DINOv2, distillation), then weighted
k-NN for the trained model, the same architecture at random init, and raw pixels, written as a table
into the run's report."""

from __future__ import annotations

import json
import time

import torch

from dinolab.config import Config
from dinolab.data.datasets import FashionMNIST, has_labels
from dinolab.data.loader import build_eval_dataset
from dinolab.device import resolve
from dinolab.eval.baselines import model_of_kind, random_init_like
from dinolab.eval.knn import knn
from dinolab.models.vit import VisionTransformer
from dinolab.train import fit
from dinolab.train.report import write_report
from dinolab.viz.inputs import VizModel
from dinolab.viz.silhouette import iou_markdown, silhouette_iou


def knn_table(results: dict[str, dict[int, dict[str, float]]], ks: tuple[int, ...]) -> str:
    header = "| features | " + " | ".join(f"k={k} top-1" for k in ks) + " | k=20 top-5 |"
    rows = [header, "|" + "---|" * (len(ks) + 2)]
    for name, scores in results.items():
        top5 = f"{scores[20]['top5']:.2f}" if 20 in scores else "-"
        rows.append(f"| {name} | " + " | ".join(f"{scores[k]['top1']:.2f}" for k in ks) + f" | {top5} |")
    return "\n".join(rows)


def method_name(cfg: Config) -> str:
    """The paper a config's recipe follows, for tables."""
    if cfg.distill.teacher_checkpoint:
        return "DINOv2 distillation"
    if cfg.loss.centering == "sinkhorn" or (cfg.loss.koleo_weight > 0 and cfg.loss.ibot_weight > 0):
        return "DINOv2"
    name = "iBOT" if cfg.loss.ibot_weight > 0 else "DINO"
    return f"{name} + KoLeo" if cfg.loss.koleo_weight > 0 else name  # the small-data demo recipe


def mask_iou_section(backbone: VisionTransformer, cfg: Config, test_ds: FashionMNIST, n: int = 1000) -> str:
    """IoU of the attention and PCA foreground masks with the silhouettes of the first `n` test garments,
    for the trained teacher and the same architecture at random init (the DINO paper's Jaccard check)."""
    images = test_ds.images[:n].permute(0, 2, 3, 1).numpy()
    d = cfg.data
    models = {"trained (EMA teacher)": backbone, "random init": random_init_like(backbone, cfg.train.seed)}
    scores = {name: silhouette_iou(VizModel(model, d.mean, d.std), images) for name, model in models.items()}
    return f"Mean IoU with the garment silhouette (pixels > 0) over the first {n} test images.\n\n" + iou_markdown(
        scores)


def run_demo(cfg: Config, quiet: bool = False) -> dict[str, dict[int, dict[str, float]]]:
    if cfg.data.dataset == "folder" and not cfg.eval.test_path:
        raise ValueError("eval.test_path is empty: the demo needs a labeled test folder besides data.path")
    train_ds = build_eval_dataset(cfg.data, cfg.model.in_chans, "train", cfg.data.path)
    test_ds = build_eval_dataset(cfg.data, cfg.model.in_chans, "test", cfg.eval.test_path, classes=train_ds.classes)
    for name, ds in (("data.path", train_ds), ("eval.test_path", test_ds)):
        if not has_labels(ds):  # checked before training, not after ten minutes of it
            raise ValueError(f"the demo's k-NN needs class labels: some images under {name} are not in a class folder")
    start = time.perf_counter()
    result = fit(cfg, quiet=quiet)
    train_seconds = time.perf_counter() - start
    runtime = resolve(cfg.train.device, cfg.train.precision)
    ks = tuple(cfg.eval.knn_k)
    d = cfg.data

    rows = (
        (f"{method_name(cfg)} {cfg.model.arch}/{cfg.model.patch_size}, {result.epochs_done} epochs (EMA teacher)",
         "trained"),
        ("same architecture, random init", "random-init"),
        ("raw pixels", "pixels"),
    )
    # One seed for the three rows, in this order: the random-init weights are drawn after the trained model's
    # k-NN (whose data loaders draw from the RNG), which keeps them, and the table, those of earlier reports.
    torch.manual_seed(cfg.train.seed)
    results = {
        name: knn(model_of_kind(result.backbone, kind), train_ds, test_ds, ks, cfg.eval.knn_temperature, d.mean,
                  d.std, cfg.eval.batch_size, runtime, quiet)
        for name, kind in rows
    }
    table = knn_table(results, ks)
    note = (
        f"Weighted k-NN (T={cfg.eval.knn_temperature}) on the {len(test_ds)} test images against "
        f"{len(train_ds)} training images. Training took {train_seconds / 60:.1f} min."
    )
    sections = {"k-NN evaluation": f"{note}\n\n{table}"}
    if cfg.data.dataset == "fmnist":  # garment silhouettes (pixels > 0) are the ground truth for the masks
        sections["Do the masks find the garment?"] = mask_iou_section(result.backbone, cfg, test_ds)
    write_report(result.run_dir, cfg, sections=sections)
    serializable = {name: {str(k): v for k, v in r.items()} for name, r in results.items()}
    (result.run_dir / "knn.json").write_text(json.dumps(serializable, indent=1))
    print(f"\n{note}\n\n{table}\n\nrun directory: {result.run_dir}")
    return results
