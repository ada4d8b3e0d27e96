"""Traces: the router's JSON access log, read as a stream of requests in arrival order.

Each ``"event": "request"`` line of the access log (``router.api.dataplane``) is one request: when it
arrived, for which model, from which tenant, how big, of what content type, how urgent, its deadline and
``Prefer``, and how the router served it (lane, backend, status, duration, queue wait). Other lines (other
events, text) are skipped. Lines are written when a request *ends*, so they are put back in arrival order
with a buffer as long as the longest request seen: memory stays flat in the trace's length.
"""

from __future__ import annotations

import heapq
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


_decode = msgspec.json.Decoder(_Line).decode
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


def parse_lines(lines: Iterable[bytes], stats: TraceStats | None = None) -> Iterator[tuple[float, float, _Line]]:
    """(arrival epoch, end epoch, line) of every request line, in file order."""
    st = stats if stats is not None else TraceStats()
    for raw in lines:
        st.lines += 1
        st.bytes_read += len(raw)
        if _MARK not in raw:
            st.skipped += 1
            continue
        try:
            line = _decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            st.skipped += 1
            continue
        if line.event != "request" or not line.model or line.model == "_unknown":
            st.skipped += 1
            continue
        duration = (line.duration_ms or 0.0) / 1000.0
        if line.arrival is not None:
            arrival = line.arrival
            end = arrival + duration
        elif line.timestamp is not None:
            try:
                end = _epoch(line.timestamp)
            except ValueError:
                st.skipped += 1
                continue
            arrival = end - duration
        else:
            st.skipped += 1
            continue
        yield arrival, end, line


def in_arrival_order(lines: Iterable[bytes], stats: TraceStats | None = None,
                     min_window_s: float = 1.0) -> Iterator[TraceRequest]:
    """The requests of an access log in arrival order, ``t`` from the first arrival.

    A line is held until every line still to come must have arrived after it: lines come in order of their
    end, so one that ended at ``e`` arrived no earlier than ``e`` minus the longest duration seen.
    """
    st = stats if stats is not None else TraceStats()
    held: list[tuple[float, int, _Line]] = []
    longest = min_window_s
    origin: float | None = None
    last = -float("inf")
    end = float("inf")
    lines_in = parse_lines(lines, st)
    seq = 0
    while True:
        line = next(lines_in, None)
        if line is not None:
            arrival, end, parsed = line
            longest = max(longest, end - arrival)
            seq += 1
            heapq.heappush(held, (arrival, seq, parsed))
        horizon = end - longest if line is not None else float("inf")  # at the end, everything goes
        while held and held[0][0] < horizon:
            a, _, ln = heapq.heappop(held)
            if origin is None:
                origin = a
            if a < last:  # arrived before one already replayed (longer than the window): replayed late
                st.late += 1
                a = last
            last = a
            st.requests += 1
            yield _request(a - origin, ln)
        if line is None:
            return


def _request(t: float, ln: _Line) -> TraceRequest:
    return TraceRequest(
        t, ln.model or "", ln.caller or "anonymous", ln.bytes or 0, ln.content_type or "application/octet-stream",
        ln.urgency, ln.deadline_ms, bool(ln.respond_async), ln.wait_s, ln.lane, ln.backend, ln.status,
        None if ln.duration_ms is None else ln.duration_ms / 1000.0,
        None if ln.queue_wait_ms is None else ln.queue_wait_ms / 1000.0, ln.reason)


def read_trace(path: str | Path, stats: TraceStats | None = None) -> Iterator[TraceRequest]:
    """Stream the requests of an access-log file in arrival order."""
    with open(path, "rb") as fh:
        yield from in_arrival_order(fh, stats)


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
        out.write(_encode(line) + b"\n")
        n += 1
    return n
