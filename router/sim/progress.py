"""A progress bar for long runs, on stderr when it is a terminal (never in pipes, logs or tests)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``update(done)`` redraws at most 10 times a second; ``total`` may be an estimate (or 0: unknown)."""

    def __init__(self, label: str, total: float, out: TextIO | None = None, force: bool = False) -> None:
        self.out = out or sys.stderr
        self.on = force or self.out.isatty()
        self.label = label
        self.total = total
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: float) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if now - self._drawn < 0.1:
            return
        self._drawn = now
        rate = done / max(1e-9, now - self.started)
        if self.total > 0:
            share = min(1.0, done / self.total)
            bar = "#" * int(share * 30)
            eta = (self.total - done) / rate if rate > 0 and done < self.total else 0.0
            line = f"\r{self.label} [{bar:<30}] {share:4.0%} {done:,.0f} requests, {rate:,.0f}/s, ETA {eta:,.0f} s "
        else:
            line = f"\r{self.label} {done:,.0f} requests, {rate:,.0f}/s "
        self.out.write(line)
        self.out.flush()

    def close(self) -> None:
        if self.on:
            self.out.write("\r" + " " * 100 + "\r")
            self.out.flush()
