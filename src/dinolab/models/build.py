"""Models from a config, and a config-free description of a built ViT: the one place that turns
`cfg.model` / `cfg.head` into modules. The trainer, the hub loader, evaluation and the benchmarks call it."""

from __future__ import annotations

import math
from typing import Any

from dinolab.config import Config
from dinolab.models.heads import DINOHead, MultiCropWrapper
from dinolab.models.resnet import RESNET_LAYERS, ResNetBackbone
from dinolab.models.vit import ARCH_SIZES, VisionTransformer


def backbone_kwargs(cfg: Config, drop_path_rate: float | None = None) -> dict[str, Any]:
    """VisionTransformer arguments of `cfg.model`, without building anything (a ViT-g config costs nothing)."""
    m = cfg.model
    if m.arch not in ARCH_SIZES:
        raise ValueError(f"unknown architecture {m.arch!r}; choose one of {', '.join(ARCH_SIZES)}")
    return {
        **ARCH_SIZES[m.arch],
        **({"depth": m.depth} if m.depth else {}),
        "img_size": m.img_size,
        "patch_size": m.patch_size,
        "in_chans": m.in_chans,
        "drop_path_rate": m.drop_path_rate if drop_path_rate is None else drop_path_rate,
        "num_register_tokens": m.num_register_tokens,
        "layerscale_init": m.layerscale_init,
        "ffn": m.ffn,
        "qkv_bias": m.qkv_bias,
        "conv_stem": m.conv_stem,
    }


def build_backbone(cfg: Config, drop_path_rate: float | None = None) -> VisionTransformer | ResNetBackbone:
    """The ViT of `cfg.model`, or for model.arch=resnet* (feature distillation's students) a torchvision ResNet."""
    m = cfg.model
    if m.arch in RESNET_LAYERS:
        return ResNetBackbone(m.arch, m.in_chans, m.resnet_stride)
    return VisionTransformer(**backbone_kwargs(cfg, drop_path_rate))


def build_model(cfg: Config, drop_path_rate: float | None = None) -> MultiCropWrapper:
    """Backbone + [CLS] head, + a separate iBOT patch head when the iBOT loss is on and heads are not shared."""
    h = cfg.head
    backbone = build_backbone(cfg, drop_path_rate)

    def head(out_dim: int) -> DINOHead:
        return DINOHead(backbone.embed_dim, out_dim, h.hidden_dim, h.bottleneck_dim, h.nlayers, h.norm_last_layer)

    separate_patch_head = cfg.loss.ibot_weight > 0 and not h.shared
    return MultiCropWrapper(
        backbone, head(h.out_dim), head(h.patch_out_dim) if separate_patch_head else None, shared_head=h.shared
    )


def build_student_teacher(cfg: Config) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student with stochastic depth, teacher without; the teacher starts as a copy of the student."""
    student = build_model(cfg)
    if not cfg.mask.enabled:  # nothing is masked: the mask token is not trained (and DDP must not wait for it)
        student.backbone.mask_token.requires_grad_(False)
    teacher = build_model(cfg, drop_path_rate=0.0)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return student, teacher


def vit_kwargs_of(model: VisionTransformer) -> dict[str, Any]:
    """The constructor arguments that rebuild `model`'s architecture (recorded in exported files, used for
    the random-init baseline)."""
    block = model.blocks[0]
    ls = getattr(block.ls1, "gamma", None)
    ffn = "swiglu" if hasattr(block.mlp, "w12") else "mlp"
    return dict(
        img_size=math.isqrt(model.pos_embed.shape[1] - 1) * model.patch_size,
        patch_size=model.patch_size,
        in_chans=model.in_chans,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=model.num_heads,
        mlp_ratio=(block.mlp.fc1.out_features / model.embed_dim) if ffn == "mlp" else 4.0,
        qkv_bias=block.attn.qkv.bias is not None,
        layerscale_init=1e-5 if ls is not None else None,
        ffn=ffn,
        num_register_tokens=model.num_register_tokens,
        interpolate_offset=model.interpolate_offset,
        interpolate_antialias=model.interpolate_antialias,
        conv_stem=model.conv_stem,
    )
