"""The router against real local model servers: routing, fallback, shedding, errors, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from router.demo.model import FraudModel
from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, serve_router, until

ROW = "120.5,2,0.8,350,7,30"
TEAM_KEY = "team-a-secret-key"


@dataclass
class Fleet:
    rt: ModelServer
    sls: ModelServer
    router: RunningRouter


def config(rt: ModelServer, sls: ModelServer, *, rt_capacity: int = 4, sls_capacity: int = 4,
           extra: str = "", policy: str = "[shed-low, rules]", rt_timeout: str = "2s",
           breaker_failures: int = 3, retry: str = "") -> str:
    return f"""
server: {{admin_token: admin-secret-token}}
callers:
  - {{api_key: {TEAM_KEY}, tenant: team-a, max_urgency: critical}}
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", max_concurrency: {rt_capacity}, timeout: {rt_timeout},
        breaker: {{failures: {breaker_failures}, open_for: 30s}}}}
  sls: {{kind: http, url: "{sls.url}/invocations", max_concurrency: {sls_capacity}, timeout: 5s,
         serverless: {{idle_after: 60s, cold_start: 1s}}}}
models:
  fraud:
    lanes: {{realtime: rt, serverless: sls}}
    limits: {{realtime: 64KB, serverless: 32KB}}
    policy: {policy}
    paths: ["/v2/models/fraud/infer", "/predictions/fraud", "/custom/fraud/*"]
policies:
  shed-low: {{type: shed, params: {{below_urgency: normal, retry_after: 3s}}}}
  rules:
    type: rules
    params:
      - {{route: realtime, fallback: [serverless], reason: realtime_first}}
{retry}
{extra}
"""


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ModelServer, ModelServer]]:
    async with ModelServer() as rt, ModelServer() as sls:
        yield rt, sls


async def post(http: aiohttp.ClientSession, url: str | URL, body: str | bytes = ROW, **headers: str) -> tuple[
        int, CIMultiDict[str], bytes]:
    hdrs = {"Content-Type": "text/csv", **headers}
    async with http.post(url, data=body, headers=hdrs) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


def metric(router: RunningRouter, name: str, **labels: str) -> float:
    value = router.runtime.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_a_request_is_answered_by_the_model_with_router_headers(servers: Any, http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls)) as router:
        status, headers, body = await post(http, router.endpoint("fraud"), ROW + "\n" + ROW,
                                           **{"X-Amzn-SageMaker-Custom-Attributes": "trace=1", "Accept": "text/csv"})
    assert status == 200
    expected = FraudModel.load().predict([[float(x) for x in ROW.split(",")]])[0]
    lines = body.decode().split()
    assert len(lines) == 2
    assert float(lines[0]) == pytest.approx(expected, abs=1e-6)
    assert headers["Content-Type"].startswith("text/csv")
    assert (headers["X-Router-Lane"], headers["X-Router-Backend"], headers["X-Router-Reason"]) == (
        "realtime", "rt", "realtime_first")
    assert headers["X-Amzn-Invoked-Production-Variant"] == "rt"
    assert headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=1"  # echoed by the model, passed back
    assert len(headers["X-Request-Id"]) >= 16
    assert rt.last_headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=1"
    assert sls.requests == 0


async def test_client_request_id_is_kept_and_a_hostile_one_replaced(servers: Any, http: Any) -> None:
    async with serve_router(config(*servers)) as router:
        _, kept, _ = await post(http, router.endpoint("fraud"), **{"X-Request-Id": "abc-123"})
        _, replaced, _ = await post(http, router.endpoint("fraud"), **{"X-Request-Id": "x" * 500})
    assert kept["X-Request-Id"] == "abc-123"
    assert replaced["X-Request-Id"] != "x" * 500


async def test_unknown_model_is_404_in_sagemaker_shape_and_never_a_metric_label(servers: Any, http: Any) -> None:
    async with serve_router(config(*servers)) as router:
        status, headers, body = await post(http, router.endpoint("no-such-model-" + "z" * 40))
        assert status == 404
        assert headers["x-amzn-ErrorType"] == "ValidationError"
        assert "message" in json.loads(body)
        assert metric(router, "router_requests_total", model="_unknown", lane="none", backend="none",
                      code="404") == 1
        async with http.get(router.url + "/metrics") as resp:
            text = await resp.text()
    assert "no-such-model" not in text


async def test_oversized_body_is_413_before_the_model_is_called(servers: Any, http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls)) as router:
        status, headers, _body = await post(http, router.endpoint("fraud"), b"1" * 70_000)
        assert status == 413
        assert headers["x-amzn-ErrorType"] == "ValidationError"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
            for _ in range(20):
                yield b"1" * 8192

        async with http.post(router.endpoint("fraud"), data=chunks()) as resp:
            assert resp.status == 413
    assert rt.requests == sls.requests == 0


async def test_payload_over_serverless_limit_stays_on_realtime(servers: Any, http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls, rt_capacity=1)) as router:
        rt.latency_s = 0.3
        big = "\n".join([ROW] * 2000)  # ~42 KB: over serverless's 32 KB, under realtime's 64 KB
        first = asyncio.create_task(post(http, router.endpoint("fraud"), ROW))
        await until(lambda: rt.inflight == 1)
        status, headers, _ = await post(http, router.endpoint("fraud"), big, **{"X-Urgency": "critical",
                                                                              "X-Api-Key": TEAM_KEY})
        await first
    assert status == 200
    assert headers["X-Router-Backend"] == "rt"  # overflowed on the full realtime backend, not to serverless
    assert sls.requests == 0


@pytest.mark.parametrize(("header", "value"), [("X-Urgency", "whenever"), ("X-Deadline-Ms", "soon")])
async def test_malformed_header_is_400_naming_it(servers: Any, http: Any, header: str, value: str) -> None:
    async with serve_router(config(*servers)) as router:
        status, headers, body = await post(http, router.endpoint("fraud"), **{header: value})
    assert status == 400
    assert header in json.loads(body)["message"]
    assert headers["x-amzn-ErrorType"] == "ValidationError"


async def test_saturating_realtime_sends_the_overflow_to_serverless(servers: Any, http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls, rt_capacity=2)) as router:
        rt.latency_s = sls.latency_s = 0.3
        results = await asyncio.gather(*(post(http, router.endpoint("fraud")) for _ in range(4)))
        lanes = sorted(h["X-Router-Lane"] for _, h, _ in results)
        assert [s for s, _, _ in results] == [200] * 4
        assert lanes == ["realtime", "realtime", "serverless", "serverless"]
        assert rt.peak_inflight == 2
        assert metric(router, "router_fallbacks_total", model="fraud", from_backend="rt", to_backend="sls",
                      reason="saturated") == 2


@pytest.mark.parametrize(("status", "reason"), [(429, "throttled"), (503, "unavailable"), (500, "server_error")])
async def test_throttling_and_5xx_fall_back_to_serverless(servers: Any, http: Any, status: int, reason: str) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls)) as router:
        rt.fail_next(1, status)
        code, headers, _ = await post(http, router.endpoint("fraud"))
        assert code == 200
        assert (headers["X-Router-Lane"], headers["X-Router-Backend"]) == ("serverless", "sls")
        assert metric(router, "router_fallbacks_total", model="fraud", from_backend="rt", to_backend="sls",
                      reason=reason) == 1
        if status == 429:
            assert router.runtime.tracker.trackers["rt"].capacity == 2  # AIMD: halved from 4


async def test_timeout_falls_back_and_a_fully_timed_out_route_is_504(servers: Any, http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls, rt_timeout="200ms")) as router:
        rt.latency_s = 1.0
        code, headers, _ = await post(http, router.endpoint("fraud"))
        assert (code, headers["X-Router-Backend"]) == (200, "sls")
        sls.latency_s = 6.0
        code, headers, _body = await post(http, router.endpoint("fraud"), **{"X-Deadline-Ms": "400"})
        assert code == 504
        assert headers["x-amzn-ErrorType"] == "ModelError"


async def test_breaker_opens_after_consecutive_failures_and_stops_calling_the_backend(servers: Any,
                                                                                     http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls, breaker_failures=3)) as router:
        rt.fail_status = 503
        for _ in range(5):
            code, headers, _ = await post(http, router.endpoint("fraud"))
            assert (code, headers["X-Router-Backend"]) == (200, "sls")
        assert rt.requests == 3  # the 4th and 5th requests did not touch the failing backend
        assert metric(router, "router_fallbacks_total", model="fraud", from_backend="rt", to_backend="sls",
                      reason="breaker_open") == 2
        async with http.get(router.url + "/metrics") as resp:
            assert 'router_backend_breaker_open{backend="rt"} 1.0' in await resp.text()


async def test_low_urgency_is_shed_under_saturation_while_normal_waits_and_critical_is_served(
        servers: Any, http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls, rt_capacity=1, sls_capacity=1)) as router:
        rt.latency_s = sls.latency_s = 0.5
        busy = [asyncio.create_task(post(http, router.endpoint("fraud"))) for _ in range(2)]
        await until(lambda: rt.inflight + sls.inflight == 2)
        low = await post(http, router.endpoint("fraud"), **{"X-Urgency": "low"})
        normal = await post(http, router.endpoint("fraud"), **{"X-Urgency": "normal"})
        critical = await post(http, router.endpoint("fraud"), **{"X-Urgency": "critical", "X-Api-Key": TEAM_KEY})
        await asyncio.gather(*busy)
        assert low[0] == 429
        assert low[1]["Retry-After"] == "3"
        assert low[1]["x-amzn-ErrorType"] == "ThrottlingException"
        assert low[1]["X-Router-Lane"] == "shed"
        assert normal[0] == 200  # not shed by policy: it waited for a slot in the admission queue
        assert metric(router, "router_queue_wait_seconds_count", backend="rt") >= 1
        assert critical[0] == 200
        assert metric(router, "router_shed_total", model="fraud", reason="shed_saturated") == 1


async def test_anonymous_critical_is_clamped_and_counted(servers: Any, http: Any) -> None:
    async with serve_router(config(*servers)) as router:
        await post(http, router.endpoint("fraud"), **{"X-Urgency": "critical"})
        assert metric(router, "router_urgency_clamped_total", model="fraud") == 1


async def test_unknown_api_key_is_refused(servers: Any, http: Any) -> None:
    async with serve_router(config(*servers)) as router:
        code, _headers, _ = await post(http, router.endpoint("fraud"), **{"X-Api-Key": "not-a-real-key"})
    assert code == 403


async def test_model_error_is_424_and_not_retried_elsewhere(servers: Any, http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls)) as router:
        code, headers, body = await post(http, router.endpoint("fraud"), "1,2,three")
    assert code == 424
    assert headers["x-amzn-ErrorType"] == "ModelError"
    doc = json.loads(body)
    assert doc["OriginalStatusCode"] == 400
    assert "line 1" in doc["OriginalMessage"]
    assert sls.requests == 0


async def test_retry_budget_stops_a_retry_storm(servers: Any, http: Any) -> None:
    rt, sls = servers
    retry = "fallback: {retry_budget: 0, min_retries_per_second: 0}"
    async with serve_router(config(rt, sls, breaker_failures=1000, retry=retry)) as router:
        rt.fail_status = 503
        codes = [(await post(http, router.endpoint("fraud")))[0] for _ in range(12)]
        assert codes == [200] * 10 + [503] * 2  # the bucket starts with 10 tokens and never refills
        assert metric(router, "router_retry_budget_exhausted_total", model="fraud") == 2


async def test_extra_paths_are_forwarded_with_path_and_query(servers: Any, http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls)) as router:
        for path in ("/v2/models/fraud/infer?debug=1", "/predictions/fraud", "/custom/fraud/score?x=y"):
            body = json.dumps({"instances": [[120.5, 2, 0.8, 350, 7, 30]]})
            code, headers, answer = await post(http, router.url + path, body, **{"Content-Type": "application/json"})
            assert code == 200, answer
            assert headers["X-Router-Lane"] == "realtime"
            assert rt.last_path == path
        code, _, _ = await post(http, router.url + "/v2/models/other/infer")
        assert code == 404
        requests_before = rt.requests
        for climb in ("/custom/fraud/%2e%2e/%2e%2e/admin", "/custom/fraud/../../admin"):
            url = URL(router.url + climb, encoded=True)  # as sent, not normalised by the client
            async with http.post(url, data=ROW) as resp:
                assert resp.status == 400  # a prefix path cannot climb out of the configured one
        assert rt.requests == requests_before


async def test_deadline_that_no_lane_can_meet_fails_fast(servers: Any, http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls, policy="[deadline, rules]",
                                   extra="  deadline: {type: deadline}")) as router:
        rt.latency_s = sls.latency_s = 0.2
        await post(http, router.endpoint("fraud"))  # teaches the tracker realtime's latency
        code, headers, _ = await post(http, router.endpoint("fraud"), **{"X-Deadline-Ms": "50"})
        assert code == 503
        assert headers["X-Router-Reason"] == "deadline_unmeetable"
        # serverless is cold (1 s start), realtime fits 500 ms: the deadline policy picks realtime alone
        code, headers, _ = await post(http, router.endpoint("fraud"), **{"X-Deadline-Ms": "500"})
        assert (code, headers["X-Router-Reason"], headers["X-Router-Backend"]) == (200, "deadline", "rt")


async def test_every_contract_metric_is_exported(servers: Any, http: Any) -> None:
    async with serve_router(config(*servers)) as router:
        await post(http, router.endpoint("fraud"))
        async with http.get(router.url + "/metrics") as resp:
            text = await resp.text()
    for name in ("router_requests_total", "router_request_duration_seconds_bucket", "router_decisions_total",
                 "router_backend_inflight", "router_backend_saturation"):
        assert f"\n{name}{{" in text, name
    for family in ("router_fallbacks_total", "router_shed_total"):
        assert f"# TYPE {family} counter" in text


async def test_one_json_access_log_line_per_request_without_body(servers: Any, http: Any,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    async with serve_router(config(*servers)) as router:
        await post(http, router.endpoint("fraud"), **{"X-Api-Key": TEAM_KEY, "X-Request-Id": "log-test-1"})
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"log-test-1"' in line]
    assert len(lines) == 1
    entry = lines[0]
    assert {k: entry[k] for k in ("event", "model", "lane", "backend", "reason", "status", "caller")} == {
        "event": "request", "model": "fraud", "lane": "realtime", "backend": "rt", "reason": "realtime_first",
        "status": 200, "caller": "team-a"}
    assert entry["duration_ms"] > 0
    assert ROW not in json.dumps(entry)
    assert TEAM_KEY not in json.dumps(entry)
