"""Evaluation speed: seconds per protocol on the full Fashion-MNIST (60,000 train / 10,000 test images).

Runs dinolab.eval.run_all with the library's default options (the ones `dinolab eval all` uses) on one model and
prints ONE JSON object on stdout: the machine, torch's thread count, the data sizes, seconds for the shared
feature extraction and for every protocol, and each protocol's headline numbers. Progress goes to stderr.

Without --checkpoint the model is the demo recipe's architecture (dino_vit_tiny_fmnist: 4-block ViT-Tiny/7 on
28 px) at random init: speed does not depend on what the weights learned, so the benchmark needs no training run.

Usage:
  python benchmarks/eval_speed.py                                   # demo architecture, random init, 1 thread
  python benchmarks/eval_speed.py --checkpoint runs/dino_demo       # a trained run
  python benchmarks/eval_speed.py --model pixels --protocols knn logreg --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from harness import cpu_facts, log

from dinolab import config as config_lib
from dinolab.data.datasets import FMNIST_DIR, FashionMNIST
from dinolab.device import resolve
from dinolab.eval.suite import PROTOCOLS, Evaluation, metric_rows, model_to_evaluate
from dinolab.models.build import build_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="dinolab checkpoint or run dir (default: demo architecture, random init)")
    parser.add_argument("--model", default="trained", choices=["trained", "random-init", "pixels"])
    parser.add_argument("--fmnist-dir", default=str(FMNIST_DIR))
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, cfg = model_to_evaluate(args.checkpoint, args.model)
    else:
        cfg = config_lib.load("dino_vit_tiny_fmnist")
        torch.manual_seed(0)
        model = build_backbone(cfg, drop_path_rate=0.0)
    runtime = resolve("cpu", args.precision)
    train, test = FashionMNIST(args.fmnist_dir, "train"), FashionMNIST(args.fmnist_dir, "test")
    evaluation = Evaluation(model, train, test, cfg.data.mean, cfg.data.std, cfg.model.patch_size, runtime=runtime)
    seconds = {"features": evaluation.features_seconds()}
    headline = {}
    for protocol in args.protocols:
        log(f"running {protocol} ...")
        result = evaluation.run(protocol)
        seconds[protocol] = round(result["seconds"], 2)
        headline[protocol] = dict(metric_rows(protocol, result))
    seconds["features"] = round(seconds["features"], 2)
    print(json.dumps({
        "machine": cpu_facts(torch.get_num_threads()), "threads": torch.get_num_threads(),
        "precision": runtime.precision, "model": args.model if args.checkpoint else "demo architecture, random init",
        "checkpoint": args.checkpoint, "train_images": len(train), "test_images": len(test), "seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 2), "results": headline, "finished": time.strftime("%H:%M:%S"),
    }, indent=1))


if __name__ == "__main__":
    main()
