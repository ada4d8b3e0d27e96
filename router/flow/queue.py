"""The waiting order of one backend's admission queue, as a pure structure: no asyncio, no clock.

Order: strict priority by urgency level; within a level, deficit round robin between tenants, each
tenant's quantum its weight (so a tenant of weight 2 is served twice as often as one of weight 1
while both wait), and a tenant that starts waiting is served before the backlogged ones, for one
quantum (FQ-CoDel's sparse flows: a light tenant waits for one free slot, not for a heavy tenant's
turn); within a tenant, earliest deadline first, then arrival order. Bounded by
``max_depth``: when full, an arrival of higher priority evicts the lowest-priority, most recently
queued waiter; an arrival of lower or equal priority is refused. Times are passed in, so a simulator
can drive the same code on a virtual clock.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(eq=False, slots=True)
class Waiter:
    """One request waiting for a slot. ``deadline`` is absolute (the caller's clock); ``seq`` is set on push."""

    priority: int
    tenant: str
    weight: float = 1.0
    deadline: float = math.inf
    arrival: float = 0.0
    seq: int = 0


def _order(w: Waiter) -> tuple[float, int]:
    return (w.deadline, w.seq)


_tuple_new = tuple.__new__  # a NamedTuple from all its fields, without its Python-level __new__


class _Tenant:
    __slots__ = ("deficit", "name", "waiters", "weight")

    def __init__(self, name: str, weight: float) -> None:
        self.name = name
        self.weight = weight
        self.deficit = 0.0
        self.waiters: list[Waiter] = []  # earliest deadline first, then arrival


class _Level:
    """One urgency level: its tenants in deficit-round-robin order, and its waiters by arrival (for eviction)."""

    __slots__ = ("by_seq", "new", "old", "tenants")

    def __init__(self) -> None:
        self.tenants: dict[str, _Tenant] = {}
        self.new: deque[_Tenant] = deque()  # tenants that just started waiting: served first, one quantum each
        self.old: deque[_Tenant] = deque()  # backlogged tenants, round robin; the front one is being served
        self.by_seq: dict[int, Waiter] = {}  # insertion order is arrival order


class Push(NamedTuple):
    """What a push did: whether the arrival was queued, and whom it evicted to make room."""

    queued: bool
    evicted: Waiter | None = None


class AdmissionQueue:
    """Waiters of one backend in serving order. ``max_depth`` 0 refuses everyone (queueing off)."""

    __slots__ = ("_counts", "_levels", "_priorities", "_seq", "max_depth", "size")

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self._levels: dict[int, _Level] = {}
        self._priorities: list[int] = []  # levels that have waiters, most urgent first
        self._seq = 0
        self.size = 0  # waiters queued (read only): cheaper to read than len(), a Python-level call
        self._counts: tuple[tuple[int, int], ...] | None = None  # levels(), until the queue changes

    def __len__(self) -> int:
        return self.size

    def levels(self) -> tuple[tuple[int, int], ...]:
        """(priority, waiters) of every level that has waiters, most urgent first."""
        counts = self._counts
        if counts is None:  # every request's snapshot reads it: built once per change of the queue
            levels = self._levels
            counts = self._counts = tuple((p, len(levels[p].by_seq)) for p in self._priorities)
        return counts

    def push(self, waiter: Waiter) -> Push:
        """Queue ``waiter``; when full, evict a less urgent waiter to make room or refuse."""
        evicted = None
        if self.size >= self.max_depth:
            evicted = self._victim(waiter.priority)
            if evicted is None:
                return Push(False)
            self.remove(evicted)
        self._seq += 1
        waiter.seq = self._seq
        level = self._levels.get(waiter.priority)
        if level is None:
            level = self._levels[waiter.priority] = _Level()
            bisect.insort(self._priorities, waiter.priority, key=lambda p: -p)
        tenant = level.tenants.get(waiter.tenant)
        if tenant is None:
            tenant = level.tenants[waiter.tenant] = _Tenant(waiter.tenant, waiter.weight)
            level.new.append(tenant)
        tenant.weight = waiter.weight
        waiters = tenant.waiters
        if not waiters or _order(waiters[-1]) <= (waiter.deadline, waiter.seq):
            waiters.append(waiter)  # the usual case (no deadline, or a later one): insort's place, without its search
        else:
            bisect.insort(waiters, waiter, key=_order)
        level.by_seq[waiter.seq] = waiter
        self.size += 1
        self._counts = None
        return _tuple_new(Push, (True, evicted))

    def pop(self) -> Waiter | None:
        """The next waiter to serve, removed; None when empty."""
        if not self._priorities:
            return None
        priority = self._priorities[0]
        level = self._levels[priority]
        while True:
            turns = level.new or level.old
            tenant = turns[0]
            if tenant.deficit >= 1.0:
                tenant.deficit -= 1.0
                waiter = tenant.waiters.pop(0)
                del level.by_seq[waiter.seq]
                self.size -= 1
                self._counts = None
                if not tenant.waiters:
                    self._drop_tenant(priority, level, tenant)
                elif tenant.deficit < 1.0:
                    level.old.append(turns.popleft())  # its turn is over: to the end of the round
                return waiter
            tenant.deficit += tenant.weight  # a new turn: one quantum
            if tenant.deficit < 1.0:
                level.old.append(turns.popleft())  # a weight below 1 needs several rounds to earn one request

    def remove(self, waiter: Waiter) -> bool:
        """Take ``waiter`` out (it timed out, left, was evicted); False if it was not queued."""
        level = self._levels.get(waiter.priority)
        if level is None or level.by_seq.get(waiter.seq) is not waiter:
            return False
        tenant = level.tenants[waiter.tenant]
        # (deadline, seq) is unique in a queue: the search lands on the waiter itself
        del tenant.waiters[bisect.bisect_left(tenant.waiters, _order(waiter), key=_order)]
        del level.by_seq[waiter.seq]
        self.size -= 1
        self._counts = None
        if not tenant.waiters:
            self._drop_tenant(waiter.priority, level, tenant)
        return True

    def ahead(self, priority: int, tenant: str, weight: float = 1.0, deadline: float = math.inf,
              seq: int | None = None) -> int:
        """How many would be served before a waiter like this one (queued with ``seq``, or arriving now).

        Everyone of a more urgent level; of its own tenant, those with an earlier deadline (or the same,
        queued before); of every other tenant of its level, what deficit round robin serves while this
        tenant earns its turn: their weight's share of the rounds it needs, at most all they have.
        """
        n = 0
        for p in self._priorities:
            if p <= priority:
                break
            n += len(self._levels[p].by_seq)
        level = self._levels.get(priority)
        if level is None:
            return n
        own = level.tenants.get(tenant)
        if own is None:  # it would start waiting: after the other new tenants' quantum, before the backlog
            return n + sum(min(len(t.waiters), math.ceil(t.weight)) for t in level.new)
        mine = bisect.bisect_left(own.waiters, (deadline, math.inf if seq is None else seq), key=_order)
        rounds = (mine + 1) / own.weight
        for other in level.tenants.values():
            if other is not own:
                n += min(len(other.waiters), math.ceil(rounds * other.weight))
        return n + mine

    def _victim(self, priority: int) -> Waiter | None:
        """The most recently queued waiter of the least urgent level, if that level is below ``priority``."""
        if not self._priorities or self._priorities[-1] >= priority:
            return None
        return next(reversed(self._levels[self._priorities[-1]].by_seq.values()))

    def _drop_tenant(self, priority: int, level: _Level, tenant: _Tenant) -> None:
        """A tenant with nobody waiting leaves the round and its unused deficit (no banking of credit)."""
        del level.tenants[tenant.name]
        turns = level.new if tenant in level.new else level.old
        if turns[0] is tenant:
            turns.popleft()
        else:
            turns.remove(tenant)
        if not level.by_seq:
            del self._levels[priority]
            self._priorities.remove(priority)


class ArrivalRates:
    """Queue arrivals per second at each urgency level, exponentially decayed over ``window_s``.

    Strict priority means a waiter is overtaken by every more urgent arrival: the slots left for it are
    the backend's service rate minus the more urgent arrival rate. Times are passed in.
    """

    __slots__ = ("_levels", "window_s")

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        # priority -> (decayed rate at the last arrival, its time, when this run of arrivals began)
        self._levels: dict[int, tuple[float, float, float]] = {}

    def observe(self, priority: int, now: float) -> None:
        rate, at, since = self._levels.get(priority, (0.0, now, now))
        rate *= math.exp(-max(0.0, now - at) / self.window_s)
        if rate < 0.01 / self.window_s:
            since = now  # quiet for several windows: a new run of arrivals begins
        self._levels[priority] = (rate + 1.0 / self.window_s, now, since)

    def above(self, priority: int, now: float) -> float:
        """Arrivals per second of every level more urgent than ``priority``."""
        total = 0.0
        w = self.window_s
        for p, (rate, at, since) in self._levels.items():
            if p > priority:
                # a run younger than the window has not filled it yet: scale up, as if it had always run
                # (at least a quarter window, so one arrival is not taken for a flood)
                filled = 1.0 - math.exp(-max(now - since, 0.25 * w) / w)
                total += rate * math.exp(-max(0.0, now - at) / w) / filled
        return total


def predicted_wait_s(ahead: int, capacity: int, latency_s: float, rate_above: float = 0.0) -> float:
    """The wait of a request with ``ahead`` waiters before it, on a full backend of ``capacity`` slots whose
    calls take ``latency_s``: slots free at ``capacity / latency_s`` per second, of which more urgent
    arrivals (``rate_above`` per second) take theirs first. Infinite when they leave it (nearly) nothing."""
    if latency_s <= 0.0:
        return 0.0
    service = max(1, capacity) / latency_s
    spare = service - rate_above
    if spare <= 0.05 * service:
        return math.inf
    return (ahead + 1) / spare
