"""What the sync path promises a client, pinned through HTTP against real model servers: a lane takes a
payload exactly at its limit and refuses one byte more, no backend is called once the client's deadline
has passed, and a caller's urgency is clamped to what its API key allows before any policy sees it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, serve_router

ROW = "120.5,2,0.8,350,7,30"
SLS_LIMIT, RT_LIMIT = 1000, 2000
ADMIN = "admin-secret-token"
KEY_TOP, KEY_NORMAL = "team-a-secret-key", "team-b-secret-key"


def config(rt: ModelServer, sls: ModelServer, *, policy: str = "serverless-first", rt_timeout: str = "5s") -> str:
    return f"""
server: {{admin_token: {ADMIN}}}
callers:
  - {{api_key: {KEY_TOP}, tenant: team-a}}
  - {{api_key: {KEY_NORMAL}, tenant: team-b, max_urgency: normal}}
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", timeout: {rt_timeout}}}
  sls: {{kind: http, url: "{sls.url}/invocations", timeout: 5s}}
models:
  fraud:
    lanes: {{realtime: rt, serverless: sls}}
    limits: {{realtime: {RT_LIMIT}, serverless: {SLS_LIMIT}}}
    policy: [{policy}]
policies:
  serverless-first:
    type: rules
    params:
      - {{route: serverless, fallback: [realtime], reason: serverless_first}}
  realtime-first:
    type: rules
    params:
      - {{route: realtime, fallback: [serverless], reason: realtime_first}}
  by-urgency:
    type: rules
    params:
      - {{when: {{urgency: critical}}, route: realtime, reason: as_critical}}
      - {{when: {{urgency: high}}, route: realtime, reason: as_high}}
      - {{when: {{urgency: normal}}, route: realtime, reason: as_normal}}
      - {{route: realtime, reason: as_low}}
"""


def csv_of(size: int) -> bytes:
    """One valid fraud-model row of exactly ``size`` bytes (the first number padded with zeros)."""
    head, _, tail = ROW.partition(",")
    return f"{head}{'0' * (size - len(ROW))},{tail}".encode()


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    """The body without a Content-Length: the router learns its size only by reading it."""
    for i in range(0, len(body), 300):
        yield body[i:i + 300]


async def post(http: aiohttp.ClientSession, router: RunningRouter, body: bytes, *, declared: bool,
               **headers: str) -> tuple[int, CIMultiDict[str]]:
    data: Any = body if declared else chunked(body)
    async with http.post(router.endpoint("fraud"), data=data, headers={"Content-Type": "text/csv", **headers}) as r:
        await r.read()
        return r.status, r.headers.copy()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ModelServer, ModelServer]]:
    async with ModelServer() as rt, ModelServer() as sls:
        yield rt, sls


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_payload_exactly_at_a_lanes_limit_is_served_there_and_one_byte_more_is_not(
        servers: Any, http: Any, declared: bool) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls)) as router:
        assert len(csv_of(SLS_LIMIT)) == SLS_LIMIT
        status, headers = await post(http, router, csv_of(SLS_LIMIT), declared=declared)
        assert (status, headers["X-Router-Backend"]) == (200, "sls")
        status, headers = await post(http, router, csv_of(SLS_LIMIT + 1), declared=declared)
        assert (status, headers["X-Router-Backend"]) == (200, "rt")  # over serverless's limit: its fallback
        status, headers = await post(http, router, csv_of(RT_LIMIT), declared=declared)
        assert (status, headers["X-Router-Backend"]) == (200, "rt")
        status, _ = await post(http, router, csv_of(RT_LIMIT + 1), declared=declared)
        assert status == 413  # over every lane's limit
    assert (sls.requests, rt.requests) == (1, 2)


async def test_no_backend_is_called_once_the_deadline_has_passed(servers: Any, http: Any) -> None:
    rt, sls = servers
    async with serve_router(config(rt, sls, policy="realtime-first")) as router:
        rt.latency_s = 2.0  # realtime answers too late: its call is cut at the deadline
        status, headers = await post(http, router, ROW.encode(), declared=True, **{"X-Deadline-Ms": "300"})
        assert status == 504
        assert headers["X-Router-Backend"] == "rt"  # the answer is realtime's timeout: serverless was never tried
        assert sls.requests == 0
        calls = router.runtime.metrics.registry.get_sample_value
        assert not any(calls("router_backend_calls_total", {"backend": "sls", "outcome": outcome})
                       for outcome in ("ok", "timeout", "connection"))
        rt.latency_s = 0.0  # with time left, the same request is served as usual
        status, headers = await post(http, router, ROW.encode(), declared=True, **{"X-Deadline-Ms": "5000"})
        assert (status, headers["X-Router-Backend"]) == (200, "rt")


@pytest.mark.parametrize(("key", "asked", "used"), [
    (None, "critical", "high"),  # anonymous: at most one level below the top (urgency.anonymous_max default)
    (None, "high", "high"),
    (KEY_NORMAL, "critical", "normal"),  # this key's max_urgency
    (KEY_NORMAL, "low", "low"),
    (KEY_TOP, "critical", "critical"),  # no max_urgency: any level
])
async def test_urgency_is_clamped_to_the_callers_ceiling_before_routing(servers: Any, http: Any, key: str | None,
                                                                        asked: str, used: str) -> None:
    rt, sls = servers
    who = {"X-Api-Key": key} if key else {}
    async with serve_router(config(rt, sls, policy="by-urgency")) as router:
        status, headers = await post(http, router, ROW.encode(), declared=True, **{"X-Urgency": asked, **who})
        assert (status, headers["X-Router-Reason"]) == (200, f"as_{used}")  # the rule for the level used
        clamped = router.runtime.metrics.registry.get_sample_value("router_urgency_clamped_total",
                                                                   {"model": "fraud"}) or 0.0
        assert clamped == (0 if asked == used else 1)
        async with http.post(f"{router.url}/admin/explain", headers={"Authorization": f"Bearer {ADMIN}"},
                             data=json.dumps({"model": "fraud", "headers": {"X-Urgency": asked, **who}})) as r:
            explained = await r.json()
        assert (explained["request"]["urgency"], explained["reason"]) == (used, f"as_{used}")
