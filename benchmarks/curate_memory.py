"""How time and memory of `dinolab curate`'s stages after embedding grow with the pool, on memory-mapped
embedding files: deduplication (32-NN graph, cosine >= 0.95, `--search auto`) and balancing (hierarchical
k-means 1000,100 of what dedup kept, a sample of half of it), the way the pipeline runs them (`Rows` of the
mapped file, never a copy).

Synthetic embeddings, N x 384 float32, L2-normalized, as a .npy written a block at a time: 1,000 random
directions, each row one of them plus noise (cosine ~0.5 within a cluster, ~0 across), the last 1% of the
rows a near-duplicate (cosine ~0.998) of an earlier row. Planted recall: the share of planted pairs that end
up in one duplicate group (an approximate index may miss some).

Each size runs in a fresh process (the file written by another process first, so the measuring one starts
with it in the page cache, as after embedding). Memory: the process's peak resident set (VmHWM, reset before
each stage through /proc/self/clear_refs) and, sampled every 10 ms, its anonymous part (RssAnon: what the
process allocated, as opposed to pages of the mapped file, which the kernel can drop at will).

Prints JSON and writes it to --out. Run by hand, one size at a time on a shared machine:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/curate_memory.py --sizes 60000 100000 300000
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/curate_memory.py --sizes 1000000 --nprobe 8

`--search ivfpq` forces IVF-PQ (compressed codes, candidates re-scored on the mapped vectors), which `auto`
picks only from 10M vectors on, to measure its memory at sizes this machine can hold; rows are keyed by size
and index, so one file holds both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DIM = 384
CENTERS = 1000
PLANTED_SHARE = 0.01
BLOCK = 65_536
THRESHOLD = 0.95
LEVELS = (1000, 100)


def make_embeddings(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """Write the synthetic pool to `path` a block at a time; returns the planted (original, copy) pairs."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((CENTERS, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    planted = int(n * PLANTED_SHARE)
    originals = np.sort(rng.choice(n - planted, planted, replace=False))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n - planted, BLOCK):
        rows = min(BLOCK, n - planted - start)
        x = centers[rng.integers(0, CENTERS, rows)] + rng.standard_normal((rows, DIM), dtype=np.float32) / DIM ** 0.5
        out[start:start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    for start in range(0, planted, BLOCK):
        part = originals[start:start + BLOCK]
        x = out[part] + 0.05 * rng.standard_normal((len(part), DIM), dtype=np.float32) / DIM ** 0.5
        out[n - planted + start:n - planted + start + len(part)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    return np.stack((originals, np.arange(n - planted, n)), 1)


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakAnon:
    """The largest RssAnon seen by a thread polling /proc/self/status every 10 ms."""

    def __init__(self) -> None:
        self.peak, self.running = 0, True
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self) -> None:
        while self.running:
            self.peak = max(self.peak, status_kb("RssAnon"))
            time.sleep(0.01)

    def take(self) -> int:
        """The peak since the last call, in MB; starts the next interval."""
        peak, self.peak = max(self.peak, status_kb("RssAnon")), 0
        return round(peak / 1024)


def measure_one(path: Path, pairs_path: Path, nprobe: int, search: str) -> dict:
    """Run dedup and balance on the mapped file at `path` in this process; seconds and memory per stage."""
    import torch

    from dinolab.curate import Rows, balanced_sample, deduplicate, hierarchical_kmeans
    from dinolab.curate.search import choose_index

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    anon = PeakAnon()
    x = np.load(path, mmap_mode="r")
    result = {"n": len(x), "file_gb": round(path.stat().st_size / 1e9, 3), "index": choose_index(search, len(x)),
              "started_rss_mb": round(status_kb("VmRSS") / 1024), "started_anon_mb": anon.take(),
              "seconds": {}, "peak_rss_mb": {}, "peak_anon_mb": {}}

    def stage(name: str, run):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
        started = time.perf_counter()
        out = run()
        result["seconds"][name] = round(time.perf_counter() - started, 1)
        result["peak_rss_mb"][name] = round(status_kb("VmHWM") / 1024)
        result["peak_anon_mb"][name] = anon.take()
        return out

    result["nprobe"] = nprobe if result["index"] in ("ivf", "ivfpq") else None
    dedup = stage("dedup", lambda: deduplicate(x, THRESHOLD, backend=search, nprobe=nprobe))
    kept = Rows(x, dedup.keep)
    labels = stage("balance", lambda: hierarchical_kmeans(kept, LEVELS))
    sample = balanced_sample(labels, len(kept) // 2)
    group_of = np.full(len(x), -1)
    for g, members in enumerate(dedup.groups):
        group_of[members] = g
    pairs = np.load(pairs_path)
    found = (group_of[pairs[:, 0]] >= 0) & (group_of[pairs[:, 0]] == group_of[pairs[:, 1]])
    anon.running = False
    result.update(kept=len(dedup.keep), groups=len(dedup.groups), planted_pairs=len(pairs),
                  planted_recall=round(float(found.mean()), 4), balanced=len(sample),
                  peak_rss_mb_overall=round(max(result["peak_rss_mb"].values())),
                  peak_anon_mb_overall=max(result["peak_anon_mb"].values()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60_000, 100_000, 300_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/curate_memory"))
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default: benchmarks/results/"
                        "curate_memory_<date>_<machine>.json); rows already in it are kept")
    parser.add_argument("--machine", default=f"{os.cpu_count()}core")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF lists searched per query (curate's default: "
                        "32); a row of the same size and index in --out is replaced")
    parser.add_argument("--search", default="auto", choices=("auto", "flat", "ivf", "ivfpq"),
                        help="the index deduplication uses (curate's --search; default: chosen by size)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the measuring subprocess
    parser.add_argument("--make", type=int, help=argparse.SUPPRESS)  # the subprocess that writes a pool
    args = parser.parse_args()
    files = {n: (args.workdir / f"pool_{n}.npy", args.workdir / f"pool_{n}.pairs.npy")
             for n in (args.one, args.make, *args.sizes) if n}
    if args.make:
        path, pairs = files[args.make]
        np.save(pairs, make_embeddings(path, args.make))
        return
    if args.one:
        print(json.dumps(measure_one(*files[args.one], args.nprobe, args.search)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    default = f"curate_memory_{time.strftime('%Y-%m-%d')}_{args.machine}.json"
    out = args.out or Path(__file__).parent / "results" / default
    report = json.loads(out.read_text()) if out.is_file() else {"sizes": []}
    report.update(dim=DIM, threshold=THRESHOLD, neighbors=32, levels=list(LEVELS), planted_share=PLANTED_SHARE,
                  threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None, machine=args.machine,
                  cpu=platform.processor() or platform.machine())
    for n in args.sizes:
        path, pairs = files[n]
        if not (path.is_file() and pairs.is_file()):
            subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--make", str(n)], check=True)
        run = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--one", str(n),
                              "--nprobe", str(args.nprobe), "--search", args.search],
                             check=True, capture_output=True, text=True)
        row = json.loads(run.stdout.splitlines()[-1])
        print(json.dumps(row), file=sys.stderr)
        same = (n, row["index"])
        report["sizes"] = sorted([r for r in report["sizes"] if (r["n"], r["index"]) != same] + [row],
                                 key=lambda r: (r["n"], r["index"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
