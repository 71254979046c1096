"""Peak memory of dinolab's own k-means (`eval.clustering.kmeans`: k-means++ then Lloyd, in torch), the path
`dinolab curate --balance kmeans` takes below 50,000 rows or without faiss (up to 200,000 rows).

Random L2-normalized N x 384 float32 points, one restart, a few Lloyd iterations (the peak is reached in the first).
Prints one JSON line: seconds, the process's peak RSS before and after, the inertia (equal across versions of the
code that compute the same thing).

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/kmeans_memory.py [--n 100000 --k 1000 --iters 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch

from dinolab.eval.clustering import kmeans


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--iters", type=int, default=3, help="Lloyd iterations (max_iter)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(args.n, args.dim, generator=g), dim=1)
    before = peak_rss_mb()
    started = time.perf_counter()
    _, _, inertia = kmeans(x, args.k, restarts=1, max_iter=args.iters)
    print(json.dumps({"n": args.n, "k": args.k, "dim": args.dim, "max_iter": args.iters,
                      "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_before_mb": before, "peak_rss_mb": peak_rss_mb(), "inertia": round(inertia, 3)}))


if __name__ == "__main__":
    main()
