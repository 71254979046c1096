"""dinolab.progress: a tqdm bar on a terminal, periodic log lines anywhere else."""

from __future__ import annotations

import logging

import pytest
from tqdm import tqdm

from dinolab import progress as progress_lib
from dinolab.progress import LogProgress, progress


class Clock:
    """time.monotonic for progress.py, advanced by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_lib.time, "monotonic", fake)
    return fake


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dinolab.progress"]


def test_a_terminal_gets_a_tqdm_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    bar = progress(range(3), desc="x", tty=True, disable=True)
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2]
    monkeypatch.setattr(progress_lib, "stderr_is_terminal", lambda: True)
    assert isinstance(progress(range(3), disable=True), tqdm)
    monkeypatch.setattr(progress_lib, "stderr_is_terminal", lambda: False)
    assert isinstance(progress(range(3), disable=True), LogProgress)


def test_a_log_gets_a_line_every_interval_and_one_at_the_end(clock: Clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dinolab.progress")
    seen = []
    for i in progress(range(100), desc="features", unit="batch", interval=30, tty=False):
        seen.append(i)
        clock.now += 1.0  # one batch a second: a line after 30 and 60 and 90 batches
    assert seen == list(range(100))
    out = lines(caplog)
    assert out[:3] == [
        "features: 30/100 batch (30%), 1 batch/s, ETA 01:10",
        "features: 60/100 batch (60%), 1 batch/s, ETA 00:40",
        "features: 90/100 batch (90%), 1 batch/s, ETA 00:10",
    ]
    assert out[3] == "features: 100/100 batch in 01:40 (1 batch/s)"
    assert len(out) == 4  # not one line per item


def test_manual_updates_initial_position_and_postfix(clock: Clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dinolab.progress")
    bar = progress(total=1000, initial=400, desc="embed", unit="img", interval=10, tty=False)
    clock.now += 20
    bar.set_postfix(loss="0.123")
    bar.update(200)  # 200 images in 20 s since the start, whatever was done before
    bar.close()
    bar.close()  # closing twice logs once
    assert lines(caplog) == ["embed: 600/1000 img (60%), 10 img/s, ETA 00:40, loss=0.123",
                             "embed: 600/1000 img in 00:20 (10 img/s), loss=0.123"]


def test_disabled_or_early_exit(clock: Clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dinolab.progress")
    for _ in progress(range(5), interval=0, disable=True, tty=False):
        clock.now += 1
    assert lines(caplog) == []
    for i in progress(iter(range(5)), desc="loop", interval=100, tty=False):  # no length: no total, no ETA
        clock.now += 1
        if i == 2:
            break
    assert lines(caplog) == ["loop: 2 it in 00:03 (0.667 it/s)"]


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress_lib.log_interval() == 30.0
    monkeypatch.setenv("DINOLAB_PROGRESS_SECONDS", "5")
    assert progress(range(2), tty=False).interval == 5.0
    monkeypatch.setenv("DINOLAB_PROGRESS_SECONDS", "often")
    with pytest.raises(ValueError, match="DINOLAB_PROGRESS_SECONDS='often' is not a number of seconds"):
        progress(range(2), tty=False)


def test_write_prints_to_stdout(capsys) -> None:
    progress_lib.write("epoch 1/2: loss 3.1")
    assert capsys.readouterr().out == "epoch 1/2: loss 3.1\n"
