"""Content codings through the router: a backend that gzips its answers (as MLServer does from 500 bytes)
must never reach a client as compressed bytes without their Content-Encoding."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import serve_router

ANSWER = {"outputs": [{"name": "predict", "datatype": "FP64", "shape": [40], "data": [0.25] * 40}]}


class GzipServer:
    """A real aiohttp server that compresses like common model servers: when the request accepts gzip
    (or always, with ``force``). ``seen`` keeps the Accept-Encoding each request arrived with."""

    def __init__(self, *, force: bool = False, status: int = 200) -> None:
        self.force = force
        self.status = status
        self.seen: list[str | None] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.headers.get("Accept-Encoding"))
        await request.read()
        body = json.dumps(ANSWER if self.status == 200 else {"error": "bad tensor: " + "x" * 600}).encode()
        if self.force:
            return web.Response(body=gzip.compress(body), status=self.status, content_type="application/json",
                                headers={"Content-Encoding": "gzip"})
        resp = web.Response(body=body, status=self.status, content_type="application/json")
        resp.enable_compression()  # aiohttp picks gzip/deflate from Accept-Encoding, identity otherwise
        return resp

    async def __aenter__(self) -> GzipServer:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def config(url: str) -> str:
    return f"""
backends:
  v2: {{kind: http, url: "{url}/invocations", max_concurrency: 4}}
models:
  lr:
    lanes: {{realtime: v2}}
    paths: ["/v2/models/lr/infer"]
"""


async def fetch(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any, bytes]:
    async with http.post(url, data=b"{}", headers={"Content-Type": "application/json", **headers}) as r:
        return r.status, r.headers.copy(), await r.read()


@pytest.fixture
async def raw_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that shows bytes as they arrive: no automatic decompression."""
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept-Encoding",)) as s:
        yield s


async def test_gzip_answer_reaches_a_gzip_client_with_its_content_encoding(raw_http: Any) -> None:
    async with GzipServer() as server, serve_router(config(server.url)) as router:
        status, headers, body = await fetch(raw_http, f"{router.url}/v2/models/lr/infer", **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert body[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(body)) == ANSWER
    assert server.seen == ["gzip"]  # the client's own preference, not one the router made up


async def test_a_client_that_accepts_no_encoding_gets_plain_bytes(raw_http: Any) -> None:
    async with GzipServer() as server, serve_router(config(server.url)) as router:
        status, headers, body = await fetch(raw_http, router.endpoint("lr"))
    assert status == 200
    assert "Content-Encoding" not in headers
    assert json.loads(body) == ANSWER
    assert server.seen == ["identity"]


async def test_a_server_that_gzips_unasked_is_decoded_for_the_client(raw_http: Any) -> None:
    async with GzipServer(force=True) as server, serve_router(config(server.url)) as router:
        status, headers, body = await fetch(raw_http, router.endpoint("lr"))
    assert status == 200
    assert "Content-Encoding" not in headers
    assert json.loads(body) == ANSWER


async def test_a_gzipped_error_is_readable_in_the_model_error(raw_http: Any) -> None:
    async with GzipServer(force=True, status=400) as server, serve_router(config(server.url)) as router:
        status, _, body = await fetch(raw_http, router.endpoint("lr"))
    doc = json.loads(body)
    assert status == 424
    assert doc["OriginalStatusCode"] == 400
    assert json.loads(doc["OriginalMessage"])["error"].startswith("bad tensor: xxx")


async def test_boto3_reads_a_large_answer_from_a_gzipping_server(aws_env: None) -> None:
    import asyncio

    import boto3
    from botocore.config import Config

    async with GzipServer() as server, serve_router(config(server.url)) as router:
        smr = boto3.client("sagemaker-runtime", endpoint_url=router.url, region_name="us-east-1",
                           config=Config(retries={"total_max_attempts": 1}))
        resp = await asyncio.to_thread(smr.invoke_endpoint, EndpointName="lr", Body=b"{}",
                                       ContentType="application/json")
        assert json.loads(resp["Body"].read()) == ANSWER
