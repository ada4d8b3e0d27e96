"""The sagemaker backend against the SageMaker Runtime emulator, over real HTTP and real aiobotocore."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import boto3
import pytest
from aiohttp import web
from botocore.config import Config

from router.backends.sagemaker import SageMakerBackend, SageMakerClients, client_error_kind
from router.types import Backend, BackendError, FailureKind, Invocation
from tests.sm_emulator import CUSTOM_ATTRIBUTES, SageMakerRuntimeEmulator

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"

# --- a minimal model container (GET /ping, POST /invocations) ---------------------------------------


async def _ping(_: web.Request) -> web.Response:
    return web.Response(text="")


async def _invocations(request: web.Request) -> web.Response:
    body = await request.read()
    custom = request.headers.get(CUSTOM_ATTRIBUTES, "")
    if "mode=reject" in custom:
        return web.Response(status=400, text="bad input: expected 3 features")
    headers = {CUSTOM_ATTRIBUTES: f"seen={custom}"} if custom else {}
    content_type = request.headers.get("Accept", "application/octet-stream")
    return web.Response(body=b"echo:" + body[::-1], headers=headers, content_type=content_type)


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
async def container() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/ping", _ping)
    app.router.add_post("/invocations", _invocations)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def emulator(container: str) -> AsyncIterator[SageMakerRuntimeEmulator]:
    async with SageMakerRuntimeEmulator() as emu:
        emu.add_endpoint("fraud", container, variant="blue")
        yield emu


MakeBackend = Callable[..., SageMakerBackend]


@pytest.fixture
def make_backend(emulator: SageMakerRuntimeEmulator, clients: SageMakerClients) -> MakeBackend:
    def make(endpoint: str = "fraud", **kwargs: object) -> SageMakerBackend:
        kwargs.setdefault("endpoint_url", emulator.url)
        return SageMakerBackend("fraud-sm", endpoint, clients, **kwargs)  # type: ignore[arg-type]

    return make


async def _fail(backend: SageMakerBackend, inv: Invocation | None = None) -> BackendError:
    with pytest.raises(BackendError) as info:
        await backend.invoke(inv or Invocation(body=b"1,2,3", content_type="text/csv"))
    return info.value


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- success and pass-through ----------------------------------------------------------------------


async def test_backend_satisfies_the_backend_protocol(make_backend: MakeBackend) -> None:
    assert isinstance(make_backend(), Backend)


async def test_invoke_passes_sagemaker_headers_through_and_returns_the_model_answer(
    make_backend: MakeBackend, emulator: SageMakerRuntimeEmulator
) -> None:
    backend = make_backend()
    await backend.start()
    result = await backend.invoke(
        Invocation(
            body=b'{"x": [1, 2, 3]}',
            content_type="application/json",
            accept="text/plain",
            custom_attributes="trace=abc",
            target_variant="blue",
            inference_id="inf-42",
        )
    )

    assert result.body == b'echo:}]3 ,2 ,1[ :"x"{'
    assert result.content_type is not None
    assert result.content_type.startswith("text/plain")
    assert result.invoked_variant == "blue"
    assert result.custom_attributes == "seen=trace=abc"
    assert result.status == 200
    [call] = emulator.calls
    assert call.endpoint == "fraud"
    assert call.body == b'{"x": [1, 2, 3]}'
    assert call.content_type == "application/json"
    assert call.accept == "text/plain"
    assert call.custom_attributes == "trace=abc"
    assert call.target_variant == "blue"
    assert call.inference_id == "inf-42"
    assert call.headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")  # really signed by botocore


async def test_configured_variant_is_the_target_when_the_invocation_names_none(
    make_backend: MakeBackend, emulator: SageMakerRuntimeEmulator
) -> None:
    result = await make_backend(variant="blue").invoke(Invocation(body=b"a"))

    assert emulator.calls[0].target_variant == "blue"
    assert result.invoked_variant == "blue"


async def test_unset_optional_fields_are_not_sent(
    make_backend: MakeBackend, emulator: SageMakerRuntimeEmulator
) -> None:
    result = await make_backend().invoke(Invocation(body=b"abc"))

    assert result.body == b"echo:cba"
    [call] = emulator.calls
    assert call.accept in (None, "*/*")  # aiohttp's default Accept, not one the backend set
    assert call.content_type is None
    assert call.custom_attributes is None
    assert call.target_variant is None
    assert call.inference_id is None
    assert result.custom_attributes is None


async def test_clients_are_shared_per_region_and_endpoint_url(clients: SageMakerClients) -> None:
    a, b = await asyncio.gather(clients.get(None, "http://127.0.0.1:1"), clients.get("us-east-1", "http://127.0.0.1:1"))
    other_region = await clients.get("eu-west-1", "http://127.0.0.1:1")
    other_url = await clients.get(None, "http://127.0.0.1:2")

    assert a is b  # None resolves to AWS_DEFAULT_REGION, so both keys are the same client
    assert other_region is not a
    assert other_url is not a
    assert other_region.meta.region_name == "eu-west-1"
    assert a.meta.config.retries["total_max_attempts"] == 1


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        ("throttle", FailureKind.THROTTLED, 400),
        ("not_ready", FailureKind.NOT_READY, 429),
        ("unavailable", FailureKind.UNAVAILABLE, 503),
        ("model_error", FailureKind.MODEL_ERROR, 424),
    ],
)
async def test_injected_fault_maps_to_failure_kind(
    make_backend: MakeBackend, emulator: SageMakerRuntimeEmulator, fault: str, kind: FailureKind, status: int
) -> None:
    emulator.inject("fraud", fault)  # type: ignore[arg-type]

    err = await _fail(make_backend())

    assert err.kind is kind
    assert err.status == status
    if fault == "model_error":
        assert err.original_status == 500
        assert err.original_message == "injected model failure"
    else:
        assert err.original_status is None


@pytest.mark.parametrize("fault", ["throttle", "unavailable", "not_ready", "model_error"])
async def test_exactly_one_http_attempt_per_invoke_even_for_retryable_errors(
    make_backend: MakeBackend, emulator: SageMakerRuntimeEmulator, fault: str
) -> None:
    emulator.inject("fraud", fault, times=5)  # type: ignore[arg-type]
    backend = make_backend()

    await _fail(backend)
    assert len(emulator.calls) == 1
    await _fail(backend)
    assert len(emulator.calls) == 2


async def test_container_4xx_is_a_model_error_with_the_original_status_and_message(
    make_backend: MakeBackend,
) -> None:
    err = await _fail(make_backend(), Invocation(body=b"1", custom_attributes="mode=reject"))

    assert err.kind is FailureKind.MODEL_ERROR
    assert not err.retryable
    assert err.status == 424
    assert err.original_status == 400
    assert err.original_message == "bad input: expected 3 features"
    assert "ModelError" in err.message


async def test_unknown_endpoint_is_a_validation_error(make_backend: MakeBackend) -> None:
    err = await _fail(make_backend("no-such-endpoint"))

    assert err.kind is FailureKind.VALIDATION
    assert err.status == 400
    assert "Endpoint no-such-endpoint of account 123456789012 not found." in err.message


async def test_unknown_target_variant_is_a_validation_error(make_backend: MakeBackend) -> None:
    err = await _fail(make_backend(variant="green"))

    assert err.kind is FailureKind.VALIDATION


async def test_answer_slower_than_the_backend_timeout_is_a_timeout(
    make_backend: MakeBackend, emulator: SageMakerRuntimeEmulator
) -> None:
    emulator.set_delay("fraud", 60.0)
    started = time.monotonic()

    err = await _fail(make_backend(timeout_s=0.3))

    assert err.kind is FailureKind.TIMEOUT
    assert err.retryable
    assert time.monotonic() - started < 20.0  # at the timeout, long before the answer (a wide margin for load)


async def test_invocation_timeout_tightens_the_backend_timeout(
    make_backend: MakeBackend, emulator: SageMakerRuntimeEmulator
) -> None:
    emulator.set_delay("fraud", 60.0)
    started = time.monotonic()

    err = await _fail(make_backend(timeout_s=45.0), Invocation(body=b"x", timeout_s=0.3))

    assert err.kind is FailureKind.TIMEOUT
    assert time.monotonic() - started < 20.0  # at the invocation's 0.3 s, not the backend's 45 s


async def test_closed_port_is_a_connection_error_without_credentials_in_the_message(
    clients: SageMakerClients,
) -> None:
    backend = SageMakerBackend("dead", "fraud", clients, endpoint_url=f"http://127.0.0.1:{_closed_port()}")

    err = await _fail(backend)

    assert err.kind is FailureKind.CONNECTION
    assert err.status is None
    assert SECRET not in err.message
    assert "testing" not in err.message


async def test_client_error_messages_do_not_carry_credentials(
    make_backend: MakeBackend, emulator: SageMakerRuntimeEmulator
) -> None:
    emulator.inject("fraud", "throttle")

    err = await _fail(make_backend())

    assert SECRET not in str(err)
    assert "Signature" not in str(err)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("InternalFailure", 500, FailureKind.UNAVAILABLE),
        ("InternalDependencyException", 530, FailureKind.UNAVAILABLE),
        ("ModelStreamError", 400, FailureKind.MODEL_ERROR),
        ("ValidationError", 400, FailureKind.VALIDATION),
        ("SomethingNew", 502, FailureKind.UNAVAILABLE),
        ("AccessDeniedException", 403, FailureKind.VALIDATION),
    ],
)
def test_error_codes_without_an_emulator_fault_map_by_code_then_status(
    code: str, status: int, kind: FailureKind
) -> None:
    assert client_error_kind(code, status) is kind


# --- the emulator speaks the wire format botocore expects -------------------------------------------


def _boto3_client(url: str, attempts: int = 1) -> object:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": attempts, "mode": "standard"}),
    )


async def test_emulator_errors_become_botocores_modelled_exceptions(
    emulator: SageMakerRuntimeEmulator,
) -> None:
    def run() -> None:
        client = _boto3_client(emulator.url)
        ok = client.invoke_endpoint(EndpointName="fraud", Body=b"hi", ContentType="text/plain")  # type: ignore[attr-defined]
        assert ok["Body"].read() == b"echo:ih"
        assert ok["InvokedProductionVariant"] == "blue"

        emulator.inject("fraud", "model_error")
        with pytest.raises(client.exceptions.ModelError) as model_error:  # type: ignore[attr-defined]
            client.invoke_endpoint(EndpointName="fraud", Body=b"hi")  # type: ignore[attr-defined]
        assert model_error.value.response["OriginalStatusCode"] == 500
        assert model_error.value.response["OriginalMessage"] == "injected model failure"
        assert model_error.value.response["LogStreamArn"].startswith("arn:aws:logs:us-east-1:")
        assert model_error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424

        emulator.inject("fraud", "not_ready")
        with pytest.raises(client.exceptions.ModelNotReadyException):  # type: ignore[attr-defined]
            client.invoke_endpoint(EndpointName="fraud", Body=b"hi")  # type: ignore[attr-defined]
        emulator.inject("fraud", "unavailable")
        with pytest.raises(client.exceptions.ServiceUnavailable):  # type: ignore[attr-defined]
            client.invoke_endpoint(EndpointName="fraud", Body=b"hi")  # type: ignore[attr-defined]
        with pytest.raises(client.exceptions.ValidationError):  # type: ignore[attr-defined]
            client.invoke_endpoint(EndpointName="missing", Body=b"hi")  # type: ignore[attr-defined]

    await asyncio.to_thread(run)


async def test_emulator_throttling_is_what_botocore_retries_by_default(
    emulator: SageMakerRuntimeEmulator,
) -> None:
    # the counterpart of the one-attempt tests: with retries on, botocore would call twice
    emulator.inject("fraud", "throttle", times=2)

    def run() -> str:
        client = _boto3_client(emulator.url, attempts=2)
        with pytest.raises(client.exceptions.ClientError) as info:  # type: ignore[attr-defined]
            client.invoke_endpoint(EndpointName="fraud", Body=b"hi")  # type: ignore[attr-defined]
        return str(info.value.response["Error"]["Code"])

    assert await asyncio.to_thread(run) == "ThrottlingException"
    assert len(emulator.calls) == 2


async def test_emulator_reports_an_unreachable_container_as_a_model_error(
    clients: SageMakerClients,
) -> None:
    async with SageMakerRuntimeEmulator() as emu:
        emu.add_endpoint("gone", f"http://127.0.0.1:{_closed_port()}")
        backend = SageMakerBackend("gone", "gone", clients, endpoint_url=emu.url)

        err = await _fail(backend)

    assert err.kind is FailureKind.MODEL_ERROR
    assert err.original_status == 502


async def test_container_answers_ping(container: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{container}/ping") as resp:
        assert resp.status == 200
