"""The warnings that say a run is not learning: targets that stay near uniform, a k-NN check below the same
network at random init. Tiny runs on generated data; the thresholds are those of dinolab.train.monitor."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_idx

from dinolab.device import Runtime
from dinolab.train import fit
from dinolab.train.monitor import (
    UNIFORM_ENTROPY_FRACTION,
    UNIFORM_MAX_KL_FRACTION,
    KNNMonitor,
    UniformTargetsWatch,
    targets_near_uniform,
)

MONITOR = "dinolab.train.monitor"
CPU = Runtime(torch.device("cpu"), "fp32")
# the demo's prototype count and bottleneck (a small hidden layer keeps it fast): the regime the warning is for
DEMO_HEAD = {"out_dim": 2048, "hidden_dim": 64, "bottleneck_dim": 256}


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == MONITOR]


def write_images(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """`images` as the train and test split of a Fashion-MNIST-shaped folder."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def test_near_uniform_needs_high_entropy_and_small_kl() -> None:
    k = 64
    log_k = math.log(k)
    assert targets_near_uniform(log_k, 0.0, k)
    assert targets_near_uniform(UNIFORM_ENTROPY_FRACTION * log_k, UNIFORM_MAX_KL_FRACTION * log_k, k)
    assert not targets_near_uniform(0.5 * log_k, 0.0, k)  # sharp targets
    assert not targets_near_uniform(log_k, 2 * UNIFORM_MAX_KL_FRACTION * log_k, k)  # the student does not follow


def test_uniform_watch_warns_once_after_a_stretch_and_restarts_on_a_healthy_step() -> None:
    k, log_k = 64, math.log(64)
    watch = UniformTargetsWatch("[CLS]", "", k, stretch=10)
    uniform = {"teacher_entropy": 0.99 * log_k, "kl": 0.01}
    healthy = {"teacher_entropy": 0.3 * log_k, "kl": 1.0}
    assert [watch.update({**uniform, "iteration": i}) for i in (5, 10)] == [None, None]
    assert watch.update({**healthy, "iteration": 15}) is None  # the stretch starts again
    assert [watch.update({**uniform, "iteration": i}) for i in (20, 25)] == [None, None]
    message = watch.update({**uniform, "iteration": 30})
    assert message and "near uniform from iteration 20 to 30" in message
    for key in ("optim.lr", "optim.momentum_teacher", "loss.teacher_temp", "head.out_dim", "data.mean"):
        assert key in message
    assert watch.update({**uniform, "iteration": 35}) is None  # once per run
    assert UniformTargetsWatch("iBOT", "ibot_", k, 1).update({**uniform, "iteration": 1}) is None  # no iBOT keys


def test_constant_images_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """All-black images: every crop is the same, so centering leaves the teacher nothing but uniform targets."""
    data = write_images(tmp_path / "data", np.zeros((64, 28, 28), np.uint8), np.arange(64, dtype=np.uint8) % 4)
    cfg = tiny_config(data, tmp_path / "run", optim={"epochs": 2}, head=DEMO_HEAD)
    with caplog.at_level(logging.WARNING, logger=MONITOR):
        fit(cfg, quiet=True)
    assert any("near uniform" in m for m in warnings_of(caplog)), warnings_of(caplog)


def test_near_uniform_targets_with_a_rising_knn_are_not_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Near-uniform targets while the k-NN check is well above random init (KoLeo teaching, as in the demo):
    said at INFO with the k-NN gain, not warned; the same run without the gain warns (test above)."""
    monkeypatch.setattr(KNNMonitor, "__call__", lambda self, model: 60.0)
    monkeypatch.setattr(KNNMonitor, "random_init", lambda self, model: 50.0)
    data = write_images(tmp_path / "data", np.zeros((64, 28, 28), np.uint8), np.arange(64, dtype=np.uint8) % 4)
    cfg = tiny_config(data, tmp_path / "run", optim={"epochs": 2}, head=DEMO_HEAD,
                      eval={"knn_every": 1, "knn_monitor_train": 20, "knn_monitor_test": 8})
    with caplog.at_level(logging.INFO, logger=MONITOR):
        fit(cfg, quiet=True)
    assert not any("near uniform" in m for m in warnings_of(caplog)), warnings_of(caplog)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name == MONITOR]
    assert any("near uniform" in m and "10.0 points above random init" in m for m in infos), infos


def test_learning_rate_zero_warns(fmnist_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """lr ~ 0: the teacher stays at its random init, whose targets carry next to no information."""
    cfg = tiny_config(fmnist_dir, tmp_path / "run", optim={"epochs": 3, "lr": 1e-9, "min_lr": 1e-10}, head=DEMO_HEAD)
    with caplog.at_level(logging.WARNING, logger=MONITOR):
        fit(cfg, quiet=True)
    assert any("near uniform" in m for m in warnings_of(caplog)), warnings_of(caplog)


def test_knn_below_random_init_warns_after_warmup(
    fmnist_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A k-NN check under the random-init baseline warns once, and only after the lr warm-up."""
    monkeypatch.setattr(KNNMonitor, "__call__", lambda self, model: 10.0)
    monkeypatch.setattr(KNNMonitor, "random_init", lambda self, model: 50.0)
    cfg = tiny_config(fmnist_dir, tmp_path / "run", optim={"epochs": 1, "warmup_epochs": 0.5},
                      eval={"knn_every": 1, "knn_monitor_train": 20, "knn_monitor_test": 8})
    with caplog.at_level(logging.WARNING, logger=MONITOR):
        fit(cfg, quiet=True)
    below = [m for m in warnings_of(caplog) if "below the same network at random init" in m]
    assert len(below) == 1
    assert "iteration 3:" in below[0] and "optim.lr" in below[0]  # 4 iterations, the first 2 are warm-up


def test_random_init_baseline_is_computed_once_and_leaves_the_rng_alone(make_config) -> None:
    cfg = make_config("knn", eval={"knn_every": 1, "knn_monitor_train": 20, "knn_monitor_test": 8})
    from dinolab.models.build import build_backbone

    monitor, model = KNNMonitor(cfg, CPU), build_backbone(cfg)
    state = torch.get_rng_state()
    first = monitor.random_init(model)
    assert torch.equal(torch.get_rng_state(), state)
    assert 0.0 <= first <= 100.0
    assert KNNMonitor(cfg, CPU).random_init(build_backbone(cfg)) == first  # the same number in any run
