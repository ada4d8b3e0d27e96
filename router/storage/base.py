"""The contracts of durable state for the async and batch lanes: objects (payloads, results) and jobs.

Two implementations sit behind each: the embedded default (a local folder, SQLite in WAL mode) and
scale-out (S3; job records in S3 and the work queue in SQS with a redrive dead-letter queue).
A job is at-least-once: a worker leases it, and a lease that is not extended runs out, after which
the job is leased again. Results are written under the job id, so a second run overwrites rather than
duplicates, and only the first ``succeed`` of a lease that is still valid changes the job.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Protocol


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.EXPIRED})


class StorageError(Exception):
    """Storage cannot be reached or refused the operation: the API answers 503, never a 202."""


class ObjectTooLarge(StorageError):
    """A streamed object passed its limit; nothing of it is kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"object exceeds {limit} bytes")
        self.limit = limit


class ObjectMissing(StorageError):
    pass


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    sha256: str  # hex digest of the bytes as stored


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the router records when it accepts a job; never changes afterwards."""

    job_id: str
    lane: str  # "async" or "batch"
    model: str
    tenant: str
    input_key: str
    input_bytes: int
    input_sha256: str
    content_type: str | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    inference_id: str | None = None
    priority: int = 1
    max_attempts: int = 3
    ttl_s: float = 6 * 3600.0  # SageMaker's RequestTTLSeconds default: unfinished after this = expired
    timeout_s: float = 15 * 60.0  # per invocation (SageMaker's InvocationTimeoutSeconds default)
    callback_url: str | None = None
    traceparent: str | None = None  # the accepting request's span: the worker's call continues its trace


@dataclass(frozen=True, slots=True)
class Job:
    """A stored job as read back. ``lease`` is set while a worker holds it (status running)."""

    spec: JobSpec
    status: JobStatus
    created_at: float  # unix seconds
    updated_at: float
    attempts: int = 0  # leases taken so far
    result_key: str | None = None
    result_content_type: str | None = None
    error: Mapping[str, Any] | None = None  # {"type": ..., "message": ..., "status": ...}
    lease: str | None = None  # the token a worker must show to extend, finish or retry it
    records: Mapping[str, int] | None = None  # batch jobs: {"total", "done", "failed"} record counts

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def expires_at(self) -> float:
        return self.created_at + self.spec.ttl_s


@dataclass(frozen=True, slots=True)
class StoreStats:
    """For metrics: jobs by (lane, status), and per model the queued count and the oldest queued job's age.

    A store that cannot count per model (SQS) reports its queue-wide count under the model ``"*"``.
    ``dead_lettered``: jobs that failed after using up their attempts (the SQS store: its DLQ's depth).
    """

    jobs: Mapping[tuple[str, str], int] = field(default_factory=dict)
    queued: Mapping[str, int] = field(default_factory=dict)
    oldest_queued_age_s: Mapping[str, float] = field(default_factory=dict)
    dead_lettered: int = 0


class ObjectStore(Protocol):
    """Payloads and results by key. Writes are atomic: a reader sees the whole object or none."""

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, limit: int) -> StoredObject:
        """Store chunks as they come, never holding the whole object; ObjectTooLarge past ``limit``."""
        ...

    async def put(self, key: str, data: bytes) -> StoredObject: ...

    async def get(self, key: str) -> bytes:
        """The whole object (for payloads a worker sends in one call); ObjectMissing if absent."""
        ...

    def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The object in chunks, for answering large results without loading them."""
        ...

    async def size(self, key: str) -> int | None: ...

    async def delete(self, key: str) -> None: ...

    def location(self, key: str) -> str:
        """Where the object is, for clients: an ``s3://`` URI, or the key in the embedded mode."""
        ...

    async def close(self) -> None: ...


class JobCursor(NamedTuple):
    """A position in a tenant's job listing: jobs come newest first, then by job id (ascending)."""

    created_at: float
    job_id: str

    @classmethod
    def of(cls, job: Job) -> JobCursor:
        return cls(job.created_at, job.job_id)

    def sort_key(self) -> tuple[float, str]:
        return (-self.created_at, self.job_id)


INLINE_KEY = "inline"  # a JobSpec.input_key: the payload is stored with the job (JobStore.input)


class JobStore(Protocol):
    """Job records and the work queue. Every method is durable when it returns.

    ``inline_max``: payloads up to this many bytes may be stored with the job itself (0: never), which saves
    the separate durable object write; ``input`` reads such a payload back.
    """

    @property
    def inline_max(self) -> int: ...

    async def create(self, spec: JobSpec, now: float, *, payload: bytes | None = None) -> Job:
        """Record and enqueue a new job (status queued), with ``payload`` when it is inline."""
        ...

    async def input(self, job_id: str) -> bytes | None:
        """The payload stored with the job, if it was."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def lease(self, limit: int, lease_s: float, now: float) -> list[Job]:
        """Up to ``limit`` runnable jobs, now running under a fresh lease token, attempts + 1.

        Runnable: queued and past any retry delay, or running with a lease that ran out (its worker died).
        Higher priority first, then oldest. A job whose attempts are used up is failed instead of leased.
        """
        ...

    async def extend(self, job_id: str, lease: str, lease_s: float, now: float) -> bool:
        """Keep a running job's lease; False when the lease is no longer this worker's."""
        ...

    async def succeed(self, job_id: str, lease: str, result_key: str, content_type: str | None,
                      now: float) -> bool:
        """Running -> succeeded; False (and no change) unless ``lease`` is the job's current lease."""
        ...

    async def retry(self, job_id: str, lease: str, error: Mapping[str, Any], not_before: float,
                    now: float) -> bool:
        """Running -> queued again, not leased before ``not_before``; the error is kept for the record."""
        ...

    async def fail(self, job_id: str, lease: str | None, error: Mapping[str, Any], now: float, *,
                   dead_letter: bool = False) -> bool:
        """-> failed. ``lease`` None: only a queued job (cancel). ``dead_letter``: the job used up its attempts
        (counted in ``StoreStats.dead_lettered``; the SQS store sends its id to the DLQ), as opposed to a job
        that failed for good at once (the model rejected its input) or a cancel."""
        ...

    async def release(self, job_id: str, lease: str, now: float) -> bool:
        """Running -> queued at once without counting the attempt: a draining worker gives it back."""
        ...

    async def expire(self, now: float) -> int:
        """Queued or running jobs past their TTL -> expired; how many."""
        ...

    async def purge(self, before: float, limit: int) -> list[Job]:
        """Delete up to ``limit`` jobs that ended before ``before`` and return them, so that the caller deletes
        their payloads and results; a store that cannot list by age returns nothing (S3: lifecycle rules)."""
        ...

    async def stats(self, now: float) -> StoreStats: ...

    async def tenant_jobs(self, tenant: str, after: JobCursor | None, limit: int) -> tuple[list[Job], JobCursor | None]:
        """Up to ``limit`` jobs of ``tenant`` in listing order (newest first, then by job id), after ``after``
        if given; and where the next page starts (None: nothing follows). For ``GET /jobs``."""
        ...

    async def close(self) -> None: ...
