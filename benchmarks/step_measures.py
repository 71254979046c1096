"""What one child process of the training-step benchmark measures on a step, whichever implementation it is:
speed on fixed crops, speed behind a real loader, FLOPs per phase, a profile.

Taking the step as a callable keeps the two implementations under exactly the same measurement; a step is
`step(crops, phase) -> loss` with the precision it resolved to as `step.precision`.
"""

from __future__ import annotations

import contextlib
import itertools
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from harness import Phase, Timings, log, proc_mib, r1, ru_maxrss_mib, summarize, time_calls, uss_mib
from torch import Tensor


class Step(Protocol):
    precision: str

    def __call__(self, crops: list[Tensor], phase: Phase = ...) -> float: ...


def measure_step(impl: str, step: Step, crops: list[Tensor], batch: int, warmup: int, steps: int) -> dict[str, Any]:
    """The model step alone, on crops made once and reused: what the implementation itself costs."""
    log(f"{impl} step, precision {step.precision}, batch {batch}: {warmup} warm-up + {steps} timed steps")
    timings = time_calls(lambda: step(crops), steps, warmup, label="step")
    return {"impl": impl, "precision": step.precision, "batch": batch,
            "timing": "img_per_s from the best timed step", **summarize(timings, batch)}


def measure_e2e(impl: str, step: Step, loader: torch.utils.data.DataLoader, one_batch: Callable[[int], Any],
                batch: int, warmup: int, steps: int, threads: int) -> dict[str, Any]:
    """Loader (1 worker) + step: a step's time runs from the end of the previous step, so it includes the wait
    for its batch. `one_batch(i)` makes batch i in this process, to time the loader's own cost on 1 thread."""
    need = warmup + steps
    if len(loader) < need:
        raise SystemExit(f"{len(loader)} batches in the folder, need {need}")
    log(f"{impl} end to end, {step.precision}, batch {batch}, 1 loader worker: {warmup} warm-up + {steps} timed steps")
    it = iter(loader)
    wall, cpu, waits = [], [], []
    t_window = t_prev = time.perf_counter()
    c_prev = time.process_time()
    for i in range(need):
        if i == warmup:
            t_window = t_prev
        t0 = time.perf_counter()
        crops = next(it)[0]
        wait = time.perf_counter() - t0
        step(crops)
        now, c_now = time.perf_counter(), time.process_time()
        if i >= warmup:
            wall.append(now - t_prev)
            cpu.append(c_now - c_prev)
            waits.append(wait)
        log(f"  {'warm-up' if i < warmup else 'step'} {i + 1}/{need}: {now - t_prev:.2f} s "
            f"(waited {wait:.2f} s for the batch)")
        t_prev, c_prev = now, c_now
    window = t_prev - t_window
    worker_pids = [w.pid for w in getattr(it, "_workers", [])]  # DataLoader internals; [] if they change
    worker_hwm = sum(proc_mib(pid, "VmHWM") or 0.0 for pid in worker_pids) or None
    worker_uss = sum(uss_mib(pid) or 0.0 for pid in worker_pids) or None
    del it  # joins the worker, so its ru_maxrss shows in RUSAGE_CHILDREN
    peak_self, ru_self, ru_worker = proc_mib("self", "VmHWM"), ru_maxrss_mib(), ru_maxrss_mib(resource.RUSAGE_CHILDREN)
    # The loader's own cost: one batch decoded + augmented in this process on 1 thread (after the RSS readings).
    torch.set_num_threads(1)
    batch_index = itertools.count()
    loader_s = min(time_calls(lambda: one_batch(next(batch_index)), 2).wall_s)
    torch.set_num_threads(threads)
    return {
        "impl": impl, "precision": step.precision, "batch": batch, "loader_workers": 1,
        "timing": "img_per_s from the best timed step, loader wait included; img_per_s_window = images / wall "
                  "time of all timed steps",
        **summarize(Timings(wall, cpu), batch),
        "img_per_s_window": round(batch * steps / window, 3),
        "median_wait_for_batch_s": round(statistics.median(waits), 4),
        "loader_batch_s_1thread": round(loader_s, 4),
        "peak_rss_mib": r1(peak_self),
        "ru_maxrss_mib": r1(ru_self),
        "worker_peak_rss_mib": r1(worker_hwm),  # VmHWM, counts pages shared with this process after fork
        "worker_private_mib": r1(worker_uss),  # USS at the end of the timed steps: what the worker adds
        "worker_ru_maxrss_mib": r1(ru_worker),
    }


def cpu_sdpa_flop_mapping() -> dict[Any, Any]:
    """FlopCounterMode has no formula for the CPU flash-attention kernels that SDPA uses here: count them like the
    GPU ones, so our attention FLOPs match the reference's explicit q @ k^T and attn @ v matmuls."""
    from torch.utils import flop_counter as fc

    def fwd(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    mapping = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", fwd),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", bwd)):
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in fc.flop_registry:
            mapping[op] = formula
    return mapping


def count_flops(impl: str, step: Step, crops: list[Tensor], batch: int) -> dict[str, float]:
    """GFLOP per image of one full step, by phase (the optimizer, clipping and EMA count none)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = cpu_sdpa_flop_mapping()
    counts: dict[str, int] = {}

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        mode = FlopCounterMode(display=False, custom_mapping=mapping)
        with mode:
            yield
        counts[name] = counts.get(name, 0) + mode.get_total_flops()

    step(crops, phase)
    per_img = {k: v / batch / 1e9 for k, v in counts.items()}
    split = {
        "teacher_forward": per_img.get("teacher_forward", 0.0),
        "student_forward": per_img.get("student_forward", 0.0) + per_img.get("loss", 0.0),
        "backward": per_img.get("backward", 0.0),
        "update": sum(per_img.get(k, 0.0) for k in ("clip", "optimizer", "ema")),
    }
    split["total"] = sum(split.values())
    log(f"{impl} GFLOP/image: " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()))
    return {k: round(v, 4) for k, v in split.items()}


def profile_step(impl: str, step: Step, crops: list[Tensor], batch: int, warmup: int, steps: int,
                 top: int = 8) -> dict[str, Any]:
    """torch.profiler over (at most 2) steps: the top ops by self CPU time, and the time of each phase."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    for _ in range(max(1, warmup)):
        step(crops)
    n = max(1, min(2, steps))
    phases = ("teacher_forward", "student_forward", "loss", "backward", "clip", "optimizer", "ema")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step(crops, lambda name: record_function(f"phase::{name}"))
    events = prof.key_averages()
    ops = [e for e in events if not e.key.startswith("phase::")]
    total_self = sum(e.self_cpu_time_total for e in ops)
    ranked = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)
    phase_ms = {e.key.removeprefix("phase::"): round(e.cpu_time_total / 1e3 / n, 1)
                for e in events if e.key.startswith("phase::")}
    log(f"{impl} {step.precision} step profile ({n} steps), top ops by self CPU time:\n"
        + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return {
        "impl": impl, "precision": step.precision, "batch": batch, "profiled_steps": n,
        "total_self_cpu_ms_per_step": round(total_self / 1e3 / n, 1),
        "phase_ms_per_step": {p: phase_ms.get(p) for p in phases},
        f"top{top}_self_cpu": [
            {"op": e.key, "calls_per_step": e.count / n,
             "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / n, 1),
             "pct": round(100 * e.self_cpu_time_total / max(total_self, 1), 1)}
            for e in ranked[:top]
        ],
    }
