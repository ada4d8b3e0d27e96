"""Flow control end to end: admission queues and defer-instead-of-shed, against real model servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from router.demo.model_server import CUSTOM_ATTRIBUTES, ModelServer
from tests.conftest import RunningRouter, job_end, serve_router, until

ROW = "120.5,2,0.8,350,7,30"
KEY_A, KEY_B = "team-a-secret-key", "team-b-secret-key"
ADMIN = {"Authorization": "Bearer admin-secret-token"}


class RecordingServer(ModelServer):
    """The demo model server, noting each call's custom attributes as it arrives: the order slots were given."""

    def __init__(self, **knobs: Any) -> None:
        super().__init__(**knobs)
        self.arrivals: list[str] = []
        self.gate: asyncio.Event | None = None  # set: the "blocker" call holds its slot until the test opens it

    async def _invoke(self, request: web.Request) -> web.Response:
        self.arrivals.append(request.headers.get(CUSTOM_ATTRIBUTES, ""))
        if self.gate is not None and request.headers.get(CUSTOM_ATTRIBUTES) == "blocker":
            self.inflight += 1
            try:
                await self.gate.wait()
            finally:
                self.inflight -= 1
            return web.Response(text="0.5\n", content_type="text/csv")
        return await super()._invoke(request)


@pytest.fixture
async def rt() -> AsyncIterator[RecordingServer]:
    async with RecordingServer() as server:
        yield server


def config(rt: ModelServer, state: Path, *, capacity: int = 1, queue: str = "{max_wait: 10s}",
           policy: str = "[rules]", lanes: str = "{realtime: rt, async: rt}", workers: int = 1) -> str:
    return f"""
server: {{admin_token: admin-secret-token}}
state: {{kind: local, path: "{state}"}}
jobs: {{workers: {workers}, lease: 5s, poll_interval: 20ms}}
callers:
  - {{api_key: {KEY_A}, tenant: team-a, max_urgency: critical}}
  - {{api_key: {KEY_B}, tenant: team-b, weight: 1}}
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", max_concurrency: {capacity}, timeout: 10s, queue: {queue}}}
models:
  fraud:
    lanes: {lanes}
    policy: {policy}
policies:
  shed-low: {{type: shed, params: {{below_urgency: normal, retry_after: 3s}}}}
  rules:
    type: rules
    params:
      - {{when: {{accepts_async: true, urgency: normal}}, route: async, reason: jobs_go_async}}
      - {{route: realtime, reason: realtime_first}}
"""


async def post(http: aiohttp.ClientSession, router: RunningRouter, label: str = "", **headers: str) -> tuple[
        int, CIMultiDict[str], bytes]:
    hdrs = {"Content-Type": "text/csv", CUSTOM_ATTRIBUTES: label, **headers}
    async with http.post(router.endpoint("fraud"), data=ROW, headers=hdrs) as r:
        return r.status, r.headers.copy(), await r.read()


def metric(router: RunningRouter, name: str, **labels: str) -> float:
    return router.runtime.metrics.registry.get_sample_value(name, labels) or 0.0


async def hold_the_slot(http: aiohttp.ClientSession, router: RunningRouter, rt: ModelServer,
                        seconds: float) -> asyncio.Task[Any]:
    """One call that keeps the backend's only slot for ``seconds``; later calls are quick."""
    rt.latency_s = seconds
    blocker = asyncio.create_task(post(http, router, "blocker"))
    await until(lambda: rt.inflight == 1)
    rt.latency_s = 0.0  # read per call: only the blocker is slow
    return blocker


def waiting(router: RunningRouter) -> int:
    return len(router.runtime.admissions.by_backend["rt"].queue)


async def test_a_burst_beyond_capacity_waits_for_slots_and_is_all_answered(tmp_path: Path, rt: RecordingServer,
                                                                          http: aiohttp.ClientSession) -> None:
    rt.latency_s = 0.02
    rt.max_concurrency = 2  # the backend itself refuses a third call: the router must never send one
    async with serve_router(config(rt, tmp_path, capacity=2, queue="{}")) as router:
        results = await asyncio.gather(*(post(http, router, **{"X-Urgency": "high"}) for _ in range(40)))
        assert [status for status, _, _ in results] == [200] * 40
        assert rt.peak_inflight == 2
        assert metric(router, "router_queue_wait_seconds_count", backend="rt") >= 20
        async with http.get(router.url + "/metrics") as r:
            text = await r.text()
    assert 'router_queue_depth{backend="rt",urgency="high"} 0.0' in text
    assert 'router_queue_wait_seconds_bucket{backend="rt",le="0.25"}' in text


async def test_freed_slots_go_to_the_most_urgent_then_by_deadline_and_fairly_between_tenants(
        tmp_path: Path, rt: RecordingServer, http: aiohttp.ClientSession) -> None:
    async with serve_router(config(rt, tmp_path)) as router:
        blocker = await hold_the_slot(http, router, rt, 0.5)
        arrivals = [("low", {"X-Urgency": "low"}),
                    ("a1", {"X-Api-Key": KEY_A}), ("a2", {"X-Api-Key": KEY_A}),
                    ("b1", {"X-Api-Key": KEY_B}),
                    ("a3-deadline", {"X-Api-Key": KEY_A, "X-Deadline-Ms": "8000"}),
                    ("high-b", {"X-Api-Key": KEY_B, "X-Urgency": "high"}),
                    ("critical-a", {"X-Api-Key": KEY_A, "X-Urgency": "critical"})]
        tasks = []
        for n, (label, headers) in enumerate(arrivals, 1):  # one at a time, so their arrival order is known
            tasks.append(asyncio.create_task(post(http, router, label, **headers)))
            await until(lambda n=n: waiting(router) == n)
        results = await asyncio.gather(blocker, *tasks)
    assert [status for status, _, _ in results] == [200] * 8
    # urgency first; among normal, team-a's deadline first, then team-a and team-b take turns; low last
    assert rt.arrivals == ["blocker", "critical-a", "high-b", "a3-deadline", "b1", "a1", "a2", "low"]


async def test_a_full_queue_evicts_the_least_urgent_latest_waiter_and_refuses_the_no_more_urgent(
        tmp_path: Path, rt: RecordingServer, http: aiohttp.ClientSession) -> None:
    async with serve_router(config(rt, tmp_path, queue="{max_depth: 2, max_wait: 10s}")) as router:
        blocker = await hold_the_slot(http, router, rt, 0.5)
        low1 = asyncio.create_task(post(http, router, "low1", **{"X-Urgency": "low"}))
        await until(lambda: waiting(router) == 1)
        low2 = asyncio.create_task(post(http, router, "low2", **{"X-Urgency": "low"}))
        await until(lambda: waiting(router) == 2)
        high = asyncio.create_task(post(http, router, "high", **{"X-Urgency": "high"}))
        evicted = await low2
        refused = await post(http, router, "low3", **{"X-Urgency": "low"})  # the queue is full again
        results = await asyncio.gather(blocker, low1, high)
        assert metric(router, "router_queue_rejected_total", backend="rt", reason="evicted") == 1
        assert metric(router, "router_queue_rejected_total", backend="rt", reason="full") == 1
    assert evicted[0] == 429
    assert evicted[1]["x-amzn-ErrorType"] == "ThrottlingException"
    assert "Retry-After" in evicted[1]
    assert refused[0] == 503
    assert "Retry-After" in refused[1]
    assert [status for status, _, _ in results] == [200] * 3
    assert rt.arrivals == ["blocker", "high", "low1"]


async def test_a_wait_that_would_miss_the_deadline_is_a_503_at_once_or_a_job_if_a_202_is_allowed(
        tmp_path: Path, rt: RecordingServer, http: aiohttp.ClientSession) -> None:
    async with serve_router(config(rt, tmp_path)) as router:
        rt.latency_s = 0.6
        assert (await post(http, router, "warm"))[0] == 200  # the router learns the backend's 0.6 s latency
        rt.latency_s = 0.6
        blocker = asyncio.create_task(post(http, router, "blocker"))
        await until(lambda: rt.inflight == 1)
        hurried = {"X-Deadline-Ms": "300", "X-Urgency": "high"}
        status, headers, body = await post(http, router, "hurried", **hurried)
        assert not blocker.done()  # answered at once, not after a wait
        job_status, job_headers, job_body = await post(http, router, "deferred", **hurried,
                                                       Prefer="respond-async")
        assert not blocker.done()
        await blocker
        job = await job_end(http, router.url, json.loads(job_body)["job_id"], 10.0)
        assert metric(router, "router_queue_rejected_total", backend="rt", reason="wait_exceeds_deadline") == 2
        assert metric(router, "router_deferred_total", model="fraud", lane="async",
                      reason="wait_exceeds_deadline") == 1
    assert status == 503
    assert headers["Retry-After"] == "1"  # the predicted wait (0.6 s), in whole seconds
    assert "deadline" in json.loads(body)["message"]
    assert (job_status, job_headers["X-Router-Lane"], job_headers["X-Router-Reason"]) == (
        202, "async", "deferred_saturated")
    assert job["status"] == "succeeded"
    assert "hurried" not in rt.arrivals


async def test_a_client_that_disconnects_leaves_the_queue_and_frees_nothing_twice(
        tmp_path: Path, rt: RecordingServer, http: aiohttp.ClientSession) -> None:
    async with serve_router(config(rt, tmp_path)) as router:
        blocker = await hold_the_slot(http, router, rt, 0.5)
        leaver = asyncio.create_task(post(http, router, "leaver"))
        await until(lambda: waiting(router) == 1)
        leaver.cancel()  # the client goes away: aiohttp closes the connection
        await until(lambda: waiting(router) == 0)
        stayer = asyncio.create_task(post(http, router, "stayer"))
        await until(lambda: waiting(router) == 1)
        results = await asyncio.gather(blocker, stayer)
        admission = router.runtime.admissions.by_backend["rt"]
        tracker = router.runtime.tracker.trackers["rt"]
        assert metric(router, "router_queue_rejected_total", backend="rt", reason="client_gone") == 1
        assert (tracker.inflight, admission.reserved, len(admission.queue)) == (0, 0, 0)
        assert (await post(http, router, "after"))[0] == 200
    assert [status for status, _, _ in results] == [200, 200]
    assert rt.arrivals[:2] == ["blocker", "stayer"]
    assert "leaver" not in rt.arrivals


async def test_shed_low_urgency_becomes_a_job_for_clients_that_accept_a_202(
        tmp_path: Path, rt: RecordingServer, http: aiohttp.ClientSession) -> None:
    async with serve_router(config(rt, tmp_path, policy="[shed-low, rules]")) as router:
        blocker = await hold_the_slot(http, router, rt, 0.4)
        shed = await post(http, router, "shed", **{"X-Urgency": "low"})
        deferred = await post(http, router, "deferred", **{"X-Urgency": "low", "Prefer": "respond-async"})
        await blocker
        job = await job_end(http, router.url, json.loads(deferred[2])["job_id"], 10.0)
        assert metric(router, "router_deferred_total", model="fraud", lane="async", reason="shed_saturated") == 1
        assert metric(router, "router_shed_total", model="fraud", reason="shed_saturated") == 1
    assert (shed[0], shed[1]["X-Router-Lane"], shed[1]["Retry-After"]) == (429, "shed", "3")
    assert (deferred[0], deferred[1]["X-Router-Lane"], deferred[1]["X-Router-Reason"]) == (
        202, "async", "deferred_shed_saturated")
    assert job["status"] == "succeeded"


async def test_job_workers_take_only_the_slots_no_sync_request_waits_for(
        tmp_path: Path, rt: RecordingServer, http: aiohttp.ClientSession) -> None:
    async with serve_router(config(rt, tmp_path)) as router:
        blocker = await hold_the_slot(http, router, rt, 0.5)
        status, _, body = await post(http, router, "job", Prefer="respond-async")
        assert status == 202
        admission = router.runtime.admissions.by_backend["rt"]
        await until(lambda: admission.background_waiting == 1)  # the worker waits for room
        sync = []
        for i in range(2):
            sync.append(asyncio.create_task(post(http, router, f"sync{i}")))
            await until(lambda n=i + 1: waiting(router) == n)
        results = await asyncio.gather(blocker, *sync)
        job = await job_end(http, router.url, json.loads(body)["job_id"], 10.0)
    assert [s for s, _, _ in results] == [200] * 3
    assert job["status"] == "succeeded"
    assert rt.arrivals == ["blocker", "sync0", "sync1", "job"]  # the job waited although it came first


async def test_explain_shows_the_queue_position_and_predicted_wait(tmp_path: Path, rt: RecordingServer,
                                                                   http: aiohttp.ClientSession) -> None:
    async with serve_router(config(rt, tmp_path)) as router:
        rt.latency_s = 0.2
        assert (await post(http, router, "warm"))[0] == 200
        rt.gate = asyncio.Event()  # the slot stays taken until both explains are answered, however slow the machine
        blocker = asyncio.create_task(post(http, router, "blocker"))
        await until(lambda: rt.inflight == 1)
        queued = [asyncio.create_task(post(http, router, f"w{i}")) for i in range(2)]
        await until(lambda: waiting(router) == 2)
        ask = {"model": "fraud", "headers": {"X-Urgency": "normal"}, "bytes": 20}
        async with http.post(router.url + "/admin/explain", headers=ADMIN, json=ask) as r:
            normal = (await r.json())["queue"]
        ask["headers"] = {"X-Urgency": "high"}
        async with http.post(router.url + "/admin/explain", headers=ADMIN, json=ask) as r:
            high = (await r.json())["queue"]
        rt.gate.set()
        await asyncio.gather(blocker, *queued)
    assert normal[0]["backend"] == "rt"
    assert (normal[0]["room_now"], normal[0]["queue_depth"], normal[0]["ahead"]) == (False, 2, 2)
    assert normal[0]["predicted_wait_s"] == pytest.approx(3 * 0.2, rel=0.5)
    assert normal[0]["would_wait"] is True
    assert high[0]["ahead"] == 0  # more urgent: ahead of both
