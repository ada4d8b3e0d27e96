"""The sync lane's calls against real model servers on 127.0.0.1: what each call records, deadlines, costs.

The walk's decisions are pinned in tests/test_lanes_walk.py; here ``SyncLane`` makes them real: HTTP calls to
the demo model server, waits in a backend's admission queue, the tracker and the metrics updated per call.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from router.backends.http import HttpBackend
from router.cost import BackendCost, Billing
from router.demo.model_server import ModelServer
from router.flow.admission import Admission, QueueSettings, Ticket
from router.flow.budget import RetryBudget
from router.lanes.sync import SyncFailure, SyncLane, SyncOutcome, Target, backoff_delay
from router.metrics import RouterMetrics
from router.state import BackendTracker, TrackerSettings
from router.types import BreakerState, Decision, FailureKind, Hop, Invocation, Lane, Route
from tests.conftest import until

ROW = b"120.5,2,0.8,350,7,30"
NORMAL, CRITICAL = 1, 3
A, B = Hop(Lane.REALTIME, "a"), Hop(Lane.SERVERLESS, "b")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, ModelServer]]:
    async with ModelServer() as a, ModelServer() as b:
        yield {"a": a, "b": b}


class LiveLane:
    """A sync lane over the demo servers ``a`` (realtime) and ``b`` (serverless)."""

    def __init__(self, servers: dict[str, ModelServer], session: aiohttp.ClientSession, capacity: int = 4,
                 max_depth: int = 16, breaker_failures: int = 10, cold_start_s: float = 1.0,
                 budget: RetryBudget | None = None) -> None:
        self.metrics = RouterMetrics()
        self.lane = SyncLane(budget or RetryBudget(0.1), self.metrics, overflow_priority=CRITICAL)
        self.targets: dict[str, Target] = {}
        for name, server in servers.items():
            settings = TrackerSettings(max_concurrency=capacity, serverless=name == "b", cold_start_s=cold_start_s,
                                       breaker_failures=breaker_failures)
            tracker = BackendTracker(name, settings)
            backend = HttpBackend(name, f"{server.url}/invocations", lambda: session, timeout_s=10.0)
            admission = Admission(name, tracker, QueueSettings(max_depth=max_depth, max_wait_s=10.0), self.metrics)
            self.targets[name] = Target(backend, tracker, admission)

    async def serve(self, *hops: Hop, deadline_s: float | None = None, timeout_s: float | None = None,
                    stream: bool = False) -> SyncOutcome:
        route = Route(Decision(hops[0].lane, reason="test"), hops)
        inv = Invocation(ROW, content_type="text/csv", timeout_s=timeout_s, response_stream=stream)
        deadline_at = None if deadline_s is None else time.monotonic() + deadline_s
        return await self.lane.serve("m", route, inv, NORMAL, self.targets, deadline_at, Ticket(NORMAL))

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_an_answered_call_is_counted_ok_and_frees_its_slot(servers: dict[str, ModelServer],
                                                                 session: aiohttp.ClientSession) -> None:
    lane = LiveLane(servers, session)
    before = time.monotonic()
    out = await lane.serve(A, B)
    took = time.monotonic() - before
    assert (out.hop, out.attempts, out.waited_s) == (A, 1, 0.0)
    assert out.result.status == 200
    assert lane.sample("router_backend_calls_total", backend="a", outcome="ok") == 1.0
    tracker = lane.targets["a"].tracker
    assert tracker.inflight == 0
    assert 0.0 < tracker.latency_s <= took  # the call's own time, no more than the request took


async def test_a_backends_load_report_is_recorded_with_its_answer(servers: dict[str, ModelServer],
                                                                 session: aiohttp.ClientSession) -> None:
    servers["a"].orca = True
    servers["a"].max_concurrency = 4
    lane = LiveLane(servers, session)
    tracker = lane.targets["a"].tracker
    assert tracker.utilization(time.monotonic()) is None
    await lane.serve(A)
    assert tracker.utilization(time.monotonic()) == 0.25  # 1 of its 4 slots busy, as it answered


async def test_a_streamed_answer_holds_its_slot_until_its_last_byte(servers: dict[str, ModelServer],
                                                                   session: aiohttp.ClientSession) -> None:
    lane = LiveLane(servers, session)
    tracker = lane.targets["a"].tracker
    out = await lane.serve(A, B, stream=True)
    assert out.result.stream is not None
    assert (out.hop, tracker.inflight) == (A, 1)  # answered, but still being read
    assert lane.sample("router_backend_calls_total", backend="a", outcome="ok") == 0.0
    body = b"".join([chunk async for chunk in out.result.stream])
    assert body  # the model's answer, as the server sent it
    assert tracker.inflight == 0
    assert tracker.latency_s > 0.0
    assert lane.sample("router_backend_calls_total", backend="a", outcome="ok") == 1.0


async def test_a_backend_that_raises_unexpectedly_counts_as_unavailable_and_the_next_hop_answers(
        servers: dict[str, ModelServer], session: aiohttp.ClientSession) -> None:
    lane = LiveLane(servers, session)
    closed = aiohttp.ClientSession()
    await closed.close()  # a backend bug: its client raises RuntimeError, not a BackendError
    broken = HttpBackend("a", f"{servers['a'].url}/invocations", lambda: closed, timeout_s=10.0)
    lane.targets["a"] = Target(broken, lane.targets["a"].tracker, lane.targets["a"].admission)
    out = await lane.serve(A, B)
    assert (out.hop, out.attempts) == (B, 2)
    assert lane.sample("router_backend_calls_total", backend="a", outcome="internal") == 1.0
    assert lane.sample("router_fallbacks_total", model="m", from_backend="a", to_backend="b",
                       reason="unavailable") == 1.0
    tracker = lane.targets["a"].tracker
    assert tracker.inflight == 0
    assert tracker.error_rate > 0.0
    with pytest.raises(SyncFailure) as failed:
        await lane.serve(A)
    assert (failed.value.reason, failed.value.hop) == ("unavailable", A)
    assert failed.value.error is not None
    assert failed.value.error.kind is FailureKind.UNAVAILABLE
    assert str(failed.value) == "a failed unexpectedly"
    assert lane.sample("router_backend_calls_total", backend="a", outcome="internal") == 2.0


async def test_a_failed_call_is_counted_by_kind_and_the_next_hop_answers(servers: dict[str, ModelServer],
                                                                         session: aiohttp.ClientSession) -> None:
    servers["a"].fail_status = 503
    lane = LiveLane(servers, session)
    out = await lane.serve(A, B)
    assert (out.hop, out.attempts) == (B, 2)
    assert lane.sample("router_backend_calls_total", backend="a", outcome="unavailable") == 1.0
    assert lane.sample("router_fallbacks_total", model="m", from_backend="a", to_backend="b",
                       reason="unavailable") == 1.0
    assert lane.targets["a"].tracker.inflight == 0
    assert lane.targets["a"].tracker.error_rate > 0.0


async def test_when_no_hop_answers_the_failure_names_the_last_hop_and_its_error(
        servers: dict[str, ModelServer], session: aiohttp.ClientSession) -> None:
    servers["a"].fail_status = 503
    servers["b"].fail_status = 500
    lane = LiveLane(servers, session)
    with pytest.raises(SyncFailure) as failed:
        await lane.serve(A, B)
    assert (failed.value.reason, failed.value.hop) == ("server_error", B)
    assert failed.value.error is not None
    assert failed.value.error.kind is FailureKind.SERVER_ERROR
    assert str(failed.value) == failed.value.error.message


async def test_a_call_may_take_no_longer_than_the_requests_deadline(servers: dict[str, ModelServer],
                                                                     session: aiohttp.ClientSession) -> None:
    servers["a"].latency_s = 3.0
    lane = LiveLane(servers, session)
    with pytest.raises(SyncFailure) as failed:
        await lane.serve(A, deadline_s=0.3)  # the backend's own timeout is 10 s
    assert failed.value.reason == "timeout"
    with pytest.raises(SyncFailure) as failed:
        await lane.serve(A, deadline_s=0.3, timeout_s=10.0)  # nor longer than its own timeout, when that is less
    assert failed.value.reason == "timeout"
    with pytest.raises(SyncFailure) as failed:
        await lane.serve(A, deadline_s=5.0, timeout_s=0.3)  # nor longer than its own timeout, when that is less
    assert failed.value.reason == "timeout"
    assert lane.sample("router_backend_calls_total", backend="a", outcome="timeout") == 3.0


async def test_a_request_whose_deadline_has_passed_calls_no_backend(servers: dict[str, ModelServer],
                                                                    session: aiohttp.ClientSession) -> None:
    lane = LiveLane(servers, session)
    with pytest.raises(SyncFailure) as failed:
        await lane.serve(A, B, deadline_s=-0.1)
    assert failed.value.reason == "deadline"
    assert lane.sample("router_backend_calls_total", backend="a", outcome="timeout") == 0.0
    assert lane.targets["a"].tracker.latency_s == lane.targets["b"].tracker.latency_s == 0.0  # nothing answered


async def test_the_calls_failures_open_the_backends_breaker(servers: dict[str, ModelServer],
                                                            session: aiohttp.ClientSession) -> None:
    servers["a"].fail_status = 503
    lane = LiveLane(servers, session, breaker_failures=2)
    for _ in range(2):
        with pytest.raises(SyncFailure):
            await lane.serve(A)
    assert lane.targets["a"].tracker.state(time.monotonic()).breaker is BreakerState.OPEN
    with pytest.raises(SyncFailure) as failed:
        await lane.serve(A)
    assert (failed.value.reason, failed.value.error) == ("breaker_open", None)
    assert str(failed.value) == "breaker_open"
    assert failed.value.retry_after_s == 1.0


async def test_a_call_the_client_cut_short_frees_its_slot_and_blames_no_one(servers: dict[str, ModelServer],
                                                                            session: aiohttp.ClientSession) -> None:
    servers["b"].latency_s = 5.0
    lane = LiveLane(servers, session)
    tracker = lane.targets["b"].tracker
    task = asyncio.create_task(lane.serve(B))
    await until(lambda: tracker.inflight == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    now = time.monotonic()
    state = tracker.state(now)
    assert (state.inflight, state.error_rate, state.breaker, state.cold) == (0, 0.0, BreakerState.CLOSED, False)


async def test_a_request_a_full_queue_refused_fails_with_the_queues_reason_and_retry_after(
        servers: dict[str, ModelServer], session: aiohttp.ClientSession) -> None:
    servers["b"].latency_s = 5.0
    lane = LiveLane({"b": servers["b"]}, session, capacity=1, max_depth=0, cold_start_s=2.0)
    first = asyncio.create_task(lane.serve(B))
    await until(lambda: lane.targets["b"].tracker.inflight == 1)
    with pytest.raises(SyncFailure) as failed:
        await lane.serve(B)  # no call has finished: its wait is predicted as one cold start
    assert (failed.value.reason, failed.value.hop, failed.value.retry_after_s) == ("full", B, 2.0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


async def test_a_call_to_a_cold_serverless_backend_is_counted_as_cold(servers: dict[str, ModelServer],
                                                                      session: aiohttp.ClientSession) -> None:
    lane = LiveLane(servers, session)
    await lane.serve(B)
    await lane.serve(B)  # warm now
    assert lane.sample("router_backend_cold_calls_total", backend="b") == 1.0
    await lane.serve(A)
    assert lane.sample("router_backend_cold_calls_total", backend="a") == 0.0


async def test_a_priced_backends_calls_add_their_estimated_cost(servers: dict[str, ModelServer],
                                                                session: aiohttp.ClientSession) -> None:
    lane = LiveLane(servers, session)
    lane.lane.costs = {"a": BackendCost(Billing.INSTANCES, hourly=3600.0, instances=1)}  # $1 per call-second
    servers["a"].latency_s = 0.05
    await lane.serve(A)
    cost = lane.sample("router_estimated_cost_dollars_total", model="m", lane="realtime", backend="a")
    assert 0.05 <= cost < 10.0  # at least the 50 ms the server took
    servers["a"].fail_status = 503
    with pytest.raises(SyncFailure):
        await lane.serve(A)
    assert lane.sample("router_estimated_cost_dollars_total", model="m", lane="realtime", backend="a") > cost
    assert lane.sample("router_estimated_cost_dollars_total", model="m", lane="serverless", backend="b") == 0.0


async def test_a_request_that_waited_for_a_slot_reports_its_wait(servers: dict[str, ModelServer],
                                                                 session: aiohttp.ClientSession) -> None:
    servers["a"].latency_s = 0.2
    lane = LiveLane({"a": servers["a"]}, session, capacity=1)
    first = asyncio.create_task(lane.serve(A))
    await until(lambda: lane.targets["a"].tracker.inflight == 1)
    second = await lane.serve(A)
    await first
    assert (second.hop, second.attempts) == (A, 1)
    assert 0.0 < second.waited_s <= 10.0  # within the queue's max_wait
    assert lane.sample("router_queue_wait_seconds_count", backend="a") == 1.0


def test_a_retry_backoff_doubles_per_attempt_up_to_its_cap_with_half_either_way_of_jitter() -> None:
    random.seed(7)
    first = [backoff_delay(1, 1.0, 30.0) for _ in range(200)]
    assert 0.5 <= min(first) < 0.6
    assert 1.4 < max(first) <= 1.5
    third = [backoff_delay(3, 1.0, 30.0) for _ in range(200)]  # 4 s, give or take half
    assert 2.0 <= min(third) < 2.2
    assert 5.8 < max(third) <= 6.0
    capped = [backoff_delay(10, 1.0, 5.0) for _ in range(200)]  # 512 s, capped at 5
    assert 2.5 <= min(capped) < 2.8
    assert 7.2 < max(capped) <= 7.5


async def test_an_answer_after_a_cold_start_is_marked_cold(servers: dict[str, ModelServer],
                                                           session: aiohttp.ClientSession) -> None:
    lane = LiveLane(servers, session)
    assert (await lane.serve(B)).cold_start is True  # the serverless backend had not been called yet
    assert (await lane.serve(B)).cold_start is False
    assert (await lane.serve(A)).cold_start is False  # a realtime backend is never cold


async def test_an_urgent_request_goes_over_a_full_backends_limit_when_its_queue_refuses(
        servers: dict[str, ModelServer], session: aiohttp.ClientSession) -> None:
    servers["a"].latency_s = 1.0
    lane = LiveLane({"a": servers["a"]}, session, capacity=1, max_depth=0)
    first = asyncio.create_task(lane.serve(A))
    await until(lambda: lane.targets["a"].tracker.inflight == 1)
    servers["a"].latency_s = 0.0
    route = Route(Decision(Lane.REALTIME, reason="test"), (A,))
    inv = Invocation(ROW, content_type="text/csv")
    with pytest.raises(SyncFailure) as failed:  # no ticket given: the lane makes one of the priority
        await lane.lane.serve("m", route, inv, NORMAL, lane.targets)
    assert failed.value.reason == "full"
    out = await lane.lane.serve("m", route, inv, CRITICAL, lane.targets)
    assert (out.hop, out.attempts, out.result.status) == (A, 1, 200)
    assert servers["a"].peak_inflight == 2  # over the limit of 1
    await first


async def test_a_priced_call_still_ends_at_the_requests_deadline(servers: dict[str, ModelServer],
                                                                 session: aiohttp.ClientSession) -> None:
    servers["a"].latency_s = 3.0
    lane = LiveLane(servers, session)
    lane.lane.costs = {"a": BackendCost(Billing.INSTANCES, hourly=3600.0, instances=1)}
    with pytest.raises(SyncFailure) as failed:
        await lane.serve(A, deadline_s=0.3)  # the backend's own timeout is 10 s
    assert failed.value.reason == "timeout"
    assert lane.sample("router_estimated_cost_dollars_total", model="m", lane="realtime", backend="a") > 0.0


async def test_a_priced_call_made_outside_a_lane_is_costed_under_an_empty_lane(
        servers: dict[str, ModelServer], session: aiohttp.ClientSession) -> None:
    lane = LiveLane(servers, session)
    lane.lane.costs = {"a": BackendCost(Billing.INSTANCES, hourly=3600.0, instances=1)}
    result = await lane.lane.call(lane.targets["a"], Invocation(ROW, content_type="text/csv"), time.monotonic(),
                                  model="m")
    assert result.status == 200
    assert lane.sample("router_estimated_cost_dollars_total", model="m", lane="", backend="a") > 0.0


async def test_a_fallback_the_retry_budget_cannot_pay_for_is_not_tried_and_is_counted(
        servers: dict[str, ModelServer], session: aiohttp.ClientSession) -> None:
    servers["a"].fail_status = 503
    lane = LiveLane(servers, session, budget=RetryBudget(0.0, burst=1.0))  # one retry, never refilled
    assert (await lane.serve(A, B)).hop == B
    with pytest.raises(SyncFailure) as failed:
        await lane.serve(A, B)
    assert (failed.value.reason, failed.value.hop) == ("unavailable", A)
    assert servers["b"].requests == 1
    assert lane.sample("router_retry_budget_exhausted_total", model="m") == 1.0


async def test_background_work_waiting_for_room_gives_up_when_told_to_stop(
        servers: dict[str, ModelServer], session: aiohttp.ClientSession) -> None:
    servers["a"].latency_s = 5.0
    lane = LiveLane({"a": servers["a"]}, session, capacity=1)
    target = lane.targets["a"]
    sync = asyncio.create_task(lane.serve(A))
    await until(lambda: target.tracker.inflight == 1)  # the only slot is a sync request's
    assert await lane.lane.room(target, lambda: True) is False
    sync.cancel()
    await asyncio.gather(sync, return_exceptions=True)


async def test_of_two_requests_waiting_for_a_slot_the_one_with_a_deadline_goes_first(
        servers: dict[str, ModelServer], session: aiohttp.ClientSession) -> None:
    servers["a"].latency_s = 0.2
    lane = LiveLane({"a": servers["a"]}, session, capacity=1)
    queue = lane.targets["a"].admission.queue
    first = asyncio.create_task(lane.serve(A))
    await until(lambda: lane.targets["a"].tracker.inflight == 1)
    patient = asyncio.create_task(lane.serve(A))  # no deadline, and waiting since before the other
    await until(lambda: len(queue) == 1)
    hurried = asyncio.create_task(lane.serve(A, deadline_s=8.0))
    await until(lambda: len(queue) == 2)
    done, _ = await asyncio.wait((patient, hurried), return_when=asyncio.FIRST_COMPLETED)
    assert done == {hurried}  # one slot: the other call starts only when this one ends
    await asyncio.gather(first, patient)


async def test_a_backend_that_keeps_raising_unexpectedly_opens_its_breaker(servers: dict[str, ModelServer],
                                                                           session: aiohttp.ClientSession) -> None:
    lane = LiveLane(servers, session, breaker_failures=2)
    closed = aiohttp.ClientSession()
    await closed.close()
    broken = HttpBackend("a", f"{servers['a'].url}/invocations", lambda: closed, timeout_s=10.0)
    lane.targets["a"] = Target(broken, lane.targets["a"].tracker, lane.targets["a"].admission)
    for _ in range(2):
        with pytest.raises(SyncFailure):
            await lane.serve(A)
    assert lane.targets["a"].tracker.state(time.monotonic()).breaker is BreakerState.OPEN
