"""Connection limits: huge headers (431), slowloris heads and trickling bodies (408), idle keep-alive, and the
number of open connections. Small, bounded versions of bench/hardening.py's load."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, serve_router

ROW = b"120.5,2,0.8,350,7,30"
HEAD = b"POST /endpoints/fraud/invocations HTTP/1.1\r\nHost: router\r\nContent-Type: text/csv\r\n"


def config(url: str, **server: str) -> str:
    limits = {"max_header_bytes": "4KiB", "header_timeout": "500ms", "body_timeout": "500ms",
              "min_body_rate": "1000", "keepalive_timeout": "500ms", "max_connections": "32", **server}
    return f"""
server: {{{", ".join(f"{k}: {v}" for k, v in limits.items())}}}
backends:
  rt: {{kind: http, url: "{url}/invocations"}}
models:
  fraud: {{lanes: {{realtime: rt}}}}
"""


@pytest.fixture
async def router() -> AsyncIterator[RunningRouter]:
    async with ModelServer() as rt, serve_router(config(rt.url)) as running:
        yield running


async def connect(router: RunningRouter) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(router.url)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status of the answer, and everything until the server closed the connection."""
    async with asyncio.timeout(10):
        data = await reader.read()  # to EOF: the server closed the connection
    return int(data.split(b" ", 2)[1]) if data else 0, data


async def send_slowly(writer: asyncio.StreamWriter, data: bytes, pause_s: float) -> None:
    """One byte at a time, until the server closes the connection."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(pause_s)
            if writer.transport.is_closing():
                return


def rejected(router: RunningRouter, reason: str) -> float | None:
    return router.runtime.metrics.registry.get_sample_value("router_http_rejected_total", {"reason": reason})


async def test_headers_past_the_limit_are_431(router: RunningRouter) -> None:
    reader, writer = await connect(router)
    writer.write(HEAD + b"X-Big: " + b"a" * 5000 + b"\r\nContent-Length: 20\r\n\r\n" + ROW)
    status, data = await answer(reader)
    writer.close()
    assert status == 431
    assert b'"message":"request headers exceed 4096 bytes"' in data
    assert b"x-amzn-errortype: ValidationError" in data
    assert rejected(router, "header_too_large") == 1


async def test_an_unfinished_huge_header_is_cut_off_long_before_it_ends(router: RunningRouter) -> None:
    reader, writer = await connect(router)
    answered = asyncio.create_task(answer(reader))
    sent = 0
    with contextlib.suppress(ConnectionError):
        writer.write(HEAD + b"X-Big: ")
        while sent < 64 << 20 and not answered.done():  # up to 64 MiB, never ending the header
            writer.write(b"a" * (1 << 20))
            await writer.drain()
            sent += 1 << 20
    status, _ = await answered
    writer.close()
    assert status == 431
    assert sent < 64 << 20  # answered while the header was still coming


async def test_headers_within_the_limit_spread_over_many_reads_are_served(router: RunningRouter) -> None:
    reader, writer = await connect(router)
    request = HEAD + b"X-Big: " + b"a" * 3000 + b"\r\nContent-Length: 20\r\nConnection: close\r\n\r\n" + ROW
    for i in range(0, len(request), 500):
        writer.write(request[i:i + 500])
        await writer.drain()
        await asyncio.sleep(0.01)
    status, _ = await answer(reader)
    writer.close()
    assert status == 200


async def test_a_slowloris_head_is_408_and_closed(router: RunningRouter) -> None:
    reader, writer = await connect(router)
    trickle = asyncio.create_task(send_slowly(writer, HEAD + b"X-Slow: " + b"a" * 1000, pause_s=0.05))
    status, data = await answer(reader)
    trickle.cancel()
    writer.close()
    assert status == 408
    assert b"request headers not received within 0.5s" in data
    assert rejected(router, "header_timeout") == 1


async def test_a_connection_that_sends_nothing_is_closed(router: RunningRouter) -> None:
    reader, writer = await connect(router)
    status, _ = await answer(reader)
    writer.close()
    assert status == 408


async def test_a_trickling_body_is_408(router: RunningRouter) -> None:
    reader, writer = await connect(router)
    writer.write(HEAD + b"Content-Length: 20\r\n\r\n")
    trickle = asyncio.create_task(send_slowly(writer, ROW, pause_s=0.1))  # 10 bytes/s
    status, data = await answer(reader)
    trickle.cancel()
    writer.close()
    assert status == 408
    assert b"request body stalled or slower than 1000 bytes/s" in data
    assert rejected(router, "body_timeout") == 1


async def test_a_body_that_stops_halfway_is_408(router: RunningRouter) -> None:
    reader, writer = await connect(router)
    writer.write(HEAD + b"Content-Length: 20\r\n\r\n" + ROW[:10])
    status, _ = await answer(reader)
    writer.close()
    assert status == 408


async def test_a_body_sent_in_pieces_at_a_fair_pace_is_served(router: RunningRouter,
                                                              http: aiohttp.ClientSession) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"120.5,2,0.8,350,7,30\n" * 20  # 420 bytes every 0.2 s: 2,100 bytes/s
            await asyncio.sleep(0.2)  # a second in all, longer than body_timeout

    async with http.post(router.endpoint("fraud"), data=body(), headers={"Content-Type": "text/csv"}) as r:
        assert r.status == 200
        assert len((await r.text()).split()) == 100


async def test_an_idle_keep_alive_connection_is_closed(router: RunningRouter) -> None:
    reader, writer = await connect(router)
    writer.write(HEAD + b"Content-Length: 20\r\n\r\n" + ROW)
    await writer.drain()
    status, data = await answer(reader)  # answered, then closed once idle for keepalive_timeout
    writer.close()
    assert status == 200
    assert data.endswith(b"\n")


async def test_connections_past_the_maximum_are_503_and_the_others_are_served() -> None:
    async with ModelServer() as rt, serve_router(config(rt.url, max_connections="4", header_timeout="30s",
                                                        keepalive_timeout="30s")) as router:
        held = [await connect(router) for _ in range(4)]
        reader, writer = await connect(router)
        status, _ = await answer(reader)
        writer.close()
        assert status == 503
        assert rejected(router, "too_many_connections") == 1
        first_reader, first_writer = held[0]
        first_writer.write(HEAD + b"Content-Length: 20\r\nConnection: close\r\n\r\n" + ROW)
        status, _ = await answer(first_reader)
        assert status == 200  # the connections within the maximum are served
        for _, w in held:
            w.close()


async def test_an_answer_given_before_the_body_ended_is_not_followed_by_a_408(router: RunningRouter) -> None:
    reader, writer = await connect(router)
    writer.write(HEAD.replace(b"/fraud/", b"/nope/") + b"Content-Length: 20\r\n\r\n")  # 404 without reading
    trickle = asyncio.create_task(send_slowly(writer, ROW, pause_s=0.1))
    status, data = await answer(reader)  # the answer, then the connection closed once the body stalled
    trickle.cancel()
    writer.close()
    assert status == 404
    assert data.count(b"HTTP/1.1 ") == 1
