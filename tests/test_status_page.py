"""The live status page (``GET /ui``): its admin API behind the admin token, and the page itself in a real headless
Chromium against a live router, read as a user reads it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from router.demo.model_server import ModelServer
from tests.browser import CHROMIUM, MISSING, chromium
from tests.conftest import RunningRouter, serve_router

TOKEN = "status-page-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROW = "120.5,2,0.8,350,7,30"


def config(rt: str, sls: str, state: Path) -> str:
    return f"""
server: {{admin_token: {TOKEN}, drain_delay: 0s}}
state: {{kind: local, path: "{state}"}}
jobs: {{workers: 2, poll_interval: 20ms}}
callers:
  - {{api_key: team-a-key-123, tenant: team-a}}
backends:
  fraud-rt: {{kind: http, url: "{rt}/invocations", max_concurrency: 4}}
  fraud-sls: {{kind: http, url: "{sls}/invocations", max_concurrency: 8, serverless: {{idle_after: 30s}}}}
models:
  fraud:
    lanes: {{realtime: fraud-rt, serverless: fraud-sls, async: fraud-rt}}
    policy: [route]
policies:
  route:
    type: rules
    params:
      - {{when: {{urgency: low}}, route: shed, reason: low_shed}}
      - {{when: {{payload_bytes: {{gt: 1KB}}}}, route: async, reason: big}}
      - {{route: realtime, fallback: [serverless], reason: realtime_first}}
"""


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[RunningRouter]:
    async with ModelServer() as rt, ModelServer() as sls, serve_router(config(rt.url, sls.url, tmp_path)) as r:
        yield r


async def invoke(http: aiohttp.ClientSession, base: str, body: str, **headers: str) -> aiohttp.ClientResponse:
    async with http.post(f"{base}/endpoints/fraud/invocations", data=body,
                         headers={"Content-Type": "text/csv", **headers}) as r:
        await r.read()
        return r


async def test_the_status_api_needs_the_admin_token_and_the_page_holds_no_secret(
        router: RunningRouter, http: aiohttp.ClientSession) -> None:
    for path in ("/admin/status", "/admin/decisions", "/admin/jobs"):
        async with http.get(router.url + path) as r:
            assert (r.status, r.headers["x-amzn-ErrorType"]) == (401, "UnauthorizedException")
    async with http.get(router.url + "/ui") as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        page = await r.text()
    assert TOKEN not in page
    assert "sessionStorage" in page


async def test_recent_decisions_are_kept_and_found_by_request_id(router: RunningRouter,
                                                                 http: aiohttp.ClientSession) -> None:
    for i in range(3):
        assert (await invoke(http, router.url, ROW, **{"X-Request-Id": f"order-{i}"})).status == 200
    assert (await invoke(http, router.url, ROW, **{"X-Urgency": "low", "X-Request-Id": "lowly-1"})).status == 429
    async with http.get(router.url + "/admin/decisions?request_id=lowly", headers=AUTH) as r:
        (shed,) = (await r.json())["decisions"]
    assert {k: shed[k] for k in ("model", "lane", "reason", "policy", "status", "urgency")} == {
        "model": "fraud", "lane": "shed", "reason": "low_shed", "policy": "route", "status": 429, "urgency": "low"}
    async with http.get(router.url + "/admin/decisions", headers=AUTH) as r:
        ids = [d["request_id"] for d in (await r.json())["decisions"]]
    assert ids == ["lowly-1", "order-2", "order-1", "order-0"]  # newest first
    async with http.get(router.url + "/admin/status", headers=AUTH) as r:
        status = await r.json()
    (step,) = [s for s in status["history"]["steps"] if s["models"]]
    assert step["models"]["fraud"] == {"lanes": {"realtime": 3, "shed": 1}, "shed": 1, "deferred": 0,
                                       "answers": {"2xx": 3, "4xx": 1}}
    rt = next(b for b in status["backends"] if b["name"] == "fraud-rt")
    assert (rt["inflight"], rt["limit"], rt["breaker"], rt["serverless"]) == (0, 4, "closed", False)
    sls = next(b for b in status["backends"] if b["name"] == "fraud-sls")
    assert (sls["serverless"], sls["cold"]) == (True, True)  # never called yet


@pytest.mark.skipif(CHROMIUM is None, reason=MISSING)
async def test_the_status_page_in_a_browser_shows_backends_traffic_decisions_and_jobs(
        router: RunningRouter, http: aiohttp.ClientSession) -> None:
    for i in range(5):
        await invoke(http, router.url, ROW, **{"X-Request-Id": f"web-{i}"})
    await invoke(http, router.url, ROW, **{"X-Urgency": "low"})
    big = "\n".join([ROW] * 100)
    async with http.post(f"{router.url}/endpoints/fraud/invocations", data=big,
                         headers={"Content-Type": "text/csv", "Prefer": "respond-async",
                                  "X-Api-Key": "team-a-key-123"}) as r:
        assert r.status == 202
        job_id = (await r.json())["job_id"]
    async with http.get(f"{router.url}/jobs/{job_id}", headers={"X-Api-Key": "team-a-key-123"}) as r:
        assert r.status == 200
    async with chromium() as page:
        await page.goto(router.url + "/ui")
        assert await page.js("!document.getElementById('login').hidden")  # asks for the token first
        await page.type("#token", TOKEN)
        await page.click("#login-form button")
        await page.wait_for("document.querySelectorAll('.model tr[data-lane]').length === 3")
        assert await page.js("sessionStorage.getItem('inference-router-admin-token')") == TOKEN
        assert TOKEN not in await page.js("location.href")

        rows = await page.js("[...document.querySelectorAll('.model tr[data-lane]')].map(r => r.innerText)")
        realtime = next(r for r in rows if r.startswith("realtime"))
        assert "fraud-rt" in realtime
        assert "0 / 4" in realtime
        assert "closed" in realtime
        assert "cold" in next(r for r in rows if r.startswith("serverless"))

        split = await page.wait_for("(() => { const r = document.querySelector('#split tr[data-model=fraud]');"
                                    " return r && r.innerText.includes('realtime') && r.innerText; })()")
        assert "realtime 5 (" in split
        assert await page.js("document.querySelector('#split tr[data-model=fraud] .shed-count').innerText") == "1"
        assert await page.js("document.querySelectorAll('#chart rect').length") >= 2  # realtime and shed bars

        assert await page.wait_for("document.querySelectorAll('#decisions tbody tr').length >= 7")
        await page.type("#rid", "web-3")
        await page.wait_for("document.querySelectorAll('#decisions tbody tr').length === 1")
        found = await page.js("document.querySelector('#decisions tbody tr').innerText")
        assert "realtime" in found
        assert "realtime_first" in found
        assert "200" in found

        await page.wait_for(f"(() => {{ const r = document.querySelector('#job-list tr[data-job=\"{job_id}\"]');"
                            " return r && r.innerText.includes('succeeded'); })()", timeout_s=15)
        job_row = await page.js(f"document.querySelector('#job-list tr[data-job=\"{job_id}\"]').innerText")
        assert "team-a" in job_row
        await page.wait_for("document.getElementById('job-counts').innerText.includes('succeeded: 1')")  # the
        # counts are router_jobs', which the job lane refreshes every 2 s
        await page.click(f"#job-list tr[data-job=\"{job_id}\"] button.result")
        result = await page.wait_for("!document.getElementById('result').hidden && "
                                     "document.getElementById('result').innerText")
        assert result.count("\n") >= 100  # one score per record
        assert page.console_errors == [], json.dumps(page.console_errors)
