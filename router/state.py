"""Live state of every backend, from the router's own calls, and immutable snapshots of it for policies.

The router's in-flight counts are the primary signal (CloudWatch lags 10-60 s). Per backend:
in-flight, an AIMD concurrency limit (halved on throttling, +1 per window of successes), latency
and error EWMAs, a circuit breaker and, for serverless backends, warm/cold with a learned cold start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from router.types import BREAKER_FAILURES, BackendState, BreakerState, FailureKind, Lane, Snapshot

Clock = Callable[[], float]
LATENCY_ALPHA = 0.2
ERROR_ALPHA = 0.1
COLD_ALPHA = 0.5


class QueueView(Protocol):
    """What a snapshot reads of a backend's admission queue (router.flow.queue.AdmissionQueue)."""

    def __len__(self) -> int: ...

    def levels(self) -> tuple[tuple[int, int], ...]: ...


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    max_concurrency: int
    breaker_failures: int = 5
    breaker_open_s: float = 10.0
    serverless: bool = False
    idle_after_s: float = 600.0
    cold_start_s: float = 0.0


class BackendTracker:
    """One backend's live numbers. Not thread-safe: the router runs one event loop per process."""

    __slots__ = (
        "_cold_call",
        "_last_decrease",
        "_limit",
        "_opened_at",
        "_probe_inflight",
        "breaker",
        "clock",
        "cold_start_s",
        "consecutive_failures",
        "error_rate",
        "inflight",
        "last_active",
        "latency_s",
        "name",
        "on_free",
        "queue",
        "settings",
    )

    def __init__(self, name: str, settings: TrackerSettings, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.settings = settings
        self.clock = clock
        self.inflight = 0
        self._limit = float(settings.max_concurrency)
        self.latency_s = 0.0
        self.error_rate = 0.0
        self.breaker = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_inflight = False
        self._last_decrease = -math.inf
        self.cold_start_s = settings.cold_start_s
        self.last_active = -math.inf  # a serverless backend starts cold
        self._cold_call = False
        # Called whenever a slot may have become free (a call ended, the limit grew): wakes whoever waits for room.
        self.on_free: Callable[[], None] | None = None
        self.queue: QueueView | None = None  # the backend's admission queue, read into snapshots

    # --- reading --------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return max(1, int(self._limit))

    def _breaker_now(self, now: float) -> BreakerState:
        if self.breaker is BreakerState.OPEN and now - self._opened_at >= self.settings.breaker_open_s:
            self.breaker = BreakerState.HALF_OPEN
        return self.breaker

    def cold(self, now: float) -> bool:
        s = self.settings
        return s.serverless and self.inflight == 0 and now - self.last_active > s.idle_after_s

    def admits(self, now: float) -> bool:
        """Whether the breaker lets a call through now (half-open: one probe at a time)."""
        state = self._breaker_now(now)
        if state is BreakerState.OPEN:
            return False
        return not (state is BreakerState.HALF_OPEN and self._probe_inflight)

    def state(self, now: float) -> BackendState:
        breaker = self._breaker_now(now)
        capacity = self.capacity
        if breaker is BreakerState.OPEN or (breaker is BreakerState.HALF_OPEN and self._probe_inflight):
            saturation = 1.0
        else:
            saturation = min(1.0, self.inflight / capacity)
        s = self.settings
        queue = self.queue
        depth = len(queue) if queue is not None else 0
        return BackendState(self.name, self.inflight, capacity, s.max_concurrency, saturation, self.latency_s,
                            self.error_rate, breaker, s.serverless, self.cold(now), self.cold_start_s,
                            depth, queue.levels() if queue is not None and depth else ())

    # --- recording ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """A call begins; pair with exactly one ``succeeded`` or ``failed``."""
        self._cold_call = self.cold(now)
        if self.breaker is BreakerState.HALF_OPEN:
            self._probe_inflight = True
        self.inflight += 1
        self.last_active = now

    def succeeded(self, now: float, elapsed_s: float) -> None:
        self._finish(now)
        if self._cold_call:
            # A cold call says nothing about warm latency; with no warm latency yet it says nothing at all.
            if self.latency_s > 0.0:
                extra = max(0.0, elapsed_s - self.latency_s)
                self.cold_start_s += COLD_ALPHA * (extra - self.cold_start_s)
        else:
            self.latency_s = elapsed_s if self.latency_s == 0.0 else (
                self.latency_s + LATENCY_ALPHA * (elapsed_s - self.latency_s))
        self._cold_call = False
        self.error_rate -= ERROR_ALPHA * self.error_rate
        self.consecutive_failures = 0
        self.breaker = BreakerState.CLOSED
        self._limit = min(float(self.settings.max_concurrency), self._limit + 1.0 / self._limit)

    def failed(self, now: float, kind: FailureKind) -> None:
        self._finish(now)
        self._cold_call = False
        if kind in (FailureKind.MODEL_ERROR, FailureKind.VALIDATION):
            # The backend answered; it just did not like this input. Not a health signal.
            self.consecutive_failures = 0
            if self.breaker is BreakerState.HALF_OPEN:
                self.breaker = BreakerState.CLOSED
            return
        self.error_rate += ERROR_ALPHA * (1.0 - self.error_rate)
        if kind is FailureKind.THROTTLED:
            # One halving per service time, so a burst of 429s from one overload is one decrease.
            if now - self._last_decrease >= max(self.latency_s, 0.05):
                self._limit = max(1.0, self._limit / 2.0)
                self._last_decrease = now
        elif kind is FailureKind.NOT_READY:
            self.last_active = -math.inf  # it told us it is cold
        if kind in BREAKER_FAILURES:
            self.consecutive_failures += 1
            if self.breaker is BreakerState.HALF_OPEN or (
                    self.consecutive_failures >= self.settings.breaker_failures):
                self.breaker = BreakerState.OPEN
                self._opened_at = now

    def abandoned(self, now: float) -> None:
        """A call given up by the client: frees its slot without judging the backend."""
        self._finish(now)
        self._cold_call = False

    def reconfigure(self, settings: TrackerSettings) -> None:
        """New settings from a reload; calls in flight keep counting against this tracker."""
        self.settings = settings
        self._limit = min(self._limit, float(settings.max_concurrency))
        if not settings.serverless:
            self.cold_start_s = 0.0

    def _finish(self, now: float) -> None:
        self.inflight = max(0, self.inflight - 1)
        self._probe_inflight = False
        self.last_active = now
        if self.on_free is not None:
            self.on_free()


class SaturationTracker:
    """All backends' trackers, and per-model snapshots of them."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.trackers: dict[str, BackendTracker] = {}

    def track(self, name: str, settings: TrackerSettings) -> BackendTracker:
        """The tracker for ``name``; a reload keeps its live numbers and applies the new settings."""
        tracker = self.trackers.get(name)
        if tracker is None:
            tracker = self.trackers[name] = BackendTracker(name, settings, self.clock)
        elif tracker.settings != settings:
            tracker.reconfigure(settings)
        return tracker

    def retain(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name in list(self.trackers):
            if name not in keep:
                del self.trackers[name]

    def snapshot(self, lanes: Mapping[Lane, str], limits: Mapping[Lane, int]) -> Snapshot:
        """The model's view: only its lanes' backends, so the cost does not grow with the fleet."""
        now = self.clock()
        trackers = self.trackers
        states: dict[str, BackendState] = {}
        for name in lanes.values():
            if name not in states and (t := trackers.get(name)) is not None:
                states[name] = t.state(now)
        return Snapshot(states, lanes, limits, now)
