"""How the cost of `dinolab curate` (embed, deduplicate, retrieve) grows with the pool: seconds per stage
and peak memory at several pool sizes of Fashion-MNIST training images, for each search index.

The images are written once as PNG files under --workdir; each pool size is a folder of symlinks to the
first N of a seeded permutation, and the seed set is --seed-images test images of 3 classes. The backbone
is a ViT-Tiny/7 with the demo's shape (4 blocks, width 192, 28 px, 1 channel) at random init: embedding
costs what the demo model's does, and anyone can rerun it. Each (size, search) runs `curate()` in its own
process, so its peak resident memory (ru_maxrss) is its own; the first search of a size embeds (into a fresh
work folder), the others reuse those embeddings. Then, on the largest pool's embeddings, the IVF index's
recall against exact search for the k-NN graph deduplication reads (k = 33).

Prints JSON. Run by hand (about 10 minutes on 2 shared cores):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/curate_scale.py > benchmarks/results/curate_scale.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinolab.curate import CurateSettings, curate, knn
from dinolab.curate.search import NPROBE, ivf_lists
from dinolab.data.datasets import FashionMNIST
from dinolab.hub import save_backbone
from dinolab.models import vit_tiny

SEED_CLASSES = (0, 7, 8)  # T-shirt, sneaker, bag
NEIGHBORS = 32  # dedup's default k-NN graph
# A random-init ViT puts most images above the default 0.95 (docs/curate.md); this high threshold keeps the pool
# whole, so retrieval runs on all of it. The k-NN graph, the cost of dedup, does not depend on the threshold.
DEDUP_THRESHOLD = 0.9999


def write_images(root: Path, fmnist_dir: str, largest: int, seed_images: int) -> None:
    """PNG files of `largest` training images (seeded order) and the seed set, if not there yet."""
    if (root / "seed").is_dir():
        return
    train, test = FashionMNIST(fmnist_dir, "train"), FashionMNIST(fmnist_dir, "test")
    order = np.random.default_rng(0).permutation(len(train))[:largest]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for rank, i in enumerate(order):
        Image.fromarray(train.images[i, 0].numpy()).save(root / "images" / f"{rank:05d}_c{int(train.labels[i])}.png")
    candidates = np.flatnonzero(np.isin(test.labels.numpy(), SEED_CLASSES))
    (root / "seed_tmp").mkdir()
    for j in np.random.default_rng(1).choice(candidates, seed_images, replace=False):
        Image.fromarray(test.images[j, 0].numpy()).save(root / "seed_tmp" / f"{j:05d}.png")
    (root / "seed_tmp").rename(root / "seed")


def pool_folder(root: Path, size: int) -> Path:
    """A folder of symlinks to the first `size` images."""
    folder = root / f"pool_{size}"
    if not folder.is_dir():
        tmp = root / f"pool_{size}.tmp"
        tmp.mkdir()
        for path in sorted((root / "images").iterdir())[:size]:
            (tmp / path.name).symlink_to(path)
        tmp.rename(folder)
    return folder


def child(spec: dict) -> dict:
    """One `curate()` run in this process: the report's sizes and seconds, and memory before and at peak."""
    torch.set_num_threads(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    report = curate(spec["pool"], spec["out"], spec["checkpoint"], seed=spec["seed"],
                    settings=CurateSettings(dedup_threshold=DEDUP_THRESHOLD, retrieve="image", search=spec["search"]),
                    image_size=28, batch_size=256, quiet=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"sizes": report.sizes, "seconds": report.seconds, "total_seconds": round(time.perf_counter() - started, 2),
            "rss_before_mb": round(before), "peak_rss_mb": round(peak)}


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), exact.tolist(), strict=True)]))


def ivf_check(embeddings: np.ndarray) -> dict:
    """The k-NN graph of dedup from IVF vs exact (faiss flat) on the same embeddings: recall and seconds."""
    out = {"vectors": len(embeddings), "lists": ivf_lists(len(embeddings)), "k": NEIGHBORS + 1}
    started = time.perf_counter()
    exact = knn(embeddings, embeddings, NEIGHBORS + 1, "flat")[1]
    out["flat_seconds"] = round(time.perf_counter() - started, 1)
    for nprobe in (8, NPROBE, 128):
        started = time.perf_counter()
        found = knn(embeddings, embeddings, NEIGHBORS + 1, "ivf", nprobe=nprobe)[1]
        out[f"ivf_nprobe{nprobe}"] = {"seconds": round(time.perf_counter() - started, 1),
                                      "recall": round(recall(found, exact), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/curate_scale")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 60000])
    parser.add_argument("--searches", nargs="+", default=["exact", "flat", "ivf"])
    parser.add_argument("--seed-images", type=int, default=500)
    parser.add_argument("--fmnist-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON spec: run one curate() and print its numbers
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    root = Path(args.workdir)
    started = time.perf_counter()
    write_images(root, args.fmnist_dir, max(args.sizes), args.seed_images)
    torch.manual_seed(0)
    checkpoint = save_backbone(vit_tiny(img_size=28, patch_size=7, in_chans=1, depth=4),
                               root / "vit_tiny_p7_d4.safetensors")
    results = {"machine": "2 shared CPU cores (other jobs running), 1 torch thread per process",
               "backbone": "ViT-Tiny/7, 4 blocks, width 192, random init (the demo model's cost)",
               "dedup_threshold": DEDUP_THRESHOLD, "seed_images": args.seed_images,
               "write_png_seconds": round(time.perf_counter() - started, 1),
               "runs": []}
    for size in args.sizes:
        out = root / f"out_{size}" / "curated.txt"
        shutil.rmtree(out.parent, ignore_errors=True)  # the first search of a size embeds
        for search in args.searches:
            spec = {"pool": str(pool_folder(root, size)), "out": str(out), "checkpoint": str(checkpoint),
                    "seed": str(root / "seed"), "search": search}
            done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, check=True)
            results["runs"].append({"pool": size, "search": search, **json.loads(done.stdout.splitlines()[-1])})
            print(json.dumps(results["runs"][-1]), file=sys.stderr)
    largest = max(args.sizes)
    work = root / f"out_{largest}" / "curated.work"
    embeddings = np.load(next(work.glob("pool-*.npy")))
    torch.set_num_threads(1)
    results["ivf_recall"] = ivf_check(np.ascontiguousarray(embeddings[~np.isnan(embeddings).any(1)]))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
