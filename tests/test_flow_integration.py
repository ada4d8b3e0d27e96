"""Flow control against real servers on 127.0.0.1: a learned limit, ORCA reports, a half-failing backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, serve_router, until

ROW = "120.5,2,0.8,350,7,30"


def gauge(router: RunningRouter, name: str, **labels: str) -> float:
    return router.runtime.metrics.registry.get_sample_value(name, labels) or 0.0


async def post(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.post(url, data=ROW, headers={"Content-Type": "text/csv"}) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Router-Backend", "")


async def test_auto_limit_learns_a_throttling_backends_capacity_under_load(http: aiohttp.ClientSession) -> None:
    async with ModelServer(latency_s=0.02, max_concurrency=6) as rt:  # 429 above 6 in flight
        cfg = f"""
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", max_concurrency: {{initial: 2, max: 64}}}}
models:
  fraud: {{lanes: {{realtime: rt}}}}
"""
        async with serve_router(cfg) as router:
            tracker = router.runtime.tracker.trackers["rt"]
            assert tracker.capacity == 2
            stop = asyncio.Event()

            async def client() -> None:  # more demand than the backend serves; 503s retried at once
                while not stop.is_set():
                    await post(http, router.endpoint("fraud"))

            clients = [asyncio.create_task(client()) for _ in range(16)]
            try:
                await until(lambda: rt.refused > 0, timeout_s=15.0)  # it grew until the backend said no...
                rt.reset_counters()
                await until(lambda: rt.served_ok >= 300, timeout_s=20.0)  # ...then it keeps under it
            finally:
                stop.set()
                await asyncio.gather(*clients)
            assert 4 <= tracker.capacity <= 7
            assert rt.refused <= 0.05 * rt.requests
            assert rt.peak_inflight <= 7
            assert gauge(router, "router_backend_capacity", backend="rt") == tracker.capacity


async def orca_server(report: str) -> AsyncIterator[str]:
    async def invoke(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="0.5\n", content_type="text/csv", headers={"endpoint-load-metrics": report})

    app = web.Application()
    app.router.add_post("/invocations", invoke)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def orca_config(rt: str, sls: str) -> str:
    return f"""
backends:
  rt: {{kind: http, url: "{rt}/invocations", max_concurrency: 8}}
  sls: {{kind: http, url: "{sls}/invocations", max_concurrency: 8}}
models:
  fraud: {{lanes: {{realtime: rt, serverless: sls}}, policy: [by-load]}}
policies:
  by-load:
    type: rules
    params:
      - {{when: {{saturation.realtime: {{gte: 0.9}}}}, route: serverless, reason: realtime_busy}}
      - {{route: realtime, reason: realtime_first}}
"""


async def test_a_backend_reporting_its_load_with_orca_raises_its_saturation(http: aiohttp.ClientSession) -> None:
    busy = orca_server('JSON {"application_utilization": 0.95, "named_metrics": {"num_requests_waiting": 0}}')
    rt_url = await anext(busy)
    try:
        async with ModelServer() as sls, serve_router(orca_config(rt_url, sls.url)) as router:
            assert await post(http, router.endpoint("fraud")) == (200, "rt")
            # Nothing in flight, yet the backend says it is 95% busy: the next request goes elsewhere.
            assert gauge(router, "router_backend_saturation", backend="rt") == 0.95
            assert await post(http, router.endpoint("fraud")) == (200, "sls")
    finally:
        await busy.aclose()


async def test_a_malformed_load_report_is_ignored_not_an_error(http: aiohttp.ClientSession) -> None:
    broken = orca_server("TEXT application_utilization=lots")
    rt_url = await anext(broken)
    try:
        async with ModelServer() as sls, serve_router(orca_config(rt_url, sls.url)) as router:
            assert [await post(http, router.endpoint("fraud")) for _ in range(2)] == [(200, "rt")] * 2
            assert gauge(router, "router_backend_saturation", backend="rt") == 0.0
    finally:
        await broken.aclose()


async def test_a_backend_failing_half_its_calls_keeps_being_served(http: aiohttp.ClientSession) -> None:
    async with ModelServer(fail_rate=0.5, seed=3) as rt, ModelServer() as sls:
        cfg = f"""
backends:
  rt: {{kind: http, url: "{rt.url}/invocations"}}
  sls: {{kind: http, url: "{sls.url}/invocations"}}
models:
  fraud: {{lanes: {{realtime: rt, serverless: sls}}}}
"""
        async with serve_router(cfg) as router:
            async def client() -> None:
                for _ in range(50):
                    await post(http, router.endpoint("fraud"))

            await asyncio.gather(*(client() for _ in range(5)))
            assert rt.requests >= 0.9 * 250  # the breaker did not shut it out...
            assert rt.served_ok >= 0.4 * 250  # ...so it answered about half the requests
            assert gauge(router, "router_backend_breaker_open", backend="rt") == 0.0
