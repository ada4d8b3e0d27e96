"""The asyncio face of a backend's admission queue: who gets the next free slot, and when.

A request takes a slot at once only if one is free *and nobody waits* (a new arrival never takes a
slot from a waiter). Otherwise it waits in the backend's ``AdmissionQueue`` for at most
``min(max_wait, its remaining deadline)``. A slot freed by a call that ends (the tracker's
``on_free``) is handed to the queue's head at once, reserved for it until it starts its call: no
polling. Background work (job workers, the batch runner) is a class of its own, granted a slot only
when no sync request waits. Every refusal carries a reason: ``full``, ``evicted``,
``wait_exceeds_deadline``, ``timeout``, ``client_gone``. The rules themselves are ``router.flow.door``'s
(pure, shared with the simulator); this module only waits.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from router.flow.door import BREAKER_OPEN, RETRY_AFTER_MAX_S, Door, QueueMetrics, QueueSettings, Ticket
from router.flow.queue import Waiter
from router.state import BackendTracker

GRANTED = "granted"
# A waiting background task re-checks whether it should give up (draining) this often; slots never need it.
BACKGROUND_CHECK_S = 0.5

__all__ = ["BREAKER_OPEN", "Admission", "Admissions", "QueueMetrics", "QueueSettings", "Rejected", "Ticket"]


class Rejected(Exception):
    """No slot for this request on this backend: ``full``, ``evicted``, ``wait_exceeds_deadline``, ``timeout``,
    ``client_gone``, or ``breaker_open`` (the backend's breaker opened while it waited)."""

    def __init__(self, reason: str, retry_after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = min(retry_after_s, RETRY_AFTER_MAX_S)


@dataclass(eq=False, slots=True)
class _SyncWaiter(Waiter):
    grant: asyncio.Future[str] | None = None


class Admission(Door):
    """One backend's door (``router.flow.door``) with asyncio waits: a waiter awaits a future the hand-off
    completes."""

    async def wait(self, ticket: Ticket, now: float, budget_s: float, deadline_at: float | None = None) -> None:
        """Wait for a slot for at most ``budget_s``. On return the slot is the caller's: it must start its
        call (``tracker.start``) before it next awaits. Raises Rejected otherwise."""
        grant: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiter = _SyncWaiter(ticket.priority, ticket.tenant, ticket.weight,
                             math.inf if deadline_at is None else deadline_at, now, grant=grant)
        if not self.enqueue(waiter, now):
            raise Rejected("full", self.refusal_wait(ticket, deadline_at))
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
            outcome = grant.result() if grant.done() and not grant.cancelled() else None
            self._abandon(waiter, grant)
            if outcome is None:
                self.observe(waiter, "client_gone")
            elif outcome == GRANTED:
                self.rejected("client_gone")  # its wait was observed when the slot was handed to it
            raise Rejected("client_gone")  # (evicted meanwhile: counted as that already)
        if not grant.done():
            self.expired(waiter)
            raise Rejected("timeout", budget_s)
        outcome = grant.result()
        if outcome != GRANTED:
            raise Rejected(outcome, self.refusal_wait(ticket, deadline_at))
        self.reserved -= 1  # the caller starts its call before it next awaits: the slot becomes in-flight

    # --- background work ------------------------------------------------------------------------

    @property
    def background_waiting(self) -> int:
        """Background tasks (job workers, batch runs) waiting for a slot."""
        return len(self.background)

    async def wait_background(self, stopping: Callable[[], bool]) -> bool:
        """Wait for a slot no sync request wants: job workers and batch runs take only the room sync traffic
        leaves. True once the slot is the caller's (start the call before the next await); False when
        ``stopping()`` says to give up."""
        if self.background_room(self.clock()):
            return True
        grant: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.background.append(grant)
        try:
            while not grant.done():
                await asyncio.wait((grant,), timeout=BACKGROUND_CHECK_S)
                if grant.done():
                    break
                if stopping():
                    self.background.remove(grant)
                    return False
                self.dispatch()  # a breaker that half-opened since frees no slot and calls nobody
        except BaseException:
            if grant.done() and not grant.cancelled():
                self.release()
            elif grant in self.background:
                self.background.remove(grant)
            raise
        self.reserved -= 1
        return True

    # --- how a waiter learns its fate -----------------------------------------------------------

    def grant(self, waiter: Waiter) -> bool:
        if not isinstance(waiter, _SyncWaiter) or waiter.grant is None or waiter.grant.done():
            return False
        waiter.grant.set_result(GRANTED)
        return True

    def grant_background(self, token: Any) -> bool:
        if token.done():
            return False
        token.set_result(GRANTED)
        return True

    def turn_away(self, waiter: Waiter, reason: str) -> None:
        if isinstance(waiter, _SyncWaiter) and waiter.grant is not None and not waiter.grant.done():
            waiter.grant.set_result(reason)

    def _abandon(self, waiter: _SyncWaiter, grant: asyncio.Future[str]) -> None:
        if grant.done() and not grant.cancelled() and grant.result() == GRANTED:
            self.release()
        else:
            self.queue.remove(waiter)
            if not grant.done():
                grant.cancel()


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
