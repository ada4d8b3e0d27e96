"""The sagemaker backend's InvokeEndpointWithResponseStream, made as one signed request on the aiobotocore
client's transport (``router.backends.sagemaker_stream``): checked against an emulator that verifies SigV4, and
against what aiobotocore's own ``invoke_endpoint_with_response_stream`` sends and raises for the same call."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiobotocore.session import get_session
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError

from router.backends.sagemaker import SageMakerBackend, SageMakerClients, client_error
from router.backends.sagemaker_stream import sigv4_headers
from router.types import BackendError, FailureKind, Invocation, InvocationResult, StreamBroken
from tests.conftest import start_app
from tests.sm_emulator import EmulatorCall, SageMakerRuntimeEmulator

KEY, SECRET = "AKIASTREAMKEY0000001", "stream-secret-access-key-0001"
NEW_KEY, NEW_SECRET = "AKIASTREAMKEY0000002", "stream-secret-access-key-0002"
PARTS = [b"once ", b"upon ", b"a time"]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
# differ per request by nature (or, for the user agent, carry botocore's per-call feature ids)
VOLATILE = {"x-amz-date", "authorization", "amz-sdk-invocation-id", "user-agent"}


@pytest.fixture(autouse=True)
def signing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    for name in ("AWS_SESSION_TOKEN", "AWS_CREDENTIAL_EXPIRATION", "AWS_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def _invocations(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": request.headers.get("Accept", "text/plain")})
    await resp.prepare(request)
    for part in PARTS:
        await resp.write(part)
    await resp.write_eof()
    return resp


@pytest.fixture
async def emulator() -> AsyncIterator[SageMakerRuntimeEmulator]:
    app = web.Application()
    app.router.add_post("/invocations", _invocations)
    runner, url = await start_app(app)
    async with SageMakerRuntimeEmulator(credentials={KEY: SECRET, NEW_KEY: NEW_SECRET}) as emu:
        emu.add_endpoint("gen", url, variant="blue")
        yield emu
    await runner.cleanup()


def backend(clients: SageMakerClients, url: str, endpoint: str = "gen", timeout_s: float = 5.0) -> SageMakerBackend:
    return SageMakerBackend("gen-sm", endpoint, clients, region="us-east-1", endpoint_url=url, timeout_s=timeout_s)


def streamed(**kwargs: Any) -> Invocation:
    return Invocation(body=b'{"prompt": "tell"}', content_type="application/json", response_stream=True, **kwargs)


async def read(result: InvocationResult) -> bytes:
    assert result.stream is not None
    return b"".join([part async for part in result.stream])


async def aiobotocore_call(url: str, params: dict[str, Any], extra_headers: dict[str, str] | None = None) -> bytes:
    """The same call through aiobotocore's own machinery (headers added by a before-sign hook, as the
    backend did before): the reference."""
    async with get_session().create_client("sagemaker-runtime", region_name="us-east-1", endpoint_url=url,
                                           config=Config(retries={"total_max_attempts": 1})) as client:
        def add_headers(request: Any, **_: Any) -> None:
            for name, value in (extra_headers or {}).items():
                request.headers[name] = value

        client.meta.events.register("before-sign.sagemaker-runtime", add_headers)
        resp = await client.invoke_endpoint_with_response_stream(EndpointName="gen", **params)
        return b"".join([event["PayloadPart"]["Bytes"] async for event in resp["Body"]])


def comparable(call: EmulatorCall) -> tuple[dict[str, str], str, bytes]:
    """A call's headers but the volatile ones, what its signature covers (credential scope, signed headers), body."""
    headers = {name.lower(): value for name, value in call.headers.items()}
    scope = headers["authorization"].partition(", Signature=")[0]
    return {k: v for k, v in headers.items() if k not in VOLATILE}, scope, call.body


async def test_a_stream_is_signed_and_sent_as_aiobotocore_sends_it_and_the_endpoint_accepts_it(
        clients: SageMakerClients, emulator: SageMakerRuntimeEmulator) -> None:
    result = await backend(clients, emulator.url).invoke(streamed(
        accept="text/plain", custom_attributes="trace=1", inference_id="inf-1",
        headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}))
    assert await read(result) == b"".join(PARTS)
    assert (result.content_type, result.invoked_variant) == ("text/plain", "blue")

    direct = await aiobotocore_call(emulator.url, {
        "Body": b'{"prompt": "tell"}', "ContentType": "application/json", "Accept": "text/plain",
        "CustomAttributes": "trace=1", "InferenceId": "inf-1"},
        {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"})
    assert direct == b"".join(PARTS)
    ours, botos = emulator.calls_to("gen")
    assert comparable(ours) == comparable(botos)
    assert ours.headers["traceparent"] == TRACEPARENT  # the trace reaches the endpoint, signed
    assert f"Credential={KEY}/" in ours.headers["Authorization"]


async def test_each_stream_is_signed_with_the_credentials_of_the_moment(
        clients: SageMakerClients, emulator: SageMakerRuntimeEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    # expiring within botocore's mandatory refresh window: every call reads the environment again
    soon = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", soon)
    sm = backend(clients, emulator.url)
    assert await read(await sm.invoke(streamed())) == b"".join(PARTS)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", NEW_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", NEW_SECRET)
    assert await read(await sm.invoke(streamed())) == b"".join(PARTS)
    first, second = emulator.calls_to("gen")
    assert f"Credential={KEY}/" in first.headers["Authorization"]
    assert f"Credential={NEW_KEY}/" in second.headers["Authorization"]


def _as_tuple(error: BackendError) -> tuple[object, ...]:
    return error.kind, str(error), error.status, error.original_status, error.original_message


@pytest.mark.parametrize("fault", ["throttle", "model_error", "not_ready", "unavailable", "unknown_endpoint",
                                   "wrong_secret"])
async def test_an_error_answer_fails_the_stream_as_aiobotocores_client_error_does(
        clients: SageMakerClients, emulator: SageMakerRuntimeEmulator, monkeypatch: pytest.MonkeyPatch,
        fault: str) -> None:
    endpoint = "no-such-endpoint" if fault == "unknown_endpoint" else "gen"
    if fault == "wrong_secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")

    def arm() -> None:
        if fault in ("throttle", "model_error", "not_ready", "unavailable"):
            emulator.inject("gen", fault)  # type: ignore[arg-type]

    arm()
    with pytest.raises(BackendError) as ours:
        await backend(clients, emulator.url, endpoint).invoke(streamed())
    arm()
    async with get_session().create_client("sagemaker-runtime", region_name="us-east-1", endpoint_url=emulator.url,
                                           config=Config(retries={"total_max_attempts": 1})) as client:
        with pytest.raises(ClientError) as theirs:
            await client.invoke_endpoint_with_response_stream(EndpointName=endpoint, Body=b'{"prompt": "tell"}',
                                                              ContentType="application/json")
    assert _as_tuple(ours.value) == _as_tuple(client_error("gen-sm", theirs.value))
    assert ours.value.kind is not FailureKind.CONNECTION


@pytest.mark.parametrize(("failure", "kind", "code", "message"), [
    ("model", FailureKind.MODEL_ERROR, "StreamBroken", "injected failure mid-stream"),
    ("internal", FailureKind.UNAVAILABLE, "InternalStreamFailure", "gen-sm: injected internal failure"),
])
async def test_an_error_event_after_the_first_part_breaks_the_stream(
        clients: SageMakerClients, emulator: SageMakerRuntimeEmulator, failure: Any, kind: FailureKind, code: str,
        message: str) -> None:
    emulator.break_stream("gen", failure=failure)
    result = await backend(clients, emulator.url).invoke(streamed())
    assert result.stream is not None
    parts: list[bytes] = []

    async def read_all() -> None:
        assert result.stream is not None
        async for part in result.stream:
            parts.append(part)

    with pytest.raises(StreamBroken) as broken:
        await read_all()
    assert parts
    assert b"".join(PARTS).startswith(b"".join(parts))  # the first chunk the model wrote, then the end
    assert (broken.value.kind, broken.value.code, broken.value.message) == (kind, code, message)


async def test_a_closed_port_is_a_connection_error_and_a_slow_endpoint_a_timeout(
        clients: SageMakerClients, emulator: SageMakerRuntimeEmulator) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(BackendError) as refused:
        await backend(clients, closed).invoke(streamed())
    assert refused.value.kind is FailureKind.CONNECTION
    assert "127.0.0.1" not in str(refused.value)
    emulator.set_delay("gen", 5.0)
    with pytest.raises(BackendError) as slow:
        await backend(clients, emulator.url, timeout_s=0.2).invoke(streamed())
    assert slow.value.kind is FailureKind.TIMEOUT


@pytest.mark.parametrize(("url", "token", "headers", "body"), [
    ("https://runtime.sagemaker.eu-west-1.amazonaws.com:443/endpoints/gen/invocations-response-stream", None,
     {"Content-Type": "application/json", "User-Agent": "ua", "traceparent": TRACEPARENT}, b'{"a": 1}'),
    ("https://runtime.sagemaker.eu-west-1.amazonaws.com:443/endpoints/gen/invocations-response-stream", "rotated",
     {"Content-Type": "application/json"}, b'{"a": 1}'),  # the same endpoint again: the cached parts
    ("http://127.0.0.1:8080/prefix/endpoints/a-b/invocations-response-stream", "session-token",
     {"X-Amzn-SageMaker-Custom-Attributes": "  spaced   out\tvalue ", "X-Amzn-SageMaker-Accept": "text/plain; q=1",
      "x-amzn-sagemaker-accept": "second value, lower-case name"}, b""),
    ("http://[::1]:9000/endpoints/gen/invocations-response-stream", "t",
     {"X-Amzn-SageMaker-Inference-Id": "caf\u00e9-\u00fc", "Content-Type": "text/csv"}, "\u00e9".encode()),
])
def test_the_signature_is_the_one_botocores_sigv4auth_computes(
        url: str, token: str | None, headers: dict[str, str], body: bytes) -> None:
    secret = SECRET if token != "rotated" else SECRET + "-rotated"  # new credentials: a new signing key
    credentials = ReadOnlyCredentials(KEY, secret, token)
    theirs = AWSRequest("POST", url, headers=dict(headers), data=body)
    SigV4Auth(credentials, "sagemaker", "eu-west-1").add_auth(theirs)
    ours = dict(headers)
    sigv4_headers(ours, method="POST", url=url, body=body, credentials=credentials, region="eu-west-1",
                  service="sagemaker", timestamp=theirs.headers["X-Amz-Date"])
    assert ours == dict(theirs.headers.items())
