"""DINO pretraining, top to bottom: build, (resume), loop over epochs, checkpoint, report.

`fit(cfg)` is the whole program; the CLI only parses arguments and calls it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function
from tqdm import tqdm

from dinolab import config as config_lib
from dinolab.config import Config
from dinolab.data.loader import MultiCropBatches, batches_per_epoch, build_augmentation, build_dataset, multicrop_loader
from dinolab.device import Runtime, resolve
from dinolab.losses.dino import DINOLoss
from dinolab.models.heads import DINOHead, MultiCropWrapper
from dinolab.models.vit import VisionTransformer, vit
from dinolab.train.checkpoint import (
    LATEST,
    load_checkpoint,
    load_state_strict,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
)
from dinolab.train.ema import EMATeacher
from dinolab.train.monitor import MetricsLog, collapse_warning
from dinolab.train.report import write_report
from dinolab.train.schedules import cosine_schedule, teacher_temp_schedule

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the last good checkpoint is left in place."""


@dataclass
class FitResult:
    run_dir: Path
    epochs_done: int
    last_metrics: dict[str, float]
    teacher: VisionTransformer


def build_backbone(cfg: Config, drop_path_rate: float | None = None) -> VisionTransformer:
    m = cfg.model
    depth = {"depth": m.depth} if m.depth else {}
    return vit(
        m.arch,
        **depth,
        img_size=m.img_size,
        patch_size=m.patch_size,
        in_chans=m.in_chans,
        drop_path_rate=m.drop_path_rate if drop_path_rate is None else drop_path_rate,
        num_register_tokens=m.num_register_tokens,
        layerscale_init=m.layerscale_init,
        ffn=m.ffn,
        qkv_bias=m.qkv_bias,
    )


def build_student_teacher(cfg: Config) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student with stochastic depth, teacher without; the teacher starts as a copy of the student."""
    h = cfg.head
    student_backbone = build_backbone(cfg)
    teacher_backbone = build_backbone(cfg, drop_path_rate=0.0)
    heads = [
        DINOHead(student_backbone.embed_dim, h.out_dim, h.hidden_dim, h.bottleneck_dim, h.nlayers, h.norm_last_layer)
        for _ in range(2)
    ]
    student = MultiCropWrapper(student_backbone, heads[0])
    teacher = MultiCropWrapper(teacher_backbone, heads[1])
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return student, teacher


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """No weight decay on biases and norm/scale vectors (1-d parameters), as in DINO."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients_per_parameter(params: list[nn.Parameter], max_norm: float) -> None:
    """Scale each parameter's gradient to norm <= max_norm separately (DINO's clipping), in one fused pass."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


def make_optimizer(groups: list[dict[str, Any]], cfg: Config, runtime: Runtime) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {"lr": 0.0, "betas": cfg.optim.betas}
    if runtime.device.type == "cuda":
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(groups, **kwargs)


class Trainer:
    """Student, EMA teacher, DINO loss and optimizer, and one training iteration over them.

    `fit` feeds it batches and schedules; benchmarks call `step` directly on fixed crops.
    """

    def __init__(self, cfg: Config, runtime: Runtime):
        self.runtime = runtime
        self.student, self.teacher = build_student_teacher(cfg)
        self.student.to(runtime.device).train()
        self.teacher.to(runtime.device)
        self.ema = EMATeacher(self.teacher, self.student)
        self.loss = DINOLoss(cfg.head.out_dim, cfg.loss.student_temp, cfg.loss.center_momentum).to(runtime.device)
        self.optimizer = make_optimizer(param_groups(self.student), cfg, runtime)
        self.scaler = torch.amp.GradScaler("cuda", enabled=runtime.precision == "fp16")
        self.last_layer = list(self.student.head.last_layer.parameters())
        self.trainable = [p for p in self.student.parameters() if p.requires_grad]
        self.clip_grad = cfg.optim.clip_grad

    def step(
        self,
        crops: list[Tensor],
        lr: float,
        weight_decay: float,
        momentum: float,
        teacher_temp: float,
        train_last_layer: bool = True,
        phase: Callable[[str], AbstractContextManager] = record_function,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher on the 2 global crops, student on all, DINO loss, AdamW step, EMA update.

        Each part runs inside `phase(name)`: profiler labels by default; benchmarks pass timers.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group["apply_wd"]:
                group["weight_decay"] = weight_decay
        crops = [c.to(self.runtime.device, non_blocking=True) for c in crops]
        with self.runtime.autocast():
            with torch.no_grad(), phase("teacher_forward"):
                teacher_out = self.teacher(crops[:2])
            with phase("student_forward"):
                student_out = self.student(crops)
        with phase("loss"):
            loss, stats = self.loss(student_out, teacher_out, teacher_temp)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()}")
        with phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        if not train_last_layer:  # DINO keeps the prototypes fixed at first, for stability
            for p in self.last_layer:
                p.grad = None
        with phase("clip"):
            if self.clip_grad:
                self.scaler.unscale_(self.optimizer)
                clip_gradients_per_parameter(self.trainable, self.clip_grad)
        with phase("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        with phase("ema"):
            self.ema.update(momentum)
        return loss.detach(), stats

    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dino_loss": self.loss.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        load_state_strict(self.student, state["student"], f"{source} (student)")
        load_state_strict(self.teacher, state["teacher"], f"{source} (teacher)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss.load_state_dict(state["dino_loss"])
        self.scaler.load_state_dict(state["scaler"])


def fit(
    cfg: Config, resume: str | Path | bool = True, quiet: bool = False, max_iterations: int | None = None
) -> FitResult:
    """Train DINO as `cfg` says; resume from `resume` (a file), or from the run dir's last checkpoint if True.

    `max_iterations` stops early (for tests and benchmarks); schedules still span the full config.
    """
    config_lib.validate(cfg)
    run_dir = Path(cfg.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, run_dir / "config.yaml")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.train.seed)
    runtime = resolve(cfg.train.device, cfg.train.precision)

    dataset = build_dataset(cfg.data, cfg.model.in_chans)
    iters_per_epoch = batches_per_epoch(dataset, cfg.optim.batch_size)
    if iters_per_epoch == 0:
        raise ValueError(
            f"the dataset has {len(dataset)} images, fewer than one batch (optim.batch_size="
            f"{cfg.optim.batch_size}); lower the batch size or add images"
        )
    augmentation = build_augmentation(cfg.data)
    trainer = Trainer(cfg, runtime)

    o = cfg.optim
    lr_peak = o.lr * o.batch_size / 256
    lrs = cosine_schedule(lr_peak, o.min_lr, o.epochs, iters_per_epoch, o.warmup_epochs)
    wds = cosine_schedule(o.weight_decay, o.weight_decay_end, o.epochs, iters_per_epoch)
    momentums = cosine_schedule(o.momentum_teacher, o.momentum_teacher_end, o.epochs, iters_per_epoch)
    teacher_temps = teacher_temp_schedule(
        cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp, cfg.loss.warmup_teacher_temp_epochs, o.epochs
    )
    freeze_last_layer_iters = round(o.freeze_last_layer_epochs * iters_per_epoch)

    start_epoch = 0
    checkpoint_path = Path(resume) if isinstance(resume, (str, Path)) else run_dir / LATEST
    if (resume is not False) and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        trainer.load_state_dict(state, f"checkpoint {checkpoint_path}")
        set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        log.info("resumed from %s at epoch %d", checkpoint_path, start_epoch)
    elif isinstance(resume, (str, Path)):
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")

    metrics = MetricsLog(run_dir, start_iteration=start_epoch * iters_per_epoch)
    last: dict[str, float] = {}
    total_skipped = 0
    iteration = start_epoch * iters_per_epoch
    stop_at = iteration + max_iterations if max_iterations is not None else None
    log.info(
        "training %s (%.1fM params) on %d images, %d iters/epoch, %s %s",
        cfg.model.arch, sum(p.numel() for p in trainer.student.backbone.parameters()) / 1e6, len(dataset),
        iters_per_epoch, runtime.device, runtime.precision,
    )
    try:
        for epoch in range(start_epoch, o.epochs):
            batches = MultiCropBatches(dataset, augmentation, o.batch_size, cfg.train.seed, epoch)
            loader = multicrop_loader(batches, cfg.data.num_workers)
            progress = tqdm(loader, desc=f"epoch {epoch + 1}/{o.epochs}", disable=quiet, leave=False)
            window_start, window_images = time.perf_counter(), 0
            for i, (crops, _, skipped) in enumerate(progress):
                total_skipped += skipped
                if not crops:
                    continue
                it = epoch * iters_per_epoch + i
                try:
                    loss, stats = trainer.step(
                        crops, float(lrs[it]), float(wds[it]), float(momentums[it]), float(teacher_temps[epoch]),
                        train_last_layer=it >= freeze_last_layer_iters,
                    )
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(
                        f"{err} at epoch {epoch + 1}, iteration {it}; the last good checkpoint "
                        f"({run_dir / LATEST}) is kept. Try a lower optim.lr, optim.clip_grad > 0, "
                        f"train.precision=fp32, or check the data."
                    ) from None
                window_images += len(crops[0])
                iteration = it + 1

                if iteration % cfg.train.log_every == 0 or i == len(loader) - 1:
                    elapsed = time.perf_counter() - window_start
                    last = {
                        "iteration": iteration,
                        "epoch": epoch + (i + 1) / iters_per_epoch,
                        "loss": loss.item(),
                        "lr": float(lrs[it]),
                        "wd": float(wds[it]),
                        "momentum": float(momentums[it]),
                        "teacher_temp": float(teacher_temps[epoch]),
                        "teacher_entropy": stats["teacher_entropy"].item(),
                        "kl": stats["kl"].item(),
                        "img_per_s": window_images / max(elapsed, 1e-9),
                    }
                    metrics.write(last)
                    progress.set_postfix(loss=f"{last['loss']:.3f}", H=f"{last['teacher_entropy']:.2f}")
                    window_start, window_images = time.perf_counter(), 0
                    warning = collapse_warning(last["teacher_entropy"], cfg.head.out_dim)
                    if warning and epoch >= 1:
                        log.warning(warning)
                if stop_at is not None and iteration >= stop_at:
                    break
            progress.close()
            if total_skipped:
                log.warning("skipped %d unreadable images so far (see --verbose for names)", total_skipped)
            if stop_at is not None and iteration >= stop_at and iteration % iters_per_epoch:
                break
            done = epoch + 1
            if done % cfg.train.save_every_epochs == 0 or done == o.epochs:
                state = {
                    **trainer.state_dict(),
                    "epoch": done,
                    "iteration": iteration,
                    "rng": rng_state(),
                    "config": cfg.to_dict(),
                }
                save_run_checkpoint(state, run_dir, done, cfg.train.keep_last)
            if not quiet:
                summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("iteration", "epoch"))
                tqdm.write(f"epoch {done}/{o.epochs}: {summary}")
            if stop_at is not None and iteration >= stop_at:
                break
    finally:
        metrics.close()
    write_report(run_dir, cfg, skipped_images=total_skipped)
    epochs_done = iteration // iters_per_epoch
    return FitResult(run_dir, epochs_done, last, trainer.teacher.backbone)


def teacher_from_checkpoint(path: str | Path) -> tuple[VisionTransformer, Config]:
    """The EMA teacher backbone (the model DINO evaluates) and the config it was trained with."""
    state = load_checkpoint(path)
    if "teacher" not in state or "config" not in state:
        raise ValueError(
            f"{path}: not a dinolab training checkpoint (needs 'teacher' and 'config' entries, found "
            f"{', '.join(sorted(state)[:8])})"
        )
    cfg = config_lib.from_dict(state["config"])
    backbone = build_backbone(cfg, drop_path_rate=0.0)
    prefix = "backbone."
    weights: dict[str, Tensor] = {k[len(prefix):]: v for k, v in state["teacher"].items() if k.startswith(prefix)}
    load_state_strict(backbone, weights, f"checkpoint {path} (teacher backbone)")
    return backbone.eval(), cfg

