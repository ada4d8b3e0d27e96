"""Large payloads on the async lane stream to storage and from it to the backend: the router's memory stays
flat."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.conftest import free_port
from tests.test_async_crash import start_router

MiB = 1024 * 1024
SIZE = 200 * MiB


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class HashingModel:
    """A model server that reads the request as it arrives and answers its size and SHA-256."""

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _invoke(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(MiB):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest(),
                                  "content_length": request.content_length})

    async def __aenter__(self) -> HashingModel:
        app = web.Application(client_max_size=SIZE + MiB)
        app.router.add_post("/invocations", self._invoke)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_a_200_mb_job_streams_in_and_out_without_growing_the_router(tmp_path: Path) -> None:
    """Upload to storage, then the worker's call to the backend: both streamed, neither held whole."""
    port = free_port()
    config = tmp_path / "router.yaml"
    async with HashingModel() as model, aiohttp.ClientSession() as http:
        config.write_text(f"""
server: {{listen: "127.0.0.1:{port}", max_body: 300MiB, access_log: false}}
state: {{kind: local, path: "{tmp_path / 'var'}"}}
jobs: {{workers: 1}}
backends:
  rt: {{kind: http, url: "{model.url}/invocations", timeout: 60s}}
models:
  big:
    lanes: {{realtime: rt, async: rt}}
    limits: {{async: 300MiB}}
    default: {{lane: async}}
""")
        block = bytes(range(256)) * (MiB // 256)
        digest = hashlib.sha256()

        async def body() -> AsyncIterator[bytes]:
            for _ in range(SIZE // MiB):
                digest.update(block)
                yield block

        proc = await start_router(config, port, http)
        try:
            before = rss_bytes(proc.pid)
            peak = before
            done = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_bytes(proc.pid))
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            base = f"http://127.0.0.1:{port}"
            async with http.post(f"{base}/endpoints/big/invocations", data=body(), headers={
                    "Content-Type": "application/octet-stream", "Prefer": "respond-async",
                    "Content-Length": str(SIZE)}) as r:
                assert r.status == 202, await r.text()
                job_id = (await r.json())["job_id"]
            async with asyncio.timeout(60):
                while True:
                    async with http.get(f"{base}/jobs/{job_id}") as r:
                        status = (await r.json())["status"]
                    if status not in ("queued", "running"):
                        break
                    await asyncio.sleep(0.1)
            done.set()
            await sampler
            assert status == "succeeded"
            async with http.get(f"{base}/jobs/{job_id}/result") as r:
                answer = await r.json()
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    stored = tmp_path / "var" / "objects" / "inputs" / job_id
    assert stored.stat().st_size == SIZE
    assert answer == {"size": SIZE, "sha256": digest.hexdigest(), "content_length": SIZE}
    growth = peak - before
    assert growth < 48 * MiB, f"router RSS grew {growth / MiB:.1f} MiB during a {SIZE // MiB} MiB job"
