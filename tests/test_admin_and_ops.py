"""Operations endpoints, the admin API (bearer token, explain, reload, SIGHUP) and the CLI's explain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.cli import main
from router.demo.model_server import ModelServer
from tests.conftest import free_port, job_end, serve_router

TOKEN = "admin-secret-token"
ROOT = Path(__file__).resolve().parent.parent


def config_text(url: str, reason: str = "first") -> str:
    return f"""
server: {{admin_token: {TOKEN}}}
callers:
  - {{api_key: super-secret-api-key, tenant: team-a}}
backends:
  rt: {{kind: http, url: "{url}/invocations"}}
models:
  fraud:
    lanes: {{realtime: rt}}
    policy: [rules]
policies:
  rules:
    type: rules
    params:
      - {{when: {{urgency: low}}, route: shed, reason: no_low}}
      - {{route: realtime, reason: {reason}}}
"""


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_health_ready_and_metrics(http: aiohttp.ClientSession) -> None:
    async with ModelServer() as rt, serve_router(config_text(rt.url)) as router:
        async with http.get(router.url + "/healthz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ok"})
        async with http.get(router.url + "/readyz") as r:
            assert r.status == 200
            assert (await r.json())["models"] == ["fraud"]
        router.runtime.draining = True
        async with http.get(router.url + "/readyz") as r:
            assert r.status == 503
        async with http.post(router.endpoint("fraud"), data="120.5,2,0.8,350,7,30",
                             headers={"Content-Type": "text/csv"}) as r:
            assert r.status == 200  # draining: not ready, but served until the listener closes (drain_delay)
            assert r.headers["Connection"] == "close"  # keep-alive clients move to another replica
        router.runtime.draining = False
        async with http.get(router.url + "/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
async def test_admin_needs_the_bearer_token(http: aiohttp.ClientSession, headers: dict[str, str]) -> None:
    async with ModelServer() as rt, serve_router(config_text(rt.url)) as router:
        for method, path in (("GET", "/admin/policy"), ("POST", "/admin/explain"), ("POST", "/admin/reload")):
            async with http.request(method, router.url + path, headers=headers) as r:
                assert r.status == 401, path


async def test_admin_is_disabled_without_a_configured_token(http: aiohttp.ClientSession) -> None:
    no_token = config_text("http://127.0.0.1:9").replace(f"admin_token: {TOKEN}", "admin_token: null")
    async with serve_router(no_token) as router, http.get(router.url + "/admin/policy", headers=auth()) as r:
        assert r.status == 403


async def test_admin_policy_shows_the_config_without_secrets(http: aiohttp.ClientSession) -> None:
    async with serve_router(config_text("http://127.0.0.1:9")) as router, http.get(
            router.url + "/admin/policy", headers=auth()) as r:
        text = await r.text()
    doc = json.loads(text)
    assert doc["models"]["fraud"]["policy"] == ["rules"]
    assert (doc["callers"][0]["tenant"], doc["callers"][0]["api_key"]) == ("team-a", "**********")
    assert TOKEN not in text
    assert "super-secret-api-key" not in text


async def test_admin_explain_answers_without_calling_the_backend(http: aiohttp.ClientSession) -> None:
    async with ModelServer() as rt, serve_router(config_text(rt.url)) as router:
        async with http.post(router.url + "/admin/explain", headers=auth(),
                             json={"model": "fraud", "headers": {"X-Urgency": "low"}, "bytes": 10}) as r:
            shed = await r.json()
        async with http.post(router.url + "/admin/explain", headers=auth(), json={"model": "nope"}) as r:
            assert r.status == 400
        assert rt.requests == 0
    assert (shed["lane"], shed["reason"], shed["policy"], shed["status"]) == ("shed", "no_low", "rules", 429)


async def test_reload_rejects_a_bad_file_keeps_serving_then_swaps_to_a_good_one(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with ModelServer() as rt:
        path = tmp_path / "router.yaml"
        path.write_text(config_text(rt.url))
        async with serve_router(path.read_text(), config_path=str(path)) as router:
            path.write_text(config_text(rt.url).replace("lanes: {realtime: rt}", "lanes: {realtime: gone}"))
            async with http.post(router.url + "/admin/reload", headers=auth()) as r:
                assert r.status == 400
                errors = (await r.json())["errors"]
            assert errors == [f"{path}:9:23: models.fraud.lanes.realtime: unknown backend 'gone'"]
            async with http.post(router.endpoint("fraud"), data="120.5,2,0.8,350,7,30",
                                 headers={"Content-Type": "text/csv"}) as r:
                assert (r.status, r.headers["X-Router-Reason"]) == (200, "first")

            path.write_text(config_text(rt.url, reason="second"))
            async with http.post(router.url + "/admin/reload", headers=auth()) as r:
                assert r.status == 200
            async with http.post(router.endpoint("fraud"), data="120.5,2,0.8,350,7,30",
                                 headers={"Content-Type": "text/csv"}) as r:
                assert r.headers["X-Router-Reason"] == "second"
            registry = router.runtime.metrics.registry
            assert registry.get_sample_value("router_config_reloads_total", {"result": "invalid"}) == 1
            assert registry.get_sample_value("router_config_reloads_total", {"result": "ok"}) == 1


async def test_sighup_reloads_the_config_file(tmp_path: Path) -> None:
    async with ModelServer() as rt:
        path = tmp_path / "router.yaml"
        path.write_text(config_text(rt.url))
        async with serve_router(path.read_text(), config_path=str(path)) as router:
            path.write_text(config_text(rt.url, reason="after_hup"))
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(100):
                await asyncio.sleep(0.02)
                if _reason(router.runtime) == "after_hup":
                    break
            assert _reason(router.runtime) == "after_hup"


def _reason(runtime: Any) -> str:
    from router.types import RequestFeatures

    req = RequestFeatures(model="fraud", caller="anonymous", payload_bytes=1, content_type="text/csv",
                          urgency="normal", priority=1)
    return str(runtime.explain(req)["reason"])


def test_explain_command_prints_the_decision_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(config_text("http://127.0.0.1:9"))
    assert main(["explain", "--config", str(path), "--model", "fraud", "--header", "X-Urgency: low",
                 "--bytes", "2048"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["lane"] == "shed"
    assert decision["request"]["payload_bytes"] == 2048
    assert main(["explain", "--config", str(path), "--model", "fraud"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "rt"
    assert main(["explain", "--config", str(path), "--model", "nope"]) == 2



async def test_demo_command_serves_a_prediction_and_stops_on_sigterm(tmp_path: Path,
                                                                    http: aiohttp.ClientSession) -> None:
    port, rt_port, sls_port, async_port = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "DEMO_RT_PORT": str(rt_port), "DEMO_SLS_PORT": str(sls_port),
           "DEMO_ASYNC_PORT": str(async_port), "DEMO_STATE": str(tmp_path / "var")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.cli", "demo", "--port", str(port), env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        body = ""
        for _ in range(200):  # up to 20 s on a loaded CI machine
            await asyncio.sleep(0.1)
            if proc.returncode is not None:
                break
            try:
                async with http.post(f"http://127.0.0.1:{port}/endpoints/fraud/invocations",
                                     data="120.5,2,0.8,350,7,30", headers={"Content-Type": "text/csv"}) as r:
                    body = await r.text()
                    assert r.status == 200
                    break
            except aiohttp.ClientConnectionError:
                continue
        job: dict[str, str] = {}
        if body:  # the batch lane: low urgency + Prefer: respond-async -> 202, then one line per record
            base = f"http://127.0.0.1:{port}"
            records = "120.5,2,0.8,350,7,30\n4999.0,3,0.95,4200,31,2\n120.5,2,0.8,350,7,30\n"
            async with http.post(f"{base}/endpoints/fraud/invocations", data=records, headers={
                    "Content-Type": "text/csv", "X-Urgency": "low", "Prefer": "respond-async"}) as r:
                assert r.status == 202
                assert r.headers["X-Router-Lane"] == "batch"
                location = r.headers["Location"]
            for _ in range(200):  # the demo flushes its batch buffer within 2 s
                async with http.get(base + location) as r:
                    job["status"] = (await r.json())["status"]
                if job["status"] == "succeeded":
                    async with http.get(base + location + "/result") as r:
                        job["result"] = await r.text()
                    break
                await asyncio.sleep(0.05)
            # a payload over the real-time 6 MB limit becomes a job on the async lane's own server, which takes it
            big = "\n".join(["0" * 1150 + "120.5,2,0.8,350,7,30"] * 6000).encode()  # 7 MB in 6,000 rows
            async with http.post(f"{base}/endpoints/fraud/invocations", data=big, headers={
                    "Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
                assert (r.status, r.headers["X-Router-Lane"]) == (202, "async")
                job["big"] = (await job_end(http, base, (await r.json())["job_id"], 20.0))["status"]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert body, f"the demo did not answer; its stderr:\n{err.decode()[-3000:]}"
    assert 0.0 < float(body) < 1.0
    assert job["status"] == "succeeded"
    assert job["big"] == "succeeded"
    first, risky, third = job["result"].splitlines()
    assert first == third == body.strip()
    assert float(risky) > float(first)
    # uvicorn drains, runs the lifespan shutdown, then re-raises SIGTERM so the exit status tells the truth
    assert proc.returncode in (0, -signal.SIGTERM)
    assert b'"event":"router_stopped"' in err
    assert b"/endpoints/fraud/invocations" in out  # the printed curl examples


async def test_serve_drains_requests_in_flight_on_sigterm(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with ModelServer(latency_s=1.0) as rt:
        port = free_port()
        path = tmp_path / "router.yaml"
        path.write_text(config_text(rt.url).replace("server: {", f'server: {{listen: "127.0.0.1:{port}", '))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.cli", "serve", "--config", str(path), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    continue
            slow = asyncio.create_task(http.post(f"http://127.0.0.1:{port}/endpoints/fraud/invocations",
                                                 data="120.5,2,0.8,350,7,30", headers={"Content-Type": "text/csv"}))
            await asyncio.sleep(0.3)  # the request is now waiting on the 1 s model
            proc.send_signal(signal.SIGTERM)
            async with await slow as resp:
                assert resp.status == 200
                assert 0.0 < float(await resp.text()) < 1.0
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert b'"event":"router_stopped"' in err
