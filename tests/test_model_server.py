"""The local model server: SageMaker container contract and behaviour knobs, over real HTTP."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from router.demo.model_server import CUSTOM_ATTRIBUTES, ModelServer
from tests.conftest import free_port

ROW = b"120,20,0.2,10,4,400\n"
CSV = {"Content-Type": "text/csv"}


@pytest.fixture
async def server() -> AsyncIterator[ModelServer]:
    async with ModelServer() as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def invoke(http: aiohttp.ClientSession, server: ModelServer, path: str = "/invocations") -> int:
    async with http.post(server.url + path, data=ROW, headers=CSV) as resp:
        await resp.read()
        return resp.status


async def timed_invoke(http: aiohttp.ClientSession, server: ModelServer) -> tuple[int, float]:
    start = time.monotonic()
    status = await invoke(http, server)
    return status, time.monotonic() - start


async def until_inflight(server: ModelServer, n: int) -> None:
    # Bounded poll: the slow requests must be inside the handler before the probe is sent.
    for _ in range(400):
        if server.inflight >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"server never reached {n} in-flight requests")


async def test_start_returns_a_loopback_url_with_the_bound_port() -> None:
    srv = ModelServer()
    with pytest.raises(RuntimeError):
        _ = srv.url
    url = await srv.start()
    try:
        assert url == srv.url
        assert url.startswith("http://127.0.0.1:")
        assert srv.port > 0
    finally:
        await srv.stop()


async def test_ping_answers_200(server: ModelServer, http: aiohttp.ClientSession) -> None:
    async with http.get(server.url + "/ping") as resp:
        assert resp.status == 200


async def test_invocations_scores_csv_rows(server: ModelServer, http: aiohttp.ClientSession) -> None:
    async with http.post(server.url + "/invocations", data=ROW * 2, headers=CSV) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/csv"
        scores = [float(line) for line in (await resp.text()).splitlines()]
    assert len(scores) == 2
    assert all(0 < s < 1 for s in scores)
    assert "X-Model-Path" not in resp.headers
    assert (server.requests, server.served_ok) == (1, 1)


async def test_invocations_scores_json_instances(server: ModelServer, http: aiohttp.ClientSession) -> None:
    body = {"instances": [[120, 20, 0.2, 10, 4, 400]]}
    async with http.post(server.url + "/invocations", json=body) as resp:
        assert resp.status == 200
        predictions = (await resp.json())["predictions"]
    assert set(predictions[0]) == {"score", "fraud"}


async def test_bad_input_answers_400_with_a_message_naming_the_line(
    server: ModelServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(server.url + "/invocations", data=ROW + b"1,2\n", headers=CSV) as resp:
        assert resp.status == 400
        assert "line 2" in (await resp.json())["message"]
    assert (server.requests, server.served_ok) == (1, 0)


@pytest.mark.parametrize("path", ["/v2/models/fraud/infer?x=1", "/predictions/fraud"])
async def test_extra_paths_are_served_and_echoed_in_x_model_path(
    server: ModelServer, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.post(server.url + path, data=ROW, headers=CSV) as resp:
        assert resp.status == 200
        assert resp.headers["X-Model-Path"] == path
    assert server.last_path == path


async def test_custom_attributes_are_echoed_and_request_headers_recorded(
    server: ModelServer, http: aiohttp.ClientSession
) -> None:
    headers = {**CSV, CUSTOM_ATTRIBUTES: "trace=abc", "X-Urgency": "high"}
    async with http.post(server.url + "/invocations", data=b"oops\n", headers=headers) as resp:
        assert resp.status == 400
        assert resp.headers[CUSTOM_ATTRIBUTES] == "trace=abc"
    assert server.last_headers["x-urgency"] == "high"


async def test_concurrency_limit_answers_429_while_slow_requests_are_in_flight(
    server: ModelServer, http: aiohttp.ClientSession
) -> None:
    server.latency_s = 0.2
    server.max_concurrency = 2
    slow = [asyncio.create_task(invoke(http, server)) for _ in range(2)]
    await until_inflight(server, 2)
    async with http.post(server.url + "/invocations", data=ROW, headers=CSV) as resp:
        assert resp.status == 429
        assert await resp.json() == {"message": "too many requests"}
    assert await asyncio.gather(*slow) == [200, 200]
    assert server.peak_inflight == 2
    assert (server.requests, server.served_ok) == (3, 2)


async def test_overload_status_can_be_503(server: ModelServer, http: aiohttp.ClientSession) -> None:
    server.max_concurrency = 0
    server.overload_status = 503
    assert await invoke(http, server) == 503


async def test_cold_start_is_paid_once_after_idle(http: aiohttp.ClientSession) -> None:
    async with ModelServer(idle_after_s=0.1, cold_start_s=0.15) as server:
        first = await timed_invoke(http, server)
        assert server.cold_starts == 1
        warm = await timed_invoke(http, server)
        assert server.cold_starts == 1  # served warm
        await asyncio.sleep(0.15)
        after_idle = await timed_invoke(http, server)
    assert first[0] == warm[0] == after_idle[0] == 200
    assert first[1] >= 0.15
    assert after_idle[1] >= 0.15
    assert server.cold_starts == 2


async def test_concurrent_requests_during_a_cold_start_share_it(http: aiohttp.ClientSession) -> None:
    async with ModelServer(idle_after_s=5.0, cold_start_s=1.0) as server:
        start = time.monotonic()
        statuses = await asyncio.gather(*(invoke(http, server) for _ in range(4)))
        elapsed = time.monotonic() - start
    assert statuses == [200] * 4
    assert server.cold_starts == 1
    assert 1.0 <= elapsed < 3.0  # one shared wait; one each in turn would take 4 s


async def test_always_warm_by_default(server: ModelServer, http: aiohttp.ClientSession) -> None:
    server.cold_start_s = 10.0
    _, elapsed = await timed_invoke(http, server)
    assert elapsed < 5.0
    assert server.cold_starts == 0


async def test_fail_next_fails_exactly_the_next_n_requests(server: ModelServer, http: aiohttp.ClientSession) -> None:
    server.fail_next(2)
    server.fail_next(1, status=500)
    statuses = [await invoke(http, server) for _ in range(4)]
    assert statuses == [503, 503, 500, 200]
    assert (server.requests, server.served_ok) == (4, 1)


async def test_fail_status_fails_every_request_until_cleared(server: ModelServer, http: aiohttp.ClientSession) -> None:
    server.fail_status = 502
    async with http.post(server.url + "/invocations", data=ROW, headers=CSV) as resp:
        assert resp.status == 502
        assert "message" in await resp.json()
    server.fail_status = None
    assert await invoke(http, server) == 200


async def test_control_endpoint_changes_latency(server: ModelServer, http: aiohttp.ClientSession) -> None:
    async with http.post(server.url + "/control", json={"latency_s": 0.15}) as resp:
        assert resp.status == 200
        assert (await resp.json())["latency_s"] == 0.15
    assert server.latency_s == 0.15
    status, elapsed = await timed_invoke(http, server)
    assert status == 200
    assert elapsed >= 0.15


async def test_control_endpoint_injects_failures_and_reports_state(
    server: ModelServer, http: aiohttp.ClientSession
) -> None:
    control = {"fail_next": 1, "fail_next_status": 500, "max_concurrency": 8}
    async with http.post(server.url + "/control", json=control) as resp:
        assert resp.status == 200
    assert await invoke(http, server) == 500
    async with http.get(server.url + "/control") as resp:
        state = await resp.json()
    assert state["max_concurrency"] == 8
    assert (state["requests"], state["served_ok"], state["pending_failures"]) == (1, 0, 0)


@pytest.mark.parametrize("body", [{"latency": 1}, {"latency_s": "slow"}, {"latency_s": None}, [1],
                                  {"latency_jitter": 1.5}, {"latency_jitter": -0.1}, {"latency_jitter": None}])
async def test_control_endpoint_rejects_unknown_keys_and_bad_values(
    server: ModelServer, http: aiohttp.ClientSession, body: object
) -> None:
    async with http.post(server.url + "/control", json=body) as resp:
        assert resp.status == 400
    assert (server.latency_s, server.latency_jitter) == (0.0, 0.0)


async def test_control_endpoint_sets_a_latency_jitter_each_call_stays_within(
    server: ModelServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(server.url + "/control", json={"latency_s": 0.1, "latency_jitter": 0.5}) as resp:
        assert resp.status == 200
        assert (await resp.json())["latency_jitter"] == 0.5
    for _ in range(3):
        status, elapsed = await timed_invoke(http, server)
        assert status == 200
        assert elapsed >= 0.05  # 0.1 s x (1 - 0.5) at the least


async def test_the_command_line_sets_the_overload_status(http: aiohttp.ClientSession) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.demo.model_server", "--port", str(port), "--max-concurrency", "0",
        "--overload-status", "503", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        status = None
        for _ in range(100):
            try:
                async with http.post(f"http://127.0.0.1:{port}/invocations", data="1,2,3,4,5,6",
                                     headers={"Content-Type": "text/csv"}) as r:
                    status = r.status
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        assert status == 503
    finally:
        proc.terminate()
        await proc.wait()


async def test_queue_mode_processes_n_at_a_time_and_queues_the_rest_instead_of_refusing(
    http: aiohttp.ClientSession
) -> None:
    async with ModelServer(latency_s=0.1, max_concurrency=2, overload_mode="queue", orca=True) as srv:
        calls = [asyncio.create_task(invoke(http, srv)) for _ in range(5)]
        await until_inflight(srv, 2)
        for _ in range(400):
            if srv.queued == 3:
                break
            await asyncio.sleep(0.005)
        assert (srv.inflight, srv.queued) == (2, 3)
        assert await asyncio.gather(*calls) == [200] * 5
        assert (srv.peak_inflight, srv.refused, srv.served_ok) == (2, 0, 5)
        async with http.post(srv.url + "/invocations", data=ROW, headers=CSV) as resp:
            assert resp.headers["endpoint-load-metrics"] == (
                "TEXT application_utilization=0.500, named_metrics.num_requests_waiting=0")


async def test_a_queued_client_that_leaves_gives_up_its_place(http: aiohttp.ClientSession) -> None:
    async with ModelServer(latency_s=0.2, max_concurrency=1, overload_mode="queue") as srv:
        first = asyncio.create_task(invoke(http, srv))
        await until_inflight(srv, 1)
        leaver = asyncio.create_task(invoke(http, srv))
        for _ in range(400):
            if srv.queued == 1:
                break
            await asyncio.sleep(0.005)
        leaver.cancel()
        for _ in range(400):
            if srv.queued == 0:
                break
            await asyncio.sleep(0.005)
        assert srv.queued == 0
        assert await first == 200
        assert await invoke(http, srv) == 200
        assert srv.inflight == 0


async def test_control_endpoint_switches_overload_mode_orca_and_random_failures(
    server: ModelServer, http: aiohttp.ClientSession
) -> None:
    control = {"overload_mode": "queue", "orca": True, "fail_rate": 1.0, "max_concurrency": 4}
    async with http.post(server.url + "/control", json=control) as resp:
        state = await resp.json()
    assert (state["overload_mode"], state["orca"], state["fail_rate"]) == ("queue", True, 1.0)
    assert await invoke(http, server) == 500
    for bad in ({"overload_mode": "drop"}, {"orca": "yes"}):
        async with http.post(server.url + "/control", json=bad) as resp:
            assert resp.status == 400
    assert server.overload_mode == "queue"


async def test_the_command_line_sets_queue_mode(http: aiohttp.ClientSession) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.demo.model_server", "--port", str(port), "--max-concurrency", "3",
        "--overload-mode", "queue", "--orca", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        state = None
        for _ in range(200):
            try:
                async with http.get(f"http://127.0.0.1:{port}/control") as r:
                    state = await r.json()
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        assert state is not None
        assert (state["overload_mode"], state["orca"], state["max_concurrency"]) == ("queue", True, 3)
    finally:
        proc.terminate()
        await proc.wait()
