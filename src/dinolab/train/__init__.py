"""Training: `fit` (the loop, fit.py), the `Trainer` (one step, trainer.py), optimizer and schedules, the EMA
teacher, distillation, the high-resolution phase, the monitor (metrics, k-NN, collapse) and the report."""

from dinolab.train.fit import FitResult, fit
from dinolab.train.schedules import StepSchedule
from dinolab.train.trainer import NonFiniteLossError, Trainer

__all__ = ["FitResult", "NonFiniteLossError", "StepSchedule", "Trainer", "fit"]
