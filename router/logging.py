"""structlog set-up: JSON lines in production, a readable console in a terminal."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, Literal

import msgspec
import structlog

_encoder = msgspec.json.Encoder()

# The trace id of the request being served: the data plane sets it, so every line logged while serving
# a request (the access line, a policy or backend that raised) carries it. A task copies its context,
# so it never leaks between requests; one ContextVar costs less than structlog's bind_contextvars.
request_trace_id: ContextVar[str | None] = ContextVar("request_trace_id", default=None)


def _json(obj: Any, **_: Any) -> bytes:
    return _encoder.encode(obj)


class FdLogger:
    """Writes each rendered line to a file descriptor with one ``os.write``: no text layer, no lock and
    no flush per line, which is most of what a log line costs on the request path. Lines under 4 KiB
    written to a pipe stay whole even with other writers (PIPE_BUF)."""

    def __init__(self, fd: int = 2) -> None:
        self._fd = fd

    def msg(self, message: str | bytes) -> None:
        data = (message if isinstance(message, bytes) else message.encode("utf-8", "replace")) + b"\n"
        while data:
            try:
                written = os.write(self._fd, data)
            except InterruptedError:
                continue
            except OSError:
                return  # nowhere to log to (closed stderr): never fail a request over it
            data = data[written:]

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg


class RequestLine(msgspec.Struct):
    """The access log's line for one request, in the order a structlog ``log.info("request", ...)`` call renders
    it (its keys, then ``event``, ``level``, ``timestamp``); None is written as null. It is ``simulate``'s trace
    format (``router.sim.trace``)."""

    request_id: str
    trace_id: str
    model: str
    lane: str
    backend: str
    reason: str
    status: int
    duration_ms: float
    caller: str | None
    urgency: str | None
    bytes: int | None
    arrival: float
    content_type: str | None
    deadline_ms: int | None
    respond_async: bool | None
    wait_s: float | None
    queue_wait_ms: float | None
    cold_start: bool | None  # the answering call waited for a cold start: its duration is not service time
    event: str = "request"
    level: str = "info"
    timestamp: str = ""


class _IsoClock:
    """UTC ISO 8601 timestamps with microseconds, as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes them,
    at a tenth of its cost: the date and time of day are formatted once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"


class AccessLog:
    """Where the data plane writes its line per request. In JSON mode (``configure_logging``) a line is one msgspec
    encode and one ``write``, not structlog's processor chain (about 10 µs a line, a third of it the timestamp);
    otherwise (a console, or before logging is configured) it goes through structlog like any other line."""

    def __init__(self) -> None:
        self._out: FdLogger | None = None
        self._clock = _IsoClock()
        self._log = structlog.get_logger("router.access")

    def direct(self, out: FdLogger | None) -> None:
        """Write JSON lines straight to ``out``; None: through structlog."""
        self._out = out

    def write(self, line: RequestLine) -> None:
        out = self._out
        if out is not None:
            line.timestamp = self._clock.now()
            out.msg(_encoder.encode(line))
            return
        fields = msgspec.structs.asdict(line)
        for key in ("event", "level", "timestamp"):
            del fields[key]
        self._log.info("request", **fields)


ACCESS_LOG = AccessLog()


def _add_trace_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if "trace_id" not in event:
        trace_id = request_trace_id.get()
        if trace_id is not None:
            event["trace_id"] = trace_id
    return event


def _drop_color(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("color_message", None)  # uvicorn's ANSI copy of the message
    return event


def configure_logging(fmt: Literal["auto", "json", "console"] = "auto", level: int = logging.INFO) -> None:
    """Route structlog and the standard library (uvicorn, aiohttp, botocore) through one renderer to stderr."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_trace_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.dev.ConsoleRenderer() if fmt == "console"
                     else structlog.processors.JSONRenderer(serializer=_json))
    stderr = FdLogger(2)
    # the access log's own path, for the same JSON; a level above info drops its lines, as it drops log.info's
    ACCESS_LOG.direct(stderr if fmt == "json" and level <= logging.INFO else None)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: stderr,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer, _text],
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_color],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _text(_: Any, __: str, rendered: Any) -> str:
    """The stdlib formatter wants text; the JSON renderer gives bytes."""
    return rendered.decode("utf-8", "replace") if isinstance(rendered, bytes) else rendered
