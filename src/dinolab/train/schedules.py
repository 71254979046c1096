"""Per-iteration schedules (linear warm-up then cosine, as in the DINO code) and the values of one step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dinolab.config import Config
from dinolab.train.optim import scaled_lr


def cosine_schedule(
    base: float, final: float, epochs: int, iters_per_epoch: int, warmup_epochs: float = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Values for every iteration: linear warmup_start -> base over warm-up, then cosine base -> final."""
    warmup_iters = round(warmup_epochs * iters_per_epoch)
    total = epochs * iters_per_epoch
    warmup = np.linspace(warmup_start, base, warmup_iters, endpoint=False) if warmup_iters else np.array([])
    steps = np.arange(total - warmup_iters)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate((warmup, cosine))


def teacher_temp_schedule(
    warmup_temp: float, final_temp: float, warmup_epochs: float, epochs: int, iters_per_epoch: int = 1
) -> np.ndarray:
    """Teacher temperature for every iteration: linear warm-up (reaching final_temp on its last iteration), then
    constant. With one iteration per epoch this is the DINO code's per-epoch schedule; per iteration, as in DINOv2,
    a warm-up can also last a fraction of an epoch, so short runs can warm up at all."""
    total = epochs * iters_per_epoch
    warmup = np.linspace(warmup_temp, final_temp, round(warmup_epochs * iters_per_epoch))
    return np.concatenate((warmup, np.full(max(total - len(warmup), 0), final_temp)))[:total]


@dataclass
class StepSchedule:
    """The scheduled values for one iteration."""

    lr: float
    weight_decay: float
    momentum: float  # EMA momentum of the teacher (of the student's EMA, in distillation)
    teacher_temp: float
    ibot_teacher_temp: float = 0.07
    train_last_layer: bool = True  # False while the prototypes are kept fixed (first epoch of DINO)
    train_backbone: bool = True  # False while the heads warm up on a frozen backbone (optim.freeze_backbone_iterations)


class Schedules:
    """Every schedule of a run, computed once for all its iterations: `at(iteration)` gives one step's values."""

    def __init__(self, cfg: Config, iters_per_epoch: int):
        o, loss = cfg.optim, cfg.loss
        lr_peak = scaled_lr(o.lr, o.batch_size, o.lr_scaling)
        self.lr = cosine_schedule(lr_peak, o.min_lr, o.epochs, iters_per_epoch, o.warmup_epochs)
        self.wd = cosine_schedule(o.weight_decay, o.weight_decay_end, o.epochs, iters_per_epoch)
        self.momentum = cosine_schedule(o.momentum_teacher, o.momentum_teacher_end, o.epochs, iters_per_epoch)
        self.teacher_temp = teacher_temp_schedule(
            loss.warmup_teacher_temp, loss.teacher_temp, loss.warmup_teacher_temp_epochs, o.epochs, iters_per_epoch
        )
        self.ibot_teacher_temp = teacher_temp_schedule(
            loss.ibot_warmup_teacher_temp, loss.ibot_teacher_temp, loss.warmup_teacher_temp_epochs, o.epochs,
            iters_per_epoch,
        )
        self.freeze_last_layer_iters = round(o.freeze_last_layer_epochs * iters_per_epoch)
        self.freeze_backbone_iters = o.freeze_backbone_iterations

    def at(self, iteration: int) -> StepSchedule:
        return StepSchedule(
            float(self.lr[iteration]), float(self.wd[iteration]), float(self.momentum[iteration]),
            float(self.teacher_temp[iteration]), float(self.ibot_teacher_temp[iteration]),
            train_last_layer=iteration >= self.freeze_last_layer_iters,
            train_backbone=iteration >= self.freeze_backbone_iters,
        )
