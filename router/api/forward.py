"""The forwarding half of the data plane: a client's body on its way to a backend, answers streamed back as
they arrive, errors passed on as the model server gave them or shaped like its protocol's.

Nothing here decides anything: the data plane routes, the sync lane calls, this moves bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from router import eventstream
from router.api.errors import ErrorAnswer
from router.protocols import error_body
from router.types import AnswerStream, CallerGone, InvocationResult, StreamBroken

Headers = list[tuple[bytes, bytes]]
_JSON = (b"content-type", b"application/json")


class AnswerCut(Exception):
    """The backend broke off an answer already under way: the client's connection is cut (the only way HTTP/1.1
    can tell it the body is incomplete); nothing else can be sent."""


class RequestBody:
    """A client's body read while a backend call sends it, so the call starts before the last byte arrives.

    What was read is kept: a fallback to the next backend, or to a job lane, sends it again (the router held
    whole sync bodies before; now it holds them while they travel). Bounded by the sync lanes' limit, which
    the declared ``Content-Length`` was checked against.
    """

    __slots__ = ("_chunks", "_done", "_receive", "size")

    def __init__(self, receive: Any, first: bytes, size: int) -> None:
        self._receive = receive
        self._chunks = [first] if first else []
        self._done = False
        self.size = size

    def stream(self) -> AsyncIterator[bytes]:
        """One pass over the body: what was read so far, then the rest as it arrives."""
        return self._pass()

    async def _pass(self) -> AsyncIterator[bytes]:
        i = 0
        while True:
            while i < len(self._chunks):
                yield self._chunks[i]
                i += 1
            if self._done:
                return
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise CallerGone
            chunk = message.get("body", b"")
            if chunk:
                self._chunks.append(chunk)
            if not message.get("more_body", False):
                self._done = True


async def first_chunk(receive: Any) -> tuple[bytes, bool]:
    """The first piece of the body, and whether it was all of it (small bodies come in one piece)."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise CallerGone
    return message.get("body", b""), not message.get("more_body", False)


async def disconnected(receive: Any) -> None:
    """Returns when the client goes away (the body was read: nothing else arrives before that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def gone_while_waiting(receive: Any, body: bytes | RequestBody) -> None:
    """Returns (or raises CallerGone) when the client goes away while its request waits for a backend slot.
    The rest of a body still arriving is read meanwhile, and kept for the call."""
    if isinstance(body, RequestBody):
        async for _ in body.stream():
            pass
    await disconnected(receive)


async def send_forwarded(send: Any, receive: Any, result: InvocationResult, own: Headers) -> float:
    """A forwarded answer: its status, its end-to-end headers plus the router's ``own``, and its body, whole or
    chunk by chunk as the backend produces it. Returns when the first body byte went out (perf_counter)."""
    if result.headers is not None:
        headers = own + list(result.headers)
    else:  # a backend that is no HTTP proxy (SageMaker): what it told us
        headers = own
        if result.content_type:
            headers.append((b"content-type", result.content_type.encode("latin-1")))
    await send({"type": "http.response.start", "status": result.status, "headers": headers})
    stream = result.stream
    if stream is None:
        first = time.perf_counter()
        await send({"type": "http.response.body", "body": result.body})
        return first
    return await pump(send, receive, stream)


async def pump(send: Any, receive: Any, stream: AnswerStream, frame: Callable[[bytes], bytes] | None = None,
               last_words: Callable[[Exception], bytes] | None = None) -> float:
    """Send ``stream`` to the client as it arrives (each chunk through ``frame``, if given); stop reading it
    (closing the upstream call) if the client goes away, and raise :class:`CallerGone` then. A stream that
    breaks off ends with ``last_words(error)`` if given, else the client's connection is cut
    (:class:`AnswerCut`). Returns when the first byte went out.

    The relay runs in the request's own task, so the first chunk (which backends hold already when they
    return) leaves in the same step as the head; only the watch for a departing client is a task of its own,
    and it cancels the relay."""
    relaying = asyncio.current_task()
    assert relaying is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await disconnected(receive)
        gone = True
        relaying.cancel()

    watching = asyncio.ensure_future(watch())
    first_at = 0.0
    try:
        try:
            try:
                async for chunk in stream:
                    if not first_at:
                        first_at = time.perf_counter()
                    await send({"type": "http.response.body", "body": frame(chunk) if frame else chunk,
                                "more_body": True})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if last_words is None:
                    raise AnswerCut(type(exc).__name__) from exc
                await send({"type": "http.response.body", "body": last_words(exc), "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            watching.cancel()  # before any other await: the answer's end also ends uvicorn's receive()
            await stream.aclose()
    except asyncio.CancelledError:
        if not gone:
            raise
        relaying.uncancel()
        raise CallerGone from None
    return first_at or time.perf_counter()


def _stream_error_event(exc: Exception) -> bytes:
    """How a response stream that broke off ends for a SageMaker client: the event its SDK raises."""
    if isinstance(exc, StreamBroken):
        if exc.code == "InternalStreamFailure":
            return eventstream.internal_stream_failure(exc.message)
        return eventstream.model_stream_error(exc.message, exc.code)
    return eventstream.internal_stream_failure("the router failed while relaying the stream")


async def send_event_stream(send: Any, receive: Any, result: InvocationResult, own: Headers) -> float:
    """InvokeEndpointWithResponseStream's answer: one ``PayloadPart`` event per chunk the model produced, as it
    comes; a failure mid-stream ends it with a ``ModelStreamError`` or ``InternalStreamFailure`` event."""
    headers = [*own, (b"content-type", b"application/vnd.amazon.eventstream")]
    if result.content_type:
        headers.append((b"x-amzn-sagemaker-content-type", result.content_type.encode("latin-1")))
    if result.invoked_variant:
        headers.append((b"x-amzn-invoked-production-variant", result.invoked_variant.encode("latin-1")))
    if result.custom_attributes:
        headers.append((b"x-amzn-sagemaker-custom-attributes", result.custom_attributes.encode("latin-1")))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if result.stream is None:
        first = time.perf_counter()
        await send({"type": "http.response.body", "body": eventstream.payload_part(result.body)})
        return first
    return await pump(send, receive, result.stream, eventstream.payload_part, _stream_error_event)


async def send_error(send: Any, answer: ErrorAnswer, own: Headers, request_id: str, protocol: str | None) -> None:
    """The router's own error: in the protocol's shape on its paths, SageMaker's elsewhere."""
    body = error_body(protocol, answer.status, answer.error_type, answer.message, request_id)
    if body is None:
        body = answer.body(request_id)
    headers = [*own, _JSON, (b"x-amzn-errortype", answer.error_type.encode())]
    if answer.allow:
        headers.append((b"allow", answer.allow.encode()))
    if answer.retry_after_s is not None:
        headers.append((b"retry-after", str(max(1, round(answer.retry_after_s))).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
