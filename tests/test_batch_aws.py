"""The batch lane in the scale-out mode: batch jobs in S3 and on an SQS batch queue (moto's server), held by
replicas in their buffers, flushed and run by the router's own runner against a real model server."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.demo.model import FraudModel
from router.demo.model_server import ModelServer
from tests.conftest import free_port, job_end, serve_router, until
from tests.moto_server import boto3_client, create_bucket, create_queues, moto_server, moto_url  # noqa: F401
from tests.test_async_crash import start_router

LOW = {"Content-Type": "text/csv", "X-Urgency": "low", "Prefer": "respond-async"}
MODEL = FraudModel.load()


def row(i: int) -> str:
    return f"{10 + i},{i % 24},0.{i % 10},{i},{i % 7},{30 + i}"


def score(i: int) -> float:
    return MODEL.predict([[float(x) for x in row(i).split(",")]])[0]


def aws_state(url: str) -> str:
    bucket = create_bucket(url)
    jobs = create_queues(url, "router-jobs")
    batch = create_queues(url, "router-batch", visibility_timeout_s=5)
    return (f'state: {{kind: aws, bucket: {bucket}, prefix: "r/", queue_url: "{jobs.queue_url}", '
            f'dlq_url: "{jobs.dlq_url}", batch_queue_url: "{batch.queue_url}", batch_dlq_url: "{batch.dlq_url}", '
            f'endpoint_url: "{url}", region: us-east-1}}')


def config(rt: ModelServer, state: str, *, max_records: int = 1000, max_wait: str = "60s", lease: str = "30s",
           listen: str = "") -> str:
    return f"""
server: {{access_log: false{listen}}}
{state}
jobs: {{workers: 0, lease: {lease}, drain_timeout: 1s}}
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", max_concurrency: 4, timeout: 30s, breaker: {{failures: 1000}}}}
models:
  fraud:
    lanes: {{realtime: rt, batch: rt}}
    batch: {{max_records: {max_records}, max_wait: {max_wait}}}
    policy: [low-to-batch]
policies:
  low-to-batch: {{type: rules, params: [{{when: {{urgency: low, accepts_async: true}}, route: batch}}]}}
"""


async def submit(http: aiohttp.ClientSession, base: str, body: str) -> str:
    async with http.post(f"{base}/endpoints/fraud/invocations", data=body, headers=LOW) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["job_id"])


async def ended(http: aiohttp.ClientSession, base: str, job_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
    return await job_end(http, base, job_id, timeout_s)


async def results(http: aiohttp.ClientSession, base: str, job_id: str) -> list[float]:
    async with http.get(f"{base}/jobs/{job_id}/result") as r:
        assert r.status == 200
        return [float(x) for x in (await r.text()).splitlines()]


async def test_records_flush_by_count_and_come_back_in_order(http: Any, moto_url: str) -> None:  # noqa: F811
    async with ModelServer() as rt, serve_router(config(rt, aws_state(moto_url), max_records=30)) as router:
        ids = [await submit(http, router.url, "\n".join(row(i) for i in range(r * 10, r * 10 + 10)))
               for r in range(3)]
        for r, job_id in enumerate(ids):
            job = await ended(http, router.url, job_id)
            assert (job["status"], job["lane"], job["records"]) == ("succeeded", "batch",
                                                                    {"total": 10, "done": 10, "failed": 0})
            assert await results(http, router.url, job_id) == pytest.approx(
                [score(i) for i in range(r * 10, r * 10 + 10)], abs=1e-6)
        assert rt.requests == 1  # 30 records: one batch, one mini-batch
        assert router.runtime.metrics.registry.get_sample_value(
            "router_batch_flushes_total", {"model": "fraud", "trigger": "records"}) == 1
    keys = {o["Key"] for o in boto3_client("s3", moto_url).list_objects_v2(Bucket="router-state")["Contents"]}
    assert {f"r/results/{i}" for i in ids} | {f"r/jobs/{i}.json" for i in ids} <= keys
    assert not {f"r/inputs/{i}" for i in ids} & keys  # records objects are removed once their job ended


async def test_two_replicas_share_the_queue_and_each_record_runs_once(http: Any, moto_url: str) -> None:  # noqa: F811
    state = aws_state(moto_url)
    async with ModelServer() as rt, serve_router(config(rt, state, max_wait="300ms")) as a, \
            serve_router(config(rt, state, max_wait="300ms")) as b:
        ids = [await submit(http, (a if i % 2 else b).url, row(i)) for i in range(12)]
        jobs = [await ended(http, a.url, job_id) for job_id in ids]  # either replica answers for any job
        assert [j["status"] for j in jobs] == ["succeeded"] * 12
        assert [(await results(http, b.url, job_id))[0] for job_id in ids] == pytest.approx(
            [score(i) for i in range(12)], abs=1e-6)
        ran = sum(router.runtime.metrics.registry.get_sample_value(
            "router_batch_records_total", {"model": "fraud", "outcome": "succeeded"}) or 0 for router in (a, b))
        assert ran == 12


async def test_a_stopped_replica_gives_its_held_jobs_to_another_at_once(http: Any, moto_url: str) -> None:  # noqa: F811
    state = aws_state(moto_url)
    async with ModelServer() as rt:
        async with serve_router(config(rt, state, max_wait="60s", lease="60s")) as a:
            ids = [await submit(http, a.url, row(i)) for i in range(5)]
            assert a.runtime.batch_lane is not None
            await until(lambda: a.runtime.batch_lane is not None and
                        a.runtime.batch_lane.store.buffers.get("fraud", None) is not None and
                        a.runtime.batch_lane.store.buffers["fraud"].jobs == 5, timeout_s=10)
        assert rt.requests == 0  # a held them, unflushed, and stopped
        async with serve_router(config(rt, state, max_wait="200ms", lease="60s")) as b:
            jobs = [await ended(http, b.url, job_id, timeout_s=10) for job_id in ids]  # long before a 60 s lease
        assert [j["status"] for j in jobs] == ["succeeded"] * 5
        assert [j["attempts"] for j in jobs] == [1] * 5  # the release did not count as an attempt


async def test_a_killed_replicas_batch_is_run_again_by_another(tmp_path: Path, moto_url: str) -> None:  # noqa: F811
    state = aws_state(moto_url)
    port = free_port()
    cfg = tmp_path / "a.yaml"
    async with ModelServer(latency_s=5.0) as rt, aiohttp.ClientSession() as http:
        cfg.write_text(config(rt, state, max_records=8, lease="2s", listen=f', listen: "127.0.0.1:{port}"'))
        proc = await start_router(cfg, port, http)
        try:
            ids = [await submit(http, f"http://127.0.0.1:{port}", row(i)) for i in range(8)]
            await until(lambda: rt.inflight > 0, timeout_s=10)  # its batch of 8 is at the model
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        rt.latency_s = 0.0
        served_before = rt.served_ok
        async with serve_router(config(rt, state, max_records=8, lease="2s")) as b:
            jobs = [await ended(http, b.url, job_id) for job_id in ids]  # after the 2 s leases run out
            assert [j["status"] for j in jobs] == ["succeeded"] * 8
            assert [j["attempts"] for j in jobs] == [2] * 8
            assert [(await results(http, b.url, i))[0] for i in ids] == pytest.approx(
                [score(i) for i in range(8)], abs=1e-6)
            assert b.runtime.metrics.registry.get_sample_value(
                "router_batch_records_total", {"model": "fraud", "outcome": "succeeded"}) == 8
        assert rt.served_ok - served_before <= 2  # b's batch (the killed one's call may still have answered)
