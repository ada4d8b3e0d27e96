"""The contract between the batch lane and whatever runs a flushed batch (local runner, Batch Transform)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from router.batch.records import RecordFormat
from router.storage.base import Job, JobCursor, JobStatus


class RecordOutcome(NamedTuple):
    """One record's end: its output (one line, or one JSON value) or why it failed."""

    output: bytes | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One accepted request: its records (in order) and how to answer it."""

    job_id: str
    model: str
    tenant: str
    fmt: RecordFormat
    records: Sequence[bytes]
    content_type: str | None = None
    accept: str | None = None
    callback_url: str | None = None
    priority: int = 0

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.records)


@dataclass(frozen=True, slots=True)
class BatchedJob:
    """A job inside a flushed batch, with its records."""

    job_id: str
    fmt: RecordFormat
    content_type: str | None
    accept: str | None
    callback_url: str | None
    records: list[bytes]
    created_at: float
    lease: str | None = None  # scale-out: the SQS lease this replica holds the job under


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    model: str
    trigger: str
    jobs: list[BatchedJob]
    runs: int = 1  # how many times it was started, this time included

    @property
    def records(self) -> int:
        return sum(len(j.records) for j in self.jobs)


@dataclass(frozen=True, slots=True)
class Buffered:
    """What a model has buffered: jobs, records, bytes, and when the oldest of them was appended."""

    jobs: int = 0
    records: int = 0
    bytes: int = 0
    oldest: float | None = None


@dataclass(frozen=True, slots=True)
class JobEnd:
    """How one job of a batch ended."""

    job_id: str
    status: JobStatus  # succeeded or failed
    done: int
    failed: int
    result_key: str | None
    result_content_type: str | None
    error: Mapping[str, Any] | None


class BatchBuffer(Protocol):
    """Where accepted batch jobs wait to be flushed: a SQLite table (embedded) or an SQS queue (scale-out).

    ``buffers`` is what this process can flush now, per model. A flushed batch's jobs end through
    ``complete``; one cut short (a stop, a crash) is found again by ``pending`` (embedded) or comes back
    through the queue (scale-out).
    """

    @property
    def buffers(self) -> Mapping[str, Buffered]: ...

    async def start(self) -> None: ...

    async def append(self, entry: BatchEntry, now: float) -> Job:
        """Store the job durably (StorageError: nothing was stored)."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def flush(self, model: str, batch_id: str, *, max_records: int, max_bytes: int, trigger: str,
                    now: float) -> Batch | None: ...

    async def pending(self) -> list[Batch]: ...

    async def complete(self, batch: Batch, ends: Sequence[JobEnd], now: float) -> int: ...

    async def cancel(self, job_id: str, now: float) -> bool: ...

    async def counts(self) -> dict[str, int]: ...

    async def tenant_jobs(self, tenant: str, after: JobCursor | None, limit: int) -> tuple[list[Job], JobCursor | None]:
        """A tenant's batch jobs for ``GET /jobs`` (see ``JobStore.tenant_jobs``); a buffer whose jobs the job store
        lists already (one S3 tenant index for both lanes) returns none."""
        ...

    async def purge(self, before: float, limit: int) -> list[str | None]:
        """Delete jobs that ended before ``before``; per deleted job its result key, or None (nothing is
        deleted where the store cannot list by age: S3 lifecycle rules do it there)."""
        ...

    async def stop(self) -> None:
        """Stop taking work; what this process holds unflushed goes back for others."""
        ...

    async def close(self) -> None: ...


class BatchRunner(Protocol):
    """Runs one flushed batch; answers one outcome per record, in the records' order.

    ``batch_id`` is stable across restarts: a runner given a batch it already started (the router
    crashed while it ran) follows that run instead of starting a second one where it can.
    A failure of the whole run is reported per record (every outcome an error), never raised.
    """

    async def run(self, batch_id: str, records: Sequence[bytes], fmt: RecordFormat, *,
                  content_type: str, accept: str | None) -> list[RecordOutcome]: ...

    async def close(self) -> None: ...
