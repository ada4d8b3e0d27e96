"""Large payloads on the async lane stream to storage: the router's memory stays flat."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.conftest import free_port
from tests.test_async_crash import start_router

MiB = 1024 * 1024
SIZE = 200 * MiB


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_200_mb_upload_streams_to_storage_without_growing_the_router(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "router.yaml"
    config.write_text(f"""
server: {{listen: "127.0.0.1:{port}", max_body: 300MiB}}
state: {{kind: local, path: "{tmp_path / 'var'}"}}
jobs: {{workers: 0}}
backends:
  rt: {{kind: http, url: "http://127.0.0.1:9/invocations"}}
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

    async with aiohttp.ClientSession() as http:
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
            async with http.post(f"http://127.0.0.1:{port}/endpoints/big/invocations", data=body(), headers={
                    "Content-Type": "application/octet-stream", "Prefer": "respond-async",
                    "Content-Length": str(SIZE)}) as r:
                assert r.status == 202, await r.text()
                job_id = (await r.json())["job_id"]
            done.set()
            await sampler
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    stored = tmp_path / "var" / "objects" / "inputs" / job_id
    assert stored.stat().st_size == SIZE
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest.hexdigest()
    growth = peak - before
    assert growth < 48 * MiB, f"router RSS grew {growth / MiB:.1f} MiB during a {SIZE // MiB} MiB upload"
