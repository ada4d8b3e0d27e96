"""A backend's door on a fake clock: who gets a freed slot, what is reserved, predicted waits, breaker hand-off.

The door is pure (``router.flow.door``): a freed slot is handed out the moment the tracker says so, and a
waiter learns its fate through the three hooks a subclass gives it; here they note what happened.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from router.flow.door import RETRY_AFTER_MAX_S, Door, QueueSettings, Ticket
from router.flow.limits import GradientSettings
from router.flow.queue import Waiter, predicted_wait_s
from router.metrics import RouterMetrics
from router.state import BackendTracker, TrackerSettings
from router.types import FailureKind

CRITICAL, HIGH, NORMAL, LOW = 3, 2, 1, 0


class Clock:
    def __init__(self, now: float = 10.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class NotingDoor(Door):
    """The door's rules, with each waiter's fate noted; a waiter in ``gone`` no longer takes a slot."""

    def __init__(self, tracker: BackendTracker, settings: QueueSettings | None = None) -> None:
        self.metrics_ = RouterMetrics()
        super().__init__("b", tracker, settings or QueueSettings(max_depth=16, max_wait_s=1.0), self.metrics_)
        self.granted: list[Any] = []
        self.turned: list[tuple[Waiter, str]] = []
        self.gone: set[int] = set()

    def grant(self, waiter: Waiter) -> bool:
        if id(waiter) in self.gone:
            return False
        self.granted.append(waiter)
        return True

    def grant_background(self, token: Any) -> bool:
        if id(token) in self.gone:
            return False
        self.granted.append(token)
        return True

    def turn_away(self, waiter: Waiter, reason: str) -> None:
        self.turned.append((waiter, reason))

    def start(self, now: float) -> None:
        """The granted waiter starts its call: its reserved slot becomes in flight."""
        self.reserved -= 1
        self.tracker.start(now)

    def rejections(self, reason: str) -> float:
        labels = {"backend": "b", "reason": reason}
        return self.metrics_.registry.get_sample_value("router_queue_rejected_total", labels) or 0.0

    def waited(self) -> tuple[float, float]:
        """(count, sum) of the queue waits observed."""
        registry, labels = self.metrics_.registry, {"backend": "b"}
        return (registry.get_sample_value("router_queue_wait_seconds_count", labels) or 0.0,
                registry.get_sample_value("router_queue_wait_seconds_sum", labels) or 0.0)


def door_of(clock: Clock, capacity: int = 1, settings: QueueSettings | None = None, **kw: Any) -> NotingDoor:
    return NotingDoor(BackendTracker("b", TrackerSettings(max_concurrency=capacity, **kw), clock), settings)


def queued(door: NotingDoor, clock: Clock, *waiters: Waiter) -> list[Waiter]:
    for w in waiters:
        w.arrival = clock.now
        assert door.enqueue(w, clock.now)
    return list(waiters)


def test_a_freed_slot_goes_to_the_queues_head_and_stays_reserved_until_its_call_starts() -> None:
    clock = Clock()
    door = door_of(clock)
    assert door.has_room()
    door.tracker.start(clock.now)
    assert not door.has_room()
    first, second = queued(door, clock, Waiter(NORMAL, "a"), Waiter(NORMAL, "a"))
    clock.now += 0.25
    door.tracker.succeeded(clock.now, 0.25)  # the slot frees: handed to the head at once
    assert door.granted == [first]
    assert door.waited() == (1.0, 0.25)
    assert not door.has_room()  # reserved for it, although nothing is in flight and the queue has one left
    door.start(clock.now)
    door.tracker.succeeded(clock.now + 0.5, 0.5)
    assert door.granted == [first, second]
    door.start(clock.now)
    door.tracker.succeeded(clock.now + 1.0, 0.5)
    assert door.has_room()


def test_a_free_slot_is_no_room_while_anyone_waits_nor_while_it_is_reserved() -> None:
    clock = Clock()
    door = door_of(clock, capacity=2)
    queued(door, clock, Waiter(NORMAL, "a"))
    assert not door.has_room()  # a slot is free, but a new arrival never takes it from a waiter
    door.dispatch()
    assert len(door.granted) == 1
    assert door.has_room()  # one reserved, one free, nobody waits
    queued(door, clock, Waiter(NORMAL, "a"))
    door.dispatch()
    assert len(door.granted) == 2
    assert not door.has_room()  # both slots reserved for grants not yet started, nothing in flight


def test_every_slot_a_reload_adds_is_handed_out_at_once() -> None:
    clock = Clock()
    door = door_of(clock)
    door.tracker.start(clock.now)
    waiters = queued(door, clock, *(Waiter(NORMAL, "a") for _ in range(3)))
    door.tracker.reconfigure(TrackerSettings(max_concurrency=3, adaptive=GradientSettings(initial=3, max=3)))
    assert door.granted == waiters[:2]
    assert door.reserved == 2


def test_a_waiter_gone_before_its_grant_passes_the_slot_to_the_next() -> None:
    clock = Clock()
    door = door_of(clock)
    door.tracker.start(clock.now)
    gone, there = queued(door, clock, Waiter(NORMAL, "a"), Waiter(NORMAL, "a"))
    door.gone.add(id(gone))
    door.tracker.succeeded(clock.now + 0.1, 0.1)
    assert door.granted == [there]
    assert door.reserved == 1
    assert door.waited()[0] == 1.0  # only the one that got the slot is observed here


def test_a_slot_given_back_by_its_waiter_goes_to_the_next() -> None:
    clock = Clock()
    door = door_of(clock)
    door.tracker.start(clock.now)
    first, second = queued(door, clock, Waiter(NORMAL, "a"), Waiter(NORMAL, "a"))
    door.tracker.succeeded(clock.now + 0.1, 0.1)
    door.release()  # the first left before starting its call
    assert door.granted == [first, second]
    assert door.reserved == 1
    door.start(clock.now)
    assert door.reserved == 0


def test_background_work_gets_only_the_slots_no_sync_request_waits_for() -> None:
    clock = Clock()
    door = door_of(clock, capacity=2)
    assert door.background_room(clock.now)
    door.tracker.start(clock.now)
    door.tracker.start(clock.now)
    job, sync = object(), Waiter(NORMAL, "a")
    door.background.append(job)
    assert not door.background_room(clock.now)  # full, and a background task already waits
    queued(door, clock, sync)
    door.tracker.succeeded(clock.now + 0.1, 0.1)
    assert door.granted == [sync]  # sync first, though the job asked before
    door.tracker.succeeded(clock.now + 0.2, 0.1)
    assert door.granted == [sync, job]
    assert door.reserved == 2
    assert not door.has_room()  # both slots reserved, nothing in flight
    assert not door.background_room(clock.now)
    door.start(clock.now)
    door.start(clock.now)
    door.tracker.succeeded(clock.now + 0.3, 0.1)
    assert door.background_room(clock.now)


def test_when_the_breaker_opens_the_waiters_are_turned_away_to_move_along_their_routes() -> None:
    clock = Clock()
    door = door_of(clock, breaker_failures=1, breaker_open_s=5.0)
    door.tracker.start(clock.now)
    first, second = queued(door, clock, Waiter(NORMAL, "a"), Waiter(LOW, "a"))
    door.background.append(job := object())
    assert not door.background_room(clock.now)
    door.tracker.failed(clock.now + 0.1, FailureKind.UNAVAILABLE)
    assert door.turned == [(first, "breaker_open"), (second, "breaker_open")]
    assert door.granted == []  # not even the background task: an open backend takes no calls
    assert len(door.queue) == 0
    assert list(door.background) == [job]
    assert not door.background_room(clock.now + 1.0)


def test_half_open_a_door_hands_out_one_probe_slot_at_a_time() -> None:
    clock = Clock()
    door = door_of(clock, capacity=2, breaker_failures=1, breaker_open_s=5.0)
    door.tracker.start(clock.now)
    door.tracker.failed(clock.now, FailureKind.UNAVAILABLE)  # open
    clock.now += 5.0  # half-open
    assert door.background_room(clock.now)  # no probe under way: a slot may become the probe
    door.tracker.start(clock.now)  # a probe
    first, second = queued(door, clock, Waiter(NORMAL, "a"), Waiter(NORMAL, "a"))
    door.dispatch()
    assert (door.granted, door.turned) == ([], [])  # they wait for the probe's verdict
    door.tracker.abandoned(clock.now + 0.1)  # the probe ended without one: the next waiter probes
    assert door.granted == [first]
    assert door.turned == []
    door.start(clock.now + 0.1)
    door.tracker.succeeded(clock.now + 0.2, 0.1)  # the probe answered: closed, the rest may go
    assert door.granted == [first, second]


def test_a_full_queue_refuses_or_evicts_and_counts_why() -> None:
    clock = Clock()
    door = door_of(clock, settings=QueueSettings(max_depth=1, max_wait_s=1.0))
    door.tracker.start(clock.now)
    (low,) = queued(door, clock, Waiter(LOW, "a"))
    clock.now += 0.5
    high = Waiter(HIGH, "a", arrival=clock.now)
    assert door.enqueue(high, clock.now)
    assert door.turned == [(low, "evicted")]
    assert door.rejections("evicted") == 1.0
    assert door.waited() == (1.0, 0.5)
    assert not door.enqueue(Waiter(HIGH, "b", arrival=clock.now), clock.now)
    assert door.rejections("full") == 1.0
    door.reconfigure(QueueSettings(max_depth=2, max_wait_s=3.0))
    assert door.enqueue(Waiter(HIGH, "b", arrival=clock.now), clock.now)
    assert door.budget_s(clock.now, None) == 3.0


def test_a_waiter_whose_budget_ran_out_leaves_the_queue_counted_as_a_timeout() -> None:
    clock = Clock()
    door = door_of(clock)
    door.tracker.start(clock.now)
    late, other = queued(door, clock, Waiter(NORMAL, "a"), Waiter(NORMAL, "a"))
    clock.now += 0.75
    door.expired(late)
    assert door.rejections("timeout") == 1.0
    assert door.waited() == (1.0, 0.75)
    door.tracker.succeeded(clock.now, 0.75)
    assert door.granted == [other]


def test_a_snapshot_shows_the_doors_queue() -> None:
    clock = Clock()
    door = door_of(clock)
    door.tracker.start(clock.now)
    queued(door, clock, Waiter(NORMAL, "a"), Waiter(NORMAL, "b"), Waiter(HIGH, "a"))
    state = door.tracker.state(clock.now)
    assert (state.queue_depth, state.queue_levels) == (3, ((HIGH, 1), (NORMAL, 2)))


def test_the_budget_is_max_wait_or_less_so_the_call_still_makes_its_deadline() -> None:
    clock = Clock()
    door = door_of(clock)
    door.tracker.start(clock.now)
    door.tracker.succeeded(clock.now + 0.25, 0.25)  # a call takes 0.25 s
    assert door.budget_s(20.0, None) == 1.0
    assert door.budget_s(20.0, 20.75) == 0.5
    assert door.budget_s(20.0, 30.0) == 1.0


def test_a_prediction_without_a_tenant_is_the_anonymous_tenants() -> None:
    clock = Clock()
    door = door_of(clock)
    door.tracker.start(clock.now)
    queued(door, clock, Waiter(NORMAL, "anonymous"), Waiter(NORMAL, "anonymous"))
    assert door.predict(NORMAL)[0] == 2  # behind both: the same tenant
    assert door.predict(NORMAL, "b")[0] == 1  # another tenant: after one turn of theirs


def test_with_room_the_predicted_wait_is_none() -> None:
    clock = Clock()
    door = door_of(clock)
    assert door.predict(NORMAL) == (0, 0.0)


def test_the_predicted_wait_counts_the_waiters_ahead_and_the_more_urgent_arrivals() -> None:
    clock = Clock()
    door = door_of(clock, capacity=4)
    for _ in range(4):
        door.tracker.start(clock.now)
    door.tracker.succeeded(clock.now + 0.1, 0.1)  # a call takes 0.1 s: 4 slots free 40 per second
    door.tracker.start(clock.now)
    queued(door, clock, Waiter(NORMAL, "a"), Waiter(NORMAL, "a"), Waiter(HIGH, "x"))
    one_high = 0.5 / (1 - math.exp(-0.25))  # the arrival rate one arrival stands for (ArrivalRates)
    # a new tenant: the high waiter, and one turn of tenant a
    ahead, wait = door.predict(NORMAL, "b")
    assert ahead == 2
    assert wait == pytest.approx(predicted_wait_s(2, 4, 0.1, one_high))
    # its own tenant: behind both of its requests, unless its deadline comes first
    ahead, wait = door.predict(NORMAL, "a")
    assert ahead == 3
    assert wait == pytest.approx(predicted_wait_s(3, 4, 0.1, one_high))
    assert door.predict(NORMAL, "a", deadline_at=11.0)[0] == 1
    assert door.refusal_wait(Ticket(NORMAL, "a"), None) == pytest.approx(predicted_wait_s(3, 4, 0.1, one_high))
    assert door.refusal_wait(Ticket(NORMAL, "a"), 11.0) == pytest.approx(predicted_wait_s(1, 4, 0.1, one_high))
    assert door.refusal_wait(Ticket(NORMAL, "b"), None) == pytest.approx(predicted_wait_s(2, 4, 0.1, one_high))


@pytest.mark.parametrize(("capacity", "waiting", "expected"), [(1, 3, 20.0), (2, 3, 10.0), (2, 4, 15.0)])
def test_with_no_call_finished_the_wait_is_a_cold_start_per_round_of_slots(capacity: int, waiting: int,
                                                                            expected: float) -> None:
    clock = Clock()
    door = door_of(clock, capacity=capacity, serverless=True, cold_start_s=5.0)
    for _ in range(capacity):
        door.tracker.start(clock.now)
    queued(door, clock, *(Waiter(NORMAL, "a") for _ in range(waiting)))
    assert door.predict(NORMAL, "a") == (waiting, expected)


def test_a_refusals_retry_after_is_capped() -> None:
    clock = Clock()
    door = door_of(clock, serverless=True, cold_start_s=100.0)
    door.tracker.start(clock.now)
    queued(door, clock, Waiter(NORMAL, "a"))
    assert door.predict(NORMAL, "a")[1] == 200.0
    assert door.refusal_wait(Ticket(NORMAL, "a"), None) == RETRY_AFTER_MAX_S
