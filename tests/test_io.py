"""dinolab.io: atomic writes that survive a full disk with a clear message, atomic directories, safetensors
metadata, and a training run whose checkpoint save fails keeps the previous checkpoint."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch

from dinolab.io import (
    DiskFullError,
    atomic_directory,
    atomic_path,
    atomic_save,
    read_checkpoint,
    read_metadata,
    read_training_checkpoint,
)
from dinolab.train import fit

TORCH_DISK_FULL = RuntimeError(
    "[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64: PytorchStreamWriter failed writing "
    "file data/0: file write failed"
)


def fail_like_a_full_disk(error: BaseException):
    def save(obj, f, *args, **kwargs) -> None:
        Path(f).write_bytes(b"half a checkpoint")  # something was written before the disk filled up
        raise error

    return save


@pytest.mark.parametrize("error", [TORCH_DISK_FULL, OSError(errno.ENOSPC, "No space left on device")])
def test_a_full_disk_is_a_clear_error_and_the_previous_file_is_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    path = tmp_path / "checkpoint.pth"
    atomic_save({"w": torch.arange(4), "epoch": 1}, path)
    monkeypatch.setattr(torch, "save", fail_like_a_full_disk(error))
    with pytest.raises(DiskFullError) as info:
        atomic_save({"w": torch.zeros(2**18), "epoch": 2}, path)
    message = str(info.value)
    assert str(path) in message and "disk is full" in message
    assert "about 1.0 MiB needed" in message and "MiB free" in message  # 2**18 float32 = 1 MiB
    assert "previous checkpoint.pth is intact" in message
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # no temporary file left


def test_a_full_disk_on_a_new_file_says_nothing_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "save", fail_like_a_full_disk(TORCH_DISK_FULL))
    with pytest.raises(DiskFullError, match="nothing was written to"):
        atomic_save({"w": torch.zeros(3)}, tmp_path / "new.pth")
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_unchanged(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"partial")
        _ = 1 / 0
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "entry"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        np.save(tmp / "a.npy", np.arange(3))
        raise RuntimeError("crash while filling the entry")
    assert not target.exists() and list((tmp_path / "cache").iterdir()) == []
    with atomic_directory(target) as tmp:
        np.save(tmp / "a.npy", np.arange(3))
    assert np.array_equal(np.load(target / "a.npy"), np.arange(3))
    with atomic_directory(target) as tmp:  # another writer got there first: its entry is kept
        np.save(tmp / "a.npy", np.arange(5))
    assert np.array_equal(np.load(target / "a.npy"), np.arange(3))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["entry"]


def test_read_checkpoint_reads_safetensors_and_their_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.arange(3.0)}, str(tmp_path / "m.safetensors"), metadata={"layout": "dinov2"})
    assert torch.equal(read_checkpoint(tmp_path / "m.safetensors")["w"], torch.arange(3.0))
    assert read_metadata(tmp_path / "m.safetensors") == {"layout": "dinov2"}
    atomic_save({"w": torch.zeros(1)}, tmp_path / "m.pth")
    assert read_metadata(tmp_path / "m.pth") == {}


def test_training_with_a_full_disk_stops_with_the_message_and_keeps_the_last_checkpoint(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config("full_disk", optim={"epochs": 2})
    run = Path(cfg.train.output_dir)
    fit(make_config("full_disk", optim={"epochs": 1}), quiet=True)
    saved = (run / "checkpoint.pth").read_bytes()
    monkeypatch.setattr(torch, "save", fail_like_a_full_disk(TORCH_DISK_FULL))
    with pytest.raises(DiskFullError, match="previous checkpoint.pth is intact"):
        fit(cfg, quiet=True)
    monkeypatch.undo()
    assert (run / "checkpoint.pth").read_bytes() == saved
    assert read_training_checkpoint(run).epoch == 1
