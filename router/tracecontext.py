"""W3C Trace Context (https://www.w3.org/TR/trace-context/): read a request's ``traceparent``, make the
router's own span in that trace, and the ``traceparent`` to send to backends.

The router is one hop of the trace: backends see the client's trace id with the router's span id as
their parent. An absent or malformed header starts a new trace, as the spec asks.
"""

from __future__ import annotations

import re
from random import getrandbits  # trace and span ids need uniqueness, not secrecy
from typing import NamedTuple

# version 00 is exactly this; a later version may append fields after another '-', which we ignore
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_SAMPLED = "01"


class TraceContext(NamedTuple):
    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits: the router's span for this request
    flags: str = _SAMPLED  # trace-flags as received (two hex digits), "01" for a trace the router starts
    tracestate: str | None = None  # the client's, kept only when its trace is continued

    @property
    def traceparent(self) -> str:
        """The header for calls the router makes inside this span."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def headers(self) -> dict[str, str]:
        """``traceparent`` (and ``tracestate``) for a call to a backend."""
        if self.tracestate:
            return {"traceparent": self.traceparent, "tracestate": self.tracestate}
        return {"traceparent": self.traceparent}


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, flags)`` of a valid ``traceparent``, else None (absent, malformed, version ff, zero ids)."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, flags


def _span_id() -> str:
    return f"{getrandbits(64) or 1:016x}"


def start_span(traceparent: str | None, tracestate: str | None = None) -> TraceContext:
    """The router's span: a child of the incoming ``traceparent`` if it is valid, else the root of a new trace
    (whose ``tracestate`` is dropped: vendors' state belongs to the trace it came with)."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return TraceContext(f"{getrandbits(128) or 1:032x}", _span_id())
    trace_id, flags = parsed
    return TraceContext(trace_id, _span_id(), flags, tracestate or None)
