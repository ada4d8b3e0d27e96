"""The sync lane: call the route's backends in order until one answers.

A hop is skipped when its breaker is open or it is at capacity; after a retryable failure the next
hop is tried if the retry budget allows, so a failing fleet is not hit by a retry storm. Every move
along the chain is counted in ``router_fallbacks_total``. When every hop is merely full, requests at
or above the overflow urgency still go to the first of them; the others get 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import structlog

from router.flow.budget import RetryBudget
from router.lanes.streams import TrackedStream
from router.metrics import RouterMetrics
from router.state import BackendTracker, Clock
from router.types import Backend, BackendError, CallerGone, FailureKind, Hop, Invocation, InvocationResult, Route

log = structlog.get_logger("router.sync")


@dataclass(frozen=True, slots=True)
class Target:
    backend: Backend
    tracker: BackendTracker


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
                    targets: Mapping[str, Target], deadline_at: float | None = None) -> SyncOutcome:
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
            elif tracker.inflight >= tracker.capacity:
                full.append(hop)
                why = "saturated"
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
        if last_error is not None:
            raise SyncFailure(last_error.kind.value, last_hop, last_error)
        if full and priority >= self.overflow_priority:
            hop = full[0]
            try:
                result = await self.call(targets[hop.backend], inv, self.clock(), deadline_at)
            except BackendError as exc:
                raise SyncFailure(exc.kind.value, hop, exc) from None
            return SyncOutcome(result, hop, attempts + 1)
        if deadline_at is not None and self.clock() >= deadline_at:
            raise SyncFailure("deadline", last_hop,
                              BackendError(FailureKind.TIMEOUT, "the deadline passed before a backend answered"))
        raise SyncFailure("saturated" if full else "breaker_open", hops[-1] if hops else None)

    async def room(self, target: Target, stopping: Callable[[], bool], poll_s: float = 0.02) -> bool:
        """Wait until ``target`` has a free slot its breaker admits: background work (jobs, batches) takes the
        room sync traffic leaves. False, at once, when ``stopping()`` says to give up instead."""
        tracker = target.tracker
        while tracker.inflight >= tracker.capacity or not tracker.admits(self.clock()):
            if stopping():
                return False
            await asyncio.sleep(poll_s)
        return True

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
