"""The async lane in the embedded mode (folder + SQLite): 202 only when allowed, jobs run by workers,
results through the jobs API, boto3's invoke_endpoint_async, retries and the poison job."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.config import Config

from router.demo.model import FraudModel
from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, serve_router, until, until_async

ROW = "120.5,2,0.8,350,7,30"
KEY_A, KEY_B = "team-a-secret-key", "team-b-secret-key"


def config(rt: ModelServer, state: Path, *, workers: int = 2, extra_model: str = "", callers: bool = False,
           rt_capacity: int = 4) -> str:
    who = f"""
callers:
  - {{api_key: {KEY_A}, tenant: team-a, max_urgency: critical}}
  - {{api_key: {KEY_B}, tenant: team-b}}
""" if callers else ""
    return f"""
state: {{kind: local, path: "{state}"}}
jobs: {{workers: {workers}, lease: 5s, max_attempts: 3, backoff: 10ms, max_backoff: 50ms, poll_interval: 20ms}}
{who}
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", max_concurrency: {rt_capacity}, timeout: 5s,
        breaker: {{failures: 1000}}}}
models:
  fraud:
    lanes: {{realtime: rt, async: rt}}
    limits: {{realtime: 2KB, async: 50MB}}
    default: {{lane: realtime, fallback: [async]}}
    policy: [big-goes-async]
{extra_model}
policies:
  big-goes-async:
    type: rules
    params:
      - {{when: {{payload_bytes: {{gt: 2KB}}}}, route: async, reason: too_big_for_sync}}
"""


def rows(n: int) -> str:
    return "\n".join([ROW] * n)


def expected(n: int) -> list[float]:
    return FraudModel.load().predict([[float(x) for x in ROW.split(",")]] * n)


async def until_done(http: aiohttp.ClientSession, router: RunningRouter, job_id: str, **headers: str) -> dict[
        str, Any]:
    for _ in range(300):
        async with http.get(f"{router.url}/jobs/{job_id}", headers=headers) as r:
            job = await r.json()
        if job["status"] in ("succeeded", "failed", "expired"):
            return dict(job)
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def test_large_payload_goes_async_when_client_accepts_202(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path)) as router:
        body = rows(200)  # ~4 KB: over the 2 KB sync limit
        async with http.post(router.endpoint("fraud"), data=body, headers={
                "Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
            assert r.status == 202
            accepted = await r.json()
            assert r.headers["Location"] == f"/jobs/{accepted['job_id']}"
            assert (r.headers["X-Router-Lane"], r.headers["X-Router-Reason"]) == ("async", "too_big_for_sync")
        assert accepted["lane"] == "async"
        assert accepted["status_url"] == r.headers["Location"]
        job = await until_done(http, router, accepted["job_id"])
        assert (job["status"], job["attempts"], job["model"], job["error"]) == ("succeeded", 1, "fraud", None)
        async with http.get(f"{router.url}/jobs/{accepted['job_id']}/result") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/csv")
            scores = [float(x) for x in (await r.text()).split()]
    assert scores == pytest.approx(expected(200), abs=1e-6)


async def test_a_client_that_did_not_allow_202_never_gets_one(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path)) as router:
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={"Content-Type": "text/csv"}) as r:
            assert r.status == 413
        async with http.post(router.endpoint("fraud"), data=ROW, headers={"Content-Type": "text/csv"}) as r:
            assert r.status == 200  # small: served synchronously
        assert rt.requests == 1


async def test_prefer_wait_answers_the_result_when_the_job_finishes_in_time(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path)) as router:
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={
                "Content-Type": "text/csv", "Prefer": "respond-async, wait=10"}) as r:
            assert r.status == 200
            assert r.headers["X-Router-Lane"] == "async"
            assert [float(x) for x in (await r.text()).split()] == pytest.approx(expected(200), abs=1e-6)
        rt.latency_s = 2.0
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={
                "Content-Type": "text/csv", "Prefer": "respond-async, wait=1"}) as r:
            assert r.status == 202  # not done within 1 s: the job is still there to fetch


async def test_saturated_realtime_falls_back_to_async_when_the_wait_would_miss_the_deadline(
        tmp_path: Path, http: Any) -> None:
    async with ModelServer(latency_s=0.5) as rt, serve_router(config(rt, tmp_path, rt_capacity=1)) as router:
        async with http.post(router.endpoint("fraud"), data=ROW, headers={"Content-Type": "text/csv"}) as r:
            # the router learns the backend's 0.5 s latency
            assert r.status == 200
        busy = asyncio.create_task(http.post(router.endpoint("fraud"), data=ROW))
        await until(lambda: rt.inflight == 1)
        hurried = {"Content-Type": "text/csv", "X-Deadline-Ms": "200"}
        async with http.post(router.endpoint("fraud"), data=ROW, headers={**hurried,
                                                                          "Prefer": "respond-async"}) as r:
            assert r.status == 202  # a slot in 0.5 s would miss the 200 ms deadline: a job instead of a wait
            job_id = (await r.json())["job_id"]
        async with http.post(router.endpoint("fraud"), data=ROW, headers=hurried) as r:
            assert r.status == 503  # the same request without Prefer: no 202, an error to retry
            assert r.headers["Retry-After"] == "1"
        (await busy).close()
        assert (await until_done(http, router, job_id))["status"] == "succeeded"
        registry = router.runtime.metrics.registry
        assert registry.get_sample_value("router_fallbacks_total", {
            "model": "fraud", "from_backend": "rt", "to_backend": "rt", "reason": "wait_exceeds_deadline"}) == 1


async def test_boto3_invoke_endpoint_async_and_the_output_location(tmp_path: Path, http: Any,
                                                                   aws_env: None) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path)) as router:
        client = boto3.client("sagemaker-runtime", endpoint_url=router.url, region_name="us-east-1",
                              config=Config(retries={"total_max_attempts": 1}))
        response = await asyncio.to_thread(client.invoke_endpoint_async, EndpointName="fraud",
                                           Body=rows(50).encode(), ContentType="text/csv", Accept="text/csv",
                                           InferenceId="boto-async-1")
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert response["InferenceId"] == "boto-async-1"  # echoed, as SageMaker does
        output = response["OutputLocation"]
        job_id = output.split("/")[-2]
        assert output == f"{router.url}/jobs/{job_id}/result"
        assert response["FailureLocation"] == f"{router.url}/jobs/{job_id}/error"
        await until_done(http, router, job_id)
        async with http.get(output) as r:
            assert r.status == 200
            assert [float(x) for x in (await r.text()).split()] == pytest.approx(expected(50), abs=1e-6)
        async with http.get(response["FailureLocation"]) as r:
            assert r.status == 404  # nothing failed


async def test_poison_job_fails_after_exactly_max_attempts(tmp_path: Path, http: Any) -> None:
    async with ModelServer(fail_status=503) as rt, serve_router(config(rt, tmp_path)) as router:
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={"Prefer": "respond-async"}) as r:
            job_id = (await r.json())["job_id"]
        job = await until_done(http, router, job_id)
        assert (job["status"], job["attempts"]) == ("failed", 3)
        assert job["error"]["type"] == "ServiceUnavailable"
        assert rt.requests == 3
        async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
            assert r.status == 424
        async with http.get(f"{router.url}/jobs/{job_id}/error") as r:
            assert (await r.json())["error"]["type"] == "ServiceUnavailable"
        registry = router.runtime.metrics.registry
        assert registry.get_sample_value("router_job_attempts_total", {"model": "fraud", "outcome": "retried"}) == 2
        assert registry.get_sample_value("router_job_attempts_total", {"model": "fraud", "outcome": "failed"}) == 1
        # the job gauges are refreshed by the lane's janitor, on its next pass
        await until(lambda: registry.get_sample_value("router_jobs", {"lane": "async", "status": "failed"}) == 1,
                    timeout_s=10)
        assert registry.get_sample_value("router_jobs_dead_lettered") == 1


async def test_model_error_fails_the_job_at_once(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path)) as router:
        async with http.post(router.endpoint("fraud"), data="1,2,three\n" * 300,
                             headers={"Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
            job_id = (await r.json())["job_id"]
        job = await until_done(http, router, job_id)
        assert (job["status"], job["attempts"], job["error"]["type"], job["error"]["status"]) == (
            "failed", 1, "ModelError", 400)
        registry = router.runtime.metrics.registry
        await until(lambda: registry.get_sample_value("router_jobs", {"lane": "async", "status": "failed"}) == 1)
        assert registry.get_sample_value("router_jobs_dead_lettered") == 0  # the client's input: nobody is paged


async def test_unknown_job_is_404_and_pending_result_is_202_with_retry_after(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, workers=0)) as router:
        async with http.get(f"{router.url}/jobs/nope") as r:
            assert r.status == 404
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={"Prefer": "respond-async"}) as r:
            job_id = (await r.json())["job_id"]
        async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
            assert r.status == 202
            assert r.headers["Retry-After"] == "1"
            assert (await r.json())["status"] == "queued"
        async with http.delete(f"{router.url}/jobs/{job_id}") as r:
            assert r.status == 200
            assert (await r.json())["error"]["type"] == "Cancelled"
        async with http.delete(f"{router.url}/jobs/{job_id}") as r:
            assert r.status == 409  # no longer queued


async def test_a_tenant_sees_only_its_own_jobs(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, workers=0, callers=True)) as router:
        async with http.post(router.endpoint("fraud"), data=rows(200),
                             headers={"Prefer": "respond-async", "X-Api-Key": KEY_A}) as r:
            job_id = (await r.json())["job_id"]
        async with http.get(f"{router.url}/jobs/{job_id}", headers={"X-Api-Key": KEY_A}) as r:
            assert r.status == 200
        async with http.get(f"{router.url}/jobs/{job_id}", headers={"X-Api-Key": KEY_B}) as r:
            assert r.status == 404
        async with http.get(f"{router.url}/jobs/{job_id}") as r:
            assert r.status == 404  # anonymous is not team-a
        async with http.get(f"{router.url}/jobs/{job_id}", headers={"X-Api-Key": "unknown-key-123"}) as r:
            assert r.status == 403


async def test_jobs_survive_a_restart_and_run_after_it(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt:
        async with serve_router(config(rt, tmp_path, workers=0)) as router:
            ids = []
            for _ in range(5):
                async with http.post(router.endpoint("fraud"), data=rows(200),
                                     headers={"Prefer": "respond-async", "Content-Type": "text/csv"}) as r:
                    ids.append((await r.json())["job_id"])
        async with serve_router(config(rt, tmp_path, workers=2)) as router:
            for job_id in ids:
                assert (await until_done(http, router, job_id))["status"] == "succeeded"


async def test_storage_failure_is_503_never_a_202(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path)) as router:
        objects = tmp_path / "objects"
        if objects.exists():
            for child in sorted(objects.rglob("*"), reverse=True):
                child.rmdir() if child.is_dir() else child.unlink()
            objects.rmdir()
        objects.write_text("not a directory")  # every write under it now fails
        big = rows(15_000)  # ~300 KB: over what the job store keeps inline, so it goes to the object store
        async with http.post(router.endpoint("fraud"), data=big, headers={"Prefer": "respond-async"}) as r:
            assert r.status == 503
            assert r.headers["x-amzn-ErrorType"] == "ServiceUnavailable"
            assert "Retry-After" in r.headers
        assert router.runtime.job_lane is not None
        jobs = router.runtime.job_lane.jobs
        assert sum((await jobs.stats(0.0)).jobs.values()) == 0
        await jobs.close()  # and a job store that fails: a small payload is not accepted either
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={"Prefer": "respond-async"}) as r:
            assert r.status == 503


async def test_small_payloads_are_stored_with_their_job_and_dropped_when_it_ends(tmp_path: Path,
                                                                                 http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path)) as router:
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={
                "Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
            assert r.status == 202
            job_id = (await r.json())["job_id"]
        assert (await until_done(http, router, job_id))["status"] == "succeeded"
        async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
            assert [float(x) for x in (await r.text()).split()] == pytest.approx(expected(200), abs=1e-6)
    assert not (tmp_path / "objects" / "inputs" / job_id).exists()  # no file: one commit stored it
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM inputs").fetchone() == (0,)  # gone once the job ended


async def test_input_location_needs_the_aws_state(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path)) as router:
        async with http.post(router.url + "/endpoints/fraud/async-invocations",
                             headers={"X-Amzn-SageMaker-InputLocation": "s3://bucket/key.csv"}) as r:
            assert r.status == 400
            assert "state kind aws" in (await r.json())["message"]
        async with http.post(router.url + "/endpoints/nope/async-invocations", data=ROW) as r:
            assert r.status == 404


async def test_the_queue_gauges_read_zero_for_an_empty_queue_and_count_a_backlog(tmp_path: Path, http: Any) -> None:
    """An empty queue is a 0 on /metrics, not a missing series: a missing one is "no data" in Grafana, an
    error for KEDA's Prometheus scaler, and a staleness gap between two janitor passes."""
    extra = "  plain:\n    lanes: {realtime: rt}\n"  # no job lane: no queue gauge
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, workers=0, extra_model=extra)) as router:
        found: dict[str, float] = {}

        async def scraped(settled: Callable[[dict[str, float]], bool]) -> bool:
            """Read the queue gauges from /metrics into ``found``; ``settled(found)`` says whether to stop."""
            async with http.get(router.url + "/metrics") as r:
                text = await r.text()
            found.clear()
            found.update({line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith(("router_jobs_queued{", "router_jobs_oldest_queued_age_seconds{"))})
            return settled(found)

        await until_async(lambda: scraped(bool))  # the janitor's first pass, at start
        assert found == {'router_jobs_queued{model="fraud"}': 0.0,
                         'router_jobs_oldest_queued_age_seconds{model="fraud"}': 0.0}
        for _ in range(2):  # no workers: they stay queued
            async with http.post(router.endpoint("fraud"), data=rows(200), headers={
                    "Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
                assert r.status == 202
        # the janitor counts every 2 s; a pass that starts as the jobs land reads their age as 0, the next one not
        await until_async(lambda: scraped(lambda g: g['router_jobs_queued{model="fraud"}'] == 2
                                          and g['router_jobs_oldest_queued_age_seconds{model="fraud"}'] > 0))
        assert not any("plain" in name for name in found)
