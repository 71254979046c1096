"""Feature-extraction speed of the distillation demo's teacher and students, measured in one run (docs/distill.md).

Each model is loaded the way evaluation loads it (`dinolab.hub.load_backbone`: the teacher from its headless
`dinolab export` file, each student from its run directory) and timed on the same batches of real test images
(batch 256, 1x28x28, normalized as the teacher's training), forward passes under torch.no_grad in fp32 and in bf16
autocast (what `dinolab eval` uses on this CPU), after one warm-up batch. The models take turns round by round, so
a change of load on the shared machine hits all of them alike; the median round is reported. Prints JSON. Run:

    .venv/bin/python benchmarks/adapt_demo_speed.py --threads 2 \
        --model teacher=runs/adapt_demo/release/dinov2_vit_tiny_fmnist_pretrain.pth \
        --model vit_tiny_2_blocks=runs/adapt_demo/distill_vit_tiny --model resnet18=runs/adapt_demo/distill_resnet18
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_batch(folder: Path, n: int, mean: float, std: float) -> torch.Tensor:
    files = sorted(folder.rglob("*.png"))
    files = files[:: max(1, len(files) // n)][:n]  # spread over the class folders
    arrays = [np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255 for f in files]
    x = torch.from_numpy(np.stack(arrays))[:, None]
    return (x - mean) / std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH (file or run dir)")
    parser.add_argument("--images", default="runs/adapt_demo/data/new/test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mean", type=float, default=0.3543)
    parser.add_argument("--std", type=float, default=0.3596)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dinolab.hub import load_backbone

    models = {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        models[name] = load_backbone(path).eval()
    x = load_batch(Path(args.images), args.batch_size, args.mean, args.std)
    results: dict[str, dict] = {}
    for precision in ("fp32", "bf16"):
        times: dict[str, list[float]] = {name: [] for name in models}
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            for model in models.values():
                model(x)  # warm-up
            for _ in range(args.rounds):
                for name, model in models.items():
                    start = time.perf_counter()
                    out = model(x)
                    times[name].append(time.perf_counter() - start)
                    assert out.shape[0] == len(x)
        for name in models:
            results.setdefault(name, {})[f"{precision}_img_per_s"] = round(len(x) / statistics.median(times[name]), 1)
    for name, model in models.items():
        results[name]["params"] = sum(p.numel() for p in model.parameters())
        results[name]["type"] = type(model).__name__
        results[name]["feature_dim"] = int(model(x[:2]).shape[1])
    print(json.dumps({
        "batch_size": len(x), "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__,
        "images": args.images, "models": results,
    }, indent=1))


if __name__ == "__main__":
    main()
