"""DINO-family pretraining, top to bottom: build, (resume), loop over epochs, checkpoint, report.

One trainer covers the recipes, switched by config: DINO ([CLS] self-distillation), iBOT (+ masked
patch prediction), DINOv2 (+ KoLeo, Sinkhorn-Knopp, layer-wise lr decay, high-resolution phase) and
DINOv2 distillation (a frozen trained teacher instead of the EMA). `fit(cfg)` is the whole program;
the CLI only parses arguments and calls it.
"""

from __future__ import annotations

import logging
import math
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
from dinolab.config import Config, ConfigError
from dinolab.data.loader import (
    MultiCropBatches,
    batches_per_epoch,
    build_augmentation,
    build_dataset,
    build_masking,
    multicrop_loader,
)
from dinolab.device import Runtime, resolve
from dinolab.eval.knn import knn
from dinolab.losses.dino import DINOLoss
from dinolab.losses.ibot import IBOTPatchLoss
from dinolab.losses.koleo import koleo_loss
from dinolab.models.heads import CropOutputs, DINOHead, MultiCropWrapper
from dinolab.models.vit import VisionTransformer, vit
from dinolab.train.checkpoint import (
    LATEST,
    CheckpointError,
    load_checkpoint,
    load_state_strict,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
)
from dinolab.train.ema import EMATeacher
from dinolab.train.highres import resize_position_embeddings
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


def build_model(cfg: Config, drop_path_rate: float | None = None) -> MultiCropWrapper:
    """Backbone + [CLS] head, + a separate iBOT patch head when the iBOT loss is on and heads are not shared."""
    h = cfg.head
    backbone = build_backbone(cfg, drop_path_rate)

    def head(out_dim: int) -> DINOHead:
        return DINOHead(backbone.embed_dim, out_dim, h.hidden_dim, h.bottleneck_dim, h.nlayers, h.norm_last_layer)

    separate_patch_head = cfg.loss.ibot_weight > 0 and not h.shared
    return MultiCropWrapper(
        backbone, head(h.out_dim), head(h.patch_out_dim) if separate_patch_head else None, shared_head=h.shared
    )


def build_student_teacher(cfg: Config) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student with stochastic depth, teacher without; the teacher starts as a copy of the student."""
    student = build_model(cfg)
    teacher = build_model(cfg, drop_path_rate=0.0)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return student, teacher


def load_distillation_teacher(cfg: Config) -> MultiCropWrapper:
    """The frozen, trained model (backbone and heads) that supervises the student in distillation.

    It must speak the student's language: the same prototypes (head.out_dim, and head.patch_out_dim
    for iBOT), the same patch size (masks refer to the same patches) and the same input channels.
    """
    path = Path(cfg.distill.teacher_checkpoint).expanduser()
    if not path.exists():
        raise ConfigError(f"distill.teacher_checkpoint: {path} does not exist; train the teacher first or fix the path")
    state = load_checkpoint(path)
    if "teacher" not in state or "config" not in state:
        raise ConfigError(f"distill.teacher_checkpoint: {path} is not a dinolab training checkpoint")
    tcfg = config_lib.from_dict(state["config"])
    needs_patch_head = cfg.loss.ibot_weight > 0
    compared = [
        ("model.patch_size", tcfg.model.patch_size, cfg.model.patch_size),
        ("model.in_chans", tcfg.model.in_chans, cfg.model.in_chans),
        ("head.out_dim", tcfg.head.out_dim, cfg.head.out_dim),
    ]
    if needs_patch_head:
        compared.append(("head.patch_out_dim", tcfg.head.patch_out_dim, cfg.head.patch_out_dim))
    problems = [f"{key}: teacher {a}, student {b}" for key, a, b in compared if a != b]
    if needs_patch_head and tcfg.loss.ibot_weight == 0:
        problems.append("loss.ibot_weight: the teacher was trained without an iBOT patch head; set the student's to 0")
    if problems:
        raise ConfigError(f"distillation teacher {path} does not fit this student: " + "; ".join(problems))
    teacher = build_model(tcfg, drop_path_rate=0.0)
    load_state_strict(teacher, state["teacher"], f"distillation teacher {path}")
    log.info("distilling from %s (%s, %.1fM params)", path, tcfg.model.arch,
             sum(p.numel() for p in teacher.backbone.parameters()) / 1e6)
    return teacher.requires_grad_(False).eval()


def param_groups(model: MultiCropWrapper, layer_decay: float = 1.0, patch_embed_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on biases and norm/scale vectors (1-d parameters), as in DINO;
    with DINOv2's layer-wise lr decay, block i of n gets lr_scale = decay**(n - i), the embeddings
    decay**(n + 1) (times `patch_embed_lr_mult` for the patch embedding) and the heads 1."""
    n_blocks = len(model.backbone.blocks)
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        apply_wd = not (p.ndim <= 1 or name.endswith(".bias"))
        scale = layer_decay ** (n_blocks + 1 - _layer_id(name, n_blocks))
        if name.startswith("backbone.patch_embed."):
            scale *= patch_embed_lr_mult
        group = groups.setdefault(
            (apply_wd, scale),
            {"params": [], "apply_wd": apply_wd, "lr_scale": scale, **({} if apply_wd else {"weight_decay": 0.0})},
        )
        group["params"].append(p)
    return list(groups.values())


def _layer_id(name: str, n_blocks: int) -> int:
    """0 for the embeddings and tokens, i + 1 for block i, n_blocks + 1 for the final norm and the heads."""
    if not name.startswith("backbone.") or name.startswith("backbone.norm."):
        return n_blocks + 1
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    return 0


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


@dataclass
class StepSchedule:
    """The scheduled values for one iteration."""

    lr: float
    weight_decay: float
    momentum: float  # EMA momentum of the teacher (of the student's EMA, in distillation)
    teacher_temp: float
    ibot_teacher_temp: float = 0.07
    train_last_layer: bool = True  # False while the prototypes are kept fixed (first epoch of DINO)


class Trainer:
    """Student, EMA teacher, losses and optimizer, and one training iteration over them.

    `teacher` is always the EMA of the student: the model that is evaluated and saved as "teacher".
    It also produces the targets, except in distillation, where a frozen trained model does.
    `fit` feeds the trainer batches and schedules; benchmarks call `step` directly on fixed crops.
    """

    def __init__(self, cfg: Config, runtime: Runtime):
        self.runtime = runtime
        self.student, self.teacher = build_student_teacher(cfg)
        self.student.to(runtime.device).train()
        self.teacher.to(runtime.device)
        self.target_model = (
            load_distillation_teacher(cfg).to(runtime.device) if cfg.distill.teacher_checkpoint else self.teacher
        )
        self.ema = EMATeacher(self.teacher, self.student)
        c, h = cfg.loss, cfg.head
        centering = dict(centering=c.centering, sinkhorn_iterations=c.sinkhorn_iterations)
        self.dino_loss = DINOLoss(h.out_dim, c.student_temp, c.center_momentum, **centering).to(runtime.device)
        self.ibot_loss = (
            IBOTPatchLoss(h.patch_out_dim, c.student_temp, c.center_momentum, **centering).to(runtime.device)
            if c.ibot_weight > 0 else None
        )
        self.weights = {"dino": c.dino_weight, "ibot": c.ibot_weight, "koleo": c.koleo_weight}
        groups = param_groups(self.student, cfg.optim.layer_decay, cfg.optim.patch_embed_lr_mult)
        self.optimizer = make_optimizer(groups, cfg, runtime)
        self.scaler = torch.amp.GradScaler("cuda", enabled=runtime.precision == "fp16")
        self.last_layers = [
            p for name, p in self.student.named_parameters() if ".last_layer." in name and p.requires_grad
        ]
        self.trainable = [p for p in self.student.parameters() if p.requires_grad]
        self.clip_grad = cfg.optim.clip_grad

    def step(
        self,
        crops: list[Tensor],
        schedule: StepSchedule,
        masks: Tensor | None = None,
        phase: Callable[[str], AbstractContextManager] = record_function,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher on the 2 global crops, student on all (global crops masked where `masks` says),
        the weighted losses, AdamW step, EMA update. Returns the total loss and the per-loss and
        collapse statistics. Each part runs inside `phase(name)`: profiler labels by default;
        benchmarks pass timers."""
        for group in self.optimizer.param_groups:
            group["lr"] = schedule.lr * group["lr_scale"]
            if group["apply_wd"]:
                group["weight_decay"] = schedule.weight_decay
        crops = [c.to(self.runtime.device, non_blocking=True) for c in crops]
        mask_input = masks is not None
        if masks is not None:
            masks = masks.to(self.runtime.device, non_blocking=True)
        elif self.ibot_loss is not None:  # DINOv2 distillation: iBOT loss on every patch, no masking
            masks = self.all_patches(crops)
        with self.runtime.autocast():
            with torch.no_grad(), phase("teacher_forward"):
                teacher_out = self.target_model.forward_crops(crops[:2], masks, mask_input=False)
            with phase("student_forward"):
                student_out = self.student.forward_crops(crops, masks, mask_input=mask_input)
        with phase("loss"):
            loss, stats = self._losses(student_out, teacher_out, masks, schedule)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()}")
        with phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        if not schedule.train_last_layer:  # DINO keeps the prototypes fixed at first, for stability
            for p in self.last_layers:
                p.grad = None
        with phase("clip"):
            if self.clip_grad:
                self.scaler.unscale_(self.optimizer)
                clip_gradients_per_parameter(self.trainable, self.clip_grad)
        with phase("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        with phase("ema"):
            self.ema.update(schedule.momentum)
        return loss.detach(), stats

    def all_patches(self, crops: list[Tensor]) -> Tensor:
        """An all-True mask over the patches of the two global crops."""
        b, _, h, w = crops[0].shape
        patch = self.student.backbone.patch_size
        return torch.ones(2 * b, (h // patch) * (w // patch), dtype=torch.bool, device=crops[0].device)

    def _losses(
        self, student: CropOutputs, teacher: CropOutputs, masks: Tensor | None, schedule: StepSchedule
    ) -> tuple[Tensor, dict[str, Tensor]]:
        dino, stats = self.dino_loss(student.cls_logits, teacher.cls_logits, schedule.teacher_temp)
        loss = self.weights["dino"] * dino
        stats["dino_loss"] = dino.detach()
        if self.ibot_loss is not None and masks is not None:
            ibot, ibot_stats = self.ibot_loss(student.patch_logits, teacher.patch_logits, masks,
                                              schedule.ibot_teacher_temp)
            loss = loss + self.weights["ibot"] * ibot
            stats |= ibot_stats | {"ibot_loss": ibot.detach()}
        if self.weights["koleo"] > 0:  # on each global view's [CLS] features separately, as DINOv2
            global_cls = student.cls_tokens[: len(teacher.cls_tokens)].chunk(2)
            koleo = sum(koleo_loss(view) for view in global_cls)
            loss = loss + self.weights["koleo"] * koleo
            stats["koleo_loss"] = koleo.detach()
        return loss, stats

    def state_dict(self) -> dict[str, Any]:
        state = {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dino_loss": self.dino_loss.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.ibot_loss is not None:
            state["ibot_loss"] = self.ibot_loss.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Restore a checkpoint; a checkpoint trained at a lower resolution has its position embeddings
        (and their optimizer moments) resized once to this model's: DINOv2's high-resolution phase."""
        resize_position_embeddings(state, self.student, self.optimizer, source)
        load_state_strict(self.student, state["student"], f"{source} (student)")
        load_state_strict(self.teacher, state["teacher"], f"{source} (teacher)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.dino_loss.load_state_dict(state["dino_loss"])
        if self.ibot_loss is not None:
            if "ibot_loss" not in state:
                raise CheckpointError(f"{source}: has no iBOT loss state; it was trained without loss.ibot_weight")
            self.ibot_loss.load_state_dict(state["ibot_loss"])
        self.scaler.load_state_dict(state["scaler"])


def fit(
    cfg: Config, resume: str | Path | bool = True, quiet: bool = False, max_iterations: int | None = None
) -> FitResult:
    """Train as `cfg` says; resume from `resume` (a file), or from the run dir's last checkpoint if True.

    `max_iterations` stops early (for tests and benchmarks); schedules still span the full config.
    Resuming a lower-resolution checkpoint with larger crops and model.img_size is the high-resolution
    phase: position embeddings are resized once and training continues with the new config's schedules.
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
    masking = build_masking(cfg.mask, cfg.data.global_crops_size, cfg.model.patch_size)
    trainer = Trainer(cfg, runtime)

    o = cfg.optim
    lr_peak = scaled_lr(o.lr, o.batch_size, o.lr_scaling)
    lrs = cosine_schedule(lr_peak, o.min_lr, o.epochs, iters_per_epoch, o.warmup_epochs)
    wds = cosine_schedule(o.weight_decay, o.weight_decay_end, o.epochs, iters_per_epoch)
    momentums = cosine_schedule(o.momentum_teacher, o.momentum_teacher_end, o.epochs, iters_per_epoch)
    teacher_temps = teacher_temp_schedule(
        cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp, cfg.loss.warmup_teacher_temp_epochs, o.epochs
    )
    ibot_teacher_temps = teacher_temp_schedule(
        cfg.loss.ibot_warmup_teacher_temp, cfg.loss.ibot_teacher_temp, cfg.loss.warmup_teacher_temp_epochs, o.epochs
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

    knn_monitor = KNNMonitor(cfg, runtime) if cfg.eval.knn_every else None
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
            batches = MultiCropBatches(dataset, augmentation, o.batch_size, cfg.train.seed, epoch, masking=masking)
            loader = multicrop_loader(batches, cfg.data.num_workers)
            progress = tqdm(loader, desc=f"epoch {epoch + 1}/{o.epochs}", disable=quiet, leave=False)
            window_start, window_images = time.perf_counter(), 0
            for i, (crops, _, skipped, masks) in enumerate(progress):
                total_skipped += skipped
                if not crops:
                    continue
                it = epoch * iters_per_epoch + i
                schedule = StepSchedule(
                    float(lrs[it]), float(wds[it]), float(momentums[it]), float(teacher_temps[epoch]),
                    float(ibot_teacher_temps[epoch]), train_last_layer=it >= freeze_last_layer_iters,
                )
                try:
                    loss, stats = trainer.step(crops, schedule, masks)
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(
                        f"{err} at epoch {epoch + 1}, iteration {it}; the last good checkpoint "
                        f"({run_dir / LATEST}) is kept. Try a lower optim.lr, optim.clip_grad > 0, "
                        f"train.precision=fp32, or check the data."
                    ) from None
                window_images += len(crops[0])
                iteration = it + 1

                check_knn = knn_monitor is not None and (iteration % cfg.eval.knn_every == 0 or i == len(loader) - 1)
                if iteration % cfg.train.log_every == 0 or i == len(loader) - 1 or check_knn:
                    elapsed = time.perf_counter() - window_start
                    last = {
                        "iteration": iteration,
                        "epoch": epoch + (i + 1) / iters_per_epoch,
                        "loss": loss.item(),
                        "lr": schedule.lr,
                        "wd": schedule.weight_decay,
                        "momentum": schedule.momentum,
                        "teacher_temp": schedule.teacher_temp,
                        **({"ibot_teacher_temp": schedule.ibot_teacher_temp} if trainer.ibot_loss else {}),
                        **{k: v.item() for k, v in stats.items()},
                        "img_per_s": window_images / max(elapsed, 1e-9),
                    }
                    if check_knn:
                        last["knn_top1"] = knn_monitor(trainer.teacher.backbone)
                    metrics.write(last)
                    progress.set_postfix(loss=f"{last['loss']:.3f}", H=f"{last['teacher_entropy']:.2f}")
                    window_start, window_images = time.perf_counter(), 0
                    if epoch >= 1:
                        warn_on_collapse(last, cfg)
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


class KNNMonitor:
    """Weighted k-NN top-1 (k=20) of the teacher on a fixed slice of the labeled data, during training:
    the learning curve the DINO paper plots. Deterministic and RNG-free, so resumed runs stay identical."""

    def __init__(self, cfg: Config, runtime: Runtime):
        from torch.utils.data import Subset

        from dinolab.data.loader import build_eval_dataset

        train = build_eval_dataset(cfg.data, cfg.model.in_chans, "train", cfg.data.path)
        test = build_eval_dataset(cfg.data, cfg.model.in_chans, "test", cfg.eval.test_path, classes=train.classes)
        self.train = Subset(train, range(min(cfg.eval.knn_monitor_train, len(train))))
        self.test = Subset(test, range(min(cfg.eval.knn_monitor_test, len(test))))
        self.cfg, self.runtime = cfg, runtime

    def __call__(self, model: nn.Module) -> float:
        d, e = self.cfg.data, self.cfg.eval
        scores = knn(model, self.train, self.test, 20, e.knn_temperature, d.mean, d.std, e.batch_size, self.runtime,
                     quiet=True)
        return scores[20]["top1"]


def scaled_lr(lr: float, batch_size: int, rule: str) -> float:
    """The peak lr for a batch size: DINO/iBOT scale linearly from batch 256, DINOv2 by sqrt from 1024."""
    return lr * batch_size / 256 if rule == "linear" else lr * math.sqrt(batch_size / 1024)


def warn_on_collapse(metrics: dict[str, float], cfg: Config) -> None:
    """The collapse monitor, for the [CLS] targets and (iBOT) the patch targets."""
    warning = collapse_warning(metrics["teacher_entropy"], cfg.head.out_dim)
    if warning:
        log.warning("[CLS] targets: %s", warning)
    if "ibot_teacher_entropy" in metrics:
        warning = collapse_warning(metrics["ibot_teacher_entropy"], cfg.head.patch_out_dim)
        if warning:
            log.warning("iBOT patch targets: %s", warning)


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

