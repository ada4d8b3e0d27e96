"""A streamed answer that keeps its backend slot until its last byte, then records the call like any other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog

from router.metrics import RouterMetrics
from router.state import BackendTracker
from router.types import AnswerStream, FailureKind, StreamBroken

log = structlog.get_logger("router.sync")


class TrackedStream:
    """Wraps a backend's :class:`AnswerStream`: the tracker hears of the call's end when the stream ends:
    ``succeeded``, ``failed`` if the backend broke off mid-answer, or ``abandoned`` if the reader stopped early
    (the client left). Exactly once, whatever happens.

    The latency sample is the time to the first byte, not to the last: how long a generated answer streams
    says how much the model wrote, not how loaded the backend is, and the concurrency limit learns from it.
    """

    __slots__ = ("_first_byte_s", "_inner", "_load", "_metrics", "_open", "_started", "_tracker")

    def __init__(self, inner: AnswerStream, tracker: BackendTracker, metrics: RouterMetrics, started: float,
                 first_byte_at: float, load_metrics: str | None = None) -> None:
        self._inner = inner
        self._tracker = tracker
        self._metrics = metrics
        self._started = started
        self._first_byte_s = first_byte_at - started  # backends return once the first byte is there
        self._load = load_metrics
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            self._end(None)
            raise
        except Exception as exc:
            self._end(exc.kind if isinstance(exc, StreamBroken) else
                      FailureKind.TIMEOUT if isinstance(exc, TimeoutError) else FailureKind.CONNECTION)
            log.warning("stream_broken", backend=self._tracker.name, error=type(exc).__name__)
            raise
        else:
            self._end("ok")
        finally:
            if self._open:
                self._end(None)
            await self._inner.aclose()

    async def aclose(self) -> None:
        if self._open:
            self._end(None)
        await self._inner.aclose()

    def _end(self, outcome: FailureKind | str | None) -> None:
        """Record the call once: "ok", a failure, or None for a reader that stopped early."""
        if not self._open:
            return
        self._open = False
        tracker = self._tracker
        now = tracker.clock()
        if outcome == "ok":
            tracker.succeeded(now, self._first_byte_s, self._load)
            self._metrics.backend_calls(tracker.name, "ok").inc()
        elif isinstance(outcome, FailureKind):
            tracker.failed(now, outcome)
            self._metrics.backend_calls(tracker.name, outcome.value).inc()
        else:
            tracker.abandoned(now)
