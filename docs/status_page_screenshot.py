"""Takes docs/status-page.png: `inference-router demo` on free ports, a minute's worth of demo traffic, then the
status page in headless Chromium. Run by hand from the repository root: .venv/bin/python docs/status_page_screenshot.py
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.browser import chromium

ROW = "120.5,2,0.8,350,7,30"
OUT = Path(__file__).resolve().parent / "status-page.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def traffic(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        async def post(body: str, **headers: str) -> None:
            async with http.post(f"{base}/endpoints/fraud/invocations", data=body,
                                 headers={"Content-Type": "text/csv", **headers}) as r:
                await r.read()

        for second in range(40):
            burst = 60 if second % 10 == 5 else 8
            await asyncio.gather(*(post(ROW, **{"X-Urgency": ["high", "normal", "low"][i % 3]})
                                   for i in range(burst)),
                                 *(post(f"{ROW}\n{ROW}\n", **{"X-Urgency": "low", "Prefer": "respond-async"})
                                   for _ in range(2)))
            if second % 15 == 0:
                await post("\n".join([ROW] * 340_000), Prefer="respond-async")
            await asyncio.sleep(0.25)


async def main() -> None:
    port = free_port()
    env = {**os.environ, "DEMO_RT_PORT": str(free_port()), "DEMO_SLS_PORT": str(free_port()),
           "DEMO_ASYNC_PORT": str(free_port()), "DEMO_STATE": f"/tmp/demo-screenshot-{port}"}
    command = [sys.executable, "-m", "router", "--log-level", "warning", "demo", "--port", str(port)]
    demo = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)  # noqa: ASYNC220 -- a script run by hand
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(base + "/healthz"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        await traffic(base)
        async with chromium(1400, 1000) as page:
            await page.goto(base + "/ui")
            await page.type("#token", "demo-admin-token")
            await page.click("#login-form button")
            await page.wait_for("document.querySelectorAll('#job-list tbody tr').length > 0", timeout_s=30)
            await page.js("document.getElementById('rid').blur()")
            out = OUT
            await page.screenshot(str(out))
            print(out)
    finally:
        demo.terminate()
        demo.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
