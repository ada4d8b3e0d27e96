"""A backend's admission without the waiting itself: its slots, its queue, the predicted waits, and who gets
the next free slot. Pure (times are read from the clock it is given, nothing awaits), so the live router
(``router.flow.admission``, asyncio futures) and the simulator (``router.sim``, a virtual clock) hand out
slots by the very same rules.

A request takes a slot at once only if one is free *and nobody waits*. A waiter is handed a slot freed by a
call that ends, reserved for it until it starts its call. Background work (job workers, batch runs) gets a
slot only when no sync request waits. A subclass says how a waiter learns its fate: ``grant``,
``grant_background``, ``turn_away``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from router.flow.queue import AdmissionQueue, ArrivalRates, Waiter, predicted_wait_s
from router.state import BackendTracker, Clock
from router.types import BreakerState

BREAKER_OPEN = "breaker_open"  # the backend's breaker opened while requests waited: they move along
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
    gone: Callable[[], Awaitable[object]] | None = None  # completes when the client disconnects (live only)


class QueueMetrics(Protocol):
    """Where an admission reports (router.metrics.RouterMetrics fits)."""

    def queue_waited(self, backend: str, seconds: float) -> None: ...

    def queue_rejected(self, backend: str, reason: str) -> None: ...


class Door:
    """One backend's slots (the tracker's capacity), its admission queue and its background class."""

    def __init__(self, name: str, tracker: BackendTracker, settings: QueueSettings,
                 metrics: QueueMetrics | None = None, clock: Clock | None = None) -> None:
        self.name = name
        self.settings = settings
        self.metrics = metrics
        self.queue = AdmissionQueue(settings.max_depth)
        self.rates = ArrivalRates()
        self.reserved = 0  # slots handed to a waiter that has not started its call yet
        self.background: deque[Any] = deque()  # background tokens, first come first served
        self.tracker = tracker
        self.clock = clock or tracker.clock
        self.bind(tracker)

    def bind(self, tracker: BackendTracker) -> None:
        """Hang on ``tracker``: its freed slots come here, its snapshots show this queue."""
        self.tracker = tracker
        tracker.on_free = self.dispatch
        tracker.queue = self.queue
        tracker.admission = self

    def reconfigure(self, settings: QueueSettings) -> None:
        self.settings = settings
        self.queue.max_depth = settings.max_depth

    # --- how a waiter learns its fate (subclasses) ----------------------------------------------

    def grant(self, waiter: Waiter) -> bool:
        """Give the slot to ``waiter``; False if it is no longer there to take it."""
        raise NotImplementedError

    def grant_background(self, token: Any) -> bool:
        """Give the slot to a background task; False if it is no longer there to take it."""
        raise NotImplementedError

    def turn_away(self, waiter: Waiter, reason: str) -> None:
        """Tell a waiter already out of the queue that it gets no slot here (``evicted``, ``breaker_open``)."""
        raise NotImplementedError

    # --- sync requests --------------------------------------------------------------------------

    def has_room(self) -> bool:
        """A slot is free and nobody waits for one: a call may start now (the breaker is checked apart)."""
        t = self.tracker
        return not self.queue.size and t.inflight + self.reserved < t.capacity

    def predict(self, priority: int, tenant: str = "anonymous", weight: float = 1.0,
                deadline_at: float | None = None) -> tuple[int, float]:
        """(waiters ahead, predicted wait in seconds) for a request arriving now."""
        t = self.tracker
        queue = self.queue
        if not queue.size and t.inflight + self.reserved < t.capacity:  # has_room()
            return 0, 0.0
        ahead = queue.ahead(priority, tenant, weight, math.inf if deadline_at is None else deadline_at)
        if t.latency_s <= 0.0:  # no call finished yet: a serverless backend's calls share one cold start
            return ahead, (ahead // max(1, t.capacity) + 1) * t.cold_start_s
        return ahead, predicted_wait_s(ahead, t.capacity, t.latency_s, self.rates.above(priority, self.clock()))

    def budget_s(self, now: float, deadline_at: float | None) -> float:
        """How long a request may wait here: ``max_wait``, or less when its deadline comes first. A waiter must
        leave the queue with the backend's service time (latency EWMA) still ahead of its deadline: a call
        started later would time out, and timeouts count against the backend's health."""
        wait = self.settings.max_wait_s
        return wait if deadline_at is None else min(wait, deadline_at - now - self.tracker.latency_s)

    def enqueue(self, waiter: Waiter, now: float) -> bool:
        """Queue ``waiter`` (evicting a less urgent one when full); False when the queue refused it (``full``)."""
        pushed = self.queue.push(waiter)
        if not pushed.queued:
            self.rejected("full")
            return False
        self.rates.observe(waiter.priority, now)
        if pushed.evicted is not None:
            self.turn_away(pushed.evicted, "evicted")
            self.observe(pushed.evicted, "evicted")
        return True

    def expired(self, waiter: Waiter) -> None:
        """``waiter``'s budget ran out before a slot came: out of the queue, counted as ``timeout``."""
        self.queue.remove(waiter)
        self.observe(waiter, "timeout")

    def refusal_wait(self, ticket: Ticket, deadline_at: float | None) -> float:
        """The Retry-After of a refused request: its predicted wait, capped."""
        return min(self.predict(ticket.priority, ticket.tenant, ticket.weight, deadline_at)[1], RETRY_AFTER_MAX_S)

    def rejected(self, reason: str) -> None:
        """Count a request this backend did not serve (e.g. its predicted wait exceeds its budget)."""
        if self.metrics is not None:
            self.metrics.queue_rejected(self.name, reason)

    def observe(self, waiter: Waiter, reason: str | None) -> None:
        """A waiter left the queue: its wait, and why it got no slot (None: it got one)."""
        if self.metrics is not None:
            self.metrics.queue_waited(self.name, max(0.0, self.clock() - waiter.arrival))
            if reason is not None:
                self.metrics.queue_rejected(self.name, reason)

    # --- background work ------------------------------------------------------------------------

    def background_room(self, now: float) -> bool:
        """A background task may take a slot at once: one is free, no one waits, the breaker takes calls."""
        t = self.tracker
        return (not self.queue.size and not self.background and t.inflight + self.reserved < t.capacity
                and self.takes_calls(now))

    # --- slot hand-off --------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand free slots to waiters: sync first, in queue order, then background. The tracker calls it
        whenever a slot may have become free."""
        t = self.tracker
        queue = self.queue
        while queue.size or self.background:
            if t.inflight + self.reserved >= t.capacity:
                return
            now = self.clock()
            if not self.takes_calls(now):
                if queue.size and t.breaker.current(now) is BreakerState.OPEN:
                    while (w := queue.pop()) is not None:  # they move along their routes instead
                        self.turn_away(w, BREAKER_OPEN)
                return  # half-open: the probe's end frees the next slot
            if queue.size:
                waiter = queue.pop()
                if waiter is not None and self.grant(waiter):
                    self.reserved += 1
                    self.observe(waiter, None)
                continue
            if self.grant_background(self.background.popleft()):
                self.reserved += 1

    def takes_calls(self, now: float) -> bool:
        """The breaker lets a waiter call: closed, or half-open with no probe under way or handed out. (Not
        ``tracker.admits``: while open that counts the asking request toward the next probe.)"""
        breaker = self.tracker.breaker
        state = breaker.current(now)
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not breaker.probing and not self.reserved

    def release(self) -> None:
        """A reserved slot its waiter will not use after all: to the next one."""
        self.reserved -= 1
        self.dispatch()
