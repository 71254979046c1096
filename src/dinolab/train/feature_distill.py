"""Feature distillation from a headless teacher (`distill.teacher`): a frozen backbone supervises a smaller
ViT or a ResNet through their features (losses/feature_distill.py), no heads, no EMA.

`FeatureDistiller` is the step `fit` runs in place of the `Trainer` when `distill.teacher` is set, with the
same interface: `step`, `evaluated_backbone`, `state_dict` / `load_state_dict`, `student.backbone`, `parallel`.
Both global crops of each image are used, each as its own sample (2B images per step); the teacher sees the
same crop (resized to `distill.teacher_size` when given) and the student matches the teacher on that crop.
Local crops are not used (the config refuses them).

Checkpoints keep dinolab's format: "student" holds the student (backbone + projections) for resuming, and
"teacher", the entry every loader reads as *the evaluated model*, holds the student's backbone: so
`dinolab.hub.load_backbone(run_dir)`, `dinolab eval` and `dinolab export` give the distilled student. The frozen
teacher is not saved: it is the file `distill.teacher` names, loaded again on resume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from dinolab.config import NUM_GLOBAL_CROPS, Config, ConfigError
from dinolab.device import Runtime
from dinolab.distributed import ONE_PROCESS, World
from dinolab.hub import load_model
from dinolab.io import BACKBONE_PREFIX, CheckpointError, check_state_fits
from dinolab.losses.feature_distill import FeatureDistillLoss
from dinolab.models.build import build_backbone
from dinolab.models.vit import VisionTransformer
from dinolab.train.optim import Optimization
from dinolab.train.parallel import distribute, load_model_state, model_state
from dinolab.train.schedules import StepSchedule
from dinolab.train.trainer import NonFiniteLossError, parallel_mode

log = logging.getLogger(__name__)


def global_and_grid(backbone: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """A backbone's global feature (B, D) and its last feature grid (B, D, h, w): a ViT's normalized [CLS] and
    patch tokens, a ResNet's pooled and last feature map."""
    ((grid, cls),) = backbone.get_intermediate_layers(images, 1, reshape=True, return_class_token=True)
    return cls, grid


class DistillStudent(nn.Module):
    """The student backbone and the linear maps from its width to the teacher's, one for the global feature and
    one for the patch features (only the backbone is kept after training)."""

    def __init__(self, backbone: nn.Module, teacher_dim: int):
        super().__init__()
        self.backbone = backbone
        self.cls_projection = nn.Linear(backbone.embed_dim, teacher_dim)
        self.patch_projection = nn.Linear(backbone.embed_dim, teacher_dim)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Projected global feature (B, D_t) and projected feature grid (B, D_t, h, w)."""
        cls, grid = global_and_grid(self.backbone, images)
        grid = self.patch_projection(grid.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.cls_projection(cls), grid


def load_feature_teacher(cfg: Config) -> tuple[nn.Module, int]:
    """The backbone `distill.teacher` names, frozen and in eval mode, and its feature width; checked before any
    training with one forward at the size it will see: every problem is a ConfigError naming the key."""
    path = Path(cfg.distill.teacher).expanduser()
    if not path.exists():
        raise ConfigError(f"distill.teacher: {path} does not exist; give a backbone file (a released "
                          "*_pretrain.pth, an HF/timm state dict, a `dinolab export` file) or a dinolab run dir")
    try:
        loaded = load_model(path)
    except (CheckpointError, ValueError) as err:
        raise ConfigError(f"distill.teacher: {path} is not a backbone dinolab can load: {err}") from err
    if loaded.trained_here and not loaded.config.distill.teacher:
        raise ConfigError(
            f"distill.teacher: {path} is a dinolab training run with DINO heads: to distill through its heads use "
            f"distill.teacher_checkpoint={path} (DINOv2 distillation); to distill its features, export its backbone "
            f"first (dinolab export safetensors --checkpoint {path} --out teacher.safetensors) and give that file"
        )
    teacher = loaded.backbone.requires_grad_(False).eval()
    size = cfg.distill.teacher_size or cfg.data.global_crops_size
    if teacher.in_chans != cfg.model.in_chans:
        raise ConfigError(f"distill.teacher: {path} takes {teacher.in_chans}-channel images but the data has "
                          f"model.in_chans={cfg.model.in_chans}; the teacher and the student see the same crops")
    if isinstance(teacher, VisionTransformer) and size % teacher.patch_size:
        key = "distill.teacher_size" if cfg.distill.teacher_size else "data.global_crops_size"
        raise ConfigError(f"{key}={size} is not a multiple of the teacher's patch size {teacher.patch_size}; "
                          "set distill.teacher_size to one (the teacher sees the crops resized to it)")
    try:
        with torch.no_grad():
            cls, grid = global_and_grid(teacher, torch.zeros(1, teacher.in_chans, size, size))
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"distill.teacher: {path} does not run on {size} px crops: {err}") from err
    if cls.shape[-1] != grid.shape[1] or grid.shape[-2] * grid.shape[-1] < 2:
        raise ConfigError(
            f"distill.teacher: {path} gives a {cls.shape[-1]}-d global feature and a {grid.shape[1]}-d "
            f"{grid.shape[-2]}x{grid.shape[-1]} patch grid at {size} px: the loss needs one width and at least 2 "
            "patches; raise distill.teacher_size or give another teacher"
        )
    log.info("feature distillation from %s (%d-d, %dx%d patches at %d px, %.1fM params)", path, cls.shape[-1],
             grid.shape[-2], grid.shape[-1], size, sum(p.numel() for p in teacher.parameters()) / 1e6)
    return teacher, cls.shape[-1]


class FeatureDistiller:
    """Student (backbone + projections), frozen teacher, loss and optimizer, and one training iteration over
    them; under DDP the student's gradients are averaged over the ranks."""

    def __init__(self, cfg: Config, runtime: Runtime, world: World = ONE_PROCESS):
        self.cfg, self.runtime = cfg, runtime
        teacher, teacher_dim = load_feature_teacher(cfg)
        self.teacher = teacher.to(runtime.device)
        self.teacher_size = cfg.distill.teacher_size
        backbone = build_backbone(cfg)
        if isinstance(backbone, VisionTransformer):  # nothing is masked: DDP must not wait for the mask token
            backbone.mask_token.requires_grad_(False)
        self.student = DistillStudent(backbone, teacher_dim).to(runtime.device).train()
        self.parallel = parallel_mode(cfg, world)
        self.student_forward = distribute(self.student, self.teacher, self.parallel, world, runtime)
        d = cfg.distill
        self.loss = FeatureDistillLoss(d.cls_weight, d.patch_weight, d.similarity_temp)
        self.optimization = Optimization(self.student, cfg.optim, runtime.precision)

    def step(
        self,
        crops: list[Tensor],
        schedule: StepSchedule,
        masks: Tensor | None = None,
        phase: Callable[[str], AbstractContextManager] = record_function,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher and student on the global crops, the loss, an AdamW step. `masks` is unused (the config
        refuses masking); it keeps the Trainer's signature. Returns the loss and its two terms."""
        self.optimization.set_lr_and_wd(schedule.lr, schedule.weight_decay)
        self.student.train()  # the k-NN check leaves the backbone in eval mode
        images = torch.cat(crops[:NUM_GLOBAL_CROPS]).to(self.runtime.device, non_blocking=True)
        with self.runtime.autocast():
            with torch.no_grad(), phase("teacher_forward"):
                teacher_cls, teacher_grid = global_and_grid(self.teacher, self.teacher_input(images))
            with phase("student_forward"):
                student_cls, student_grid = self.student_forward(images)
        with phase("loss"):
            loss, stats = self.loss(student_cls, student_grid, teacher_cls, teacher_grid)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()}")
        with phase("backward"):
            self.optimization.backward(loss)
        self.optimization.step(phase)
        return loss.detach(), stats

    def teacher_input(self, images: Tensor) -> Tensor:
        """The crops at distill.teacher_size (bilinear, antialiased when shrinking), or as they are."""
        if not self.teacher_size or self.teacher_size == images.shape[-1] == images.shape[-2]:
            return images
        size = (self.teacher_size, self.teacher_size)
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                             antialias=self.teacher_size < images.shape[-1])

    def evaluated_backbone(self) -> nn.Module:
        """The student's backbone: the model distillation trains, evaluates and saves."""
        return self.student.backbone

    def state_dict(self) -> dict[str, Any]:
        """The step's part of a checkpoint; "teacher" is the evaluated backbone (see the module docstring)."""
        return {
            "student": model_state(self.student),
            "teacher": {BACKBONE_PREFIX + k: v for k, v in self.student.backbone.state_dict().items()},
            **self.optimization.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Restore a checkpoint of this step (student, optimizer, scaler); a DINO run's checkpoint does not fit
        (its student has heads) and says so, key by key."""
        check_state_fits(self.student, state["student"], f"{source} (student)")
        load_model_state(self.student, state["student"])
        self.optimization.load_state_dict(state)
