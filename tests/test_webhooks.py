"""Completion webhooks: only allowed URLs, signed deliveries, retries on 5xx, none on 4xx."""

from __future__ import annotations

import hashlib
import hmac
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from router.demo.model_server import ModelServer
from router.notify import CallbackPolicy, WebhookNotifier, verify
from tests.conftest import serve_router, until
from tests.test_async_lane import config, rows, until_done

SECRET = "webhook-secret-0123456789"


class Receiver:
    """A real HTTP endpoint that records deliveries and answers the statuses it is told to."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        return web.Response(status=self.answers.pop(0) if self.answers else 200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


@pytest.mark.parametrize(
    ("url", "allowed"),
    [("https://hooks.example.com/a/b", True), ("https://hooks.example.com/a", True),
     ("https://exact.example.com/cb", True), ("https://exact.example.com/cb/x", False),
     ("https://evil.example.com/a", False), ("http://hooks.example.com/a", False),
     ("https://user:pw@hooks.example.com/a", False), ("ftp://hooks.example.com/a", False), ("not a url", False)],
)
def test_only_allow_listed_callback_urls_are_called(url: str, allowed: bool) -> None:
    policy = CallbackPolicy(["https://hooks.example.com/*", "https://exact.example.com/cb"])
    assert policy.allows(url) is allowed


def test_an_empty_allow_list_allows_nothing() -> None:
    assert not CallbackPolicy([]).allows("https://hooks.example.com/a")


async def test_a_finished_job_is_posted_signed_to_its_callback(tmp_path: Path, http: Any,
                                                               receiver: Receiver) -> None:
    hooks = f'webhooks: {{allow: ["{receiver.url}/hooks/*"], secret: {SECRET}}}'
    async with ModelServer() as rt, serve_router(config(rt, tmp_path) + hooks) as router:
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={
                "Content-Type": "text/csv", "Prefer": "respond-async",
                "X-Callback-Url": f"{receiver.url}/hooks/team-a"}) as r:
            job_id = (await r.json())["job_id"]
        await until_done(http, router, job_id)
        await until(lambda: bool(receiver.deliveries))
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={
                "Content-Type": "text/csv", "Prefer": "respond-async",
                "X-Callback-Url": "http://169.254.169.254/latest/meta-data"}) as r:
            assert r.status == 400  # not on the allow-list: refused before anything is stored
    (headers, body) = receiver.deliveries[0]
    # the documented scheme, computed here as a receiver would, not with the router's own code
    timestamp = headers["X-Router-Timestamp"]
    signed = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Router-Signature"] == f"sha256={signed}"
    assert abs(time.time() - int(timestamp)) < 300  # unix seconds of the delivery
    assert verify(SECRET, timestamp, body, headers["X-Router-Signature"])  # and the helper receivers may use agrees
    assert b'"status":"succeeded"' in body
    assert f'"job_id":"{job_id}"'.encode() in body


async def test_5xx_is_retried_and_4xx_is_not(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as session:
        notifier = WebhookNotifier(lambda: session, SECRET, attempts=3, backoff_s=0.01)
        receiver.answers = [503, 503, 200]
        assert await notifier.notify(receiver.url + "/x", {"job_id": "1"})
        assert len(receiver.deliveries) == 3
        receiver.answers = [400]
        assert not await notifier.notify(receiver.url + "/x", {"job_id": "2"})
        assert len(receiver.deliveries) == 4


async def test_an_unreachable_callback_gives_up_without_raising() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        notifier = WebhookNotifier(lambda: session, SECRET, attempts=2, backoff_s=0.01)
        assert not await notifier.notify(f"http://127.0.0.1:{port}/x", {"job_id": "1"})
