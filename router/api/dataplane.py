"""The data plane: ``POST /endpoints/{name}/invocations`` (SageMaker InvokeEndpoint) and models' extra paths.

A plain ASGI class in front of the Litestar app: it answers data-plane paths itself (the hot path,
no per-request framework work) and hands every other request to Litestar. It only translates HTTP
to features and back; the engine decides and the sync lane calls backends.
"""

from __future__ import annotations

import re
import time
from random import getrandbits  # request ids need uniqueness, not secrecy; uuid4 costs a syscall
from typing import Any

import structlog

from router.api.errors import ErrorAnswer, from_failure
from router.features import RequestError
from router.lanes.sync import SyncFailure
from router.metrics import UNKNOWN_MODEL
from router.runtime import ModelEntry, Runtime
from router.types import Invocation, InvocationResult, Lane

log = structlog.get_logger("router.access")

ASGIApp = Any  # (scope, receive, send) -> Awaitable[None]
Headers = list[tuple[bytes, bytes]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_PREFIX = "/endpoints/"
_JSON = (b"content-type", b"application/json")


class ClientDisconnected(Exception):
    pass


async def read_body(receive: Any, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` instead of buffering it first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "ValidationError", f"request body exceeds this model's limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _has_dot_segment(path: str) -> bool:
    """A prefix path with '..' could reach another path of the model server than the one configured."""
    return any(part in (".", "..") for part in path.split("/"))


def _router_headers(request_id: str, lane: str, backend: str, reason: str) -> Headers:
    rid = request_id.encode()
    return [
        (b"x-request-id", rid),
        (b"x-amzn-requestid", rid),
        (b"x-router-lane", lane.encode()),
        (b"x-router-backend", backend.encode()),
        (b"x-router-reason", reason.encode()),
    ]


class DataPlane:
    """ASGI app: data-plane requests here, everything else to ``app`` (Litestar)."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(_PREFIX):
                name, _, tail = path[len(_PREFIX):].partition("/")
                if tail == "invocations" and name:
                    return await self._serve(scope, receive, send, name, extra=False)
            else:
                model = self.runtime.routing.model_for_path(path)
                if model is not None:
                    return await self._serve(scope, receive, send, model, extra=True)
        await self.app(scope, receive, send)

    async def _serve(self, scope: Any, receive: Any, send: Any, name: str, *, extra: bool) -> None:
        started = time.perf_counter()
        runtime = self.runtime
        routing = runtime.routing
        metrics = runtime.metrics
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id")
        request_id = rid if rid is not None and _REQUEST_ID.match(rid) else f"{getrandbits(128):032x}"
        entry = routing.models.get(name)
        model_label = name if entry is not None else UNKNOWN_MODEL
        lane = backend = reason = "none"
        status = 500
        features = None
        try:
            if entry is None:
                raise RequestError(404, "ValidationError", "Endpoint not found: no model of that name is configured")
            if scope["method"] != "POST":
                raise RequestError(405, "ValidationError", "use POST for invocations")
            if extra and _has_dot_segment(scope["path"]):
                raise RequestError(400, "ValidationError", "'.' and '..' path segments are not forwarded")
            if runtime.draining:
                raise RequestError(503, "ServiceUnavailable", "the router is shutting down", retry_after_s=1.0)
            body = await self._body(receive, headers, entry)
            features = routing.features.extract(name, headers, len(body))
            snap = runtime.tracker.snapshot(entry.routes.lanes, entry.routes.limits)
            route = routing.engine.decide(features, snap)
            decision = route.decision
            lane, reason = decision.lane.value, decision.reason
            metrics.decisions(name, lane, reason).inc()
            if decision.lane is Lane.SHED:
                metrics.shed(name, reason).inc()
                raise RequestError(decision.status, "ThrottlingException" if decision.status == 429
                                   else "ServiceUnavailable",
                                   f"request shed by policy {decision.policy!r} ({reason}); retry later",
                                   retry_after_s=decision.retry_after_s)
            if not route.hops:
                raise RequestError(413, "ValidationError", "request body exceeds every lane's limit")
            backend = route.hops[0].backend
            inv = self._invocation(scope, headers, body, extra)
            deadline_at = (runtime.clock() + features.deadline_ms / 1000.0) if features.deadline_ms else None
            outcome = await runtime.sync.serve(name, route, inv, features.priority, routing.targets, deadline_at)
            lane, backend = outcome.hop.lane.value, outcome.hop.backend
            status = outcome.result.status
            await self._answer(send, outcome.result, request_id, lane, backend, reason)
        except RequestError as exc:
            status = exc.status
            await self._error(send, ErrorAnswer(exc.status, exc.error_type, exc.message, exc.retry_after_s),
                              request_id, lane, backend, reason)
        except SyncFailure as exc:
            answer = from_failure(exc)
            status = answer.status
            if exc.hop is not None:
                lane, backend = exc.hop.lane.value, exc.hop.backend
            await self._error(send, answer, request_id, lane, backend, reason)
        except ClientDisconnected:
            status = 499  # nginx's code for a client that went away; nothing can be sent
        except Exception:
            log.exception("request_failed", request_id=request_id, model=model_label)
            status = 500
            await self._error(send, ErrorAnswer(500, "InternalFailure", "internal error in the router"),
                              request_id, lane, backend, reason)
        finally:
            elapsed = time.perf_counter() - started
            metrics.requests(model_label, lane, backend, str(status)).inc()
            metrics.duration(model_label, lane).observe(elapsed)
            if routing.config.server.access_log:
                log.info("request", request_id=request_id, model=model_label, lane=lane, backend=backend,
                         reason=reason, status=status, duration_ms=round(elapsed * 1000.0, 3),
                         caller=features.caller if features else None,
                         urgency=features.urgency if features else None,
                         bytes=features.payload_bytes if features else None)

    @staticmethod
    async def _body(receive: Any, headers: dict[str, str], entry: ModelEntry) -> bytes:
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, "ValidationError", "invalid Content-Length header")
            if int(declared) > entry.max_bytes:
                raise RequestError(413, "ValidationError",
                                   f"request body of {declared} bytes exceeds this model's limit of "
                                   f"{entry.max_bytes} bytes")
        return await read_body(receive, entry.max_bytes)

    @staticmethod
    def _invocation(scope: Any, headers: dict[str, str], body: bytes, extra: bool) -> Invocation:
        path = None
        if extra:
            raw = scope.get("raw_path") or scope["path"].encode()
            query = scope.get("query_string") or b""
            path = raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        trace = headers.get("traceparent")
        return Invocation(
            body=body,
            content_type=headers.get("content-type"),
            accept=headers.get("accept"),
            custom_attributes=headers.get("x-amzn-sagemaker-custom-attributes"),
            target_variant=headers.get("x-amzn-sagemaker-target-variant"),
            inference_id=headers.get("x-amzn-sagemaker-inference-id"),
            path=path,
            headers={"traceparent": trace} if trace else {},
        )

    @staticmethod
    async def _answer(send: Any, result: InvocationResult, request_id: str, lane: str, backend: str,
                      reason: str) -> None:
        out = _router_headers(request_id, lane, backend, reason)
        out.append((b"content-type", (result.content_type or "application/octet-stream").encode("latin-1")))
        if result.invoked_variant:
            out.append((b"x-amzn-invoked-production-variant", result.invoked_variant.encode("latin-1")))
        if result.custom_attributes:
            out.append((b"x-amzn-sagemaker-custom-attributes", result.custom_attributes.encode("latin-1")))
        await send({"type": "http.response.start", "status": result.status, "headers": out})
        await send({"type": "http.response.body", "body": result.body})

    @staticmethod
    async def _error(send: Any, answer: ErrorAnswer, request_id: str, lane: str, backend: str, reason: str) -> None:
        out = _router_headers(request_id, lane, backend, reason)
        out.append(_JSON)
        out.append((b"x-amzn-errortype", answer.error_type.encode()))
        if answer.retry_after_s is not None:
            out.append((b"retry-after", str(max(1, round(answer.retry_after_s))).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": out})
        await send({"type": "http.response.body", "body": answer.body(request_id)})
