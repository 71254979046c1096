"""`fit(cfg)`: the whole training program, top to bottom. The CLI only parses arguments and calls it.

Build the data and the trainer, resume if there is a checkpoint, then for every batch: the step's
schedule, one trainer step, the monitor (metrics, k-NN, collapse); a checkpoint at epoch ends; a report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dinolab import config as config_lib
from dinolab.config import Config
from dinolab.data.loader import (
    MultiCropBatches,
    batches_per_epoch,
    build_augmentation,
    build_dataset,
    build_masking,
    multicrop_loader,
)
from dinolab.device import resolve
from dinolab.io import LATEST, read_training_checkpoint, save_run_checkpoint, training_state
from dinolab.models.vit import VisionTransformer
from dinolab.progress import progress
from dinolab.progress import write as write_line
from dinolab.train.monitor import TrainingMonitor
from dinolab.train.report import write_report
from dinolab.train.schedules import Schedules, StepSchedule
from dinolab.train.trainer import NonFiniteLossError, Trainer

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    run_dir: Path
    epochs_done: int
    last_metrics: dict[str, float]
    backbone: VisionTransformer  # the EMA teacher's backbone: the model DINO evaluates


def fit(
    cfg: Config, resume: str | Path | bool = True, quiet: bool = False, max_iterations: int | None = None
) -> FitResult:
    """Train as `cfg` says; resume from `resume` (a file), or from the run dir's last checkpoint if True.

    `max_iterations` stops early (for tests and benchmarks); schedules still span the full config.
    Resuming a lower-resolution checkpoint with larger crops and model.img_size is the high-resolution
    phase: position embeddings are resized once and training continues with the new config's schedules.
    """
    run_dir, runtime = prepare_run(cfg), resolve(cfg.train.device, cfg.train.precision)
    dataset = build_dataset(cfg.data, cfg.model.in_chans)
    iters_per_epoch = iterations_per_epoch(dataset, cfg.optim.batch_size)
    augmentation = build_augmentation(cfg.data)
    masking = build_masking(cfg.mask, cfg.data.global_crops_size, cfg.model.patch_size)
    trainer, schedules = Trainer(cfg, runtime), Schedules(cfg, iters_per_epoch)
    start_epoch = resume_training(trainer, resume, run_dir)
    iteration = start_epoch * iters_per_epoch
    stop_at = iteration + max_iterations if max_iterations is not None else None
    monitor = TrainingMonitor(cfg, runtime, run_dir, iters_per_epoch, start_iteration=iteration)
    log.info("training %s (%.1fM params) on %d images, %d iters/epoch, %s %s", cfg.model.arch,
             sum(p.numel() for p in trainer.student.backbone.parameters()) / 1e6, len(dataset), iters_per_epoch,
             runtime.device, runtime.precision)
    skipped, epochs = 0, cfg.optim.epochs
    try:
        for epoch in range(start_epoch, epochs):
            batches = MultiCropBatches(dataset, augmentation, cfg.optim.batch_size, cfg.train.seed, epoch,
                                       masking=masking)
            bar = progress(multicrop_loader(batches, cfg.data.num_workers), desc=f"epoch {epoch + 1}/{epochs}",
                           disable=quiet)
            for i, (crops, _, batch_skipped, masks) in enumerate(bar):
                skipped += batch_skipped
                if not crops:
                    continue
                schedule = schedules.at(epoch * iters_per_epoch + i)
                iteration = epoch * iters_per_epoch + i + 1
                where = f"epoch {epoch + 1}, iteration {iteration - 1}"
                loss, stats = checked_step(trainer, crops, schedule, masks, where, run_dir)
                record = monitor.after_step(iteration, loss, stats, schedule, len(crops[0]), trainer.teacher.backbone)
                if record:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", H=f"{record['teacher_entropy']:.2f}")
                if stop_at is not None and iteration >= stop_at:
                    break
            bar.close()
            if skipped:
                log.warning("skipped %d unreadable images so far (see --verbose for names)", skipped)
            stopping = stop_at is not None and iteration >= stop_at
            if stopping and iteration % iters_per_epoch:  # stopped mid-epoch: nothing to checkpoint
                break
            if (epoch + 1) % cfg.train.save_every_epochs == 0 or epoch + 1 == epochs:
                state = training_state(trainer.state_dict(), epoch + 1, iteration, cfg)
                save_run_checkpoint(state, run_dir, epoch + 1, cfg.train.keep_last)
            if not quiet:
                summary = ", ".join(f"{k} {v:.4g}" for k, v in monitor.last.items() if k not in ("iteration", "epoch"))
                write_line(f"epoch {epoch + 1}/{epochs}: {summary}")
            if stopping:
                break
    finally:
        monitor.close()
    write_report(run_dir, cfg, skipped_images=skipped)
    return FitResult(run_dir, iteration // iters_per_epoch, monitor.last, trainer.teacher.backbone)


def prepare_run(cfg: Config) -> Path:
    """Validate, create the run directory with the resolved config.yaml, set threads and the seed."""
    config_lib.validate(cfg)
    run_dir = Path(cfg.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, run_dir / "config.yaml")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.train.seed)
    return run_dir


def resume_training(trainer: Trainer, resume: str | Path | bool, run_dir: Path) -> int:
    """Restore `resume` (a file), or the run dir's last checkpoint when `resume` is True and one exists:
    weights, optimizer, centers and RNG states. Returns the epoch to start from."""
    path = Path(resume) if isinstance(resume, (str, Path)) else run_dir / LATEST
    if resume is False or not path.exists():
        if isinstance(resume, (str, Path)):
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
        return 0
    checkpoint = read_training_checkpoint(path)
    trainer.load_state_dict(checkpoint.state, f"checkpoint {path}")
    checkpoint.restore_rng()
    log.info("resumed from %s at epoch %d", path, checkpoint.epoch)
    return checkpoint.epoch


def checked_step(
    trainer: Trainer, crops: list[Tensor], schedule: StepSchedule, masks: Tensor | None, where: str, run_dir: Path
) -> tuple[Tensor, dict[str, Tensor]]:
    """trainer.step, with a non-finite loss turned into an error that says where and what to try."""
    try:
        return trainer.step(crops, schedule, masks)
    except NonFiniteLossError as err:
        raise NonFiniteLossError(
            f"{err} at {where}; the last good checkpoint ({run_dir / LATEST}) is kept. Try a lower optim.lr, "
            "optim.clip_grad > 0, train.precision=fp32, or check the data."
        ) from None


def iterations_per_epoch(dataset: Dataset, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped); an error when there is not even one."""
    iterations = batches_per_epoch(dataset, batch_size)
    if iterations == 0:
        raise ValueError(
            f"the dataset has {len(dataset)} images, fewer than one batch (optim.batch_size={batch_size}); "
            "lower the batch size or add images"
        )
    return iterations
