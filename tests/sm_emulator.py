"""A small SageMaker Runtime emulator for tests: the runtime HTTP API in front of local model containers.

moto's sagemaker-runtime only returns canned answers, so this speaks InvokeEndpoint's wire format
(``POST /endpoints/{name}/invocations``) and forwards to a container's ``POST /invocations``, the
way SageMaker does. Errors carry ``x-amzn-ErrorType`` and a JSON ``{"message": ...}`` body, which
is what botocore needs to raise ``ThrottlingException``, ``ModelError`` and friends.

    async with SageMakerRuntimeEmulator() as emu:
        emu.add_endpoint("fraud", container_url)
        emu.inject("fraud", "throttle", times=2)
        client = session.create_client("sagemaker-runtime", endpoint_url=emu.url, ...)

InvokeEndpointWithResponseStream (``POST /endpoints/{name}/invocations-response-stream``) relays the
container's answer chunk by chunk as ``PayloadPart`` events (application/vnd.amazon.eventstream), and with
:meth:`SageMakerRuntimeEmulator.break_stream` ends a stream after its first part with a ``ModelStreamError``
(or SageMaker's own ``InternalStreamFailure``).

With ``credentials`` ({access key id: secret}), InvokeEndpoint and InvokeEndpointWithResponseStream accept only
requests signed with one of them (SigV4 for service ``sagemaker``, checked by ``router.auth.sigv4``), and answer
others the way AWS does (403 ``UnrecognizedClientException`` / ``InvalidSignatureException``).

InvokeEndpointAsync (``POST /endpoints/{name}/async-invocations``) works on endpoints added with an
:class:`AsyncConfig`, against S3 and SNS on a moto server (``aws_endpoint_url``): it answers 202 with
the InferenceId and the output / failure locations, then in the background reads the input from S3,
calls the container, writes ``<output_path>/<id>.out`` (or ``<failure_path>/<id>-error.out`` with the
container's error) and publishes SageMaker's notification JSON to the success / error topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import aiohttp
from aiobotocore.session import get_session
from aiohttp import web

from router import eventstream
from router.auth.sigv4 import SigV4Callers
from router.features import RequestError

Fault = Literal["throttle", "model_error", "not_ready", "unavailable"]

ACCOUNT = "123456789012"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
INPUT_LOCATION = "X-Amzn-SageMaker-InputLocation"
ASYNC_CONTENT_TYPE = "X-Amzn-SageMaker-Content-Type"
ASYNC_ACCEPT = "X-Amzn-SageMaker-Accept"
INVOCATION_TIMEOUT = "X-Amzn-SageMaker-InvocationTimeoutSeconds"
REQUEST_TTL = "X-Amzn-SageMaker-RequestTTLSeconds"

# fault -> (HTTP status, x-amzn-ErrorType, message), as SageMaker Runtime answers them
_FAULTS: dict[str, tuple[int, str, str]] = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "model_error": (424, "ModelError", ""),
    "not_ready": (429, "ModelNotReadyException", "Model is not ready to serve requests (injected)"),
    "unavailable": (503, "ServiceUnavailable", "Service Unavailable (injected)"),
}


@dataclass(frozen=True)
class EmulatorCall:
    """One request the emulator received, as it came (before any fault or forwarding)."""

    endpoint: str
    headers: dict[str, str]
    body: bytes
    content_type: str | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    target_variant: str | None = None
    inference_id: str | None = None
    input_location: str | None = None  # async invocations only


@dataclass(frozen=True)
class AsyncConfig:
    """An endpoint's AsyncInferenceConfig: S3OutputPath, S3FailurePath and the SNS topics (all optional but
    the output path)."""

    output_path: str
    failure_path: str | None = None
    success_topic: str | None = None
    error_topic: str | None = None


@dataclass
class _Endpoint:
    container: str
    variant: str
    delay_s: float = 0.0
    faults: deque[str] = field(default_factory=deque)
    async_config: AsyncConfig | None = None
    broken_streams: int = 0  # response streams still to end with an error event after their first part
    stream_failure: str = "model"  # which: "model" (ModelStreamError) or "internal" (InternalStreamFailure)


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class SageMakerRuntimeEmulator:
    """SageMaker Runtime's InvokeEndpoint on 127.0.0.1, with fault injection and slow answers."""

    def __init__(self, *, region: str = "us-east-1", account: str = ACCOUNT,
                 aws_endpoint_url: str | None = None, credentials: Mapping[str, str] | None = None) -> None:
        self.region = region
        self._signers = None if credentials is None else SigV4Callers(
            {key: (key, secret) for key, secret in credentials.items()})
        self.account = account
        self.aws_endpoint_url = aws_endpoint_url  # S3 and SNS for async invocations: a moto server
        self.notifications: list[dict[str, Any]] = []  # every async notification, published or not
        self._aws = contextlib.AsyncExitStack()
        self._s3: Any = None
        self._sns: Any = None
        self._background: set[asyncio.Task[None]] = set()
        self.calls: list[EmulatorCall] = []
        self.url = ""
        self._endpoints: dict[str, _Endpoint] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()

    # --- control ----------------------------------------------------------------------------------

    def add_endpoint(self, name: str, container_base_url: str, variant: str = "AllTraffic",
                     async_config: AsyncConfig | None = None) -> None:
        """Serve endpoint ``name`` from the container at ``container_base_url`` (its ``/invocations``);
        with ``async_config`` it takes InvokeEndpointAsync (and needs ``aws_endpoint_url``)."""
        if async_config is not None and self.aws_endpoint_url is None:
            raise ValueError("async endpoints need aws_endpoint_url (S3 and SNS)")
        self._endpoints[name] = _Endpoint(container_base_url.rstrip("/"), variant, async_config=async_config)

    def inject(self, name: str, fault: Fault, times: int = 1) -> None:
        """Answer the next ``times`` calls to ``name`` with ``fault`` instead of calling the container."""
        if fault not in _FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(_FAULTS)}")
        self._endpoints[name].faults.extend([fault] * times)

    def break_stream(self, name: str, times: int = 1, failure: Literal["model", "internal"] = "model") -> None:
        """End the next ``times`` response streams of ``name`` after their first part with a ModelStreamError
        (``failure="model"``) or an InternalStreamFailure (``"internal"``)."""
        self._endpoints[name].broken_streams += times
        self._endpoints[name].stream_failure = failure

    def set_delay(self, name: str, seconds: float) -> None:
        """Wait ``seconds`` before answering each call to ``name`` (faults included)."""
        self._endpoints[name].delay_s = seconds

    def calls_to(self, name: str) -> list[EmulatorCall]:
        return [c for c in self.calls if c.endpoint == name]

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        """Listen on ``port`` of 127.0.0.1 (0: a free one); returns the base URL to use as ``endpoint_url``."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/endpoints/{name}/invocations", self._invoke)
        app.router.add_post("/endpoints/{name}/async-invocations", self._invoke_async)
        app.router.add_post("/endpoints/{name}/invocations-response-stream", self._invoke_stream)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(auto_decompress=False)
        if self.aws_endpoint_url is not None:
            session = get_session()
            for service in ("s3", "sns"):
                client = await self._aws.enter_async_context(session.create_client(
                    service, region_name=self.region, endpoint_url=self.aws_endpoint_url))
                setattr(self, f"_{service}", client)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay, so shutdown does not wait them out
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._aws.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> SageMakerRuntimeEmulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- the API ----------------------------------------------------------------------------------

    def _error(self, status: int, error_type: str, message: str, **extra: object) -> web.Response:
        payload: dict[str, object] = {"message": message, **extra}
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            content_type="application/json",
            headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": str(uuid.uuid4())},
        )

    def _refused(self, request: web.Request, body: bytes) -> web.Response | None:
        """The 403 AWS answers a request not signed with one of ``credentials`` (None: accepted)."""
        if self._signers is None:
            return None
        path, _, query = request.raw_path.partition("?")
        scope = {"method": request.method, "path": request.path, "raw_path": path.encode(),
                 "query_string": query.encode(), "headers": list(request.raw_headers)}
        try:
            signed = self._signers.request(scope, request.headers.get("Authorization", ""))
            if signed is None or signed.claim.service != "sagemaker" or signed.claim.region != self.region:
                raise RequestError(403, "MissingAuthenticationTokenException", "Missing or foreign SigV4 signature")
            signed.verify_body(body)
        except RequestError as exc:
            return self._error(exc.status, exc.error_type, exc.message)
        return None

    def _log_stream(self, name: str) -> str:
        return (
            f"arn:aws:logs:{self.region}:{self.account}:log-group:/aws/sagemaker/Endpoints/{name}"
            ":log-stream:AllTraffic/i-emulator"
        )

    def _model_error(self, name: str, variant: str, original_status: int, original_message: str) -> web.Response:
        side = "server" if original_status >= 500 else "client"
        message = (
            f'Received {side} error ({original_status}) from primary with message "{original_message}". '
            f"See https://{self.region}.console.aws.amazon.com/cloudwatch/home?region={self.region}"
            f"#logEventViewer:group=/aws/sagemaker/Endpoints/{name} in account {self.account} "
            "for more information."
        )
        return self._error(
            424,
            "ModelError",
            message,
            OriginalStatusCode=original_status,
            OriginalMessage=original_message,
            LogStreamArn=self._log_stream(name),
        )

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.read()
        headers = request.headers
        self.calls.append(
            EmulatorCall(
                endpoint=name,
                headers=dict(headers),
                body=body,
                content_type=headers.get("Content-Type"),
                accept=headers.get("Accept"),
                custom_attributes=headers.get(CUSTOM_ATTRIBUTES),
                target_variant=headers.get(TARGET_VARIANT),
                inference_id=headers.get(INFERENCE_ID),
            )
        )
        if (refused := self._refused(request, body)) is not None:
            return refused
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            return self._error(400, "ValidationError", f"Endpoint {name} of account {self.account} not found.")
        target = headers.get(TARGET_VARIANT)
        if target is not None and target != endpoint.variant:
            return self._error(
                400, "ValidationError", f"Variant {target} of endpoint {name} of account {self.account} not found."
            )
        if endpoint.delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), endpoint.delay_s)
        if endpoint.faults:
            fault = endpoint.faults.popleft()
            if fault == "model_error":
                return self._model_error(name, endpoint.variant, 500, "injected model failure")
            status, error_type, message = _FAULTS[fault]
            return self._error(status, error_type, message)
        return await self._forward(name, endpoint, request, body)

    async def _forward(self, name: str, endpoint: _Endpoint, request: web.Request, body: bytes) -> web.StreamResponse:
        assert self._session is not None
        out = {"Content-Type": request.headers.get("Content-Type", "application/octet-stream")}
        for header in ("Accept", CUSTOM_ATTRIBUTES):
            if header in request.headers:
                out[header] = request.headers[header]
        try:
            async with self._session.post(f"{endpoint.container}/invocations", data=body, headers=out) as resp:
                answer = await resp.read()
                status = resp.status
                content_type = resp.headers.get("Content-Type", "application/octet-stream")
                custom = resp.headers.get(CUSTOM_ATTRIBUTES)
        except aiohttp.ClientError:
            # SageMaker answers a container it cannot reach with a ModelError too
            return self._model_error(name, endpoint.variant, 502, "unable to reach the model container")
        if not 200 <= status < 300:
            return self._model_error(name, endpoint.variant, status, answer.decode("utf-8", "replace"))
        reply_headers = {
            "Content-Type": content_type,
            "x-Amzn-Invoked-Production-Variant": endpoint.variant,
            "x-amzn-RequestId": str(uuid.uuid4()),
        }
        if custom is not None:
            reply_headers[CUSTOM_ATTRIBUTES] = custom
        return web.Response(status=200, body=answer, headers=reply_headers)

    # --- InvokeEndpointWithResponseStream ------------------------------------------------------------

    async def _invoke_stream(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.read()
        headers = request.headers
        self.calls.append(EmulatorCall(endpoint=name, headers=dict(headers), body=body,
                                       content_type=headers.get("Content-Type"), accept=headers.get(ASYNC_ACCEPT),
                                       custom_attributes=headers.get(CUSTOM_ATTRIBUTES),
                                       target_variant=headers.get(TARGET_VARIANT),
                                       inference_id=headers.get(INFERENCE_ID)))
        if (refused := self._refused(request, body)) is not None:
            return refused
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            return self._error(400, "ValidationError", f"Endpoint {name} of account {self.account} not found.")
        if endpoint.delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), endpoint.delay_s)
        if endpoint.faults:
            fault = endpoint.faults.popleft()
            if fault == "model_error":
                return self._model_error(name, endpoint.variant, 500, "injected model failure")
            status, error_type, message = _FAULTS[fault]
            return self._error(status, error_type, message)
        assert self._session is not None
        out = {"Content-Type": headers.get("Content-Type", "application/octet-stream")}
        if ASYNC_ACCEPT in headers:
            out["Accept"] = headers[ASYNC_ACCEPT]
        try:
            upstream = await self._session.post(f"{endpoint.container}/invocations", data=body, headers=out)
        except aiohttp.ClientError:
            return self._model_error(name, endpoint.variant, 502, "unable to reach the model container")
        async with upstream:
            if not 200 <= upstream.status < 300:
                text = (await upstream.read()).decode("utf-8", "replace")
                return self._model_error(name, endpoint.variant, upstream.status, text)
            resp = web.StreamResponse(headers={
                "Content-Type": "application/vnd.amazon.eventstream",
                "X-Amzn-SageMaker-Content-Type": upstream.headers.get("Content-Type", "application/octet-stream"),
                "x-Amzn-Invoked-Production-Variant": endpoint.variant, "x-amzn-RequestId": str(uuid.uuid4())})
            await resp.prepare(request)
            breaking = endpoint.broken_streams > 0
            if breaking:
                endpoint.broken_streams -= 1
            try:
                async for chunk in upstream.content.iter_any():
                    await resp.write(eventstream.payload_part(chunk))
                    if breaking and endpoint.stream_failure == "internal":
                        await resp.write(eventstream.internal_stream_failure("injected internal failure"))
                        break
                    if breaking:
                        await resp.write(eventstream.model_stream_error("injected failure mid-stream",
                                                                        "ModelInvocationTimeExceeded"))
                        break
            except aiohttp.ClientError:
                await resp.write(eventstream.model_stream_error("the container's answer broke off", "StreamBroken"))
            await resp.write_eof()
            return resp

    # --- InvokeEndpointAsync ------------------------------------------------------------------------

    async def _invoke_async(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        headers = request.headers
        body = await request.read()
        location = headers.get(INPUT_LOCATION)
        self.calls.append(
            EmulatorCall(
                endpoint=name,
                headers=dict(headers),
                body=body,
                content_type=headers.get(ASYNC_CONTENT_TYPE),
                accept=headers.get(ASYNC_ACCEPT),
                custom_attributes=headers.get(CUSTOM_ATTRIBUTES),
                inference_id=headers.get(INFERENCE_ID),
                input_location=location,
            )
        )
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            return self._error(400, "ValidationError", f"Endpoint {name} of account {self.account} not found.")
        config = endpoint.async_config
        if config is None:
            return self._error(400, "ValidationError", f"Endpoint {name} is not configured for async inference.")
        if not location and not body:
            return self._error(400, "ValidationError", "Either InputLocation or Body must be provided.")
        if endpoint.faults and endpoint.faults[0] != "model_error":  # refused at once, like the real API
            status, error_type, message = _FAULTS[endpoint.faults.popleft()]
            return self._error(status, error_type, message)
        inject_failure = bool(endpoint.faults) and endpoint.faults.popleft() == "model_error"
        inference_id = headers.get(INFERENCE_ID) or str(uuid.uuid4())
        output = f"{config.output_path.rstrip('/')}/{inference_id}.out"
        failure = f"{(config.failure_path or config.output_path).rstrip('/')}/{inference_id}-error.out"
        work = _AsyncWork(name, endpoint, config, inference_id, location, body, dict(headers), output,
                          failure if config.failure_path else None, inject_failure)
        task = asyncio.create_task(self._process(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        reply = {"X-Amzn-SageMaker-OutputLocation": output, "x-amzn-RequestId": str(uuid.uuid4())}
        if config.failure_path:
            reply["X-Amzn-SageMaker-FailureLocation"] = failure
        return web.json_response({"InferenceId": inference_id}, status=202, headers=reply)

    async def _process(self, work: _AsyncWork) -> None:
        """What SageMaker does with a queued async request: input from S3, the container, output to S3, SNS."""
        assert self._session is not None
        received = _now()
        if work.endpoint.delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), work.endpoint.delay_s)
        status, answer, content_type = 500, b"", "text/plain"
        if work.inject_failure:
            answer = b"injected model failure"
        elif work.location is not None:
            bucket, key = _split_s3(work.location)
            try:
                got = await self._s3.get_object(Bucket=bucket, Key=key)
                async with got["Body"] as stream:
                    payload = await stream.read()
            except Exception:  # any read failure is the invocation's failure, as on SageMaker
                status, answer = 400, f"unable to read input from {work.location}".encode()
                payload = None
        else:
            payload = work.body
        if not work.inject_failure and payload is not None:
            out = {"Content-Type": work.headers.get(ASYNC_CONTENT_TYPE, "application/octet-stream")}
            for header, forwarded in ((ASYNC_ACCEPT, "Accept"), (CUSTOM_ATTRIBUTES, CUSTOM_ATTRIBUTES)):
                if header in work.headers:
                    out[forwarded] = work.headers[header]
            try:
                async with self._session.post(f"{work.endpoint.container}/invocations", data=payload,
                                              headers=out) as resp:
                    status, answer = resp.status, await resp.read()
                    content_type = resp.headers.get("Content-Type", "application/octet-stream")
            except aiohttp.ClientError:
                status, answer = 502, b"unable to reach the model container"
        ok = 200 <= status < 300
        target = work.output if ok else work.failure
        if target is not None:
            bucket, key = _split_s3(target)
            await self._s3.put_object(Bucket=bucket, Key=key, Body=answer, ContentType=content_type)
        await self._notify(work, ok, status, received, content_type)

    async def _notify(self, work: _AsyncWork, ok: bool, status: int, received: str, content_type: str) -> None:
        request: dict[str, Any] = {"endpointName": work.name, "inputLocation": work.location}
        for key, header in (("contentType", ASYNC_CONTENT_TYPE), ("accept", ASYNC_ACCEPT),
                            ("customAttributes", CUSTOM_ATTRIBUTES)):
            if header in work.headers:
                request[key] = work.headers[header]
        notice: dict[str, Any] = {
            "awsRegion": self.region,
            "eventTime": _now(),
            "receivedTime": received,
            "invocationStatus": "Completed" if ok else "Failed",
            "requestParameters": request,
            "responseParameters": {"contentType": content_type},
            "inferenceId": work.inference_id,
            "eventVersion": "1.0",
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
        }
        if ok:
            notice["responseParameters"]["outputLocation"] = work.output
        else:
            side = "server" if status >= 500 else "client"
            notice["failureReason"] = (f"ClientError: Received {side} error ({status}) from model. "
                                       "See the SageMaker Endpoint logs in your account for more information.")
            if work.failure is not None:
                notice["responseParameters"]["failureLocation"] = work.failure
        self.notifications.append(notice)
        topic = work.config.success_topic if ok else work.config.error_topic
        if topic is not None:
            await self._sns.publish(TopicArn=topic, Message=json.dumps(notice))


@dataclass(frozen=True)
class _AsyncWork:
    name: str
    endpoint: _Endpoint
    config: AsyncConfig
    inference_id: str
    location: str | None
    body: bytes
    headers: dict[str, str]
    output: str
    failure: str | None
    inject_failure: bool
