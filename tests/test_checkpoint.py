"""Checkpoints: atomic writes, history pruning, safe (weights-only) loading, architecture checks, RNG state."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_vit
from torch import nn

from dinolab import config as config_lib
from dinolab.hub import load_model
from dinolab.io import (
    LATEST,
    CheckpointError,
    atomic_save,
    load_state_strict,
    read_checkpoint,
    read_training_checkpoint,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
)
from dinolab.models import VisionTransformer
from dinolab.train import fit


def test_atomic_save_writes_the_file_and_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ckpt.pth"
    atomic_save({"w": torch.arange(5), "epoch": 3}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pth"]
    state = read_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(5)) and state["epoch"] == 3
    atomic_save({"epoch": 4}, path)  # overwrite in place
    assert read_checkpoint(path)["epoch"] == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pth"]


def test_atomic_save_failure_leaves_the_old_file_and_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    atomic_save({"epoch": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        atomic_save({"epoch": 2, "bad": lambda: None}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
    assert read_checkpoint(path)["epoch"] == 1


def test_save_run_checkpoint_keeps_only_the_last_ones(tmp_path: Path) -> None:
    for epoch in range(1, 6):
        latest = save_run_checkpoint({"epoch": epoch, "w": torch.full((3,), float(epoch))}, tmp_path, epoch, 2)
        assert latest == tmp_path / LATEST
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "checkpoint_0004.pth",
                                                         "checkpoint_0005.pth"]
    assert read_checkpoint(tmp_path)["epoch"] == 5  # a run directory means its checkpoint.pth
    # the numbered copies keep their own epoch after checkpoint.pth moved on
    assert read_checkpoint(tmp_path / "checkpoint_0004.pth")["epoch"] == 4
    assert torch.equal(read_checkpoint(tmp_path / "checkpoint_0005.pth")["w"], torch.full((3,), 5.0))


def test_save_run_checkpoint_keep_last_one(tmp_path: Path) -> None:
    for epoch in (1, 2, 3):
        save_run_checkpoint({"epoch": epoch}, tmp_path, epoch, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "checkpoint_0003.pth"]


class Exploit:
    """Unpickling this would create a file: a weights-only loader must refuse it before that happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_read_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": Exploit(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert "weights-only" in str(info.value)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_read_checkpoint_refuses_a_custom_class(tmp_path: Path) -> None:
    path = tmp_path / "custom.pth"
    torch.save({"net": nn.Linear(2, 2)}, path)  # a whole module, not a state dict
    with pytest.raises(CheckpointError, match="weights-only"):
        read_checkpoint(path)


def test_read_checkpoint_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(path)


def test_read_checkpoint_missing_and_not_a_dict(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path)  # a directory without checkpoint.pth
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_checkpoint(tmp_path / "tensor.pth")


def test_load_state_strict_lists_every_problem() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = model.state_dict()
    state["1.weight"] = torch.zeros(5, 3)  # shape
    del state["1.bias"]  # missing
    state["2.weight"] = torch.zeros(1)  # unexpected
    with pytest.raises(CheckpointError) as info:
        load_state_strict(model, state, "my checkpoint")
    message = str(info.value)
    assert message.startswith("my checkpoint")
    assert "missing keys: 1.bias" in message
    assert "unexpected keys: 2.weight" in message
    assert "1.weight: checkpoint (5, 3) vs model (2, 3)" in message


def test_load_state_strict_loads_a_matching_state() -> None:
    source, target = small_vit(), small_vit()
    load_state_strict(target, source.state_dict(), "source")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(),
                                                 strict=True))


def test_load_state_strict_abbreviates_long_lists() -> None:
    deep, shallow = small_vit(depth=4), small_vit(depth=1)
    with pytest.raises(CheckpointError) as info:
        load_state_strict(shallow, deep.state_dict(), "deep.pth")
    message = str(info.value)
    n_unexpected = len(set(deep.state_dict()) - set(shallow.state_dict()))
    assert n_unexpected > 8
    assert f"({n_unexpected} in all)" in message
    assert "blocks.1." in message


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    np.random.normal()  # leave a cached gaussian in numpy's state
    random.gauss(0, 1)
    atomic_save({"rng": rng_state()}, tmp_path / "rng.pth")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.normal(),
                random.gauss(0, 1))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(read_checkpoint(tmp_path / "rng.pth")["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.normal(),
           random.gauss(0, 1))
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


# ---------------------------------------------------------------- training checkpoints


def test_load_model_of_a_training_checkpoint(trained_run: Path) -> None:
    loaded = load_model(trained_run / "checkpoint.pth")
    model, cfg = loaded.backbone, loaded.config
    assert isinstance(model, VisionTransformer)
    assert not model.training
    assert cfg == config_lib.load(trained_run / "config.yaml")
    teacher = read_checkpoint(trained_run)["teacher"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, teacher[f"backbone.{key}"]), key
    assert all(block.drop_path.p == 0.0 for block in model.blocks)  # evaluated without stochastic depth
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, model.embed_dim)
    again = load_model(trained_run).backbone  # a run directory works too
    assert torch.equal(again.pos_embed, model.pos_embed)


def rewrite_checkpoint(src: Path, dst: Path, **config_sections: dict) -> Path:
    """Copy a training checkpoint, changing its recorded config (the weights stay those of `src`)."""
    state = read_checkpoint(src)
    for section, values in config_sections.items():
        state["config"][section].update(values)
    torch.save(state, dst)
    return dst


def test_load_model_of_another_architecture(trained_run: Path, tmp_path: Path) -> None:
    deeper = rewrite_checkpoint(trained_run / "checkpoint.pth", tmp_path / "deeper.pth", model={"depth": 2})
    with pytest.raises(CheckpointError) as info:
        load_model(deeper)
    message = str(info.value)
    assert "missing keys" in message and "blocks.1.attn.qkv.weight" in message
    assert str(deeper) in message

    bigger = rewrite_checkpoint(trained_run / "checkpoint.pth", tmp_path / "bigger.pth",
                                model={"img_size": 56}, data={"global_crops_size": 56})
    with pytest.raises(CheckpointError, match=r"pos_embed: checkpoint \(1, 17, 192\) vs model \(1, 65, 192\)"):
        load_model(bigger)


def test_read_training_checkpoint_needs_a_training_checkpoint(tmp_path: Path) -> None:
    torch.save({"model": small_vit().state_dict()}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a dinolab training checkpoint"):
        read_training_checkpoint(tmp_path / "plain.pth")


def test_resuming_with_another_architecture_fails_with_the_keys(
    trained_run: Path, make_config
) -> None:
    cfg = make_config("other_arch", model={"depth": 2}, optim={"epochs": 1})
    run = Path(cfg.train.output_dir)
    run.mkdir(parents=True)
    shutil.copy(trained_run / "checkpoint.pth", run / "checkpoint.pth")
    with pytest.raises(CheckpointError) as info:
        fit(cfg, quiet=True)
    message = str(info.value)
    assert "(student)" in message and "missing keys" in message and "backbone.blocks.1." in message
    assert os.path.getsize(run / "checkpoint.pth") == os.path.getsize(trained_run / "checkpoint.pth")  # untouched
