"""One training iteration of any recipe: student, EMA teacher, losses and optimizer.

The config decides the recipe: DINO ([CLS] self-distillation), iBOT (+ masked patch prediction), DINOv2
(+ KoLeo, Sinkhorn-Knopp, layer-wise lr decay) and DINOv2 distillation (a frozen trained teacher instead
of the EMA). `fit` (train/fit.py) feeds the trainer batches and schedules; benchmarks call `step` on fixed crops.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from torch.profiler import record_function

from dinolab.config import NUM_GLOBAL_CROPS, Config
from dinolab.device import Runtime
from dinolab.distributed import ONE_PROCESS, World
from dinolab.io import CheckpointError, backbone_weights, check_state_fits
from dinolab.losses.anchor import feature_anchor_loss
from dinolab.losses.dino import DINOLoss
from dinolab.losses.gram import gram_loss
from dinolab.losses.ibot import IBOTPatchLoss
from dinolab.losses.koleo import koleo_loss
from dinolab.models.build import build_backbone, build_student_teacher
from dinolab.models.heads import CropOutputs
from dinolab.models.vit import VisionTransformer
from dinolab.train.adapt import BackboneFreeze, InitialModel, resolve_init
from dinolab.train.distill import load_distillation_teacher
from dinolab.train.ema import EMATeacher
from dinolab.train.highres import resize_position_embeddings
from dinolab.train.optim import Optimization
from dinolab.train.parallel import distribute, load_model_state, model_state
from dinolab.train.schedules import StepSchedule


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the last good checkpoint is left in place."""


class Trainer:
    """Student, EMA teacher, losses and optimizer, and one training iteration over them.

    `teacher` is always the EMA of the student (a MultiCropWrapper: backbone + heads): the model that is
    evaluated and saved as "teacher". It also produces the targets, except in distillation, where
    `target_model`, a frozen trained model, does. In a multi-process run the student runs under DDP (which
    averages the gradients over the ranks) or, with student and teacher, sharded by FSDP2 (train/parallel.py);
    either way every rank holds the same EMA teacher (or its shard).

    With `model.init` (continued pretraining, train/adapt.py) student and teacher start from that backbone, the
    student's backbone can be frozen for a head warm-up, and `anchor`, the frozen initial backbone, is kept for the
    Gram / feature anchoring losses when they are on.
    """

    def __init__(
        self, cfg: Config, runtime: Runtime, world: World = ONE_PROCESS, initial: InitialModel | None = None
    ):
        """`initial`: the model.init file as `resolve_init` read it (fit passes it on); read here when not given."""
        self.cfg, self.runtime = cfg, runtime
        self.student, self.teacher = build_student_teacher(cfg)
        c, h = cfg.loss, cfg.head
        self.anchor: VisionTransformer | None = None
        if cfg.model.init:
            initial = initial or resolve_init(cfg)[1]
            initial.start(self.student, self.teacher)
            if c.gram_weight > 0 or c.anchor_weight > 0:
                self.anchor = initial.anchor(cfg).to(runtime.device)
        self.student.backbone.activation_checkpointing = cfg.train.activation_checkpointing
        self.student.to(runtime.device).train()
        self.teacher.to(runtime.device)
        self.parallel = parallel_mode(cfg, world)
        self.student_forward = distribute(self.student, self.teacher, self.parallel, world, runtime)
        self.target_model = (
            load_distillation_teacher(cfg).to(runtime.device) if cfg.distill.teacher_checkpoint else self.teacher
        )
        if cfg.train.compile:  # the forwards only: the optimizer, EMA and losses are already fused or small
            self.student_forward = torch.compile(self.student_forward)
            self.target_model = torch.compile(self.target_model)
        self.ema = EMATeacher(self.teacher, self.student)
        centering = dict(centering=c.centering, sinkhorn_iterations=c.sinkhorn_iterations)
        self.dino_loss = DINOLoss(h.out_dim, c.student_temp, c.center_momentum, **centering).to(runtime.device)
        self.ibot_loss = (
            IBOTPatchLoss(h.patch_out_dim, c.student_temp, c.center_momentum, **centering).to(runtime.device)
            if c.ibot_weight > 0 else None
        )
        self.weights = {"dino": c.dino_weight, "ibot": c.ibot_weight, "koleo": c.koleo_weight,
                        "gram": c.gram_weight, "anchor": c.anchor_weight}
        self.optimization = Optimization(self.student, cfg.optim, runtime.precision)
        self.last_layers = [
            p for name, p in self.student.named_parameters() if ".last_layer." in name and p.requires_grad
        ]
        self.backbone_freeze = (  # after `distribute`: under FSDP its parameters are the sharded ones
            BackboneFreeze(self.student.backbone, by_requires_grad=self.parallel == "none")
            if cfg.optim.freeze_backbone_iterations else None
        )

    def step(
        self,
        crops: list[Tensor],
        schedule: StepSchedule,
        masks: Tensor | None = None,
        phase: Callable[[str], AbstractContextManager] = record_function,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher on the global crops, student on all (global-crop patches under `masks` hidden and scored),
        the weighted losses, AdamW step, EMA update. Returns the total loss and the per-loss and collapse
        statistics. Each part runs inside `phase(name)`: profiler labels by default; benchmarks pass timers."""
        self.optimization.set_lr_and_wd(schedule.lr, schedule.weight_decay)
        if self.backbone_freeze is not None:
            self.backbone_freeze.set(frozen=not schedule.train_backbone)
        # the anchoring losses are 0 with no gradient while the backbone is frozen: skip them then
        anchored = self.anchor is not None and schedule.train_backbone
        crops = [c.to(self.runtime.device, non_blocking=True) for c in crops]
        hide_scored = masks is not None
        if masks is not None:
            scored = masks.to(self.runtime.device, non_blocking=True)
        elif self.ibot_loss is not None:  # DINOv2 distillation: the iBOT loss scores every patch, none hidden
            scored = self.all_patches(crops)
        else:
            scored = None
        with self.runtime.autocast():
            with torch.no_grad(), phase("teacher_forward"):
                teacher_out = self.target_model(crops[:NUM_GLOBAL_CROPS], scored)
                anchor_out = self.anchor.forward_features(torch.cat(crops[:NUM_GLOBAL_CROPS])) if anchored else None
            if self.parallel == "fsdp":  # the root unit stays gathered after a forward; the EMA updates the shards
                self.teacher.reshard()
            with phase("student_forward"):
                student_out = self.student_forward(crops, scored, hide_scored=hide_scored, global_patch_tokens=anchored)
        with phase("loss"):
            loss, stats = self._losses(student_out, teacher_out, scored, schedule, anchor_out)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()}")
        with phase("backward"):
            self.optimization.backward(loss)
        if not schedule.train_last_layer:  # DINO keeps the prototypes fixed at first, for stability
            for p in self.last_layers:
                p.grad = None
        if self.backbone_freeze is not None:
            self.backbone_freeze.drop_gradients()
        self.optimization.step(phase)
        with phase("ema"):
            self.ema.update(schedule.momentum)
        return loss.detach(), stats

    def evaluated_backbone(self) -> VisionTransformer | None:
        """The EMA teacher's backbone as a plain module, the model DINO evaluates: itself, or under FSDP a full
        copy gathered onto rank 0 (every rank must call it then; the others get None)."""
        if self.parallel != "fsdp":
            return self.teacher.backbone
        state = model_state(self.teacher)
        if not state:
            return None
        backbone = build_backbone(self.cfg, drop_path_rate=0.0)
        backbone.load_state_dict(backbone_weights(state))
        return backbone.to(self.runtime.device).eval()

    def all_patches(self, crops: list[Tensor]) -> Tensor:
        """An all-True mask over the patches of the global crops."""
        b, _, h, w = crops[0].shape
        patch = self.student.backbone.patch_size
        return torch.ones(NUM_GLOBAL_CROPS * b, (h // patch) * (w // patch), dtype=torch.bool, device=crops[0].device)

    def _losses(
        self, student: CropOutputs, teacher: CropOutputs, scored: Tensor | None, schedule: StepSchedule,
        anchor: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        dino, stats = self.dino_loss(student.cls_logits, teacher.cls_logits, schedule.teacher_temp)
        loss = self.weights["dino"] * dino
        stats["dino_loss"] = dino.detach()
        if self.ibot_loss is not None and scored is not None:
            ibot, ibot_stats = self.ibot_loss(student.patch_logits, teacher.patch_logits, scored,
                                              schedule.ibot_teacher_temp)
            loss = loss + self.weights["ibot"] * ibot
            stats |= ibot_stats | {"ibot_loss": ibot.detach()}
        if self.weights["koleo"] > 0:  # on each global view's [CLS] features separately, as DINOv2
            global_cls = student.cls_tokens[: len(teacher.cls_tokens)].chunk(NUM_GLOBAL_CROPS)
            koleo = sum(koleo_loss(view) for view in global_cls)
            loss = loss + self.weights["koleo"] * koleo
            stats["koleo_loss"] = koleo.detach()
        if anchor is not None:  # continued pretraining: stay close to the initial backbone on the global crops
            patches = anchor["x_norm_patchtokens"]
            if self.weights["gram"] > 0:
                gram = gram_loss(student.patch_tokens, patches)
                loss = loss + self.weights["gram"] * gram
                stats["gram_loss"] = gram.detach()
            if self.weights["anchor"] > 0:
                global_cls = student.cls_tokens[: len(patches)]
                anchored = feature_anchor_loss(global_cls, student.patch_tokens, anchor["x_norm_clstoken"], patches)
                loss = loss + self.weights["anchor"] * anchored
                stats["anchor_loss"] = anchored.detach()
        return loss, stats

    def state_dict(self) -> dict[str, Any]:
        """The trainer's part of a checkpoint (io.training_state adds progress, RNG states and config)."""
        state = {  # full state dicts whatever the parallelism: with FSDP every rank must call this
            "student": model_state(self.student),
            "teacher": model_state(self.teacher),
            **self.optimization.state_dict(),
            "dino_loss": self.dino_loss.state_dict(),
        }
        if self.ibot_loss is not None:
            state["ibot_loss"] = self.ibot_loss.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Restore a checkpoint; a checkpoint trained at a lower resolution has its position embeddings
        (and their optimizer moments) resized once to this model's: DINOv2's high-resolution phase."""
        resize_position_embeddings(state, self.student, self.optimization.optimizer, source)
        for name, model in (("student", self.student), ("teacher", self.teacher)):
            check_state_fits(model, state[name], f"{source} ({name})")
            load_model_state(model, state[name])
        self.optimization.load_state_dict(state)
        self.dino_loss.load_state_dict(state["dino_loss"])
        if self.ibot_loss is not None:
            if "ibot_loss" not in state:
                raise CheckpointError(f"{source}: has no iBOT loss state; it was trained without loss.ibot_weight")
            self.ibot_loss.load_state_dict(state["ibot_loss"])


def parallel_mode(cfg: Config, world: World) -> str:
    """train.parallel resolved for this world: DDP (auto) or FSDP with several processes, none with one."""
    if not world.distributed:
        return "none"
    return "ddp" if cfg.train.parallel == "auto" else cfg.train.parallel
