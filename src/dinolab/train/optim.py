"""The optimizer side of training: AdamW parameter groups (no decay on vectors, layer-wise lr decay), the
learning-rate scaling rule, and gradient clipping (DINO's per parameter, DINOv2's per module, or global);
`Optimization` puts them together for the trainers."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from dinolab.config import CLIP_MODES, OptimConfig
from dinolab.models.heads import MultiCropWrapper
from dinolab.train.parallel import full_tensor, load_optimizer_state, optimizer_state, sharded_times_plain


def param_groups(model: MultiCropWrapper, layer_decay: float = 1.0, patch_embed_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on biases and norm/scale vectors (1-d parameters), as in DINO;
    with DINOv2's layer-wise lr decay, block i of n gets lr_scale = decay**(n - i), the embeddings
    decay**(n + 1) (times `patch_embed_lr_mult` for the patch embedding) and the heads 1."""
    n_blocks = len(model.backbone.blocks)
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        apply_wd = not (p.ndim <= 1 or name.endswith(".bias"))
        scale = layer_decay ** (n_blocks + 1 - _layer_id(name, n_blocks))
        if name.startswith("backbone.patch_embed."):
            scale *= patch_embed_lr_mult
        group = groups.setdefault(
            (apply_wd, scale),
            {"params": [], "apply_wd": apply_wd, "lr_scale": scale, **({} if apply_wd else {"weight_decay": 0.0})},
        )
        group["params"].append(p)
    return list(groups.values())


def _layer_id(name: str, n_blocks: int) -> int:
    """0 for the embeddings and tokens, i + 1 for block i, n_blocks + 1 for the final norm and the heads."""
    if not name.startswith("backbone.") or name.startswith("backbone.norm."):
        return n_blocks + 1
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    return 0


def make_optimizer(model: MultiCropWrapper, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`, with the fused kernel on CPU as on CUDA (on the 2-core CPU it updates the demo's
    4.1M parameters in 1.6 ms instead of foreach's 9.3, a tenth of a training step). The lr and wd are set
    every step."""
    groups = param_groups(model, cfg.layer_decay, cfg.patch_embed_lr_mult)
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, fused=True)


def scaled_lr(lr: float, batch_size: int, rule: str) -> float:
    """The peak lr for a batch size: DINO/iBOT scale linearly from batch 256, DINOv2 by sqrt from 1024."""
    return lr * batch_size / 256 if rule == "linear" else lr * math.sqrt(batch_size / 1024)


def clip_groups(model: MultiCropWrapper, mode: str) -> list[list[nn.Parameter]]:
    """The sets of trainable parameters whose gradients are clipped together: each parameter alone (DINO,
    iBOT), each top-level part of the student, i.e. the backbone and each head (DINOv2), or all at once
    (`torch.nn.utils.clip_grad_norm_`)."""
    if mode not in CLIP_MODES:
        raise ValueError(f"unknown gradient clip mode {mode!r}: use one of {', '.join(CLIP_MODES)}")
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if mode == "parameter":
        return [[p] for _, p in trainable]
    if mode == "global":
        return [[p for _, p in trainable]]
    parts: dict[str, list[nn.Parameter]] = {}
    for name, p in trainable:
        parts.setdefault(name.split(".")[0], []).append(p)
    return list(parts.values())


@torch.no_grad()
def clip_gradients(groups: list[list[nn.Parameter]], max_norm: float) -> None:
    """Scale the gradients of each group so that their joint L2 norm is <= max_norm, in one fused pass over
    all gradients. Sharded (FSDP) gradients count with their whole parameter (norms summed over shards)."""
    members = [(i, p.grad) for i, group in enumerate(groups) for p in group if p.grad is not None]
    if not members:
        return
    grads = [grad for _, grad in members]
    norms = torch.stack([full_tensor(n) for n in torch._foreach_norm(grads)])
    index = torch.tensor([i for i, _ in members], device=norms.device)
    squares = torch.zeros(len(groups), dtype=norms.dtype, device=norms.device).index_add_(0, index, norms**2)
    scales = torch.clamp(max_norm / (squares.sqrt() + 1e-6), max=1.0)[index]
    with sharded_times_plain(grads):
        torch._foreach_mul_(grads, list(scales.unbind()))


class Optimization:
    """The way from a loss to new weights, the same for every trainer: AdamW (`make_optimizer`), the fp16 loss
    scaler (a no-op in bf16 and fp32), and gradient clipping (`clip_groups`, `optim.clip_grad`; 0 = off)."""

    def __init__(self, model: nn.Module, cfg: OptimConfig, precision: str) -> None:
        self.model = model
        self.optimizer = make_optimizer(model, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.max_norm = cfg.clip_grad
        self.clipped_together = clip_groups(model, cfg.clip_mode)

    def set_lr_and_wd(self, lr: float, weight_decay: float) -> None:
        """This iteration's values, times each group's lr_scale; weight decay only where it applies."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
            if group["apply_wd"]:
                group["weight_decay"] = weight_decay

    def backward(self, loss: torch.Tensor) -> None:
        """This step's gradients, replacing the last step's."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def step(self, phase: Callable[[str], AbstractContextManager]) -> None:
        """The end of every training step once the gradients are final: unscale (fp16), clip, AdamW step; each
        part inside `phase(name)` (profiler labels, or the benchmarks' timers)."""
        with phase("clip"):
            if self.max_norm:
                self.scaler.unscale_(self.optimizer)
                clip_gradients(self.clipped_together, self.max_norm)
        with phase("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's 'optimizer' (full, indexed by parameter position, whatever the parallelism: under
        FSDP every rank must call this) and 'scaler' entries."""
        return {"optimizer": optimizer_state(self.model, self.optimizer), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the entries `state_dict` wrote, into a plain or sharded model's optimizer."""
        load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
