"""Data-parallel scaling on this machine: the demo recipe trained by 1 process (all threads) and by N processes
under torchrun (DDP, gloo on CPU, threads split between them), same global batch; img/s and the scaling
efficiency (N-process img/s over 1-process img/s). Prints one JSON object.

    .venv/bin/python benchmarks/ddp_scaling.py > ddp.json     # ~3 min on 2 cores

On one 2-core CPU this measures the cost of the machinery (gradient all-reduce, per-step agreement, rank 0's
logging) more than a speed-up: the same cores do the same FLOPs either way. On GPUs each process has its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from harness import cpu_facts, log, matmul_peak, ratio

RECIPE = "dino_vit_tiny_fmnist"


def train(run_dir: Path, iterations: int, log_every: int, threads: int) -> None:
    """The worker: `iterations` steps of the demo recipe (under torchrun: this process's share of them)."""
    from dinolab.config import load
    from dinolab.train import fit

    cfg = load(RECIPE, [f"train.output_dir={run_dir}", f"train.log_every={log_every}", f"train.num_threads={threads}",
                        "eval.knn_every=0", "data.num_workers=1"])
    fit(cfg, resume=False, quiet=True, max_iterations=iterations)


def img_per_s(run_dir: Path) -> dict[str, float]:
    """Throughput over the logged windows, the first (start-up, warm-up) left out."""
    from dinolab.io import read_metrics

    windows = [r["img_per_s"] for r in read_metrics(run_dir)][1:]
    return {"median": round(statistics.median(windows), 1), "best": round(max(windows), 1), "windows": len(windows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=180)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--worker", help="(internal) run directory of a training worker")
    parser.add_argument("--threads", type=int, default=0, help="(internal) torch threads of a worker")
    args = parser.parse_args()
    if args.worker:
        train(Path(args.worker), args.iterations, args.log_every, args.threads)
        return

    cores = os.cpu_count() or 1
    result = {"benchmark": "dinolab DDP scaling on CPU (gloo)", "recipe": RECIPE, "iterations": args.iterations,
              "machine": cpu_facts(cores), "matmul_peak_gflops": matmul_peak(2048, 20)}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for processes in (1, args.processes):
            run_dir = Path(tmp) / f"p{processes}"
            threads = max(cores // processes, 1)
            worker = [__file__, "--worker", str(run_dir), "--threads", str(threads), "--iterations",
                      str(args.iterations), "--log-every", str(args.log_every)]
            launcher = ([sys.executable] if processes == 1 else
                        [sys.executable, "-m", "torch.distributed.run", "--standalone",
                         f"--nproc_per_node={processes}"])
            log(f"{processes} process(es) x {threads} thread(s)")
            subprocess.run([*launcher, *worker], check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            runs[processes] = {"threads_per_process": threads, "img_per_s": img_per_s(run_dir)}
    one, many = runs[1]["img_per_s"]["median"], runs[args.processes]["img_per_s"]["median"]
    result |= {"runs": {str(k): v for k, v in runs.items()}, "scaling_efficiency": ratio(many, one),
               "torch": torch.__version__}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
