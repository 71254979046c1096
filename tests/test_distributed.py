"""Beyond one process: DDP under torchrun (gloo, 2 processes on this CPU) trains like one process on the same
global batch; mid-epoch saves, SIGTERM and SIGKILL leave a checkpoint that resumes exactly where it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from dinolab import config as config_lib
from dinolab.config import Config, ConfigError
from dinolab.io import CheckpointError, read_checkpoint, read_metrics, read_training_checkpoint
from dinolab.train import Trainer, fit
from dinolab.train.sharded_checkpoint import consolidate

# The same sums added in another order differ by ~1e-7; Adam's m / sqrt(v) turns that into at most a small
# fraction of one step (lr 1.6e-4 here) for parameters whose gradients are near 0: up to 5.2e-5 measured (one qkv
# bias element, ibot_sinkhorn) on a CPU without AVX-512 (EPYC Zen 3), whose fp32 kernels add in another order.
FP32_REDUCTION_TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def torchrun(cfg: Config, nproc: int, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`dinolab train CONFIG` under torchrun with `nproc` processes (gloo on this CPU)."""
    path = Path(cfg.train.output_dir).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "dinolab", "train", str(path), "--quiet", *extra]
    # PYTHONFAULTHANDLER: a rank that aborts (a rare SIGABRT under gloo on 2 busy cores) prints where every
    # thread was, which the failing assert shows
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def assert_close_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **FP32_REDUCTION_TOLERANCE, msg=lambda m, k=key: f"{k}: {m}")


def assert_same_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different[:5]}"


RECIPES = {
    "dino": {},
    # iBOT masks on the global crops and Sinkhorn-Knopp over the global batch (both reduced across ranks)
    "ibot_sinkhorn": {"mask": {"enabled": True, "probability": 0.5, "ratio": [0.1, 0.5]},
                      "loss": {"ibot_weight": 1.0, "centering": "sinkhorn"}, "head": {"patch_out_dim": 64}},
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_ddp_on_two_processes_trains_like_one_process(fmnist_dir: Path, tmp_path: Path, recipe: str) -> None:
    sections = {"optim": {"epochs": 1}, "model": {"drop_path_rate": 0.0}, **RECIPES[recipe],
                "eval": {"knn_every": 2, "knn_monitor_train": 32, "knn_monitor_test": 32}}
    one = tiny_config(fmnist_dir, tmp_path / "one", **sections)
    two = tiny_config(fmnist_dir, tmp_path / "two", **sections)
    fit(one, quiet=True)
    done = torchrun(two, 2)
    assert done.returncode == 0, done.stderr[-8000:]
    a, b = read_checkpoint(tmp_path / "one"), read_checkpoint(tmp_path / "two")
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"]) == (1, 4)
    assert_close_states(a["student"], b["student"])
    assert_close_states(a["teacher"], b["teacher"])
    assert len(b["rng_by_rank"]) == 2
    # the logged losses are the global batch's, step by step (rank 0 writes them)
    la, lb = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["iteration"] for r in la] == [r["iteration"] for r in lb]
    for ra, rb in zip(la, lb, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4, abs=1e-5)
        # the k-NN check, its features extracted half by each rank, scores like one process's
        assert (rb.get("knn_top1"), rb.get("knn_random_init")) == (ra.get("knn_top1"), ra.get("knn_random_init"))
    assert sum("knn_top1" in r for r in lb) == 2


def test_a_run_stopped_mid_epoch_resumes_from_that_batch_bit_for_bit(make_config) -> None:
    uninterrupted = make_config("straight", optim={"epochs": 2})
    stopped = make_config("stopped", optim={"epochs": 2}, train={"save_every_iterations": 3})
    fit(uninterrupted, quiet=True)
    # 4 iterations per epoch: saved at iterations 3, 4 (the epoch's end) and 6; stopped at 7 without a save
    first = fit(stopped, quiet=True, max_iterations=7)
    assert first.epochs_done == 1
    checkpoint = read_training_checkpoint(stopped.train.output_dir)
    assert (checkpoint.epoch, checkpoint.batches_done, checkpoint.iteration) == (1, 2, 6)
    fit(stopped, quiet=True)
    a, b = read_checkpoint(uninterrupted.train.output_dir), read_checkpoint(stopped.train.output_dir)
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"]) == (2, 8)
    for entry in ("student", "teacher"):
        assert_same_states(a[entry], b[entry])
    assert torch.equal(a["dino_loss"]["center"], b["dino_loss"]["center"])
    assert [r["iteration"] for r in read_metrics(stopped.train.output_dir)] == list(range(1, 9))


def test_sigterm_saves_at_the_step_boundary_and_the_restart_continues(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = make_config("straight", optim={"epochs": 2})
    preempted = make_config("preempted", optim={"epochs": 2})
    fit(uninterrupted, quiet=True)
    step, calls = Trainer.step, []

    def step_then_get_preempted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # the scheduler's SIGTERM arrives during the 6th step
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "step", step_then_get_preempted)
    result = fit(preempted, quiet=True)
    monkeypatch.undo()
    assert result.preempted == "SIGTERM" and len(calls) == 6  # the step in progress finished, no more began
    checkpoint = read_training_checkpoint(preempted.train.output_dir)
    assert (checkpoint.epoch, checkpoint.batches_done, checkpoint.iteration) == (1, 2, 6)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed after training
    fit(preempted, quiet=True)
    a, b = read_checkpoint(uninterrupted.train.output_dir), read_checkpoint(preempted.train.output_dir)
    for entry in ("student", "teacher"):
        assert_same_states(a[entry], b[entry])


def test_sigterm_on_the_command_line_exits_0_with_a_message(fmnist_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(fmnist_dir, tmp_path / "run", optim={"epochs": 200}, train={"log_every": 1})
    path = tmp_path / "run.yaml"
    config_lib.save(cfg, path)
    process = subprocess.Popen([sys.executable, "-m", "dinolab", "train", str(path), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "stopped by SIGTERM after saving; run the same command to resume" in out
    assert read_training_checkpoint(tmp_path / "run").iteration >= 3


def test_sigkill_at_any_moment_leaves_a_checkpoint_that_resumes_bit_for_bit(fmnist_dir: Path, tmp_path: Path) -> None:
    """Killed without warning (mid-step or mid-save), with a save after every iteration: the restart picks the
    last complete checkpoint and ends with the weights of a run that was never interrupted."""
    sections = {"optim": {"epochs": 6}, "train": {"save_every_iterations": 1, "num_threads": 1}}  # as in-process
    straight = tiny_config(fmnist_dir, tmp_path / "straight", **sections)
    killed = tiny_config(fmnist_dir, tmp_path / "killed", **sections)
    fit(straight, quiet=True)
    path = tmp_path / "killed.yaml"
    config_lib.save(killed, path)
    process = subprocess.Popen([sys.executable, "-m", "dinolab", "train", str(path), "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = int(torch.randint(2, 16, ()))  # kill right after the save of a random iteration: mid-step or mid-save
    deadline = time.monotonic() + 120
    while saved_iteration(tmp_path / "killed") < target and time.monotonic() < deadline:
        time.sleep(0.005)
    process.kill()
    process.wait(timeout=60)
    stopped_at = saved_iteration(tmp_path / "killed")
    fit(killed, quiet=True)
    a, b = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "killed")
    assert target <= stopped_at < 24 and b["iteration"] == 24
    for entry in ("student", "teacher"):
        assert_same_states(a[entry], b[entry])


def saved_iteration(run_dir: Path) -> int:
    """The iteration of the run's checkpoint.pth (0 before the first save)."""
    return read_training_checkpoint(run_dir).iteration if (run_dir / "checkpoint.pth").is_file() else 0


def test_a_world_the_config_cannot_use_is_refused_before_training(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=r"optim.batch_size=8 is the global batch .* a multiple of 3"):
        fit(make_config("three"), quiet=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train.parallel=none, but 2 processes"):
        fit(make_config("none", train={"parallel": "none"}), quiet=True)


def test_fsdp_trains_like_one_process_and_its_checkpoints_resume_either_way(fmnist_dir: Path, tmp_path: Path) -> None:
    """FSDP2 shards student and teacher over 2 processes; gradient clipping by a norm over many sharded
    parameters (DINOv2's per-module clip, set so low that it scales every step), the frozen last layer and the
    EMA work on the shards. Its checkpoints hold the full state one process writes, so a run saved under FSDP
    resumes in one process and a one-process run resumes under FSDP, both ending where a straight run ends."""
    sections = {"optim": {"epochs": 2, "clip_mode": "module", "clip_grad": 0.05}, "model": {"drop_path_rate": 0.0}}
    fit(tiny_config(fmnist_dir, tmp_path / "straight", **sections), quiet=True)
    expected = read_checkpoint(tmp_path / "straight")

    knn = {"knn_every": 4, "knn_monitor_train": 32, "knn_monitor_test": 32}  # rank 0 scores the gathered teacher
    done = torchrun(tiny_config(fmnist_dir, tmp_path / "fsdp", **sections, train={"parallel": "fsdp"}, eval=knn), 2)
    assert done.returncode == 0, done.stderr[-8000:]
    assert [r["iteration"] for r in read_metrics(tmp_path / "fsdp") if "knn_top1" in r] == [4, 8]
    sharded = read_checkpoint(tmp_path / "fsdp")
    for entry in ("student", "teacher"):
        assert_close_states(expected[entry], sharded[entry])
    assert expected["optimizer"]["param_groups"] == sharded["optimizer"]["param_groups"]
    for index, moments in expected["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sharded["optimizer"]["state"][index][name], moments[name], rtol=1e-3,
                                       atol=1e-7)

    # epoch 1 under FSDP, epoch 2 in one process
    one = tiny_config(fmnist_dir, tmp_path / "fsdp_then_one", **sections)
    fit(one, resume=tmp_path / "fsdp" / "checkpoint_0001.pth", quiet=True)
    # epoch 1 in one process, epoch 2 under FSDP
    fit(tiny_config(fmnist_dir, tmp_path / "one_then_fsdp", **sections), quiet=True, max_iterations=4)
    done = torchrun(tiny_config(fmnist_dir, tmp_path / "one_then_fsdp", **sections, train={"parallel": "fsdp"}), 2)
    assert done.returncode == 0, done.stderr[-8000:]
    for run in ("fsdp_then_one", "one_then_fsdp"):
        resumed = read_checkpoint(tmp_path / run)
        assert resumed["iteration"] == 8, run
        for entry in ("student", "teacher"):
            assert_close_states(expected[entry], resumed[entry])


def test_fsdp_needs_several_processes(make_config) -> None:
    with pytest.raises(ConfigError, match="train.parallel=fsdp shards the models over several processes"):
        fit(make_config("fsdp", train={"parallel": "fsdp"}), quiet=True)


def test_sharded_checkpoints_resume_at_another_world_size_and_consolidate(fmnist_dir: Path, tmp_path: Path) -> None:
    """train.checkpoint_format=sharded: each rank writes its shards (DCP). Epoch 1 in one process, epoch 2 under
    FSDP on 2 processes from that sharded checkpoint; `dinolab checkpoint consolidate` then gives one file that
    hub.load_backbone reads, with the weights of a straight run."""
    from dinolab.cli import main
    from dinolab.hub import load_backbone

    sections = {"optim": {"epochs": 2}, "model": {"drop_path_rate": 0.0}}
    fit(tiny_config(fmnist_dir, tmp_path / "straight", **sections), quiet=True)
    expected = read_checkpoint(tmp_path / "straight")
    sharded = {"checkpoint_format": "sharded"}
    fit(tiny_config(fmnist_dir, tmp_path / "run", **sections, train=sharded), quiet=True, max_iterations=4)
    folder = tmp_path / "run" / "checkpoint.dcp"
    assert (folder / ".metadata").is_file() and not (tmp_path / "run" / "checkpoint.pth").exists()
    # written in the background (DCP's async save on a gloo group of its own), mid-epoch and at the end
    background = {**sharded, "parallel": "fsdp", "async_save": True, "save_every_iterations": 2}
    done = torchrun(tiny_config(fmnist_dir, tmp_path / "run", **sections, train=background), 2)
    assert done.returncode == 0, done.stderr[-8000:]
    assert "resumed from" in done.stderr and "batch 0" in done.stderr
    assert len(list(folder.glob("*.distcp"))) == 2  # one file of shards per rank

    assert main(["checkpoint", "consolidate", str(tmp_path / "run"), "--out", str(tmp_path / "whole.pth")]) == 0
    whole = read_checkpoint(tmp_path / "whole.pth")
    assert (whole["epoch"], whole["iteration"]) == (2, 8)
    for entry in ("student", "teacher"):
        assert_close_states(expected[entry], whole[entry])
    backbone = load_backbone(tmp_path / "whole.pth")
    assert_close_states(backbone.state_dict(), read_training_checkpoint(tmp_path / "whole.pth").backbone_weights())


def test_an_incomplete_or_damaged_sharded_checkpoint_is_never_used_silently(make_config) -> None:
    cfg = make_config("run", optim={"epochs": 1}, train={"checkpoint_format": "sharded"})
    fit(cfg, quiet=True)
    run = Path(cfg.train.output_dir)
    (run / "checkpoint.dcp").rename(run / ".checkpoint.dcp.tmp")  # a save killed before its final rename
    assert fit(make_config("run", optim={"epochs": 1}, train={"checkpoint_format": "sharded"}),
               quiet=True).epochs_done == 1  # started over: nothing complete to resume from
    next((run / "checkpoint.dcp").glob("*.distcp")).unlink()  # a shard file lost
    with pytest.raises(CheckpointError, match="sharded checkpoint .*checkpoint.dcp cannot be read"):
        fit(make_config("run", optim={"epochs": 2}, train={"checkpoint_format": "sharded"}), quiet=True)


@pytest.mark.parametrize("checkpoint_format", ["file", "sharded"])
def test_asynchronous_saves_write_what_synchronous_ones_do(make_config, checkpoint_format: str) -> None:
    """train.async_save: the checkpoint (a copy of the state taken at the step) is written in a background
    thread while training goes on; the files are those of a synchronous run, and resume from them alike."""
    saving = {"save_every_iterations": 3, "checkpoint_format": checkpoint_format}
    sync = make_config("sync", optim={"epochs": 2}, train=saving)
    background = make_config("async", optim={"epochs": 2}, train={**saving, "async_save": True})
    fit(sync, quiet=True, max_iterations=7)
    fit(background, quiet=True, max_iterations=7)  # returns once the last save is on disk
    a, b = (saved_state(c) for c in (sync, background))
    assert (a["iteration"], a["batches_done"]) == (b["iteration"], b["batches_done"]) == (6, 2)
    for entry in ("student", "teacher"):
        assert_same_states(a[entry], b[entry])
    files = sorted(p.name for p in Path(background.train.output_dir).iterdir() if p.suffix in (".pth", ".dcp"))
    assert files == sorted(p.name for p in Path(sync.train.output_dir).iterdir() if p.suffix in (".pth", ".dcp"))
    assert files == (["checkpoint.pth", "checkpoint_0001.pth"] if checkpoint_format == "file" else ["checkpoint.dcp"])
    fit(sync, quiet=True)
    fit(background, quiet=True)
    a, b = (saved_state(c) for c in (sync, background))
    for entry in ("student", "teacher"):
        assert_same_states(a[entry], b[entry])


def saved_state(cfg: Config) -> dict:
    """The run's latest checkpoint, read through `consolidate` when it is sharded."""
    run = Path(cfg.train.output_dir)
    if cfg.train.checkpoint_format == "file":
        return read_checkpoint(run)
    return read_checkpoint(consolidate(run, run.parent / f"{run.name}_whole.pth"))


RANK_1_DIES = """
import os, sys
from dinolab import config
from dinolab.train import Trainer, fit

step = Trainer.step

def step_or_die(self, *args, **kwargs):
    if os.environ["RANK"] == "1":
        os._exit(3)  # a process that dies without a word (out of memory, a lost node)
    return step(self, *args, **kwargs)

Trainer.step = step_or_die
fit(config.load(sys.argv[1]), quiet=True)
"""


def test_a_rank_that_dies_stops_the_run_with_its_name_instead_of_a_hang(fmnist_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(fmnist_dir, tmp_path / "run", optim={"epochs": 1})
    config_lib.save(cfg, tmp_path / "run.yaml")
    (tmp_path / "dies.py").write_text(RANK_1_DIES)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "dies.py"), str(tmp_path / "run.yaml")],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "rank      : 1" in done.stderr and "exitcode  : 3" in done.stderr
    assert time.monotonic() - start < 120  # torchrun stopped rank 0 rather than letting it wait for rank 1
