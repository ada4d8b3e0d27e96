"""Traces: the router's JSON access log, read as a stream of requests in arrival order.

Each ``"event": "request"`` line of the access log (``router.api.dataplane``) is one request: when it
arrived, for which model, from which tenant, how big, of what content type, how urgent, its deadline and
``Prefer``, and how the router served it (lane, backend, status, duration, queue wait). Other lines (other
events, text) are skipped. Lines are written when a request *ends*, so they are put back in arrival order
with a buffer as long as the longest request seen: memory stays flat in the trace's length.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, NamedTuple

import msgspec


class TraceRequest(NamedTuple):
    """One request of a trace. ``t`` is seconds since the trace's first arrival."""

    t: float
    model: str
    caller: str = "anonymous"
    payload_bytes: int = 0
    content_type: str = "application/octet-stream"
    urgency: str | None = None  # None: the config's default level
    deadline_ms: int | None = None
    accepts_async: bool = False
    wait_s: float | None = None
    # How the router served it, when the trace was recorded (None for synthetic traces).
    lane: str | None = None
    backend: str | None = None
    status: int | None = None
    duration_s: float | None = None
    queue_wait_s: float | None = None
    reason: str | None = None
    cold_start: bool = False  # the answering call waited for the backend's cold start: its duration is no service time


class _Line(msgspec.Struct, omit_defaults=True):
    """The access-log fields a replay reads; everything else on the line is ignored."""

    event: str = ""
    timestamp: str | None = None
    arrival: float | None = None
    model: str | None = None
    caller: str | None = None
    bytes: int | None = None
    content_type: str | None = None
    urgency: str | None = None
    deadline_ms: int | None = None
    respond_async: bool | None = None
    wait_s: float | None = None
    lane: str | None = None
    backend: str | None = None
    status: int | None = None
    duration_ms: float | None = None
    queue_wait_ms: float | None = None
    reason: str | None = None
    cold_start: bool | None = None


_decode = msgspec.json.Decoder(_Line).decode
_UNDECODABLE = (msgspec.DecodeError, msgspec.ValidationError)
_MARK = b'"request"'


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class TraceStats:
    """What reading a trace skipped or had to bend, for the report."""

    def __init__(self) -> None:
        self.lines = 0
        self.requests = 0
        self.skipped = 0  # not JSON, another event, or no model
        self.late = 0  # arrived before a request already replayed (longer than the reorder window): replayed late
        self.bytes_read = 0


def _times(line: _Line) -> tuple[float, float, _Line] | None:
    """(arrival epoch, end epoch, line) of a decoded line, if it is a request's; None otherwise."""
    if line.event != "request" or not line.model or line.model == "_unknown":
        return None
    duration = line.duration_ms / 1000.0 if line.duration_ms else 0.0
    if line.arrival is not None:
        return line.arrival, line.arrival + duration, line
    if line.timestamp is None:
        return None
    try:
        end = _epoch(line.timestamp)
    except ValueError:
        return None
    return end - duration, end, line


# a duration of 1,000 ms or more (shorter ones never widen the window, which is at least a second)
_LONG_DURATION = re.compile(rb'"duration_ms":\s*(-?(?:[1-9][0-9]{3,}(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?'
                            rb'|[0-9]+(?:\.[0-9]*)?[eE][+-]?[0-9]+))')
MIN_WINDOW_S = 1.0


def longest_duration_s(path: str | Path) -> float:
    """The longest ``duration_ms`` of any line of an access log, in seconds, if a second or more (else 0): how long
    a line may be written after a later arrival's. A scan of the raw bytes, without decoding the JSON
    (``"duration_ms":`` cannot occur inside a JSON string: its quotes would be escaped)."""
    longest = 0.0
    rest = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(1 << 22)
            if not block:
                break
            block = rest + block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            for value in _LONG_DURATION.findall(block, 0, cut):
                longest = max(longest, float(value))
    for value in _LONG_DURATION.findall(rest):
        longest = max(longest, float(value))
    return longest / 1000.0 if longest >= 1000.0 else 0.0  # the exponent form may match a shorter one


def in_arrival_order(lines: Iterable[bytes], stats: TraceStats | None = None, min_window_s: float = MIN_WINDOW_S,
                     window_s: float | None = None) -> Iterator[TraceRequest]:
    """The requests of an access log in arrival order, ``t`` from the first arrival.

    A line is held until every line still to come must have arrived after it: lines come in order of their
    end, so one that ended at ``e`` arrived no earlier than ``e`` minus the longest duration. ``window_s``: the
    longest duration of the whole log, when known (``read_trace`` scans the file for it). Without it the
    window is the longest duration seen so far, and a request longer than every one before it (the first
    cold start) may already have been overtaken by later arrivals: it is then replayed late.
    """
    st = stats if stats is not None else TraceStats()
    held: list[tuple[float, int, _Line]] = []
    longest = max(min_window_s, window_s or 0.0)
    grows = window_s is None
    origin: float | None = None
    last = -math.inf
    seq = n_lines = n_bytes = skipped = late = requests = 0
    push, pop, decode, mark, bad = heapq.heappush, heapq.heappop, _decode, _MARK, _UNDECODABLE
    try:
        for raw in lines:  # the usual request line is handled inline: this loop runs once per line of the log
            n_lines += 1
            n_bytes += len(raw)
            if mark not in raw:
                skipped += 1
                continue
            try:
                line = decode(raw)
            except bad:
                skipped += 1
                continue
            arrival = line.arrival
            if arrival is not None and line.event == "request" and line.model and line.model != "_unknown":
                duration_ms = line.duration_ms
                end = arrival + duration_ms / 1000.0 if duration_ms else arrival
            else:
                parsed = _times(line)
                if parsed is None:
                    skipped += 1
                    continue
                arrival, end, line = parsed
            if grows and end - arrival > longest:
                longest = end - arrival
            seq += 1
            push(held, (arrival, seq, line))
            horizon = end - longest
            while held and held[0][0] < horizon:
                a, _, ln = pop(held)
                if origin is None:
                    origin = a
                if a < last:  # arrived before one already replayed (longer than the window): replayed late
                    late += 1
                    a = last
                last = a
                requests += 1
                yield _request(a - origin, ln)
        while held:  # the end: everything goes
            a, _, ln = pop(held)
            if origin is None:
                origin = a
            if a < last:
                late += 1
                a = last
            last = a
            requests += 1
            yield _request(a - origin, ln)
    finally:
        st.lines += n_lines
        st.bytes_read += n_bytes
        st.skipped += skipped
        st.late += late
        st.requests += requests


_tuple_new = tuple.__new__  # builds a NamedTuple from its fields in order, without its Python-level __new__


def _request(t: float, ln: _Line) -> TraceRequest:
    duration, wait = ln.duration_ms, ln.queue_wait_ms
    # t, model, caller, payload_bytes, content_type, urgency, deadline_ms, accepts_async, wait_s, lane, backend,
    # status, duration_s, queue_wait_s, reason, cold_start
    return _tuple_new(TraceRequest, (
        t, ln.model or "", ln.caller or "anonymous", ln.bytes or 0, ln.content_type or "application/octet-stream",
        ln.urgency, ln.deadline_ms, bool(ln.respond_async), ln.wait_s, ln.lane, ln.backend, ln.status,
        None if duration is None else duration / 1000.0, None if wait is None else wait / 1000.0, ln.reason,
        bool(ln.cold_start)))


def read_trace(path: str | Path, stats: TraceStats | None = None) -> Iterator[TraceRequest]:
    """Stream the requests of an access-log file in arrival order (the file is scanned once first for its longest
    request: the reorder window)."""
    window = longest_duration_s(path)
    with open(path, "rb") as fh:
        yield from in_arrival_order(fh, stats, window_s=window)


_encode = msgspec.json.Encoder().encode


def write_trace(requests: Iterable[TraceRequest], out: IO[bytes], start_epoch: float = 1_767_225_600.0) -> int:
    """Write requests as access-log lines (the fields a replay reads); returns how many."""
    n = 0
    for r in requests:
        line: dict[str, object] = {"event": "request", "arrival": round(start_epoch + r.t, 6), "model": r.model,
                                   "caller": r.caller, "bytes": r.payload_bytes, "content_type": r.content_type}
        if r.urgency is not None:
            line["urgency"] = r.urgency
        if r.deadline_ms is not None:
            line["deadline_ms"] = r.deadline_ms
        if r.accepts_async:
            line["respond_async"] = True
        if r.wait_s is not None:
            line["wait_s"] = r.wait_s
        for key, value in (("lane", r.lane), ("backend", r.backend), ("status", r.status)):
            if value is not None:
                line[key] = value
        if r.duration_s is not None:
            line["duration_ms"] = round(r.duration_s * 1000.0, 3)
        if r.queue_wait_s is not None:
            line["queue_wait_ms"] = round(r.queue_wait_s * 1000.0, 3)
        if r.reason is not None:
            line["reason"] = r.reason
        if r.cold_start:
            line["cold_start"] = True
        out.write(_encode(line) + b"\n")
        n += 1
    return n
