"""Completion webhooks: the callback allow-list, and signed, retried delivery to a real receiver."""

from __future__ import annotations

import hashlib
import hmac
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from router.notify import CallbackPolicy, WebhookNotifier, sign, verify

SECRET = "s3cret-for-tests"


@pytest.mark.parametrize(
    ("patterns", "url", "allowed"),
    [
        (["https://hooks.example.com/job-done"], "https://hooks.example.com/job-done", True),
        (["https://hooks.example.com/job-done"], "https://hooks.example.com/job-done/x", False),
        (["https://hooks.example.com/*"], "https://hooks.example.com/a/b?c=1", True),
        (["https://hooks.example.com/*"], "https://hooks.example.com/", True),
        (["https://hooks.example.com/*"], "https://evil.example.com/a", False),
        (["https://hooks.example.com/*"], "https://hooks.example.com.evil.net/a", False),
        (["https://hooks.example.com/*"], "http://hooks.example.com/a", False),
        (["http://hooks.example.com/*"], "http://hooks.example.com/a", True),
        (["https://hooks.example.com/*"], "https://user:pass@hooks.example.com/a", False),
        (["https://*"], "https://user:pass@hooks.example.com/a", False),
        (["https://*"], "https://user@hooks.example.com/a", False),
        (["ftp://hooks.example.com/*"], "ftp://hooks.example.com/a", False),
        (["*"], "file:///etc/passwd", False),
        (["*"], "https://hooks.example.com/a", True),
        (["https://*"], "https:///no-host", False),
        ([], "https://hooks.example.com/a", False),
        (["https://hooks.example.com/a/*"], "https://hooks.example.com/a/../../admin", False),
        (["https://hooks.example.com/a/*"], "https://hooks.example.com/a/%2e%2e/admin", False),
        (["https://hooks.example.com/*"], "https://hooks.example.com/a b", False),
    ],
)
def test_callback_policy(patterns: list[str], url: str, allowed: bool) -> None:
    assert CallbackPolicy(patterns).allows(url) is allowed


def test_star_only_at_end() -> None:
    with pytest.raises(ValueError, match="last character"):
        CallbackPolicy(["https://*.example.com/"])


def test_sign_and_verify() -> None:
    body = b'{"a":1}'
    sig = sign(SECRET, "1700000000", body)
    # the documented scheme, spelled out: HMAC-SHA256 of "<timestamp>.<body>"
    assert sig == "sha256=" + hmac.new(SECRET.encode(), b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert verify(SECRET, "1700000000", body, sig)
    assert not verify("other", "1700000000", body, sig)
    assert not verify(SECRET, "1700000001", body, sig)
    assert not verify(SECRET, "1700000000", b'{"a":2}', sig)
    assert not verify(SECRET, "1700000000", body, "sha256=\u00e9")
    assert verify(SECRET, "1700000000", body, sig, max_age_s=300, now=1700000100)
    assert not verify(SECRET, "1700000000", body, sig, max_age_s=300, now=1700000400)


@dataclass
class Receiver:
    url: str
    statuses: list[int]  # answered in order; 200 once exhausted
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(url="", statuses=[])

    async def hook(request: web.Request) -> web.Response:
        rec.received.append((dict(request.headers), await request.read()))
        return web.Response(status=rec.statuses.pop(0) if rec.statuses else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_delivery_is_signed(receiver: Receiver, session: aiohttp.ClientSession) -> None:
    notifier = WebhookNotifier(lambda: session, SECRET, backoff_s=0.01)
    payload = {"status": "succeeded", "job_id": "j-1", "attempts": 1}
    assert await notifier.notify(receiver.url, payload) is True
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    assert headers["Content-Type"] == "application/json"
    assert body == b'{"attempts":1,"job_id":"j-1","status":"succeeded"}'
    timestamp = headers["X-Router-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    assert verify(SECRET, timestamp, body, headers["X-Router-Signature"], max_age_s=60)


async def test_5xx_is_retried(receiver: Receiver, session: aiohttp.ClientSession) -> None:
    receiver.statuses = [503, 503, 200]
    notifier = WebhookNotifier(lambda: session, SECRET, attempts=3, backoff_s=0.01)
    assert await notifier.notify(receiver.url, {"job_id": "j-2"}) is True
    assert len(receiver.received) == 3
    for headers, body in receiver.received:
        assert verify(SECRET, headers["X-Router-Timestamp"], body, headers["X-Router-Signature"])


async def test_429_is_retried_until_attempts_run_out(receiver: Receiver, session: aiohttp.ClientSession) -> None:
    receiver.statuses = [429, 429, 429, 200]
    notifier = WebhookNotifier(lambda: session, SECRET, attempts=3, backoff_s=0.01)
    assert await notifier.notify(receiver.url, {"job_id": "j-3"}) is False
    assert len(receiver.received) == 3


async def test_4xx_is_not_retried(receiver: Receiver, session: aiohttp.ClientSession) -> None:
    receiver.statuses = [400, 200]
    notifier = WebhookNotifier(lambda: session, SECRET, attempts=3, backoff_s=0.01)
    assert await notifier.notify(receiver.url, {"job_id": "j-4"}) is False
    assert len(receiver.received) == 1


async def test_redirect_is_not_followed(session: aiohttp.ClientSession, receiver: Receiver) -> None:
    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(receiver.url)

    app = web.Application()
    app.router.add_post("/hook", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        notifier = WebhookNotifier(lambda: session, SECRET, attempts=3, backoff_s=0.01)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        assert await notifier.notify(url, {"job_id": "j-5"}) is False
    finally:
        await runner.cleanup()
    assert receiver.received == []


async def test_unreachable_url_gives_up(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port that was just free and now has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    notifier = WebhookNotifier(lambda: session, SECRET, attempts=3, backoff_s=0.01, timeout_s=30.0)
    started = time.monotonic()
    with capture_logs() as logs:
        assert await notifier.notify(f"http://127.0.0.1:{port}/hook", {"job_id": "j-6"}) is False
    assert time.monotonic() - started < 10.0  # a refused connection fails at once: no attempt waits its timeout
    assert [e["attempt"] for e in logs if e["event"] == "webhook_attempt_failed"] == [1, 2, 3]
    assert all(SECRET not in repr(e) and "j-6" not in repr(e) for e in logs)


async def test_bad_payload_or_url_never_raises(session: aiohttp.ClientSession) -> None:
    notifier = WebhookNotifier(lambda: session, SECRET, attempts=2, backoff_s=0.01)
    assert await notifier.notify("http://127.0.0.1:1/hook", {"x": object()}) is False
    assert await notifier.notify("not a url", {"job_id": "j-7"}) is False


async def test_invalid_url_is_not_retried(session: aiohttp.ClientSession) -> None:
    notifier = WebhookNotifier(lambda: session, SECRET, attempts=3, backoff_s=0.01)
    with capture_logs() as logs:
        assert await notifier.notify("not a url", {"job_id": "j-8"}) is False
    assert len([e for e in logs if e["event"] == "webhook_attempt_failed"]) == 1
