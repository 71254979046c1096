"""Training: schedules, EMA teacher, gradient clipping, parameter groups, and `fit` end to end on a tiny
config: run outputs, exact resume, worker-independent determinism, non-finite loss handling."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import N_TRAIN, small_vit
from torch import nn

from dinolab import config as config_lib
from dinolab.io import read_checkpoint, read_metrics
from dinolab.losses.dino import DINOLoss
from dinolab.models import DINOHead, MultiCropWrapper
from dinolab.models.build import build_student_teacher
from dinolab.train import NonFiniteLossError, fit
from dinolab.train.ema import EMATeacher
from dinolab.train.monitor import collapse_warning
from dinolab.train.optim import clip_gradients, clip_groups, param_groups
from dinolab.train.schedules import Schedules, cosine_schedule, teacher_temp_schedule

METRIC_KEYS = {"loss", "lr", "wd", "momentum", "teacher_temp", "teacher_entropy", "kl", "img_per_s"}

# ---------------------------------------------------------------- schedules


def test_cosine_schedule_with_warmup() -> None:
    s = cosine_schedule(1.0, 0.1, epochs=3, iters_per_epoch=10, warmup_epochs=1, warmup_start=0.0)
    assert len(s) == 30
    assert s[0] == 0.0
    np.testing.assert_allclose(s[:10], np.arange(10) / 10)  # linear, reaching base right after warm-up
    assert s[10] == pytest.approx(1.0)
    assert (np.diff(s[10:]) < 0).all()  # cosine decay
    assert s[-1] == pytest.approx(0.1, abs=0.01)
    assert s.min() >= 0.0 and s[10:].min() > 0.1


def test_cosine_schedule_without_warmup_and_constant() -> None:
    s = cosine_schedule(0.04, 0.4, epochs=2, iters_per_epoch=5)
    assert len(s) == 10
    assert s[0] == pytest.approx(0.04)
    assert (np.diff(s) > 0).all()  # increasing towards a larger final value (weight decay)
    assert s[-1] == pytest.approx(0.4, abs=0.02)
    mid = 0.04 + 0.5 * (0.4 - 0.04) * (1 + math.cos(math.pi * 5 / 10))
    assert s[5] == pytest.approx(mid)
    np.testing.assert_allclose(cosine_schedule(0.5, 0.5, 3, 4), np.full(12, 0.5))


def test_cosine_schedule_fractional_warmup() -> None:
    s = cosine_schedule(2.0, 0.0, epochs=1, iters_per_epoch=10, warmup_epochs=0.5, warmup_start=1.0)
    np.testing.assert_allclose(s[:5], [1.0, 1.2, 1.4, 1.6, 1.8])
    assert s[5] == pytest.approx(2.0)
    assert len(s) == 10


def test_teacher_temp_schedule() -> None:
    t = teacher_temp_schedule(0.04, 0.07, warmup_epochs=30, epochs=100)
    assert len(t) == 100
    assert t[0] == pytest.approx(0.04) and t[29] == pytest.approx(0.07)
    np.testing.assert_allclose(t[:30], np.linspace(0.04, 0.07, 30))
    assert (t[30:] == 0.07).all()
    np.testing.assert_allclose(teacher_temp_schedule(0.04, 0.07, 0, 5), np.full(5, 0.07))
    short = teacher_temp_schedule(0.04, 0.07, warmup_epochs=10, epochs=4)
    assert len(short) == 4 and short[-1] < 0.07


def test_teacher_temp_warmup_per_iteration() -> None:
    """Per iteration, a warm-up may last a fraction of an epoch; with one iteration per epoch it is DINO's schedule."""
    t = teacher_temp_schedule(0.04, 0.07, warmup_epochs=0.5, epochs=2, iters_per_epoch=10)
    assert len(t) == 20
    np.testing.assert_allclose(t[:5], np.linspace(0.04, 0.07, 5))
    assert (t[5:] == 0.07).all()
    np.testing.assert_allclose(
        teacher_temp_schedule(0.04, 0.07, 3, epochs=5, iters_per_epoch=1), teacher_temp_schedule(0.04, 0.07, 3, 5)
    )
    loss = {"warmup_teacher_temp": 0.04, "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 0.5}
    optim = {"epochs": 2, "warmup_epochs": 0}
    schedules = Schedules(config_lib.from_dict({"loss": loss, "optim": optim}), iters_per_epoch=10)
    assert [round(schedules.at(i).teacher_temp, 4) for i in (0, 2, 4, 19)] == [0.04, 0.055, 0.07, 0.07]


# ---------------------------------------------------------------- EMA teacher, clipping, parameter groups


def tiny_pair() -> tuple[MultiCropWrapper, MultiCropWrapper]:
    student = MultiCropWrapper(small_vit(), DINOHead(32, 16, 8, 8))
    teacher = MultiCropWrapper(small_vit(), DINOHead(32, 16, 8, 8))
    return student, teacher


@pytest.mark.parametrize("m", [0.0, 0.5, 0.996, 1.0])
def test_ema_update(m: float) -> None:
    student, teacher = tiny_pair()
    before_t = {k: v.clone() for k, v in teacher.named_parameters()}
    before_s = {k: v.clone() for k, v in student.named_parameters()}
    ema = EMATeacher(teacher, student)
    assert not any(p.requires_grad for p in teacher.parameters())
    ema.update(m)
    for name, p in teacher.named_parameters():
        expected = m * before_t[name] + (1 - m) * before_s[name]
        torch.testing.assert_close(p, expected, atol=1e-7, rtol=1e-6)
    for name, p in student.named_parameters():
        assert torch.equal(p, before_s[name])  # the student is untouched
    if m == 1.0:
        assert all(torch.equal(p, before_t[k]) for k, p in teacher.named_parameters())


def test_ema_rejects_mismatched_models() -> None:
    with pytest.raises(ValueError, match="absent from the student"):
        EMATeacher(small_vit(depth=3), small_vit(depth=2))


def test_clip_gradients_per_parameter() -> None:
    params = [nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(3, 3)), nn.Parameter(torch.zeros(2)),
              nn.Parameter(torch.zeros(5))]
    grads = [torch.full((4,), 5.0), torch.randn(3, 3) * 10, torch.tensor([0.3, 0.4]), None]
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.clone()
    clip_gradients([[p] for p in params], max_norm=1.0)
    for p, g in zip(params[:2], grads[:2], strict=True):
        assert p.grad.norm().item() == pytest.approx(1.0, abs=1e-5)  # clipped to the max, per parameter
        torch.testing.assert_close(p.grad / p.grad.norm(), g / g.norm())  # direction kept
    assert torch.equal(params[2].grad, grads[2])  # norm 0.5 < 1: untouched
    assert params[3].grad is None
    clip_gradients([[nn.Parameter(torch.zeros(1))]], 1.0)  # no gradients at all: a no-op


@pytest.mark.parametrize("mode", ["module", "global"])
def test_clip_gradients_by_module_or_globally_matches_torch(mode: str) -> None:
    """DINOv2 clips the backbone and each head by its own global norm; `global` is one norm over everything.
    Both equal torch.nn.utils.clip_grad_norm_ applied to the same sets."""
    model = MultiCropWrapper(small_vit(), DINOHead(32, 16, 8, 8, norm_last_layer=True))
    model([torch.randn(2, 1, 28, 28)]).cls_logits.square().sum().backward()
    reference = copy.deepcopy(model)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.clone()
    groups = clip_groups(model, mode)
    assert len(groups) == (2 if mode == "module" else 1)
    clip_gradients(groups, max_norm=0.05)
    parts = [reference.backbone, reference.head] if mode == "module" else [reference]
    for part in parts:
        torch.nn.utils.clip_grad_norm_([p for p in part.parameters() if p.grad is not None], 0.05)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=name)
    with pytest.raises(ValueError, match="use one of parameter, module, global"):
        clip_groups(model, "layer")


def test_param_groups_put_biases_and_vectors_in_no_decay() -> None:
    model = MultiCropWrapper(small_vit(layerscale_init=0.1), DINOHead(32, 16, 8, 8, norm_last_layer=True))
    groups = param_groups(model)
    assert [g["apply_wd"] for g in groups] == [True, False]
    assert groups[1]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert not decay & no_decay
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable
    assert "head.last_layer.weight_g" not in trainable | decay | no_decay  # frozen norm: not optimized at all
    assert all(n.endswith(".bias") or dict(model.named_parameters())[n].ndim <= 1 for n in no_decay)
    assert {"backbone.blocks.0.norm1.weight", "backbone.blocks.0.attn.qkv.bias", "backbone.blocks.0.ls1.gamma",
            "backbone.norm.weight", "head.mlp.0.bias"} <= no_decay
    assert {"backbone.blocks.0.attn.qkv.weight", "backbone.patch_embed.proj.weight", "head.mlp.0.weight",
            "head.last_layer.weight_v", "backbone.pos_embed", "backbone.cls_token"} <= decay


def test_collapse_warning() -> None:
    k = 1000
    assert collapse_warning(0.001, k) is not None and "one prototype" in collapse_warning(0.001, k)
    assert collapse_warning(math.log(k), k) is not None and "uniform" in collapse_warning(math.log(k), k)
    assert collapse_warning(0.5 * math.log(k), k) is None
    # per-image entropy near 0 is collapse only when the batch's mean target is one prototype too
    assert "one prototype" in collapse_warning(0.001, k, batch_entropy=0.01)
    assert collapse_warning(0.001, k, batch_entropy=math.log(40)) is None  # sharp targets that differ: healthy
    # measured (docs/small_data.md, fifteenth round): teacher T 0.02's early collapse vs the long recipe's late epochs
    assert collapse_warning(0.001, k, batch_entropy=0.77) is not None
    assert collapse_warning(0.001, k, batch_entropy=2.66) is None


# ---------------------------------------------------------------- fit


def checkpoint_of(run_dir: Path) -> dict:
    return read_checkpoint(Path(run_dir) / "checkpoint.pth")


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different[:5]}"


def assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][k][name])), (k, name)


def losses(run_dir: Path) -> dict[int, float]:
    return {r["iteration"]: r["loss"] for r in read_metrics(run_dir)}


def test_fit_writes_the_run_outputs(trained_run: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pth", "checkpoint_0001.pth", "report.md",
                 "training_curves.png"):
        assert (trained_run / name).is_file(), name
    events = list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100

    cfg = config_lib.load(trained_run / "config.yaml")
    assert cfg.train.output_dir == str(trained_run)
    assert cfg.head.out_dim == 64

    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    iters = N_TRAIN // cfg.optim.batch_size
    assert [r["iteration"] for r in records] == list(range(1, iters + 1))  # log_every=1
    for r in records:
        assert set(r) >= METRIC_KEYS
        assert all(math.isfinite(r[k]) for k in METRIC_KEYS)
        assert 0 <= r["teacher_entropy"] <= math.log(cfg.head.out_dim) + 1e-5
        assert r["kl"] >= -1e-4
        assert r["img_per_s"] > 0
    lr_peak = cfg.optim.lr * cfg.optim.batch_size / 256
    expected_lr = cosine_schedule(lr_peak, cfg.optim.min_lr, cfg.optim.epochs, iters, cfg.optim.warmup_epochs)
    np.testing.assert_allclose([r["lr"] for r in records], expected_lr, rtol=1e-6)
    o = cfg.optim
    expected_wd = cosine_schedule(o.weight_decay, o.weight_decay_end, o.epochs, iters)
    expected_m = cosine_schedule(o.momentum_teacher, o.momentum_teacher_end, o.epochs, iters)
    np.testing.assert_allclose([r["wd"] for r in records], expected_wd, rtol=1e-6)
    np.testing.assert_allclose([r["momentum"] for r in records], expected_m, rtol=1e-6)
    assert records[0]["teacher_temp"] == pytest.approx(cfg.loss.warmup_teacher_temp)

    assert (trained_run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (trained_run / "report.md").read_text()
    assert "training_curves.png" in report and "loss" in report and "vit_tiny" in report

    state = checkpoint_of(trained_run)
    assert state["epoch"] == 1 and state["iteration"] == iters
    assert {"student", "teacher", "optimizer", "dino_loss", "scaler", "rng", "config"} <= set(state)
    assert config_lib.from_dict(state["config"]) == cfg


def test_fit_result_and_training_changes_the_weights(trained_run: Path) -> None:
    cfg = config_lib.load(trained_run / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    initial, _ = build_student_teacher(cfg)  # fit builds the models right after seeding
    state = checkpoint_of(trained_run)
    changed = [k for k, v in initial.state_dict().items() if not torch.equal(v, state["student"][k])]
    assert "backbone.blocks.0.attn.qkv.weight" in changed
    assert not torch.equal(state["teacher"]["backbone.pos_embed"], state["student"]["backbone.pos_embed"])
    assert state["dino_loss"]["center"].abs().sum() > 0


def check_resume_is_bit_identical(make_config) -> None:
    cfg_a = make_config("A")
    cfg_b = make_config("B")
    assert cfg_a.model.drop_path_rate > 0  # stochastic depth draws from the global RNG: resume must restore it
    iters = N_TRAIN // cfg_a.optim.batch_size

    result_a = fit(cfg_a, quiet=True)
    assert result_a.epochs_done == 2

    first = fit(cfg_b, quiet=True, max_iterations=iters)
    assert first.epochs_done == 1
    assert sorted(p.name for p in Path(cfg_b.train.output_dir).glob("checkpoint*.pth")) == [
        "checkpoint.pth", "checkpoint_0001.pth"]
    second = fit(cfg_b, resume=True, quiet=True)
    assert second.epochs_done == 2

    a, b = checkpoint_of(cfg_a.train.output_dir), checkpoint_of(cfg_b.train.output_dir)
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"]) == (2, 2 * iters)
    assert_same_state(a["student"], b["student"])
    assert_same_state(a["teacher"], b["teacher"])
    assert torch.equal(a["dino_loss"]["center"], b["dino_loss"]["center"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert_same_state(result_a.backbone.state_dict(), second.backbone.state_dict())
    # the logged losses agree step for step, before and after the resume
    assert losses(cfg_a.train.output_dir) == losses(cfg_b.train.output_dir)
    assert len(losses(cfg_a.train.output_dir)) == 2 * iters
    # teacher temperature: linear warm-up over epoch 1 (warmup_teacher_temp_epochs=1), final value in epoch 2
    temps = {r["iteration"]: r["teacher_temp"] for r in read_metrics(cfg_b.train.output_dir)}
    warmup = np.linspace(cfg_a.loss.warmup_teacher_temp, cfg_a.loss.teacher_temp, iters)
    np.testing.assert_allclose([temps[i] for i in range(1, iters + 1)], warmup)
    assert {temps[i] for i in range(iters + 1, 2 * iters + 1)} == {cfg_a.loss.teacher_temp}


def test_resume_is_bit_identical_to_an_uninterrupted_run(make_config) -> None:
    """2 epochs in one go == 1 epoch, stop, resume for the 2nd: identical student, teacher, center, optimizer."""
    check_resume_is_bit_identical(make_config)


def test_resume_end_to_end_without_work_arounds(make_config) -> None:
    check_resume_is_bit_identical(make_config)


def test_checkpoints_written_by_fit_load_weights_only(make_config) -> None:
    cfg = make_config("numpy_scalars", optim={"epochs": 1})
    fit(cfg, quiet=True)
    state = read_checkpoint(Path(cfg.train.output_dir) / "checkpoint.pth")
    assert type(state["optimizer"]["param_groups"][0]["lr"]) is float


def test_resume_after_a_crash_in_the_middle_of_an_epoch(make_config) -> None:
    """Stopped part-way through epoch 2, the run restarts epoch 2 from the epoch-1 checkpoint and ends
    exactly where an uninterrupted run ends."""
    cfg_a, cfg_c = make_config("A"), make_config("C")
    iters = N_TRAIN // cfg_a.optim.batch_size
    fit(cfg_a, quiet=True)
    fit(cfg_c, quiet=True, max_iterations=iters + 2)
    assert checkpoint_of(cfg_c.train.output_dir)["epoch"] == 1  # no checkpoint for the partial epoch
    fit(cfg_c, quiet=True)  # resume=True is the default
    a, c = checkpoint_of(cfg_a.train.output_dir), checkpoint_of(cfg_c.train.output_dir)
    assert_same_state(a["student"], c["student"])
    assert_same_state(a["teacher"], c["teacher"])
    assert torch.equal(a["dino_loss"]["center"], c["dino_loss"]["center"])
    # the re-run iterations of epoch 2 replace the crashed run's lines in metrics.jsonl
    logged = [r["iteration"] for r in read_metrics(cfg_c.train.output_dir)]
    assert logged == [r["iteration"] for r in read_metrics(cfg_a.train.output_dir)]


def test_resuming_a_finished_run_changes_nothing(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    cfg = config_lib.load(run / "config.yaml", [f"train.output_dir={run}"])
    before = checkpoint_of(run)
    result = fit(cfg, quiet=True)
    assert result.epochs_done == cfg.optim.epochs
    assert_same_state(before["teacher"], checkpoint_of(run)["teacher"])
    backbone = {k[len("backbone."):]: v for k, v in before["teacher"].items() if k.startswith("backbone.")}
    assert_same_state(backbone, result.backbone.state_dict())


def test_explicit_resume_path_must_exist(make_config, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        fit(make_config("R"), resume=tmp_path / "missing.pth", quiet=True)


def test_data_loader_workers_do_not_change_the_result(trained_run: Path, make_config) -> None:
    """trained_run is the same 1-epoch config with num_workers=0."""
    cfg = make_config("workers", optim={"epochs": 1}, data={"num_workers": 1})
    fit(cfg, quiet=True)
    a, b = checkpoint_of(trained_run), checkpoint_of(cfg.train.output_dir)
    assert_same_state(a["student"], b["student"])
    assert_same_state(a["teacher"], b["teacher"])
    assert losses(trained_run) == losses(cfg.train.output_dir)


@pytest.mark.parametrize(("freeze", "frozen"), [(1.0, True), (0.0, False)])
def test_last_layer_frozen_for_freeze_last_layer_epochs(
    make_config, freeze: float, frozen: bool
) -> None:
    optim = {"epochs": 1, "warmup_epochs": 0.0, "freeze_last_layer_epochs": freeze}
    cfg = make_config(f"freeze{freeze}", optim=optim)
    torch.manual_seed(cfg.train.seed)
    initial, _ = build_student_teacher(cfg)
    fit(cfg, quiet=True)
    state = checkpoint_of(cfg.train.output_dir)
    key = "head.last_layer.weight_v"
    assert torch.equal(state["student"][key], initial.state_dict()[key]) is frozen
    assert torch.equal(state["teacher"][key], initial.state_dict()[key]) is frozen
    # the rest of the student trains either way
    assert not torch.equal(state["student"]["head.mlp.0.weight"], initial.state_dict()["head.mlp.0.weight"])
    # norm_last_layer=True: the weight-norm scale never moves
    assert torch.equal(state["student"]["head.last_layer.weight_g"], torch.ones(64, 1))


def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(
    make_config, monkeypatch
) -> None:
    cfg = make_config("nan")
    iters = N_TRAIN // cfg.optim.batch_size
    original = DINOLoss.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        loss, stats = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == iters + 2:  # second iteration of epoch 2
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr(DINOLoss, "forward", forward)
    with pytest.raises(NonFiniteLossError) as info:
        fit(cfg, quiet=True)
    message = str(info.value)
    assert "nan" in message and "epoch 2" in message and "checkpoint.pth" in message
    assert "optim.lr" in message  # says what to try
    state = checkpoint_of(cfg.train.output_dir)
    assert state["epoch"] == 1 and state["iteration"] == iters
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())
    assert not list(Path(cfg.train.output_dir).glob(".*.tmp"))
    # the run can go on from the checkpoint once the cause is fixed
    monkeypatch.setattr(DINOLoss, "forward", original)
    assert fit(cfg, quiet=True).epochs_done == 2


def test_huge_learning_rate_is_reported_not_silently_trained(make_config) -> None:
    cfg = make_config("huge", optim={"epochs": 1, "lr": 1e30, "clip_grad": 0.0, "warmup_epochs": 0.0,
                                     "freeze_last_layer_epochs": 0.0})
    with pytest.raises(NonFiniteLossError, match="loss is"):
        fit(cfg, quiet=True)


def test_fit_rejects_a_batch_larger_than_the_dataset(make_config) -> None:
    cfg = make_config("big", optim={"batch_size": N_TRAIN + 1})
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(cfg, quiet=True)


def test_fit_validates_the_config(make_config) -> None:
    cfg = make_config("invalid")
    cfg.optim.epochs = 0  # mutated after loading
    with pytest.raises(config_lib.ConfigError, match="optim.epochs"):
        fit(cfg, quiet=True)


def test_fit_with_dinov2_options(make_config) -> None:
    """Registers, SwiGLU, LayerScale and a trainable weight-norm scale all go through training and checkpoints."""
    cfg = make_config(
        "dinov2",
        model={"num_register_tokens": 2, "ffn": "swiglu", "layerscale_init": 0.1},
        head={"norm_last_layer": False},
        optim={"epochs": 1, "freeze_last_layer_epochs": 0.0},
    )
    result = fit(cfg, quiet=True)
    assert math.isfinite(result.last_metrics["loss"])
    assert result.backbone.num_register_tokens == 2
    student = checkpoint_of(cfg.train.output_dir)["student"]
    assert {"backbone.register_tokens", "backbone.blocks.0.ls1.gamma", "backbone.blocks.0.mlp.w12.weight"} <= set(
        student)
    # norm_last_layer=False: the weight-norm scale g is trained
    assert not torch.equal(student["head.last_layer.weight_g"], torch.ones(64, 1))


def test_fit_in_bf16_on_cpu(make_config) -> None:
    cfg = make_config("bf16", optim={"epochs": 1}, train={"precision": "bf16"})
    result = fit(cfg, quiet=True)
    records = read_metrics(cfg.train.output_dir)
    assert len(records) == N_TRAIN // cfg.optim.batch_size
    assert all(math.isfinite(r["loss"]) for r in records)
    assert result.backbone.pos_embed.dtype == torch.float32  # autocast, not a bf16 model


@pytest.mark.skipif(os.environ.get("DINOLAB_SLOW_TESTS") != "1",
                    reason="compiles for ~1 min on 2 CPU cores; DINOLAB_SLOW_TESTS=1 runs it")
def test_compiled_steps_train_like_eager_ones(make_config) -> None:
    """train.compile=true: the same losses and weights as eager mode (to float tolerance) over a few steps."""
    results = []
    for compiled in (False, True):
        cfg = make_config(f"compile_{compiled}", optim={"epochs": 1}, model={"drop_path_rate": 0.0},
                          train={"compile": compiled})
        fit(cfg, quiet=True)
        results.append((losses(cfg.train.output_dir), checkpoint_of(cfg.train.output_dir)))
    (eager_losses, eager), (compiled_losses, compiled) = results
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for key, value in eager["student"].items():
        torch.testing.assert_close(compiled["student"][key], value, rtol=1e-4, atol=5e-5, msg=key)
