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
from dinolab.config import Config, ConfigError
from dinolab.data.loader import (
    MultiCropBatches,
    batches_per_epoch,
    build_augmentation,
    build_dataset,
    build_masking,
    multicrop_loader,
)
from dinolab.data.stats import resolve_from_images
from dinolab.device import Runtime, resolve
from dinolab.distributed import (
    World,
    all_reduce_int,
    barrier,
    destroy_process_group,
    init_process_group,
    world_from_environment,
)
from dinolab.io import LATEST, read_training_checkpoint
from dinolab.models.vit import VisionTransformer
from dinolab.progress import progress
from dinolab.progress import write as write_line
from dinolab.train.adapt import resolve_init
from dinolab.train.checkpointing import Checkpointing
from dinolab.train.feature_distill import FeatureDistiller
from dinolab.train.monitor import TrainingMonitor
from dinolab.train.report import write_report
from dinolab.train.schedules import Schedules, StepSchedule
from dinolab.train.sharded_checkpoint import load_sharded, sharded_dir
from dinolab.train.trainer import NonFiniteLossError, Trainer

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    run_dir: Path
    epochs_done: int
    last_metrics: dict[str, float]
    backbone: VisionTransformer | None  # the EMA teacher's backbone, the model DINO evaluates (None on FSDP ranks > 0)
    preempted: str | None = None  # the signal that stopped the run early (after saving), if one did


def fit(
    cfg: Config, resume: str | Path | bool = True, quiet: bool = False, max_iterations: int | None = None
) -> FitResult:
    """Train as `cfg` says; resume from `resume` (a file), or from the run dir's last checkpoint if True.

    Under torchrun every process calls this; each trains on its slice of the global batch (DDP) and rank 0
    logs and saves. `max_iterations` stops early (tests, benchmarks); schedules still span the full config.
    Resuming a lower-resolution checkpoint with larger crops and model.img_size is the high-resolution
    phase: position embeddings are resized once and training continues with the new config's schedules.
    """
    world = world_from_environment()
    cfg = resolve_from_images(cfg, quiet=quiet or not world.is_main)  # data.auto (small_images): measure the folder
    cfg, initial = resolve_init(cfg)  # model.init (continued pretraining): the architecture is the file's
    run_dir, runtime = prepare_run(cfg, world), resolve_runtime(cfg, world)
    init_process_group(world, runtime.device.type, cfg.train.collective_timeout_minutes)
    dataset = build_dataset(cfg.data, cfg.model.in_chans)
    iters_per_epoch = iterations_per_epoch(dataset, cfg.optim.batch_size)
    augmentation = build_augmentation(cfg.data)
    masking = build_masking(cfg.mask, cfg.data.global_crops_size, cfg.model.patch_size)
    # distill.teacher: feature distillation, no heads and no model.init
    trainer = FeatureDistiller(cfg, runtime, world) if cfg.distill.teacher else Trainer(cfg, runtime, world, initial)
    del initial  # its weights are in the trainer now: no second backbone held through training
    schedules = Schedules(cfg, iters_per_epoch)
    start_epoch, start_batch = resume_training(trainer, resume, run_dir, cfg, world)
    iteration = start_epoch * iters_per_epoch + start_batch
    stop_at = iteration + max_iterations if max_iterations is not None else None
    monitor = TrainingMonitor(cfg, runtime, run_dir, iters_per_epoch, iteration, world)
    checkpointing = Checkpointing(cfg, world, run_dir)
    log_start(cfg, trainer, dataset, iters_per_epoch, runtime, world)
    skipped, epochs, stopped, preempted, quiet = 0, cfg.optim.epochs, False, None, quiet or not world.is_main
    try:
        with checkpointing.catching_preemption():
            for epoch in range(start_epoch, epochs):
                first = start_batch if epoch == start_epoch else 0
                batches = MultiCropBatches(dataset, augmentation, cfg.optim.batch_size, cfg.train.seed, epoch, first,
                                           masking, rows=world.rows(cfg.optim.batch_size))
                bar = progress(multicrop_loader(batches, cfg.data.num_workers), desc=f"epoch {epoch + 1}/{epochs}",
                               disable=quiet)
                for i, (crops, _, batch_skipped, masks) in enumerate(bar, start=first):
                    skipped += batch_skipped
                    if not all_ranks_have(crops):  # a batch nobody (or somebody) could read: skip it
                        continue
                    schedule = schedules.at(epoch * iters_per_epoch + i)
                    iteration = epoch * iters_per_epoch + i + 1
                    where = f"epoch {epoch + 1}, iteration {iteration - 1}"
                    loss, stats = checked_step(trainer, crops, schedule, masks, where, run_dir)
                    evaluated = trainer.evaluated_backbone
                    if record := monitor.after_step(iteration, loss, stats, schedule, len(crops[0]), evaluated):
                        bar.set_postfix(**progress_postfix(record))
                    save, stop = checkpointing.after_step(iteration)
                    if save and i + 1 < iters_per_epoch:  # mid-epoch; epoch ends are saved below
                        checkpointing.save(trainer, epoch, i + 1, iteration)
                    preempted = checkpointing.received if stop else None
                    stopped = stop or (stop_at is not None and iteration >= stop_at)
                    if stopped:
                        break
                bar.close()
                report_skipped(skipped)
                if stopped and iteration % iters_per_epoch:  # stopped mid-epoch (saved above if preempted)
                    break
                if (epoch + 1) % cfg.train.save_every_epochs == 0 or epoch + 1 == epochs or preempted:
                    checkpointing.save(trainer, epoch + 1, 0, iteration)
                if not quiet:
                    write_line(f"epoch {epoch + 1}/{epochs}: {monitor.summary()}")
                if stopped:
                    break
        backbone = trainer.evaluated_backbone()  # under FSDP a collective: while the processes are still joined
        checkpointing.wait()  # an asynchronous save is on disk before fit returns
        barrier()
    finally:
        monitor.close()
        destroy_process_group()
    if preempted:
        log.warning("%s received: saved %s at iteration %d and stopped; run the same command to resume",
                    preempted, run_dir / LATEST, iteration)
    if world.is_main:
        write_report(run_dir, cfg, skipped_images=skipped)
    return FitResult(run_dir, iteration // iters_per_epoch, monitor.last, backbone, preempted)


def prepare_run(cfg: Config, world: World) -> Path:
    """Validate (with the world size), create the run directory with the resolved config.yaml (rank 0),
    set threads and the seed (the same on every rank, so all build the same initial model)."""
    config_lib.validate(cfg)
    check_world(cfg, world)
    run_dir = Path(cfg.train.output_dir)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(cfg, run_dir / "config.yaml")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.train.seed)
    return run_dir


def check_world(cfg: Config, world: World) -> None:
    """Refuse, before any work, a process count the config cannot use."""
    if world.distributed and cfg.train.parallel == "none":
        raise ConfigError(f"train.parallel=none, but {world.size} processes were started; set train.parallel=ddp "
                          "(or auto), or start one process")
    if cfg.train.parallel == "fsdp" and not world.distributed:
        raise ConfigError("train.parallel=fsdp shards the models over several processes, but one was started; "
                          "launch with torchrun --nproc_per_node N (or --nproc N), or use train.parallel=auto")
    if cfg.optim.batch_size % world.size:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is the global batch and must divide evenly "
                          f"over the {world.size} processes; use a multiple of {world.size}")


def resolve_runtime(cfg: Config, world: World) -> Runtime:
    """Device and precision; with several processes on CUDA each takes the GPU of its local rank."""
    device = cfg.train.device
    if world.distributed and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(world.local_rank)
    return resolve(device, cfg.train.precision)


def resume_training(
    trainer: Trainer, resume: str | Path | bool, run_dir: Path, cfg: Config, world: World
) -> tuple[int, int]:
    """Restore the checkpoint `resume` names (see checkpoint_to_resume): weights, optimizer, centers and RNG
    states. Returns where to continue: (epoch, batch within it). Without one, ranks other than 0 draw their
    own randomness (drop path) from a seed of their own."""
    path = checkpoint_to_resume(resume, run_dir, cfg)
    if path is None:
        if world.rank:
            torch.manual_seed(cfg.train.seed + world.rank)
        return 0, 0
    if folder := sharded_dir(path):
        progress = load_sharded(trainer, folder, world)
        log.info("resumed from %s at epoch %d, batch %d", folder, progress["epoch"], progress["batches_done"])
        return progress["epoch"], progress["batches_done"]
    checkpoint = read_training_checkpoint(path)
    trainer.load_state_dict(checkpoint.state, f"checkpoint {checkpoint.path}")
    if not checkpoint.restore_rng(world.rank, world.size) and world.rank:
        torch.manual_seed(cfg.train.seed + world.rank + 100_003 * checkpoint.iteration)
    log.info("resumed from %s at epoch %d, batch %d", checkpoint.path, checkpoint.epoch, checkpoint.batches_done)
    return checkpoint.epoch, checkpoint.batches_done


def checkpoint_to_resume(resume: str | Path | bool, run_dir: Path, cfg: Config) -> Path | None:
    """`resume` as given (a checkpoint file, a sharded folder or a run dir), or for True the run dir's latest
    checkpoint in train.checkpoint_format, else in the other format; None for False or a new run."""
    if resume is False:
        return None
    if resume is not True:
        if not Path(resume).exists():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
        return Path(resume)
    file = run_dir / LATEST if (run_dir / LATEST).is_file() else None
    candidates = [sharded_dir(run_dir), file]
    return next((c for c in (candidates if cfg.train.checkpoint_format == "sharded" else candidates[::-1]) if c),
                None)


def log_start(cfg: Config, trainer: Trainer, dataset: Dataset, iters_per_epoch: int, runtime: Runtime,
              world: World) -> None:
    params = sum(p.numel() for p in trainer.student.backbone.parameters()) / 1e6
    per_rank = cfg.optim.batch_size // world.size
    processes = f", {world.size} processes ({trainer.parallel}), {per_rank} images each" if world.distributed else ""
    log.info("training %s (%.1fM params) on %d images, %d iters/epoch, %s %s%s", cfg.model.arch, params,
             len(dataset), iters_per_epoch, runtime.device, runtime.precision, processes)


def all_ranks_have(crops: list[Tensor]) -> bool:
    """Whether every rank has a batch this step (if one does not, all skip it together: no rank waits)."""
    return all_reduce_int(int(bool(crops)), "min") == 1  # one process: no collective, its own answer


def report_skipped(skipped: int) -> None:
    """Unreadable images so far, counted over all ranks (each rank passes its own count)."""
    total = all_reduce_int(skipped)
    if total:
        log.warning("skipped %d unreadable images so far (see --verbose for names)", total)


def checked_step(
    trainer: Trainer, crops: list[Tensor], schedule: StepSchedule, masks: Tensor | None, where: str, run_dir: Path
) -> tuple[Tensor, dict[str, Tensor]]:
    """trainer.step, with a non-finite loss turned into an error that says where and what to try."""
    try:
        return trainer.step(crops, schedule, masks)
    except NonFiniteLossError as err:
        raise NonFiniteLossError(
            f"{err} at {where}; the last good checkpoint ({run_dir / LATEST}) is kept. Try a lower "
            "optim.lr, optim.clip_grad > 0, train.precision=fp32, or check the data."
        ) from None


def progress_postfix(record: dict[str, float]) -> dict[str, str]:
    """The loss and, where there are targets (not in feature distillation), the teacher's entropy H."""
    shown = {"loss": f"{record['loss']:.3f}"}
    if "teacher_entropy" in record:
        shown["H"] = f"{record['teacher_entropy']:.2f}"
    return shown


def iterations_per_epoch(dataset: Dataset, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped); an error when there is not even one."""
    iterations = batches_per_epoch(dataset, batch_size)
    if iterations == 0:
        raise ValueError(
            f"the dataset has {len(dataset)} images, fewer than one batch (optim.batch_size={batch_size}); "
            "lower the batch size or add images"
        )
    return iterations
