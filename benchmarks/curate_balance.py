"""`dinolab curate --balance kmeans` on a class-imbalanced Fashion-MNIST pool: the class histogram before and
after hierarchical k-means balancing (DINOv3's data balancing), against a uniform random sample of the same
size and against the best a labelled sample could do.

The pool: the 10 Fashion-MNIST training classes at geometrically falling sizes, --largest images of the
first class down to --smallest of the last (6000, 3804, ..., 100: 16,223 images), drawn with a fixed seed.
Embeddings: raw pixels (L2-normalized), a random-init ViT-Tiny/7 (seed 0), and each --checkpoint (the
normalized [CLS] token, as `dinolab curate` embeds; the checkpoint's own normalization). Balancing:
`hierarchical_kmeans` + `balanced_sample` (the functions `dinolab curate` runs) for each --clusters setting,
to --target images. Labels are only used to score.

Per setting: the class counts, their normalized entropy (1 = every class equally often), the largest/smallest
class ratio, and the seconds the k-means took. Prints JSON. Run by hand:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/curate_balance.py \
        --checkpoint dino=runs/small_data/demo/checkpoint.pth > benchmarks/results/curate_balance.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dinolab.curate import balanced_quotas, balanced_sample, hierarchical_kmeans, normalized
from dinolab.data.datasets import FashionMNIST
from dinolab.data.transforms import normalize_uint8
from dinolab.hub import load_model
from dinolab.models import vit_tiny

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)


def class_sizes(largest: int, smallest: int, classes: int = 10) -> list[int]:
    """Geometric sizes from `largest` down to `smallest`."""
    return [round(largest * (smallest / largest) ** (c / (classes - 1))) for c in range(classes)]


def imbalanced_pool(train: FashionMNIST, sizes: list[int], seed: int = 0) -> np.ndarray:
    """Sorted training indices: sizes[c] random images of class c."""
    rng = np.random.default_rng(seed)
    labels = train.labels.numpy()
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False)
                                   for c, n in enumerate(sizes)]))


@torch.no_grad()
def cls_embeddings(model: torch.nn.Module, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                   batch: int = 512) -> np.ndarray:
    """The L2-normalized [CLS] token (after the final norm) of uint8 images (N, 1, 28, 28)."""
    model.eval()
    rows = [model.forward_features(normalize_uint8(images[i:i + batch], mean, std))["x_norm_clstoken"]
            for i in range(0, len(images), batch)]
    return normalized(torch.cat(rows).float().numpy())


def histogram_scores(labels: np.ndarray, classes: int = 10) -> dict:
    counts = np.bincount(labels, minlength=classes)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum() / np.log(classes))
    return {"counts": counts.tolist(), "normalized_entropy": round(entropy, 4),
            "largest_over_smallest": round(float(counts.max() / max(counts.min(), 1)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fmnist-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--largest", type=int, default=6000)
    parser.add_argument("--smallest", type=int, default=100)
    parser.add_argument("--target", type=int, default=3000)
    parser.add_argument("--clusters", nargs="+", default=["100,10", "1000,100"],
                        help="cluster levels (finest first) to try, each like 1000,100")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="NAME=PATH backbones to measure besides pixels "
                                                                    "and the random-init ViT")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = FashionMNIST(args.fmnist_dir, "train")
    sizes = class_sizes(args.largest, args.smallest)
    pool = imbalanced_pool(train, sizes, args.seed)
    images, labels = train.images[pool], train.labels[pool].numpy()

    torch.manual_seed(0)
    features = {"raw pixels": normalized(images.reshape(len(images), -1).float().numpy()),
                "random-init ViT-Tiny/7": cls_embeddings(vit_tiny(img_size=28, patch_size=7, in_chans=1), images,
                                                         FMNIST_MEAN, FMNIST_STD)}
    for spec in args.checkpoint:
        name, path = spec.split("=", 1)
        loaded = load_model(path)
        features[name] = cls_embeddings(loaded.backbone, images, loaded.config.data.mean, loaded.config.data.std)

    rng = np.random.default_rng(args.seed)
    best = balanced_quotas(sizes, args.target)  # with labels: as even as the class sizes allow
    results = {
        "machine": "2 shared CPU cores (other jobs running), 1 torch thread",
        "pool": {"images": len(pool), "class_sizes": sizes, **histogram_scores(labels)},
        "target": args.target,
        "uniform_random_sample": histogram_scores(labels[rng.choice(len(pool), args.target, replace=False)]),
        "labelled_best": histogram_scores(np.repeat(np.arange(10), best)),
        "balanced": {},
    }
    for name, x in features.items():
        for setting in args.clusters:
            levels = [int(k) for k in setting.split(",")]
            started = time.perf_counter()
            hierarchy = hierarchical_kmeans(x, levels, "exact", args.seed)
            seconds = time.perf_counter() - started
            kept = balanced_sample(hierarchy, args.target, args.seed)
            results["balanced"][f"{name}, clusters {setting}"] = {**histogram_scores(labels[kept]),
                                                                  "kmeans_seconds": round(seconds, 1)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
