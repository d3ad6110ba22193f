"""Progress of a long stage. On a terminal, a tqdm bar; anywhere else (a scheduler, output redirected to a file) a
bar shows nothing for hours, so a plain line every `interval` seconds instead, with the rate and the time left, and
one when the stage ends."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO

from tqdm import tqdm


class LogProgress:
    """tqdm's `update`/`close` as log lines: "<desc>: 1200/10000 images (12.0 %), 20.4 images/s, 7 min 12 s left"."""

    def __init__(self, total: int | None, desc: str, unit: str, interval: float, stream: TextIO):
        self.total, self.desc, self.unit, self.interval, self.stream = total, desc, unit, interval, stream
        self.done = 0
        self.started = self.last = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float, ended: bool = False, stopped: bool = False) -> str:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.1f} %)" if self.total else ""
        counted = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        units = self.unit + ("es" if self.unit.endswith(("ch", "sh", "s", "x")) else "s")
        text = f"{self.desc}: {counted} {units}{share}, {rate:.2f} {units}/s"
        if stopped:
            return text + f", stopped after {duration(elapsed)}"
        if ended:
            return text + f", done in {duration(elapsed)}"
        if self.total and rate > 0:
            return text + f", {duration((self.total - self.done) / rate)} left"
        return text

    def close(self, stopped: bool = False) -> None:
        """The last line: done, or stopped (the stage raised)."""
        if not self.closed and self.done:  # a stage with nothing to do says nothing
            self.stream.write(self.line(time.monotonic(), ended=True, stopped=stopped) + "\n")
            self.stream.flush()
        self.closed = True


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


class NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self, stopped: bool = False) -> None:
        pass


class BarProgress:
    """tqdm's bar, closed as the others are."""

    def __init__(self, bar: tqdm):
        self.bar = bar

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self, stopped: bool = False) -> None:
        self.bar.close()


def progress_bar(total: int | None, desc: str, unit: str, show: bool, interval: float,
                 stream: TextIO | None = None):
    """A tqdm bar where `stream` (stderr) is a terminal, log lines every `interval` seconds elsewhere, nothing
    without `show`."""
    stream = stream or sys.stderr
    if not show or stream is None:  # no stderr at all (pythonw, a detached service)
        return NoProgress()
    if stream.isatty():
        return BarProgress(tqdm(total=total, desc=desc, unit=unit, leave=False, file=stream))
    return LogProgress(total, desc, unit, interval, stream)


def progress(iterable: Iterable, total: int, desc: str, show: bool, interval: float, unit: str = "batch") -> Iterator:
    """Each item of `iterable`, counted once the caller is done with it."""
    bar = progress_bar(total, desc, unit, show, interval)
    stopped = True
    try:
        for item in iterable:
            yield item
            bar.update(1)
        stopped = False
    finally:
        bar.close(stopped)
