"""Continued pretraining from a released backbone (model.init, train/adapt.py): the start, the head warm-up on a
frozen backbone, the Gram and feature anchoring losses, the reference-domain k-NN, and the errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_class_folder

from dinolab import config as config_lib
from dinolab.cli import main
from dinolab.config import ConfigError
from dinolab.device import resolve
from dinolab.hub import load_backbone, save_backbone
from dinolab.io import read_metrics
from dinolab.losses.anchor import feature_anchor_loss
from dinolab.losses.gram import gram_loss
from dinolab.models.build import build_backbone
from dinolab.models.heads import DINOHead
from dinolab.train import fit
from dinolab.train.adapt import BackboneFreeze, resolve_init
from dinolab.train.monitor import reference_domain
from dinolab.train.schedules import Schedules
from dinolab.train.trainer import Trainer

CPU = resolve("cpu", "fp32")
# the "released" model: registers and LayerScale, which the adapting configs below leave at their defaults
RELEASED = {"num_register_tokens": 2, "layerscale_init": 1e-5}


@pytest.fixture
def released(make_config, tmp_path: Path) -> Path:
    """A headless backbone in the official DINOv2 layout (a .pth of tensors, no architecture recorded)."""
    backbone = build_backbone(make_config("release", model=RELEASED))
    return save_backbone(backbone, tmp_path / "tiny_pretrain.pth", layout="dinov2")


def crops(batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Two 28 px global and two 14 px local crops of one channel (the tiny config's)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, s, s, generator=g) for s in (28, 28, 14, 14)]


def test_the_architecture_comes_from_the_file_and_the_start_is_bit_identical(make_config, released: Path) -> None:
    cfg, initial = resolve_init(make_config("adapt", model={"init": str(released)}))
    assert (cfg.model.num_register_tokens, cfg.model.layerscale_init, cfg.model.depth) == (2, 1e-5, 1)
    trainer = Trainer(cfg, CPU)
    loaded = load_backbone(released).state_dict()
    for model in (trainer.teacher, trainer.student):
        state = model.backbone.state_dict()
        assert state.keys() == loaded.keys()
        assert all(torch.equal(state[k], loaded[k]) for k in loaded), "not the loaded backbone bit for bit"
    assert trainer.anchor is None  # no anchoring loss on: no frozen copy kept
    assert initial is not None and initial.heads == {}  # a release has no heads: fresh ones


def test_the_backbone_is_frozen_during_the_warm_up_and_the_heads_learn(make_config, released: Path) -> None:
    """No backbone parameter moves for freeze_backbone_iterations steps, not even by weight decay (raised here);
    the student's and the teacher's heads do; afterwards the backbone trains, with the Gram loss on."""
    cfg, _ = resolve_init(make_config(
        "warm", model={"init": str(released), "drop_path_rate": 0.0}, loss={"gram_weight": 1.0},
        optim={"freeze_backbone_iterations": 3, "weight_decay": 0.5, "weight_decay_end": 0.5, "warmup_epochs": 0,
               "freeze_last_layer_epochs": 0},
    ))
    trainer, schedules = Trainer(cfg, CPU), Schedules(cfg, iters_per_epoch=4)
    initial = {name: p.detach().clone() for name, p in trainer.student.named_parameters()}
    teacher_heads = {n: p.detach().clone() for n, p in trainer.teacher.named_parameters() if n.startswith("head.")}
    for i in range(3):
        _, stats = trainer.step(crops(seed=i), schedules.at(i))
        assert "gram_loss" not in stats  # 0 and without a gradient while frozen: skipped
    for name, p in trainer.student.named_parameters():
        moved = not torch.equal(p, initial[name])
        assert moved == (name.startswith("head.") and p.requires_grad), name
    for name, p in trainer.teacher.named_parameters():
        if name.startswith("backbone."):
            assert torch.equal(p, initial[name]), f"teacher {name} left the released backbone"
    teacher = dict(trainer.teacher.named_parameters())
    assert any(not torch.equal(teacher[n], p) for n, p in teacher_heads.items())

    _, stats = trainer.step(crops(seed=3), schedules.at(3))
    assert stats["gram_loss"] == 0  # the student's backbone (no drop path here) is still the anchor
    _, stats = trainer.step(crops(seed=4), schedules.at(3))
    assert stats["gram_loss"] > 0
    assert all(p.requires_grad for p in trainer.backbone_freeze.params)
    moved = [n for n, p in trainer.student.backbone.named_parameters() if not torch.equal(p, initial[f"backbone.{n}"])]
    assert "blocks.0.attn.qkv.weight" in moved


def test_dropping_gradients_keeps_adamw_weight_decay_off_the_frozen_backbone() -> None:
    """The multi-process way (gradients computed, then dropped) leaves the parameters untouched by AdamW."""
    backbone, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    before = [p.detach().clone() for p in backbone.parameters()]
    freeze = BackboneFreeze(backbone, by_requires_grad=False)
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=0.1, weight_decay=0.5)
    freeze.set(frozen=True)
    head(backbone(torch.randn(3, 4))).sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())
    freeze.drop_gradients()
    optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(backbone.parameters(), before, strict=True))


def gram_reference(student: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """The Gram loss written out: per image b and patch pair (i, j), the squared difference of cosines."""
    b, n, _ = student.shape
    total = student.new_zeros(())
    for k in range(b):
        for i in range(n):
            for j in range(n):
                s = torch.dot(student[k, i], student[k, j]) / (student[k, i].norm() * student[k, j].norm())
                a = torch.dot(anchor[k, i], anchor[k, j]) / (anchor[k, i].norm() * anchor[k, j].norm())
                total = total + (s - a) ** 2
    return total / (b * n * n)


def test_gram_loss_matches_a_hand_written_reference_in_value_and_gradient() -> None:
    student = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    anchor = torch.randn(2, 5, 3, dtype=torch.float64)  # another width: only the similarities are compared
    loss = gram_loss(student, anchor)
    (grad,) = torch.autograd.grad(loss, student)
    reference = gram_reference(student, anchor)
    (reference_grad,) = torch.autograd.grad(reference, student)
    torch.testing.assert_close(loss, reference.float())  # computed in fp32
    torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-6)


def test_gram_loss_is_zero_with_zero_gradient_when_the_student_is_the_anchor() -> None:
    anchor = torch.randn(3, 4, 8)
    student = (anchor * 2.5).requires_grad_(True)  # the same directions: the same Gram matrices
    loss = gram_loss(student, anchor)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert student.grad.abs().max() < 1e-5
    with pytest.raises(ValueError, match="same images and patches"):
        gram_loss(torch.randn(3, 4, 8), torch.randn(3, 5, 8))


def test_feature_anchor_loss_is_one_minus_cosine_on_cls_and_patches() -> None:
    cls, patches = torch.randn(4, 8), torch.randn(4, 5, 8)
    assert feature_anchor_loss(cls, patches, cls, patches).item() == pytest.approx(0.0, abs=1e-6)
    expected = (1 - F.cosine_similarity(cls, -cls, dim=-1)).mean() + (1 - F.cosine_similarity(patches, patches, dim=-1))
    assert feature_anchor_loss(cls, patches, -cls, patches).item() == pytest.approx(expected.mean().item(), abs=1e-6)
    assert expected.mean().item() == pytest.approx(2.0)


def test_a_file_that_is_not_a_backbone_is_a_config_error(make_config, tmp_path: Path) -> None:
    not_vit = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 7, 7)}, not_vit)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    for path, why in ((not_vit, "not a ViT backbone"), (text, "holds no ViT backbone"),
                      (tmp_path / "nope.pth", "not exist")):
        with pytest.raises(ConfigError, match=f"model.init.*{why}"):
            resolve_init(make_config("bad", model={"init": str(path)}))


@pytest.mark.parametrize(("override", "key"), [({"depth": 3}, "model.depth"), ({"patch_size": 14}, "model.patch_size"),
                                                ({"ffn": "swiglu"}, "model.ffn")])
def test_an_architecture_key_that_contradicts_the_file_is_named(make_config, released: Path, override, key) -> None:
    data = {"global_crops_size": 28, "local_crops_size": 14} if key != "model.patch_size" else {
        "global_crops_size": 28, "local_crops_number": 0}
    with pytest.raises(ConfigError, match=rf"{key}=.*the file's.*drop these keys"):
        resolve_init(make_config("contradict", model={"init": str(released), **override}, data=data))


def dino_checkpoint(path: Path, cfg: config_lib.Config, out_dim: int) -> Path:
    """A DINO-style full training checkpoint: the teacher entry holds `backbone.*` and `head.*`."""
    backbone = build_backbone(cfg)
    head = DINOHead(backbone.embed_dim, out_dim, cfg.head.hidden_dim, cfg.head.bottleneck_dim, cfg.head.nlayers)
    teacher = {f"backbone.{k}": v for k, v in backbone.state_dict().items() if k != "mask_token"}
    teacher |= {f"head.{k}": v for k, v in head.state_dict().items()}
    torch.save({"teacher": teacher, "student": {f"module.{k}": v for k, v in teacher.items()}, "epoch": 100}, path)
    return path


def test_heads_in_the_file_are_used_and_another_prototype_count_is_named(make_config, tmp_path: Path) -> None:
    cfg = make_config("dino")
    path = dino_checkpoint(tmp_path / "dino_checkpoint.pth", cfg, out_dim=cfg.head.out_dim)
    resolved, initial = resolve_init(make_config("heads", model={"init": str(path)}))
    trainer = Trainer(resolved, CPU)
    head_state = {k.removeprefix("head."): v for k, v in torch.load(path)["teacher"].items() if k.startswith("head.")}
    for model in (trainer.student, trainer.teacher):
        assert all(torch.equal(model.head.state_dict()[k], v) for k, v in head_state.items())

    other = dino_checkpoint(tmp_path / "other.pth", cfg, out_dim=32)
    with pytest.raises(ConfigError, match="head.out_dim=64, the file's has 32"):
        resolve_init(make_config("other", model={"init": str(other)}))


def test_the_guards_and_the_warm_up_need_model_init(make_config) -> None:
    for section, key in (("loss", "gram_weight"), ("loss", "anchor_weight"), ("optim", "freeze_backbone_iterations")):
        with pytest.raises(ConfigError, match=f"{section}.{key}.*model.init"):
            make_config("no_init", **{section: {key: 1}})
    with pytest.raises(ConfigError, match="eval.reference_data.*knn_every"):
        make_config("no_knn", eval={"reference_data": "fmnist"})
    with pytest.raises(ConfigError, match="model.init.*distill.teacher"):
        make_config("both", model={"init": "released.pth"}, distill={"teacher": "teacher.pth"},
                    data={"local_crops_number": 0})


def test_a_reference_folder_needs_train_and_test(make_config, tmp_path: Path) -> None:
    root = tmp_path / "reference"
    write_class_folder(root / "train", {"a": 3, "b": 3})
    cfg = make_config("ref", data={"dataset": "folder", "path": str(root / "train")},
                      eval={"knn_every": 1, "reference_data": str(root)})
    with pytest.raises(ConfigError, match="train/ and test/"):
        reference_domain(cfg)
    write_class_folder(root / "test", {"a": 2, "b": 2}, seed=1)
    train, test = reference_domain(cfg)
    assert (len(train), len(test)) == (6, 4)


def test_adapting_end_to_end_logs_the_guards_and_the_reference_domain(make_config, released: Path,
                                                                      fmnist_dir: Path) -> None:
    cfg = make_config(
        "fit", model={"init": str(released)}, loss={"gram_weight": 1.0, "anchor_weight": 0.5},
        optim={"epochs": 1, "freeze_backbone_iterations": 2},
        eval={"knn_every": 2, "knn_monitor_train": 20, "knn_monitor_test": 8, "reference_data": f"fmnist:{fmnist_dir}"},
    )
    result = fit(cfg, quiet=True)
    records = read_metrics(result.run_dir)
    assert [r["iteration"] for r in records if "knn_reference_top1" in r] == [2, 4]
    assert all("gram_loss" in r and "anchor_loss" in r for r in records if r["iteration"] > 2)
    assert not any("gram_loss" in r for r in records if r["iteration"] <= 2)
    saved = config_lib.load(result.run_dir / "config.yaml")
    assert (saved.model.num_register_tokens, saved.model.init) == (2, str(released))
    assert "reference domain" in (result.run_dir / "report.md").read_text()
    reloaded = load_backbone(result.run_dir)  # the adapted run loads like any other
    assert reloaded.num_register_tokens == 2


def test_the_demo_recipe_continues_from_an_export_of_the_dinov2_demo(fmnist_dir: Path, tmp_path: Path) -> None:
    """The colleague's workflow, shrunk: train the DINOv2 demo recipe, export its backbone headless in the official
    layout (`dinolab export`), then run dinov2_vit_tiny_fmnist_adapt from it: its model keys match the export."""
    shrink = ["model.depth=1", "head.out_dim=64", "head.patch_out_dim=64", "head.hidden_dim=32",
              "head.bottleneck_dim=16", f"data.path={fmnist_dir}", "data.num_workers=0", "optim.batch_size=8",
              "optim.epochs=1", "train.device=cpu", "train.precision=fp32", "train.log_every=1"]
    release_run = tmp_path / "release"
    fit(config_lib.load("dinov2_vit_tiny_fmnist", [*shrink, f"train.output_dir={release_run}", "eval.knn_every=0"]),
        quiet=True)
    exported = tmp_path / "dinov2_vit_tiny_fmnist_pretrain.pth"
    main(["export", "safetensors", "--checkpoint", str(release_run), "--layout", "dinov2", "--out", str(exported)])
    assert not any(k.startswith("head") for k in torch.load(exported))  # headless, like Meta's files

    cfg = config_lib.load("dinov2_vit_tiny_fmnist_adapt", [*shrink, f"train.output_dir={tmp_path / 'adapt'}",
                                                           f"model.init={exported}",
                                                           "optim.freeze_backbone_iterations=2"])
    fit(cfg, quiet=True, max_iterations=3)
    records = read_metrics(tmp_path / "adapt")
    assert [("gram_loss" in r) for r in records] == [False, False, True]
