"""``http`` backend: any model server, over one shared aiohttp keep-alive pool."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from router.headers import answer_headers
from router.types import BackendError, CallerGone, FailureKind, Invocation, InvocationResult, StreamBroken

MAX_ERROR_TEXT = 1024
# A forwarded answer of known length up to this is read whole and sent in one piece; larger ones, and answers
# without a length (chunked, server-sent events), stream to the client as they arrive.
WHOLE_ANSWER_MAX = 256 * 1024
# aiohttp adds these unless told not to: a forwarded request carries the client's own, or none
_NOT_AUTOMATIC = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
_DECODABLE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decode_body(body: bytes, encoding: str | None) -> bytes | None:
    """``body`` without its gzip/deflate content coding (None: an encoding we cannot undo, or corrupt bytes)."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    wbits = _DECODABLE.get(encoding.strip().lower())
    if wbits is None:
        return None
    try:
        return zlib.decompress(body, wbits)
    except zlib.error:
        if wbits == zlib.MAX_WBITS:  # "deflate" is sometimes sent raw, without the zlib wrapper
            try:
                return zlib.decompress(body, -zlib.MAX_WBITS)
            except zlib.error:
                return None
        return None


def failure_kind(status: int) -> FailureKind:
    """How a non-2xx answer of a model server counts: busy, down, broken, or unhappy with the input."""
    if status == 429:
        return FailureKind.THROTTLED
    if status in (502, 503, 504):
        return FailureKind.UNAVAILABLE
    if status >= 500:
        return FailureKind.SERVER_ERROR
    return FailureKind.MODEL_ERROR


class ResponseStream:
    """A forwarded answer's body as it arrives; releases the connection at the end (or closes it if cut short)."""

    __slots__ = ("_done", "_first", "_resp")

    def __init__(self, resp: aiohttp.ClientResponse, first: bytes = b"") -> None:
        self._resp = resp
        self._first = first  # already read (a response stream's first byte)
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self._first:
                yield self._first
            async for chunk in self._resp.content.iter_any():
                yield chunk
            self._done = True
        except TimeoutError:
            raise StreamBroken(FailureKind.TIMEOUT, "ModelInvocationTimeExceeded",
                               "the model sent nothing for longer than the backend's timeout") from None
        except aiohttp.ClientError as exc:
            raise StreamBroken(FailureKind.CONNECTION, "StreamBroken",
                               f"the model's answer broke off: {type(exc).__name__}") from None
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._done:
            self._resp.release()
        else:
            self._resp.close()  # unread bytes would poison a kept-alive connection


def _caller_gone(exc: BaseException) -> bool:
    """Whether a failed upload failed because the client stopped sending (aiohttp wraps the body's error)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, CallerGone):
            return True
        cause = cause.__cause__
    return False


class HttpBackend:
    """POSTs the body to ``url`` (the SageMaker container contract's ``/invocations``, or any URL).

    Requests that came in on a model's extra path (KServe, TorchServe...) are forwarded with their
    path and query as they came, to the same scheme, host and port.
    """

    def __init__(
        self,
        name: str,
        url: str,
        session: Callable[[], aiohttp.ClientSession],
        *,
        timeout_s: float = 60.0,
        headers: Mapping[str, str] | None = None,
        variant: str | None = None,
    ) -> None:
        self.name = name
        self._url = url
        parts = urlsplit(url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._session = session
        self._timeout_s = timeout_s
        # aiohttp runs its own timer per request; reuse one ClientTimeout rather than add asyncio.timeout()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # forwarded answers: no total (a stream may last), but never longer than the timeout between two reads
        self._read_timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_s)
        self._headers = dict(headers or {})
        self._variant = variant or name

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def invoke(self, inv: Invocation) -> InvocationResult:
        if inv.method is not None or inv.response_stream:
            return await self._forward(inv)
        headers = dict(self._headers)
        if inv.content_type:
            headers["Content-Type"] = inv.content_type
        if inv.accept:
            headers["Accept"] = inv.accept
        if inv.custom_attributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = inv.custom_attributes
        if inv.inference_id:
            headers["X-Amzn-SageMaker-Inference-Id"] = inv.inference_id
        headers.update(inv.headers)
        # Never advertise an encoding on our own: the client's Accept-Encoding (in inv.headers) or none at all,
        # so an answer comes back encoded only where the client can decode it.
        if not any(k.lower() == "accept-encoding" for k in inv.headers):
            headers["Accept-Encoding"] = "identity"
            client_decodes = False
        else:
            client_decodes = True
        url = self._url if inv.path is None else self._origin + inv.path
        timeout = self._timeout
        if inv.job_timeout_s is not None:
            timeout = aiohttp.ClientTimeout(total=inv.job_timeout_s)
        elif inv.timeout_s is not None and inv.timeout_s < self._timeout_s:
            timeout = aiohttp.ClientTimeout(total=max(inv.timeout_s, 0.001))
        data: bytes | AsyncIterator[bytes] = inv.body
        if inv.stream is not None:  # a large job payload, sent as it is read from storage
            data = inv.stream()
            if inv.size is not None:
                headers["Content-Length"] = str(inv.size)
        try:
            async with self._session().post(url, data=data, headers=headers, timeout=timeout) as resp:
                body = await resp.read()
                status = resp.status
                content_type = resp.headers.get("Content-Type")
                custom = resp.headers.get("X-Amzn-SageMaker-Custom-Attributes")
                encoding = resp.headers.get("Content-Encoding")
                load = resp.headers.get("endpoint-load-metrics")
        except TimeoutError:
            raise BackendError(FailureKind.TIMEOUT,
                               f"{self.name} did not answer within {timeout.total:g}s") from None
        except aiohttp.ClientError as exc:
            raise BackendError(FailureKind.CONNECTION, f"{self.name} connection failed: {type(exc).__name__}") from None
        if encoding is not None and encoding.strip().lower() == "identity":
            encoding = None
        if 200 <= status < 300:
            if encoding is not None and not client_decodes:
                # A server that encodes although nobody asked: decode here, the caller has no header to carry it
                decoded = decode_body(body, encoding)
                if decoded is None:
                    raise BackendError(FailureKind.SERVER_ERROR, f"{self.name} answered with content encoding "
                                       f"{encoding!r}, which was not asked for and cannot be decoded", status=502)
                body, encoding = decoded, None
            return InvocationResult(body, content_type, status, self._variant, custom, encoding, load)
        plain = decode_body(body, encoding)  # error text is read by people: never show them compressed bytes
        text = (plain if plain is not None else body)[:MAX_ERROR_TEXT].decode("utf-8", "replace")
        side = "server" if status >= 500 else "client"
        raise BackendError(
            failure_kind(status),
            f'Received {side} error ({status}) from {self.name} with message "{text[:200]}"',
            status=status,
            original_status=status,
            original_message=text,
        )

    async def _forward(self, inv: Invocation) -> InvocationResult:
        """A request as it came (method, path, query, headers, body) to this server, or a response-stream call to
        its URL; the answer as it comes back. An error answer is read whole and raised, so the sync lane can fall
        back, then passed on as is. A response stream returns once its first byte is here."""
        if inv.method is not None:
            configured = {k.lower() for k in self._headers}
            headers = [(k, v) for k, v in inv.forward_headers if k not in configured]
            headers += list(self._headers.items())
            url = URL(self._origin + (inv.path or "/"), encoded=True)  # the path and query exactly as they came
        else:  # InvokeEndpointWithResponseStream: the container contract's POST, its answer relayed in parts
            headers = list(self._headers.items())
            for name, value in (("Content-Type", inv.content_type), ("Accept", inv.accept),
                                ("X-Amzn-SageMaker-Custom-Attributes", inv.custom_attributes),
                                ("X-Amzn-SageMaker-Inference-Id", inv.inference_id)):
                if value:
                    headers.append((name, value))
            url = URL(self._url, encoded=True)
        headers += list(inv.headers.items())
        data: bytes | AsyncIterator[bytes] | None = inv.body or None
        if inv.stream is not None:
            data = inv.stream()
            if inv.size is not None:
                headers.append(("Content-Length", str(inv.size)))
        # The answer's head must come within the backend's timeout (or the client's deadline); its body may
        # take longer, but never more than the timeout between two reads.
        limit = self._timeout_s if inv.timeout_s is None else max(min(inv.timeout_s, self._timeout_s), 0.001)
        if inv.job_timeout_s is not None:
            limit = inv.job_timeout_s
        timeout = self._read_timeout if inv.job_timeout_s is None else aiohttp.ClientTimeout(
            total=None, sock_read=max(limit, self._timeout_s))
        try:
            async with asyncio.timeout(limit):
                resp = await self._session().request(inv.method or "POST", url, data=data, headers=headers,
                                                     timeout=timeout, allow_redirects=False,
                                                     skip_auto_headers=_NOT_AUTOMATIC)
                status = resp.status
                out = answer_headers(resp.raw_headers)
                length = resp.content_length
                whole = status >= 400 or inv.method == "HEAD" or (
                    not inv.response_stream and length is not None and length <= WHOLE_ANSWER_MAX)
                if whole:
                    try:
                        body = await resp.read()
                    finally:
                        resp.release()
                elif inv.response_stream:  # the first byte within the deadline, or a failure to fall back from
                    try:
                        first = await resp.content.readany()
                    except BaseException:
                        resp.close()
                        raise
        except TimeoutError:
            raise BackendError(FailureKind.TIMEOUT, f"{self.name} did not answer within {limit:g}s") from None
        except aiohttp.ClientError as exc:
            if _caller_gone(exc):
                raise CallerGone from None
            raise BackendError(FailureKind.CONNECTION, f"{self.name} connection failed: {type(exc).__name__}") from None
        content_type = resp.headers.get("Content-Type")
        if status >= 400:
            answer = InvocationResult(body, content_type, status, headers=out)
            text = body[:MAX_ERROR_TEXT].decode("utf-8", "replace")
            raise BackendError(failure_kind(status), f"{self.name} answered {status}", status=status,
                               original_status=status, original_message=text, answer=answer)
        if whole:
            return InvocationResult(body, content_type, status, self._variant, headers=out)
        stream = ResponseStream(resp, first if inv.response_stream else b"")
        return InvocationResult(b"", content_type, status, self._variant,
                                resp.headers.get("X-Amzn-SageMaker-Custom-Attributes"), headers=out, stream=stream)
