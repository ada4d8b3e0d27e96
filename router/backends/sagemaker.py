"""``sagemaker`` backend: InvokeEndpoint on a real-time or serverless endpoint, through aiobotocore.

One aiobotocore client per (service, region, endpoint_url) is shared by every backend of the process
(:class:`SageMakerClients`: the runtime, and the S3 / SQS / SNS clients of ``sagemaker-async``);
botocore's own retries are off because the router does the retrying, as a fallback to another
backend or a job's next attempt. InvokeEndpointWithResponseStream skips botocore's per-call machinery
(``router.backends.sagemaker_stream``): its time to the first part is what a streaming client waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import aiohttp
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    ParamValidationError,
    ReadTimeoutError,
)

from router.backends.sagemaker_stream import ResponseStreamCall
from router.types import BackendError, FailureKind, Invocation, InvocationResult, StreamBroken, whole_body

DEFAULT_REGION = "us-east-1"
# SageMaker ends every InvokeEndpoint at 60 s; the socket timeout is only a safety net above the
# per-call bound each backend sets with asyncio.timeout.
DEFAULT_READ_TIMEOUT_S = 65.0
DEFAULT_CONNECT_TIMEOUT_S = 3.0
MAX_MESSAGE = 300

_THROTTLED = frozenset({"ThrottlingException", "Throttling", "ThrottledException", "TooManyRequestsException"})
_NOT_READY = frozenset({"ModelNotReadyException"})
_UNAVAILABLE = frozenset({"ServiceUnavailable", "InternalFailure", "InternalDependencyException"})
_MODEL_ERROR = frozenset({"ModelError", "ModelStreamError"})
_VALIDATION = frozenset({"ValidationError", "ValidationException"})

# Trace headers of the call being made: botocore's signing hook reads them, as clients are shared by
# every call. The SageMaker API has no parameter for them and does not pass them on to the container
# (only CustomAttributes reach it, and those belong to the client); the trace still reaches AWS's
# side, a VPC endpoint's proxy or an emulator.
_TRACE_HEADERS = ("traceparent", "tracestate")
_trace_headers: ContextVar[Mapping[str, str] | None] = ContextVar("sagemaker_trace_headers", default=None)


def _add_trace_headers(request: Any, **_: Any) -> None:
    """botocore ``before-sign`` hook: the current call's ``traceparent``/``tracestate`` as HTTP headers."""
    headers = _trace_headers.get() or {}
    for name in _TRACE_HEADERS:
        if name in headers:
            request.headers[name] = headers[name]


def default_region() -> str:
    """The region of a backend that names none: AWS_REGION, then AWS_DEFAULT_REGION, then us-east-1."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


class SageMakerClients:
    """The process's AWS clients: one per (service, region, endpoint_url), made on first use.

    Each client owns an aiohttp connection pool; sharing it keeps connections warm across
    backends that call the same regional endpoint.
    """

    def __init__(
        self,
        *,
        max_pool_connections: int = 64,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self._max_pool_connections = max_pool_connections
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._clients: dict[tuple[str, str, str | None], Any] = {}
        self._response_streams: dict[tuple[str, str | None], ResponseStreamCall] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._session: Any = None

    def _config(self) -> Config:
        return Config(
            # the router falls back to another backend itself: a botocore retry would only add latency
            retries={"total_max_attempts": 1},
            max_pool_connections=self._max_pool_connections,
            connect_timeout=self._connect_timeout_s,
            read_timeout=self._read_timeout_s,
        )

    async def get(self, region: str | None, endpoint_url: str | None, service: str = "sagemaker-runtime") -> Any:
        """The ``service`` client for ``region`` (default: from the environment) and ``endpoint_url``.

        ``endpoint_url`` None leaves the endpoint to botocore (``AWS_ENDPOINT_URL_S3`` and the like apply).
        """
        key = (service, region or default_region(), endpoint_url)
        client = self._clients.get(key)
        if client is not None:
            return client
        async with self._lock:
            client = self._clients.get(key)
            if client is None:
                if self._session is None:
                    self._session = get_session()
                made = await self._stack.enter_async_context(
                    self._session.create_client(
                        service, region_name=key[1], endpoint_url=endpoint_url, config=self._config()
                    )
                )
                made.meta.events.register("before-sign.sagemaker-runtime", _add_trace_headers)
                self._clients[key] = client = made
            return client

    async def response_stream(self, region: str | None, endpoint_url: str | None) -> ResponseStreamCall:
        """InvokeEndpointWithResponseStream on the ``sagemaker-runtime`` client for ``region`` and ``endpoint_url``."""
        key = (region or default_region(), endpoint_url)
        call = self._response_streams.get(key)
        if call is None:
            call = self._response_streams[key] = ResponseStreamCall(await self.get(region, endpoint_url))
        return call

    async def close(self) -> None:
        """Close every client and its connection pool."""
        async with self._lock:
            self._clients.clear()
            self._response_streams.clear()
            stack, self._stack = self._stack, contextlib.AsyncExitStack()
            await stack.aclose()


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def client_error_kind(code: str, status: int | None) -> FailureKind:
    """How a SageMaker Runtime error code counts for the router."""
    if code in _THROTTLED:
        return FailureKind.THROTTLED
    if code in _NOT_READY:
        return FailureKind.NOT_READY
    if code in _UNAVAILABLE:
        return FailureKind.UNAVAILABLE
    if code in _MODEL_ERROR:
        return FailureKind.MODEL_ERROR
    if code in _VALIDATION:
        return FailureKind.VALIDATION
    if status is not None and status >= 500:
        return FailureKind.UNAVAILABLE
    if status == 429:  # an unmodelled 429 still means "slow down"
        return FailureKind.THROTTLED
    return FailureKind.VALIDATION


def client_error(name: str, exc: ClientError) -> BackendError:
    """A SageMaker (or S3 / SQS) ClientError as the router's BackendError, without request details."""
    response: dict[str, Any] = exc.response or {}
    error = response.get("Error") or {}
    code = str(error.get("Code") or "Unknown")
    status = _int_or_none((response.get("ResponseMetadata") or {}).get("HTTPStatusCode"))
    message = str(error.get("Message") or "")
    kind = client_error_kind(code, status)
    original_status: int | None = None
    original_message: str | None = None
    if code == "ModelError":
        # botocore lifts the modelled members of the error shape to the top of the response
        original_status = _int_or_none(response.get("OriginalStatusCode"))
        original = response.get("OriginalMessage")
        original_message = None if original is None else str(original)
    return BackendError(
        kind,
        _short(f"{name}: {code} ({status}): {message}"),
        status=status,
        original_status=original_status,
        original_message=original_message,
    )


@contextlib.contextmanager
def call_errors(name: str, timeout_s: float, what: str = "InvokeEndpoint") -> Iterator[None]:
    """Turn what an aiobotocore call of backend ``name`` raises inside the block into BackendError."""
    try:
        yield
    except ClientError as exc:
        raise client_error(name, exc) from None
    except (TimeoutError, ReadTimeoutError):
        # AioReadTimeoutError is both; asyncio.timeout raises TimeoutError
        raise BackendError(FailureKind.TIMEOUT, f"{name} did not answer within {timeout_s:g}s") from None
    except (EndpointConnectionError, ConnectionClosedError, HTTPClientError, aiohttp.ClientError) as exc:
        # no URL or cause in the message: it could carry a VPC endpoint's userinfo or a proxy's credentials
        raise BackendError(FailureKind.CONNECTION, f"{name} connection to AWS failed: {type(exc).__name__}") from None
    except ParamValidationError as exc:
        raise BackendError(FailureKind.VALIDATION, f"{name}: invalid {what} call: {exc}") from None
    except BotoCoreError as exc:
        # e.g. NoCredentialsError: this backend cannot be called at all, others may
        raise BackendError(FailureKind.UNAVAILABLE, f"{name}: AWS client failed: {type(exc).__name__}") from None


class SageMakerBackend:
    """Calls InvokeEndpoint on one SageMaker endpoint; failures become :class:`BackendError`."""

    def __init__(
        self,
        name: str,
        endpoint: str,
        clients: SageMakerClients,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        timeout_s: float = 60.0,
        variant: str | None = None,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self._clients = clients
        self._region = region
        self._endpoint_url = endpoint_url
        self._timeout_s = timeout_s
        self._variant = variant

    async def start(self) -> None:
        await self._clients.get(self._region, self._endpoint_url)

    async def close(self) -> None:
        return None  # the shared clients belong to SageMakerClients

    def _params(self, inv: Invocation) -> dict[str, Any]:
        params: dict[str, Any] = {"EndpointName": self.endpoint, "Body": inv.body}
        optional = {
            "ContentType": inv.content_type,
            "Accept": inv.accept,
            "CustomAttributes": inv.custom_attributes,
            "TargetVariant": inv.target_variant or self._variant,
            "InferenceId": inv.inference_id,
        }
        params.update({k: v for k, v in optional.items() if v})
        return params

    async def invoke(self, inv: Invocation) -> InvocationResult:
        if inv.response_stream:
            return await self._invoke_stream(inv)
        inv = await whole_body(inv)  # InvokeEndpoint takes at most 6 MB: the bytes up front
        timeout = min(self._timeout_s, math.inf if inv.timeout_s is None else inv.timeout_s)
        if inv.job_timeout_s is not None:  # a job's budget (InvokeEndpoint itself still ends at 60 s)
            timeout = inv.job_timeout_s
        with call_errors(self.name, timeout):
            async with asyncio.timeout(timeout):
                client = await self._clients.get(self._region, self._endpoint_url)
                token = _trace_headers.set(inv.headers)
                try:
                    resp = await client.invoke_endpoint(**self._params(inv))
                finally:
                    _trace_headers.reset(token)
                async with resp["Body"] as stream:
                    body: bytes = await stream.read()
        metadata = resp.get("ResponseMetadata") or {}
        return InvocationResult(
            body=body,
            content_type=resp.get("ContentType"),
            status=_int_or_none(metadata.get("HTTPStatusCode")) or 200,
            invoked_variant=resp.get("InvokedProductionVariant"),
            custom_attributes=resp.get("CustomAttributes"),
        )

    async def _invoke_stream(self, inv: Invocation) -> InvocationResult:
        """InvokeEndpointWithResponseStream; returns once the first PayloadPart is here (until then a failure
        is an ordinary one the sync lane may fall back from), the rest relayed as it comes."""
        inv = await whole_body(inv)
        timeout = min(self._timeout_s, math.inf if inv.timeout_s is None else inv.timeout_s)
        with call_errors(self.name, timeout, "InvokeEndpointWithResponseStream"):
            async with asyncio.timeout(timeout):
                call = await self._clients.response_stream(self._region, self._endpoint_url)
                trace = {name: inv.headers[name] for name in _TRACE_HEADERS if name in inv.headers}
                resp = await call(self._params(inv), trace)
                stream = EndpointStream(self.name, resp["Body"])
                try:
                    await stream.peek()
                except BaseException:
                    await stream.aclose()
                    raise
        return InvocationResult(b"", resp.get("ContentType"), 200, resp.get("InvokedProductionVariant"),
                                resp.get("CustomAttributes"), stream=stream)


class EndpointStream:
    """The PayloadParts of an InvokeEndpointWithResponseStream answer as bytes; its error events raise
    :class:`StreamBroken` (``ModelStreamError`` is the model's failure, ``InternalStreamFailure`` SageMaker's)."""

    def __init__(self, name: str, events: Any) -> None:
        self._name = name
        self._events = events
        self._iter = events.__aiter__()
        self._first: bytes | None = None

    async def peek(self) -> None:
        """Read the first part now (a failure before it is raised as a plain call error)."""
        self._first = await self._next()

    async def _next(self) -> bytes | None:
        try:
            while True:
                event = await self._iter.__anext__()
                part = event.get("PayloadPart")
                if part is not None:
                    data: bytes = part.get("Bytes", b"")
                    return data
        except StopAsyncIteration:
            return None

    async def __aiter__(self) -> Any:
        try:
            if self._first:
                yield self._first
            if self._first is None:
                return
            while (data := await self._next()) is not None:
                yield data
        except ClientError as exc:
            error = (exc.response or {}).get("Error") or {}
            code, text = str(error.get("Code") or "ModelStreamError"), str(error.get("Message") or "")
            if code == "InternalStreamFailure":
                raise StreamBroken(FailureKind.UNAVAILABLE, code, f"{self._name}: {text}") from None
            # botocore keeps the event's type and message only: the ErrorCode is not known here
            raise StreamBroken(FailureKind.MODEL_ERROR, "StreamBroken", text) from None
        except (TimeoutError, ReadTimeoutError):
            raise StreamBroken(FailureKind.TIMEOUT, "ModelInvocationTimeExceeded",
                               f"{self._name} sent nothing for too long") from None
        except (ConnectionClosedError, HTTPClientError, aiohttp.ClientError) as exc:
            raise StreamBroken(FailureKind.CONNECTION, "StreamBroken",
                               f"{self._name}'s stream broke off: {type(exc).__name__}") from None
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._events.close()
