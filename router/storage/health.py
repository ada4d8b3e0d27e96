"""Whether a job lane's storage works, and the retry of a storage write that must not be lost.

A full disk, a read-only folder or an unreachable bucket must neither kill the lanes' background tasks nor be
mistaken for a model failure: the write is retried with backoff (the model is never called again for it), the
lane's ``StorageHealth`` says since when storage has been failing, and ``/readyz`` reports a lane that cannot
make progress.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from router.storage.base import StorageError

log = structlog.get_logger("router.storage")

_T = TypeVar("_T")
RETRY_FIRST_S = 0.05  # first wait after a failed storage write; doubled each time...
RETRY_MAX_S = 5.0  # ...up to this, so a lane resumes within seconds once space returns


class StorageHealth:
    """Per store ("jobs", "objects", "buffer"): failing since the first error that followed a success, healthy
    again at its next success. A lane whose storage kept failing for ``stall_after_s`` cannot make progress."""

    def __init__(self, lane: str, on_error: Callable[[str, str], None] | None = None, *,
                 stall_after_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.lane = lane
        self.stall_after_s = stall_after_s
        self._on_error = on_error
        self._clock = clock
        self._failing_since: dict[str, float] = {}
        self.last_error = ""  # for logs
        self.last_reason = ""  # for clients: the OS's reason, never a path

    def ok(self, store: str) -> None:
        if self._failing_since:
            self._failing_since.pop(store, None)

    def failed(self, store: str, error: BaseException) -> None:
        self.last_error = str(error)
        self.last_reason = reason(error)
        self._failing_since.setdefault(store, self._clock())
        if self._on_error is not None:
            self._on_error(self.lane, store)

    def failing(self, store: str) -> bool:
        return store in self._failing_since

    @property
    def failing_stores(self) -> list[str]:
        return sorted(self._failing_since)

    def failing_for(self) -> float:
        """Seconds some store has been failing without a success in between; 0 while all work."""
        if not self._failing_since:
            return 0.0
        return max(0.0, self._clock() - min(self._failing_since.values()))

    @property
    def stalled(self) -> bool:
        return self.failing_for() >= self.stall_after_s

    def report(self) -> dict[str, object]:
        """For /readyz: no paths or keys, which are the operator's business (they are in the logs)."""
        return {"storage": "failing" if self._failing_since else "ok", "failing_stores": self.failing_stores,
                "failing_for_s": round(self.failing_for(), 3), "stalled": self.stalled}


def reason(error: BaseException) -> str:
    """A storage error's cause in words a client may see: the OS's reason (disk full...), never a path."""
    cause = error.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return type(cause or error).__name__


def storage_backoff(failures: int) -> float:
    """The wait after ``failures`` storage errors in a row: exponential with ±50% jitter, capped."""
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2.0 ** max(0, failures - 1)) * random.uniform(0.5, 1.5)


async def retry_storage(op: Callable[[], Awaitable[_T]], health: StorageHealth, store: str, what: str, *,
                        give_up: Callable[[], bool], **context: object) -> tuple[bool, _T | None]:
    """Run ``op`` until it succeeds, retrying StorageError with backoff until ``give_up()``.

    Returns (True, its result) or (False, None) once given up. Each failure is logged and counted in ``health``
    under ``store``; a success makes that store healthy again."""
    failures = 0
    while True:
        try:
            result = await op()
        except StorageError as exc:
            failures += 1
            health.failed(store, exc)
            log.warning("storage_write_failed", lane=health.lane, what=what, attempt=failures, error=str(exc),
                        **context)
            if give_up():
                return False, None
            await asyncio.sleep(storage_backoff(failures))
            continue
        health.ok(store)
        if failures:
            log.info("storage_write_recovered", lane=health.lane, what=what, attempts=failures + 1, **context)
        return True, result
