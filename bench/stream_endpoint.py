"""A streaming SageMaker endpoint in a process of its own: a model container that answers every POST with
``PARTS`` parts ``GAP_MS`` apart, behind the SageMaker Runtime emulator (``tests/sm_emulator.py``) as endpoint
``gen``. ``bench/streaming.py`` starts it so that every client, direct or through the router, reaches the endpoint
across a process boundary, as a real client reaches SageMaker.

    python bench/stream_endpoint.py PORT CONTAINER_PORT PARTS GAP_MS

The emulator listens on ``PORT``, the container on ``CONTAINER_PORT`` (what an ``http`` backend calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.sm_emulator import SageMakerRuntimeEmulator


def container(parts: int, gap_s: float) -> web.Application:
    """The model: ``parts`` writes of ``part-NNN `` each, ``gap_s`` apart."""
    async def invocations(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i in range(parts):
            if i:
                await asyncio.sleep(gap_s)
            await resp.write(f"part-{i:03d} ".encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/invocations", invocations)
    return app


@contextlib.asynccontextmanager
async def running(parts: int, gap_s: float, port: int = 0, container_port: int = 0) -> AsyncIterator[tuple[str, str]]:
    """The container and the emulator in front of it on this loop (0: free ports): (emulator URL, container URL)."""
    runner = web.AppRunner(container(parts, gap_s), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", container_port).start()
    container_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    emulator = SageMakerRuntimeEmulator()
    emulator.add_endpoint("gen", container_url)
    try:
        yield await emulator.start(port), container_url
    finally:
        await emulator.stop()
        await runner.cleanup()


async def serve(port: int, container_port: int, parts: int, gap_s: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with running(parts, gap_s, port, container_port):
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]) / 1000.0))
