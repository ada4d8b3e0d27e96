"""Live state of every backend, from the router's own calls, and immutable snapshots of it for policies.

The router's in-flight counts are the primary signal (CloudWatch lags 10-60 s). Per backend: in-flight, a
concurrency limit (``router.flow.limits``: fixed with AIMD below it, or learned from latency), latency and
error EWMAs, a circuit breaker (``router.flow.breaker``), the backend's own ORCA load reports
(``router.flow.orca``) and, for serverless backends, warm/cold with a learned cold start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from router.flow.breaker import Breaker, BreakerSettings
from router.flow.limits import ConcurrencyLimit, FixedLimit, GradientLimit, GradientSettings, Outcome
from router.flow.orca import LoadReport, parse_load_report
from router.types import BREAKER_FAILURES, BackendState, BreakerState, FailureKind, Lane, Snapshot

Clock = Callable[[], float]
LATENCY_ALPHA = 0.2
ERROR_ALPHA = 0.1
COLD_ALPHA = 0.5
REPORT_STALE_S = 10.0  # an ORCA report older than this no longer counts toward saturation
_CLOSED, _OPEN, _HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
_tuple_new = tuple.__new__  # builds a NamedTuple from its fields in order, without its Python-level __new__


class QueueView(Protocol):
    """What a snapshot reads of a backend's admission queue (router.flow.queue.AdmissionQueue)."""

    size: int  # waiters queued

    def __len__(self) -> int: ...

    def levels(self) -> tuple[tuple[int, int], ...]: ...


class SlotsView(Protocol):
    """What a snapshot reads of a backend's admission (router.flow.door.Door): slots handed to waiters that have
    not started their call yet."""

    reserved: int


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    max_concurrency: int  # a fixed limit, or the most an adaptive one may reach
    breaker_failures: int = 10
    breaker_open_s: float = 10.0
    serverless: bool = False
    idle_after_s: float = 600.0
    cold_start_s: float = 0.0
    adaptive: GradientSettings | None = None  # None: max_concurrency is a fixed limit (AIMD below it)
    breaker_failure_rate: float = 0.8
    breaker_min_requests: int = 20
    breaker_window_s: float = 10.0
    breaker_probe_share: float = 0.1

    @property
    def breaker(self) -> BreakerSettings:
        return BreakerSettings(self.breaker_failures, self.breaker_failure_rate, self.breaker_min_requests,
                               self.breaker_window_s, self.breaker_open_s, self.breaker_probe_share)


def build_limit(settings: TrackerSettings, now: float) -> ConcurrencyLimit:
    if settings.adaptive is None:
        return FixedLimit(settings.max_concurrency)
    return GradientLimit(settings.adaptive, now)


# How each failure counts for the concurrency limit: only throttling and timeouts speak of load.
LIMIT_OUTCOMES: dict[FailureKind, Outcome] = {FailureKind.THROTTLED: Outcome.THROTTLED,
                                              FailureKind.TIMEOUT: Outcome.DROPPED}
_SUCCESS, _IGNORED, _NOT_READY = Outcome.SUCCESS, Outcome.IGNORED, FailureKind.NOT_READY
_INPUT_FAILURES = frozenset({FailureKind.MODEL_ERROR, FailureKind.VALIDATION})  # the backend answered: not health


class BackendTracker:
    """One backend's live numbers. Not thread-safe: the router runs one event loop per process."""

    __slots__ = (
        "_cold_since",
        "_report",
        "_report_at",
        "_report_header",
        "_warm_at",
        "admission",
        "breaker",
        "clock",
        "cold_start_s",
        "error_rate",
        "inflight",
        "last_active",
        "latency_s",
        "limiter",
        "name",
        "on_free",
        "queue",
        "reported_utilization",
        "settings",
    )

    def __init__(self, name: str, settings: TrackerSettings, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.settings = settings
        self.clock = clock
        self.inflight = 0
        self.limiter = build_limit(settings, clock())
        self.latency_s = 0.0
        self.error_rate = 0.0
        self.breaker = Breaker(settings.breaker)
        self.reported_utilization: float | None = None
        self._report_at = -math.inf
        self._report_header: str | None = None
        self._report: LoadReport | None = None
        self.cold_start_s = settings.cold_start_s
        self.last_active = -math.inf  # a serverless backend starts cold
        # The cold start under way: calls started from _cold_since until the first of them answers (_warm_at) all
        # waited for the same start-up, so none of their latencies is a warm one.
        self._cold_since: float | None = None
        self._warm_at: float | None = None
        # Called whenever a slot may have become free (a call ended, the limit grew): wakes whoever waits for room.
        self.on_free: Callable[[], None] | None = None
        self.queue: QueueView | None = None  # the backend's admission queue, read into snapshots
        self.admission: SlotsView | None = None  # its admission: a slot handed to a waiter is not free

    # --- reading --------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        limit = int(self.limiter.limit)
        return limit if limit > 1 else 1

    def cold(self, now: float) -> bool:
        s = self.settings
        return s.serverless and not self.inflight and now - self.last_active > s.idle_after_s

    def warming(self, now: float) -> bool:
        """Whether a call starting now waits for a cold start: the backend is cold, or a cold start is under way
        (no call that started it has answered yet). Such a call's latency is not the backend's service time."""
        return self.cold(now) or (self._cold_since is not None and self._warm_at is None)

    def admits(self, now: float) -> bool:
        """Whether the breaker lets a call through now (while open: a share of requests, as probes)."""
        return self.breaker.admits(now)

    def utilization(self, now: float) -> float | None:
        """The backend's own last reported utilization, while fresh."""
        if self.reported_utilization is None or now - self._report_at > REPORT_STALE_S:
            return None
        return self.reported_utilization

    def state(self, now: float) -> BackendState:
        # Inlined reads (capacity, cold, utilization, breaker.current): every request takes a snapshot
        breaker = self.breaker
        state = breaker.state
        if state is not _CLOSED:
            state = breaker.current(now)
        limit = int(self.limiter.limit)
        capacity = limit if limit > 1 else 1
        inflight = self.inflight
        reported = self.reported_utilization
        if reported is not None and now - self._report_at > REPORT_STALE_S:
            reported = None
        if state is _OPEN or (state is _HALF_OPEN and breaker.probing):
            saturation = 1.0
        else:
            # a slot handed to a waiter that has not started its call yet is taken: counted as in flight, as the
            # admission counts it (else a request arriving before the waiter wakes sees room that is not there)
            admission = self.admission
            saturation = (inflight + admission.reserved if admission is not None else inflight) / capacity
            if reported is not None and reported > saturation:
                saturation = reported
            if saturation > 1.0:
                saturation = 1.0
        s = self.settings
        serverless = s.serverless
        cold = serverless and not inflight and now - self.last_active > s.idle_after_s
        queue = self.queue
        depth = queue.size if queue is not None else 0
        return _tuple_new(BackendState, (self.name, inflight, capacity, self.limiter.ceiling, saturation,
                                         self.latency_s, self.error_rate, state, serverless, cold, self.cold_start_s,
                                         depth, reported, queue.levels() if depth and queue is not None else ()))

    # --- recording ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """A call begins; pair with exactly one ``succeeded``, ``failed`` or ``abandoned``."""
        s = self.settings
        if s.serverless and not self.inflight and now - self.last_active > s.idle_after_s:  # cold
            self._cold_since, self._warm_at = now, None
        self.breaker.on_start(now)
        self.inflight += 1
        self.last_active = now

    def succeeded(self, now: float, elapsed_s: float, load_report: str | None = None) -> None:
        """A call answered after ``elapsed_s``; ``load_report`` is its ``endpoint-load-metrics`` header, if any."""
        limiter = self.limiter
        if load_report is not None:
            self._record_report(now, load_report)
        started = now - elapsed_s
        since, warm_at = self._cold_since, self._warm_at
        if since is not None and started >= since and (warm_at is None or started < warm_at):
            # A call that waited for the cold start says nothing about warm latency. The first of them to answer
            # ends the cold start and measures it (with no warm latency yet it says nothing at all).
            if warm_at is None:
                self._warm_at = now
                if self.latency_s > 0.0:
                    extra = max(0.0, elapsed_s - self.latency_s)
                    self.cold_start_s += COLD_ALPHA * (extra - self.cold_start_s)
        else:
            self.latency_s = elapsed_s if self.latency_s == 0.0 else (
                self.latency_s + LATENCY_ALPHA * (elapsed_s - self.latency_s))
            limiter.on_sample(now, elapsed_s, self.inflight, _SUCCESS)
        self.error_rate -= ERROR_ALPHA * self.error_rate
        self.breaker.on_result(now, healthy=True)
        self._finish(now)  # also wakes waiters when the limit grew

    def failed(self, now: float, kind: FailureKind) -> None:
        if kind in _INPUT_FAILURES:
            # The backend answered; it just did not like this input. Not a health signal.
            self.breaker.on_result(now, healthy=True)
            self._finish(now)
            return
        self.limiter.on_sample(now, 0.0, self.inflight, LIMIT_OUTCOMES.get(kind, _IGNORED))
        self.error_rate += ERROR_ALPHA * (1.0 - self.error_rate)
        if kind in BREAKER_FAILURES:
            self.breaker.on_result(now, healthy=False)
        self._finish(now)
        if kind is _NOT_READY:
            self.last_active = -math.inf  # it told us it is cold

    def abandoned(self, now: float) -> None:
        """A call given up by the client: frees its slot without judging the backend."""
        self._finish(now)

    def reconfigure(self, settings: TrackerSettings) -> None:
        """New settings from a reload; calls in flight keep counting against this tracker."""
        old, self.settings = self.settings, settings
        before = self.capacity
        limiter = self.limiter
        if isinstance(limiter, FixedLimit) and settings.adaptive is None:
            limiter.resize(settings.max_concurrency)
        elif isinstance(limiter, GradientLimit) and settings.adaptive is not None:
            limiter.resize(settings.adaptive)
        else:  # fixed <-> auto: start the new kind afresh
            self.limiter = build_limit(settings, self.clock())
        if settings.breaker != old.breaker:
            self.breaker.reconfigure(settings.breaker)
        if not settings.serverless:
            self.cold_start_s = 0.0
        if self.capacity > before and self.on_free is not None:
            self.on_free()

    def _record_report(self, now: float, header: str) -> None:
        if header == self._report_header:  # a steady backend repeats itself: parse each text once
            report = self._report
        else:
            report = self._report = parse_load_report(header)
            self._report_header = header
        if report is None:
            return  # malformed: ignored, never the client's problem
        utilization = report.utilization
        if utilization is not None:
            self.reported_utilization = utilization
            self._report_at = now
        waiting = report.waiting
        if waiting is not None:
            self.limiter.on_queue_report(now, waiting)

    def _finish(self, now: float) -> None:
        if self.inflight > 0:
            self.inflight -= 1
        self.last_active = now
        self.breaker.on_end()
        on_free = self.on_free
        if on_free is not None:
            on_free()


class SaturationTracker:
    """All backends' trackers, and per-model snapshots of them."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.trackers: dict[str, BackendTracker] = {}
        # per lane table (by identity): its backends, each once, in lane order
        self._names: dict[int, tuple[Mapping[Lane, str], tuple[str, ...]]] = {}

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
        known = self._names.get(id(lanes))
        if known is None or known[0] is not lanes:
            if len(self._names) > 256:  # lane tables of reloads past
                self._names.clear()
            known = self._names[id(lanes)] = (lanes, tuple(dict.fromkeys(lanes.values())))
        trackers = self.trackers
        states: dict[str, BackendState] = {}
        for name in known[1]:
            t = trackers.get(name)
            if t is not None:
                states[name] = t.state(now)
        return _tuple_new(Snapshot, (states, lanes, limits, now))
