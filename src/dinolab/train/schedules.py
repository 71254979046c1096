"""Per-iteration schedules: linear warm-up then cosine, as in the DINO code."""

from __future__ import annotations

import numpy as np


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


def teacher_temp_schedule(warmup_temp: float, final_temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Per-epoch teacher temperature: linear warm-up, then constant."""
    warmup = np.linspace(warmup_temp, final_temp, warmup_epochs)
    return np.concatenate((warmup, np.full(max(epochs - warmup_epochs, 0), final_temp)))[:epochs]
