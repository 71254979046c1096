"""File I/O, in one place: atomic writes, reading checkpoints (a file or a run dir), the training-state
format, and the report of a state dict that does not fit a model.

Everything that writes a file that must never be half-written (checkpoints, exports, embeddings, feature
caches) goes through `atomic_path` / `atomic_directory`. Everything that reads a checkpoint goes through
`read_checkpoint`: files are untrusted input, loaded `weights_only` (no code runs), errors name the file.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dinolab.config import Config, from_dict

LATEST = "checkpoint.pth"  # the newest checkpoint of a run directory; resume starts from it
METRICS = "metrics.jsonl"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, used or written; the message names the file and the problem."""


class DiskFullError(CheckpointError):
    """A write that failed for lack of space; whatever was at the path before is untouched."""


# --- atomic writes ---------------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the block has written it, fsync and rename it over `path`.

    A crash, an exception or a full disk leaves `path` as it was (the temporary file is removed), so a
    reader never sees a half-written file. `needed_bytes` (if known) goes into the disk-full message."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)) and _is_disk_full(err):
            raise DiskFullError(_disk_full_message(path, needed_bytes)) from err
        raise


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; once filled, rename it to `path` (which must not exist yet).

    If another process created `path` meanwhile, its copy is kept and ours is dropped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    except BaseException as err:
        if isinstance(err, (OSError, RuntimeError)) and _is_disk_full(err):
            raise DiskFullError(_disk_full_message(path, None)) from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save through `atomic_path`."""
    with atomic_path(path, needed_bytes=tensor_bytes(obj)) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_write_text(text: str, path: str | Path) -> Path:
    with atomic_path(path, needed_bytes=len(text.encode())) as tmp:
        tmp.write_text(text)
    return Path(path)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors inside nested containers: about what a torch.save of `obj` needs on disk."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save's zip writer reports ENOSPC as "[enforce fail at inline_container.cc] ... file write failed"
    return isinstance(err, RuntimeError) and "file write failed" in str(err)


def _disk_full_message(path: Path, needed_bytes: int | None) -> str:
    free = shutil.disk_usage(path.parent).free
    needed = f"about {_mib(needed_bytes)} needed, " if needed_bytes else ""
    kept = f"the previous {path.name} is intact" if path.exists() else f"nothing was written to {path}"
    return (f"could not write {path}: the disk is full ({needed}{_mib(free)} free on {path.parent}); {kept}. "
            "Free some space (or point train.output_dir elsewhere) and run again.")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading -----------------------------------------------------------------------------------------------------


def checkpoint_file(source: str | Path) -> Path:
    """A checkpoint file, or a run directory's newest checkpoint (`checkpoint.pth`)."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / LATEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    return path


def read_checkpoint(source: str | Path) -> dict[str, Any]:
    """The dict stored in a `.pth`/`.pt` or `.safetensors` file, or in a run directory's newest checkpoint.

    Torch files load with `weights_only=True`: tensors and plain containers only, plus
    `argparse.Namespace` (the `args` entry of DINO's and iBOT's full training checkpoints)."""
    path = checkpoint_file(source)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"(only weights-only checkpoints are loaded, since a pickle can run code): {err}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {err}") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of state, found {type(obj).__name__}")
    return obj


def read_metadata(source: str | Path) -> dict[str, str]:
    """A safetensors file's metadata (its header only); {} for any other file."""
    path = checkpoint_file(source)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err


def load_state_strict(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """load_state_dict that lists every missing, unexpected or mis-shaped key before failing."""
    check_state_fits(module, state, source)
    module.load_state_dict(state)


def check_state_fits(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """A CheckpointError listing every missing, unexpected or mis-shaped key of `state` for `module`."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = [
            f"{title}: {short_list(items)}"
            for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", shapes))
            if items
        ]
        raise CheckpointError(
            f"{source} does not fit this model (another architecture or config?) - " + "; ".join(parts)
        )


def short_list(items: Any, limit: int = 8) -> str:
    """'a, b, c, ... (N in all)': names in error messages without a thousand-key dump."""
    items = sorted(map(str, items))
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


# --- the training state --------------------------------------------------------------------------------------------
# A dinolab checkpoint is one dict: the trainer's entries (student, teacher: MultiCropWrapper state dicts whose
# backbone keys start with "backbone."; optimizer; dino_loss / ibot_loss centers; scaler), then where training
# stands (epoch: epochs completed; batches_done: batches of the next epoch already trained, for mid-epoch
# saves; iteration), the RNG states (rng: rank 0's; rng_by_rank: every rank's, in multi-process runs) and
# the resolved config.

BACKBONE_PREFIX = "backbone."


@dataclass
class TrainingCheckpoint:
    """A dinolab training checkpoint, read and checked: its state dict, its config, and where it came from."""

    path: Path
    state: dict[str, Any]
    config: Config

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def iteration(self) -> int:
        return int(self.state.get("iteration", 0))

    @property
    def batches_done(self) -> int:
        """Batches of epoch `epoch` (0-based) already trained: a mid-epoch save resumes after them."""
        return int(self.state.get("batches_done", 0))

    def backbone_weights(self, entry: str = "teacher") -> dict[str, Tensor]:
        """The ViT's weights inside `entry` (the EMA teacher by default: the model DINO evaluates)."""
        return backbone_weights(self.state[entry])

    def restore_rng(self, rank: int = 0, world_size: int = 1) -> bool:
        """Put this rank's global RNGs back where they were when the checkpoint was saved (bit-identical
        resume). Returns False when the checkpoint has no state for this rank (another world size): rank
        0's is restored then, and the caller decides how the other ranks diverge from it."""
        by_rank = self.state.get("rng_by_rank")
        if by_rank is not None and len(by_rank) == world_size:
            set_rng_state(by_rank[rank])
            return True
        set_rng_state(self.state["rng"])
        return rank == 0 and world_size == 1


def backbone_weights(wrapper_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The backbone's part of a MultiCropWrapper state dict (student or teacher), in the ViT's own names."""
    return {k.removeprefix(BACKBONE_PREFIX): v for k, v in wrapper_state.items() if k.startswith(BACKBONE_PREFIX)}


def is_training_checkpoint(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("teacher"), dict) and isinstance(obj.get("config"), dict)


def read_training_checkpoint(source: str | Path) -> TrainingCheckpoint:
    """A dinolab training checkpoint (file or run dir); anything else is a CheckpointError naming the file."""
    path = checkpoint_file(source)
    state = read_checkpoint(path)
    if not is_training_checkpoint(state):
        raise CheckpointError(
            f"{path}: not a dinolab training checkpoint (needs 'teacher' and 'config' entries, found "
            f"{short_list(state)})"
        )
    return TrainingCheckpoint(path, state, from_dict(state["config"]))


def training_state(
    trainer_state: dict[str, Any],
    epoch: int,
    iteration: int,
    config: Config,
    batches_done: int = 0,
    rng_by_rank: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The dict a checkpoint holds: the trainer's entries plus progress, RNG states and config."""
    state = {**trainer_state, "epoch": epoch, "batches_done": batches_done, "iteration": iteration,
             "rng": rng_state(), "config": config.to_dict()}
    if rng_by_rank is not None:
        state["rng_by_rank"] = rng_by_rank
    return state


def save_run_checkpoint(state: dict[str, Any], run_dir: str | Path, epoch: int, keep_last: int) -> Path:
    """Save `checkpoint.pth` plus a hard-linked `checkpoint_EPOCH.pth`; keep the newest `keep_last` of those."""
    run_dir = Path(run_dir)
    latest = atomic_save(state, run_dir / LATEST)
    named = run_dir / f"checkpoint_{epoch:04d}.pth"
    named.unlink(missing_ok=True)
    try:
        os.link(latest, named)
    except OSError:  # file systems without hard links
        atomic_save(state, named)
    for old in sorted(run_dir.glob("checkpoint_[0-9]*.pth"))[:-keep_last]:
        old.unlink()
    return latest


def rng_state() -> dict[str, Any]:
    """torch, numpy and Python RNG states as tensors and plain values (so weights-only loading reads them)."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- run directory -------------------------------------------------------------------------------------------------


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The logged steps of a run (metrics.jsonl), oldest first; [] when there are none."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
