"""Progress of long loops, fit for a terminal and for a log file alike.

On a terminal (stderr is a TTY) `progress` is a tqdm bar. Anywhere else (a file, a CI log, a pipe) a bar
would write a carriage-return line per update, thousands of them, so it logs one plain INFO line every
`interval` seconds (default 30, or $DINOLAB_PROGRESS_SECONDS) with the position, rate and ETA, and one
when the loop ends. Everything of dinolab that loops over data reports through here.

The bottom of the stack: imports the standard library and tqdm, nothing of dinolab.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

INTERVAL_ENV = "DINOLAB_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def stderr_is_terminal() -> bool:
    """Whether bars can redraw in place: tqdm writes to stderr."""
    return sys.stderr.isatty()


def log_interval() -> float:
    """Seconds between two log lines: $DINOLAB_PROGRESS_SECONDS, else 30."""
    value = os.environ.get(INTERVAL_ENV, "")
    try:
        return float(value) if value else DEFAULT_INTERVAL
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}={value!r} is not a number of seconds; set it to e.g. 30") from None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class LogProgress:
    """tqdm's interface (iterate, `update`, `set_postfix`, `close`) for output that is not a terminal:
    a log line every `interval` seconds and one at the end, nothing when `disable`."""

    def __init__(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None, initial: int = 0,
                 unit: str = "it", disable: bool = False, interval: float | None = None):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.unit, self.disable = iterable, desc, total, unit, disable
        self.interval = log_interval() if interval is None else interval
        self.n = self._start_n = initial
        self.postfix = ""
        self._start = self._last_log = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self._last_log >= self.interval:
            self._last_log = now
            log.info("%s", self.line(now))

    def set_postfix(self, **values: Any) -> None:
        """Shown at the end of the next log line, like tqdm's postfix."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not (self._closed or self.disable):
            log.info("%s", self.line(time.monotonic(), done=True))
        self._closed = True

    def line(self, now: float, done: bool = False) -> str:
        """`desc: n/total unit (p%), rate, ETA` while running; `desc: n/total unit in time (rate)` at the end."""
        elapsed = now - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        position = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        speed = f"{rate:.3g} {self.unit}/s"
        if done:
            text = f"{self.desc}: {position} in {_duration(elapsed)} ({speed})"
        elif self.total:
            eta = f", ETA {_duration(max(0, self.total - self.n) / rate)}" if rate > 0 else ""
            text = f"{self.desc}: {position} ({100 * self.n / self.total:.0f}%), {speed}{eta}"
        else:
            text = f"{self.desc}: {position}, {speed}"
        return f"{text}, {self.postfix}" if self.postfix else text


def progress(
    iterable: Iterable | None = None,
    desc: str = "",
    total: int | None = None,
    initial: int = 0,
    unit: str = "it",
    disable: bool = False,
    leave: bool = False,
    interval: float | None = None,
    tty: bool | None = None,
) -> tqdm | LogProgress:
    """A tqdm bar over `iterable` on a terminal, else a `LogProgress` (log lines every `interval` seconds).

    Without an iterable, advance it with `update(n)` and `close()` it.
    `tty`: None detects whether stderr is a terminal; True / False force the bar / the log lines.
    `leave` keeps a finished bar on screen (log lines always stay).
    """
    if stderr_is_terminal() if tty is None else tty:
        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, disable=disable, leave=leave)
    return LogProgress(iterable, desc, total, initial, unit, disable, interval)


def write(message: str) -> None:
    """Print a line to stdout without breaking a bar that is being drawn (tqdm.write)."""
    tqdm.write(message)
