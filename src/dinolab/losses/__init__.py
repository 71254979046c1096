"""Self-distillation losses and the teacher's centering."""

from dinolab.losses.centering import centered_softmax, update_center
from dinolab.losses.dino import DINOLoss

__all__ = ["DINOLoss", "centered_softmax", "update_center"]
