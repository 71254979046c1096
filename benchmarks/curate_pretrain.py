"""Pretrain on a curated pool vs the raw pool at the same budget; weighted k-NN on Fashion-MNIST (#15).

The raw pool (--workdir/pool, built with curate_planted's helpers): --fmnist Fashion-MNIST training images
(PNG), one near-duplicate of --copies of them (JPEG q75 / 1-2 px crop / brightened, in turn), junk
(curate_planted.synthetic: uniform noise and random rectangles/ellipses; and random crops of matplotlib's
sample photos, grayscale, resized to 28 px), and JPEG copies of half of an --exclude set of Fashion-MNIST
test images (leaks). Seed set: --seed-per-class training images of each of the 10 classes, none of them in
the pool. Curated: `dinolab curate` with the demo backbone (dedup, decontamination, per-image retrieval).

Same budget: both runs train the demo recipe for one epoch (or --epochs) over a list of --budget entries (so the
same iterations, learning-rate / momentum schedules and images seen): raw = a uniform sample without replacement
of the raw pool; curated = the curated list repeated (shuffled copies) and cut to --budget (a budget
smaller than the curated list, as the default 4,000: a uniform sample of it, each image once). Same
normalization for both (Fashion-MNIST's 0.2860 / 0.3530). Scored with `dinolab.eval.knn.knn`: the 10k test
images against the 60k training images, k = 10, 20, 100, 200, T = 0.07, the EMA teacher's backbone.

Stages (each writes --workdir/stage_*.json; the arms can run in parallel processes). `build` run again on
a built workdir keeps the pool and the curation and only writes the two lists again (for another --budget).
`--draw N` builds another pool and other lists from the same recipe (in another --workdir), to see how much
the comparison depends on one draw:

    export OMP_NUM_THREADS=2
    .venv/bin/python benchmarks/curate_pretrain.py build       # pool, seed, curate, the two lists
    .venv/bin/python benchmarks/curate_pretrain.py train raw
    .venv/bin/python benchmarks/curate_pretrain.py train curated
    .venv/bin/python benchmarks/curate_pretrain.py random-init
    .venv/bin/python benchmarks/curate_pretrain.py report > benchmarks/results/curate_pretrain.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curate_planted import COPY_KINDS, save_copy, synthetic  # noqa: E402

from dinolab.data.datasets import FashionMNIST  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DINOLAB = str(ROOT / ".venv" / "bin" / "dinolab")
KS = (10, 20, 100, 200)
MEAN, STD = (0.286,), (0.353,)
PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


def photo_crop(photos: list[Image.Image], rng: np.random.Generator) -> Image.Image:
    photo = photos[int(rng.integers(len(photos)))]
    side = int(rng.integers(24, min(photo.size) // 2))
    x, y = int(rng.integers(0, photo.width - side)), int(rng.integers(0, photo.height - side))
    return photo.crop((x, y, x + side, y + side)).resize((28, 28), Image.BILINEAR)


def build_pool(root: Path, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.draw)
    for sub in ("pool/fmnist", "pool/copies", "pool/synthetic", "pool/photos", "pool/leaks", "exclude", "seed"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    train, test = FashionMNIST(args.fmnist_dir, "train"), FashionMNIST(args.fmnist_dir, "test")
    order = rng.permutation(len(train))
    chosen, rest = np.sort(order[: args.fmnist]), order[args.fmnist:]
    for n, i in enumerate(chosen):
        image = Image.fromarray(train.images[i, 0].numpy())
        image.save(root / "pool" / "fmnist" / f"{i:05d}_c{int(train.labels[i])}.png")
        if n < args.copies:
            kind = COPY_KINDS[n % len(COPY_KINDS)]
            save_copy(image, kind, root / "pool" / "copies" / f"{i:05d}_c{int(train.labels[i])}_{kind}", rng)
    for k in range(args.synthetic):  # even k: uniform noise, odd k: rectangles and ellipses
        synthetic(k, rng).save(root / "pool" / "synthetic" / f"{k:05d}.png")
    sample_data = Path(matplotlib.get_data_path()) / "sample_data"
    photos = [Image.open(sample_data / name).convert("L") for name in PHOTOS]
    for k in range(args.photos):
        photo_crop(photos, rng).save(root / "pool" / "photos" / f"{k:05d}.png")
    labels = train.labels.numpy()
    for c in range(10):  # the seed set: training images of every class, none in the pool
        for i in np.sort(rest[labels[rest] == c][: args.seed_per_class]):
            Image.fromarray(train.images[i, 0].numpy()).save(root / "seed" / f"{i:05d}_c{c}.png")
    for n, j in enumerate(np.sort(rng.choice(len(test), args.exclude, replace=False))):
        image = Image.fromarray(test.images[j, 0].numpy())
        image.save(root / "exclude" / f"{j:05d}_c{int(test.labels[j])}.png")
        if n < args.exclude // 2:
            image.save(root / "pool" / "leaks" / f"{j:05d}_c{int(test.labels[j])}.jpg", quality=75)
    counts = {sub: len(list((root / "pool" / sub).iterdir())) for sub in
              ("fmnist", "copies", "synthetic", "photos", "leaks")}
    total = sum(counts.values())
    junk = counts["synthetic"] + counts["photos"]
    return {"counts": counts, "images": total, "junk_fraction": round(junk / total, 4),
            "seed_images": len(list((root / "seed").iterdir())), "exclude_images": args.exclude}


def composition(paths: list[str]) -> dict:
    kinds = {sub: sum(f"/pool/{sub}/" in p for p in paths) for sub in
             ("fmnist", "copies", "synthetic", "photos", "leaks")}
    classes = np.bincount([int(Path(p).name.split("_c")[1][0]) for p in paths if "/pool/fmnist/" in p or
                           "/pool/copies/" in p], minlength=10)
    return {"images": len(paths), "by_kind": kinds, "fmnist_classes": classes.tolist(),
            "junk_fraction": round((kinds["synthetic"] + kinds["photos"]) / max(len(paths), 1), 4)}


def run(cmd: list[str]) -> float:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": str(os.environ.get("OMP_NUM_THREADS", 2))})
    return round(time.perf_counter() - started, 1)


def stage_build(root: Path, args: argparse.Namespace) -> dict:
    done = root / "stage_build.json"
    if done.is_file():  # pool and curation done: only the two lists are written again (another --budget)
        earlier = json.loads(done.read_text())
        pool, build_s = earlier["pool"], earlier["build_seconds"]
        curate_s = earlier["curate_seconds"]
    else:
        started = time.perf_counter()
        pool = build_pool(root, args)
        build_s = round(time.perf_counter() - started, 1)
    curate_cmd = [DINOLAB, "curate", "--pool", str(root / "pool"), "--seed", str(root / "seed"), "--exclude",
                  str(root / "exclude"), "--checkpoint", args.checkpoint, "--image-size", "28", "--retrieve", "image",
                  "--neighbors", str(args.neighbors), "--dedup-threshold", str(args.dedup_threshold),
                  "--exclude-threshold", str(args.exclude_threshold), "--out", str(root / "curated.txt")]
    if not done.is_file():
        curate_s = run(curate_cmd)
    report = json.loads((root / "curated.report.json").read_text())
    raw_all = sorted(str(p) for p in (root / "pool").rglob("*") if p.is_file())
    curated = (root / "curated.txt").read_text().split()
    rng = np.random.default_rng(args.draw + 1)
    raw_list = list(rng.choice(raw_all, args.budget, replace=False))
    repeats = -(-args.budget // len(curated))
    cycled = [p for _ in range(repeats) for p in rng.permutation(curated)][: args.budget]
    (root / "raw_budget.txt").write_text("\n".join(raw_list) + "\n")
    (root / "curated_budget.txt").write_text("\n".join(cycled) + "\n")
    return {"pool": pool, "build_seconds": build_s, "curate_command": " ".join(curate_cmd),
            "curate_seconds": curate_s, "curate_sizes": report.get("sizes"),
            "curate_stage_seconds": report.get("seconds"),
            "duplicate_groups": report.get("duplicate_groups"), "raw_pool": composition(raw_all),
            "curated": composition(curated), "budget": args.budget,
            "raw_list": composition(raw_list), "curated_list": composition(cycled),
            "curated_repeats": round(args.budget / len(curated), 2), "draw": args.draw}


def knn_scores(backbone: torch.nn.Module) -> tuple[dict, float]:
    from dinolab.device import resolve
    from dinolab.eval.knn import knn

    started = time.perf_counter()
    scores = knn(backbone, FashionMNIST(split="train"), FashionMNIST(split="test"), KS, 0.07, MEAN, STD, 256,
                 resolve("cpu", "fp32"), True)
    return {str(k): v for k, v in scores.items()}, round(time.perf_counter() - started, 1)


def run_suffix(args: argparse.Namespace) -> str:
    """Which run of an arm: the training seed and the epochs over the list, where not the defaults."""
    return (f"_seed{args.train_seed}" if args.train_seed else "") + (f"_e{args.epochs}" if args.epochs != 1 else "")


def stage_train(root: Path, arm: str, args: argparse.Namespace) -> dict:
    from dinolab.hub import load_backbone

    out = root / "runs" / f"{arm}{run_suffix(args)}"
    cmd = [DINOLAB, "train", "dino_vit_tiny_fmnist", "data.dataset=folder",
           f"data.file_list={root / f'{arm}_budget.txt'}", f"data.mean=[{MEAN[0]}]", f"data.std=[{STD[0]}]",
           f"optim.epochs={args.epochs}", "data.num_workers=1", f"train.num_threads={args.threads}", "eval.knn_every=0",
           f"train.output_dir={out}",
           *([f"train.seed={args.train_seed}"] if args.train_seed else [])]
    train_s = run(cmd)
    torch.set_num_threads(args.threads)
    scores, knn_s = knn_scores(load_backbone(out / "checkpoint.pth"))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"command": " ".join(cmd), "train_seconds": train_s, "knn_seconds": knn_s, "knn": scores,
            "iterations": metrics[-1]["iteration"] if metrics else None,
            "last_logged": {k: metrics[-1].get(k) for k in ("loss", "teacher_entropy", "kl")} if metrics else None}


def stage_random(args: argparse.Namespace) -> dict:
    from dinolab import config as config_lib
    from dinolab.eval.baselines import random_init_like
    from dinolab.models.build import build_backbone

    torch.set_num_threads(args.threads)
    model = random_init_like(build_backbone(config_lib.load("dino_vit_tiny_fmnist")), 0)
    scores, knn_s = knn_scores(model)
    return {"knn": scores, "knn_seconds": knn_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("build", "train", "random-init", "report"))
    parser.add_argument("arm", nargs="?", choices=("raw", "curated"))
    parser.add_argument("--workdir", default="/tmp/curate_pretrain")
    parser.add_argument("--fmnist", type=int, default=10000, help="Fashion-MNIST training images in the pool")
    parser.add_argument("--copies", type=int, default=1000, help="near-duplicates of that many of them")
    parser.add_argument("--synthetic", type=int, default=7000, help="noise and geometric junk (half each)")
    parser.add_argument("--photos", type=int, default=3500, help="junk: crops of matplotlib's sample photos")
    parser.add_argument("--exclude", type=int, default=200, help="evaluation images, half of them leaked")
    parser.add_argument("--seed-per-class", type=int, default=30)
    parser.add_argument("--checkpoint", default=str(ROOT / "runs/small_data/demo/checkpoint.pth"))
    parser.add_argument("--neighbors", type=int, default=32)
    parser.add_argument("--dedup-threshold", type=float, default=0.97)
    parser.add_argument("--exclude-threshold", type=float, default=0.98)
    parser.add_argument("--budget", type=int, default=4000, help="list entries = images seen in the one epoch")
    parser.add_argument("--train-seed", type=int, default=0, help="train: train.seed (0: the recipe's)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="train: epochs over the --budget list (a longer run at the same list; same for both arms)")
    parser.add_argument("--threads", type=int, default=2,
                        help="train / random-init: torch threads (1: two arms side by side)")
    parser.add_argument("--draw", type=int, default=0,
                        help="build: seed of the pool's images (which Fashion-MNIST images, copies, junk, seed set, "
                             "leaks) and, plus one, of the two lists; use a new --workdir per draw")
    parser.add_argument("--note", default="", help="report: a line on how the run went")
    parser.add_argument("--machine", default="2-core CPU (OMP_NUM_THREADS=2)", help="report: the machine, in words")
    parser.add_argument("--fmnist-dir", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    if args.stage == "report":
        parts = {p.stem: json.loads(p.read_text()) for p in sorted(root.glob("stage_*.json"))}
        print(json.dumps({"date": time.strftime("%Y-%m-%d", time.gmtime()),
                          "machine": args.machine,
                          "note": args.note, **parts}, indent=1))
        return
    if args.stage == "build":
        result = stage_build(root, args)
    elif args.stage == "train":
        if args.arm is None:
            parser.error("train takes an arm: raw or curated")
        result = stage_train(root, args.arm, args)
    else:
        result = stage_random(args)
    name = f"stage_{args.stage.replace('-', '_')}{'_' + args.arm if args.arm else ''}"
    name += run_suffix(args) if args.stage == "train" else ""
    (root / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
