"""The data plane: ``POST /endpoints/{name}/invocations`` (SageMaker InvokeEndpoint), models' extra paths
(forwarded as they came, answers streamed back), and ``POST /endpoints/{name}/async-invocations``
(InvokeEndpointAsync).

A plain ASGI class in front of the Litestar app: it answers data-plane paths itself (the hot path,
no per-request framework work) and hands every other request to Litestar. It only translates HTTP
to features and back; the engine decides, the sync lane calls backends, the job lane stores jobs.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from random import getrandbits  # request ids need uniqueness, not secrecy; uuid4 costs a syscall
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from router.api.errors import ErrorAnswer, from_failure
from router.api.forward import (
    AnswerCut,
    RequestBody,
    first_chunk,
    gone_while_waiting,
    send_error,
    send_event_stream,
    send_forwarded,
)
from router.batch.lane import BatchLane
from router.batch.records import RecordError, record_format
from router.config import AwsStateConfig
from router.features import RequestError
from router.flow.admission import Ticket
from router.headers import request_headers
from router.lanes.jobs import JobLane, job_url
from router.lanes.sync import SyncFailure
from router.lanes.walk import CAPACITY_REASONS, job_after_failure
from router.logging import ACCESS_LOG, RequestLine, request_trace_id
from router.metrics import UNKNOWN_MODEL
from router.notify import requested_callback
from router.numbers import parse_uint
from router.paths import MethodRules
from router.protocols import PathRule
from router.runtime import ModelEntry, Runtime
from router.storage.base import Job, JobStatus, ObjectTooLarge, StorageError, StoredObject
from router.tracecontext import TraceContext, start_span
from router.types import (
    JOB_LANES,
    BackendError,
    CallerGone,
    Hop,
    Invocation,
    InvocationResult,
    Lane,
    RequestFeatures,
    Route,
)

if TYPE_CHECKING:  # botocore (~30 MB) is imported only when a caller signs with SigV4
    from router.auth.sigv4 import SignedRequest

log = structlog.get_logger("router.access")

ASGIApp = Any  # (scope, receive, send) -> Awaitable[None]
Headers = list[tuple[bytes, bytes]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_PREFIX = "/endpoints/"
_JSON = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode


ClientDisconnected = CallerGone  # the client went away while the router read its body




async def read_prefix(receive: Any, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` + 1 bytes of the body, and whether that was all of it: never buffers past the limit."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
        more = message.get("more_body", False)
        if not more or size > limit:
            return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), not more


async def read_body(receive: Any, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` instead of buffering it first."""
    body, complete = await read_prefix(receive, limit)
    if not complete or len(body) > limit:
        raise RequestError(413, "ValidationError", f"request body exceeds this model's limit of {limit} bytes")
    return body


async def rest_of_body(receive: Any, prefix: bytes) -> AsyncIterator[bytes]:
    """The body as it arrives, after what was already read: streamed to storage, never held whole."""
    if prefix:
        yield prefix
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


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


def _upstream_headers(headers: dict[str, str], trace: TraceContext) -> dict[str, str]:
    """Trace context, and the client's Accept-Encoding: the backend may encode only what the client decodes."""
    out = trace.headers()
    accept_encoding = headers.get("accept-encoding")
    if accept_encoding is not None:
        out["Accept-Encoding"] = accept_encoding
    return out


def _identify(scope: Any) -> tuple[dict[str, str], str, TraceContext]:
    """A request's headers (names in lower case), its id (the client's if well-formed) and its trace span."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    rid = headers.get("x-request-id")
    request_id = rid if rid is not None and _REQUEST_ID.match(rid) else f"{getrandbits(128):032x}"
    return headers, request_id, start_span(headers.get("traceparent"), headers.get("tracestate"))


def _origin(scope: Any, headers: dict[str, str]) -> str:
    host = headers.get("host") or "{}:{}".format(*scope.get("server") or ("127.0.0.1", 80))
    return f"{scope.get('scheme', 'http')}://{host}"


class _Accepted(Exception):
    """Control flow: the request became a job; ``job`` is what to answer with."""

    def __init__(self, job: Job, hop: Hop) -> None:
        self.job = job
        self.hop = hop


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
                    return await self._serve(scope, receive, send, name)
                if tail == "async-invocations" and name:
                    return await self._serve(scope, receive, send, name, sagemaker_async=True)
                if tail == "invocations-response-stream" and name:
                    return await self._serve(scope, receive, send, name, response_stream=True)
            else:
                paths = self.runtime.routing.paths
                rules = paths.match(path) if paths else None
                if rules is not None:
                    return await self._extra(scope, receive, send, rules)
        await self.app(scope, receive, send)

    async def _extra(self, scope: Any, receive: Any, send: Any, rules: MethodRules) -> None:
        """A model's extra path: inference is routed like an invocation, control goes straight to the model."""
        rule = rules.get(scope["method"])
        if rule is None:
            rule = next(iter(rules.values()))
            await self._serve(scope, receive, send, rule.model, proxy=rule,
                              refuse=RequestError(405, "ValidationError", f"{scope['method']} is not "
                                                  f"forwarded on this path; it takes {', '.join(sorted(rules))}"),
                              allow=", ".join(sorted(rules)))
        elif rule.control:
            await self._control(scope, receive, send, rule)
        else:
            await self._serve(scope, receive, send, rule.model, proxy=rule)

    async def _serve(self, scope: Any, receive: Any, send: Any, name: str, *, proxy: PathRule | None = None,
                     sagemaker_async: bool = False, response_stream: bool = False,
                     refuse: RequestError | None = None, allow: str | None = None) -> None:
        started = time.perf_counter()
        arrival = time.time()  # wall clock, for traces: `simulate` replays access logs in arrival order
        runtime = self.runtime
        routing = runtime.routing
        metrics = runtime.metrics
        headers, request_id, trace = _identify(scope)
        trace_token = request_trace_id.set(trace.trace_id)
        entry = routing.models.get(name)
        model_label = name if entry is not None else UNKNOWN_MODEL
        protocol = proxy.protocol if proxy is not None else None
        lane = backend = reason = policy = "none"
        status = 500
        features = None
        waited = 0.0
        cold_start = False
        first_byte: float | None = None
        try:
            if entry is None:
                raise RequestError(404, "ValidationError", "Endpoint not found: no model of that name is configured")
            if refuse is not None:
                raise refuse
            if proxy is None and scope["method"] != "POST":
                allow = "POST"
                raise RequestError(405, "ValidationError", "use POST for invocations")
            if proxy is not None and _has_dot_segment(scope["path"]):
                raise RequestError(400, "ValidationError", "'.' and '..' path segments are not forwarded")
            if runtime.closing:  # draining still serves (drain_delay); once the lanes stop, nothing is taken
                raise RequestError(503, "ServiceUnavailable", "the router is shutting down", retry_after_s=1.0)
            if sagemaker_async:
                lane, backend, reason = "async", entry.routes.lanes.get(Lane.ASYNC, "none"), "async_invocation"
                status = await self._serve_async_invocation(scope, receive, send, headers, entry, request_id,
                                                            trace)
                return
            declared = self._declared_length(headers, entry.max_bytes)
            prefix, complete = b"", True
            if declared is None:  # chunked: read what a sync lane could take, then decide
                prefix, complete = await read_prefix(receive, entry.max_sync_bytes)
                size = len(prefix) if complete else max(len(prefix), entry.max_sync_bytes + 1)
            else:
                size = declared
            features = routing.features.extract(name, headers, size, zlib.crc32(request_id.encode()))
            signed = routing.features.signed_request(scope, headers)  # SigV4: checked once the body is known
            snap = runtime.tracker.snapshot(entry.routes.lanes, entry.routes.limits)
            route = routing.engine.decide(features, snap)
            if routing.shadows is not None and name in routing.shadows.models:
                routing.shadows.observe(features, snap, route)  # decided beside the live chain, never served
            decision = route.decision
            lane, reason, policy = decision.lane.value, decision.reason, decision.policy
            metrics.decisions(name, lane, reason).inc()
            if decision.deferred_from is not None:
                metrics.deferred(name, lane, decision.deferred_from).inc()
            if decision.lane is Lane.SHED:
                metrics.shed(name, reason).inc()
                raise RequestError(decision.status, "ThrottlingException" if decision.status == 429
                                   else "ServiceUnavailable",
                                   f"request shed by policy {decision.policy!r} ({reason}); retry later",
                                   retry_after_s=decision.retry_after_s)
            if response_stream:  # answered in this exchange or not at all: no job lanes
                route = Route(decision, tuple(h for h in route.hops if h.lane not in JOB_LANES))
            if not route.hops:
                raise RequestError(413, "ValidationError", "request body exceeds every lane's limit")
            first = route.hops[0]
            backend = first.backend
            if first.lane in JOB_LANES:  # straight to a job: the body streams to storage
                body_source = prefix if declared is None and complete else await self._job_body(receive, prefix,
                                                                                                  declared)
                raise _Accepted(await self._accept(headers, entry, features, first, body_source, trace,
                                                   signed=signed), first)
            body: bytes | RequestBody
            if signed is not None:  # the signature covers the body: read it whole before any backend sees it
                whole = prefix if declared is None else await read_body(receive, entry.max_sync_bytes)
                signed.verify_body(whole)
                body = whole
            else:
                body = prefix if declared is None else await self._sync_body(receive, declared, entry.max_sync_bytes)
            inv = self._invocation(scope, headers, body, proxy, trace)
            if response_stream:  # the model's Accept travels in a header of its own on this API
                inv = replace(inv, accept=headers.get("x-amzn-sagemaker-accept"), response_stream=True)
            deadline_at = (runtime.clock() + features.deadline_ms / 1000.0) if features.deadline_ms else None
            sync_hops = tuple(h for h in route.hops if h.lane not in JOB_LANES)
            job_hop = next((h for h in route.hops if h.lane in JOB_LANES), None)
            ticket = Ticket(features.priority, features.caller, routing.weight(features.caller),
                            lambda: gone_while_waiting(receive, body))
            try:
                outcome = await runtime.sync.serve(name, route if job_hop is None else Route(decision, sync_hops),
                                                   inv, features.priority, routing.targets, deadline_at, ticket)
            except SyncFailure as exc:
                if exc.reason == "client_gone":
                    raise ClientDisconnected from None
                deferrable = exc.reason in CAPACITY_REASONS
                job = job_after_failure(exc.reason, exc.error, job_hop, lambda: routing.engine.deferral(features))
                if job is None:
                    raise
                if job_hop is None:
                    reason = "deferred_saturated"
                job_hop = job
                last = exc.hop.backend if exc.hop else sync_hops[-1].backend
                metrics.fallbacks(name, last, job_hop.backend, exc.reason).inc()
                if deferrable:
                    metrics.deferred(name, job_hop.lane.value, exc.reason).inc()
                job_body = body.stream() if isinstance(body, RequestBody) else body
                raise _Accepted(await self._accept(headers, entry, features, job_hop, job_body, trace),
                                job_hop) from None
            lane, backend = outcome.hop.lane.value, outcome.hop.backend
            status = outcome.result.status
            waited = outcome.waited_s
            cold_start = outcome.cold_start
            own = _router_headers(request_id, lane, backend, reason)
            if response_stream:
                first_byte = await send_event_stream(send, receive, outcome.result, own)
            elif proxy is not None:
                if status == 404 and proxy.pattern.endswith("*"):
                    model_label = UNKNOWN_MODEL  # under a prefix, a 404 says the URL named no model the server has
                first_byte = await send_forwarded(send, receive, outcome.result, own)
            else:
                first_byte = time.perf_counter()
                await self._answer(send, outcome.result, own)
        except _Accepted as accepted:
            lane, backend = accepted.hop.lane.value, accepted.hop.backend
            status = await self._answer_job(send, accepted.job, features, request_id, lane, backend, reason)
        except RequestError as exc:
            status = exc.status
            await send_error(send, ErrorAnswer(exc.status, exc.error_type, exc.message, exc.retry_after_s,
                                               allow=allow if exc.status == 405 else None),
                             _router_headers(request_id, lane, backend, reason), request_id, protocol)
        except SyncFailure as exc:
            if exc.hop is not None:
                lane, backend = exc.hop.lane.value, exc.hop.backend
            own = _router_headers(request_id, lane, backend, reason)
            passed = _passed_on(exc.error) if proxy is not None else None
            if passed is not None:  # the model server's own error, unchanged (SageMaker's translation is not
                status = passed.status  # for clients of another protocol)
                if status == 404 and proxy is not None and proxy.pattern.endswith("*"):
                    model_label = UNKNOWN_MODEL
                first_byte = await send_forwarded(send, receive, passed, own)
            else:
                answer = from_failure(exc)
                status = answer.status
                await send_error(send, answer, own, request_id, protocol)
        except CallerGone:
            status = 499  # nginx's code for a client that went away; nothing can be sent
        except AnswerCut as exc:
            log.warning("answer_cut", request_id=request_id, model=model_label, backend=backend, error=str(exc))
        except Exception:
            log.exception("request_failed", request_id=request_id, model=model_label)
            status = 500
            await send_error(send, ErrorAnswer(500, "InternalFailure", "internal error in the router"),
                             _router_headers(request_id, lane, backend, reason), request_id, protocol)
        finally:
            now = time.perf_counter()
            elapsed = now - started
            metrics.requests(model_label, lane, backend, str(status)).inc()
            metrics.duration(model_label, lane).observe(elapsed)
            if first_byte is not None:
                metrics.first_byte(model_label, lane).observe(first_byte - started)
            # the status page's ring: a plain tuple (a DecisionRecord when read), one append
            runtime.recent.append((time.time(), request_id, model_label, lane, backend, reason, policy, status, elapsed,
                                   features.urgency if features else None, features.caller if features else None,
                                   features.payload_bytes if features else None))
            if routing.config.server.access_log:
                duration_ms = round(elapsed * 1000.0, 3)
                queue_wait_ms = round(waited * 1000.0, 3) if waited else None
                arrival = round(arrival, 6)
                if features is None:
                    line = RequestLine(request_id, trace.trace_id, model_label, lane, backend, reason, status,
                                       duration_ms, None, None, None, arrival, None, None, None, None, queue_wait_ms,
                                       None)
                else:
                    line = RequestLine(request_id, trace.trace_id, model_label, lane, backend, reason, status,
                                       duration_ms, features.caller, features.urgency, features.payload_bytes,
                                       arrival, features.content_type, features.deadline_ms, features.accepts_async,
                                       features.wait_s, queue_wait_ms, True if cold_start else None)
                ACCESS_LOG.write(line)
            request_trace_id.reset(trace_token)

    async def _control(self, scope: Any, receive: Any, send: Any, rule: PathRule) -> None:
        """A control endpoint (health, readiness, metadata): to the model's real-time backend as it came, without
        routing, a slot or an inference count; counted in ``router_control_requests_total``."""
        started = time.perf_counter()
        runtime = self.runtime
        routing = runtime.routing
        headers, request_id, trace = _identify(scope)
        entry = routing.models[rule.model]
        backend = entry.control_backend or "none"
        target = routing.targets.get(backend)
        own = _router_headers(request_id, "control", backend, "control")
        status = 500
        try:
            if target is None:
                raise RequestError(503, "ServiceUnavailable", "the model's backend is not running", retry_after_s=1.0)
            body = await read_body(receive, entry.max_sync_bytes)
            result = await target.backend.invoke(self._invocation(scope, headers, body, rule, trace))
            status = result.status
            await send_forwarded(send, receive, result, own)
        except BackendError as exc:
            passed = _passed_on(exc)
            if passed is not None:
                status = passed.status
                await send_forwarded(send, receive, passed, own)
            else:
                status = 504 if exc.retryable and exc.kind.value == "timeout" else 503
                await send_error(send, ErrorAnswer(status, "ServiceUnavailable", exc.message), own, request_id,
                                 rule.protocol)
        except RequestError as exc:
            status = exc.status
            await send_error(send, ErrorAnswer(exc.status, exc.error_type, exc.message, exc.retry_after_s), own,
                             request_id, rule.protocol)
        except CallerGone:
            status = 499
        except AnswerCut as exc:
            log.warning("answer_cut", request_id=request_id, model=rule.model, backend=backend, error=str(exc))
        finally:
            runtime.metrics.control_requests(rule.model, str(status)).inc()
            if routing.config.server.access_log:
                log.info("request", request_id=request_id, trace_id=trace.trace_id, model=rule.model, lane="control",
                         backend=backend, reason="control", status=status,
                         duration_ms=round((time.perf_counter() - started) * 1000.0, 3))

    # --- jobs -----------------------------------------------------------------------------------

    def _job_lane(self) -> JobLane:
        lane = self.runtime.job_lane
        if lane is None:
            raise RequestError(503, "ServiceUnavailable", "the async lane is not running", retry_after_s=5.0)
        return lane

    def _lane_of(self, job: Job) -> JobLane | BatchLane:
        if job.spec.lane == Lane.BATCH.value and self.runtime.batch_lane is not None:
            return self.runtime.batch_lane
        return self._job_lane()

    async def _accept(self, headers: dict[str, str], entry: ModelEntry, features: RequestFeatures, hop: Hop,
                      body: bytes | AsyncIterator[bytes], trace: TraceContext, *, content_type: str | None = None,
                      accept: str | None = None, existing: StoredObject | None = None,
                      signed: SignedRequest | None = None) -> Job:
        """Store the job durably; 413 past the lane's limit, 503 when storage fails (never a 202 then); 403 for a
        SigV4 signature that does not cover the body (a streamed body is checked before the job is recorded)."""
        limit = entry.routes.limits.get(hop.lane, 0)
        callback = self._callback_url(headers)
        if signed is not None and isinstance(body, bytes):
            signed.verify_body(b"" if existing is not None else body)
            signed = None
        if hop.lane is Lane.BATCH:
            return await self._accept_batch(headers, entry, features, body, limit, callback, signed)
        try:
            return await self._job_lane().accept(
                lane=hop.lane, model=entry.name, tenant=features.caller, priority=features.priority, body=body,
                limit=limit, content_type=content_type or headers.get("content-type"),
                accept=accept or headers.get("accept"),
                custom_attributes=headers.get("x-amzn-sagemaker-custom-attributes"),
                inference_id=headers.get("x-amzn-sagemaker-inference-id"), existing=existing,
                callback_url=callback, traceparent=trace.traceparent,
                verify=(lambda stored: signed.verify(stored.sha256)) if signed is not None else None)
        except ObjectTooLarge:
            raise RequestError(413, "ValidationError", f"request body exceeds the {hop.lane} lane's limit of "
                               f"{limit} bytes") from None
        except StorageError as exc:
            log.warning("job_not_stored", model=entry.name, error=str(exc))
            raise RequestError(503, "ServiceUnavailable", "the job could not be stored; nothing was accepted",
                               retry_after_s=2.0) from None

    async def _accept_batch(self, headers: dict[str, str], entry: ModelEntry, features: RequestFeatures,
                            body: bytes | AsyncIterator[bytes], limit: int, callback: str | None,
                            signed: SignedRequest | None = None) -> Job:
        """Append the request's records to the model's batch buffer: 400 naming a bad line, 413, or 503."""
        lane = self.runtime.batch_lane
        if lane is None:
            raise RequestError(503, "ServiceUnavailable", "the batch lane is not running", retry_after_s=5.0)
        content_type = headers.get("content-type")
        fmt = record_format(content_type)
        if fmt is None:
            raise RequestError(415, "ValidationError", f"batch records cannot be read from {content_type!r}: use "
                               "text/csv, application/jsonlines or application/json with an instances array")
        if not isinstance(body, bytes):
            chunks: list[bytes] = []
            size = 0
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, "ValidationError", f"request body exceeds the batch lane's limit of "
                                       f"{limit} bytes")
                chunks.append(chunk)
            body = b"".join(chunks)
            if signed is not None:
                signed.verify_body(body)
        try:
            return await lane.accept(model=entry.name, tenant=features.caller, priority=features.priority, body=body,
                                     fmt=fmt, content_type=content_type, accept=headers.get("accept"),
                                     callback_url=callback)
        except RecordError as exc:
            raise RequestError(400, "ValidationError", f"record does not parse as {fmt.value}: {exc}") from None
        except StorageError as exc:
            log.warning("batch_not_stored", model=entry.name, error=str(exc))
            raise RequestError(503, "ServiceUnavailable", "the records could not be stored; nothing was accepted",
                               retry_after_s=2.0) from None

    async def _answer_job(self, send: Any, job: Job, features: RequestFeatures | None, request_id: str,
                          lane: str, backend: str, reason: str) -> int:
        """202 + Location, or with ``Prefer: wait=N`` the result itself if the job finished in time."""
        job_lane = self._lane_of(job)
        if features is not None and features.wait_s:
            finished = await job_lane.wait(job.job_id, min(features.wait_s, 60.0))
            if finished is not None and finished.status is JobStatus.SUCCEEDED and finished.result_key:
                try:
                    body = await job_lane.objects.get(finished.result_key)
                except StorageError:
                    body = None
                if body is not None:
                    await self._answer(send, InvocationResult(body, finished.result_content_type),
                                       _router_headers(request_id, lane, backend, reason))
                    return 200
            job = finished or job
        url = job_url(job.job_id)
        out = _router_headers(request_id, lane, backend, reason)
        out += [_JSON, (b"location", url.encode()), (b"retry-after", b"1")]
        body = _encode({"job_id": job.job_id, "lane": job.spec.lane, "status_url": url, "status": job.status.value})
        await send({"type": "http.response.start", "status": 202, "headers": out})
        await send({"type": "http.response.body", "body": body})
        return 202

    async def _job_body(self, receive: Any, prefix: bytes, declared: int | None) -> bytes | AsyncIterator[bytes]:
        """A job's body: read whole when its declared length is small enough to be stored with the job,
        else streamed to storage as it arrives."""
        lane = self.runtime.job_lane
        if not prefix and declared is not None and lane is not None and declared <= lane.jobs.inline_max:
            return await read_body(receive, declared)
        return rest_of_body(receive, prefix)

    async def _serve_async_invocation(self, scope: Any, receive: Any, send: Any, headers: dict[str, str],
                                      entry: ModelEntry, request_id: str, trace: TraceContext) -> int:
        """InvokeEndpointAsync: inline body (staged in storage) or X-Amzn-SageMaker-InputLocation (aws mode)."""
        hop_backend = entry.routes.lanes.get(Lane.ASYNC)
        if hop_backend is None:
            raise RequestError(400, "ValidationError", "this model has no async lane")
        routing = self.runtime.routing
        declared = self._declared_length(headers, entry.routes.limits.get(Lane.ASYNC, 0))
        features = routing.features.extract(entry.name, headers, declared or 0)
        signed = routing.features.signed_request(scope, headers)
        existing = await self._input_location(headers.get("x-amzn-sagemaker-inputlocation"), entry)
        hop = Hop(Lane.ASYNC, hop_backend)
        body = b"" if existing is not None else await self._job_body(receive, b"", declared)
        job = await self._accept(headers, entry, features, hop, body, trace,
                                 content_type=headers.get("x-amzn-sagemaker-content-type"),
                                 accept=headers.get("x-amzn-sagemaker-accept"), existing=existing, signed=signed)
        origin = _origin(scope, headers)
        url = job_url(job.job_id)
        out = _router_headers(request_id, "async", hop_backend, "async_invocation")
        out += [_JSON, (b"location", url.encode()),
                (b"x-amzn-sagemaker-outputlocation", f"{origin}{url}/result".encode()),
                (b"x-amzn-sagemaker-failurelocation", f"{origin}{url}/error".encode())]
        # SageMaker echoes the client's InferenceId, else makes one; the job id is the router's own
        inference_id = headers.get("x-amzn-sagemaker-inference-id") or job.job_id
        body = _encode({"InferenceId": inference_id, "job_id": job.job_id, "lane": "async", "status_url": url})
        await send({"type": "http.response.start", "status": 202, "headers": out})
        await send({"type": "http.response.body", "body": body})
        return 202

    def _callback_url(self, headers: dict[str, str]) -> str | None:
        """The client's callback URL; 400 unless webhooks are on and the allow-list has it."""
        routing = self.runtime.routing
        try:
            return requested_callback(headers, routing.config.webhooks, routing.callbacks)
        except ValueError as exc:
            raise RequestError(400, "ValidationError", str(exc)) from None

    async def _input_location(self, location: str | None, entry: ModelEntry) -> StoredObject | None:
        """An ``s3://`` InputLocation inside the configured bucket and prefix, as a stored object; 400 else."""
        if not location:
            return None
        state = self.runtime.routing.config.state
        if not isinstance(state, AwsStateConfig):
            raise RequestError(400, "ValidationError", "X-Amzn-SageMaker-InputLocation needs state kind aws; "
                               "send the payload inline as the request body")
        scheme, _, rest = location.partition("://")
        bucket, _, key = rest.partition("/")
        if scheme != "s3" or bucket != state.bucket or not key.startswith(state.prefix) or ".." in key.split("/"):
            raise RequestError(400, "ValidationError", f"InputLocation must be an s3:// URI under "
                               f"s3://{state.bucket}/{state.prefix}")
        relative = key[len(state.prefix):]
        try:
            size = await self._job_lane().objects.size(relative)
        except (StorageError, ValueError):
            size = None
        if size is None:
            raise RequestError(400, "ValidationError", "InputLocation does not name an object the router can read")
        if size > entry.routes.limits.get(Lane.ASYNC, 0):
            raise RequestError(413, "ValidationError", "the InputLocation object exceeds the async lane's limit")
        return StoredObject(relative, size, "")

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _declared_length(headers: dict[str, str], limit: int) -> int | None:
        """Content-Length, checked before a byte is read: 400 if malformed, 413 over ``limit``."""
        raw = headers.get("content-length")
        if raw is None:
            return None
        declared = parse_uint(raw, max_digits=24)
        if declared is None:
            raise RequestError(400, "ValidationError", "invalid Content-Length header")
        if declared > limit:
            raise RequestError(413, "ValidationError", f"request body of {declared} bytes exceeds the "
                               f"limit of {limit} bytes")
        return declared

    @staticmethod
    async def _sync_body(receive: Any, declared: int, limit: int) -> bytes | RequestBody:
        """A sync lane's body: bytes when it came in one piece, else read while the backend call sends it."""
        if declared > limit:
            raise RequestError(413, "ValidationError", f"request body exceeds this model's limit of {limit} bytes")
        chunk, complete = await first_chunk(receive)
        return chunk if complete else RequestBody(receive, chunk, declared)

    def _invocation(self, scope: Any, headers: dict[str, str], body: bytes | RequestBody, proxy: PathRule | None,
                    trace: TraceContext) -> Invocation:
        stream = body.stream if isinstance(body, RequestBody) else None
        size = body.size if isinstance(body, RequestBody) else None
        data = b"" if isinstance(body, RequestBody) else body
        if proxy is not None:  # as it came: method, path, query, end-to-end headers
            raw = scope.get("raw_path") or scope["path"].encode()
            query = scope.get("query_string") or b""
            return Invocation(
                body=data, stream=stream, size=size, method=scope["method"],
                path=raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else ""),
                forward_headers=request_headers(scope["headers"], self.runtime.routing.strip_headers),
                content_type=headers.get("content-type"), accept=headers.get("accept"),
                headers=trace.headers(),
            )
        return Invocation(
            body=data,
            stream=stream,
            size=size,
            content_type=headers.get("content-type"),
            accept=headers.get("accept"),
            custom_attributes=headers.get("x-amzn-sagemaker-custom-attributes"),
            target_variant=headers.get("x-amzn-sagemaker-target-variant"),
            inference_id=headers.get("x-amzn-sagemaker-inference-id"),
            headers=_upstream_headers(headers, trace),
        )

    @staticmethod
    async def _answer(send: Any, result: InvocationResult, out: Headers) -> None:
        """An InvokeEndpoint answer, in SageMaker Runtime's shape."""
        out.append((b"content-type", (result.content_type or "application/octet-stream").encode("latin-1")))
        if result.invoked_variant:
            out.append((b"x-amzn-invoked-production-variant", result.invoked_variant.encode("latin-1")))
        if result.custom_attributes:
            out.append((b"x-amzn-sagemaker-custom-attributes", result.custom_attributes.encode("latin-1")))
        if result.content_encoding:
            out.append((b"content-encoding", result.content_encoding.encode("latin-1")))
        await send({"type": "http.response.start", "status": result.status, "headers": out})
        await send({"type": "http.response.body", "body": result.body})


def _passed_on(error: BackendError | None) -> InvocationResult | None:
    """A backend's error as the client of a forwarded path gets it: the model server's own answer, or for a
    SageMaker backend the model's original status and message; None when there was no answer (timeout...)."""
    if error is None:
        return None
    if error.answer is not None:
        return error.answer
    if error.original_status is not None and error.original_message is not None:
        return InvocationResult(error.original_message.encode(), "text/plain; charset=utf-8", error.original_status)
    return None
