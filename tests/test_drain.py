"""Graceful drain of a real ``inference-router serve``: on SIGTERM /readyz turns 503 first, the listener keeps
serving for drain_delay, then closes, and requests in flight and running jobs finish before the exit."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp

from router.demo.model_server import ModelServer
from router.storage.sqlite import SqliteJobStore
from tests.conftest import free_port, until

ROOT = Path(__file__).resolve().parent.parent
ROW = "120.5,2,0.8,350,7,30"


def config(port: int, url: str, state: Path) -> str:
    return f"""
server: {{listen: "127.0.0.1:{port}", drain_delay: 1s, drain_timeout: 10s, log_format: json}}
state: {{kind: local, path: "{state}"}}
jobs: {{workers: 1, poll_interval: 20ms, drain_timeout: 10s}}
backends:
  rt: {{kind: http, url: "{url}/invocations", timeout: 10s}}
models:
  fraud:
    lanes: {{realtime: rt, async: rt}}
    policy: [jobs-when-allowed]
policies:
  jobs-when-allowed:
    type: rules
    params:
      - {{when: {{accepts_async: true}}, route: async}}
      - {{route: realtime}}
"""


async def test_sigterm_fails_readiness_first_serves_through_the_delay_then_finishes_work_in_flight(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    endpoint = f"{base}/endpoints/fraud/invocations"
    csv = {"Content-Type": "text/csv"}
    async with ModelServer(latency_s=2.0) as rt:
        path = tmp_path / "router.yaml"
        path.write_text(config(port, rt.url, tmp_path / "state"))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.cli", "serve", "--config", str(path), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(20):
                while True:
                    try:
                        async with http.get(f"{base}/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
            async with http.post(endpoint, data=ROW, headers={**csv, "Prefer": "respond-async"}) as r:
                assert r.status == 202
                job_id = (await r.json())["job_id"]
            slow = asyncio.create_task(http.post(endpoint, data=ROW, headers=csv))
            await until(lambda: rt.inflight == 2, timeout_s=10)  # the job and the request are at the model now

            proc.send_signal(signal.SIGTERM)
            async with aiohttp.ClientSession() as fresh, asyncio.timeout(10):
                while True:
                    async with fresh.get(f"{base}/readyz") as r:
                        if r.status == 503:
                            assert (await r.json())["draining"] is True
                            break
                    await asyncio.sleep(0.01)
                # the listener still serves during drain_delay, and asks the client to reconnect elsewhere
                served = asyncio.create_task(fresh.post(endpoint, data=ROW, headers=csv))
                async with asyncio.timeout(15):
                    while True:  # then it closes
                        try:
                            async with fresh.get(f"{base}/healthz", headers={"Connection": "close"}):
                                pass
                        except aiohttp.ClientConnectionError:
                            break
                        await asyncio.sleep(0.05)
                async with await served as r:
                    assert (r.status, r.headers["Connection"]) == (200, "close")
            async with await slow as r:
                assert r.status == 200  # in flight when the listener closed: finished
                assert 0.0 < float(await r.text()) < 1.0
            _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode in (0, -signal.SIGTERM)
    assert b'"event":"draining"' in err
    assert b'"event":"router_stopped"' in err
    store = SqliteJobStore(tmp_path / "state" / "jobs.sqlite3")
    try:
        job = await store.get(job_id)
    finally:
        await store.close()
    assert job is not None
    assert job.status.value == "succeeded"  # running when SIGTERM came: it finished before the exit
    assert job.attempts == 1
