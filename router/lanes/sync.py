"""The sync lane: call the route's backends in order until one answers.

A hop is skipped when its breaker is open or it has no free slot; after a retryable failure the next
hop is tried if the retry budget allows, so a failing fleet is not hit by a retry storm. Every move
along the chain is counted in ``router_fallbacks_total``. When no hop had a free slot, the request
waits in the admission queue of the first full hop whose predicted wait fits its budget
(``router.flow.admission``). When none fits, or its wait ends without a slot, requests at or above the
overflow urgency still go to the first full hop over its limit; the others fail with the queue's
reason, for the caller to defer them to a job lane or answer 503/429 + Retry-After.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import structlog

from router.flow.admission import Admission, Rejected, Ticket
from router.flow.budget import RetryBudget
from router.lanes.streams import TrackedStream
from router.metrics import RouterMetrics
from router.state import BackendTracker, Clock
from router.types import Backend, BackendError, CallerGone, FailureKind, Hop, Invocation, InvocationResult, Route

log = structlog.get_logger("router.sync")

# A request with a deadline queues only if its predicted wait is within this share of its budget. Without a
# margin a class whose demand exceeds its share fills its queue up to exactly the budget, and every waiter
# at the tail times out on the first bad luck (a few more urgent arrivals than the average): a 503 after
# waiting instead of at once.
FIT = 0.8


@dataclass(frozen=True, slots=True)
class Target:
    backend: Backend
    tracker: BackendTracker
    admission: Admission


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    result: InvocationResult
    hop: Hop
    attempts: int


class SyncFailure(Exception):
    """No hop answered. ``error`` is the last backend failure; None when no call could be made."""

    def __init__(self, reason: str, hop: Hop | None, error: BackendError | None = None,
                 retry_after_s: float = 1.0) -> None:
        super().__init__(error.message if error else reason)
        self.reason = reason
        self.hop = hop
        self.error = error
        self.retry_after_s = retry_after_s


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """The wait before retry ``attempt`` + 1: exponential from ``base_s``, capped at ``max_s``, ±50% jitter."""
    return min(max_s, base_s * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.5)


class SyncLane:
    def __init__(self, budget: RetryBudget, metrics: RouterMetrics, overflow_priority: int,
                 clock: Clock = time.monotonic) -> None:
        self.budget = budget
        self.metrics = metrics
        self.overflow_priority = overflow_priority
        self.clock = clock

    async def serve(self, model: str, route: Route, inv: Invocation, priority: int,
                    targets: Mapping[str, Target], deadline_at: float | None = None,
                    ticket: Ticket | None = None) -> SyncOutcome:
        self.budget.deposit()
        hops = route.hops
        last_error: BackendError | None = None
        last_hop: Hop | None = None
        full: list[Hop] = []
        attempts = 0
        for i, hop in enumerate(hops):
            target = targets[hop.backend]
            tracker = target.tracker
            now = self.clock()
            if not tracker.admits(now):
                why = "breaker_open"
            elif not target.admission.has_room():
                full.append(hop)
                why = "saturated"
            elif deadline_at is not None and tracker.cold(now) and now + tracker.cold_start_s >= deadline_at:
                why = "cold_start"  # a cold start alone would outlast the client's deadline
            else:
                if deadline_at is not None and now >= deadline_at:
                    break
                if last_error is not None and not self.budget.withdraw():
                    self.metrics.retry_budget_exhausted(model).inc()
                    break
                attempts += 1
                try:
                    result = await self.call(target, inv, now, deadline_at)
                    return SyncOutcome(result, hop, attempts)
                except BackendError as exc:
                    if not exc.retryable:
                        raise SyncFailure(exc.kind.value, hop, exc) from None
                    last_error, last_hop, why = exc, hop, exc.kind.value
            if i + 1 < len(hops):
                self.metrics.fallbacks(model, hop.backend, hops[i + 1].backend, why).inc()
        refused: tuple[Hop, Rejected] | None = None
        if full and (last_error is None or self.budget.withdraw()):
            waited = await self._wait(full, targets, ticket or Ticket(priority), deadline_at)
            if isinstance(waited, Hop):
                try:
                    result = await self.call(targets[waited.backend], inv, self.clock(), deadline_at)
                except BackendError as exc:
                    raise SyncFailure(exc.kind.value, waited, exc) from None
                return SyncOutcome(result, waited, attempts + 1)
            refused = waited
            if refused[1].reason == "client_gone":
                raise SyncFailure("client_gone", refused[0])
        elif full:
            self.metrics.retry_budget_exhausted(model).inc()
        if last_error is not None:
            raise SyncFailure(last_error.kind.value, last_hop, last_error)
        now = self.clock()
        in_time = deadline_at is None or now < deadline_at
        if full and in_time and priority >= self.overflow_priority and targets[full[0].backend].tracker.admits(now):
            hop = full[0]  # never refused for capacity alone: over the limit of the first full hop
            try:
                result = await self.call(targets[hop.backend], inv, now, deadline_at)
            except BackendError as exc:
                raise SyncFailure(exc.kind.value, hop, exc) from None
            return SyncOutcome(result, hop, attempts + 1)
        if refused is not None:
            raise SyncFailure(refused[1].reason, refused[0], retry_after_s=refused[1].retry_after_s)
        if not in_time:
            raise SyncFailure("deadline", last_hop,
                              BackendError(FailureKind.TIMEOUT, "the deadline passed before a backend answered"))
        raise SyncFailure("saturated" if full else "breaker_open", hops[-1] if hops else None)

    async def _wait(self, full: list[Hop], targets: Mapping[str, Target], ticket: Ticket,
                    deadline_at: float | None) -> Hop | tuple[Hop, Rejected]:
        """Wait on the first full hop whose predicted wait fits the request's budget; the hop whose slot it
        got, or the last refusal. A refusal after waiting (timeout, evicted) ends the walk."""
        refused: tuple[Hop, Rejected] | None = None
        # A backend with no latency measured yet (a serverless one still in its cold start) cannot predict a
        # wait: the hops that can go first, otherwise in route order.
        for hop in sorted(full, key=lambda h: targets[h.backend].tracker.latency_s <= 0.0):
            target = targets[hop.backend]
            admission = target.admission
            now = self.clock()
            if admission.has_room():
                return hop  # a slot freed while the walk went on, and nobody waits for it
            budget_s = admission.budget_s(now, deadline_at)
            _ahead, wait_s = admission.predict(ticket.priority, ticket.tenant, ticket.weight, deadline_at)
            # a deadline is the client's: keep a margin for the prediction's error; max_wait alone is ours
            if budget_s <= 0.0 or wait_s > (FIT if deadline_at is not None else 1.0) * budget_s:
                admission.rejected("wait_exceeds_deadline")
                if refused is None:
                    refused = (hop, Rejected("wait_exceeds_deadline", wait_s))
                continue
            try:
                await admission.wait(ticket, now, budget_s, deadline_at)
            except Rejected as exc:
                refused = (hop, exc)
                if exc.reason in ("full", "breaker_open"):
                    continue  # it never waited (or the backend broke): the next full hop may take it
                return refused
            return hop  # a slot is ours: the breaker let the admission hand it out
        return refused if refused is not None else (full[-1], Rejected("saturated"))

    async def room(self, target: Target, stopping: Callable[[], bool]) -> bool:
        """Wait until ``target`` has a slot no sync request waits for: background work (jobs, batches) takes the
        room sync traffic leaves. False when ``stopping()`` says to give up instead."""
        return await target.admission.background(stopping)

    async def call(self, target: Target, inv: Invocation, now: float,
                   deadline_at: float | None = None) -> InvocationResult:
        """One tracked call: in-flight, latency, breaker and metrics are updated whatever happens."""
        tracker = target.tracker
        if deadline_at is not None:
            remaining = deadline_at - now
            inv = replace(inv, timeout_s=remaining if inv.timeout_s is None else min(inv.timeout_s, remaining))
        if tracker.cold(now):
            self.metrics.cold_calls(tracker.name).inc()
        tracker.start(now)
        try:
            result = await target.backend.invoke(inv)
        except BackendError as exc:
            tracker.failed(self.clock(), exc.kind)
            self.metrics.backend_calls(tracker.name, exc.kind.value).inc()
            raise
        except (asyncio.CancelledError, CallerGone):
            tracker.abandoned(self.clock())  # the client left: release the slot, blame no one
            raise
        except Exception:
            log.exception("backend_raised", backend=tracker.name)
            tracker.failed(self.clock(), FailureKind.UNAVAILABLE)
            self.metrics.backend_calls(tracker.name, "internal").inc()
            raise BackendError(FailureKind.UNAVAILABLE, f"{tracker.name} failed unexpectedly") from None
        if result.stream is not None:  # a streamed answer holds its slot until its last byte
            return replace(result, stream=TrackedStream(result.stream, tracker, self.metrics, now,
                                                        self.clock(), result.load_metrics))
        tracker.succeeded(self.clock(), self.clock() - now, result.load_metrics)
        self.metrics.backend_calls(tracker.name, "ok").inc()
        return result
