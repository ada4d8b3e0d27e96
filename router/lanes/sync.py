"""The sync lane: call the route's backends in order until one answers. The decisions are the walk's
(``router.lanes.walk``, pure, shared with the simulator); this module makes the calls and the waits.

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

from router.cost import BackendCost
from router.flow.admission import Admission, Rejected, Ticket
from router.flow.budget import RetryBudget
from router.lanes.streams import TrackedStream
from router.lanes.walk import Call, Refusal, Served, Wait, walk
from router.metrics import RouterMetrics
from router.state import BackendTracker, Clock
from router.types import Backend, BackendError, CallerGone, FailureKind, Hop, Invocation, InvocationResult, Route

log = structlog.get_logger("router.sync")



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
    waited_s: float = 0.0  # time spent in admission queues
    cold_start: bool = False  # the answering call waited for the backend's cold start (BackendTracker.warming)


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


class _Counters:
    """The walk's counts, as metrics."""

    __slots__ = ("metrics",)

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics

    def fallback(self, model: str, from_backend: str, to_backend: str, reason: str) -> None:
        self.metrics.fallbacks(model, from_backend, to_backend, reason).inc()

    def budget_exhausted(self, model: str) -> None:
        self.metrics.retry_budget_exhausted(model).inc()


class SyncLane:
    def __init__(self, budget: RetryBudget, metrics: RouterMetrics, overflow_priority: int,
                 clock: Clock = time.monotonic) -> None:
        self.budget = budget
        self.metrics = metrics
        self.counters = _Counters(metrics)
        self.costs: Mapping[str, BackendCost] = {}  # priced backends: the estimated cost of each call
        self.overflow_priority = overflow_priority
        self.clock = clock

    async def serve(self, model: str, route: Route, inv: Invocation, priority: int,
                    targets: Mapping[str, Target], deadline_at: float | None = None,
                    ticket: Ticket | None = None) -> SyncOutcome:
        """Drive the walk (``router.lanes.walk``, the decisions) with real calls and waits."""
        ticket = ticket or Ticket(priority)
        steps = walk(model, route.hops, ticket, targets, self.budget, self.overflow_priority,
                     self.clock, self.counters, deadline_at)
        outcome: BackendError | Refusal | None = None
        result: InvocationResult | None = None
        waited = 0.0
        cold = False
        try:
            while True:
                step = steps.send(outcome)
                target = targets[step.hop.backend]
                if type(step) is Call:
                    cold = target.tracker.warming(step.now)
                    try:
                        result = await self.call(target, inv, step.now, deadline_at, model, step.hop.lane.value)
                        outcome = None
                    except BackendError as exc:
                        outcome = exc
                else:
                    assert isinstance(step, Wait)
                    try:
                        await target.admission.wait(ticket, step.now, step.budget_s, deadline_at)
                        outcome = None
                    except Rejected as exc:
                        outcome = Refusal(exc.reason, exc.retry_after_s)
                    waited += self.clock() - step.now
        except StopIteration as stop:
            end = stop.value
        if isinstance(end, Served):
            assert result is not None
            return SyncOutcome(result, end.hop, end.attempts, waited, cold)
        raise SyncFailure(end.reason, end.hop, end.error, end.retry_after_s)

    async def room(self, target: Target, stopping: Callable[[], bool]) -> bool:
        """Wait until ``target`` has a slot no sync request waits for: background work (jobs, batches) takes the
        room sync traffic leaves. False when ``stopping()`` says to give up instead."""
        return await target.admission.wait_background(stopping)

    async def call(self, target: Target, inv: Invocation, now: float, deadline_at: float | None = None,
                   model: str | None = None, lane: str | None = None) -> InvocationResult:
        """One tracked call: in-flight, latency, breaker and metrics are updated whatever happens; with a
        ``model`` and ``lane``, so is its estimated cost (``router_estimated_cost_dollars_total``)."""
        tracker = target.tracker
        cost = self.costs.get(tracker.name)
        if cost is not None and model is not None:
            try:
                return await self._call(target, inv, now, deadline_at)
            finally:
                self.metrics.estimated_cost(model, lane or "", tracker.name).inc(cost.call(self.clock() - now))
        return await self._call(target, inv, now, deadline_at)

    async def _call(self, target: Target, inv: Invocation, now: float,
                    deadline_at: float | None = None) -> InvocationResult:
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
        end = self.clock()  # one reading: elapsed must end at ``end`` for the tracker to see when the call began
        tracker.succeeded(end, end - now, result.load_metrics)
        self.metrics.backend_calls(tracker.name, "ok").inc()
        return result
