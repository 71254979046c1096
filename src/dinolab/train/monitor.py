"""Watching a run: metrics.jsonl and TensorBoard, the k-NN learning curve and the collapse check.

`TrainingMonitor.after_step` is the one call the training loop makes per iteration; it decides when to
log, measures throughput over the logging window, runs the k-NN check on its schedule and warns when the run
is not learning: collapse, targets that stay near uniform, a k-NN below the same network at random init.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from dinolab.config import Config, ConfigError
from dinolab.data.loader import build_eval_dataset
from dinolab.device import Runtime
from dinolab.distributed import ONE_PROCESS, World, all_gather_object, all_reduce_int, all_reduce_mean
from dinolab.eval.baselines import random_init_like
from dinolab.eval.features import extract_tokens
from dinolab.eval.knn import knn_scores
from dinolab.eval.tokens import TokenFeatures
from dinolab.io import METRICS, read_metrics
from dinolab.train.schedules import StepSchedule

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends to metrics.jsonl, first dropping lines past `start_iteration` (left by a run that is resumed
    from an earlier checkpoint), so every iteration appears once."""

    def __init__(self, run_dir: str | Path, start_iteration: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS
        kept = [json.dumps(r) + "\n" for r in read_metrics(run_dir) if r["iteration"] <= start_iteration]
        self.path.write_text("".join(kept))
        self.file = self.path.open("a")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict[str, float | int]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            step = int(record["iteration"])
            for key, value in record.items():
                if key not in ("iteration", "epoch"):
                    self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def spread_indices(n: int, total: int) -> list[int]:
    """`n` indices spread evenly over `range(total)` (all of them if n >= total). Not the first n: a folder
    dataset lists its images class by class, so its first images are one or two classes only."""
    if n >= total:
        return list(range(total))
    return [i * total // n for i in range(n)]


class KNNMonitor:
    """Weighted k-NN top-1 (k=20) of the teacher on a fixed slice of the labeled data, during training:
    the learning curve the DINO paper plots. Deterministic; it runs at the same iterations whether or not the
    run was resumed (its data loader draws a base seed from the global RNG), so resumed runs stay identical.

    In a multi-process run where every rank holds the model (DDP), each rank extracts the features of every
    world-size-th image and the features are gathered: the check costs 1/world of its one-process time.
    Where only rank 0 holds it (FSDP gathers the teacher there), rank 0 extracts them all."""

    def __init__(
        self, cfg: Config, runtime: Runtime, world: World = ONE_PROCESS, domain: tuple[Dataset, Dataset] | None = None
    ):
        """`domain`: the (train, test) labeled images to score on; default the training domain (data.path and
        eval.test_path), else e.g. the reference domain of `reference_domain`."""
        if domain is None:
            train = build_eval_dataset(cfg.data, cfg.model.in_chans, "train", cfg.data.path)
            domain = train, build_eval_dataset(cfg.data, cfg.model.in_chans, "test", cfg.eval.test_path,
                                               classes=train.classes)
        train, test = domain
        self.train = Subset(train, spread_indices(cfg.eval.knn_monitor_train, len(train)))
        self.test = Subset(test, spread_indices(cfg.eval.knn_monitor_test, len(test)))
        self.cfg, self.runtime, self.world = cfg, runtime, world
        self._random_init: float | None = None
        self._random_init_measured = False

    def __call__(self, model: nn.Module | None) -> float | None:
        """k-NN top-1 (%); every rank calls it, with the model or None; None where this rank computed nothing."""
        shared = self.world.distributed and all_reduce_int(int(model is not None), "min") == 1
        if model is None:
            return None
        train, test = (self._features(model, dataset, shared) for dataset in (self.train, self.test))
        return knn_scores(train, test, (20,), self.cfg.eval.knn_temperature)[20]["top1"]

    def _features(self, model: nn.Module, dataset: Subset, shared: bool) -> TokenFeatures:
        d, e = self.cfg.data, self.cfg.eval
        if shared:  # this rank's share; k-NN does not depend on the order of the training set
            dataset = Subset(dataset, range(self.world.rank, len(dataset), self.world.size))
        mine = extract_tokens(model, dataset, d.mean, d.std, n_blocks=1, batch_size=e.batch_size,
                              runtime=self.runtime, quiet=True)
        if not shared:
            return mine
        parts = all_gather_object((mine.cls.cpu(), mine.avgpool.cpu(), mine.labels.cpu()))
        return TokenFeatures(*(torch.cat(field) for field in zip(*parts, strict=True)))

    def random_init(self, model: nn.Module | None) -> float | None:
        """The same check on `model`'s architecture at random init (seed train.seed): the floor a learning run
        must stay above. Computed once; the global RNG is left as it was, so the run's own draws do not change."""
        if not self._random_init_measured:  # once on every rank, even those that get None (FSDP ranks > 0)
            with torch.random.fork_rng(devices=[]):
                baseline = None if model is None else random_init_like(model, seed=self.cfg.train.seed)
                self._random_init = self(None if baseline is None else baseline.to(self.runtime.device))
            self._random_init_measured = True
        return self._random_init


def reference_domain(cfg: Config) -> tuple[Dataset, Dataset]:
    """The (train, test) images of `eval.reference_data`: `fmnist` or `fmnist:DIR` (Fashion-MNIST's two splits), or
    a folder holding train/ and test/ class folders, read like data.path (resized to the global crop size)."""
    source, in_chans = cfg.eval.reference_data, cfg.model.in_chans
    if source == "fmnist" or source.startswith("fmnist:"):
        data = dataclasses.replace(cfg.data, dataset="fmnist", path=source.removeprefix("fmnist").removeprefix(":"))
        return build_eval_dataset(data, in_chans, "train"), build_eval_dataset(data, in_chans, "test")
    root = Path(source).expanduser()
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        raise ConfigError(f"eval.reference_data: {root} must be a folder with train/ and test/ folders of class "
                          "folders (or fmnist / fmnist:DIR for Fashion-MNIST)")
    data = dataclasses.replace(cfg.data, dataset="folder")
    train = build_eval_dataset(data, in_chans, "train", root / "train")
    return train, build_eval_dataset(data, in_chans, "test", root / "test", classes=train.classes)


class TrainingMonitor:
    """Per-iteration bookkeeping of `fit`: which steps are logged, img/s over the window since the last log
    line, the k-NN check (every `eval.knn_every` iterations and at epoch ends) and collapse warnings.

    In a multi-process run every rank calls it at every step; logged values are averaged over the ranks and
    rank 0 alone writes metrics.jsonl and TensorBoard, runs the k-NN check and warns."""

    def __init__(
        self, cfg: Config, runtime: Runtime, run_dir: Path, iters_per_epoch: int, start_iteration: int,
        world: World = ONE_PROCESS,
    ):
        self.cfg, self.iters_per_epoch, self.world = cfg, iters_per_epoch, world
        self.metrics = MetricsLog(run_dir, start_iteration=start_iteration) if world.is_main else None
        self.knn = KNNMonitor(cfg, runtime, world) if cfg.eval.knn_every else None
        # forgetting, when adapting a pretrained model (eval.reference_data): the same check on the old domain
        self.reference_knn = (
            KNNMonitor(cfg, runtime, world, reference_domain(cfg)) if self.knn and cfg.eval.reference_data else None
        )
        self.last: dict[str, float] = {}
        # the warnings below look only at steps after the lr warm-up: before it nothing has been learned yet
        self.warmup_iterations = max(round(cfg.optim.warmup_epochs * iters_per_epoch), 1)
        stretch = max(round(UNIFORM_STRETCH_EPOCHS * iters_per_epoch), UNIFORM_MIN_LOGGED_STEPS * cfg.train.log_every)
        self.uniform_watches = [UniformTargetsWatch(*kind, stretch) for kind in target_kinds(cfg)]
        self._warned_knn = False
        self._knn_gain: float | None = None  # last k-NN check minus random init (points)
        self._window_start, self._window_images = time.perf_counter(), 0

    def after_step(
        self, iteration: int, loss: Tensor, stats: dict[str, Tensor], schedule: StepSchedule, images: int,
        evaluated: Callable[[], nn.Module | None],
    ) -> dict[str, float] | None:
        """Account for a finished step (`iteration` counts it); returns the record when this step is logged.
        `evaluated()` gives the model the k-NN check scores (on every rank: under FSDP it gathers the shards)."""
        self._window_images += images * self.world.size
        end_of_epoch = iteration % self.iters_per_epoch == 0
        check_knn = self.cfg.eval.knn_every > 0 and (iteration % self.cfg.eval.knn_every == 0 or end_of_epoch)
        if not (iteration % self.cfg.train.log_every == 0 or end_of_epoch or check_knn):
            return None
        stats = all_reduce_mean({"loss": loss, **stats})  # every rank takes part; rank 0 writes
        elapsed = time.perf_counter() - self._window_start
        record: dict[str, Any] = {
            "iteration": iteration,
            "epoch": iteration / self.iters_per_epoch,
            "loss": stats.pop("loss").item(),
            "lr": schedule.lr,
            "wd": schedule.weight_decay,
            "momentum": schedule.momentum,
            "teacher_temp": schedule.teacher_temp,
            **({"ibot_teacher_temp": schedule.ibot_teacher_temp} if self.cfg.loss.ibot_weight > 0 else {}),
            **{k: v.item() for k, v in stats.items()},
            "img_per_s": self._window_images / max(elapsed, 1e-9),
        }
        self.last = record
        self._window_start, self._window_images = time.perf_counter(), 0
        if self.knn is not None and check_knn:  # every rank takes part (features are extracted in shares)
            model = evaluated()
            record["knn_top1"] = self.knn(model)
            record["knn_random_init"] = self.knn.random_init(model)
            if self.reference_knn is not None:
                record["knn_reference_top1"] = self.reference_knn(model)
        if not self.world.is_main:
            return record
        self.metrics.write(record)
        if iteration > self.iters_per_epoch:  # targets are still forming during the first epoch
            warn_on_collapse(record, self.cfg)
        if iteration > self.warmup_iterations:
            self._warn_if_not_learning(record)
        return record

    def _warn_if_not_learning(self, record: dict[str, Any]) -> None:
        if "knn_top1" in record:
            self._knn_gain = record["knn_top1"] - record["knn_random_init"]
        for watch in self.uniform_watches:
            warning = watch.update(record)
            if warning and self._knn_gain is not None and self._knn_gain >= KNN_LEARNING_MARGIN:
                # near-uniform targets while the features improve: the other terms (KoLeo) teach, not a failure
                log.info("%s targets: %s But the last k-NN check is %.1f points above random init: the features are "
                         "learning anyway (from KoLeo, when it is on).", watch.name, warning, self._knn_gain)
            elif warning:
                log.warning("%s targets: %s", watch.name, warning)
        if "knn_top1" in record and not self._warned_knn and record["knn_top1"] < record["knn_random_init"]:
            self._warned_knn = True
            log.warning("%s", knn_below_random_init_warning(record["knn_top1"], record["knn_random_init"],
                                                            int(record["iteration"])))

    def summary(self) -> str:
        """The last logged values on one line (the end-of-epoch message)."""
        return ", ".join(f"{k} {v:.4g}" for k, v in self.last.items() if k not in ("iteration", "epoch"))

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


# One-prototype collapse: every image's targets put their mass on the same prototype or two, so the batch's mean
# target uses fewer than four prototypes in effect. Sharp targets alone are not collapse: the long demo recipe's
# per-image entropy falls to 0.06 nats (under 1% of log K) while the batch's mean target keeps 2.7-3.2 nats (14-25
# prototypes) and the k-NN climbs; teacher T 0.02 collapses to 0.77 nats (2.2 prototypes) in its first 50 iterations
# (docs/small_data.md, fifteenth round).
ONE_PROTOTYPE_MAX_BATCH_ENTROPY = math.log(4.0)


def collapse_warning(teacher_entropy: float, num_prototypes: int, batch_entropy: float | None = None) -> str | None:
    """The DINO paper's two failure modes, read off the teacher's output entropy: per image, and (when given) of
    the batch's mean target, which tells one prototype for every image from sharp targets that differ."""
    max_entropy = math.log(num_prototypes)
    one_prototype = batch_entropy is None or batch_entropy < ONE_PROTOTYPE_MAX_BATCH_ENTROPY
    if teacher_entropy < 0.01 * max_entropy and one_prototype:
        return (
            f"teacher entropy {teacher_entropy:.3f} is near 0: one prototype wins for every image (collapse). "
            "Usual remedies: keep centering on (loss.center_momentum < 1), lower optim.lr, raise "
            "loss.teacher_temp less steeply, lengthen optim.warmup_epochs."
        )
    if teacher_entropy > 0.99 * max_entropy:
        return (
            f"teacher entropy {teacher_entropy:.3f} is near log K = {max_entropy:.3f}: the teacher output is "
            "uniform (collapse). Usual remedies: sharpen more (lower loss.teacher_temp / "
            "loss.warmup_teacher_temp), raise optim.momentum_teacher, check the data are not constant."
        )
    return None


def target_kinds(cfg: Config) -> list[tuple[str, str, int]]:
    """(name in the warnings, prefix of the metrics, prototypes K) of each kind of teacher target the run scores:
    the [CLS] targets, and with iBOT the patch targets."""
    kinds = [("[CLS]", "", cfg.head.out_dim)]
    if cfg.loss.ibot_weight > 0:
        kinds.append(("iBOT patch", "ibot_", cfg.head.patch_out_dim))
    return kinds


def warn_on_collapse(metrics: dict[str, float], cfg: Config) -> None:
    """The collapse monitor, for each kind of teacher target; none for targets the metrics lack (feature
    distillation has no teacher distributions)."""
    for name, prefix, num_prototypes in target_kinds(cfg):
        if f"{prefix}teacher_entropy" not in metrics:
            continue
        warning = collapse_warning(metrics[f"{prefix}teacher_entropy"], num_prototypes,
                                   metrics.get(f"{prefix}teacher_batch_entropy"))
        if warning:
            log.warning("%s targets: %s", name, warning)


# Near-uniform targets, the common failure on small data: the teacher's distributions keep at least
# UNIFORM_ENTROPY_FRACTION of the entropy of the uniform one (log K) while the student matches them
# (KL(teacher || student) at most UNIFORM_MAX_KL_FRACTION of log K), on every logged step over
# UNIFORM_STRETCH_EPOCHS of an epoch (and at least UNIFORM_MIN_LOGGED_STEPS log intervals) after the lr warm-up.
# Measured (docs/small_data.md): the old demo recipe sits at 0.90-0.92 / 0.03 and learns nothing in its first
# 10k images; lr ~ 0 at 0.90 / 0.08; the new demo recipe (KoLeo) leaves the band after ~500 iterations and ends at
# 0.35-0.5 with the k-NN 12 points above random init.
UNIFORM_ENTROPY_FRACTION = 0.85
UNIFORM_MAX_KL_FRACTION = 0.15
UNIFORM_STRETCH_EPOCHS = 0.25
UNIFORM_MIN_LOGGED_STEPS = 3
# ... unless the last k-NN check is this many points above random init: then the features learn anyway. With KoLeo
# 0.3 and a teacher temperature of 0.07 (docs/small_data.md, third round) the targets stay at 0.97 log K while the
# k-NN rises 6-7 points above random init: KoLeo teaches what the near-uniform DINO targets do not.
KNN_LEARNING_MARGIN = 2.0


def targets_near_uniform(teacher_entropy: float, kl: float, num_prototypes: int) -> bool:
    """True when the teacher's targets are close to uniform and the student already matches them."""
    log_k = math.log(num_prototypes)
    return teacher_entropy >= UNIFORM_ENTROPY_FRACTION * log_k and kl <= UNIFORM_MAX_KL_FRACTION * log_k


def near_uniform_warning(teacher_entropy: float, kl: float, num_prototypes: int, first: int, last: int) -> str:
    """What near-uniform targets mean and which keys to change."""
    log_k = math.log(num_prototypes)
    return (
        f"near uniform from iteration {first} to {last}: teacher entropy {teacher_entropy:.2f} is "
        f"{teacher_entropy / log_k:.0%} of log K = {log_k:.2f} and the student matches it (KL {kl:.3f} nats), so "
        "the loss teaches nothing. Likely causes and the keys to change: the teacher's outputs do not depend on the "
        "image yet (too little training: raise optim.lr or optim.epochs; a teacher that follows the student too "
        "slowly for this run's length: lower optim.momentum_teacher, whose time constant 1/(1 - m) iterations "
        "must be a small part of the run); the teacher is too soft (lower loss.teacher_temp and "
        "loss.warmup_teacher_temp, e.g. 0.04); more prototypes than the data can fill (lower head.out_dim); the "
        "views share too little or too much (data.global_crops_scale, data.local_crops_scale); the images are "
        "nearly constant or badly normalized (check data.path and data.mean/data.std, or use data.auto=true)."
    )


class UniformTargetsWatch:
    """Follows one loss's targets over the logged steps and warns once when they stay near uniform for at
    least `stretch` iterations."""

    def __init__(self, name: str, prefix: str, num_prototypes: int, stretch: int):
        self.name, self.prefix, self.num_prototypes, self.stretch = name, prefix, num_prototypes, stretch
        self.since: int | None = None
        self.warned = False

    def update(self, record: dict[str, Any]) -> str | None:
        entropy, kl = record.get(f"{self.prefix}teacher_entropy"), record.get(f"{self.prefix}kl")
        if entropy is None or kl is None or not targets_near_uniform(entropy, kl, self.num_prototypes):
            self.since = None
            return None
        iteration = int(record["iteration"])
        self.since = iteration if self.since is None else self.since
        if self.warned or iteration - self.since < self.stretch:
            return None
        self.warned = True
        return near_uniform_warning(entropy, kl, self.num_prototypes, self.since, iteration)


def knn_below_random_init_warning(knn_top1: float, random_init: float, iteration: int) -> str:
    """The run has made the features worse than no training at all."""
    return (
        f"k-NN check at iteration {iteration}: {knn_top1:.2f}% is below the same network at random init "
        f"({random_init:.2f}%) after the warm-up: training is making the features worse. Likely causes and the keys "
        "to change: a learning rate too high for the batch (optim.lr, optim.batch_size, optim.warmup_epochs), "
        "augmentations that destroy what tells the images apart (data.global_crops_scale, data.local_crops_scale, "
        "data.hflip for data with a handedness, data.color_jitter / data.solarize on grayscale), a teacher that is "
        "too sharp (loss.teacher_temp), or near-uniform or collapsed targets (see the warnings above)."
    )
