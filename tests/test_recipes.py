"""The iBOT / DINOv2 recipes in the trainer: config-time errors, layer-wise lr decay groups, the high-resolution
phase, distillation from a frozen teacher, the collapse monitor, and the shipped recipes end to end on the
generated Fashion-MNIST files (tiny overrides keep every run to a few iterations of a 1-2 block ViT)."""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import N_TRAIN, TINY_OVERRIDES

from dinolab import config as config_lib
from dinolab.config import Config, ConfigError
from dinolab.data.masking import BlockMasking
from dinolab.device import resolve
from dinolab.io import atomic_save, read_checkpoint, read_metrics
from dinolab.losses import DINOLoss, IBOTPatchLoss, koleo_loss
from dinolab.models.build import build_model
from dinolab.train import StepSchedule, Trainer, fit
from dinolab.train.monitor import warn_on_collapse
from dinolab.train.optim import param_groups, scaled_lr
from dinolab.train.schedules import cosine_schedule

CPU = resolve("cpu", "fp32")
POS = "backbone.pos_embed"

# DINOv2 on the tiny config: masks + iBOT (separate 64-prototype patch head), Sinkhorn-Knopp, KoLeo,
# registers, LayerScale, layer-wise lr decay, patch-embed lr multiplier, sqrt lr scaling; 2 blocks
DINOV2_TINY: dict[str, dict] = {
    "model": {"depth": 2, "num_register_tokens": 2, "layerscale_init": 1e-5},
    "head": {"patch_out_dim": 64},
    "mask": {"enabled": True},
    "loss": {"ibot_weight": 1.0, "centering": "sinkhorn", "koleo_weight": 0.1},
    "optim": {"epochs": 1, "layer_decay": 0.9, "patch_embed_lr_mult": 0.2, "lr_scaling": "sqrt", "lr": 0.05},
}


def tiny(data_path: Path, output_dir: Path, *presets: dict[str, dict], **sections: dict) -> Config:
    """The conftest tiny config, with preset section dicts and then `sections` merged over it."""
    raw = copy.deepcopy(TINY_OVERRIDES)
    raw["data"]["path"] = str(data_path)
    raw["train"]["output_dir"] = str(output_dir)
    for update in (*presets, sections):
        for section, values in update.items():
            raw.setdefault(section, {}).update(values)
    return config_lib.from_dict(raw)


def recipe_overrides(data_path: Path, output_dir: Path) -> list[str]:
    """Shrink a Fashion-MNIST demo recipe to a 1-block model, 64 prototypes, batch 8, 2 local crops."""
    return [
        "model.depth=1", "head.out_dim=64", "head.patch_out_dim=64", "head.hidden_dim=32", "head.bottleneck_dim=16",
        f"data.path={data_path}", "data.num_workers=0", "data.local_crops_number=2", "optim.batch_size=8",
        "optim.epochs=1", f"train.output_dir={output_dir}", "train.device=cpu", "train.precision=fp32",
        "train.log_every=1",
    ]


def random_crops(batch: int, seed: int, global_size: int = 28, local_size: int = 14) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = (global_size, global_size, local_size, local_size)
    return [torch.randn(batch, 1, s, s, generator=g) for s in sizes]


def schedule(lr: float = 1e-3, weight_decay: float = 0.04) -> StepSchedule:
    return StepSchedule(lr=lr, weight_decay=weight_decay, momentum=0.9, teacher_temp=0.04, ibot_teacher_temp=0.05)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different[:5]}"


def assert_same_moments(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(torch.as_tensor(a[name]), torch.as_tensor(b[name])), name


# ---------------------------------------------------------------- config-time errors


CONFIG_ERRORS = [
    ("ibot_vit_tiny_fmnist", ["mask.ratio=[0.1, 1.0]"], "mask.ratio"),
    ("ibot_vit_tiny_fmnist", ["mask.ratio=[-0.1, 0.5]"], "mask.ratio"),
    ("ibot_vit_tiny_fmnist", ["mask.ratio=[0.6, 0.5]"], "mask.ratio"),
    # 4x4 patch grid: at most int(0.05 * 16) = 0 patches per image
    ("ibot_vit_tiny_fmnist", ["mask.ratio=[0.01, 0.05]"], "mask.ratio"),
    ("ibot_vit_tiny_fmnist", ["mask.probability=1.5"], "mask.probability"),
    ("ibot_vit_tiny_fmnist", ["mask.enabled=false"], "loss.ibot_weight"),  # iBOT loss without masks
    ("dino_vit_tiny_fmnist", ["mask.enabled=true"], "mask.enabled"),  # masks without the iBOT loss
    ("ibot_vit_tiny_fmnist", ["head.patch_out_dim=1024"], "head.patch_out_dim"),  # shared head, 2 sizes
    ("ibot_vit_tiny_fmnist", ["loss.centering=softmax"], "loss.centering"),
    ("dinov2_vit_tiny_fmnist", ["loss.sinkhorn_iterations=0"], "loss.sinkhorn_iterations"),
    # [CLS]: 2048 prototypes over 2 x 8 teacher outputs
    ("dinov2_vit_tiny_fmnist", ["optim.batch_size=8"], "head.out_dim=2048"),
    # patches: 2048 prototypes over as few as 64 * 16 * 0.05 * 0.1 = 5 masked patches
    ("dinov2_vit_tiny_fmnist", ["head.out_dim=256", "mask.probability=0.05"], "head.patch_out_dim=2048"),
    ("dinov2_vit_tiny_fmnist", ["optim.lr_scaling=cubic"], "optim.lr_scaling"),
    ("dinov2_vit_tiny_fmnist", ["optim.layer_decay=0"], "optim.layer_decay"),
    ("dinov2_vit_tiny_fmnist", ["optim.layer_decay=1.1"], "optim.layer_decay"),
    ("dinov2_vit_tiny_fmnist", ["optim.patch_embed_lr_mult=0"], "optim.patch_embed_lr_mult"),
    ("dinov2_vit_tiny_fmnist", ["loss.koleo_weight=-0.1"], "loss weights"),
]


@pytest.mark.parametrize(("recipe", "overrides", "key"), CONFIG_ERRORS)
def test_config_errors_name_the_key(recipe: str, overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_lib.load(recipe, overrides)
    assert key in str(info.value)
    if key.startswith("head.") and "=" in key:  # the Sinkhorn-Knopp errors name the centering and a way out
        assert "loss.centering" in str(info.value) and "optim.batch_size" in str(info.value)


def test_sinkhorn_batch_check_passes_for_the_shipped_batch_sizes() -> None:
    cfg = config_lib.load("dinov2_vit_tiny_fmnist")
    assert cfg.loss.centering == "sinkhorn" and cfg.head.out_dim == 2048 and cfg.optim.batch_size == 32
    # with EMA centering the same small batch is fine
    config_lib.load("dinov2_vit_tiny_fmnist", ["optim.batch_size=8", "loss.centering=ema"])


def test_a_mask_probability_that_masks_no_image_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mask.probability"):
        config_lib.load("ibot_vit_tiny_fmnist", ["mask.probability=0.005"])  # round(0.005 * 64) = 0


# ---------------------------------------------------------------- layer-wise lr decay


def expected_layer(name: str, n_blocks: int) -> int:
    """DINOv2's layer ids: embeddings and tokens 0, block i -> i + 1, the final norm and the heads n + 1."""
    parts = name.split(".")
    if parts[0] in ("head", "patch_head"):
        return n_blocks + 1
    assert parts[0] == "backbone", name
    if parts[1] in ("patch_embed", "cls_token", "pos_embed", "mask_token", "register_tokens"):
        return 0
    if parts[1] == "blocks":
        return int(parts[2]) + 1
    if parts[1] == "norm":
        return n_blocks + 1
    raise AssertionError(f"unexpected parameter {name}")


def test_param_groups_with_layer_decay_and_patch_embed_multiplier(fmnist_dir: Path, tmp_path: Path) -> None:
    cfg = tiny(fmnist_dir, tmp_path, DINOV2_TINY, model={"depth": 3})
    model = build_model(cfg)
    assert model.patch_head is not None and model.backbone.register_tokens is not None
    groups = param_groups(model, layer_decay=0.9, patch_embed_lr_mult=0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    seen: list[str] = []
    for group in groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.append(name)
            expected = 0.9 ** (3 + 1 - expected_layer(name, 3))
            if name.startswith("backbone.patch_embed."):
                expected *= 0.2
            assert group["lr_scale"] == pytest.approx(expected, rel=1e-12), name
    assert sorted(seen) == sorted(trainable)  # every trainable parameter in exactly one group
    scale_of = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of["head.last_layer.weight_v"] == scale_of["patch_head.mlp.0.weight"] == 1.0
    assert scale_of["backbone.norm.weight"] == 1.0
    assert scale_of["backbone.blocks.2.attn.qkv.weight"] == pytest.approx(0.9)
    assert scale_of["backbone.blocks.0.mlp.fc1.weight"] == pytest.approx(0.9**3)
    for token in ("cls_token", "pos_embed", "mask_token", "register_tokens"):
        assert scale_of[f"backbone.{token}"] == pytest.approx(0.9**4)
    assert scale_of["backbone.patch_embed.proj.weight"] == pytest.approx(0.2 * 0.9**4)

    # the weight-decay split is the one without layer decay
    plain = param_groups(model)
    wd_of = {names[id(p)]: g["apply_wd"] for g in plain for p in g["params"]}
    assert {names[id(p)]: g["apply_wd"] for g in groups for p in g["params"]} == wd_of
    for g in groups:
        assert ("weight_decay" in g and g["weight_decay"] == 0.0) is (not g["apply_wd"])
    assert all(g["lr_scale"] == 1.0 for g in plain)


def test_trainer_step_applies_the_lr_scales(fmnist_dir: Path, tmp_path: Path) -> None:
    """The optimizer's group lr is schedule.lr * lr_scale, and Adam's first update (|step| = lr for every
    weight with a non-negligible gradient) really moves each parameter at its own scaled lr."""
    cfg = tiny(fmnist_dir, tmp_path, DINOV2_TINY, model={"drop_path_rate": 0.0})
    trainer = Trainer(cfg, CPU)
    before = {n: p.detach().clone() for n, p in trainer.student.named_parameters()}
    masks = BlockMasking(4, (0.1, 0.5), 0.5)(16, torch.Generator().manual_seed(0))
    sched = schedule(lr=1e-3, weight_decay=0.0)
    loss, stats = trainer.step(random_crops(8, seed=1), sched, masks)
    assert math.isfinite(loss.item()) and {"dino_loss", "ibot_loss", "koleo_loss"} <= set(stats)

    for group in trainer.optimization.optimizer.param_groups:
        assert group["lr"] == sched.lr * group["lr_scale"]
        assert group["weight_decay"] == 0.0
    names = {id(p): n for n, p in trainer.student.named_parameters()}
    checked = set()
    for group in trainer.optimization.optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            g = p.grad.abs()  # the (clipped) gradient Adam used
            big = g > 1e-7
            if not big.any():
                continue
            step = (p.detach() - before[name]).abs()[big]
            lr = 1e-3 * 0.9 ** (2 + 1 - expected_layer(name, 2)) * (0.2 if "patch_embed" in name else 1.0)
            expected = lr * g[big] / (g[big] + 1e-8)  # Adam's first step: lr * g / (|g| + eps)
            torch.testing.assert_close(step, expected, rtol=2e-3, atol=0.0, msg=name)
            checked.add(name)
    assert len(checked) >= 20
    assert {"backbone.patch_embed.proj.weight", "backbone.mask_token", "backbone.register_tokens",
            "backbone.blocks.0.attn.qkv.weight", "backbone.blocks.1.mlp.fc2.weight", "head.mlp.0.weight",
            "patch_head.mlp.0.weight"} <= checked


def test_scaled_lr_rules() -> None:
    assert scaled_lr(5e-4, 1024, "linear") == pytest.approx(2e-3)  # DINO/iBOT: lr * batch / 256
    assert scaled_lr(5e-4, 256, "linear") == pytest.approx(5e-4)
    assert scaled_lr(2e-4, 4096, "sqrt") == pytest.approx(4e-4)  # DINOv2: lr * sqrt(batch / 1024)
    assert scaled_lr(2e-4, 1024, "sqrt") == pytest.approx(2e-4)
    assert scaled_lr(1.4e-3, 32, "sqrt") == pytest.approx(1.4e-3 * math.sqrt(32 / 1024))


# ---------------------------------------------------------------- high-resolution phase


@pytest.fixture(scope="module")
def lowres_checkpoint(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    """1 epoch of the tiny DINOv2 config at 28 px (4x4 patches)."""
    cfg = tiny(fmnist_dir, tmp_path_factory.mktemp("lowres") / "run", DINOV2_TINY)
    fit(cfg, quiet=True)
    return cfg, Path(cfg.train.output_dir) / "checkpoint.pth"


def highres_config(cfg: Config, output_dir: Path) -> Config:
    raw = cfg.to_dict()
    raw["model"]["img_size"] = raw["data"]["global_crops_size"] = 42  # 6x6 patches
    raw["optim"]["epochs"] = 2
    raw["train"]["output_dir"] = str(output_dir)
    return config_lib.from_dict(raw)


def test_high_resolution_phase_resizes_the_position_embedding_and_nothing_else(
    lowres_checkpoint: tuple[Config, Path], tmp_path: Path
) -> None:
    cfg, path = lowres_checkpoint
    saved = read_checkpoint(path)
    d = saved["student"][POS].shape[-1]
    assert saved["student"][POS].shape == (1, 17, d)
    trainer = Trainer(highres_config(cfg, tmp_path / "hr"), CPU)
    trainer.load_state_dict(read_checkpoint(path), "test checkpoint")

    for model_key, model in (("student", trainer.student), ("teacher", trainer.teacher)):
        old, new = saved[model_key], model.state_dict()
        assert new.keys() == old.keys()
        assert new[POS].shape == (1, 37, d)
        assert torch.equal(new[POS][:, :1], old[POS][:, :1])  # the [CLS] position embedding is kept
        grid = old[POS][:, 1:].reshape(1, 4, 4, d).permute(0, 3, 1, 2)
        resized = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
        torch.testing.assert_close(new[POS][:, 1:], resized.permute(0, 2, 3, 1).reshape(1, 36, d))
        different = [k for k in old if k != POS and not torch.equal(new[k], old[k])]
        assert not different, f"{model_key}: {different[:5]}"
    # the resized table is what the low-resolution model would have used on 42 px crops
    torch.testing.assert_close(
        trainer.student.backbone.pos_embed.detach(),
        _lowres_backbone(cfg, saved).interpolate_pos_encoding(42, 42).detach(),
    )

    new_opt, old_opt = trainer.optimization.optimizer.state_dict(), saved["optimizer"]
    assert new_opt["param_groups"] == old_opt["param_groups"]
    params = [p for group in trainer.optimization.optimizer.param_groups for p in group["params"]]
    pos_index = next(i for i, p in enumerate(params) if p is trainer.student.backbone.pos_embed)
    assert new_opt["state"].keys() == old_opt["state"].keys() and pos_index in old_opt["state"]
    for index, moments in old_opt["state"].items():
        if index != pos_index:
            assert_same_moments(new_opt["state"][index], moments)
    pos_new, pos_old = new_opt["state"][pos_index], old_opt["state"][pos_index]
    assert torch.equal(torch.as_tensor(pos_new["step"]), torch.as_tensor(pos_old["step"]))
    for name in ("exp_avg", "exp_avg_sq"):
        assert pos_old[name].shape == (1, 17, d) and pos_new[name].shape == (1, 37, d)
        assert torch.equal(pos_new[name][:, :1], pos_old[name][:, :1])
    assert (pos_new["exp_avg_sq"] >= 0).all()
    assert pos_new["exp_avg"].abs().sum() > 0
    assert_same_state(trainer.ibot_loss.state_dict(), saved["ibot_loss"])
    assert_same_state(trainer.dino_loss.state_dict(), saved["dino_loss"])


def _lowres_backbone(cfg: Config, saved: dict) -> torch.nn.Module:
    model = build_model(cfg)
    model.load_state_dict(saved["student"])
    return model.backbone


def test_high_resolution_phase_trains_on_from_the_checkpoint(
    lowres_checkpoint: tuple[Config, Path], tmp_path: Path
) -> None:
    cfg, path = lowres_checkpoint
    cfg_hr = highres_config(cfg, tmp_path / "hr")
    result = fit(cfg_hr, resume=path, quiet=True, max_iterations=1)
    iters = N_TRAIN // cfg.optim.batch_size
    assert result.backbone.pos_embed.shape == (1, 37, result.backbone.embed_dim)
    records = read_metrics(cfg_hr.train.output_dir)
    assert [r["iteration"] for r in records] == [iters + 1]  # continues after the checkpoint's epoch
    assert math.isfinite(records[0]["loss"]) and "ibot_loss" in records[0]


# ---------------------------------------------------------------- distillation


@pytest.fixture(scope="module")
def small_teacher(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distillation demo's teacher recipe (a ViT-Small), shrunk and trained for one tiny epoch."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    cfg = config_lib.load("dinov2_vit_small_fmnist", recipe_overrides(fmnist_dir, out))
    assert cfg.model.arch == "vit_small"
    fit(cfg, quiet=True)
    return out / "checkpoint.pth"


def distill_student(fmnist_dir: Path, tmp_path: Path, teacher: Path, **sections: dict) -> Config:
    """Tiny ViT-Tiny student, DINO + iBOT (every patch, no masks) + KoLeo, Sinkhorn-Knopp, no drop path."""
    base = {
        "model": {"drop_path_rate": 0.0},
        "head": {"patch_out_dim": 64},
        "loss": {"ibot_weight": 1.0, "centering": "sinkhorn", "koleo_weight": 0.1},
        "distill": {"teacher_checkpoint": str(teacher)},
    }
    return tiny(fmnist_dir, tmp_path / "student", base, **sections)


def test_distillation_keeps_the_teacher_frozen_and_trains_the_student(
    fmnist_dir: Path, tmp_path: Path, small_teacher: Path
) -> None:
    cfg = distill_student(fmnist_dir, tmp_path, small_teacher)
    trainer = Trainer(cfg, CPU)
    frozen = trainer.target_model
    assert frozen is not trainer.teacher and frozen is not trainer.student
    assert frozen.backbone.embed_dim == 384 and trainer.student.backbone.embed_dim == 192
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert_same_state(snapshot(frozen), read_checkpoint(small_teacher)["teacher"])  # the trained weights

    frozen_before, student_before, ema_before = snapshot(frozen), snapshot(trainer.student), snapshot(trainer.teacher)
    assert_same_state(student_before, ema_before)  # the EMA starts from the student, not from the frozen teacher

    seen_masks = []
    original_forward = trainer.ibot_loss.forward

    def recording_forward(student_logits, teacher_logits, masks, teacher_temp):
        seen_masks.append((masks.clone(), len(student_logits), len(teacher_logits)))
        return original_forward(student_logits, teacher_logits, masks, teacher_temp)

    trainer.ibot_loss.forward = recording_forward

    # the first step's loss is built from the frozen teacher's targets
    crops = random_crops(8, seed=0)
    with torch.no_grad():
        t_out = frozen(crops[:2], torch.ones(16, 16, dtype=torch.bool))
        s_out = trainer.student(crops, torch.ones(16, 16, dtype=torch.bool))
        dino, _ = DINOLoss(64, centering="sinkhorn")(s_out.cls_logits, t_out.cls_logits, 0.04)
        ibot, _ = IBOTPatchLoss(64, centering="sinkhorn")(
            s_out.patch_logits, t_out.patch_logits, torch.ones(16, 16, dtype=torch.bool), 0.05)
        koleo = sum(koleo_loss(v) for v in s_out.cls_tokens[:16].chunk(2))
        expected = dino + ibot + 0.1 * koleo
    loss, stats = trainer.step(crops, schedule())
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    for i in range(1, 4):
        loss, stats = trainer.step(random_crops(8, seed=i), schedule())
        assert math.isfinite(loss.item())
    assert {"dino_loss", "ibot_loss", "koleo_loss", "ibot_teacher_entropy"} <= set(stats)

    # without masking the iBOT loss covers every patch of both global crops, and the student saw them whole
    assert len(seen_masks) == 4
    for masks, n_student, n_teacher in seen_masks:
        assert masks.shape == (16, 16) and masks.all()
        assert n_student == n_teacher == 16 * 16

    assert_same_state(snapshot(frozen), frozen_before)  # bit-identical after training steps
    assert all(p.grad is None for p in frozen.parameters())
    changed = [k for k, v in snapshot(trainer.student).items() if not torch.equal(v, student_before[k])]
    assert "backbone.blocks.0.attn.qkv.weight" in changed and "patch_head.mlp.0.weight" in changed
    ema_changed = [k for k, v in snapshot(trainer.teacher).items() if not torch.equal(v, ema_before[k])]
    assert "backbone.blocks.0.attn.qkv.weight" in ema_changed
    assert not torch.equal(trainer.teacher.state_dict()["backbone.blocks.0.attn.qkv.weight"],
                           trainer.student.state_dict()["backbone.blocks.0.attn.qkv.weight"])


def save_teacher(path: Path, cfg: Config) -> Path:
    atomic_save({"teacher": build_model(cfg, drop_path_rate=0.0).state_dict(), "config": cfg.to_dict()}, path)
    return path


IBOT_ON = {"mask": {"enabled": True}, "loss": {"ibot_weight": 1.0}, "head": {"patch_out_dim": 64}}


@pytest.mark.parametrize(
    ("teacher_sections", "key"),
    [
        ({**IBOT_ON, "model": {"patch_size": 14}, "data": {"local_crops_size": 14}}, "model.patch_size"),
        ({**IBOT_ON, "head": {"out_dim": 32, "patch_out_dim": 64}}, "head.out_dim"),
        ({**IBOT_ON, "head": {"patch_out_dim": 32}}, "head.patch_out_dim"),
        ({}, "loss.ibot_weight"),  # a DINO teacher has no iBOT patch head
        ({**IBOT_ON, "model": {"in_chans": 3}, "data": {"mean": [0.3] * 3, "std": [0.3] * 3}}, "model.in_chans"),
    ],
)
def test_a_teacher_that_does_not_fit_is_a_config_error(
    fmnist_dir: Path, tmp_path: Path, teacher_sections: dict, key: str
) -> None:
    teacher_cfg = tiny(fmnist_dir, tmp_path / "teacher", teacher_sections)
    path = save_teacher(tmp_path / "teacher.pth", teacher_cfg)
    with pytest.raises(ConfigError) as info:
        Trainer(distill_student(fmnist_dir, tmp_path, path), CPU)
    assert key in str(info.value) and str(path) in str(info.value)


def test_a_fitting_teacher_of_another_width_and_depth_is_accepted(fmnist_dir: Path, tmp_path: Path) -> None:
    teacher_cfg = tiny(fmnist_dir, tmp_path / "teacher", IBOT_ON, model={"arch": "vit_small", "depth": 2})
    path = save_teacher(tmp_path / "teacher.pth", teacher_cfg)
    trainer = Trainer(distill_student(fmnist_dir, tmp_path, path), CPU)
    assert len(trainer.target_model.backbone.blocks) == 2 and len(trainer.student.backbone.blocks) == 1


def test_a_missing_or_foreign_teacher_file_is_a_config_error(fmnist_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="distill.teacher_checkpoint"):
        Trainer(distill_student(fmnist_dir, tmp_path, tmp_path / "nope.pth"), CPU)
    atomic_save({"model": {"w": torch.zeros(2)}}, tmp_path / "foreign.pth")
    with pytest.raises(ConfigError, match="distill.teacher_checkpoint"):
        Trainer(distill_student(fmnist_dir, tmp_path, tmp_path / "foreign.pth"), CPU)


# ---------------------------------------------------------------- shipped recipes


def test_every_shipped_recipe_loads_and_validates() -> None:
    recipes = config_lib.available_recipes()
    assert {"ibot_vit_tiny_fmnist", "dinov2_vit_tiny_fmnist", "dinov2_distill_fmnist", "ibot_vits16_imagenet",
            "dinov2_vits14_lvd", "dinov2_vitl14_lvd"} <= set(recipes)
    for name in recipes:
        cfg = config_lib.load(name)
        config_lib.validate(cfg)
        if name.startswith("ibot_"):
            assert cfg.loss.ibot_weight > 0 and cfg.mask.enabled
            assert (cfg.mask.ratio, cfg.mask.probability) == ((0.1, 0.5), 0.5)
        if name.startswith("dinov2_"):
            assert cfg.loss.centering == "sinkhorn" and cfg.loss.sinkhorn_iterations == 3
            assert cfg.loss.koleo_weight == pytest.approx(0.1) and cfg.loss.ibot_weight > 0
            assert cfg.optim.lr_scaling == "sqrt" and cfg.optim.patch_embed_lr_mult == pytest.approx(0.2)
            assert cfg.model.layerscale_init == pytest.approx(1e-5)
            assert cfg.mask.enabled or cfg.distill.teacher_checkpoint  # masks, or distillation over all patches
    ibot = config_lib.load("ibot_vits16_imagenet")
    assert (ibot.model.patch_size, ibot.head.out_dim, ibot.head.shared) == (16, 8192, True)
    for name in ("dinov2_vits14_lvd", "dinov2_vitl14_lvd"):
        assert config_lib.load(name).model.patch_size == 14


def check_metrics(run_dir: Path, expected: set[str], absent: set[str], n: int) -> list[dict]:
    records = read_metrics(run_dir)
    assert [r["iteration"] for r in records] == list(range(1, n + 1))
    for r in records:
        assert expected <= set(r) and not absent & set(r)
        assert all(math.isfinite(r[k]) for k in expected)
    return records


@pytest.mark.parametrize(
    ("recipe", "expected", "absent"),
    [
        ("ibot_vit_tiny_fmnist", {"ibot_loss", "ibot_teacher_entropy", "ibot_kl", "ibot_teacher_temp"},
         {"koleo_loss"}),
        ("dinov2_vit_tiny_fmnist", {"ibot_loss", "ibot_teacher_entropy", "koleo_loss"}, set()),
    ],
)
def test_demo_recipes_run_end_to_end(fmnist_dir: Path, tmp_path: Path, recipe: str, expected: set, absent: set) -> None:
    cfg = config_lib.load(recipe, recipe_overrides(fmnist_dir, tmp_path / "run"))
    result = fit(cfg, quiet=True, max_iterations=2)
    base = {"loss", "lr", "teacher_entropy", "kl", "dino_loss"}
    records = check_metrics(tmp_path / "run", base | expected, absent, n=2)
    assert math.isfinite(result.last_metrics["loss"])
    o = cfg.optim
    iters = N_TRAIN // o.batch_size
    lrs = cosine_schedule(scaled_lr(o.lr, o.batch_size, o.lr_scaling), o.min_lr, o.epochs, iters, o.warmup_epochs)
    np.testing.assert_allclose([r["lr"] for r in records], lrs[:2], rtol=1e-6)
    for r in records:
        assert 0 <= r["ibot_teacher_entropy"] <= math.log(cfg.head.patch_out_dim) + 1e-4


def test_distillation_demo_recipe_runs_and_evaluates_the_students_ema(
    fmnist_dir: Path, tmp_path: Path, small_teacher: Path
) -> None:
    overrides = recipe_overrides(fmnist_dir, tmp_path / "run") + [f"distill.teacher_checkpoint={small_teacher}"]
    cfg = config_lib.load("dinov2_distill_fmnist", overrides)
    assert not cfg.mask.enabled
    result = fit(cfg, quiet=True, max_iterations=2)
    check_metrics(tmp_path / "run", {"ibot_loss", "koleo_loss", "ibot_teacher_entropy", "dino_loss"}, set(), n=2)
    assert result.backbone.embed_dim == 192  # the ViT-Tiny student's EMA, not the ViT-Small teacher


def test_ibot_recipe_resume_is_bit_identical_to_an_uninterrupted_run(fmnist_dir: Path, tmp_path: Path) -> None:
    def cfg(name: str) -> Config:
        return config_lib.load("ibot_vit_tiny_fmnist", recipe_overrides(fmnist_dir, tmp_path / name) + [
            "optim.epochs=2", "optim.warmup_epochs=0.5", "optim.freeze_last_layer_epochs=0.5"])

    cfg_a, cfg_b = cfg("A"), cfg("B")
    assert cfg_a.model.drop_path_rate > 0 and cfg_a.mask.enabled
    iters = N_TRAIN // cfg_a.optim.batch_size
    fit(cfg_a, quiet=True)
    assert fit(cfg_b, quiet=True, max_iterations=iters).epochs_done == 1
    assert fit(cfg_b, resume=True, quiet=True).epochs_done == 2

    a, b = (read_checkpoint(Path(c.train.output_dir) / "checkpoint.pth") for c in (cfg_a, cfg_b))
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"]) == (2, 2 * iters)
    assert_same_state(a["student"], b["student"])
    assert_same_state(a["teacher"], b["teacher"])
    assert_same_state(a["dino_loss"], b["dino_loss"])
    assert_same_state(a["ibot_loss"], b["ibot_loss"])
    assert a["ibot_loss"]["center"].abs().sum() > 0  # the iBOT center moved
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k in a["optimizer"]["state"]:
        assert_same_moments(a["optimizer"]["state"][k], b["optimizer"]["state"][k])
    def logged(c: Config) -> list[tuple]:
        return [(r["iteration"], r["loss"], r["ibot_loss"]) for r in read_metrics(c.train.output_dir)]

    assert logged(cfg_a) == logged(cfg_b)  # step for step, before and after the resume
    assert len(logged(cfg_a)) == 2 * iters
    assert json.loads((Path(cfg_b.train.output_dir) / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2.0


def test_masking_with_local_crops_as_large_as_the_global_ones(fmnist_dir: Path, tmp_path: Path) -> None:
    try:
        cfg = tiny(fmnist_dir, tmp_path, DINOV2_TINY, data={"local_crops_size": 28})
    except ConfigError as err:  # refusing the combination at config time would be fine too
        assert "data.local_crops_size" in str(err)
        return
    trainer = Trainer(cfg, CPU)
    masks = BlockMasking(4, (0.1, 0.5), 0.5)(16, torch.Generator().manual_seed(0))
    loss, stats = trainer.step(random_crops(8, seed=0, local_size=28), schedule(), masks)
    assert math.isfinite(loss.item()) and "ibot_loss" in stats


# ---------------------------------------------------------------- collapse monitor


def test_collapse_monitor_warns_for_cls_and_patch_targets(
    fmnist_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny(fmnist_dir, tmp_path, DINOV2_TINY, head={"out_dim": 64, "patch_out_dim": 16})
    healthy = {"teacher_entropy": 0.5 * math.log(64), "ibot_teacher_entropy": 0.5 * math.log(16)}
    cases = [
        (healthy, []),
        ({**healthy, "teacher_entropy": 1e-4}, [("[CLS]", "near 0")]),
        ({**healthy, "teacher_entropy": math.log(64)}, [("[CLS]", "uniform")]),
        ({**healthy, "ibot_teacher_entropy": 0.0}, [("iBOT", "near 0")]),
        # log 16 is uniform for the 16 patch prototypes (it is not for the 64 [CLS] ones): each loss its own K
        ({**healthy, "ibot_teacher_entropy": math.log(16)}, [("iBOT", "uniform")]),
        ({"teacher_entropy": 0.0, "ibot_teacher_entropy": math.log(16)}, [("[CLS]", "near 0"), ("iBOT", "uniform")]),
        ({"teacher_entropy": math.log(16)}, []),  # DINO-only metrics: no iBOT entry, no iBOT warning
        # sharp targets that differ between images (the long demo recipe's late epochs) are not collapse
        ({**healthy, "teacher_entropy": 0.03, "teacher_batch_entropy": 3.5}, []),
        ({**healthy, "teacher_entropy": 0.03, "teacher_batch_entropy": 0.01}, [("[CLS]", "near 0")]),
        ({**healthy, "ibot_teacher_entropy": 0.0, "ibot_teacher_batch_entropy": 2.0}, []),
    ]
    for metrics, expected in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dinolab.train.monitor"):
            warn_on_collapse(metrics, cfg)
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(messages) == len(expected), (metrics, messages)
        for message, (which, what) in zip(messages, expected, strict=True):
            assert which in message and what in message
            assert "remedies" in message.lower()


def test_knn_monitor_logs_top1_every_knn_every_iterations(make_config) -> None:
    """eval.knn_every adds a metrics line with knn_top1 at multiples of it (and at the epoch's end), even
    when they fall between the log_every lines; the run's weights are the same as without the monitor."""
    cfg = make_config("knn", optim={"epochs": 1}, train={"log_every": 100},
                      eval={"knn_every": 2, "knn_monitor_train": 20, "knn_monitor_test": 8})
    plain = make_config("plain", optim={"epochs": 1}, train={"log_every": 100})
    with_knn, without = fit(cfg, quiet=True), fit(plain, quiet=True)
    records = read_metrics(cfg.train.output_dir)
    iters = N_TRAIN // cfg.optim.batch_size
    assert [r["iteration"] for r in records if "knn_top1" in r] == sorted({*range(2, iters + 1, 2), iters})
    assert all(0.0 <= r["knn_top1"] <= 100.0 for r in records if "knn_top1" in r)
    for a, b in zip(with_knn.backbone.state_dict().values(), without.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the monitor uses no randomness and does not touch the models
