"""Feature distillation from a headless teacher (distill.teacher): the loss against hand-written references,
grid resampling, distillation into a ViT and into a ResNet through `fit`, the frozen teacher, bad input, and
the distilled backbone's reload and export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import small_vit

from dinolab import config as config_lib
from dinolab.cli import main
from dinolab.config import ConfigError
from dinolab.device import resolve
from dinolab.hub import load_backbone, save_backbone
from dinolab.io import read_checkpoint
from dinolab.losses.feature_distill import (
    FeatureDistillLoss,
    cls_distance,
    patch_similarity_kl,
    resample_grid,
    similarity_log_probs,
)
from dinolab.models.resnet import ResNetBackbone
from dinolab.train import fit
from dinolab.train.feature_distill import FeatureDistiller
from dinolab.train.schedules import Schedules

NO_LOCAL_CROPS = {"local_crops_number": 0}


def reference_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(teacher || student) between row-softmaxed patch cosine similarities, self-similarity left out,
    written with loops over images and patches."""
    total, count = torch.tensor(0.0), 0
    for s_img, t_img in zip(student, teacher, strict=True):
        s_tok, t_tok = s_img.flatten(1).T, t_img.flatten(1).T  # (N, D)
        n = len(s_tok)
        for i in range(n):
            others = [j for j in range(n) if j != i]
            s_sim = torch.stack([F.cosine_similarity(s_tok[i], s_tok[j], dim=0) for j in others]) / tau
            t_sim = torch.stack([F.cosine_similarity(t_tok[i], t_tok[j], dim=0) for j in others]) / tau
            p, q = t_sim.softmax(0), s_sim.softmax(0)
            total = total + (p * (p.log() - q.log())).sum()
            count += 1
    return total / count


def test_cls_distance_against_reference_and_zero_when_equal() -> None:
    s, t = torch.randn(5, 8), torch.randn(5, 8)
    expected = torch.stack([1 - (a @ b) / (a.norm() * b.norm()) for a, b in zip(s, t, strict=True)]).mean()
    torch.testing.assert_close(cls_distance(s, t), expected)
    assert cls_distance(t, t).abs() < 1e-6
    assert cls_distance(3 * t, t).abs() < 1e-6  # the direction counts, not the norm


def test_patch_kl_against_reference_across_widths() -> None:
    student, teacher = torch.randn(2, 5, 3, 3), torch.randn(2, 11, 3, 3)  # widths differ: relational
    torch.testing.assert_close(patch_similarity_kl(student, teacher, 0.2), reference_kl(student, teacher, 0.2))


def test_loss_is_zero_when_student_features_equal_the_teachers() -> None:
    cls, grid = torch.randn(4, 16), torch.randn(4, 16, 4, 4)
    loss, stats = FeatureDistillLoss(1.0, 1.0, 0.1)(cls, grid, cls, grid)
    assert loss.abs() < 1e-5 and stats["cls_loss"].abs() < 1e-5 and stats["patch_loss"].abs() < 1e-5
    other, _ = FeatureDistillLoss(1.0, 1.0, 0.1)(torch.randn(4, 16), torch.randn(4, 16, 4, 4), cls, grid)
    assert other > 0.1


def test_loss_weights_and_gradient_reach_the_student() -> None:
    s_cls, s_grid = torch.randn(2, 8, requires_grad=True), torch.randn(2, 8, 2, 2, requires_grad=True)
    t_cls, t_grid = torch.randn(2, 8), torch.randn(2, 8, 4, 4)
    loss, stats = FeatureDistillLoss(0.5, 2.0, 0.1)(s_cls, s_grid, t_cls, t_grid)
    torch.testing.assert_close(loss, 0.5 * stats["cls_loss"] + 2.0 * stats["patch_loss"])
    loss.backward()
    assert s_cls.grad.abs().sum() > 0 and s_grid.grad.abs().sum() > 0


def test_grid_resampling_across_patch_sizes() -> None:
    grid = torch.randn(2, 6, 4, 4)
    assert resample_grid(grid, (4, 4)) is grid
    assert resample_grid(grid, (8, 8)).shape == (2, 6, 8, 8)
    constant = torch.ones(1, 3, 2, 2) * torch.tensor([1.0, -2.0, 5.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(resample_grid(constant, (5, 3)), constant[..., :1, :1].expand(1, 3, 5, 3))
    # a ViT with 14 px patches (2x2 grid at 28 px) against one with 7 px patches (4x4): the student's grid is
    # resampled to the teacher's, and a student that is the teacher's grid, downsampled and upsampled, is close
    teacher = torch.randn(1, 6, 2, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)  # 4x4, blocky
    student = F.avg_pool2d(teacher, 2)  # 2x2
    assert patch_similarity_kl(student, teacher, 0.1) < patch_similarity_kl(torch.randn(1, 6, 2, 2), teacher, 0.1)


def test_a_grid_of_one_patch_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than 2 patches"):
        similarity_log_probs(torch.randn(1, 4, 1, 1), 0.1)


@pytest.mark.parametrize(("stride", "grid"), [(32, 1), (16, 2), (8, 4)])
def test_resnet_backbone_gives_a_pooled_feature_and_a_grid(stride: int, grid: int) -> None:
    model = ResNetBackbone("resnet18", in_chans=1, stride=stride).eval()
    x = torch.randn(2, 1, 28, 28)
    ((patches, pooled),) = model.get_intermediate_layers(x, 1, reshape=True, return_class_token=True)
    assert patches.shape == (2, 512, grid, grid) and model.patch_size == stride
    torch.testing.assert_close(pooled, model(x))
    torch.testing.assert_close(model.forward_features(x)["x_norm_patchtokens"], patches.flatten(2).transpose(1, 2))


def test_resnet_backbone_keeps_torchvisions_names() -> None:
    from torchvision.models import resnet50

    reference = resnet50(weights=None)
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(ResNetBackbone("resnet50").state_dict())  # strict: the same keys and shapes


@pytest.fixture
def teacher_file(tmp_path: Path) -> Path:
    """A released-style headless teacher: a ViT-Tiny-wide, 1-block ViT with 7 px patches, in the official DINOv2
    layout (a .pth without architecture metadata: the loader infers it, as for a released file)."""
    return save_backbone(teacher_vit(), tmp_path / "teacher_pretrain.pth", layout="dinov2")


def teacher_vit(**kwargs) -> torch.nn.Module:
    return small_vit(**{"embed_dim": 192, "num_heads": 3, "depth": 1, **kwargs})


def test_distill_into_a_vit_through_fit_and_reload_and_export(make_config, teacher_file: Path,
                                                              tmp_path: Path) -> None:
    cfg = make_config("vit", data=NO_LOCAL_CROPS, model={"patch_size": 14}, optim={"epochs": 1},
                      distill={"teacher": str(teacher_file)}, eval={"knn_every": 2, "knn_monitor_train": 20})
    result = fit(cfg, quiet=True)
    records = [line for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if "knn_top1" in line]
    assert records and "patch_loss" in records[-1] and "teacher_entropy" not in records[-1]
    x = torch.randn(2, 1, 28, 28)
    expected = result.backbone.eval()(x)
    reloaded = load_backbone(result.run_dir)  # the checkpoint's backbone is the student's
    torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=0)
    out = tmp_path / "student_pretrain.pth"  # the official DINOv2 layout, as `dinolab export` writes it
    assert main(["export", "safetensors", "--checkpoint", str(result.run_dir), "--out", str(out),
                 "--layout", "dinov2"]) == 0
    exported = torch.load(out, weights_only=True)
    assert "cls_token" in exported and not any(k.startswith(("backbone.", "cls_projection")) for k in exported)
    torch.testing.assert_close(load_backbone(out)(x), expected, rtol=0, atol=0)
    # resuming continues the run: the second epoch starts from the first's checkpoint
    cfg.optim.epochs = 2
    assert fit(cfg, quiet=True, max_iterations=1).epochs_done == 1


def test_distill_into_a_resnet18_through_fit(make_config, teacher_file: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config("resnet", data=NO_LOCAL_CROPS, optim={"epochs": 1},
                      model={"arch": "resnet18", "resnet_stride": 16}, distill={"teacher": str(teacher_file)},
                      eval={"knn_every": 4, "knn_monitor_train": 20})
    result = fit(cfg, quiet=True)
    assert isinstance(result.backbone, ResNetBackbone) and "knn_top1" in result.last_metrics
    x = torch.randn(2, 1, 28, 28)
    reloaded = load_backbone(result.run_dir)
    assert isinstance(reloaded, ResNetBackbone)
    torch.testing.assert_close(reloaded(x), result.backbone.eval()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no ViT layout"):
        save_backbone(reloaded, result.run_dir / "x.pth")
    assert main(["eval", "knn", "--checkpoint", str(result.run_dir), "--data", "fmnist", "--fmnist-dir",
                 str(cfg.data.path), "--k", "1", "--device", "cpu", "--precision", "fp32", "--quiet"]) == 0
    assert "[trained] knn: k-NN k=1 top-1" in capsys.readouterr().out
    assert main(["viz", "attention", "--checkpoint", str(result.run_dir), str(result.run_dir / "x.png")]) == 1
    assert "need a ViT" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["distill_fmnist_vit_tiny", "distill_fmnist_resnet18"])
def test_the_demo_recipes_run(recipe: str, fmnist_dir: Path, teacher_file: Path, tmp_path: Path) -> None:
    cfg = config_lib.load(recipe, [f"distill.teacher={teacher_file}", f"data.path={fmnist_dir}", "optim.batch_size=4",
                                   "data.num_workers=0", "eval.knn_every=0", "train.log_every=1",
                                   f"train.output_dir={tmp_path / 'run'}"])
    assert fit(cfg, quiet=True, max_iterations=2).last_metrics["patch_loss"] > 0


def test_ddp_on_two_processes_distills_like_one_process(make_config, teacher_file: Path) -> None:
    from test_distributed import assert_close_states, torchrun

    sections = dict(data=NO_LOCAL_CROPS, optim={"epochs": 1}, model={"drop_path_rate": 0.0},
                    distill={"teacher": str(teacher_file)})
    one, two = make_config("one", **sections), make_config("two", **sections)
    fit(one, quiet=True)
    done = torchrun(two, 2)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (read_checkpoint(cfg.train.output_dir) for cfg in (one, two))
    assert (a["iteration"], b["iteration"]) == (4, 4)
    assert_close_states(a["student"], b["student"])


def test_the_teacher_stays_frozen_and_the_student_learns(make_config, teacher_file: Path) -> None:
    cfg = make_config(data=NO_LOCAL_CROPS, distill={"teacher": str(teacher_file)}, model={"drop_path_rate": 0.0})
    distiller = FeatureDistiller(cfg, resolve("cpu", "fp32"))
    teacher_before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in distiller.student.state_dict().items()}
    crops = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    schedule = Schedules(cfg, 4).at(2)
    losses = [distiller.step(crops, schedule)[0].item() for _ in range(5)]
    assert not distiller.teacher.training and not any(p.requires_grad for p in distiller.teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in distiller.teacher.state_dict().items())
    assert any(not torch.equal(v, student_before[k]) for k, v in distiller.student.state_dict().items())
    assert losses[-1] < losses[0]


def test_bad_teachers_are_clear_errors_before_training(make_config, teacher_file: Path, tmp_path: Path) -> None:
    runtime = resolve("cpu", "fp32")

    def distiller(**distill) -> FeatureDistiller:
        return FeatureDistiller(make_config(data=NO_LOCAL_CROPS, distill=distill), runtime)

    with pytest.raises(ConfigError, match="distill.teacher: .* does not exist"):
        distiller(teacher=str(tmp_path / "missing.pth"))
    torch.save({"weights": {"x": torch.zeros(3)}}, tmp_path / "nonsense.pth")
    with pytest.raises(ConfigError, match="distill.teacher: .* not a backbone"):
        distiller(teacher=str(tmp_path / "nonsense.pth"))
    rgb = save_backbone(teacher_vit(in_chans=3), tmp_path / "rgb.pth")
    with pytest.raises(ConfigError, match="3-channel images .* model.in_chans=1"):
        distiller(teacher=str(rgb))
    with pytest.raises(ConfigError, match="distill.teacher_size=30 is not a multiple"):
        distiller(teacher=str(teacher_file), teacher_size=30)
    with pytest.raises(ConfigError, match="at least 2"):
        distiller(teacher=str(teacher_file), teacher_size=7)


def test_files_in_the_wrong_key_and_contradicting_keys(make_config, teacher_file: Path) -> None:
    dino_run = make_config("dino", optim={"epochs": 1})
    fit(dino_run, quiet=True)  # a run with DINO heads
    with pytest.raises(ConfigError, match="with DINO heads: .*distill.teacher_checkpoint"):
        FeatureDistiller(make_config(data=NO_LOCAL_CROPS, distill={"teacher": dino_run.train.output_dir}),
                         resolve("cpu", "fp32"))
    with pytest.raises(ConfigError, match="give it as distill.teacher"):
        fit(make_config("headless", distill={"teacher_checkpoint": str(teacher_file)}), quiet=True)
    with pytest.raises(ConfigError, match="exclude each other"):
        make_config(data=NO_LOCAL_CROPS, distill={"teacher": "a.pth", "teacher_checkpoint": "b.pth"})
    with pytest.raises(ConfigError, match="only be trained by feature distillation"):
        make_config(model={"arch": "resnet18"})
    with pytest.raises(ConfigError, match="data.local_crops_number"):
        make_config(distill={"teacher": "a.pth"})
