"""Sharded checkpoints (`train.checkpoint_format=sharded`): `torch.distributed.checkpoint` (DCP) writes each
rank's shards of the student, teacher and optimizer in parallel, without ever gathering a whole model on one
process — what models too large for one host's memory need.

A save goes to a temporary folder; DCP writes its `.metadata` last, after every rank's shards, and only then
does rank 0 rename the folder to `checkpoint.dcp`, so an interrupted save is never picked up. Beside the
shards: `config.yaml`, `progress.json` (epoch, batch, iteration) and `rng.pt` (every rank's RNG states).
DCP re-shards on load, so a sharded checkpoint resumes at any world size, under FSDP, DDP or in one process;
`dinolab checkpoint consolidate` turns it into the one-file format every loader reads.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed import ProcessGroup

from dinolab import config as config_lib
from dinolab.distributed import World, active, all_gather_object, barrier
from dinolab.io import CheckpointError, atomic_save, rng_state, set_rng_state, training_state
from dinolab.train.trainer import Trainer

log = logging.getLogger(__name__)

SHARDED = "checkpoint.dcp"
METADATA = ".metadata"  # written by DCP after all the shards: a folder without it is incomplete
MODEL_ENTRIES = ("student", "teacher")

# One process saves and loads with no_dist=True on purpose, also in DCP's background thread (an asynchronous
# save), out of reach of a catch_warnings block: DCP's notice that it assumes one process is noise here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def sharded_dir(path: Path) -> Path | None:
    """The complete sharded checkpoint `path` is, or its run dir holds (also after a crash between the two
    renames of a save, when only the previous one, moved aside, is complete); None if there is none."""
    for candidate in (path, path / SHARDED, path / f".{SHARDED}.old"):
        if (candidate / METADATA).is_file():
            return candidate
    return None


def _dcp_state(trainer: Trainer) -> dict[str, Any]:
    """What DCP saves and loads in place: model and optimizer state dicts in their sharded form (plain tensors
    for unsharded models), and the loss centers and scaler."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state: dict[str, Any] = {
        "student": get_model_state_dict(trainer.student),
        "teacher": get_model_state_dict(trainer.teacher),
        "optimizer": get_optimizer_state_dict(trainer.student, trainer.optimization.optimizer),
        "dino_loss": trainer.dino_loss.state_dict(),
    }
    if trainer.ibot_loss is not None:
        state["ibot_loss"] = trainer.ibot_loss.state_dict()
    return state


@dataclass
class ShardedSave:
    """A sharded save under way into its temporary folder. `finish()` (on every rank) waits until the shards
    and the metadata are written, when the save runs in the background, and then moves the folder into place."""

    tmp: Path
    world: World
    writing: Future | None = None  # train.async_save: DCP's background write

    def finish(self) -> Path:
        if self.writing is not None:
            self.writing.result()  # raises the write's error, if it failed
        barrier()
        final, old = self.tmp.parent / SHARDED, self.tmp.parent / f".{SHARDED}.old"
        if self.world.is_main:
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            self.tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final


def save_sharded(
    trainer: Trainer, run_dir: Path, world: World, progress: dict[str, int], asynchronous: bool = False,
    process_group: ProcessGroup | None = None,
) -> ShardedSave:
    """Every rank writes its shards into a temporary folder; `finish()` then moves it into place.
    `asynchronous`: DCP copies the state to CPU memory now and writes it in a thread while training goes on
    (`dcp.async_save`); its collectives then need a `process_group` of their own, apart from the training's."""
    import torch.distributed.checkpoint as dcp

    tmp = run_dir / f".{SHARDED}.tmp"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config_lib.save(trainer.cfg, tmp / "config.yaml")
        (tmp / "progress.json").write_text(json.dumps(progress))
    rngs = all_gather_object(rng_state())
    barrier()
    if world.is_main:
        atomic_save({"rng_by_rank": rngs}, tmp / "rng.pt")
    if asynchronous:
        writing = dcp.async_save(_dcp_state(trainer), checkpoint_id=tmp, no_dist=not active(),
                                 process_group=process_group)
        return ShardedSave(tmp, world, writing)
    dcp.save(_dcp_state(trainer), checkpoint_id=tmp, no_dist=not active())
    return ShardedSave(tmp, world)


def load_sharded(trainer: Trainer, folder: Path, world: World) -> dict[str, int]:
    """Restore a sharded checkpoint into `trainer` (any world size or parallelism); returns its progress."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = _dcp_state(trainer)
    try:
        dcp.load(state, checkpoint_id=folder, no_dist=not active())
    except (CheckpointException, OSError, RuntimeError, ValueError) as err:  # e.g. a shard file that is gone
        raise CheckpointError(
            f"sharded checkpoint {folder} cannot be read (missing or damaged shard files, or another model): "
            f"{str(err)[:500]}; resume from another checkpoint (--resume) or start over (--no-resume)"
        ) from err
    for entry in MODEL_ENTRIES:
        set_model_state_dict(getattr(trainer, entry), state[entry])
    set_optimizer_state_dict(trainer.student, trainer.optimization.optimizer, state["optimizer"])
    trainer.dino_loss.load_state_dict(state["dino_loss"])
    if trainer.ibot_loss is not None:
        trainer.ibot_loss.load_state_dict(state["ibot_loss"])
    rngs = torch.load(folder / "rng.pt", weights_only=True)["rng_by_rank"]
    set_rng_state(rngs[world.rank] if len(rngs) == world.size else rngs[0])
    return json.loads((folder / "progress.json").read_text())


def consolidate(run_dir: str | Path, out: str | Path) -> Path:
    """A run's sharded checkpoint as one file in the standard format (what resume, `dinolab.hub.load_backbone`
    and `dinolab eval` read), on this one process."""
    from dinolab.device import resolve

    run_dir = Path(run_dir)
    folder = sharded_dir(run_dir)
    if folder is None:
        raise CheckpointError(f"{run_dir}: no complete sharded checkpoint ({SHARDED}/ with its {METADATA}) found")
    cfg = config_lib.load(folder / "config.yaml")
    trainer = Trainer(cfg, resolve("cpu", "fp32"))
    progress = load_sharded(trainer, folder, World())
    state = training_state(trainer.state_dict(), progress["epoch"], progress["iteration"], cfg,
                           progress["batches_done"])
    return atomic_save(state, out)
