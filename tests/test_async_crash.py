"""Crash safety of the async lane (embedded mode): the router is SIGKILLed while 500 jobs run, then
restarted; every job ends in exactly one terminal state with the model's answer for its own input."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.demo.model import FraudModel
from router.demo.model_server import ModelServer
from tests.conftest import free_port
from tests.moto_server import boto3_client, create_bucket, create_queues, moto_server, moto_url  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
JOBS = 500
WORKERS = 4



def row(i: int) -> str:
    return f"{10 + i},{i % 24},0.{i % 10},{i},{i % 7},{30 + i}"


async def start_router(config: Path, port: int, http: aiohttp.ClientSession) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.cli", "serve", "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    for _ in range(200):
        await asyncio.sleep(0.05)
        try:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                if r.status == 200:
                    return proc
        except aiohttp.ClientConnectionError:
            continue
    proc.kill()
    raise AssertionError("the router did not become ready")


async def statuses(http: aiohttp.ClientSession, base: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    sem = asyncio.Semaphore(16)

    async def one(job_id: str) -> tuple[str, dict[str, Any]]:
        async with sem, http.get(f"{base}/jobs/{job_id}") as r:
            return job_id, dict(await r.json())

    return dict(await asyncio.gather(*(one(i) for i in ids)))


def local_results(tmp_path: Path) -> list[str]:
    return [p.name for p in (tmp_path / "var" / "objects" / "results").iterdir()]


async def test_sigkill_midway_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    state = f'state: {{kind: local, path: "{tmp_path / "var"}"}}'
    await crash_and_recover(tmp_path, state, lambda: local_results(tmp_path))


@pytest.mark.timeout(300)  # 500 jobs, each several calls to moto's server: about 80 s, more on a busy machine
async def test_sigkill_midway_on_s3_and_sqs(tmp_path: Path, moto_url: str) -> None:  # noqa: F811
    bucket = create_bucket(moto_url)
    queues = create_queues(moto_url, max_receive_count=20)
    state = (f'state: {{kind: aws, bucket: {bucket}, queue_url: "{queues.queue_url}", '
             f'dlq_url: "{queues.dlq_url}", endpoint_url: "{moto_url}", region: us-east-1}}')

    def s3_results() -> list[str]:
        pages = boto3_client("s3", moto_url).get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="results/")
        return [o["Key"].removeprefix("results/") for page in pages for o in page.get("Contents", [])]

    await crash_and_recover(tmp_path, state, s3_results)


async def crash_and_recover(tmp_path: Path, state: str, results_written: Callable[[], list[str]]) -> None:
    """500 jobs, SIGKILL once a third are done, restart; check every job and every result."""
    port = free_port()
    async with ModelServer(latency_s=0.02) as model, aiohttp.ClientSession() as http:
        config = tmp_path / "router.yaml"
        config.write_text(f"""
server: {{listen: "127.0.0.1:{port}", access_log: false}}
{state}
jobs: {{workers: {WORKERS}, lease: 2s, max_attempts: 5, backoff: 50ms, poll_interval: 20ms}}
backends:
  rt: {{kind: http, url: "{model.url}/invocations", max_concurrency: 8}}
models:
  fraud:
    lanes: {{realtime: rt, async: rt}}
    default: {{lane: async}}
""")
        base = f"http://127.0.0.1:{port}"
        proc = await start_router(config, port, http)
        inputs: dict[str, int] = {}
        try:
            sem = asyncio.Semaphore(16)

            async def submit(i: int) -> None:
                async with sem, http.post(f"{base}/endpoints/fraud/invocations", data=row(i), headers={
                        "Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
                    assert r.status == 202
                    inputs[(await r.json())["job_id"]] = i

            await asyncio.gather(*(submit(i) for i in range(JOBS)))
            for _ in range(400):  # kill it midway through the work
                await asyncio.sleep(0.01)
                if model.served_ok >= JOBS // 3:
                    break
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            calls_before_restart = model.requests
            assert calls_before_restart < JOBS  # it really died midway

            proc = await start_router(config, port, http)
            ids = list(inputs)
            for _ in range(300):
                jobs = await statuses(http, base, ids)
                if all(j["status"] in ("succeeded", "failed", "expired") for j in jobs.values()):
                    break
                await asyncio.sleep(0.1)
            assert {j["status"] for j in jobs.values()} == {"succeeded"}

            fraud = FraudModel.load()
            sem = asyncio.Semaphore(16)

            async def result(job_id: str) -> tuple[str, float]:
                async with sem, http.get(f"{base}/jobs/{job_id}/result") as r:
                    assert r.status == 200
                    return job_id, float(await r.text())

            results = dict(await asyncio.gather(*(result(i) for i in ids)))
            for job_id, score in results.items():
                expected = fraud.score([float(x) for x in row(inputs[job_id]).split(",")])
                assert abs(score - expected) < 1e-6, job_id
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
    # one result object per job, under its id; re-runs are bounded by what was in flight at the kill.
    # A write cut by the kill leaves a hidden temp file, which the restart sweeps away.
    written = results_written()
    assert sorted(written) == sorted(ids)
    assert JOBS <= model.requests <= JOBS + WORKERS
