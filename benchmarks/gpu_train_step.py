"""GPU training-step benchmark: ViT-S/16 DINO and ViT-S/14 DINOv2 at the papers' crop sizes, one process and
(with two or more GPUs) DDP over all of them; img/s, model FLOP utilization against the GPU's measured bf16
matmul peak, and peak memory. Prints one JSON object; runs unattended in a few minutes.

    python benchmarks/gpu_train_step.py > gpu.json                 # on a machine with CUDA
    python benchmarks/gpu_train_step.py --device cpu --quick       # a smoke test of the script itself

The step is dinolab's Trainer.step on crops made once (random pixels: the model's cost does not depend on
them), with the recipe's masks, at a fixed point of the schedules; bf16 autocast, as `precision=auto` picks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from harness import log

RECIPES = {"dino_vits16": "gpu_dino_vits16.yaml", "dinov2_vits14": "gpu_dinov2_vits14.yaml"}
HERE = Path(__file__).parent


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device: torch.device, n: int, reps: int = 20) -> float:
    """Best-of-`reps` bf16 GFLOP/s of an n x n matmul: the ceiling utilization is read against."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    best = float("inf")
    for _ in range(reps + 1):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return round(2 * n**3 / best / 1e9, 1)


def worker(recipe: str, per_device_batch: int, steps: int, warmup: int, device: str, quick: bool) -> dict[str, Any]:
    """One process's measurement (under torchrun, one rank of the DDP run): rank 0 returns the numbers."""
    from torch.utils.flop_counter import FlopCounterMode

    from dinolab.config import load
    from dinolab.data.loader import build_masking
    from dinolab.device import resolve
    from dinolab.distributed import all_reduce_int, init_process_group, world_from_environment
    from dinolab.train import StepSchedule, Trainer

    world = world_from_environment()
    if device == "cuda":
        torch.cuda.set_device(world.local_rank)
    overrides = [f"optim.batch_size={per_device_batch * world.size}", f"train.device={device}"]
    if quick:  # the script's own smoke test: tiny crops and heads
        overrides += ["data.global_crops_size=28", "data.local_crops_size=14", "data.local_crops_number=2",
                      "model.img_size=28", "model.depth=2", "head.out_dim=256", "head.patch_out_dim=256",
                      "head.hidden_dim=64", "head.bottleneck_dim=32", "model.patch_size=7"]
    cfg = load(HERE / "recipes" / RECIPES[recipe], overrides)
    runtime = resolve(f"cuda:{world.local_rank}" if device == "cuda" else "cpu", "auto")
    init_process_group(world, runtime.device.type, 5)
    torch.manual_seed(0)
    trainer = Trainer(cfg, runtime, world)
    d, b = cfg.data, per_device_batch
    crops = [torch.randn(b, 3, d.global_crops_size, d.global_crops_size, device=runtime.device) for _ in range(2)]
    crops += [torch.randn(b, 3, d.local_crops_size, d.local_crops_size, device=runtime.device)
              for _ in range(d.local_crops_number)]
    masking = build_masking(cfg.mask, d.global_crops_size, cfg.model.patch_size)
    masks = masking(2 * b, torch.Generator().manual_seed(0)).to(runtime.device) if masking else None
    schedule = StepSchedule(1e-4, 0.04, 0.996, 0.07, 0.07)

    def step() -> None:
        trainer.step(crops, schedule, masks)

    with FlopCounterMode(display=False) as flops:
        step()
    gflop_per_image = flops.get_total_flops() / b / 1e9
    for _ in range(warmup):
        step()
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    times = []
    for _ in range(steps):
        synchronize(runtime.device)
        start = time.perf_counter()
        step()
        synchronize(runtime.device)
        times.append(time.perf_counter() - start)
    all_reduce_int(0)  # every rank finished timing
    if not world.is_main:
        return {}
    median = statistics.median(times)
    img_per_s = per_device_batch * world.size / median
    peak_memory = torch.cuda.max_memory_allocated(runtime.device) / 2**30 if runtime.device.type == "cuda" else None
    return {
        "recipe": recipe, "parallel": trainer.parallel, "processes": world.size, "precision": runtime.precision,
        "images_per_device": b, "crops": f"2 x {d.global_crops_size} + {d.local_crops_number} x {d.local_crops_size}",
        "step_s_median": round(median, 4), "step_s": [round(t, 4) for t in times],
        "img_per_s": round(img_per_s, 1), "img_per_s_per_device": round(img_per_s / world.size, 1),
        "gflop_per_image": round(gflop_per_image, 2),
        "achieved_gflops_per_device": round(img_per_s / world.size * gflop_per_image, 1),
        "peak_memory_gib": None if peak_memory is None else round(peak_memory, 2),
    }


@contextlib.contextmanager
def json_out(path: str | None) -> Iterator[dict[str, Any]]:
    """A worker writes its result to the file its parent names (stdout is the torchrun log's)."""
    result: dict[str, Any] = {}
    yield result
    if path and result:
        Path(path).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=64, help="images per device (default 64, the papers')")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny model and crops: checks the script runs")
    parser.add_argument("--processes", type=int, default=0,
                        help="processes of the DDP runs (default: every GPU; on CPU, to test that path)")
    parser.add_argument("--worker", choices=sorted(RECIPES), help="(internal) measure this recipe here")
    parser.add_argument("--out", help="(internal) the worker's result file")
    args = parser.parse_args()
    if args.worker:
        with json_out(args.out) as result:
            result |= worker(args.worker, args.batch, args.steps, args.warmup, args.device, args.quick)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine (or --device cpu --quick to test the script)")

    devices = args.processes or (torch.cuda.device_count() if args.device == "cuda" else 1)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    peak = matmul_peak_gflops(device, 8192 if args.device == "cuda" else 1024)
    report: dict[str, Any] = {
        "benchmark": "dinolab GPU training step", "device": torch.cuda.get_device_name(0) if args.device == "cuda"
        else "cpu", "devices": devices, "bf16_matmul_peak_tflops": round(peak / 1e3, 1), "torch": torch.__version__,
        "notes": "dinov2_vits14 centers with EMA instead of Sinkhorn-Knopp (see benchmarks/recipes/gpu_dinov2_vits14"
                 ".yaml); FLOPs counted by torch.utils.flop_counter on one step", "runs": [],
    }
    for recipe in RECIPES:
        for processes in ([1, devices] if devices > 1 else [1]):
            out = Path(f"/tmp/gpu_train_step_{recipe}_{processes}.json")
            out.unlink(missing_ok=True)
            command = [__file__, "--worker", recipe, "--out", str(out), "--device", args.device,
                       "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
                       *(["--quick"] if args.quick else [])]
            launcher = [sys.executable] if processes == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
            log(f"{recipe}, {processes} process(es)")
            subprocess.run([*launcher, *command], check=True, env=os.environ.copy())
            run = json.loads(out.read_text())
            run["model_flop_utilization"] = round(run["achieved_gflops_per_device"] / peak, 3)
            report["runs"].append(run)
    if devices < 2:
        report["ddp"] = "not measured: one device (DDP needs two or more)"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
