"""A small SageMaker Runtime emulator for tests: the runtime HTTP API in front of local model containers.

moto's sagemaker-runtime only returns canned answers, so this speaks InvokeEndpoint's wire format
(``POST /endpoints/{name}/invocations``) and forwards to a container's ``POST /invocations``, the
way SageMaker does. Errors carry ``x-amzn-ErrorType`` and a JSON ``{"message": ...}`` body, which
is what botocore needs to raise ``ThrottlingException``, ``ModelError`` and friends.

    async with SageMakerRuntimeEmulator() as emu:
        emu.add_endpoint("fraud", container_url)
        emu.inject("fraud", "throttle", times=2)
        client = session.create_client("sagemaker-runtime", endpoint_url=emu.url, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import aiohttp
from aiohttp import web

Fault = Literal["throttle", "model_error", "not_ready", "unavailable"]

ACCOUNT = "123456789012"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"

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


@dataclass
class _Endpoint:
    container: str
    variant: str
    delay_s: float = 0.0
    faults: deque[str] = field(default_factory=deque)


class SageMakerRuntimeEmulator:
    """SageMaker Runtime's InvokeEndpoint on 127.0.0.1, with fault injection and slow answers."""

    def __init__(self, *, region: str = "us-east-1", account: str = ACCOUNT) -> None:
        self.region = region
        self.account = account
        self.calls: list[EmulatorCall] = []
        self.url = ""
        self._endpoints: dict[str, _Endpoint] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()

    # --- control ----------------------------------------------------------------------------------

    def add_endpoint(self, name: str, container_base_url: str, variant: str = "AllTraffic") -> None:
        """Serve endpoint ``name`` from the container at ``container_base_url`` (its ``/invocations``)."""
        self._endpoints[name] = _Endpoint(container_base_url.rstrip("/"), variant)

    def inject(self, name: str, fault: Fault, times: int = 1) -> None:
        """Answer the next ``times`` calls to ``name`` with ``fault`` instead of calling the container."""
        if fault not in _FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(_FAULTS)}")
        self._endpoints[name].faults.extend([fault] * times)

    def set_delay(self, name: str, seconds: float) -> None:
        """Wait ``seconds`` before answering each call to ``name`` (faults included)."""
        self._endpoints[name].delay_s = seconds

    def calls_to(self, name: str) -> list[EmulatorCall]:
        return [c for c in self.calls if c.endpoint == name]

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on a free port of 127.0.0.1; returns the base URL to use as ``endpoint_url``."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/endpoints/{name}/invocations", self._invoke)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay, so shutdown does not wait them out
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
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
