"""Training-step benchmark: dinolab's DINO step against a plain reference written the way facebookresearch/dino
works, and dinolab's iBOT and DINOv2 steps on the same configuration.

Configuration (the project's benchmark configuration): ViT-Tiny/16 (embed 192, depth 12, 3 heads, drop path 0.1,
RGB, position embedding learned at 128 px), DINO head to 65,536 prototypes (hidden 2048, bottleneck 256,
normalized last layer), batch 32, 2 global crops of 128 px (scale 0.4-1) + 6 local crops of 64 px (scale 0.05-0.4)
with the official color jitter / grayscale / blur / solarization, AdamW, per-parameter gradient clip 3.0,
EMA momentum 0.996, torch.set_num_threads(2), CPU.

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
  ref-fp32      model step alone, reference implementation below, fp32
  ref-bf16      same, bf16 autocast
  ibot-fp32     dinolab's iBOT step on the same configuration: + blockwise masks (half the global crops, 10-50% of
                patches), masked-patch loss, head shared by [CLS] and patches (also ibot-bf16)
  dinov2-fp32   dinolab's DINOv2 step: + separate patch head, Sinkhorn-Knopp, KoLeo, LayerScale, 4 registers,
                layer-wise lr decay (also dinov2-bf16)
  ours-e2e      end to end: ImageFolder -> MultiCropBatches -> multicrop_loader(num_workers=1) -> step, default
                precision, on a temp folder of generated JPEGs
  ref-e2e       end to end: per-crop PIL augmentation (torchvision v1) in a DataLoader with 1 worker -> step, fp32
  flops         FlopCounterMode over one full step of ours and of the reference (teacher forward, student forward
                (+ loss), backward; optimizer / clip / EMA count no FLOPs)
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
  python benchmarks/train_step.py                 # full run (all default variants), ~8-15 min on 2 cores
  python benchmarks/train_step.py --quick         # smoke test: batch 8, head to 4096 prototypes, 1 warm-up + 2 steps
  python benchmarks/train_step.py --variants ours-fp32,ref-fp32 --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------------------------------
# The benchmark configuration
# ---------------------------------------------------------------------------------------------------------------------

NUM_THREADS = 2
BATCH, QUICK_BATCH = 32, 8
EMBED_DIM, DEPTH, NUM_HEADS, PATCH, DROP_PATH = 192, 12, 3, 16, 0.1
OUT_DIM, QUICK_OUT_DIM, HIDDEN_DIM, BOTTLENECK_DIM = 65536, 4096, 2048, 256  # --out-dim overrides
GLOBAL_SIZE, GLOBAL_SCALE = 128, (0.4, 1.0)
LOCAL_NUMBER, LOCAL_SIZE, LOCAL_SCALE = 6, 64, (0.05, 0.4)
N_CROPS = 2 + LOCAL_NUMBER
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_GRAD, MOMENTUM_TEACHER = 3.0, 0.996
LR, WEIGHT_DECAY = 0.0005 * BATCH / 256, 0.04  # a steady-state point of the schedules
STUDENT_TEMP, TEACHER_TEMP, CENTER_MOMENTUM = 0.1, 0.04, 0.9
IMAGE_SIZE = 160  # synthetic source images (160 x 160 RGB)
N_IMAGES = 512  # JPEGs on disk for the end-to-end runs
MATMUL_N, MATMUL_REPS = 2048, 20
STEPS, WARMUP = 5, 2
BF16_STEPS, BF16_WARMUP = 3, 1  # default for the bf16 step variants (see steps_for)

RECIPES = ("ibot", "dinov2")  # dinolab's other recipes on the same benchmark configuration (see recipe_overrides)
RECIPE_VARIANTS = tuple(f"{r}-{p}" for r in RECIPES for p in ("fp32", "bf16"))
STEP_VARIANTS = ("ours-fp32", "ours-bf16", "ours-default", "ref-fp32", "ref-bf16", *RECIPE_VARIANTS)
E2E_VARIANTS = ("ours-e2e", "ref-e2e")
ALL_VARIANTS = ("peak", *STEP_VARIANTS, *E2E_VARIANTS, "flops", "profile-ours", "profile-ref")
DEFAULT_VARIANTS = ("peak", "ours-fp32", "ours-bf16", "ref-fp32", "ref-bf16", *RECIPE_VARIANTS, "ours-e2e",
                    "ref-e2e", "flops", "profile-ours")


def log(msg: str) -> None:
    print(f"[train_step {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ru_maxrss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """getrusage's ru_maxrss. On Linux it survives fork + exec, so a child's value is at least its parent's peak
    RSS at spawn time; hence `peak_rss_mib` below is VmHWM, the high-water mark of the process's own address space."""
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


def r1(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def cpu_facts() -> dict[str, Any]:
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
        "torch_threads": NUM_THREADS,
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


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic images: smooth color fields, gratings, shapes and sensor noise, made with numpy / PIL, nothing downloaded
# ---------------------------------------------------------------------------------------------------------------------


def synthetic_image(rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
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
    return [synthetic_image(np.random.default_rng(seed * 1_000_003 + i)) for i in range(n)]


def write_image_folder(root: Path, n: int) -> None:
    """n JPEGs in 4 class subfolders, as a small ImageNet-style folder."""
    for i, img in enumerate(synthetic_images(n, seed=1)):
        folder = root / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"img_{i:05d}.jpg", quality=90)


# ---------------------------------------------------------------------------------------------------------------------
# Ours: dinolab's modules and functions, in the order of train/trainer.py's inner loop
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_phase(_: str) -> Iterator[None]:
    yield


Phase = Callable[[str], contextlib.AbstractContextManager]


def ours_config(batch: int, data_path: str = "", recipe: str = "dino"):
    from dinolab.config import Config, DataConfig, HeadConfig, MaskConfig, ModelConfig, OptimConfig, TrainConfig

    cfg = Config()
    cfg.model = ModelConfig(arch="vit_tiny", patch_size=PATCH, in_chans=3, img_size=GLOBAL_SIZE,
                            drop_path_rate=DROP_PATH)
    cfg.head = HeadConfig(out_dim=OUT_DIM, hidden_dim=HIDDEN_DIM, bottleneck_dim=BOTTLENECK_DIM, nlayers=3,
                          norm_last_layer=True)
    cfg.data = DataConfig(dataset="folder", path=data_path, global_crops_size=GLOBAL_SIZE,
                          global_crops_scale=GLOBAL_SCALE, local_crops_number=LOCAL_NUMBER,
                          local_crops_size=LOCAL_SIZE, local_crops_scale=LOCAL_SCALE, mean=MEAN, std=STD,
                          num_workers=1)
    cfg.optim = OptimConfig(batch_size=batch, clip_grad=CLIP_GRAD, momentum_teacher=MOMENTUM_TEACHER)
    cfg.loss.student_temp, cfg.loss.center_momentum = STUDENT_TEMP, CENTER_MOMENTUM
    cfg.train = TrainConfig(device="cpu", precision="auto", num_threads=NUM_THREADS)
    if recipe in RECIPES:  # iBOT and DINOv2 as their demo recipes set them, with the benchmark's head size
        cfg.mask = MaskConfig(enabled=True, ratio=(0.1, 0.5), probability=0.5)
        cfg.loss.ibot_weight = 1.0
        cfg.head.patch_out_dim = OUT_DIM
        cfg.head.shared = recipe == "ibot"
    if recipe == "dinov2":
        # Sinkhorn-Knopp over 65,536 prototypes wants a bigger batch than 32 (config validation would say so);
        # the Trainer is built without validation here, to time the recipe at the benchmark's batch.
        cfg.loss.centering, cfg.loss.koleo_weight = "sinkhorn", 0.1
        cfg.model.layerscale_init, cfg.model.num_register_tokens = 1e-5, 4
        cfg.optim.layer_decay, cfg.optim.patch_embed_lr_mult = 0.9, 0.2
    return cfg


class OursStep:
    """One training iteration of dinolab's Trainer (steady state: last layer trained)."""

    def __init__(self, cfg, precision: str):
        from dinolab.data.loader import build_masking
        from dinolab.device import resolve
        from dinolab.train.trainer import StepSchedule, Trainer

        torch.manual_seed(0)
        self.trainer = Trainer(cfg, resolve(cfg.train.device, precision))
        self.schedule = StepSchedule(LR, WEIGHT_DECAY, MOMENTUM_TEACHER, TEACHER_TEMP, TEACHER_TEMP)
        masking = build_masking(cfg.mask, cfg.data.global_crops_size, cfg.model.patch_size)
        self.masks = masking(2 * cfg.optim.batch_size, torch.Generator().manual_seed(0)) if masking else None

    def __call__(self, crops: list[Tensor], phase: Phase = no_phase) -> float:
        loss, _ = self.trainer.step(crops, self.schedule, self.masks, phase=phase)
        return float(loss)


def ours_crops(batch: int) -> list[Tensor]:
    """Crops made once with dinolab's batched augmentation from in-memory synthetic images."""
    from dinolab.data.loader import build_augmentation

    cfg = ours_config(batch)
    images = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in synthetic_images(batch)])
    canvas = GLOBAL_SIZE * 8 // 7  # what ImageFolder resizes to (build_dataset's default canvas)
    images = torch.nn.functional.interpolate(images.float(), size=canvas, mode="bilinear", antialias=True)
    images = images.round().clamp(0, 255).to(torch.uint8)
    return build_augmentation(cfg.data)(images, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------------------------
# Reference: written the way the original facebookresearch/dino code works (explicit attention, position embedding
# interpolated on every forward, weight_norm parametrization, double-loop loss, Python loops for clipping and EMA,
# per-crop PIL augmentation). Deliberately not optimized.
# ---------------------------------------------------------------------------------------------------------------------


def ref_drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    noise = keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
    return x.div(keep) * noise.floor_()


class RefAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        x = x + ref_drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + ref_drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class RefViT(nn.Module):
    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, num_heads: int, drop_path_rate: float):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(RefBlock(dim, num_heads, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, x: Tensor, h: int, w: int) -> Tensor:
        # Always resampled (the original takes this path for every local crop; here also at the native size).
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(math.sqrt(patch_pos.shape[1]))
        grid = patch_pos.reshape(1, side, side, x.shape[-1]).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h // self.patch_size, w // self.patch_size), mode="bicubic")
        return torch.cat((cls_pos, grid.permute(0, 2, 3, 1).reshape(1, -1, x.shape[-1])), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, h, w)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


class RefDINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, norm_last_layer: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        magnitude.data.fill_(1.0)
        if norm_last_layer:
            magnitude.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class RefMultiCropWrapper(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[Tensor]) -> Tensor:
        sizes = torch.tensor([c.shape[-1] for c in crops])
        ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0)
        start, output = 0, torch.empty(0, device=crops[0].device)
        for end in ends.tolist():
            output = torch.cat((output, self.backbone(torch.cat(crops[start:end]))))
            start = end
        return self.head(output)


class RefDINOLoss(nn.Module):
    def __init__(self, out_dim: int, n_crops: int, student_temp: float, center_momentum: float):
        super().__init__()
        self.n_crops, self.student_temp, self.center_momentum = n_crops, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output: Tensor, teacher_output: Tensor, teacher_temp: float) -> Tensor:
        student_out = (student_output / self.student_temp).chunk(self.n_crops)
        teacher_out = F.softmax((teacher_output - self.center) / teacher_temp, dim=-1).detach().chunk(2)
        total, n_terms = 0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                total += torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
                n_terms += 1
        self.update_center(teacher_output)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def ref_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or len(p.shape) == 1 else regularized).append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def ref_clip_gradients(model: nn.Module, clip: float) -> None:
    for p in model.parameters():
        if p.grad is not None:
            coef = clip / (p.grad.data.norm(2) + 1e-6)
            if coef < 1:
                p.grad.data.mul_(coef)


def ref_ema(student: nn.Module, teacher: nn.Module, m: float) -> None:
    with torch.no_grad():
        for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
            pt.data.mul_(m).add_((1 - m) * ps.detach().data)


def ref_model(drop_path_rate: float) -> RefMultiCropWrapper:
    backbone = RefViT(GLOBAL_SIZE, PATCH, EMBED_DIM, DEPTH, NUM_HEADS, drop_path_rate)
    return RefMultiCropWrapper(backbone, RefDINOHead(EMBED_DIM, OUT_DIM, HIDDEN_DIM, BOTTLENECK_DIM))


class RefStep:
    """One iteration of the original main_dino.train_one_epoch (single process, fp32 or bf16 autocast)."""

    def __init__(self, precision: str):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"reference precision must be fp32 or bf16, got {precision}")
        self.precision = precision
        torch.manual_seed(0)
        self.student, self.teacher = ref_model(DROP_PATH), ref_model(0.0)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.dino_loss = RefDINOLoss(OUT_DIM, N_CROPS, STUDENT_TEMP, CENTER_MOMENTUM)
        self.optimizer = torch.optim.AdamW(ref_param_groups(self.student))
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = LR
            if i == 0:
                group["weight_decay"] = WEIGHT_DECAY
        self.student.train()

    def __call__(self, crops: list[Tensor], phase: Phase = no_phase) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            with phase("teacher_forward"):
                teacher_output = self.teacher(crops[:2])
            with phase("student_forward"):
                student_output = self.student(crops)
            with phase("loss"):
                loss = self.dino_loss(student_output, teacher_output, TEACHER_TEMP)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss {loss.item()}")
        with phase("backward"):
            self.optimizer.zero_grad()
            loss.backward()
        with phase("clip"):
            ref_clip_gradients(self.student, CLIP_GRAD)
        with phase("optimizer"):
            self.optimizer.step()
        with phase("ema"):
            ref_ema(self.student, self.teacher, MOMENTUM_TEACHER)
        return loss.item()


class RefGaussianBlur:
    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class RefSolarization:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


class RefMultiCrop:
    """The original DataAugmentationDINO: every crop of every image through PIL, one at a time."""

    def __init__(self):
        from torchvision import transforms as T

        bicubic = T.InterpolationMode.BICUBIC
        flip_and_color_jitter = T.Compose([
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ])
        normalize = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
        self.global1 = T.Compose([
            T.RandomResizedCrop(GLOBAL_SIZE, scale=GLOBAL_SCALE, interpolation=bicubic),
            flip_and_color_jitter, RefGaussianBlur(1.0), normalize,
        ])
        self.global2 = T.Compose([
            T.RandomResizedCrop(GLOBAL_SIZE, scale=GLOBAL_SCALE, interpolation=bicubic),
            flip_and_color_jitter, RefGaussianBlur(0.1), RefSolarization(0.2), normalize,
        ])
        self.local = T.Compose([
            T.RandomResizedCrop(LOCAL_SIZE, scale=LOCAL_SCALE, interpolation=bicubic),
            flip_and_color_jitter, RefGaussianBlur(0.5), normalize,
        ])

    def __call__(self, img: Image.Image) -> list[Tensor]:
        return [self.global1(img), self.global2(img)] + [self.local(img) for _ in range(LOCAL_NUMBER)]


class RefImageFolder(torch.utils.data.Dataset):
    """torchvision.datasets.ImageFolder's behaviour: class = subfolder, PIL loader, convert('RGB'), transform."""

    def __init__(self, root: str, transform: RefMultiCrop):
        self.files = sorted(p for p in Path(root).rglob("*.jpg"))
        classes = sorted({p.parent.name for p in self.files})
        self.labels = [classes.index(p.parent.name) for p in self.files]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[list[Tensor], int]:
        with open(self.files[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.transform(img), self.labels[i]


def ref_crops(batch: int) -> list[Tensor]:
    random.seed(0)
    torch.manual_seed(0)
    aug = RefMultiCrop()
    per_image = [aug(img) for img in synthetic_images(batch)]
    return [torch.stack([crops[v] for crops in per_image]) for v in range(N_CROPS)]


# ---------------------------------------------------------------------------------------------------------------------
# Measurements (each runs inside its own child process)
# ---------------------------------------------------------------------------------------------------------------------


def summarize(times: list[float], batch: int, cpu_times: list[float]) -> dict[str, Any]:
    med, best = statistics.median(times), min(times)
    return {
        "step_s": [round(t, 4) for t in times],
        "median_step_cpu_s": round(statistics.median(cpu_times), 4),  # process CPU time (all threads) per step
        "best_step_s": round(best, 4),
        "median_step_s": round(med, 4),
        "img_per_s": round(batch / best, 3),  # primary: best timed step
        "img_per_s_median": round(batch / med, 3),
    }


def make_step(impl: str, precision: str, batch: int):
    """impl: "ours" (DINO), one of RECIPES (dinolab's iBOT / DINOv2 step), or "ref" (the reference DINO step)."""
    if impl == "ours" or impl in RECIPES:
        return OursStep(ours_config(batch, recipe=impl), precision)
    return RefStep(precision)


def measure_step(impl: str, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """Model step alone: crops made once, reused for every step."""
    crops = ref_crops(args.batch) if impl == "ref" else ours_crops(args.batch)
    step = make_step(impl, precision, args.batch)
    resolved = precision if impl == "ref" else step.trainer.runtime.precision
    log(f"{impl} step, precision {precision} -> {resolved}, batch {args.batch}: {args.warmup} warm-up + "
        f"{args.steps} timed steps")
    for i in range(args.warmup):
        t0 = time.perf_counter()
        step(crops)
        log(f"  warm-up {i + 1}/{args.warmup}: {time.perf_counter() - t0:.2f} s")
    times, cpu_times = [], []
    for i in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(crops)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        log(f"  step {i + 1}/{args.steps}: {times[-1]:.2f} s, {cpu_times[-1]:.2f} CPU s (loss {loss:.3f})")
    return {"impl": impl, "precision": resolved, "batch": args.batch, "timing": "img_per_s from the best timed step",
            **summarize(times, args.batch, cpu_times)}


def measure_e2e(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    """Loader (1 worker) + step; a step's time includes the wait for its batch."""
    if not args.data:
        raise SystemExit("--data DIR is required for the end-to-end variants")
    need = args.warmup + args.steps
    if impl == "ours":
        from dinolab.data.loader import MultiCropBatches, build_augmentation, build_dataset, multicrop_loader

        cfg = ours_config(args.batch, args.data)
        step = OursStep(cfg, cfg.train.precision)
        precision = step.trainer.runtime.precision
        dataset = build_dataset(cfg.data, cfg.model.in_chans)
        augmentation = build_augmentation(cfg.data)
        batches = MultiCropBatches(dataset, augmentation, args.batch, cfg.train.seed, epoch=0)
        loader = multicrop_loader(batches, cfg.data.num_workers)
        n_batches = len(batches)

        def one_batch_1thread(i: int) -> None:
            _ = batches[i]
    else:
        step = RefStep("fp32")
        precision = "fp32"
        dataset = RefImageFolder(args.data, RefMultiCrop())
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=args.batch, shuffle=True, num_workers=1, drop_last=True,
            pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0),
        )
        n_batches = len(loader)

        def one_batch_1thread(i: int) -> None:
            torch.utils.data.default_collate([dataset[j] for j in range(i * args.batch, (i + 1) * args.batch)])

    if n_batches < need:
        raise SystemExit(f"{n_batches} batches in the folder, need {need}")
    log(f"{impl} end to end, {precision}, batch {args.batch}, 1 loader worker: {args.warmup} warm-up + "
        f"{args.steps} timed steps")
    it = iter(loader)
    times, cpu_times, waits = [], [], []
    t_window = t_prev = time.perf_counter()
    c_prev = time.process_time()
    for i in range(need):
        if i == args.warmup:
            t_window = t_prev
        t0 = time.perf_counter()
        crops = next(it)[0]
        wait = time.perf_counter() - t0
        step(crops)
        now, c_now = time.perf_counter(), time.process_time()
        if i >= args.warmup:
            times.append(now - t_prev)
            cpu_times.append(c_now - c_prev)
            waits.append(wait)
        log(f"  {'warm-up' if i < args.warmup else 'step'} {i + 1}/{need}: {now - t_prev:.2f} s "
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
    batch_times = []
    for i in range(2):
        t0 = time.perf_counter()
        one_batch_1thread(i)
        batch_times.append(time.perf_counter() - t0)
    torch.set_num_threads(NUM_THREADS)
    return {
        "impl": impl, "precision": precision, "batch": args.batch, "loader_workers": 1,
        "timing": "img_per_s from the best timed step, loader wait included; img_per_s_window = images / wall "
                  "time of all timed steps",
        **summarize(times, args.batch, cpu_times),
        "img_per_s_window": round(args.batch * args.steps / window, 3),
        "median_wait_for_batch_s": round(statistics.median(waits), 4),
        "loader_batch_s_1thread": round(min(batch_times), 4),
        "peak_rss_mib": r1(peak_self),
        "ru_maxrss_mib": r1(ru_self),
        "worker_peak_rss_mib": r1(worker_hwm),  # VmHWM, counts pages shared with this process after fork
        "worker_private_mib": r1(worker_uss),  # USS at the end of the timed steps: what the worker adds
        "worker_ru_maxrss_mib": r1(ru_worker),
    }


def measure_peak(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"n": MATMUL_N, "reps": args.matmul_reps, "timing": "best of reps"}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(MATMUL_N, MATMUL_N).to(dtype)
        b = torch.randn(MATMUL_N, MATMUL_N).to(dtype)
        c = torch.empty(MATMUL_N, MATMUL_N, dtype=dtype)
        torch.mm(a, b, out=c)
        best = math.inf
        for _ in range(args.matmul_reps):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_gflops"] = round(2 * MATMUL_N**3 / best / 1e9, 2)
        log(f"matmul peak {name}: {out[f'{name}_gflops']} GFLOP/s (best {best * 1e3:.1f} ms)")
    return out


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


def count_flops(impl: str, batch: int) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    crops = ref_crops(batch) if impl == "ref" else ours_crops(batch)
    step = make_step(impl, "fp32", batch)
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


def measure_flops(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "method": "torch.utils.flop_counter.FlopCounterMode over one full step (fp32), per image; CPU SDPA counted "
                  "with torch's SDPA formulas; student_forward includes the loss (no matmul FLOPs there)",
        "batch": args.batch,
        "ours": count_flops("ours", args.batch),
        "ref": count_flops("ref", args.batch),
        **{recipe: count_flops(recipe, args.batch) for recipe in RECIPES},
    }


def measure_profile(impl: str, args: argparse.Namespace, top: int = 8) -> dict[str, Any]:
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    crops = ours_crops(args.batch) if impl == "ours" else ref_crops(args.batch)
    step = make_step(impl, "fp32", args.batch)
    for _ in range(max(1, args.warmup)):
        step(crops)
    n = max(1, min(2, args.steps))
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
    log(f"{impl} fp32 step profile ({n} steps), top ops by self CPU time:\n"
        + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return {
        "impl": impl, "precision": "fp32", "batch": args.batch, "profiled_steps": n,
        "total_self_cpu_ms_per_step": round(total_self / 1e3 / n, 1),
        "phase_ms_per_step": {p: phase_ms.get(p) for p in phases},
        f"top{top}_self_cpu": [
            {"op": e.key, "calls_per_step": e.count / n,
             "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / n, 1),
             "pct": round(100 * e.self_cpu_time_total / max(total_self, 1), 1)}
            for e in ranked[:top]
        ],
    }


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(NUM_THREADS)
    base_rss = proc_mib("self", "VmRSS")
    v = args.variant
    t0 = time.perf_counter()
    if v == "peak":
        result = measure_peak(args)
    elif v in STEP_VARIANTS:
        impl, precision = v.split("-")
        result = measure_step(impl, "auto" if precision == "default" else precision, args)
    elif v in E2E_VARIANTS:
        result = measure_e2e(v.split("-")[0], args)
    elif v == "flops":
        result = measure_flops(args)
    elif v.startswith("profile-"):
        result = measure_profile(v.split("-")[1], args)
    else:
        raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(ALL_VARIANTS)}")
    result.setdefault("peak_rss_mib", r1(proc_mib("self", "VmHWM")))
    result.setdefault("ru_maxrss_mib", r1(ru_maxrss_mib()))
    result["rss_after_imports_mib"] = r1(base_rss)
    result["variant"] = v
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Parent: run the variants in fresh subprocesses and put the numbers side by side
# ---------------------------------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def steps_for(variant: str, args: argparse.Namespace) -> tuple[int, int]:
    """(warm-up, timed) steps. bf16 steps are ~4x slower on CPUs without native bf16, so by default (no --steps /
    --warmup given) the bf16 step variants take 1 + 3 steps to keep a full run within ~15 minutes."""
    warmup, steps = args.warmup, args.steps
    if variant.endswith("-bf16") and not args.quick:
        warmup = warmup if args.warmup_given else BF16_WARMUP
        steps = steps if args.steps_given else BF16_STEPS
    return warmup, steps


def spawn(variant: str, args: argparse.Namespace, data: str | None) -> dict[str, Any]:
    warmup, steps = steps_for(variant, args)
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--json", "--steps", str(steps),
           "--warmup", str(warmup), "--batch", str(args.batch), "--out-dim", str(args.out_dim),
           "--matmul-reps", str(args.matmul_reps)]
    if data:
        cmd += ["--data", data]
    log(f"--- {variant}: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        return {"variant": variant, "error": f"child exited with status {proc.returncode}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as err:
        return {"variant": variant, "error": f"unparsable child output: {err}"}


def assemble(results: dict[str, dict[str, Any]], default_precision: str, machine: dict[str, Any],
             args: argparse.Namespace) -> dict[str, Any]:
    def get(variant: str, key: str):
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
            "arch": f"ViT-Tiny/{PATCH}", "embed_dim": EMBED_DIM, "depth": DEPTH, "num_heads": NUM_HEADS,
            "drop_path_rate": DROP_PATH, "in_chans": 3, "pos_embed_img_size": GLOBAL_SIZE, "out_dim": OUT_DIM,
            "hidden_dim": HIDDEN_DIM, "bottleneck_dim": BOTTLENECK_DIM, "norm_last_layer": True,
            "batch": args.batch, "global_crops": [2, GLOBAL_SIZE, list(GLOBAL_SCALE)],
            "local_crops": [LOCAL_NUMBER, LOCAL_SIZE, list(LOCAL_SCALE)], "optimizer": "AdamW", "lr": LR,
            "weight_decay": WEIGHT_DECAY, "clip_grad_per_parameter": CLIP_GRAD, "ema_momentum": MOMENTUM_TEACHER,
            "torch_threads": NUM_THREADS, "device": "cpu", "source_images": f"{IMAGE_SIZE}x{IMAGE_SIZE} RGB synthetic",
            "e2e_images_on_disk": args.n_images, "warmup_steps": args.warmup, "timed_steps": args.steps,
            "bf16_step_variants_warmup_timed": list(steps_for("ours-bf16", args)),
            "quick": args.quick,
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
                   "and patches; dinov2: + separate patch head, Sinkhorn-Knopp (3 iterations) for both losses, "
                   "KoLeo 0.1, LayerScale, 4 registers, layer-wise lr decay 0.9, patch-embed lr x0.2",
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


def run_parent(args: argparse.Namespace) -> dict[str, Any]:
    from dinolab.device import cpu_has_fast_bf16, resolve

    t0 = time.time()
    variants = args.variants.split(",") if args.variants else list(DEFAULT_VARIANTS)
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(ALL_VARIANTS)}")
    machine = cpu_facts()
    machine["dinolab_cpu_has_fast_bf16"] = cpu_has_fast_bf16()
    machine["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    default_precision = resolve("cpu", "auto").precision
    log(f"CPU: {machine['cpu_model']}, avx512_bf16={machine['has_avx512_bf16']}, amx={machine['has_amx']}; "
        f"precision=auto -> {default_precision}; variants: {', '.join(variants)}")

    tmp = None
    results: dict[str, dict[str, Any]] = {}
    try:
        if any(v in E2E_VARIANTS for v in variants):
            tmp = tempfile.mkdtemp(prefix="dinolab_bench_")
            t = time.perf_counter()
            write_image_folder(Path(tmp), args.n_images)
            log(f"wrote {args.n_images} JPEGs ({IMAGE_SIZE}x{IMAGE_SIZE}) to {tmp} in {time.perf_counter() - t:.1f} s")
        for v in variants:
            results[v] = spawn(v, args, tmp if v in E2E_VARIANTS else None)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out = assemble(results, default_precision, machine, args)
    out["elapsed_s"] = round(time.time() - t0, 1)
    out["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    return out


def main() -> None:
    global OUT_DIM
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timed steps per variant (default {STEPS}, bf16 step variants {BF16_STEPS}; quick: 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"warm-up steps (default {WARMUP}, bf16 step variants {BF16_WARMUP}; quick: 1)")
    parser.add_argument("--batch", type=int, default=None, help=f"batch size (default {BATCH}; quick: {QUICK_BATCH})")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: batch {QUICK_BATCH}, {QUICK_OUT_DIM} prototypes, 1 warm-up, 2 timed steps")
    parser.add_argument("--variants", default="", help=f"comma-separated subset of {','.join(ALL_VARIANTS)}")
    parser.add_argument("--variant", default="", help="(internal) run one variant in this process")
    parser.add_argument("--json", action="store_true", help="compact one-line JSON (children use it)")
    parser.add_argument("--data", default="", help="(internal) image folder for the end-to-end variants")
    parser.add_argument("--out-dim", type=int, default=None,
                        help=f"DINO head prototypes (default {OUT_DIM}; quick: {QUICK_OUT_DIM})")
    parser.add_argument("--matmul-reps", type=int, default=None, help=f"matmul peak repetitions ({MATMUL_REPS})")
    args = parser.parse_args()
    args.steps_given, args.warmup_given = args.steps is not None, args.warmup is not None
    args.steps = args.steps if args.steps is not None else (2 if args.quick else STEPS)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else WARMUP)
    args.batch = args.batch if args.batch is not None else (QUICK_BATCH if args.quick else BATCH)
    args.out_dim = args.out_dim if args.out_dim is not None else (QUICK_OUT_DIM if args.quick else OUT_DIM)
    args.matmul_reps = args.matmul_reps if args.matmul_reps is not None else (5 if args.quick else MATMUL_REPS)
    if min(args.steps, args.batch, args.matmul_reps) < 1 or args.warmup < 0:
        parser.error("--steps, --batch and --matmul-reps must be >= 1, --warmup >= 0")
    need = args.batch * (args.warmup + args.steps + 1)
    args.n_images = max(need, 64 if args.quick else N_IMAGES)

    OUT_DIM = args.out_dim  # read at call time by ours_config / ref_model / RefStep
    out = run_child(args) if args.variant else run_parent(args)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2), flush=True)


if __name__ == "__main__":
    main()
