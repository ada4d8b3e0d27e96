"""InvokeEndpointWithResponseStream through the router, checked with an unmodified boto3 client: PayloadPart
events as the model produces bytes, errors mid-stream as boto3's own exceptions, fallback before the first
byte only; against an ``http`` model container and a ``sagemaker`` backend (the emulator in front of one)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from aiohttp import web
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from router import eventstream
from tests.conftest import RunningRouter, serve_router, start_app, until
from tests.sm_emulator import SageMakerRuntimeEmulator

pytestmark = pytest.mark.usefixtures("aws_env")
PARTS = [b"once ", b"upon ", b"a time"]


class StreamingContainer:
    """A model container (``POST /invocations``) that answers in parts: after the first it waits for
    ``release`` when ``gated``; with ``cut`` it drops the connection after the first; ``fail_status`` refuses."""

    def __init__(self) -> None:
        self.gated = False
        self.release = threading.Event()  # set from boto3's thread
        self.cut = False
        self.fail_status: int | None = None
        self.bodies: list[bytes] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _invocations(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text="the model refused this input")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i, part in enumerate(PARTS):
            await resp.write(part)
            if i == 0 and self.cut:
                assert request.transport is not None
                request.transport.close()
                return resp
            if i == 0 and self.gated:
                await asyncio.to_thread(self.release.wait, 10)
        await resp.write_eof()
        return resp

    async def __aenter__(self) -> StreamingContainer:
        app = web.Application()
        app.router.add_post("/invocations", self._invocations)
        self._runner, self.url = await start_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()


@dataclass
class Setup:
    container: StreamingContainer
    emulator: SageMakerRuntimeEmulator
    router: RunningRouter


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    async with StreamingContainer() as container, StreamingContainer() as down, SageMakerRuntimeEmulator() as emu:
        emu.add_endpoint("gen-endpoint", container.url, variant="AllTraffic")
        down.fail_status = 503
        cfg = f"""
backends:
  rt: {{kind: http, url: "{container.url}/invocations", max_concurrency: 4, timeout: 5s}}
  down: {{kind: http, url: "{down.url}/invocations", max_concurrency: 4}}
  sm: {{kind: sagemaker, endpoint: gen-endpoint, region: us-east-1, endpoint_url: "{emu.url}", timeout: 5s}}
models:
  gen-http: {{lanes: {{realtime: rt}}}}
  gen-sm: {{lanes: {{realtime: sm}}}}
  gen-fallback: {{lanes: {{realtime: down, serverless: sm}}}}
"""
        async with serve_router(cfg) as router:
            yield Setup(container, emu, router)


def client(url: str) -> Any:
    return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                        config=Config(retries={"total_max_attempts": 1}))


def stream(url: str, model: str, on_first: Any = None) -> tuple[dict[str, Any], list[bytes]]:
    """boto3's invoke_endpoint_with_response_stream, the PayloadParts read one by one (in a thread)."""
    resp = client(url).invoke_endpoint_with_response_stream(EndpointName=model, Body=b'{"prompt": "tell"}',
                                                             ContentType="application/json", Accept="text/plain")
    parts: list[bytes] = []
    for event in resp["Body"]:
        parts.append(event["PayloadPart"]["Bytes"])
        if len(parts) == 1 and on_first is not None:
            on_first()
    return resp, parts


def sample(router: RunningRouter, name: str, **labels: str) -> float | None:
    return router.runtime.metrics.registry.get_sample_value(name, labels)


async def test_boto3_reads_payload_parts_as_the_http_model_produces_them(setup: Setup) -> None:
    setup.container.gated = True  # the model sends its first part, then waits until boto3 has read it
    seen: dict[str, Any] = {}

    def on_first() -> None:
        seen["inflight"] = setup.router.runtime.tracker.trackers["rt"].inflight
        seen["released_before"] = setup.container.release.is_set()
        setup.container.release.set()

    resp, parts = await asyncio.to_thread(stream, setup.router.url, "gen-http", on_first)
    assert b"".join(parts) == b"".join(PARTS)
    assert seen == {"inflight": 1, "released_before": False}  # the slot is held while the answer streams
    assert resp["ContentType"] == "text/plain"
    assert resp["InvokedProductionVariant"] == "rt"
    assert setup.container.bodies == [b'{"prompt": "tell"}']
    await until(lambda: sample(setup.router, "router_time_to_first_byte_seconds_count", model="gen-http",
                               lane="realtime") == 1)  # recorded once the last byte went out
    assert setup.router.runtime.tracker.trackers["rt"].inflight == 0


async def test_boto3_reads_the_same_bytes_through_a_sagemaker_backend_as_from_the_endpoint(setup: Setup) -> None:
    through_resp, through = await asyncio.to_thread(stream, setup.router.url, "gen-sm")
    direct_resp, direct = await asyncio.to_thread(stream, setup.emulator.url, "gen-endpoint")
    assert b"".join(through) == b"".join(direct) == b"".join(PARTS)
    assert through_resp["InvokedProductionVariant"] == direct_resp["InvokedProductionVariant"] == "AllTraffic"
    assert through_resp["ContentType"] == direct_resp["ContentType"] == "text/plain"
    assert setup.emulator.calls[0].accept == "text/plain"


@pytest.mark.parametrize("model", ["gen-http", "gen-sm"])
async def test_a_model_failing_mid_stream_is_boto3s_model_stream_error(setup: Setup, model: str) -> None:
    setup.container.cut = model == "gen-http"
    setup.emulator.break_stream("gen-endpoint")
    with pytest.raises(EventStreamError) as caught:
        await asyncio.to_thread(stream, setup.router.url, model)
    assert caught.value.response["Error"]["Code"] == "ModelStreamError"


async def test_a_failure_before_the_first_byte_falls_back_and_none_after_it(setup: Setup) -> None:
    resp, parts = await asyncio.to_thread(stream, setup.router.url, "gen-fallback")
    assert b"".join(parts) == b"".join(PARTS)
    assert resp["InvokedProductionVariant"] == "AllTraffic"  # served by the sagemaker backend
    assert sample(setup.router, "router_fallbacks_total", model="gen-fallback", from_backend="down",
                  to_backend="sm", reason="unavailable") == 1


async def test_a_model_error_before_the_stream_is_boto3s_model_error(setup: Setup) -> None:
    setup.container.fail_status = 400
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(stream, setup.router.url, "gen-http")
    assert caught.value.response["Error"]["Code"] == "ModelError"
    assert caught.value.response["OriginalStatusCode"] == 400


async def test_an_unknown_model_is_a_validation_error(setup: Setup) -> None:
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(stream, setup.router.url, "no-such-model")
    assert caught.value.response["Error"]["Code"] == "ValidationError"


def test_events_decode_with_botocores_own_decoder() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(eventstream.payload_part(b"\x00bytes\xff") + eventstream.payload_part(b"")
                    + eventstream.model_stream_error("boom", "StreamBroken") + eventstream.internal_stream_failure("x"))
    messages = list(buffer)
    assert [m.headers.get(":event-type") or m.headers[":exception-type"] for m in messages] == [
        "PayloadPart", "PayloadPart", "ModelStreamError", "InternalStreamFailure"]
    assert messages[0].payload == b"\x00bytes\xff"
    assert messages[2].payload == b'{"Message": "boom", "ErrorCode": "StreamBroken"}'
