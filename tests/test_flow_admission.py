"""A backend's admission with asyncio waits: what a waiting request is told, and that no slot is lost or doubled.

The backend's tracker runs on a fake clock (the door's rules read it); the waits are real asyncio waits, kept
to a few milliseconds where they must run out.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from router.flow.admission import Admission, Admissions, QueueSettings, Rejected, Ticket
from router.flow.door import RETRY_AFTER_MAX_S
from router.metrics import RouterMetrics
from router.state import BackendTracker, TrackerSettings
from router.types import CallerGone, FailureKind
from tests.conftest import until

HIGH, NORMAL, LOW = 2, 1, 0
LONG = 30.0  # a budget no test waits out


class Clock:
    def __init__(self, now: float = 10.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Backend:
    """One backend's tracker and admission on a fake clock, with the metrics they report to."""

    def __init__(self, capacity: int = 1, settings: QueueSettings | None = None, **kw: Any) -> None:
        self.clock = Clock()
        self.metrics = RouterMetrics()
        self.tracker = BackendTracker("b", TrackerSettings(max_concurrency=capacity, **kw), self.clock)
        self.admission = Admission("b", self.tracker, settings or QueueSettings(max_depth=8, max_wait_s=LONG),
                                   self.metrics)

    def fill(self) -> None:
        while self.tracker.inflight < self.tracker.capacity:
            self.tracker.start(self.clock.now)

    def finish_one(self, seconds: float = 0.1) -> None:
        self.tracker.succeeded(self.clock.now, seconds)

    def waiter(self, ticket: Ticket | None = None, budget_s: float = LONG,
               deadline_at: float | None = None) -> asyncio.Task[None]:
        return asyncio.create_task(self.admission.wait(ticket or Ticket(NORMAL), self.clock.now, budget_s,
                                                       deadline_at))

    async def queued(self, n: int) -> None:
        await until(lambda: len(self.admission.queue) == n)

    def rejections(self, reason: str) -> float:
        labels = {"backend": "b", "reason": reason}
        return self.metrics.registry.get_sample_value("router_queue_rejected_total", labels) or 0.0

    def waits_observed(self) -> float:
        return self.metrics.registry.get_sample_value("router_queue_wait_seconds_count", {"backend": "b"}) or 0.0

    def waited_s(self) -> float:
        return self.metrics.registry.get_sample_value("router_queue_wait_seconds_sum", {"backend": "b"}) or 0.0


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` (as a server stopping does) and see it end so."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class Disconnect:
    """A client's disconnect, as ``Ticket.gone`` awaits it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def gone(self) -> Callable[[], Awaitable[object]]:
        return self.event.wait


async def test_a_waiter_gets_the_slot_a_finished_call_frees_and_no_slot_is_lost() -> None:
    b = Backend()
    b.fill()
    task = b.waiter()
    await b.queued(1)
    b.clock.now += 0.25
    b.finish_one()
    await task  # the slot is the waiter's: it starts its call before it next awaits
    assert (b.waits_observed(), b.waited_s()) == (1.0, 0.25)
    b.tracker.start(b.clock.now)
    assert not b.admission.has_room()
    b.finish_one()
    assert b.admission.has_room()  # its slot came back: nothing stayed reserved


async def test_a_full_queue_refuses_with_the_predicted_wait_as_retry_after() -> None:
    b = Backend(serverless=True, cold_start_s=2.5, settings=QueueSettings(max_depth=0, max_wait_s=LONG))
    b.fill()
    with pytest.raises(Rejected) as refused:
        await b.admission.wait(Ticket(NORMAL), b.clock.now, LONG)
    assert refused.value.reason == "full"
    assert refused.value.retry_after_s == 2.5  # no call finished yet: one cold start
    assert b.rejections("full") == 1.0
    assert len(b.admission.queue) == 0


async def test_a_full_queues_retry_after_counts_only_the_waiters_before_this_requests_deadline() -> None:
    b = Backend(settings=QueueSettings(max_depth=2, max_wait_s=LONG))
    b.tracker.start(b.clock.now)
    b.finish_one(0.1)  # 10 calls a second
    b.fill()
    waiters = [b.waiter(), b.waiter()]
    await b.queued(2)
    with pytest.raises(Rejected) as refused:
        await b.admission.wait(Ticket(NORMAL), b.clock.now, LONG)
    assert refused.value.retry_after_s == pytest.approx(0.3)  # behind both
    with pytest.raises(Rejected) as refused:
        await b.admission.wait(Ticket(NORMAL), b.clock.now, LONG, deadline_at=b.clock.now + 1.0)
    assert refused.value.retry_after_s == pytest.approx(0.1)  # its deadline comes first: ahead of both
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_a_waiter_stops_watching_for_its_clients_disconnect_once_its_wait_ends() -> None:
    b = Backend()
    b.fill()
    client = Disconnect()
    task = b.waiter(Ticket(NORMAL, gone=client.gone()))
    await b.queued(1)
    b.finish_one()
    await task
    await asyncio.sleep(0)  # a cancelled watcher ends on the next turn of the loop
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_disconnect_that_arrives_as_an_error_is_handled_without_an_unretrieved_exception() -> None:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    b = Backend()
    b.fill()
    client = Disconnect()

    async def gone() -> None:
        await client.event.wait()
        raise CallerGone

    task = b.waiter(Ticket(NORMAL, gone=gone))
    await b.queued(1)
    client.event.set()
    with pytest.raises(Rejected, match="client_gone"):
        await task
    del task  # with it the watcher: an exception nobody retrieved is reported once it is collected
    await asyncio.sleep(0)  # the loop's last callbacks of the watcher run and let go of it
    gc.collect()
    assert errors == []


async def test_a_wait_that_runs_out_is_a_timeout_with_the_budget_as_retry_after_and_leaves_the_queue() -> None:
    b = Backend()
    b.fill()
    with pytest.raises(Rejected) as refused:
        await b.admission.wait(Ticket(NORMAL), b.clock.now, 0.01)
    assert (refused.value.reason, refused.value.retry_after_s) == ("timeout", 0.01)
    assert b.rejections("timeout") == 1.0
    assert len(b.admission.queue) == 0
    b.finish_one()
    assert b.admission.has_room()  # the slot went to no one


async def test_a_budget_already_spent_times_out_at_once() -> None:
    b = Backend()
    b.fill()
    with pytest.raises(Rejected) as refused:
        await asyncio.wait_for(b.admission.wait(Ticket(NORMAL), b.clock.now, -1.0), 5.0)
    assert refused.value.reason == "timeout"


async def test_a_waiter_evicted_by_a_more_urgent_one_is_told_with_a_retry_after() -> None:
    b = Backend(serverless=True, cold_start_s=4.0, settings=QueueSettings(max_depth=1, max_wait_s=LONG))
    b.fill()
    low = b.waiter(Ticket(LOW))
    await b.queued(1)
    high = b.waiter(Ticket(HIGH))
    with pytest.raises(Rejected) as refused:
        await low
    assert (refused.value.reason, refused.value.retry_after_s) == ("evicted", 8.0)  # behind the high one
    assert b.rejections("evicted") == 1.0
    b.finish_one()
    await high


async def test_waiters_are_turned_away_when_the_breaker_opens() -> None:
    b = Backend(breaker_failures=1, breaker_open_s=5.0)
    b.fill()
    task = b.waiter()
    await b.queued(1)
    b.tracker.failed(b.clock.now, FailureKind.UNAVAILABLE)
    with pytest.raises(Rejected) as refused:
        await task
    assert refused.value.reason == "breaker_open"


async def test_a_client_that_leaves_while_waiting_is_counted_once_and_takes_no_slot() -> None:
    b = Backend()
    b.fill()
    client = Disconnect()
    task = b.waiter(Ticket(NORMAL, gone=client.gone()))
    await b.queued(1)
    client.event.set()
    with pytest.raises(Rejected) as refused:
        await task
    assert refused.value.reason == "client_gone"
    assert b.rejections("client_gone") == 1.0
    assert len(b.admission.queue) == 0
    b.finish_one()
    assert b.admission.has_room()


async def test_a_client_that_leaves_just_as_its_slot_is_granted_passes_the_slot_on() -> None:
    b = Backend()
    b.fill()
    client = Disconnect()
    leaving = b.waiter(Ticket(NORMAL, gone=client.gone()))
    await b.queued(1)
    staying = b.waiter()
    await b.queued(2)
    b.finish_one()  # granted to the first ...
    client.event.set()  # ... which left in the same turn of the loop
    with pytest.raises(Rejected) as refused:
        await leaving
    assert refused.value.reason == "client_gone"
    assert b.rejections("client_gone") == 1.0
    await staying  # the slot went on to the next waiter
    assert b.waits_observed() == 2.0  # one wait per request, the leaving one's included once


async def test_a_client_that_leaves_after_being_evicted_is_counted_as_evicted_only() -> None:
    b = Backend(settings=QueueSettings(max_depth=1, max_wait_s=LONG))
    b.fill()
    client = Disconnect()
    low = b.waiter(Ticket(LOW, gone=client.gone()))
    await b.queued(1)
    high = b.waiter(Ticket(HIGH))
    await until(lambda: b.rejections("evicted") == 1.0)
    client.event.set()
    with pytest.raises(Rejected):
        await low
    assert b.rejections("client_gone") == 0.0
    assert b.waits_observed() == 1.0
    b.finish_one()
    await high


async def test_a_waiter_cancelled_after_its_grant_gives_the_slot_to_the_next() -> None:
    b = Backend()
    b.fill()
    first = b.waiter()
    await b.queued(1)
    second = b.waiter()
    await b.queued(2)
    b.finish_one()  # the first is granted, then cancelled (the server stops) before it runs
    await cancelled(first)
    await second


async def test_a_waiter_cancelled_before_any_grant_leaves_the_queue() -> None:
    b = Backend()
    b.fill()
    task = b.waiter()
    await b.queued(1)
    await cancelled(task)
    assert len(b.admission.queue) == 0
    b.finish_one()
    assert b.admission.has_room()


def test_a_refusals_retry_after_defaults_to_a_second_and_is_capped() -> None:
    assert Rejected("full").retry_after_s == 1.0
    assert Rejected("full", 12.5).retry_after_s == 12.5
    assert Rejected("full", 1e6).retry_after_s == RETRY_AFTER_MAX_S
    assert str(Rejected("timeout")) == "timeout"


# --- background work ------------------------------------------------------------------------------------


async def test_background_work_takes_a_free_slot_at_once() -> None:
    b = Backend()
    assert await b.admission.wait_background(lambda: False)
    assert b.admission.background_waiting == 0


async def test_background_work_waits_for_a_slot_no_sync_request_wants() -> None:
    b = Backend()
    b.fill()
    job = asyncio.create_task(b.admission.wait_background(lambda: False))
    await until(lambda: b.admission.background_waiting == 1)
    sync = b.waiter()
    await b.queued(1)
    b.finish_one()
    await sync
    assert not job.done()
    b.tracker.start(b.clock.now)
    b.finish_one()
    assert not b.admission.has_room()  # the freed slot is the job's, reserved until it starts
    assert await job
    assert b.admission.background_waiting == 0
    b.tracker.start(b.clock.now)  # the job's call
    assert not b.admission.has_room()
    b.finish_one()
    b.tracker.start(b.clock.now)
    b.finish_one()
    assert b.admission.has_room()  # the job's slot was not left reserved


async def test_background_work_gives_up_when_told_to_stop() -> None:
    b = Backend()
    b.fill()
    stop = False
    job = asyncio.create_task(b.admission.wait_background(lambda: stop))
    await until(lambda: b.admission.background_waiting == 1)
    stop = True
    assert await asyncio.wait_for(job, 5.0) is False
    assert b.admission.background_waiting == 0
    b.finish_one()
    assert b.admission.has_room()


async def test_background_work_takes_no_free_slot_of_a_backend_whose_breaker_is_open() -> None:
    b = Backend(capacity=2, breaker_failures=1, breaker_open_s=5.0)
    b.tracker.start(b.clock.now)
    b.tracker.failed(b.clock.now, FailureKind.UNAVAILABLE)
    stop = False
    job = asyncio.create_task(b.admission.wait_background(lambda: stop))
    await until(lambda: b.admission.background_waiting == 1)
    stop = True
    assert await asyncio.wait_for(job, 5.0) is False


async def test_a_background_task_cancelled_while_waiting_frees_no_slot_it_never_had() -> None:
    b = Backend()
    b.fill()
    job = asyncio.create_task(b.admission.wait_background(lambda: False))
    await until(lambda: b.admission.background_waiting == 1)
    sync = b.waiter()
    await b.queued(1)
    await cancelled(job)
    assert len(b.admission.queue) == 1  # the backend is still full: the sync waiter still waits
    b.finish_one()
    await sync


async def test_background_work_cancelled_after_its_grant_gives_the_slot_back() -> None:
    b = Backend()
    b.fill()
    job = asyncio.create_task(b.admission.wait_background(lambda: False))
    await until(lambda: b.admission.background_waiting == 1)
    b.finish_one()  # granted, then cancelled before it runs
    await cancelled(job)
    assert b.admission.has_room()


async def test_background_work_cancelled_while_waiting_leaves_the_line() -> None:
    b = Backend()
    b.fill()
    job = asyncio.create_task(b.admission.wait_background(lambda: False))
    await until(lambda: b.admission.background_waiting == 1)
    await cancelled(job)
    assert b.admission.background_waiting == 0


# --- every backend's admission --------------------------------------------------------------------------


def test_admissions_outlive_reloads_and_follow_new_trackers_and_settings() -> None:
    b = Backend()
    admissions = Admissions(b.metrics)
    settings = QueueSettings(max_depth=4, max_wait_s=2.0)
    first = admissions.track("b", b.tracker, settings)
    assert admissions.track("b", b.tracker, settings) is first
    tracker = BackendTracker("b", TrackerSettings(max_concurrency=3), b.clock)
    again = admissions.track("b", tracker, QueueSettings(max_depth=9, max_wait_s=3.0))
    assert again is first
    assert first.tracker is tracker
    assert tracker.queue is first.queue
    assert (first.settings.max_wait_s, first.queue.max_depth) == (3.0, 9)
    admissions.track("c", tracker, settings)
    admissions.retain(["c"])
    assert list(admissions.by_backend) == ["c"]


async def test_queue_depths_are_listed_for_every_backend_and_level_zeros_included() -> None:
    b = Backend()
    admissions = Admissions(b.metrics)
    admissions.by_backend["b"] = b.admission
    b.fill()
    task = b.waiter(Ticket(HIGH))
    await b.queued(1)
    assert sorted(admissions.depths({HIGH: "high", LOW: "low"})) == [("b", "high", 1), ("b", "low", 0)]
    await cancelled(task)
