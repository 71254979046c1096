"""Self-distillation losses and the teacher's centering."""

from dinolab.losses.centering import centered_softmax, sinkhorn_knopp, teacher_targets, update_center
from dinolab.losses.dino import DINOLoss
from dinolab.losses.ibot import IBOTPatchLoss
from dinolab.losses.koleo import koleo_loss

__all__ = [
    "DINOLoss",
    "IBOTPatchLoss",
    "centered_softmax",
    "koleo_loss",
    "sinkhorn_knopp",
    "teacher_targets",
    "update_center",
]
