"""Crash safety of the batch lane: the router is SIGKILLed with records buffered and again while a batch
runs, then stopped with SIGTERM with records buffered; after each restart every record ends exactly once,
with the model's answer for its own input."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from router.demo.model import FraudModel
from router.demo.model_server import ModelServer
from tests.conftest import free_port, until
from tests.test_async_crash import start_router, statuses

LOW = {"Content-Type": "text/csv", "X-Urgency": "low", "Prefer": "respond-async"}


def row(i: int) -> str:
    return f"{10 + i},{i % 24},0.{i % 10},{i},{i % 7},{30 + i}"


def config(rt: ModelServer, port: int, state: Path) -> str:
    return f"""
server: {{listen: "127.0.0.1:{port}", access_log: false}}
state: {{kind: local, path: "{state}"}}
jobs: {{drain_timeout: 1s}}
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", max_concurrency: 4, timeout: 30s, breaker: {{failures: 1000}}}}
models:
  fraud:
    lanes: {{realtime: rt, batch: rt}}
    batch: {{max_records: 50, max_wait: 60s, max_payload: 200B}}
    policy: [low-to-batch]
policies:
  low-to-batch: {{type: rules, params: [{{when: {{urgency: low, accepts_async: true}}, route: batch}}]}}
"""


async def submit(http: aiohttp.ClientSession, base: str, first: int, count: int) -> list[str]:
    ids = []
    for i in range(first, first + count):
        async with http.post(f"{base}/endpoints/fraud/invocations", data=row(i), headers=LOW) as r:
            assert r.status == 202
            ids.append((await r.json())["job_id"])
    return ids


async def all_ended(http: aiohttp.ClientSession, base: str, ids: list[str]) -> None:
    async with asyncio.timeout(20):
        for _ in range(400):
            if all(j["status"] in ("succeeded", "failed") for j in (await statuses(http, base, ids)).values()):
                return
            await asyncio.sleep(0.05)


async def test_sigkill_and_sigterm_lose_nothing_and_run_nothing_twice(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    state = tmp_path / "var"
    cfg = tmp_path / "router.yaml"
    procs: list[asyncio.subprocess.Process] = []
    async with ModelServer() as rt, aiohttp.ClientSession() as http:
        cfg.write_text(config(rt, port, state))
        try:
            # 1. SIGKILL with 20 records appended and not flushed
            procs.append(proc := await start_router(cfg, port, http))
            ids = await submit(http, base, 0, 20)
            proc.kill()
            await proc.wait()
            assert rt.requests == 0

            # 2. restart: the 20 are flushed at once; SIGKILL while their batch runs, 10 more buffered
            rt.latency_s = 5.0
            procs.append(proc := await start_router(cfg, port, http))
            await until(lambda: rt.inflight > 0, timeout_s=10)
            ids += await submit(http, base, 20, 10)
            proc.kill()
            await proc.wait()

            # 3. restart: the cut-short batch runs again and the 10 are flushed; all 30 end, each once
            rt.latency_s = 0.0
            procs.append(proc := await start_router(cfg, port, http))
            await all_ended(http, base, ids)

            # 4. SIGTERM with 5 records buffered: the buffer outlives the stop and is flushed after it
            ids += (later := await submit(http, base, 30, 5))
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) in (0, -signal.SIGTERM)
            procs.append(proc := await start_router(cfg, port, http))
            await all_ended(http, base, later)

            jobs = await statuses(http, base, ids)
            assert [jobs[i]["status"] for i in ids] == ["succeeded"] * 35
            assert all(jobs[i]["records"] == {"total": 1, "done": 1, "failed": 0} for i in ids)
            model = FraudModel.load()
            for n, job_id in enumerate(ids):
                async with http.get(f"{base}/jobs/{job_id}/result") as r:
                    assert float(await r.text()) == pytest.approx(
                        model.predict([[float(x) for x in row(n).split(",")]])[0], abs=1e-6)
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    await p.wait()

    with sqlite3.connect(state / "batch.sqlite3") as db:
        assert db.execute("SELECT status, count(*) FROM batch_jobs GROUP BY status").fetchall() == [("succeeded", 35)]
        assert db.execute("SELECT count(*) FROM batches WHERE state != 'done'").fetchone() == (0,)
        runs = dict(db.execute("SELECT trigger, max(runs) FROM batches GROUP BY trigger").fetchall())
    assert runs["restart"] == 2  # the batch cut short by the kill was started twice, and completed once
