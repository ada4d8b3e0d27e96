"""Extra paths forwarded as they came and answered as the server answered, against a real aiohttp server
that shows what reached it: methods, headers both ways, bodies streamed both ways, errors passed on,
control paths, and the router's own headers kept to itself."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import RunningRouter, serve_router, start_app, until

TEAM_KEY = "team-a-secret-key"


class Upstream:
    """A model server that echoes what it received, streams on demand (``/stream`` sends one chunk, then waits
    for ``release``), fails on demand (``/fail/{status}``), and records request bodies as they arrive."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.received: list[int] = []  # bytes of the request body received so far, per chunk
        self.seen: list[web.Request] = []
        self.stream_closed = asyncio.Event()
        self.fail_all: int | None = None  # answer every request with this status (after reading its body)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        path = request.path
        if self.fail_all is not None:
            await request.read()
            return web.json_response({"error": "down"}, status=self.fail_all)
        if path.startswith("/fail/"):
            await request.read()
            return web.json_response({"error": "bad input: " + path}, status=int(path[6:]),
                                     headers={"X-Model-Reason": "shape"})
        if path == "/redirect":
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        if path in ("/stream", "/sse", "/cut"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if path == "/sse" else
                                               "application/x-ndjson", "X-Stream": "yes"})
            await resp.prepare(request)
            await resp.write(b'{"token": "first"}\n')
            if path == "/cut":
                assert request.transport is not None
                request.transport.close()
                return resp
            try:
                await self.release.wait()
                await resp.write(b'{"token": "second"}\n')
                await resp.write_eof()
            except (ConnectionResetError, asyncio.CancelledError):
                self.stream_closed.set()
                raise
            return resp
        chunks = []
        async for chunk in request.content.iter_any():
            self.received.append(len(chunk))
            chunks.append(chunk)
        body = b"".join(chunks)
        doc = {"method": request.method, "path": request.path_qs, "headers": [list(h) for h in request.headers.items()],
               "body": body.decode("latin-1")}
        resp = web.Response(status=201, body=json.dumps(doc).encode(), content_type="application/json",
                            headers={"X-Custom": "a"})
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        return resp

    async def __aenter__(self) -> Upstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.url = await start_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()


def config(up: Upstream, *, capacity: int = 4, extra_model: str = "", extra: str = "", second: str = "") -> str:
    return f"""
callers:
  - {{api_key: {TEAM_KEY}, tenant: team-a}}
backends:
  up: {{kind: http, url: "{up.url}/invocations", max_concurrency: {capacity}, timeout: 5s}}
  {second}
models:
  m:
    lanes: {{realtime: up{", serverless: up2" if second else ""}}}
    paths:
      - /echo
      - {{path: "/echo/any", methods: [GET, PUT, DELETE, PATCH, POST]}}
      - {{path: /health, control: true}}
      - /stream
      - /sse
      - /cut
      - /fail/*
      - {{path: /redirect, methods: [GET]}}
    {extra_model}
{extra}
"""


@pytest.fixture
async def up() -> AsyncIterator[Upstream]:
    async with Upstream() as server:
        yield server


@pytest.fixture
async def raw() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that adds nothing of its own and decodes nothing."""
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding",
                                                                                "Accept", "Content-Type")) as s:
        yield s


def sample(router: RunningRouter, name: str, **labels: str) -> float | None:
    return router.runtime.metrics.registry.get_sample_value(name, labels)


async def test_method_path_query_and_end_to_end_headers_arrive_as_sent(up: Upstream, raw: Any) -> None:
    sent = {"Inference-Header-Content-Length": "12", "X-Trace-Me": "1", "Authorization": "Bearer model-token",
            "X-Urgency": "high", "X-Api-Key": TEAM_KEY, "Prefer": "respond-async", "X-Deadline-Ms": "4000",
            "Connection": "keep-alive, X-Hop", "X-Hop": "only-for-the-router", "Accept": "application/json"}
    url = "/echo/any?x=1&y=%2F"
    async with serve_router(config(up)) as router, raw.put(URL(router.url + url, encoded=True), data=b"payload",
                                                            headers=sent) as r:
        assert r.status == 201
        doc = json.loads(await r.read())
    assert (doc["method"], doc["path"], doc["body"]) == ("PUT", "/echo/any?x=1&y=%2F", "payload")
    got = {k.lower(): v for k, v in doc["headers"]}
    for name in ("Inference-Header-Content-Length", "X-Trace-Me", "Authorization", "Accept"):
        assert got[name.lower()] == sent[name]
    for kept_back in ("x-urgency", "x-api-key", "prefer", "x-deadline-ms", "x-hop"):
        assert kept_back not in got
    assert "content-type" not in got  # none sent, none invented
    assert "accept-encoding" not in got  # none advertised on the client's behalf
    assert "traceparent" in got


async def test_the_clients_content_type_and_a_gzip_body_pass_as_they_are(up: Upstream, raw: Any) -> None:
    body = gzip.compress(b'{"inputs": []}')
    headers = {"Content-Type": "application/json; charset=utf-8", "Content-Encoding": "gzip"}
    async with serve_router(config(up)) as router, raw.post(router.url + "/echo", data=body, headers=headers) as r:
        doc = json.loads(await r.read())
    got = {k.lower(): v for k, v in doc["headers"]}
    assert got["content-type"] == "application/json; charset=utf-8"
    assert got["content-encoding"] == "gzip"
    assert doc["body"] == '{"inputs": []}'  # the server could decode it: the header came with the bytes


async def test_configured_headers_are_kept_back_too(up: Upstream, raw: Any) -> None:
    extra = "proxy: {strip_headers: [X-Internal]}"
    async with serve_router(config(up, extra=extra)) as router, raw.post(
            router.url + "/echo", data=b"x", headers={"X-Internal": "1", "Prefer": "wait=1"}) as r:
        got = {k.lower() for k, _ in json.loads(await r.read())["headers"]}
    assert "x-internal" not in got
    assert "prefer" in got  # the list replaces the default one


async def test_the_answer_keeps_status_headers_and_length(up: Upstream, raw: Any) -> None:
    async with serve_router(config(up)) as router, raw.post(router.url + "/echo", data=b"x") as r:
        body = await r.read()
        assert r.status == 201
        assert r.headers["X-Custom"] == "a"
        assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert r.headers["Content-Length"] == str(len(body))
        assert r.headers["Content-Type"] == "application/json"
        assert (r.headers["X-Router-Lane"], r.headers["X-Router-Backend"]) == ("realtime", "up")
        assert len(r.headers.getall("Date")) == 1


async def test_upstream_errors_pass_through_unchanged(up: Upstream, raw: Any) -> None:
    async with serve_router(config(up)) as router:
        for status in (400, 422, 500, 503):
            async with raw.post(router.url + f"/fail/{status}", data=b"x") as r:
                assert r.status == status
                assert json.loads(await r.read()) == {"error": f"bad input: /fail/{status}"}
                assert r.headers["X-Model-Reason"] == "shape"


async def test_redirects_are_the_clients_to_follow(up: Upstream, raw: Any) -> None:
    async with serve_router(config(up)) as router, raw.get(router.url + "/redirect", allow_redirects=False) as r:
        assert (r.status, r.headers["Location"]) == (302, "/elsewhere")


async def test_a_method_a_path_does_not_take_is_405_with_allow(up: Upstream, raw: Any) -> None:
    async with serve_router(config(up)) as router, raw.get(router.url + "/echo") as r:
        assert r.status == 405
        assert r.headers["Allow"] == "POST"
    assert up.seen == []


async def test_an_undeclared_path_is_404(up: Upstream, raw: Any) -> None:
    async with serve_router(config(up)) as router, raw.post(router.url + "/echo/other", data=b"x") as r:
        assert r.status == 404
    assert up.seen == []


async def test_an_answer_streams_to_the_client_as_it_arrives_and_holds_its_slot(up: Upstream, raw: Any) -> None:
    async with serve_router(config(up)) as router, raw.post(router.url + "/stream", data=b"x") as r:
        assert r.headers["X-Stream"] == "yes"
        first = await asyncio.wait_for(r.content.readline(), 10)  # before the server was told to go on
        assert first == b'{"token": "first"}\n'
        assert router.runtime.tracker.trackers["up"].inflight == 1
        up.release.set()
        assert await r.content.readline() == b'{"token": "second"}\n'
        await r.read()
        await until(lambda: router.runtime.tracker.trackers["up"].inflight == 0)
        assert sample(router, "router_backend_calls_total", backend="up", outcome="ok") == 1


async def test_a_client_that_leaves_mid_stream_frees_the_slot_and_the_upstream_call(up: Upstream,
                                                                                   raw: Any) -> None:
    async with serve_router(config(up)) as router:
        async with raw.post(router.url + "/sse", data=b"x") as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            await asyncio.wait_for(r.content.readline(), 10)
            r.connection.transport.close()  # the client goes away
        await until(lambda: router.runtime.tracker.trackers["up"].inflight == 0)
        await until(lambda: sample(router, "router_requests_total", model="m", lane="realtime", backend="up",
                                   code="499") == 1)
        up.release.set()  # the model's next write finds its connection closed by the router
        await asyncio.wait_for(up.stream_closed.wait(), 10)
        assert sample(router, "router_backend_calls_total", backend="up", outcome="ok") is None


async def test_an_upstream_that_breaks_off_mid_answer_cuts_the_clients_connection(up: Upstream, raw: Any) -> None:
    async with serve_router(config(up)) as router:
        async with raw.post(router.url + "/cut", data=b"x") as r:
            assert await r.content.readline() == b'{"token": "first"}\n'
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        await until(lambda: sample(router, "router_backend_calls_total", backend="up", outcome="connection") == 1)
        assert router.runtime.tracker.trackers["up"].inflight == 0


async def test_a_request_body_streams_to_the_backend_before_its_end_arrives(up: Upstream, raw: Any) -> None:
    second_half = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 65536
        await second_half.wait()
        yield b"b" * 65536

    async with serve_router(config(up)) as router:
        call = asyncio.ensure_future(raw.post(router.url + "/echo", data=body(), headers={"Content-Length": "131072"}))
        await until(lambda: sum(up.received) >= 65536, timeout_s=10)  # the first half reached the model...
        second_half.set()  # ...before the client sent the second
        async with await call as r:
            doc = json.loads(await r.read())
    assert doc["body"] == "a" * 65536 + "b" * 65536


async def test_a_streamed_body_is_sent_again_whole_on_fallback(up: Upstream, raw: Any) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 70000
        await asyncio.sleep(0)
        yield b"y" * 70000

    async with Upstream() as up2:
        second = f'up2: {{kind: http, url: "{up2.url}/invocations", max_concurrency: 4}}'
        async with serve_router(config(up, second=second)) as router:
            up.fail_all = 503
            async with raw.post(router.url + "/echo", data=body(), headers={"Content-Length": "140000"}) as r:
                status, doc = r.status, await r.read()
                backend = r.headers["X-Router-Backend"]
    assert (status, backend) == (201, "up2")
    assert json.loads(doc)["body"] == "x" * 70000 + "y" * 70000
    assert len(up.seen) == 1


async def test_control_paths_take_no_slot_and_are_no_inference(up: Upstream, raw: Any) -> None:
    async with serve_router(config(up, capacity=1)) as router:
        async with raw.post(router.url + "/stream", data=b"x") as streaming:
            await streaming.content.readline()  # the only slot is taken
            async with raw.get(router.url + "/health") as r:
                assert r.status == 201
                assert r.headers["X-Router-Lane"] == "control"
            async with raw.post(router.url + "/echo", data=b"x") as r:
                assert r.status == 503  # inference waits for the slot: the policy default has no fallback
            up.release.set()
            await streaming.read()
        assert sample(router, "router_control_requests_total", model="m", code="201") == 1
        assert sample(router, "router_decisions_total", model="m", lane="realtime", reason="default") == 2
