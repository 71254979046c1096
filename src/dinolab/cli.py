"""Command line: parses arguments, builds a config, calls the library. No logic of its own."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from dinolab import config as config_lib
from dinolab.config import ConfigError
from dinolab.train.checkpoint import CheckpointError


def _train(args: argparse.Namespace) -> None:
    from dinolab.train.trainer import fit

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = config_lib.load(args.config, overrides)
    resume: str | bool = args.resume if args.resume else not args.no_resume
    result = fit(cfg, resume=resume, quiet=args.quiet)
    print(f"run directory: {result.run_dir}")


def _demo(args: argparse.Namespace) -> None:
    from dinolab.demo import run_demo

    run_demo(config_lib.load(args.config, list(args.overrides)), quiet=args.quiet)


def _eval_knn(args: argparse.Namespace) -> None:
    from dinolab.data.loader import build_eval_dataset
    from dinolab.device import resolve
    from dinolab.eval.knn import knn
    from dinolab.train.trainer import teacher_from_checkpoint

    checkpoint = Path(args.checkpoint)
    model, cfg = teacher_from_checkpoint(checkpoint)
    fmnist = args.data == "fmnist"
    data_cfg = dataclasses.replace(
        cfg.data,
        dataset="fmnist" if fmnist else "folder",
        path=args.fmnist_dir or "",
        global_crops_size=args.image_size or cfg.data.global_crops_size,
    )
    splits = (None, None) if fmnist else (Path(args.data) / args.train_split, Path(args.data) / args.test_split)
    train_ds = build_eval_dataset(data_cfg, cfg.model.in_chans, "train", splits[0])
    test_ds = build_eval_dataset(data_cfg, cfg.model.in_chans, "test", splits[1], classes=train_ds.classes)
    results = knn(
        model, train_ds, test_ds, k=tuple(args.k), temperature=args.temperature, mean=cfg.data.mean,
        std=cfg.data.std, batch_size=args.batch_size, runtime=resolve(args.device, args.precision), quiet=args.quiet,
    )
    for k, r in results.items():
        print(f"k={k}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%")
    if args.out:
        Path(args.out).write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinolab", description="DINO-family self-supervised ViT pretraining")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    recipes = ", ".join(config_lib.available_recipes())
    train = sub.add_parser("train", help="pretrain a ViT", description=f"shipped recipes: {recipes}")
    train.add_argument("config", help="recipe name or YAML file")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.epochs=5")
    train.add_argument("--output-dir", help="run directory (same as train.output_dir=...)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="resume from this checkpoint file")
    train.add_argument("--no-resume", action="store_true", help="ignore a checkpoint already in the run dir")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_train)

    demo = sub.add_parser("demo", help="pretrain on Fashion-MNIST and compare k-NN with baselines")
    demo.add_argument("config", nargs="?", default="dino_vit_tiny_fmnist")
    demo.add_argument("overrides", nargs="*")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_demo)

    ev = sub.add_parser("eval", help="evaluate frozen features")
    ev_sub = ev.add_subparsers(dest="protocol", required=True)
    knn = ev_sub.add_parser("knn", help="weighted k-NN classification (T=0.07)")
    knn.add_argument("--checkpoint", required=True, help="dinolab training checkpoint (file or run dir)")
    knn.add_argument("--data", required=True, help="'fmnist', or a folder with train/ and test/ class folders")
    knn.add_argument("--fmnist-dir", default=None, help="folder of the Fashion-MNIST IDX files")
    knn.add_argument("--train-split", default="train")
    knn.add_argument("--test-split", default="test")
    knn.add_argument("--image-size", type=int, default=0, help="eval crop size (default: the global crop size)")
    knn.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200])
    knn.add_argument("--temperature", type=float, default=0.07)
    knn.add_argument("--batch-size", type=int, default=256)
    knn.add_argument("--device", default="auto")
    knn.add_argument("--precision", default="auto")
    knn.add_argument("--out", help="write the results as JSON here")
    knn.add_argument("--quiet", action="store_true")
    knn.set_defaults(func=_eval_knn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from dinolab.train.trainer import NonFiniteLossError

    try:
        args.func(args)
    except (ConfigError, CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError) as err:
        print(f"dinolab: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
