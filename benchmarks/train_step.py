"""Training-step benchmark: dinolab's DINO step against a plain reference written the way facebookresearch/dino
works (reference_dino.py), and dinolab's iBOT and DINOv2 steps on the same configuration.

Configuration (the project's benchmark configuration): the DINO paper's recipe (dino_vits16_imagenet) scaled to a
CPU: ViT-Tiny/16 (embed 192, depth 12, 3 heads, drop path 0.1, RGB, position embedding learned at 128 px), DINO
head to 65,536 prototypes (hidden 2048, bottleneck 256, normalized last layer), batch 32, 2 global crops of 128 px
(scale 0.4-1) + 6 local crops of 64 px (scale 0.05-0.4) with the official color jitter / grayscale / blur /
solarization, AdamW, per-parameter gradient clip 3.0, EMA momentum 0.996, torch.set_num_threads(2), CPU. It is
benchmarks/recipes/dino.yaml (ibot.yaml and dinov2.yaml for the other steps), which dinolab loads with
`dinolab.config.load`, validated as `dinolab train` would; the reference (reference_dino.py) gets the same numbers.

Every measurement runs in a fresh subprocess of this script (`--variant NAME --json`) so that each one's peak memory
is its own; the parent gathers the children's JSON and prints ONE JSON object on stdout. Progress and log lines go
to stderr. Peak memory is VmHWM (peak RSS of the child's own address space); ru_maxrss is reported too, but on
Linux it carries the parent's high-water mark across fork + exec, so it cannot go below the parent's RSS.

Variants:
  peak          matmul peak: 2048x2048 @ 2048x2048, best of 20, fp32 and bf16 (GFLOP/s)
  ours-fp32     model step alone (crops made once, reused), dinolab, fp32
  ours-bf16     same, bf16 autocast (dinolab.device.Runtime)
  ours-default  same, at what precision="auto" resolves to here (not run by default: the parent reports the
                ours-<that precision> measurement as the default instead of timing the same thing twice)
  ref-fp32      model step alone, the reference implementation, fp32
  ref-bf16      same, bf16 autocast
  ibot-fp32     dinolab's iBOT step on the same configuration: + blockwise masks (half the global crops, 10-50% of
                patches), masked-patch loss, head shared by [CLS] and patches (also ibot-bf16)
  dinov2-fp32   dinolab's DINOv2 step: + separate patch head, KoLeo, LayerScale, 4 registers, layer-wise lr decay,
                with EMA centering, not Sinkhorn-Knopp (DINOV2_NOTE says why) (also dinov2-bf16)
  ours-e2e      end to end: ImageFolder -> MultiCropBatches -> multicrop_loader(num_workers=1) -> step, default
                precision, on a temp folder of generated JPEGs
  ref-e2e       end to end: per-crop PIL augmentation (torchvision v1) in a DataLoader with 1 worker -> step, fp32
  flops         FlopCounterMode over one full step of ours, the reference, iBOT and DINOv2 (teacher forward,
                student forward (+ loss), backward; optimizer / clip / EMA count no FLOPs)
  profile-ours  torch.profiler over our fp32 step: top ops by self CPU time, and time per phase
  profile-ref   the same for the reference (not run by default)

Timing: after the warm-up steps (default 2; 1 for the bf16 step variants), every timed step (default 5; 3 for the
bf16 step variants, which are ~4x slower on CPUs without native bf16) is timed separately; img/s is reported from
the BEST step time (primary, `img_per_s`) and from the median (`img_per_s_median`). Best-of because this is meant to
run on a shared 2-core box: with 2 OpenMP threads on 2 cores, another process that takes a core stalls every
parallel op, so noise only ever adds time. End to end, a step's time runs from the end of the previous step to the
end of this one, so it includes the wait for the loader; `img_per_s_window` is images / wall time over the whole
timed window. The matmul peak is the best of its repetitions. Process CPU time per step is reported as well.

Usage:
  python benchmarks/train_step.py                 # full run (all default variants), ~6-15 min on 2 cores
  python benchmarks/train_step.py --quick         # smoke test: batch 8, head to 4096 prototypes, 1 warm-up + 2 steps
  python benchmarks/train_step.py --variants ours-fp32,ref-fp32 --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from harness import (
    IMAGE_SIZE,
    Phase,
    cpu_facts,
    loadavg,
    log,
    matmul_peak,
    measure_here,
    no_phase,
    ratio,
    run_in_subprocess,
    synthetic_images,
    temp_image_folder,
)
from reference_dino import RefSettings, RefStep, ref_crops, ref_loader
from step_measures import Step, count_flops, measure_e2e, measure_step, profile_step
from torch import Tensor

if TYPE_CHECKING:
    from dinolab.config import Config

# ---------------------------------------------------------------------------------------------------------------------
# The benchmark configuration
# ---------------------------------------------------------------------------------------------------------------------

# dinolab loads each step's config from benchmarks/recipes/ with dinolab.config.load (validated, as `dinolab train`
# would); the reference gets the same numbers (reference_settings). --batch / --out-dim / --quick override them.
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
RECIPE_FILES = {"ours": "dino.yaml", "ibot": "ibot.yaml", "dinov2": "dinov2.yaml"}
QUICK_BATCH, QUICK_OUT_DIM = 8, 4096
N_IMAGES = 512  # JPEGs on disk for the end-to-end runs
MATMUL_N, MATMUL_REPS = 2048, 20
STEPS, WARMUP = 5, 2
BF16_STEPS, BF16_WARMUP = 3, 1  # default for the bf16 step variants (see steps_for)
# One steady-state point of the schedules, given to both implementations whatever the batch: lr 0.0005 x 32 / 256
# (the recipe's, scaled to batch 32), the starting weight decay and teacher temperature (also iBOT's).
LR, WEIGHT_DECAY, TEACHER_TEMP = 0.0005 * 32 / 256, 0.04, 0.04
DINOV2_NOTE = (
    "dinov2 variants use EMA centering (loss.centering=ema) for both losses, not Sinkhorn-Knopp: dinolab's config "
    "validation rejects Sinkhorn-Knopp over 65,536 [CLS] prototypes at batch 32 (64 teacher outputs, at most 64 "
    "prototypes each: batch >= 512; the 65,536-prototype patch head would need batch >= 160), and the benchmark now "
    "times only configs that `dinolab train` accepts (benchmarks/recipes/dinov2.yaml). Earlier results "
    "(train_step_2026-11-23_*.json) skipped validation and timed Sinkhorn-Knopp (3 iterations). Heads, FLOPs "
    "(Sinkhorn-Knopp has no matmuls) and the rest of the recipe are unchanged: the difference is Sinkhorn-Knopp's "
    "elementwise cost over the teacher's outputs."
)

RECIPES = ("ibot", "dinov2")  # dinolab's other recipes on the same benchmark configuration
RECIPE_VARIANTS = tuple(f"{r}-{p}" for r in RECIPES for p in ("fp32", "bf16"))
STEP_VARIANTS = ("ours-fp32", "ours-bf16", "ours-default", "ref-fp32", "ref-bf16", *RECIPE_VARIANTS)
E2E_VARIANTS = ("ours-e2e", "ref-e2e")
ALL_VARIANTS = ("peak", *STEP_VARIANTS, *E2E_VARIANTS, "flops", "profile-ours", "profile-ref")
DEFAULT_VARIANTS = ("peak", "ours-fp32", "ours-bf16", "ref-fp32", "ref-bf16", *RECIPE_VARIANTS, "ours-e2e",
                    "ref-e2e", "flops", "profile-ours")


def dinolab_config(impl: str, args: argparse.Namespace, data: str = "") -> Config:
    """The validated config of dinolab's `impl` step ("ours" = DINO, or one of RECIPES), as `dinolab train` would
    load it, with the command line's batch / prototypes and the end-to-end runs' image folder."""
    from dinolab import config

    overrides = [f"data.path={data}"] if data else []
    if args.batch is not None:
        overrides.append(f"optim.batch_size={args.batch}")
    if args.out_dim is not None:
        overrides.append(f"head.out_dim={args.out_dim}")
        if impl in RECIPES:  # iBOT's shared head needs it; DINOv2's patch head has the same size here
            overrides.append(f"head.patch_out_dim={args.out_dim}")
    return config.load(RECIPES_DIR / RECIPE_FILES[impl], overrides)


def reference_settings(cfg: Config) -> RefSettings:
    """The reference's arguments, read off dinolab's DINO config so that both sides run the same configuration."""
    from dinolab.models.vit import ARCH_SIZES

    m, h, d, loss, o = cfg.model, cfg.head, cfg.data, cfg.loss, cfg.optim
    arch = ARCH_SIZES[m.arch]
    return RefSettings(
        img_size=m.img_size, patch_size=m.patch_size, embed_dim=arch["embed_dim"], depth=m.depth or arch["depth"],
        num_heads=arch["num_heads"], drop_path_rate=m.drop_path_rate, out_dim=h.out_dim, hidden_dim=h.hidden_dim,
        bottleneck_dim=h.bottleneck_dim, global_crops_size=d.global_crops_size, global_crops_scale=d.global_crops_scale,
        local_crops_number=d.local_crops_number, local_crops_size=d.local_crops_size,
        local_crops_scale=d.local_crops_scale, mean=d.mean, std=d.std, student_temp=loss.student_temp,
        center_momentum=loss.center_momentum, clip_grad=o.clip_grad, momentum_teacher=o.momentum_teacher,
        lr=LR, weight_decay=WEIGHT_DECAY, teacher_temp=TEACHER_TEMP,
    )


# ---------------------------------------------------------------------------------------------------------------------
# The steps under test and their inputs
# ---------------------------------------------------------------------------------------------------------------------


class DinolabStep:
    """One iteration of dinolab's Trainer (steady state: last layer trained), at the schedules' point."""

    def __init__(self, cfg: Config, precision: str):
        from dinolab.data.loader import build_masking
        from dinolab.device import resolve
        from dinolab.train import StepSchedule, Trainer

        torch.manual_seed(0)
        self.trainer = Trainer(cfg, resolve(cfg.train.device, precision))
        self.precision = self.trainer.runtime.precision
        self.schedule = StepSchedule(LR, WEIGHT_DECAY, cfg.optim.momentum_teacher, TEACHER_TEMP, TEACHER_TEMP)
        masking = build_masking(cfg.mask, cfg.data.global_crops_size, cfg.model.patch_size)
        self.masks = masking(2 * cfg.optim.batch_size, torch.Generator().manual_seed(0)) if masking else None

    def __call__(self, crops: list[Tensor], phase: Phase = no_phase) -> float:
        loss, _ = self.trainer.step(crops, self.schedule, self.masks, phase=phase)
        return float(loss)


def dinolab_crops(cfg: Config) -> list[Tensor]:
    """Crops made once with dinolab's batched augmentation from in-memory synthetic images, at the canvas size
    the image folder would give them."""
    from dinolab.data.loader import build_augmentation

    images = synthetic_images(cfg.optim.batch_size)
    batch = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in images]).float()
    canvas = cfg.data.canvas_size or cfg.data.global_crops_size * 8 // 7  # as build_dataset resizes folder images
    batch = F.interpolate(batch, size=canvas, mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
    return build_augmentation(cfg.data)(batch, torch.Generator().manual_seed(0))


def step_and_crops(impl: str, precision: str, args: argparse.Namespace) -> tuple[Step, list[Tensor]]:
    """The step of `impl` ("ref", "ours" or one of RECIPES) and the fixed crops it runs on."""
    if impl == "ref":
        settings = ref_settings_arg(args)
        crops = ref_crops(settings, synthetic_images(args.batch))
        return RefStep(settings, precision), crops
    cfg = dinolab_config(impl, args)
    crops = dinolab_crops(cfg)  # crops, then the step (both sides): the RNG left by its seeded init drives drop path
    return DinolabStep(cfg, precision), crops


def step_and_loader(impl: str, args: argparse.Namespace) -> tuple[Step, Any, Callable[[int], Any]]:
    """For the end-to-end runs: the step, a 1-worker loader over the image folder, and batch i made in-process."""
    if impl == "ours":
        from dinolab.data.loader import MultiCropBatches, build_augmentation, build_dataset, multicrop_loader

        cfg = dinolab_config("ours", args, data=args.data)
        step = DinolabStep(cfg, cfg.train.precision)
        dataset = build_dataset(cfg.data, cfg.model.in_chans)
        batches = MultiCropBatches(dataset, build_augmentation(cfg.data), args.batch, cfg.train.seed, epoch=0)
        return step, multicrop_loader(batches, cfg.data.num_workers), batches.__getitem__
    settings = ref_settings_arg(args)
    step = RefStep(settings, "fp32")
    loader = ref_loader(settings, args.data, args.batch)

    def one_batch(i: int) -> Any:
        items = [loader.dataset[j] for j in range(i * args.batch, (i + 1) * args.batch)]
        return torch.utils.data.default_collate(items)

    return step, loader, one_batch


def ref_settings_arg(args: argparse.Namespace) -> RefSettings:
    """The reference's settings as the parent passed them (so that the reference's process never imports dinolab
    and its memory figures stay those of the reference alone)."""
    if not args.ref_settings:
        raise SystemExit("--ref-settings JSON is required for the reference's variants (the parent passes it)")
    raw = json.loads(args.ref_settings)
    return RefSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


# ---------------------------------------------------------------------------------------------------------------------
# Child: one variant in this process
# ---------------------------------------------------------------------------------------------------------------------


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """What a child measures for `variant` (measure_here adds the process's memory and wall time)."""
    if variant == "peak":
        return matmul_peak(MATMUL_N, args.matmul_reps)
    impl, _, mode = variant.partition("-")
    if variant in STEP_VARIANTS:
        step, crops = step_and_crops(impl, "auto" if mode == "default" else mode, args)
        return measure_step(impl, step, crops, args.batch, args.warmup, args.steps)
    if variant in E2E_VARIANTS:
        if not args.data:
            raise SystemExit("--data DIR is required for the end-to-end variants")
        return measure_e2e(impl, *step_and_loader(impl, args), args.batch, args.warmup, args.steps, args.threads)
    if variant == "flops":
        return {
            "method": "torch.utils.flop_counter.FlopCounterMode over one full step (fp32), per image; CPU SDPA counted "
                      "with torch's SDPA formulas; student_forward includes the loss (no matmul FLOPs there)",
            "batch": args.batch,
            **{i: count_flops(i, *step_and_crops(i, "fp32", args), args.batch) for i in ("ours", "ref", *RECIPES)},
        }
    return profile_step(mode, *step_and_crops(mode, "fp32", args), args.batch, args.warmup, args.steps)


# ---------------------------------------------------------------------------------------------------------------------
# Parent: run the variants in fresh subprocesses and put the numbers side by side
# ---------------------------------------------------------------------------------------------------------------------


def steps_for(variant: str, args: argparse.Namespace) -> tuple[int, int]:
    """(warm-up, timed) steps. bf16 steps are ~4x slower on CPUs without native bf16, so by default (no --steps /
    --warmup given) the bf16 step variants take 1 + 3 steps to keep a full run within ~15 minutes."""
    warmup, steps = args.warmup, args.steps
    if variant.endswith("-bf16") and not args.quick:
        warmup = warmup if args.warmup_given else BF16_WARMUP
        steps = steps if args.steps_given else BF16_STEPS
    return warmup, steps


def child_command(variant: str, args: argparse.Namespace, settings: RefSettings, data: Path | None) -> list[str]:
    """This script on one variant, with every resolved setting explicit (the reference's child never reads a
    recipe: importing dinolab would add to its memory)."""
    warmup, steps = steps_for(variant, args)
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--json", "--steps", str(steps),
           "--warmup", str(warmup), "--batch", str(args.batch), "--out-dim", str(args.out_dim),
           "--matmul-reps", str(args.matmul_reps), "--threads", str(args.threads),
           "--ref-settings", json.dumps(dataclasses.asdict(settings))]
    return cmd + ["--data", str(data)] if data else cmd


def assemble(results: dict[str, dict[str, Any]], default_precision: str, machine: dict[str, Any], cfg: Config,
             s: RefSettings, args: argparse.Namespace) -> dict[str, Any]:
    """The children's results side by side: throughput, FLOP utilization, memory and ratios ours / reference."""

    def get(variant: str, key: str) -> Any:
        return results.get(variant, {}).get(key)

    default_variant = "ours-default" if "ours-default" in results else f"ours-{default_precision}"
    peak = results.get("peak", {})
    flops = results.get("flops", {})
    step_img_s = {v: get(v, "img_per_s") for v in STEP_VARIANTS if v in results}
    if default_variant in results:
        step_img_s["ours-default"] = get(default_variant, "img_per_s")
    e2e_img_s = {v: get(v, "img_per_s") for v in E2E_VARIANTS if v in results}

    throughput = {}
    for v in (*STEP_VARIANTS, *E2E_VARIANTS):
        if v not in results and not (v == "ours-default" and default_variant in results):
            continue
        src = default_variant if v == "ours-default" else v
        impl, precision = v.split("-")[0], get(src, "precision")
        gflop_img = (flops.get(impl) or {}).get("total")
        img_s = get(src, "img_per_s")
        achieved = gflop_img * img_s if gflop_img and img_s else None
        mm_peak = peak.get(f"{precision}_gflops")
        throughput[v] = {
            "precision": precision, "img_per_s": img_s, "gflop_per_img": gflop_img,
            "achieved_gflops": round(achieved, 2) if achieved else None,
            "matmul_peak_gflops": mm_peak, "utilization": ratio(achieved, mm_peak),
        }

    peak_rss = {v: get(v, "peak_rss_mib") for v in results if get(v, "peak_rss_mib") is not None}
    for v in E2E_VARIANTS:
        if v in results and get(v, "worker_private_mib") is not None and get(v, "peak_rss_mib") is not None:
            peak_rss[f"{v}+worker"] = round(get(v, "peak_rss_mib") + get(v, "worker_private_mib"), 1)
    ours_step = step_img_s.get("ours-default")
    ratios = {
        "model_step_ours_default_over_ref_fp32": ratio(ours_step, step_img_s.get("ref-fp32")),
        "model_step_ours_default_over_ref_bf16": ratio(ours_step, step_img_s.get("ref-bf16")),
        "model_step_ours_fp32_over_ref_fp32": ratio(step_img_s.get("ours-fp32"), step_img_s.get("ref-fp32")),
        "model_step_ours_bf16_over_ref_bf16": ratio(step_img_s.get("ours-bf16"), step_img_s.get("ref-bf16")),
        "end_to_end_ours_over_ref": ratio(e2e_img_s.get("ours-e2e"), e2e_img_s.get("ref-e2e")),
        "end_to_end_window_ours_over_ref": ratio(get("ours-e2e", "img_per_s_window"),
                                                 get("ref-e2e", "img_per_s_window")),
        "peak_rss_model_step_fp32_ours_over_ref": ratio(peak_rss.get("ours-fp32"), peak_rss.get("ref-fp32")),
        "peak_rss_model_step_bf16_ours_over_ref": ratio(peak_rss.get("ours-bf16"), peak_rss.get("ref-bf16")),
        "peak_rss_end_to_end_ours_over_ref": ratio(peak_rss.get("ours-e2e"), peak_rss.get("ref-e2e")),
        "peak_rss_end_to_end_with_worker_ours_over_ref": ratio(peak_rss.get("ours-e2e+worker"),
                                                                peak_rss.get("ref-e2e+worker")),
    }
    recipe_ratios = {
        f"model_step_{recipe}_{precision}_over_dino_{precision}": ratio(
            step_img_s.get(f"{recipe}-{precision}"), step_img_s.get(f"ours-{precision}"))
        for recipe in RECIPES for precision in ("fp32", "bf16")
    }
    return {
        "benchmark": "dinolab train_step (DINO vs reference; iBOT and DINOv2 recipes; CPU)",
        "config": {
            "arch": f"ViT-{cfg.model.arch.removeprefix('vit_').capitalize()}/{s.patch_size}", "embed_dim": s.embed_dim,
            "depth": s.depth, "num_heads": s.num_heads, "drop_path_rate": s.drop_path_rate,
            "in_chans": cfg.model.in_chans, "pos_embed_img_size": s.img_size, "out_dim": s.out_dim,
            "hidden_dim": s.hidden_dim, "bottleneck_dim": s.bottleneck_dim, "norm_last_layer": cfg.head.norm_last_layer,
            "batch": args.batch,
            "global_crops": [2, s.global_crops_size, list(s.global_crops_scale)],
            "local_crops": [s.local_crops_number, s.local_crops_size, list(s.local_crops_scale)],
            "optimizer": "AdamW", "lr": s.lr, "weight_decay": s.weight_decay, "clip_grad_per_parameter": s.clip_grad,
            "ema_momentum": s.momentum_teacher, "torch_threads": cfg.train.num_threads, "device": cfg.train.device,
            "source_images": f"{IMAGE_SIZE}x{IMAGE_SIZE} RGB synthetic", "e2e_images_on_disk": args.n_images,
            "warmup_steps": args.warmup, "timed_steps": args.steps,
            "bf16_step_variants_warmup_timed": list(steps_for("ours-bf16", args)),
            "quick": args.quick,
        },
        "notes": {
            "config": "dinolab's side loads benchmarks/recipes/{dino,ibot,dinov2}.yaml (dino.yaml: base "
                      "dino_vits16_imagenet) with dinolab.config.load, validated as `dinolab train` would; the "
                      "reference gets the same numbers. The values are those of earlier runs except as noted.",
            "dinov2": DINOV2_NOTE,
        },
        "timing": "img/s from the BEST timed step of each variant (median in each variant's img_per_s_median; "
                  "other processes share this CPU, and with 2 OpenMP threads on 2 cores a descheduled thread stalls "
                  "every parallel op, so slow outliers are contention, not the code); matmul peak = best of reps; "
                  "every variant in a fresh subprocess",
        "machine": machine,
        "default_precision": {"resolved": default_precision, "measured_by": default_variant},
        "matmul_peak_gflops": {k: peak.get(f"{k}_gflops") for k in ("fp32", "bf16")},
        "model_step_img_per_s": step_img_s,
        "end_to_end_img_per_s": e2e_img_s,
        "end_to_end_img_per_s_window": {v: get(v, "img_per_s_window") for v in E2E_VARIANTS if v in results},
        "recipes": "ibot: + blockwise masks (half the global crops, 10-50%), iBOT patch loss, head shared by [CLS] "
                   "and patches; dinov2: + separate patch head, EMA centering for both losses (not Sinkhorn-Knopp, "
                   "see notes), KoLeo 0.1, LayerScale, 4 registers, layer-wise lr decay 0.9, patch-embed lr x0.2",
        "recipe_step_ratios": recipe_ratios,
        "gflop_per_image": {k: flops.get(k) for k in ("ours", "ref", *RECIPES) if flops.get(k)},
        "throughput": throughput,
        "peak_rss_mib": peak_rss,
        "peak_rss_note": "VmHWM of each variant's own process (ru_maxrss, also in `variants`, inherits the parent's "
                         "peak across fork+exec on Linux); X-e2e+worker adds the loader worker's private memory (USS)",
        "ratios_ours_over_ref": ratios,
        "profile_ours_fp32": {k: results.get("profile-ours", {}).get(k)
                              for k in ("total_self_cpu_ms_per_step", "phase_ms_per_step", "top8_self_cpu")},
        "variants": results,
    }


def run_parent(args: argparse.Namespace, variants: list[str]) -> dict[str, Any]:
    from dinolab.device import cpu_has_fast_bf16, resolve

    t0 = time.time()
    configs = {impl: dinolab_config(impl, args) for impl in RECIPE_FILES}  # an invalid config fails here, first
    dino = configs["ours"]
    args.batch, args.out_dim, args.threads = dino.optim.batch_size, dino.head.out_dim, dino.train.num_threads
    args.n_images = max(args.batch * (args.warmup + args.steps + 1), 64 if args.quick else N_IMAGES)
    settings = reference_settings(dino)
    machine = cpu_facts(args.threads)
    machine["dinolab_cpu_has_fast_bf16"] = cpu_has_fast_bf16()
    machine["loadavg_start"] = loadavg()
    default_precision = resolve(dino.train.device, "auto").precision
    log(f"CPU: {machine['cpu_model']}, avx512_bf16={machine['has_avx512_bf16']}, amx={machine['has_amx']}; "
        f"precision=auto -> {default_precision}; variants: {', '.join(variants)}")

    needs_folder = any(v in E2E_VARIANTS for v in variants)
    with temp_image_folder(args.n_images) if needs_folder else contextlib.nullcontext() as folder:
        results = {v: run_in_subprocess(v, child_command(v, args, settings, folder if v in E2E_VARIANTS else None))
                   for v in variants}
    machine["loadavg_end"] = loadavg()
    out = assemble(results, default_precision, machine, dino, settings, args)
    out["elapsed_s"] = round(time.time() - t0, 1)
    out["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timed steps per variant (default {STEPS}, bf16 step variants {BF16_STEPS}; quick: 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"warm-up steps (default {WARMUP}, bf16 step variants {BF16_WARMUP}; quick: 1)")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"batch size (default: benchmarks/recipes/dino.yaml's; quick: {QUICK_BATCH})")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: batch {QUICK_BATCH}, {QUICK_OUT_DIM} prototypes, 1 warm-up, 2 timed steps")
    parser.add_argument("--variants", default="", help=f"comma-separated subset of {','.join(ALL_VARIANTS)}")
    parser.add_argument("--variant", default="", help="(internal) run one variant in this process")
    parser.add_argument("--json", action="store_true", help="compact one-line JSON (children use it)")
    parser.add_argument("--data", default="", help="(internal) image folder for the end-to-end variants")
    parser.add_argument("--threads", type=int, default=0, help="(internal) torch threads (the recipe's)")
    parser.add_argument("--ref-settings", default="", help="(internal) the reference's settings, as JSON")
    parser.add_argument("--out-dim", type=int, default=None,
                        help=f"DINO head prototypes (default: the recipe's; quick: {QUICK_OUT_DIM})")
    parser.add_argument("--matmul-reps", type=int, default=None, help=f"matmul peak repetitions ({MATMUL_REPS})")
    args = parser.parse_args()
    args.steps_given, args.warmup_given = args.steps is not None, args.warmup is not None
    args.steps = args.steps if args.steps is not None else (2 if args.quick else STEPS)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else WARMUP)
    if args.quick:
        args.batch = args.batch if args.batch is not None else QUICK_BATCH
        args.out_dim = args.out_dim if args.out_dim is not None else QUICK_OUT_DIM
    args.matmul_reps = args.matmul_reps if args.matmul_reps is not None else (5 if args.quick else MATMUL_REPS)
    if min(args.steps, args.matmul_reps) < 1 or args.warmup < 0:
        parser.error("--steps and --matmul-reps must be >= 1, --warmup >= 0 (the config checks --batch, --out-dim)")
    variants = args.variants.split(",") if args.variants else list(DEFAULT_VARIANTS)
    if args.variant:
        variants = [args.variant]
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(ALL_VARIANTS)}")

    if args.variant:
        if args.threads:
            torch.set_num_threads(args.threads)
        out = measure_here(args.variant, lambda: run_variant(args.variant, args))
    else:
        out = run_parent(args, variants)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2), flush=True)


if __name__ == "__main__":
    main()
