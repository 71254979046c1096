"""Do the model's attention and PCA masks find the garment? IoU against Fashion-MNIST silhouettes.

Like the DINO paper's Jaccard similarity of attention masks with segmentations: for the first N test
images of Fashion-MNIST (28x28, on black), the silhouette is the pixels > 0, and the masks (on the
4x4 patch grid of a ViT/7, upsampled to pixels) are
  (a) attention: the patches holding 60% of the head-mean [CLS] attention mass of the last block;
  (b) PCA: the foreground of DINOv2's PCA split (first component over all N images, threshold 0.5).
IoU (and precision, recall, kept patches) per image at pixel resolution, averaged over images
(dinolab.viz.silhouette), for the checkpoint's EMA teacher and for the same architecture at random init
(seed 0); the all-foreground mask is the baseline. `iou_trained_minus_random` is the mean paired (same image)
IoU difference with the half-width of its 95% normal-approximation interval.

Usage:
  python benchmarks/viz_iou.py --checkpoint /work/runs/dino_demo/checkpoint.pth [--n 1000]
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dinolab.data.datasets import FashionMNIST
from dinolab.eval.baselines import random_init_like
from dinolab.hub import load_model
from dinolab.viz.inputs import VizModel
from dinolab.viz.silhouette import iou_markdown, silhouette_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="dinolab training checkpoint (file or run dir)")
    parser.add_argument("--n", type=int, default=1000, help="number of test images (the first n)")
    parser.add_argument("--fmnist-dir", default=None, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--fraction", type=float, default=0.6, help="attention mass kept by the mask")
    parser.add_argument("--threshold", type=float, default=0.5, help="PCA foreground threshold")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init model")
    args = parser.parse_args()
    torch.set_num_threads(1)

    images = FashionMNIST(args.fmnist_dir, split="test").images[: args.n].permute(0, 2, 3, 1).numpy()
    loaded = load_model(args.checkpoint)
    trained, cfg = loaded.backbone, loaded.config
    random_init = random_init_like(trained, args.seed)
    start = time.perf_counter()
    scores = {
        name: silhouette_scores(VizModel(backbone, tuple(cfg.data.mean), tuple(cfg.data.std)), images,
                                args.fraction, args.threshold)
        for name, backbone in (("trained", trained), ("random_init", random_init))
    }
    means = {
        name: {mask: {metric: round(float(v.mean()), 4) for metric, v in s.items()} for mask, s in by_mask.items()}
        for name, by_mask in scores.items()
    }
    differences = {}
    for mask in ("attention_mass", "pca_foreground"):
        diff = scores["trained"][mask]["iou"] - scores["random_init"][mask]["iou"]
        half_width = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
        differences[mask] = {"mean": round(float(diff.mean()), 4), "ci95": round(float(half_width), 4)}
    mean_iou = {name: {mask: m["iou"] for mask, m in by_mask.items()} for name, by_mask in means.items()}
    print(json.dumps({
        "checkpoint": str(args.checkpoint),
        "model": f"{cfg.model.arch} depth {cfg.model.depth} / patch {cfg.model.patch_size}",
        "images": len(images),
        "resolution": "pixel (28x28), masks upsampled from the patch grid",
        "fraction": args.fraction,
        "threshold": args.threshold,
        "seconds": round(time.perf_counter() - start, 1),
        "scores": means,
        "iou_trained_minus_random": differences,
        "markdown": iou_markdown(mean_iou, args.fraction),
    }, indent=1))


if __name__ == "__main__":
    main()
