"""The circuit breaker of one backend: opens on a failure *rate* over a window (with a minimum volume) or on a
run of consecutive failures, and keeps probing with a share of traffic while open.

Like Envoy's outlier detection (``failure_percentage_threshold`` with ``failure_percentage_request_volume``)
and resilience4j's sliding-window breaker, a backend that fails some calls at random is not shut out: it
opens only when most calls fail. A dead backend (every call refused) still opens within ``failures`` calls.
While open, every ``1/probe_share``-th request asking for the backend is let through as a probe (and,
after ``open_for_s``, one probe at a time as well, so a backend nobody routes to is still retried); the
first probe that succeeds closes it, with a fresh window.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.types import BreakerState

BUCKETS = 10  # the window is kept as this many time buckets
# Enum members as module constants: reading ``BreakerState.OPEN`` costs ~0.1 µs each time in Python 3.11
_CLOSED, _OPEN, _HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failures: int = 10  # consecutive health failures that open it at once
    failure_rate: float = 0.8  # ...or this share of calls failing over the window
    min_requests: int = 20  # ...once the window holds at least this many calls
    window_s: float = 10.0
    open_for_s: float = 10.0  # after this, one probe at a time on top of the share
    probe_share: float = 0.1  # while open, this share of requests still goes through as probes


class FailureWindow:
    """Calls and failures over the last ``window_s`` seconds, in ``BUCKETS`` time buckets."""

    __slots__ = ("_bucket_s", "_calls", "_failures", "_ids")

    def __init__(self, window_s: float) -> None:
        self._bucket_s = window_s / BUCKETS
        self._ids = [-1] * BUCKETS
        self._calls = [0] * BUCKETS
        self._failures = [0] * BUCKETS

    def add(self, now: float, failed: bool) -> None:
        bucket = int(now // self._bucket_s)
        i = bucket % BUCKETS
        if self._ids[i] != bucket:
            self._ids[i], self._calls[i], self._failures[i] = bucket, 0, 0
        self._calls[i] += 1
        if failed:
            self._failures[i] += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the buckets still inside the window at ``now``."""
        oldest = int(now // self._bucket_s) - BUCKETS + 1
        calls = failures = 0
        for i in range(BUCKETS):
            if self._ids[i] >= oldest:
                calls += self._calls[i]
                failures += self._failures[i]
        return calls, failures

    def clear(self) -> None:
        self._calls = [0] * BUCKETS
        self._failures = [0] * BUCKETS


class Breaker:
    """One backend's breaker. ``admits`` before a call, ``on_start`` when it is made, ``on_result`` after."""

    __slots__ = ("_opened_at", "_probe_inflight", "_turned_away", "consecutive", "settings", "state", "window")

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.state = BreakerState.CLOSED
        self.window = FailureWindow(settings.window_s)
        self.consecutive = 0
        self._opened_at = 0.0
        self._probe_inflight = False
        self._turned_away = 0

    def current(self, now: float) -> BreakerState:
        state = self.state
        if state is _OPEN and now - self._opened_at >= self.settings.open_for_s:
            state = self.state = _HALF_OPEN
        return state

    @property
    def probing(self) -> bool:
        """A probe is in flight (while not closed)."""
        return self._probe_inflight

    def admits(self, now: float) -> bool:
        """Whether a call may be made now. While open, each refusal counts toward the next share probe."""
        if self.state is _CLOSED:
            return True
        state = self.current(now)
        if state is _HALF_OPEN and not self._probe_inflight:
            return True
        share = self.settings.probe_share
        if share <= 0.0:
            return False
        self._turned_away += 1
        if self._turned_away * share >= 1.0:
            self._turned_away = 0
            return True
        return False

    def on_start(self, now: float) -> None:
        if self.state is not _CLOSED:
            self._probe_inflight = True

    def on_end(self) -> None:
        """Any call ended (whatever its result): the probe slot is free again."""
        self._probe_inflight = False

    def on_result(self, now: float, healthy: bool) -> None:
        """A call's verdict on the backend's health: answered (True) or failed as a backend does (False)."""
        s = self.settings
        if healthy:
            self.consecutive = 0
            if self.state is not _CLOSED:
                self.state = _CLOSED
                self.window.clear()  # judge it afresh: the failures that opened it are history
            else:
                self.window.add(now, failed=False)
            return
        self.consecutive += 1
        state = self.current(now)
        if state is _HALF_OPEN:
            self._open(now)
        elif state is _CLOSED:
            self.window.add(now, failed=True)
            calls, failures = self.window.counts(now)
            if self.consecutive >= s.failures or (calls >= s.min_requests and failures >= s.failure_rate * calls):
                self._open(now)

    def _open(self, now: float) -> None:
        self.state = _OPEN
        self._opened_at = now
        self._turned_away = 0

    def reconfigure(self, settings: BreakerSettings) -> None:
        if settings.window_s != self.settings.window_s:
            self.window = FailureWindow(settings.window_s)
        self.settings = settings
