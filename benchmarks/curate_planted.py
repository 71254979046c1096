"""`dinolab curate` on planted truth: near-duplicate precision/recall and seed-retrieval purity.

The pool (written to --workdir): N Fashion-MNIST training images as PNG, near-duplicates of some of them
(re-encoded as JPEG quality 75, a 1-2 px crop resized back, brightened x1.3; one copy each, kinds taken
in turn), synthetic images (uniform noise, random rectangles and ellipses), and JPEG copies of half of an
"evaluation set" of Fashion-MNIST test images (leaks). The seed set: other Fashion-MNIST test images of 3
classes. File names carry the truth (class, planted original, leak).

Measured for each feature set (raw pixels, a random-init ViT, optionally --checkpoint files):
- dedup, swept over thresholds: pair recall (planted pairs that end up in one group), pair precision
  (pairs inside predicted groups that are planted pairs: groups chained through Fashion-MNIST's many
  look-alikes make it tiny), resolved pairs (exactly one image of the pair kept), removal precision
  (resolved pairs / images removed: how much of what dedup removes is a planted copy), images removed;
- decontamination, swept over thresholds: precision and recall of the leaked images removed;
- retrieval purity: fraction of retrieved pool images whose class is one of the seed's 3 classes (chance:
  that fraction in the whole pool), per-image (4 neighbours per seed image) and cluster retrieval
  (sqrt(N), N/10 and 4 x seed-set-size clusters);
- one end-to-end `curate()` run with the random-init checkpoint: stage sizes and seconds.
Prints JSON. Run by hand:

    .venv/bin/python benchmarks/curate_planted.py > benchmarks/results/curate_planted.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance

from dinolab.curate import deduplicate, knn, normalized, retrieve_clusters, retrieve_per_image
from dinolab.curate.pipeline import CurateSettings, curate, embed_images, weights_digest
from dinolab.data.datasets import FashionMNIST
from dinolab.hub import load_model, save_backbone
from dinolab.models import vit_tiny

THRESHOLDS = (0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)
COPY_KINDS = ("jpeg", "crop", "bright")


def save_copy(image: Image.Image, kind: str, stem: Path, rng: np.random.Generator) -> None:
    """Write a near-duplicate of a 28x28 grayscale image to `stem` + .jpg or .png."""
    if kind == "jpeg":
        image.save(stem.with_name(stem.name + ".jpg"), quality=75)
        return
    if kind == "crop":
        left, top, right, bottom = (int(v) for v in rng.integers(1, 3, size=4))
        copy = image.crop((left, top, 28 - right, 28 - bottom)).resize((28, 28), Image.BILINEAR)
    else:
        copy = ImageEnhance.Brightness(image).enhance(1.3)
    copy.save(stem.with_name(stem.name + ".png"))


def synthetic(k: int, rng: np.random.Generator) -> Image.Image:
    """Uniform noise (even k) or a few random rectangles and ellipses on black (odd k)."""
    if k % 2 == 0:
        return Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8))
    image = Image.new("L", (28, 28))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = (int(v) for v in rng.integers(0, 20, size=2))
        x1, y1 = x0 + int(rng.integers(4, 12)), y0 + int(rng.integers(4, 12))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape((x0, y0, x1, y1), fill=int(rng.integers(80, 256)))
    return image


def build(root: Path, n_pool: int, n_copies: int, n_synthetic: int, n_seed: int, seed_classes: tuple[int, ...],
          n_exclude: int, fmnist_dir: str | None) -> None:
    rng = np.random.default_rng(0)
    train, test = FashionMNIST(fmnist_dir, "train"), FashionMNIST(fmnist_dir, "test")
    chosen = np.sort(rng.choice(len(train), n_pool, replace=False))
    for n, i in enumerate(chosen):  # the first n_copies of a random sample: a random subset
        image = Image.fromarray(train.images[i, 0].numpy())
        image.save(root / "pool" / "fmnist" / f"{i:05d}_c{int(train.labels[i])}.png")
        if n < n_copies:
            kind = COPY_KINDS[n % len(COPY_KINDS)]
            save_copy(image, kind, root / "pool" / "copies" / f"{i:05d}_c{int(train.labels[i])}_{kind}", rng)
    for k in range(n_synthetic):
        synthetic(k, rng).save(root / "pool" / "synthetic" / f"{k:04d}.png")
    candidates = np.flatnonzero(np.isin(test.labels.numpy(), seed_classes))
    seed = np.sort(rng.choice(candidates, n_seed, replace=False))
    for j in seed:
        Image.fromarray(test.images[j, 0].numpy()).save(root / "seed" / f"{j:05d}_c{int(test.labels[j])}.png")
    others = np.setdiff1d(np.arange(len(test)), seed)
    for n, j in enumerate(np.sort(rng.choice(others, n_exclude, replace=False))):  # the evaluation set
        image = Image.fromarray(test.images[j, 0].numpy())
        image.save(root / "exclude" / f"{j:05d}_c{int(test.labels[j])}.png")
        if n < n_exclude // 2:  # half of it leaked into the pool, re-encoded
            image.save(root / "pool" / "leaks" / f"{j:05d}_c{int(test.labels[j])}.jpg", quality=75)


def truth(paths: list[str]) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Class of each pool path (-1: synthetic) and the planted (original, copy) pairs as sorted row pairs."""
    labels = np.array([int(m[1]) if (m := re.search(r"_c(\d)", Path(p).name)) else -1 for p in paths])
    originals = {Path(p).name[:5]: i for i, p in enumerate(paths) if "/fmnist/" in p}
    pairs = {tuple(sorted((originals[Path(p).name[:5]], i))) for i, p in enumerate(paths) if "/copies/" in p}
    return labels, pairs


def dedup_scores(x: np.ndarray, planted: set[tuple[int, int]], kinds: dict[int, str], threshold: float) -> dict:
    started = time.perf_counter()
    result = deduplicate(x, threshold, backend="exact")
    seconds = time.perf_counter() - started
    predicted = {(a, b) for g in result.groups for i, a in enumerate(g) for b in g[i + 1:]}
    hits = len(predicted & planted)
    kept = set(result.keep.tolist())
    one_kept = {kind: 0 for kind in COPY_KINDS}  # pairs with exactly one image kept, by kind of copy
    for a, b in planted:
        one_kept[kinds.get(a) or kinds[b]] += (a in kept) != (b in kept)  # one of the two is the copy
    resolved = sum(one_kept.values())
    removed = len(x) - len(result.keep)
    return {"threshold": threshold, "pair_precision": hits / len(predicted) if predicted else None,
            "pair_recall": hits / len(planted), "resolved_pairs": resolved, "resolved_by_kind": one_kept,
            "removal_precision": resolved / removed if removed else None, "removed": removed,
            "groups": len(result.groups), "largest_group": max(map(len, result.groups), default=1),
            "seconds": round(seconds, 3)}


def decontamination_scores(x: np.ndarray, leaked: np.ndarray, reference: np.ndarray) -> list[dict]:
    nearest = knn(x, reference, 1, "exact")[0][:, 0]
    out = []
    for t in THRESHOLDS:
        flagged = nearest >= t
        hits = int((flagged & leaked).sum())
        out.append({"threshold": t, "precision": hits / flagged.sum() if flagged.any() else None,
                    "recall": hits / leaked.sum(), "removed": int(flagged.sum())})
    return out


def retrieval_scores(x: np.ndarray, labels: np.ndarray, seed: np.ndarray, seed_classes: tuple[int, ...]) -> dict:
    relevant = np.isin(labels, seed_classes)
    out = {"chance": float(relevant.mean())}
    ways = {"per_image_4": lambda: retrieve_per_image(x, seed, 4, "exact")}
    for k in (round(len(x) ** 0.5), len(x) // 10, min(len(x), 4 * len(seed))):  # the CLI's default, and more
        ways[f"cluster_k{k}"] = lambda k=k: retrieve_clusters(x, seed, k, None, "exact")
    for name, pick in ways.items():
        started = time.perf_counter()
        kept = pick()
        out[name] = {"retrieved": len(kept), "purity": float(relevant[kept].mean()),
                     "seconds": round(time.perf_counter() - started, 3)}
    return out


def pixels(paths: list[str]) -> np.ndarray:
    return normalized(np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32).ravel() for p in paths]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/curate_planted")
    parser.add_argument("--pool", type=int, default=2000)
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--synthetic", type=int, default=300)
    parser.add_argument("--seed-images", type=int, default=200)
    parser.add_argument("--exclude", type=int, default=100, help="evaluation images, half of them leaked")
    parser.add_argument("--seed-classes", type=int, nargs="+", default=[0, 7, 8], help="T-shirt, sneaker, bag")
    parser.add_argument("--fmnist-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="more backbones to measure")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.workdir)
    seed_classes = tuple(args.seed_classes)
    if not (root / "seed").is_dir():
        for sub in ("pool/fmnist", "pool/copies", "pool/synthetic", "pool/leaks", "exclude", "seed"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        build(root, args.pool, args.copies, args.synthetic, args.seed_images, seed_classes, args.exclude,
              args.fmnist_dir)

    torch.manual_seed(0)
    model = vit_tiny(img_size=28, patch_size=7, in_chans=1)
    random_init = save_backbone(model, root / "vit_tiny_p7_random.safetensors")
    results = {"pool": {}, "features": {}}
    for name, checkpoint in [("random-init ViT-Tiny/7", random_init), *((str(c), c) for c in args.checkpoint)]:
        loaded = load_model(checkpoint)
        weights = weights_digest(loaded)
        started = time.perf_counter()
        pool = embed_images(loaded, weights, root / "pool", "pool", root / "work", 28, 256, None, quiet=True)
        embed_s = time.perf_counter() - started
        seed = embed_images(loaded, weights, root / "seed", "seed", root / "work", 28, 256, None, quiet=True)
        exclude = embed_images(loaded, weights, root / "exclude", "exclude", root / "work", 28, 256, None, quiet=True)
        results["features"][name] = {"x": pool.x, "seed": seed.x, "exclude": exclude.x,
                                     "embed_seconds": round(embed_s, 2)}
        mean = pool.x.mean(0)  # centered: minus the pool's mean embedding, re-normalized
        results["features"][f"{name}, centered"] = {k: normalized(v - mean) for k, v in
                                                    (("x", pool.x), ("seed", seed.x), ("exclude", exclude.x))}
    seed_paths = sorted(str(p) for p in (root / "seed").iterdir())
    exclude_paths = sorted(str(p) for p in (root / "exclude").iterdir())
    results["features"]["raw pixels"] = {"x": pixels(pool.paths), "seed": pixels(seed_paths),
                                         "exclude": pixels(exclude_paths)}
    labels, planted = truth(pool.paths)
    leaked = np.array(["/leaks/" in p for p in pool.paths])
    kinds = {i: Path(p).stem.rsplit("_", 1)[1] for i, p in enumerate(pool.paths) if "/copies/" in p}
    results["pool"] = {"images": len(pool.paths), "planted_pairs": len(planted), "seed_images": len(seed_paths),
                       "seed_classes": list(seed_classes), "exclude_images": len(exclude_paths),
                       "leaked_into_pool": int(leaked.sum())}
    for f in results["features"].values():
        f["dedup"] = [dedup_scores(f["x"], planted, kinds, t) for t in THRESHOLDS]
        f["decontamination"] = decontamination_scores(f["x"], leaked, f.pop("exclude"))
        f["retrieval"] = retrieval_scores(f.pop("x"), labels, f.pop("seed"), seed_classes)

    started = time.perf_counter()
    report = curate(root / "pool", root / "end_to_end" / "curated.txt", random_init, seed=root / "seed",
                    exclude=[root / "exclude"],
                    settings=CurateSettings(retrieve="image"), image_size=28, quiet=True)
    results["end_to_end_random_init"] = {"sizes": report.sizes, "seconds": report.seconds,
                                         "total_seconds": round(time.perf_counter() - started, 2)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
