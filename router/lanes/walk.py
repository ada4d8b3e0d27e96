"""The sync lane's decisions as a pure generator: which hop to call, where to wait, when to give up.

``walk`` yields steps (``Call`` a hop, ``Wait`` for a slot of a full hop) and is sent each step's outcome;
it returns how the request ended (``Served`` or ``Failed``). It does no I/O and reads time only through
the clock it is given, so the live sync lane (``router.lanes.sync``, asyncio) and the simulator
(``router.sim``, a virtual clock) drive the very same decisions.

A hop is skipped when its breaker is open or it has no free slot (or a cold start alone would outlast
the deadline); after a retryable failure the next hop is tried if the retry budget allows. When no hop
had a free slot, the request waits in the admission queue of the first full hop whose predicted wait fits
its budget. When none fits, or the wait ends without a slot, requests at or above the overflow urgency
still go to the first full hop over its limit; the others fail with the reason, for the caller to defer
them to a job lane or answer 503/429.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from typing import NamedTuple, Protocol

from router.flow.budget import RetryBudget
from router.flow.door import RETRY_AFTER_MAX_S, Door, Ticket
from router.state import BackendTracker
from router.types import BackendError, FailureKind, Hop

# A request with a deadline queues only if its predicted wait is within this share of its budget. Without a
# margin a class whose demand exceeds its share fills its queue up to exactly the budget, and every waiter
# at the tail times out on the first bad luck (a few more urgent arrivals than the average): a 503 after
# waiting instead of at once.
FIT = 0.8


class WalkTarget(Protocol):
    @property
    def tracker(self) -> BackendTracker: ...

    @property
    def admission(self) -> Door: ...


class WalkCounters(Protocol):
    """Where the walk counts its moves (``RouterMetrics`` fits; the simulator has its own)."""

    def fallback(self, model: str, from_backend: str, to_backend: str, reason: str) -> None: ...

    def budget_exhausted(self, model: str) -> None: ...


class Call(NamedTuple):
    """Call ``hop`` now (``now`` is the time the walk decided it); send back None or the BackendError."""

    hop: Hop
    now: float
    over_limit: bool = False  # an overflow call above the backend's limit


class Wait(NamedTuple):
    """Wait at most ``budget_s`` for a slot of ``hop``; send back None (granted: the slot is the caller's, its
    call comes next) or a ``Refusal``."""

    hop: Hop
    now: float
    budget_s: float


class Refusal(NamedTuple):
    """No slot after all: ``reason`` is the admission's (full, evicted, timeout, client_gone, breaker_open)."""

    reason: str
    retry_after_s: float = 1.0


class Served(NamedTuple):
    hop: Hop
    attempts: int


class Failed(NamedTuple):
    """No hop answered. ``error`` is the last backend failure; None when no call could be made."""

    reason: str
    hop: Hop | None
    error: BackendError | None = None
    retry_after_s: float = 1.0


# Why a sync walk took no request that a job lane could take instead (defer instead of reject).
CAPACITY_REASONS = frozenset({"saturated", "full", "evicted", "timeout", "wait_exceeds_deadline"})

Step = Call | Wait
Outcome = Served | Failed
Walk = Generator[Step, "BackendError | Refusal | None", Outcome]
# Refusals after which the next full hop may still be tried: the request never waited.
_NOT_WAITED = frozenset({"full", "breaker_open"})
_tuple_new = tuple.__new__  # a NamedTuple from all its fields, without its Python-level __new__ (every request)


def walk(model: str, hops: Sequence[Hop], ticket: Ticket, targets: Mapping[str, WalkTarget],
         budget: RetryBudget, overflow_priority: int, clock: Callable[[], float], counters: WalkCounters,
         deadline_at: float | None = None) -> Walk:
    """The decisions of serving one request on its sync hops; see the module doc."""
    budget.deposit()
    last_error: BackendError | None = None
    last_hop: Hop | None = None
    full: list[Hop] = []
    attempts = 0
    for i, hop in enumerate(hops):
        target = targets[hop.backend]
        tracker = target.tracker
        now = clock()
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
            if last_error is not None and not budget.withdraw():
                counters.budget_exhausted(model)
                break
            attempts += 1
            error = yield _tuple_new(Call, (hop, now, False))  # Call(hop, now): the usual step, made directly
            if error is None:
                return _tuple_new(Served, (hop, attempts))
            assert isinstance(error, BackendError)
            if not error.retryable:
                return Failed(error.kind.value, hop, error)
            last_error, last_hop, why = error, hop, error.kind.value
        if i + 1 < len(hops):
            counters.fallback(model, hop.backend, hops[i + 1].backend, why)
    refused: tuple[Hop, str, float] | None = None
    if full and (last_error is None or budget.withdraw()):
        waited = yield from _wait(full, targets, ticket, clock, deadline_at)
        if isinstance(waited, Hop):
            error = yield _tuple_new(Call, (waited, clock(), False))
            if error is None:
                return _tuple_new(Served, (waited, attempts + 1))
            assert isinstance(error, BackendError)
            return Failed(error.kind.value, waited, error)
        refused = waited
        if refused[1] == "client_gone":
            return Failed("client_gone", refused[0])
    elif full:
        counters.budget_exhausted(model)
    if last_error is not None:
        return Failed(last_error.kind.value, last_hop, last_error)
    now = clock()
    in_time = deadline_at is None or now < deadline_at
    if full and in_time and ticket.priority >= overflow_priority and targets[full[0].backend].tracker.admits(now):
        hop = full[0]  # never refused for capacity alone: over the limit of the first full hop
        error = yield Call(hop, now, over_limit=True)
        if error is None:
            return Served(hop, attempts + 1)
        assert isinstance(error, BackendError)
        return Failed(error.kind.value, hop, error)
    if refused is not None:
        return Failed(refused[1], refused[0], retry_after_s=refused[2])
    # no call was made and no hop was full (a full hop's wait or refusal ended the walk above)
    if not in_time:
        return Failed("deadline", None,
                      BackendError(FailureKind.TIMEOUT, "the deadline passed before a backend answered"))
    return Failed("breaker_open", hops[-1] if hops else None)


def _wait(full: list[Hop], targets: Mapping[str, WalkTarget], ticket: Ticket, clock: Callable[[], float],
          deadline_at: float | None) -> Generator[Step, BackendError | Refusal | None, Hop | tuple[Hop, str, float]]:
    """Wait on the first full hop whose predicted wait fits the request's budget: the hop whose slot it got,
    or the last refusal (hop, reason, retry-after). A refusal after waiting (timeout, evicted) ends the walk."""
    refused: tuple[Hop, str, float] | None = None
    # A backend with no latency measured yet (a serverless one still in its cold start) cannot predict a
    # wait: the hops that can go first, otherwise in route order.
    order = full if len(full) == 1 else sorted(full, key=lambda h: targets[h.backend].tracker.latency_s <= 0.0)
    for hop in order:
        door = targets[hop.backend].admission
        now = clock()
        if door.has_room():
            return hop  # a slot freed while the walk went on, and nobody waits for it
        budget_s = door.budget_s(now, deadline_at)
        _ahead, wait_s = door.predict(ticket.priority, ticket.tenant, ticket.weight, deadline_at)
        # a deadline is the client's: keep a margin for the prediction's error; max_wait alone is ours
        if budget_s <= 0.0 or wait_s > (FIT if deadline_at is not None else 1.0) * budget_s:
            door.rejected("wait_exceeds_deadline")
            if refused is None:
                refused = (hop, "wait_exceeds_deadline", min(wait_s, RETRY_AFTER_MAX_S))
            continue
        outcome = yield Wait(hop, now, budget_s)
        if outcome is None:
            return hop  # a slot is ours: the breaker let the admission hand it out
        assert isinstance(outcome, Refusal)
        refused = (hop, outcome.reason, outcome.retry_after_s)
        if outcome.reason in _NOT_WAITED:
            continue  # it never waited (or the backend broke): the next full hop may take it
        return refused
    assert refused is not None  # ``full`` is never empty, and each of its hops either returned or refused
    return refused


def job_after_failure(reason: str, error: BackendError | None, job_hop: Hop | None,
                      deferral: Callable[[], Hop | None]) -> Hop | None:
    """Where a request whose sync walk failed becomes a job: its route's job hop (unless the backend refused
    the input itself), else, when the sync lanes had no room for it, the model's deferral lane
    (``PolicyEngine.deferral``). None: the client gets the error."""
    if job_hop is None and reason in CAPACITY_REASONS:
        job_hop = deferral()
    if job_hop is None or (error is not None and not error.retryable):
        return None
    return job_hop
