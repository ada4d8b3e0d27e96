"""Shared fixtures: a real router served by uvicorn on 127.0.0.1, in the test's event loop."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from router.app import create_app
from router.backends.sagemaker import SageMakerClients
from router.config import parse_config
from router.demo.model_server import ModelServer
from router.logging import configure_logging
from router.runtime import Runtime
from router.serving import RouterServer, server_config

configure_logging("json")
# The readiness check's DescribeEndpoint goes to a closed local port unless a test names a control plane
# (moto's): endpoints are then unverified, and no test ever asks real AWS.
NO_REAL_CONTROL_PLANE = {"AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:9"}


@dataclass
class RunningRouter:
    url: str
    runtime: Runtime

    def endpoint(self, model: str) -> str:
        return f"{self.url}/endpoints/{model}/invocations"


@asynccontextmanager
async def serve_router(yaml_text: str, env: Mapping[str, str] | None = None,
                       config_path: str | None = None) -> AsyncIterator[RunningRouter]:
    """Start the real app (lifespan included) on a free port; stop it and wait on exit."""
    cfg = parse_config(yaml_text, "test.yaml", {**os.environ, **(env or {})})
    runtime = Runtime(cfg, config_path=config_path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = RouterServer(server_config(create_app(runtime), runtime), runtime)  # the limits and drain of serve
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield RunningRouter(f"http://127.0.0.1:{port}", runtime)
    finally:
        server.should_exit = True
        await task
        sock.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (for state of servers on this loop), instead of a sleep that guesses."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 -- the state is plain attributes, there is no event to wait on
            await asyncio.sleep(0.005)


async def job_end(http: aiohttp.ClientSession, base: str, job_id: str, timeout_s: float) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until the job is terminal; the test fails after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            async with http.get(f"{base}/jobs/{job_id}") as r:
                job: dict[str, Any] = await r.json()
            if job["status"] in ("succeeded", "failed", "expired"):
                return job
            await asyncio.sleep(0.02)


async def start_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """A real aiohttp server for ``app`` on a free port of 127.0.0.1: its runner (to clean up) and base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def free_port() -> int:
    """A port nothing listens on now, for a server started in another process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def model() -> AsyncIterator[ModelServer]:
    """The demo fraud model's server (the SageMaker container contract) on a free port."""
    async with ModelServer() as server:
        yield server


@pytest.fixture
async def clients() -> AsyncIterator[SageMakerClients]:
    """The process-wide aiobotocore clients, closed after the test."""
    sm = SageMakerClients()
    yield sm
    await sm.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, so botocore signs requests for the local emulator and never finds real ones."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1", **NO_REAL_CONTROL_PLANE}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
