"""What every benchmark script needs and none should write again: the machine's facts, a matmul peak, memory
probes, synthetic images, per-call timing, and running a measurement in a fresh subprocess.

A measurement is only comparable with its context (which CPU, how many threads, what was competing), and a peak
memory figure is only a process's own if that process did nothing else; these helpers make both the default.
Imported by the scripts next to it (`python benchmarks/X.py` puts this folder on sys.path).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

# A step takes its crops and a `phase(name)` context manager around each of its parts (teacher forward, loss,
# backward, ...): a no-op when timing, timers or profiler labels when counting FLOPs or profiling.
Phase = Callable[[str], contextlib.AbstractContextManager]


@contextlib.contextmanager
def no_phase(_: str) -> Iterator[None]:
    """The phase labels of a step that is only timed."""
    yield


def log(msg: str) -> None:
    """Progress on stderr, so that stdout stays one JSON object."""
    print(f"[{Path(sys.argv[0]).stem} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def r1(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to 3 decimals; None where either side is missing (a variant failed or was not run)."""
    return round(a / b, 3) if a and b else None


# ---------------------------------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------------------------------


def cpu_facts(threads: int) -> dict[str, Any]:
    """The CPU's model and the instruction sets that decide fp32 vs bf16 speed (platform.processor() is often
    empty on Linux, so the model comes from /proc/cpuinfo)."""
    flags: set[str] = set()
    model = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "has_avx2": "avx2" in flags,
        "has_fma": "fma" in flags,
        "has_avx512f": "avx512f" in flags,
        "has_avx512_bf16": "avx512_bf16" in flags,
        "has_amx": any(f.startswith("amx") for f in flags),
        "amx_flags": sorted(f for f in flags if f.startswith("amx")),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def matmul_peak(n: int, reps: int) -> dict[str, Any]:
    """Best-of-`reps` GFLOP/s of an n x n @ n x n matmul in fp32 and bf16: the ceiling a model step's achieved
    GFLOP/s is read against."""
    out: dict[str, Any] = {"n": n, "reps": reps, "timing": "best of reps"}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        c = torch.empty(n, n, dtype=dtype)
        best = min(time_calls(functools.partial(torch.mm, a, b, out=c), reps, warmup=1).wall_s)
        out[f"{name}_gflops"] = round(2 * n**3 / best / 1e9, 2)
        log(f"matmul peak {name}: {out[f'{name}_gflops']} GFLOP/s (best {best * 1e3:.1f} ms)")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Memory: on Linux ru_maxrss survives fork + exec, so a child's value is at least its parent's peak RSS at spawn
# time; a process's own peak is VmHWM, and what a forked worker adds to its parent is its USS.
# ---------------------------------------------------------------------------------------------------------------------


def ru_maxrss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """getrusage's ru_maxrss (inherits the parent's high-water mark, see above)."""
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def proc_mib(pid: int | str, field: str) -> float | None:
    """A kB field of /proc/PID/status (VmHWM: peak RSS, VmRSS: current RSS); None where unavailable."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


def uss_mib(pid: int | str) -> float | None:
    """Memory private to a process (Private_Clean + Private_Dirty): what a forked worker adds to its parent."""
    total = None
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total = (total or 0.0) + int(line.split()[1]) / 1024
    return total


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic images: smooth color fields, gratings, shapes and sensor noise, made with numpy / PIL, nothing downloaded
# ---------------------------------------------------------------------------------------------------------------------

IMAGE_SIZE = 160  # synthetic source images (160 x 160 RGB)


def synthetic_image(rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """One photo-like RGB image: JPEG-compressible and worth augmenting, unlike noise."""

    def upsampled(cells: int) -> np.ndarray:
        small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), dtype=np.float32)

    img = 0.7 * upsampled(int(rng.integers(2, 6))) + 0.3 * upsampled(int(rng.integers(8, 24)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):  # oriented gratings (texture)
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.05, 0.6), rng.uniform(0, 2 * np.pi)
        wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        img += rng.uniform(5, 30) * wave[..., None] * rng.uniform(0.3, 1.0, 3)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(2, 7))):  # objects
        x0, y0 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(size // 10, size // 2, 2)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.5))))
    arr = np.asarray(pil, dtype=np.float32) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def synthetic_images(n: int, seed: int = 0) -> list[Image.Image]:
    """n images, each from its own seed, so the first k are the same whatever n is."""
    return [synthetic_image(np.random.default_rng(seed * 1_000_003 + i)) for i in range(n)]


@contextlib.contextmanager
def temp_image_folder(n: int) -> Iterator[Path]:
    """n JPEGs in 4 class subfolders (a small ImageNet-style folder) for end-to-end runs, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="dinolab_bench_"))
    try:
        t0 = time.perf_counter()
        for i, img in enumerate(synthetic_images(n, seed=1)):
            folder = root / f"class_{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"img_{i:05d}.jpg", quality=90)
        log(f"wrote {n} JPEGs ({IMAGE_SIZE}x{IMAGE_SIZE}) to {root} in {time.perf_counter() - t0:.1f} s")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Wall and process-CPU (all threads) seconds of each timed call."""

    wall_s: list[float]
    cpu_s: list[float]


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 0, label: str = "") -> Timings:
    """`warmup` untimed calls, then `repeats` calls timed one by one: on a shared machine noise only adds time, so
    the caller can take the best call, not just the mean. With a label, every call is logged (and a float result,
    e.g. a loss, with it)."""
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if label:
            log(f"  {label} warm-up {i + 1}/{warmup}: {time.perf_counter() - t0:.2f} s")
    timings = Timings([], [])
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        timings.wall_s.append(time.perf_counter() - t0)
        timings.cpu_s.append(time.process_time() - c0)
        if label:
            result = f" (-> {out:.3f})" if isinstance(out, float) else ""
            log(f"  {label} {i + 1}/{repeats}: {timings.wall_s[-1]:.2f} s, {timings.cpu_s[-1]:.2f} CPU s{result}")
    return timings


def summarize(timings: Timings, batch: int) -> dict[str, Any]:
    """Per-call times and images/s from the best call (primary) and from the median."""
    med, best = statistics.median(timings.wall_s), min(timings.wall_s)
    return {
        "step_s": [round(t, 4) for t in timings.wall_s],
        "median_step_cpu_s": round(statistics.median(timings.cpu_s), 4),
        "best_step_s": round(best, 4),
        "median_step_s": round(med, 4),
        "img_per_s": round(batch / best, 3),  # primary: best timed step
        "img_per_s_median": round(batch / med, 3),
    }


# ---------------------------------------------------------------------------------------------------------------------
# One measurement per process: the child measures and prints one JSON line, the parent collects it
# ---------------------------------------------------------------------------------------------------------------------


def measure_here(name: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `measure` in this (fresh) process and add what the process itself cost: peak RSS (VmHWM), ru_maxrss,
    RSS before the measurement, wall time."""
    base_rss = proc_mib("self", "VmRSS")
    t0 = time.perf_counter()
    result = measure()
    result.setdefault("peak_rss_mib", r1(proc_mib("self", "VmHWM")))
    result.setdefault("ru_maxrss_mib", r1(ru_maxrss_mib()))
    result["rss_after_imports_mib"] = r1(base_rss)
    result["variant"] = name
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def run_in_subprocess(name: str, cmd: list[str]) -> dict[str, Any]:
    """Run `cmd` (a child whose last stdout line is its JSON result; stderr passes through) and return that
    result, or {"variant": name, "error": ...} so one failed variant does not lose the others."""
    log(f"--- {name}: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        return {"variant": name, "error": f"child exited with status {proc.returncode}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as err:
        return {"variant": name, "error": f"unparsable child output: {err}"}


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages: how busy the shared machine was around a run."""
    return [round(x, 2) for x in os.getloadavg()]

