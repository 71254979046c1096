"""When a run saves and when it stops: at epoch ends (`train.save_every_epochs`), mid-epoch every
`train.save_every_iterations` iterations or `train.save_every_minutes` minutes, and at once on SIGTERM or
SIGUSR1 — what SLURM and cloud schedulers send before they preempt a job — after which the run stops cleanly
and a restart resumes from that very batch.

Every rank takes the same decision at the same step (one tiny all-reduce when there are several); rank 0
writes the file, atomically, so a kill at any moment leaves the previous checkpoint the one resume picks.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from dinolab.config import Config
from dinolab.distributed import World, all_gather_object, all_reduce_int, barrier, new_gloo_group
from dinolab.io import LATEST, atomic_save, rng_state, save_run_checkpoint, training_state
from dinolab.train.sharded_checkpoint import ShardedSave, save_sharded
from dinolab.train.trainer import Trainer

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_SAVE, _STOP = 1, 2  # decisions, ordered so that the max over the ranks is what all must do


class Checkpointing:
    """Decides, step by step, whether to save and whether to stop; saves the training state."""

    def __init__(self, cfg: Config, world: World, run_dir: Path):
        self.cfg, self.world, self.run_dir = cfg, world, run_dir
        self.every_iterations = cfg.train.save_every_iterations
        self.every_seconds = cfg.train.save_every_minutes * 60
        self.last_save = time.monotonic()
        self.received: str | None = None  # the name of the preemption signal, once one arrived
        self.writing: threading.Thread | None = None  # train.async_save: the save still being written
        self.write_error: BaseException | None = None
        self.sharded_pending: ShardedSave | None = None  # the same for train.checkpoint_format=sharded
        background = cfg.train.async_save and cfg.train.checkpoint_format == "sharded" and world.distributed
        self.background_group = new_gloo_group() if background else None  # DCP's collectives, off the main group

    @contextmanager
    def catching_preemption(self) -> Iterator[None]:
        """While training, SIGTERM / SIGUSR1 only set a flag; the step in progress finishes first."""
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return

        def note(signum: int, _frame: FrameType | None) -> None:
            self.received = signal.Signals(signum).name

        previous = {s: signal.signal(s, note) for s in PREEMPTION_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def after_step(self, iteration: int) -> tuple[bool, bool]:
        """(save now, stop after saving), the same on every rank."""
        decision = _STOP if self.received else 0
        if self.every_iterations and iteration % self.every_iterations == 0:
            decision = max(decision, _SAVE)
        if self.every_seconds and time.monotonic() - self.last_save >= self.every_seconds:
            decision = max(decision, _SAVE)
        decision = all_reduce_int(decision, "max")  # a no-op for one process
        return decision >= _SAVE, decision == _STOP

    def save(self, trainer: Trainer, epochs_done: int, batches_done: int, iteration: int) -> None:
        """checkpoint.pth at this position; at an epoch end (batches_done 0) also checkpoint_EPOCH.pth.
        With train.checkpoint_format=sharded, checkpoint.dcp/ instead (train/sharded_checkpoint.py)."""
        if self.cfg.train.checkpoint_format == "sharded":
            self.wait()  # one save at a time, in order
            progress = {"epoch": epochs_done, "batches_done": batches_done, "iteration": iteration}
            pending = save_sharded(trainer, self.run_dir, self.world, progress, self.cfg.train.async_save,
                                   self.background_group)
            if self.cfg.train.async_save:
                self.sharded_pending = pending
            else:
                pending.finish()
            self.last_save = time.monotonic()
            return
        rng_by_rank = all_gather_object(rng_state()) if self.world.distributed else None
        trainer_state = trainer.state_dict()  # on every rank: gathering sharded (FSDP) tensors is a collective
        self.wait()  # one save at a time, in order
        if self.world.is_main:
            state = training_state(trainer_state, epochs_done, iteration, self.cfg, batches_done, rng_by_rank)
            if self.cfg.train.async_save:  # a copy (training goes on changing the weights), written meanwhile
                state = copy_tensors(state)
                self.writing = threading.Thread(target=self._write, args=(state, epochs_done, batches_done))
                self.writing.start()
            else:
                self._write(state, epochs_done, batches_done)
        if not self.cfg.train.async_save:
            barrier()  # no rank runs ahead (or exits) before the file is complete
        self.last_save = time.monotonic()

    def _write(self, state: dict[str, Any], epochs_done: int, batches_done: int) -> None:
        try:
            if batches_done:
                atomic_save(state, self.run_dir / LATEST)
            else:
                save_run_checkpoint(state, self.run_dir, epochs_done, self.cfg.train.keep_last)
        except BaseException as err:  # raised in the training thread by wait()
            self.write_error = err

    def wait(self) -> None:
        """Until an asynchronous save is on disk (before the next one, and before training ends); its error,
        if it failed, is raised here."""
        if self.writing is not None:
            self.writing.join()
            self.writing = None
        if self.sharded_pending is not None:
            pending, self.sharded_pending = self.sharded_pending, None
            pending.finish()
        if self.write_error is not None:
            error, self.write_error = self.write_error, None
            raise error


def copy_tensors(obj: Any) -> Any:
    """A copy of nested containers with every tensor cloned (what an asynchronous save writes)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: copy_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_tensors(v) for v in obj)
    return obj
