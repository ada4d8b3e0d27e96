"""``http`` backend: any model server, over one shared aiohttp keep-alive pool."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp

from router.types import BackendError, FailureKind, Invocation, InvocationResult

MAX_ERROR_TEXT = 1024
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
        self._headers = dict(headers or {})
        self._variant = variant or name

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def invoke(self, inv: Invocation) -> InvocationResult:
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
