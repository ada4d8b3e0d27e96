"""Job workers against real storage failures: a disk that fills up and empties again, a read-only folder.

Workers must survive any storage error and resume once storage works, /readyz must say the job lane cannot
make progress meanwhile, and a storage error is never retried as a model call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, job_end, serve_router, until
from tests.fs_conditions import fill, read_only, small_tmpfs

ROW = "120.5,2,0.8,350,7,30"


def config(rt: ModelServer, state: Path, *, storage_retry: str = "60s", workers: int = 2) -> str:
    return f"""
state: {{kind: local, path: "{state}"}}
jobs: {{workers: {workers}, lease: 30s, max_attempts: 3, backoff: 10ms, max_backoff: 50ms, poll_interval: 20ms,
        storage_retry: {storage_retry}}}
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", max_concurrency: 8, timeout: 5s, breaker: {{failures: 1000}}}}
models:
  fraud: {{lanes: {{realtime: rt, async: rt}}, default: {{lane: async}}}}
"""


async def submit(http: aiohttp.ClientSession, router: RunningRouter) -> tuple[int, str | None]:
    async with http.post(router.endpoint("fraud"), data=ROW,
                         headers={"Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
        return r.status, (await r.json()).get("job_id") if r.status == 202 else None


async def readyz(http: aiohttp.ClientSession, router: RunningRouter) -> tuple[int, dict[str, Any]]:
    async with http.get(router.url + "/readyz") as r:
        return r.status, await r.json()


async def test_a_full_disk_stops_no_worker_and_every_accepted_job_runs_once_space_returns(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    with small_tmpfs(tmp_path / "state") as state:
        async with ModelServer(latency_s=0.3) as rt, serve_router(config(rt, state)) as router:
            accepted = [job for status, job in [await submit(http, router) for _ in range(6)] if job]
            assert len(accepted) == 6
            await until(lambda: rt.inflight == 2)  # both workers are calling the model
            filler = fill(state)

            async def stalled() -> bool:
                status, body = await readyz(http, router)
                return status == 503 and body["job_lanes"]["async"]["stalled"]

            async with asyncio.timeout(15):
                while not await stalled():
                    accepted += [job for status, job in [await submit(http, router)] if job]  # 503 or durable
                    await asyncio.sleep(0.1)
            assert router.runtime.job_lane is not None
            assert router.runtime.job_lane.workers_alive == 2
            filler.unlink()  # space returns

            ends = [await job_end(http, router.url, job, timeout_s=30) for job in accepted]
            assert [end["status"] for end in ends] == ["succeeded"] * len(accepted)
            assert rt.requests == len(accepted)  # the results were written again, never the model called again
            status, body = await readyz(http, router)
            assert (status, body["job_lanes"]["async"]["workers"]) == (200, 2)
            registry = router.runtime.metrics.registry
            assert registry.get_sample_value("router_job_worker_restarts_total") == 0
            assert registry.get_sample_value("router_storage_errors_total", {"lane": "async", "store": "objects"})


async def test_a_read_only_object_folder_fails_the_job_as_a_storage_error_without_calling_the_model_again(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    state = tmp_path / "state"
    with read_only(state / "objects"):  # the job's small input lives in the database, its result cannot be stored
        async with ModelServer() as rt, serve_router(config(rt, state, storage_retry="300ms")) as router:
            status, job_id = await submit(http, router)
            assert status == 202
            assert job_id is not None
            end = await job_end(http, router.url, job_id, timeout_s=15)
    assert end["status"] == "failed"
    assert end["error"]["type"] == "StorageError"
    assert "(Read-only file system)" in end["error"]["message"]
    assert end["attempts"] == 1
    assert rt.requests == 1


async def test_a_worker_that_dies_is_started_again_and_counted(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path / "state")) as router:
        lane = router.runtime.job_lane
        assert lane is not None
        lane._workers[0].cancel()  # killed from outside, as by a bug elsewhere
        registry = router.runtime.metrics.registry
        await until(lambda: registry.get_sample_value("router_job_worker_restarts_total") == 1)
        await until(lambda: lane.workers_alive == 2)
        _, job_id = await submit(http, router)
        assert job_id is not None
        assert (await job_end(http, router.url, job_id, timeout_s=10))["status"] == "succeeded"
