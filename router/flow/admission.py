"""The asyncio face of a backend's admission queue: who gets the next free slot, and when.

A request takes a slot at once only if one is free *and nobody waits* (a new arrival never takes a
slot from a waiter). Otherwise it waits in the backend's ``AdmissionQueue`` for at most
``min(max_wait, its remaining deadline)``. A slot freed by a call that ends (the tracker's
``on_free``) is handed to the queue's head at once, reserved for it until it starts its call: no
polling. Background work (job workers, the batch runner) is a class of its own, granted a slot only
when no sync request waits. Every refusal carries a reason: ``full``, ``evicted``,
``wait_exceeds_deadline``, ``timeout``, ``client_gone``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from router.flow.queue import AdmissionQueue, ArrivalRates, Waiter, predicted_wait_s
from router.state import BackendTracker, Clock
from router.types import BreakerState

GRANTED = "granted"
BREAKER_OPEN = "breaker_open"  # the backend's breaker opened while requests waited: they move along
# A waiting background task re-checks whether it should give up (draining) this often; slots never need it.
BACKGROUND_CHECK_S = 0.5
RETRY_AFTER_MAX_S = 30.0  # Retry-After of a request more urgent traffic leaves no slot to (an infinite wait)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    max_depth: int = 1024  # waiters per backend; 0 turns queueing off (a full backend fails fast)
    max_wait_s: float = 1.0  # the longest any request waits, deadline or not


class Ticket(NamedTuple):
    """Who is asking for a slot: its urgency, its tenant and weight, and how to notice it has gone."""

    priority: int
    tenant: str = "anonymous"
    weight: float = 1.0
    gone: Callable[[], Awaitable[object]] | None = None  # completes when the client disconnects


class Rejected(Exception):
    """No slot for this request on this backend: ``full``, ``evicted``, ``wait_exceeds_deadline``, ``timeout``,
    ``client_gone``, or ``breaker_open`` (the backend's breaker opened while it waited)."""

    def __init__(self, reason: str, retry_after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = min(retry_after_s, RETRY_AFTER_MAX_S)


class QueueMetrics(Protocol):
    """Where an admission reports (router.metrics.RouterMetrics fits)."""

    def queue_waited(self, backend: str, seconds: float) -> None: ...

    def queue_rejected(self, backend: str, reason: str) -> None: ...


@dataclass(eq=False, slots=True)
class _SyncWaiter(Waiter):
    grant: asyncio.Future[str] | None = None


class Admission:
    """One backend's door: its slots (the tracker's capacity), its queue, and the background class."""

    def __init__(self, name: str, tracker: BackendTracker, settings: QueueSettings,
                 metrics: QueueMetrics | None = None, clock: Clock | None = None) -> None:
        self.name = name
        self.settings = settings
        self.metrics = metrics
        self.queue = AdmissionQueue(settings.max_depth)
        self.rates = ArrivalRates()
        self.reserved = 0  # slots handed to a waiter that has not started its call yet
        self._background: deque[asyncio.Future[str]] = deque()
        self.tracker = tracker
        self.clock = clock or tracker.clock
        self.bind(tracker)

    def bind(self, tracker: BackendTracker) -> None:
        """Hang on ``tracker``: its freed slots come here, its snapshots show this queue."""
        self.tracker = tracker
        tracker.on_free = self.dispatch
        tracker.queue = self.queue

    def reconfigure(self, settings: QueueSettings) -> None:
        self.settings = settings
        self.queue.max_depth = settings.max_depth

    # --- sync requests --------------------------------------------------------------------------

    def has_room(self) -> bool:
        """A slot is free and nobody waits for one: a call may start now (the breaker is checked apart)."""
        t = self.tracker
        return not self.queue and t.inflight + self.reserved < t.capacity

    def predict(self, priority: int, tenant: str = "anonymous", weight: float = 1.0,
                deadline_at: float | None = None) -> tuple[int, float]:
        """(waiters ahead, predicted wait in seconds) for a request arriving now."""
        t = self.tracker
        if self.has_room():
            return 0, 0.0
        ahead = self.queue.ahead(priority, tenant, weight, math.inf if deadline_at is None else deadline_at)
        if t.latency_s <= 0.0:  # no call finished yet: a serverless backend's calls share one cold start
            return ahead, (ahead // max(1, t.capacity) + 1) * t.cold_start_s
        return ahead, predicted_wait_s(ahead, t.capacity, t.latency_s, self.rates.above(priority, self.clock()))

    def budget_s(self, now: float, deadline_at: float | None) -> float:
        """How long a request may wait here: ``max_wait``, or less when its deadline comes first. A waiter must
        leave the queue with the backend's service time (latency EWMA) still ahead of its deadline: a call
        started later would time out, and timeouts count against the backend's health."""
        wait = self.settings.max_wait_s
        return wait if deadline_at is None else min(wait, deadline_at - now - self.tracker.latency_s)

    async def wait(self, ticket: Ticket, now: float, budget_s: float, deadline_at: float | None = None) -> None:
        """Wait for a slot for at most ``budget_s``. On return the slot is the caller's: it must start its
        call (``tracker.start``) before it next awaits. Raises Rejected otherwise."""
        grant: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiter = _SyncWaiter(ticket.priority, ticket.tenant, ticket.weight,
                             math.inf if deadline_at is None else deadline_at, now, grant=grant)
        pushed = self.queue.push(waiter)
        if not pushed.queued:
            self.rejected("full")
            raise Rejected("full", self.predict(ticket.priority, ticket.tenant, ticket.weight, deadline_at)[1])
        self.rates.observe(ticket.priority, now)
        if isinstance(pushed.evicted, _SyncWaiter):
            self._leave(pushed.evicted, "evicted")
        gone = asyncio.ensure_future(ticket.gone()) if ticket.gone is not None else None
        try:
            await asyncio.wait((grant,) if gone is None else (grant, gone), timeout=max(0.0, budget_s),
                               return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._abandon(waiter, grant)  # cancelled (the server stops): give back what was given
            raise
        finally:
            if gone is not None and not gone.done():
                gone.cancel()
        if gone is not None and gone.done():
            if not gone.cancelled():
                gone.exception()  # CallerGone while the rest of the body came: retrieved, it means gone too
            counted = grant.done() and not grant.cancelled() and grant.result() != GRANTED  # evicted meanwhile
            self._abandon(waiter, grant)
            if not counted:
                self._observe(waiter, "client_gone")
            raise Rejected("client_gone")
        if not grant.done():
            self.queue.remove(waiter)
            self._observe(waiter, "timeout")
            raise Rejected("timeout", budget_s)
        outcome = grant.result()
        if outcome != GRANTED:
            raise Rejected(outcome, self.predict(ticket.priority, ticket.tenant, ticket.weight, deadline_at)[1])
        self.reserved -= 1  # the caller starts its call before it next awaits: the slot becomes in-flight

    # --- background work ------------------------------------------------------------------------

    @property
    def background_waiting(self) -> int:
        """Background tasks (job workers, batch runs) waiting for a slot."""
        return len(self._background)

    async def background(self, stopping: Callable[[], bool]) -> bool:
        """Wait for a slot no sync request wants: job workers and batch runs take only the room sync traffic
        leaves. True once the slot is the caller's (start the call before the next await); False when
        ``stopping()`` says to give up."""
        t = self.tracker
        if not self.queue and not self._background and t.inflight + self.reserved < t.capacity \
                and self._takes_calls(self.clock()):
            return True
        grant: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._background.append(grant)
        try:
            while not grant.done():
                await asyncio.wait((grant,), timeout=BACKGROUND_CHECK_S)
                if grant.done():
                    break
                if stopping():
                    self._background.remove(grant)
                    return False
                self.dispatch()  # a breaker that half-opened since frees no slot and calls nobody
        except BaseException:
            if grant.done() and not grant.cancelled():
                self._release()
            elif grant in self._background:
                self._background.remove(grant)
            raise
        self.reserved -= 1
        return True

    # --- slot hand-off --------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand free slots to waiters: sync first, in queue order, then background. The tracker calls it
        whenever a slot may have become free."""
        t = self.tracker
        queue = self.queue
        while queue or self._background:
            if t.inflight + self.reserved >= t.capacity:
                return
            now = self.clock()
            if not self._takes_calls(now):
                if queue and t.breaker.current(now) is BreakerState.OPEN:
                    while (w := queue.pop()) is not None:  # they move along their routes instead
                        if isinstance(w, _SyncWaiter):
                            self._leave(w, BREAKER_OPEN)
                return  # half-open: the probe's end frees the next slot
            if queue:
                waiter = queue.pop()
                if not isinstance(waiter, _SyncWaiter) or waiter.grant is None or waiter.grant.done():
                    continue
                self.reserved += 1
                waiter.grant.set_result(GRANTED)
                self._observe(waiter, None)
                continue
            grant = self._background.popleft()
            if not grant.done():
                self.reserved += 1
                grant.set_result(GRANTED)

    def _takes_calls(self, now: float) -> bool:
        """The breaker lets a waiter call: closed, or half-open with no probe under way or handed out. (Not
        ``tracker.admits``: while open that counts the asking request toward the next probe.)"""
        breaker = self.tracker.breaker
        state = breaker.current(now)
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not breaker.probing and not self.reserved

    def _release(self) -> None:
        """A reserved slot its waiter will not use after all: to the next one."""
        self.reserved -= 1
        self.dispatch()

    def _abandon(self, waiter: _SyncWaiter, grant: asyncio.Future[str]) -> None:
        if grant.done() and not grant.cancelled() and grant.result() == GRANTED:
            self._release()
        else:
            self.queue.remove(waiter)
            if not grant.done():
                grant.cancel()

    def _leave(self, waiter: _SyncWaiter, outcome: str) -> None:
        """Tell a queued waiter it will get no slot here (evicted, breaker open); it is already out of the queue."""
        if waiter.grant is not None and not waiter.grant.done():
            waiter.grant.set_result(outcome)
        if outcome != BREAKER_OPEN:
            self._observe(waiter, outcome)

    def _observe(self, waiter: Waiter, reason: str | None) -> None:
        if self.metrics is not None:
            self.metrics.queue_waited(self.name, max(0.0, self.clock() - waiter.arrival))
            if reason is not None:
                self.metrics.queue_rejected(self.name, reason)

    def rejected(self, reason: str) -> None:
        """Count a request this backend did not serve (e.g. its predicted wait exceeds its budget)."""
        if self.metrics is not None:
            self.metrics.queue_rejected(self.name, reason)


class Admissions:
    """Every backend's admission, by name; outlives reloads like the trackers (waiters keep their place)."""

    def __init__(self, metrics: QueueMetrics | None = None) -> None:
        self.metrics = metrics
        self.by_backend: dict[str, Admission] = {}

    def track(self, name: str, tracker: BackendTracker, settings: QueueSettings) -> Admission:
        admission = self.by_backend.get(name)
        if admission is None:
            admission = self.by_backend[name] = Admission(name, tracker, settings, self.metrics)
            return admission
        if admission.tracker is not tracker:
            admission.bind(tracker)
        if admission.settings != settings:
            admission.reconfigure(settings)
        return admission

    def retain(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name in list(self.by_backend):
            if name not in keep:
                del self.by_backend[name]

    def depths(self, levels: Mapping[int, str]) -> Iterator[tuple[str, str, int]]:
        """(backend, urgency level name, waiting) for every backend and level, zeros included."""
        for name, admission in self.by_backend.items():
            waiting = dict(admission.queue.levels())
            for priority, level in levels.items():
                yield name, level, waiting.get(priority, 0)
