"""The retry budget: fallbacks after a failed call may add at most a fixed share of the request rate.

A token bucket (like Finagle's RetryBudget and Envoy's retry_budget, without their rate floor): every request
deposits ``ratio`` tokens, a retry withdraws one, and the bucket holds at most ``burst`` tokens, full at
start. Over any N requests, retries <= ratio x N + burst, whatever the rate: with the defaults (0.15, 10)
calls per request stay <= 1.2 once N >= 200 (20 s at 10 req/s, 0.2 s at 1,000 req/s). A rate floor
(``min_per_s``, Finagle's minRetriesPerSec) breaks that bound on quiet models; it is kept only for configs
that set ``min_retries_per_second`` and is 0 by default.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class RetryBudget:
    """Token bucket: each request deposits ``ratio`` tokens, a retry costs one, at most ``burst`` are kept."""

    def __init__(self, ratio: float, min_per_s: float = 0.0, clock: Clock = time.monotonic,
                 burst: float = 10.0) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.capacity = max(1.0, burst)
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def deposit(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        """Whether one retry may be made now (and pay for it)."""
        if self.min_per_s > 0.0:
            now = self._clock()
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.min_per_s)
            self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def reconfigure(self, ratio: float, min_per_s: float, burst: float) -> None:
        """New settings from a reload; the tokens saved so far are kept (up to the new burst)."""
        self.ratio, self.min_per_s = ratio, min_per_s
        self.capacity = max(1.0, burst)
        self.tokens = min(self.tokens, self.capacity)
        self._last = self._clock()
