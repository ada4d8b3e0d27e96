"""What the async lane promises a client, pinned through the HTTP API against real model servers and the
embedded storage (SQLite + folder): a job reads ``succeeded`` only once its result is stored, a job cut short
by a shutdown goes back to the queue uncounted, workers take only the room sync traffic leaves, finished jobs
are kept for ``jobs.retention`` and no longer, expired jobs answer 410, ``Prefer: wait`` waits at most 60 s,
and every jobs endpoint shows a job to its own tenant only. Time that would take hours is moved on a clock
handed to the router, never slept."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.demo.model import FraudModel
from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, ShiftedClock, job_end, serve_router, until, until_async

ROW = "120.5,2,0.8,350,7,30"
KEY_A, KEY_B = "team-a-secret-key", "team-b-secret-key"
ASYNC = {"Content-Type": "text/csv", "Prefer": "respond-async"}
MAX_PREFER_WAIT_S = 60  # README: "waits up to N seconds (at most 60)"


def config(rt: ModelServer, state: Path, *, workers: int = 1, jobs: str = "", rt_capacity: int = 4,
           max_attempts: int = 3) -> str:
    """A model whose payloads over 2 KB become async jobs (small ones are sync) and whose low-urgency
    requests become batch jobs; callers of two tenants besides anonymous ones."""
    return f"""
state: {{kind: local, path: "{state}"}}
jobs: {{workers: {workers}, lease: 5s, max_attempts: {max_attempts}, backoff: 10ms, max_backoff: 50ms,
        poll_interval: 20ms{jobs}}}
callers:
  - {{api_key: {KEY_A}, tenant: team-a}}
  - {{api_key: {KEY_B}, tenant: team-b}}
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", max_concurrency: {rt_capacity}, timeout: 10s,
        breaker: {{failures: 1000}}}}
models:
  fraud:
    lanes: {{realtime: rt, async: rt, batch: rt}}
    limits: {{realtime: 2KB, async: 50MB}}
    batch: {{max_records: 1000, max_wait: 1h}}
    policy: [by-size]
policies:
  by-size:
    type: rules
    params:
      - {{when: {{urgency: low, accepts_async: true}}, route: batch, reason: low_goes_batch}}
      - {{when: {{payload_bytes: {{gt: 2KB}}}}, route: async, reason: too_big_for_sync}}
      - {{route: realtime}}
"""


def rows(n: int) -> str:
    return "\n".join([ROW] * n)


def expected(n: int) -> list[float]:
    return FraudModel.load().predict([[float(x) for x in ROW.split(",")]] * n)


async def submit(http: aiohttp.ClientSession, router: RunningRouter, body: str = rows(200),
                 **headers: str) -> str:
    async with http.post(router.endpoint("fraud"), data=body, headers={**ASYNC, **headers}) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["job_id"])


async def job(http: aiohttp.ClientSession, router: RunningRouter, job_id: str, **headers: str) -> dict[str, Any]:
    async with http.get(f"{router.url}/jobs/{job_id}", headers=headers) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def has_status(http: aiohttp.ClientSession, router: RunningRouter, job_id: str, status: str) -> bool:
    return (await job(http, router, job_id))["status"] == status


async def is_leased(http: aiohttp.ClientSession, router: RunningRouter, job_id: str) -> bool:
    return (await job(http, router, job_id))["status"] != "queued"


async def gone(http: aiohttp.ClientSession, url: str) -> bool:
    return await status_of(http, "GET", url) == 404


async def status_of(http: aiohttp.ClientSession, method: str, url: str, **headers: str) -> int:
    async with http.request(method, url, headers=headers) as r:
        return r.status


async def test_a_job_reads_succeeded_only_once_its_result_is_stored(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path)) as router:
        results = tmp_path / "objects" / "results"
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text("not a directory")  # every result write fails until it is a directory again
        job_id = await submit(http, router)  # small: stored with the job, so only the result needs the folder
        errors = router.runtime.metrics.registry.get_sample_value
        # the model answered, and storage refused its answer: the job must not claim success
        await until(lambda: (errors("router_storage_errors_total", {"lane": "async", "store": "objects"}) or 0) >= 1,
                    timeout_s=10)
        assert rt.served_ok >= 1
        assert (await job(http, router, job_id))["status"] != "succeeded"
        async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
            assert r.status != 200
        results.unlink()  # storage is back: the result is stored, then the job succeeds
        done = await job_end(http, router.url, job_id, 20)
        assert done["status"] == "succeeded"
        async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
            assert r.status == 200
            assert [float(x) for x in (await r.text()).split()] == pytest.approx(expected(200), abs=1e-6)


async def test_a_job_cut_short_by_shutdown_goes_back_queued_with_its_attempts_unchanged(tmp_path: Path,
                                                                                      http: Any) -> None:
    async with ModelServer(latency_s=5.0) as rt:
        async with serve_router(config(rt, tmp_path, jobs=", drain_timeout: 100ms")) as router:
            job_id = await submit(http, router)
            await until(lambda: rt.inflight == 1)  # the worker is calling the model
            assert (await job(http, router, job_id))["status"] == "running"
        # the router stopped; drain_timeout cut the call short
        async with serve_router(config(rt, tmp_path, workers=0)) as router:
            back = await job(http, router, job_id)
            assert (back["status"], back["attempts"], back["error"]) == ("queued", 0, None)
        rt.latency_s = 0.0
        async with serve_router(config(rt, tmp_path)) as router:  # runnable at once, not after its lease
            done = await job_end(http, router.url, job_id, 4)  # well under the 5 s lease
            assert (done["status"], done["attempts"]) == ("succeeded", 1)


async def test_job_workers_leave_a_backend_saturated_by_sync_traffic_alone(tmp_path: Path, http: Any) -> None:
    async with ModelServer(latency_s=1.0) as rt, serve_router(config(rt, tmp_path, rt_capacity=1)) as router:
        sync = asyncio.create_task(http.post(router.endpoint("fraud"), data=ROW, headers={"Content-Type": "text/csv"}))
        await until(lambda: rt.inflight == 1)  # sync traffic holds the backend's one slot
        rt.latency_s = 0.0
        job_id = await submit(http, router)
        # a worker leases it while the sync call runs: it must then wait for the slot
        await until_async(lambda: is_leased(http, router, job_id), 5, poll_s=0.01)
        done = await job_end(http, router.url, job_id, 10)
        response = await sync
        assert response.status == 200
        response.close()
        assert done["status"] == "succeeded"
        assert rt.peak_inflight == 1  # the job ran only once the sync request left its slot
        assert rt.requests == 2


async def test_finished_jobs_are_kept_for_the_retention_and_deleted_after_it(tmp_path: Path, http: Any) -> None:
    wall = ShiftedClock(time.time)
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, jobs=", retention: 1h"),
                                                 wall_clock=wall) as router:
        wide = ",".join(f"{float(x):.15f}" for x in ROW.split(","))  # ~100 bytes a row
        big = "\n".join([wide] * 3000)  # ~300 KB: stored as a file, not with the job
        old = await submit(http, router, big)
        assert (await job_end(http, router.url, old, 10))["status"] == "succeeded"
        wall.advance(1800)
        young = await submit(http, router, big)
        assert (await job_end(http, router.url, young, 10))["status"] == "succeeded"
        files = {j: [tmp_path / "objects" / "inputs" / j, tmp_path / "objects" / "results" / j] for j in (old, young)}
        assert all(f.exists() for fs in files.values() for f in fs)
        wall.advance(1800 + 60)  # the old job ended 61 min ago, the young one 31 min ago
        # the next janitor pass deletes the old one (its record, then its files), and in that same pass ...
        await until_async(lambda: gone(http, f"{router.url}/jobs/{old}"))
        await until(lambda: not any(f.exists() for f in files[old]))
        assert (await job(http, router, young))["status"] == "succeeded"  # ... keeps the young one
        assert await status_of(http, "GET", f"{router.url}/jobs/{young}/result") == 200
        assert all(f.exists() for f in files[young])


async def test_an_expired_job_answers_410_for_its_result_and_shows_why(tmp_path: Path, http: Any) -> None:
    wall = ShiftedClock(time.time)
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, workers=0, jobs=", ttl: 1h"),
                                                 wall_clock=wall) as router:
        job_id = await submit(http, router)
        async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
            assert r.status == 202  # pending, within its TTL
        wall.advance(3601)
        await until_async(lambda: has_status(http, router, job_id, "expired"))  # the janitor's next pass
        async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
            assert r.status == 410
            assert (await r.json())["status"] == "expired"
        async with http.get(f"{router.url}/jobs/{job_id}/error") as r:
            assert r.status == 200
            assert (await r.json())["error"]["type"] == "Expired"
        assert await status_of(http, "DELETE", f"{router.url}/jobs/{job_id}") == 409  # it ended: nothing to cancel
    assert rt.requests == 0


async def test_prefer_wait_waits_at_most_60_seconds(tmp_path: Path, http: Any) -> None:
    clock = ShiftedClock(time.monotonic)
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, workers=0), clock=clock) as router:
        answer = asyncio.create_task(http.post(router.endpoint("fraud"), data=rows(200),
                                               headers={**ASYNC, "Prefer": "respond-async, wait=86400"}))
        async with asyncio.timeout(10):  # a day was asked for; the router's clock moves a minute at a time
            for _ in range(40):  # 40 minutes at most, far short of the day asked for
                done, _ = await asyncio.wait({answer}, timeout=0.1)
                if done:
                    break
                clock.advance(MAX_PREFER_WAIT_S + 1)
        if not answer.done():
            clock.advance(86400)  # end the router's wait, so it can shut down, then fail
            (await answer).close()
            pytest.fail("Prefer: wait was not capped at 60 s")
        response = await answer
        assert response.status == 202  # the job did not finish (no workers): the client gets it to poll
        assert (await response.json())["status"] == "queued"
        response.close()


@pytest.mark.parametrize("lane", ["async", "batch"])
async def test_every_jobs_endpoint_shows_a_job_to_its_own_tenant_only(tmp_path: Path, http: Any, lane: str) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, workers=0)) as router:
        urgency = {"X-Urgency": "low"} if lane == "batch" else {}
        job_id = await submit(http, router, rows(200) if lane == "async" else ROW, **urgency, **{"X-Api-Key": KEY_A})
        assert (await job(http, router, job_id, **{"X-Api-Key": KEY_A}))["lane"] == lane
        base = f"{router.url}/jobs/{job_id}"
        for other in ({"X-Api-Key": KEY_B}, {}):  # another tenant, and an anonymous caller
            for method, url in (("GET", base), ("GET", f"{base}/result"), ("GET", f"{base}/error"),
                                ("DELETE", base)):
                assert await status_of(http, method, url, **other) == 404, (method, url, other)
        owner = {"X-Api-Key": KEY_A}
        assert (await job(http, router, job_id, **owner))["status"] == "queued"  # the DELETEs cancelled nothing
        assert await status_of(http, "GET", f"{base}/result", **owner) == 202
        assert await status_of(http, "GET", f"{base}/error", **owner) == 404  # it has not failed
        assert await status_of(http, "DELETE", base, **owner) == 200
        assert (await job(http, router, job_id, **owner))["error"]["type"] == "Cancelled"
        assert await status_of(http, "GET", f"{base}/error", **owner) == 200
