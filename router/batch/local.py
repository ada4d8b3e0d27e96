"""The router's own batch runner: a flushed batch sent to the model's backend in mini-batches.

Mini-batches hold whole records up to ``max_payload`` bytes (and ``max_records``), joined as the content
type wants (CSV lines, JSON Lines, an ``instances`` array); ``max_concurrent`` run at once, each waiting
for room on the backend so sync traffic is served first. Each answer is split back into one output per
record and the counts must match. A mini-batch the model rejects is split in halves and each half tried
again, so a poison record ends failed alone while its neighbours succeed. Transient failures (throttling,
5xx, timeouts) are retried with backoff; after ``attempts`` their records fail with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from router.batch.base import RecordOutcome
from router.batch.records import OutputCountMismatch, RecordFormat, join_records, split_outputs
from router.lanes.sync import SyncLane, Target, backoff_delay
from router.types import BackendError, Invocation


class _Failed(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


class LocalRunner:
    """Runs batches against one backend through the sync lane's tracked calls (``BatchRunner``)."""

    def __init__(self, sync: SyncLane, target: Target, *, max_payload: int, max_records: int, max_concurrent: int,
                 attempts: int = 3, backoff_s: float = 0.5, max_backoff_s: float = 30.0, timeout_s: float = 900.0,
                 stopping: Callable[[], bool] = lambda: False, model: str | None = None) -> None:
        self.sync = sync
        self.model = model  # for the estimated cost of its calls
        self.target = target
        self.max_payload = max_payload
        self.max_records = max_records
        self.slots = asyncio.Semaphore(max_concurrent)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.stopping = stopping
        self.calls = 0  # model calls made, for tests and logs

    async def run(self, batch_id: str, records: Sequence[bytes], fmt: RecordFormat, *,
                  content_type: str, accept: str | None) -> list[RecordOutcome]:
        out: list[RecordOutcome] = [RecordOutcome(None, "not run")] * len(records)

        async def part(start: int, end: int) -> None:
            try:
                async with self.slots:
                    outputs = await self._call(records[start:end], fmt, content_type, accept)
            except _Failed as failed:
                if failed.transient or end - start == 1:
                    out[start:end] = [RecordOutcome(None, failed.message)] * (end - start)
                    return
                mid = (start + end) // 2  # the model refused the mini-batch: find the record(s) it refuses
                await asyncio.gather(part(start, mid), part(mid, end))
                return
            out[start:end] = [RecordOutcome(o) for o in outputs]

        await asyncio.gather(*(part(start, end) for start, end in self._chunks(records, fmt)))
        return out

    def _chunks(self, records: Sequence[bytes], fmt: RecordFormat) -> list[tuple[int, int]]:
        """Consecutive ranges of whole records, each a payload of at most max_payload bytes (one record at least)."""
        overhead = len(join_records([], fmt))
        chunks: list[tuple[int, int]] = []
        start, size = 0, overhead
        for i, record in enumerate(records):
            if i > start and (size + len(record) + 1 > self.max_payload or i - start >= self.max_records):
                chunks.append((start, i))
                start, size = i, overhead
            size += len(record) + 1  # the separator
        if start < len(records):
            chunks.append((start, len(records)))
        return chunks

    async def _call(self, records: Sequence[bytes], fmt: RecordFormat, content_type: str,
                    accept: str | None) -> list[bytes]:
        inv = Invocation(body=join_records(records, fmt), content_type=content_type, accept=accept,
                         job_timeout_s=self.timeout_s)
        for attempt in range(1, self.attempts + 1):
            if not await self.sync.room(self.target, self.stopping):
                raise asyncio.CancelledError  # draining: the batch stays pending and runs after a restart
            self.calls += 1
            try:
                result = await self.sync.call(self.target, inv, self.sync.clock(), model=self.model, lane="batch")
            except BackendError as exc:
                message = f"{exc.kind.value}: {exc.message}"
                if not exc.retryable:
                    raise _Failed(message, transient=False) from None
                if attempt == self.attempts:
                    raise _Failed(f"{message} (after {attempt} attempts)", transient=True) from None
                await asyncio.sleep(backoff_delay(attempt, self.backoff_s, self.max_backoff_s))
                continue
            try:
                return split_outputs(result.body, result.content_type, len(records))
            except OutputCountMismatch as exc:
                raise _Failed(str(exc), transient=False) from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None
