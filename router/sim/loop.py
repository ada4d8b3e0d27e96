"""A discrete-event loop on a virtual clock: callbacks at times, run in time order (ties in the order scheduled)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count
from typing import Any

_push = heapq.heappush


class EventLoop:
    """``at(t, fn, arg)`` runs ``fn(arg)`` when the clock reaches ``t``. ``now`` is the virtual time."""

    __slots__ = ("_heap", "_seq", "draining", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self.draining = False  # the trace has ended: periodic work stops once it has nothing left to do
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = count()

    def clock(self) -> float:
        return self.now

    def at(self, t: float, fn: Callable[[Any], None], arg: Any = None) -> None:
        now = self.now
        _push(self._heap, (t if t > now else now, next(self._seq), fn, arg))

    def after(self, delay_s: float, fn: Callable[[Any], None], arg: Any = None) -> None:
        now = self.now
        t = now + delay_s  # as at(now + delay_s), without its call: models schedule every answer with it
        _push(self._heap, (t if t > now else now, next(self._seq), fn, arg))

    def run_until(self, t: float) -> None:
        """Run every event due at or before ``t``; the clock ends at ``t`` (or the last event run)."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= t:
            when, _, fn, arg = pop(heap)
            self.now = when
            fn(arg)
        if t != float("inf"):
            self.now = max(self.now, t)

    def __len__(self) -> int:
        return len(self._heap)
