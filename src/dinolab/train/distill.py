"""DINOv2 distillation: the frozen, trained model (backbone and heads) that supervises a smaller student."""

from __future__ import annotations

import logging
from pathlib import Path

from dinolab.config import Config, ConfigError
from dinolab.io import CheckpointError, load_state_strict, read_training_checkpoint
from dinolab.models.build import build_model
from dinolab.models.heads import MultiCropWrapper

log = logging.getLogger(__name__)


def load_distillation_teacher(cfg: Config) -> MultiCropWrapper:
    """The teacher of `distill.teacher_checkpoint`, frozen, in eval mode.

    It must speak the student's language: the same prototypes (head.out_dim, and head.patch_out_dim
    for iBOT), the same patch size (masks refer to the same patches) and the same input channels.
    """
    path = Path(cfg.distill.teacher_checkpoint).expanduser()
    if not path.exists():
        raise ConfigError(f"distill.teacher_checkpoint: {path} does not exist; train the teacher first or fix the path")
    try:
        checkpoint = read_training_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError(f"distill.teacher_checkpoint: {err}. A backbone without DINO heads (a released file, a "
                          "dinolab export) distills through its features instead: give it as distill.teacher") from err
    tcfg = checkpoint.config
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
    load_state_strict(teacher, checkpoint.state["teacher"], f"distillation teacher {path}")
    log.info("distilling from %s (%s, %.1fM params)", path, tcfg.model.arch,
             sum(p.numel() for p in teacher.backbone.parameters()) / 1e6)
    return teacher.requires_grad_(False).eval()
