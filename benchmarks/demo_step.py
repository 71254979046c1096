"""The small-image demo's training step and loop: what the fourth round's speed-ups buy, in one run.

The demo recipe (dino_vit_tiny_fmnist: ViT-Tiny/7, 4 blocks, conv stem [32, 32], batch 32, two 28 px global crops)
is so small that per-call overheads, not matmuls, set its speed. Two of them were removed (docs/small_data.md,
"Fourth round"); this script puts each back to measure it:

  step variants (the trainer's step on fixed crops, one process, the variants taken in turn for --rounds rounds
  so that drift hits them alike; median and best step over all rounds):
    before         foreach AdamW and the stem's convolutions in the default (NCHW) layout, as until 08ae316
    fused_adamw    only the fused AdamW
    channels_last  only the channels-last stem
    now            both (the code as it is)
  loop variants (`fit` for --loop-iterations and twice that, no k-NN checks; the per-iteration time is the
  difference divided by --loop-iterations, so start-up cancels):
    worker1        the Fashion-MNIST batches augmented in one DataLoader worker process (the demo until now)
    worker0        augmented in the training process (the demo now)

With --profile-steps N, torch's profiler over N more steps of "now": self CPU time per step by kind of operator
(matmuls, convolutions, GELU, dtype casts, ...) and the top operators, to show where a cheaper step would come from.

Also the 2048^2 matmul peak (best of 20, fp32 and bf16) and the step's FLOPs (torch's FlopCounterMode), for model
FLOP utilization against the bf16 peak. Prints one JSON object on stdout; progress on stderr.

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/demo_step.py > benchmarks/results/demo_step_DATE_MACHINE.json
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from harness import cpu_facts, log, matmul_peak, ratio, time_calls
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from dinolab import config as config_lib
from dinolab.data.loader import MultiCropBatches, build_augmentation, build_dataset
from dinolab.device import resolve
from dinolab.models.layers import ChannelsLastConv2d
from dinolab.train.fit import fit
from dinolab.train.optim import param_groups
from dinolab.train.schedules import Schedules, StepSchedule
from dinolab.train.trainer import Trainer

STEP_VARIANTS = ("before", "fused_adamw", "channels_last", "now")


def trainer_variant(cfg: config_lib.Config, variant: str) -> Trainer:
    """A trainer whose step is the code as it is, or with one or both speed-ups taken back out."""
    trainer = Trainer(cfg, resolve(cfg.train.device, cfg.train.precision))
    if variant in ("before", "channels_last"):  # the optimizer as it was: foreach, same groups
        groups = param_groups(trainer.student, cfg.optim.layer_decay, cfg.optim.patch_embed_lr_mult)
        trainer.optimization.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=cfg.optim.betas, foreach=True)
    return trainer


CHANNELS_LAST_FORWARD = ChannelsLastConv2d.forward  # the shipped forward, kept to put back after a "before" round


def stem_layout(channels_last: bool) -> None:
    """The stem's convolutions in channels-last layout (as shipped) or as a plain Conv2d computes them."""
    ChannelsLastConv2d.forward = CHANNELS_LAST_FORWARD if channels_last else nn.Conv2d.forward


def next_step(trainer: Trainer, batches: Iterator[list[Tensor]], schedule: StepSchedule) -> None:
    trainer.step(next(batches), schedule)


OPERATOR_KINDS = {  # the profiler's aten names, grouped by what one would change to make them cheaper
    "matmul (linear layers, attention)": ("aten::mm", "aten::addmm", "aten::bmm"),
    "convolution (stem, patch projection)": ("aten::mkldnn_convolution", "aten::convolution_backward"),
    "GELU": ("aten::gelu", "aten::gelu_backward"),
    "dtype casts and copies (autocast)": ("aten::copy_", "aten::_to_copy"),
    "layer norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "softmax": ("aten::_softmax", "aten::_softmax_backward_data"),
    "optimizer (fused AdamW)": ("aten::_fused_adamw_",),
    "teacher EMA": ("aten::lerp_",),
}


def profile_steps(trainer: Trainer, crops: list[list[Tensor]], schedule: StepSchedule) -> dict[str, Any]:
    """Self CPU time per step by operator kind: which part of the step a cheaper recipe or kernel would have to cut."""
    trainer.step(crops[0], schedule)  # warm
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in crops:
            trainer.step(batch, schedule)
    ops = {e.key: e.self_cpu_time_total / 1e3 / len(crops) for e in prof.key_averages()}  # ms per step
    total = sum(ops.values())
    kinds = {kind: sum(ops.get(name, 0.0) for name in names) for kind, names in OPERATOR_KINDS.items()}
    kinds["everything else"] = total - sum(kinds.values())
    top = sorted(ops.items(), key=lambda item: -item[1])[:15]
    return {"profiled_steps": len(crops), "self_cpu_ms_per_step": round(total, 1),
            "by_kind": {k: {"ms": round(v, 1), "share": round(v / total, 3)} for k, v in kinds.items()},
            "top_operators_ms": {name: round(ms, 1) for name, ms in top}}


def measure_steps(cfg: config_lib.Config, steps: int, warmup: int, rounds: int,
                  profile: int = 0) -> dict[str, Any]:
    dataset = build_dataset(cfg.data, cfg.model.in_chans)
    batches = MultiCropBatches(dataset, build_augmentation(cfg.data), cfg.optim.batch_size, cfg.train.seed, 0)
    crops = [batches[i].crops for i in range(max(steps, profile))]
    schedule = Schedules(cfg, len(batches)).at(len(batches) // 2)  # past warm-up and the prototype freeze
    trainers = {}
    for variant in STEP_VARIANTS:
        torch.manual_seed(0)
        trainers[variant] = trainer_variant(cfg, variant)
    times: dict[str, list[float]] = {v: [] for v in STEP_VARIANTS}
    for r in range(rounds):
        for variant in STEP_VARIANTS:
            stem_layout(variant in ("channels_last", "now"))
            step = functools.partial(next_step, trainers[variant], iter(crops[:steps]), schedule)
            timed = time_calls(step, steps - warmup, warmup=warmup)
            times[variant] += timed.wall_s
            log(f"round {r + 1}/{rounds} {variant}: median {statistics.median(timed.wall_s) * 1e3:.1f} ms")
    stem_layout(True)
    with FlopCounterMode(display=False) as counter:
        trainers["now"].step(crops[0], schedule)
    out = {}
    for variant, wall in times.items():
        out[variant] = {"median_step_ms": round(statistics.median(wall) * 1e3, 2),
                        "best_step_ms": round(min(wall) * 1e3, 2), "timed_steps": len(wall)}
    out["step_gflop"] = round(counter.get_total_flops() / 1e9, 3)
    out["speedup_median_now_vs_before"] = ratio(out["before"]["median_step_ms"], out["now"]["median_step_ms"])
    if profile:
        out["profile_now"] = profile_steps(trainers["now"], crops[:profile], schedule)
    return out


def measure_loop(recipe: str, iterations: int) -> dict[str, Any]:
    """ms per iteration of the whole training loop (loader, step, logging), start-up cancelled out."""
    out = {}
    for workers in (1, 0):
        seconds = []
        for n in (iterations, 2 * iterations):
            run_dir = Path(tempfile.mkdtemp(prefix="demo_step_"))
            run = config_lib.load(recipe, ["train.device=cpu", f"data.num_workers={workers}", "eval.knn_every=0",
                                           f"train.output_dir={run_dir}"])
            started = time.perf_counter()
            fit(run, resume=False, quiet=True, max_iterations=n)
            seconds.append(time.perf_counter() - started)
            shutil.rmtree(run_dir, ignore_errors=True)
        per_iteration = (seconds[1] - seconds[0]) / iterations
        out[f"worker{workers}"] = {"ms_per_iteration": round(per_iteration * 1e3, 2),
                                   "seconds": [round(s, 1) for s in seconds]}
        log(f"loop with {workers} worker(s): {per_iteration * 1e3:.1f} ms/iteration")
    out["speedup_worker0_vs_worker1"] = ratio(out["worker1"]["ms_per_iteration"], out["worker0"]["ms_per_iteration"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="dino_vit_tiny_fmnist")
    parser.add_argument("--steps", type=int, default=12, help="steps per variant and round (incl. warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop-iterations", type=int, default=300, help="0: skip the loop variants")
    parser.add_argument("--profile-steps", type=int, default=0, help="profile this many steps of 'now' (0: none)")
    args = parser.parse_args()
    cfg = config_lib.load(args.recipe, ["train.device=cpu"])
    result: dict[str, Any] = {
        "benchmark": "demo_step: the small-image demo's step and loop, with and without the fourth round's speed-ups",
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "recipe": args.recipe,
        "machine": cpu_facts(torch.get_num_threads()),
        "precision": resolve("cpu", cfg.train.precision).precision,
        "matmul_peak": matmul_peak(2048, 20),
        "step": measure_steps(cfg, args.steps, args.warmup, args.rounds, args.profile_steps),
    }
    peak = result["matmul_peak"]["bf16_gflops" if result["precision"] == "bf16" else "fp32_gflops"]
    for variant in STEP_VARIANTS:
        step = result["step"][variant]
        achieved = result["step"]["step_gflop"] / (step["median_step_ms"] / 1e3)
        step["achieved_gflops"] = round(achieved, 1)
        step["mfu_vs_matmul_peak"] = round(achieved / peak, 4)
    if args.loop_iterations:
        result["loop"] = measure_loop(args.recipe, args.loop_iterations)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
