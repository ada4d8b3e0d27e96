"""A headless Chromium driven over the DevTools protocol with aiohttp's websocket client (already a dependency),
for the status page's test and its screenshot: load a page, type, click, read what the page shows.

Debian's ``chromium`` package (``make test`` installs it as root, like Prometheus); ``CHROMIUM`` names another.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
MISSING = ("Chromium is not installed: `make test` installs Debian's `chromium` package when it runs as root; "
           "or run `apt-get install chromium` (or set CHROMIUM to a Chrome or Chromium binary)")


class PageError(AssertionError):
    """A script on the page threw, or the browser refused a command."""


class Page:
    """One tab, driven through a DevTools session."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session_id: str) -> None:
        self._ws = ws
        self._session = session_id
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console_errors: list[str] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console_errors.append(json.dumps(data["params"]["exceptionDetails"])[:2000])

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self._ws.send_json({"id": msg_id, "method": method, "params": params, "sessionId": self._session})
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise PageError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def js(self, expression: str) -> Any:
        """The value of ``expression`` on the page (awaited if it is a promise)."""
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise PageError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 10.0) -> Any:
        """Poll ``expression`` until it is truthy (the page's own timers update it); its value."""
        async with asyncio.timeout(timeout_s):
            while not (value := await self.js(expression)):  # noqa: ASYNC110 -- the page's state: no event to await
                await asyncio.sleep(0.05)
        return value

    async def type(self, selector: str, text: str) -> None:
        await self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)
        await self.js(f"document.querySelector({json.dumps(selector)}).dispatchEvent(new Event('input'))")

    async def click(self, selector: str) -> None:
        box = await self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                            "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def screenshot(self, path: str) -> None:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        Path(path).write_bytes(base64.b64decode(shot["data"]))  # noqa: ASYNC240 -- one small file, by hand

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def chromium(width: int = 1400, height: int = 1000) -> AsyncIterator[Page]:
    """A fresh headless Chromium (its own profile, so storage starts empty) and one tab in it."""
    assert CHROMIUM is not None, MISSING
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.Popen(  # noqa: ASYNC220 -- returns at once; the browser runs on its own
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with aiohttp.ClientSession() as http:
                async with asyncio.timeout(30):
                    while True:
                        try:
                            async with http.get(f"http://127.0.0.1:{port}/json/version") as r:
                                url = (await r.json())["webSocketDebuggerUrl"]
                                break
                        except aiohttp.ClientError:
                            await asyncio.sleep(0.05)
                async with http.ws_connect(url, max_msg_size=64 * 1024 * 1024) as ws:
                    await ws.send_json({"id": 1, "method": "Target.createTarget", "params": {"url": "about:blank"}})
                    target = (await ws.receive_json())["result"]["targetId"]
                    await ws.send_json({"id": 2, "method": "Target.attachToTarget",
                                        "params": {"targetId": target, "flatten": True}})
                    session = None
                    while session is None:
                        data = await ws.receive_json()
                        if data.get("id") == 2:
                            session = data["result"]["sessionId"]
                    page = Page(ws, session)
                    await page.send("Runtime.enable")
                    await page.send("Page.enable")
                    await page.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                                    deviceScaleFactor=1, mobile=False)
                    try:
                        yield page
                    finally:
                        await page.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
