"""Training: the DINO loop, schedules, EMA teacher, checkpoints, metrics and report."""

from dinolab.train.trainer import FitResult, NonFiniteLossError, build_backbone, fit, teacher_from_checkpoint

__all__ = ["FitResult", "NonFiniteLossError", "build_backbone", "fit", "teacher_from_checkpoint"]
