"""Connection limits the HTTP server enforces before any request reaches the app: header size and header
time (431, 408), a body that stalls or trickles (408), idle keep-alive, and the number of open connections.

uvicorn with httptools bounds none of the first three (llhttp keeps buffering an unfinished header, and
nothing times out a client that never finishes one), so they are enforced in its protocol, where the bytes
arrive: ``limited_protocol`` returns a subclass of uvicorn's ``HttpToolsProtocol``. The common path stays as
cheap as before: a request whose head arrives in one read costs one addition and one comparison; timers
exist only for connections that have not sent a complete head (every new connection, until it does) or
whose body is still arriving after a read. Slow bodies follow Kestrel's rule: after a grace period the
body must have arrived at ``min_body_rate`` on average, and never pause for longer than the grace period;
time the server itself stops reading (flow control) does not count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("router.http")

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The limits (``server.*`` in the config); see the README's Operating section for the defaults' reasons."""

    max_header_bytes: int = 64 * 1024  # request line + headers; 431 beyond (Envoy: 60 KiB, Kestrel: 32 KiB)
    header_timeout_s: float = 10.0  # a request's head must be complete this long after it started; 408
    body_timeout_s: float = 10.0  # grace period of a body, and the longest pause in one; 408
    min_body_rate: int = 1000  # bytes/s a body must average once the grace period is over; 408
    keepalive_timeout_s: float = 75.0  # an idle keep-alive connection is closed after this (above ALB's 60 s)
    max_connections: int = 4096  # open connections; one more is answered 503 and closed


LINGER_S = 1.0  # after an error answer, how long a connection's remaining input is read and discarded
_STATUS = {408: b"408 Request Timeout", 431: b"431 Request Header Fields Too Large", 503: b"503 Service Unavailable"}


def raw_error(status: int, message: str, error_type: str) -> bytes:
    """A whole HTTP/1.1 error answer in SageMaker's shape, for when no app has the connection."""
    body = _encode({"message": message})
    return b"".join([
        b"HTTP/1.1 ", _STATUS[status], b"\r\ncontent-type: application/json\r\nx-amzn-errortype: ",
        error_type.encode(), b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n",
        body])


def limited_protocol(limits: Callable[[], HttpLimits], on_reject: Callable[[str], None] | None = None,
                     draining: Callable[[], bool] | None = None) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits()`` (read once per connection) enforced; ``on_reject(reason)``
    is told of every connection closed for one (reasons: header_too_large, header_timeout, body_timeout,
    too_many_connections). While ``draining()``, answers carry ``Connection: close``."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.limits = limits()
            self.timeout_keep_alive = self.limits.keepalive_timeout_s  # type: ignore[assignment]  # any float
            self._timer: asyncio.TimerHandle | None = None
            self._in_body = False
            self._head_bytes = 0  # bytes read since the last complete head (the head being received)
            self._head_since = 0.0  # when the head being received started
            self._body_bytes = 0
            self._body_since = 0.0  # start of the body's rate window
            self._body_last = 0.0  # when body bytes last arrived
            self._rejected = False

        # --- uvicorn's protocol ----------------------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > self.limits.max_connections:
                self._reject(503, "too_many_connections", "ServiceUnavailable",
                             "the router has too many open connections; retry later")
                return
            self._head_since = self.loop.time()
            self._timer = self.loop.call_at(self._head_since + self.limits.header_timeout_s, self._head_timed_out)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timer()
            super().connection_lost(exc)

        def eof_received(self) -> None:
            if self._rejected:  # the client is done too: nothing is left to linger for
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._rejected:
                return
            in_body = self._in_body
            if not in_body:
                if not self._head_bytes and self._timer is None:
                    self._head_since = self.loop.time()  # the first bytes of the next request's head
                self._head_bytes += len(data)
            super().data_received(data)
            if self._rejected or self.transport.is_closing():
                return
            if self._in_body:
                if in_body:
                    self._body_bytes += len(data)
                    self._body_last = self.loop.time()
                if self._timer is None:  # a body still arriving after this read: check its pace from now on
                    self._timer = self.loop.call_later(self.limits.body_timeout_s, self._check_body)
            elif self._head_bytes > self.limits.max_header_bytes:
                self._too_large()
            elif self._head_bytes and self._timer is None:  # an unfinished head: it has until its deadline
                self._timer = self.loop.call_at(self._head_since + self.limits.header_timeout_s,
                                                self._head_timed_out)

        def on_headers_complete(self) -> None:
            if self._rejected:
                return
            if self._head_bytes > self.limits.max_header_bytes and self._exact_head_size() > \
                    self.limits.max_header_bytes:  # the read that completed the head also held body bytes
                self._too_large()
                return
            self._cancel_timer()
            self._in_body = True
            self._head_bytes = 0
            now = self.loop.time()
            self._body_since = self._body_last = now
            self._body_bytes = 0
            super().on_headers_complete()
            if draining is not None and draining() and self.cycle is not None:
                self.cycle.keep_alive = False  # the client reconnects, to a replica that is not going away

        def on_body(self, body: bytes) -> None:
            if not self._rejected:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._rejected:
                return
            self._in_body = False
            self._cancel_timer()
            super().on_message_complete()

        # --- the limits ------------------------------------------------------------------------------------

        def _exact_head_size(self) -> int:
            return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

        def _too_large(self) -> None:
            self._reject(431, "header_too_large", "ValidationError",
                         f"request headers exceed {self.limits.max_header_bytes} bytes")

        def _head_timed_out(self) -> None:
            self._timer = None
            if not self._in_body and not self.transport.is_closing():
                self._reject(408, "header_timeout", "RequestTimeout",
                             f"request headers not received within {self.limits.header_timeout_s:g}s")

        def _check_body(self) -> None:
            """Runs every second once a body took longer than one read: 408 for a stalled or trickling one."""
            self._timer = None
            if not self._in_body or self.transport.is_closing():
                return
            now = self.loop.time()
            grace = self.limits.body_timeout_s
            if self.flow.read_paused:  # the server is not reading: the client cannot send, do not blame it
                self._body_since = self._body_last = now
                self._body_bytes = 0
            elif now - self._body_last >= grace or (
                    now - self._body_since >= grace
                    and self._body_bytes < self.limits.min_body_rate * (now - self._body_since)):
                self._reject(408, "body_timeout", "RequestTimeout",
                             f"request body stalled or slower than {self.limits.min_body_rate} bytes/s")
                return
            self._timer = self.loop.call_later(1.0, self._check_body)

        def _cancel_timer(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _reject(self, status: int, reason: str, error_type: str, message: str) -> None:
            """Answer ``status`` (unless the app already started an answer) and close the connection; the app,
            if it is reading this request, sees the client disconnect."""
            self._rejected = True
            self._cancel_timer()
            cycle = self.cycle
            answered = cycle is not None and cycle.response_started  # an app may answer before the body ended
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
            transport = self.transport
            if not answered and not transport.is_closing():
                transport.write(raw_error(status, message, error_type))
            if transport.can_write_eof() and not transport.is_closing():
                # A lingering close, as nginx does: closing with unread bytes would make the kernel send a
                # reset that can destroy the answer before the client reads it. Say we are done, discard what
                # still comes (data_received ignores it), and close for good a moment later.
                transport.write_eof()
                self._timer = self.loop.call_later(LINGER_S, transport.close)
            else:
                transport.close()
            if on_reject is not None:
                on_reject(reason)
            log.debug("http_rejected", reason=reason, client=self.client)

    return LimitedHttpToolsProtocol
