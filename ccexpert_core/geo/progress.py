"""A one-line progress bar for long region runs: tiles done/total, tiles per second, time left."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressBar:
    """Call it with ``(0, total)`` when work starts (the clock starts then) and ``(done, total)`` after each batch;
    it redraws in place on a terminal, and prints a line at most every ``log_interval`` seconds elsewhere (so
    that logs stay readable)."""

    def __init__(self, stream: TextIO | None = None, label: str = "tiles", log_interval: float = 30.0) -> None:
        self.stream = stream or sys.stderr  # looked up now, not at import, so that redirections are honoured
        self.label = label
        self.log_interval = log_interval
        self.interactive = self.stream.isatty()
        self.started = time.monotonic()
        self.last_line = float("-inf")

    def line(self, done: int, total: int) -> str:
        """The text shown for ``done`` of ``total``."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = done / elapsed
        eta = _clock((total - done) / rate) if rate > 0 else "?"
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "-" * (width - filled)
        return f"[{bar}] {done}/{total} {self.label}  {rate:.2f} {self.label}/s  ETA {eta}"

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0:
            self.started = now
        finished = done >= total
        if self.interactive:
            self.stream.write("\r" + self.line(done, total) + ("\n" if finished else ""))
        elif finished or now - self.last_line >= self.log_interval:
            self.stream.write(self.line(done, total) + "\n")
            self.last_line = now
        self.stream.flush()
