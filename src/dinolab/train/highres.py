"""DINOv2's high-resolution phase: continue training a checkpoint at a larger global crop size.

The learned position embeddings (and Adam's moments for them) are resized once from the checkpoint's
patch grid to the model's, the way the model interpolates; every other tensor is restored as saved.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from dinolab.models.heads import MultiCropWrapper

log = logging.getLogger(__name__)

POS_EMBED = "backbone.pos_embed"


def resize_position_embeddings(
    state: dict[str, Any], student: MultiCropWrapper, optimizer: torch.optim.Optimizer, source: str
) -> bool:
    """Resize, in `state`, the student's and teacher's position embeddings and their optimizer moments to
    the student's grid, if the checkpoint was trained at another one. Returns whether it did."""
    saved = state["student"].get(POS_EMBED)
    target = student.backbone.pos_embed
    if saved is None or saved.shape == target.shape or saved.shape[-1] != target.shape[-1]:
        return False  # same grid, or a different model: load_state_strict reports the latter
    num_patches = target.shape[1] - 1
    side = math.isqrt(num_patches)

    def resize_grid(pos_embed: Tensor) -> Tensor:
        return student.backbone.resample_pos_embed(pos_embed, side, side)

    for model_key in ("student", "teacher"):
        state[model_key][POS_EMBED] = resize_grid(state[model_key][POS_EMBED])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    index = next(i for i, p in enumerate(params) if p is target)
    moments = state["optimizer"]["state"].get(index, {})
    if "exp_avg" in moments:
        moments["exp_avg"] = resize_grid(moments["exp_avg"])
        moments["exp_avg_sq"] = resize_grid(moments["exp_avg_sq"]).clamp_min(0)
    old_side = math.isqrt(saved.shape[1] - 1)
    log.info(
        "%s: position embeddings resized from a %dx%d to a %dx%d patch grid (high-resolution phase)",
        source, old_side, old_side, side, side,
    )
    return True
