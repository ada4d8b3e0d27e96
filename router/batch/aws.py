"""The batch lane's buffer in scale-out mode: batch jobs in the S3 + SQS job store, on a queue of their own.

``append`` stores the request's records as one S3 object and creates the job (its S3 record, then its
message on the batch queue) before the 202, like the async lane. Each replica receives batch jobs from
that queue and holds them, leased, in its own in-memory buffer (``buffers``); the lane flushes a
replica's buffer by count, bytes or age exactly as in the embedded mode. Held and running jobs' leases
(their messages' visibility) are extended in batches of ten. A job ends through a conditional write of
its record while its lease is current, then its message is deleted, so a batch run twice (a replica
died, its jobs came back to another one) still ends each job once. On a stop, held jobs that were not
flushed are released for the other replicas; a replica that dies gives them back when their leases run
out. With several replicas, a model's records spread over their buffers: batches are then smaller, and
``max_wait`` still bounds how long a record waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import structlog

from router.batch.base import Batch, BatchedJob, BatchEntry, Buffered, JobEnd
from router.batch.records import RecordFormat, record_format
from router.lanes.jobs import input_key
from router.storage.aws import SqsJobStore
from router.storage.base import Job, JobCursor, JobSpec, ObjectStore, StorageError

log = structlog.get_logger("router.batch")

_CANCELLED = {"type": "Cancelled", "message": "cancelled by the client"}


class SqsBatchBuffer:
    """``BatchBuffer`` on an ``SqsJobStore`` whose queue is the batch queue. ``hold`` bounds how many jobs
    this replica holds unflushed (callable: it follows the config's max_records)."""

    def __init__(self, jobs: SqsJobStore, objects: ObjectStore, *, lease_s: float, max_attempts: int,
                 ttl_s: float, hold: Callable[[], int], clock: Callable[[], float] = time.time) -> None:
        self.jobs = jobs
        self.objects = objects
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.ttl_s = ttl_s
        self.hold = hold
        self.clock = clock
        self.buffers: dict[str, Buffered] = {}
        self._held: dict[str, list[Job]] = {}  # model -> leased jobs waiting for a flush, oldest first
        self._running: dict[str, list[Job]] = {}  # batch id -> its jobs (leases kept until they end)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # --- accepting ------------------------------------------------------------------------------

    async def append(self, entry: BatchEntry, now: float) -> Job:
        key = input_key(entry.job_id)
        stored = await self.objects.put(key, b"\n".join(entry.records))
        spec = JobSpec(job_id=entry.job_id, lane="batch", model=entry.model, tenant=entry.tenant, input_key=key,
                       input_bytes=stored.size, input_sha256=stored.sha256, content_type=entry.content_type,
                       accept=entry.accept, priority=entry.priority, max_attempts=self.max_attempts,
                       ttl_s=self.ttl_s, callback_url=entry.callback_url)
        try:
            return await self.jobs.create(spec, now, records=len(entry.records))
        except BaseException:
            with contextlib.suppress(Exception):  # no job: its records object is an orphan
                await asyncio.shield(self.objects.delete(key))
            raise

    async def get(self, job_id: str) -> Job | None:
        return await self.jobs.get(job_id)

    async def cancel(self, job_id: str, now: float) -> bool:
        """Only a job no replica holds yet (queued); its message is dropped when next received."""
        return await self.jobs.fail(job_id, None, _CANCELLED, now)

    async def purge(self, before: float, limit: int) -> list[str | None]:
        return []  # records and results are in S3: a bucket lifecycle rule expires them

    async def tenant_jobs(self, tenant: str, after: JobCursor | None, limit: int) -> tuple[list[Job], JobCursor | None]:
        """None: the batch jobs' records share the job lane's prefix, so its tenant index lists them."""
        return [], None

    async def counts(self) -> dict[str, int]:
        stats = await self.jobs.stats(self.clock())
        return {status: n for (_, status), n in stats.jobs.items()}

    # --- holding --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        self._tasks = [asyncio.create_task(self._receive(), name="batch-receive"),
                       asyncio.create_task(self._keep_leases(), name="batch-leases")]

    def _recount(self, model: str) -> None:
        held = self._held.get(model, [])
        records = sum((j.records or {}).get("total", 0) for j in held)
        self.buffers[model] = Buffered(len(held), records, sum(j.spec.input_bytes for j in held),
                                       min((j.created_at for j in held), default=None))

    async def _receive(self) -> None:
        while not self._stopping.is_set():
            room = self.hold() - sum(len(h) for h in self._held.values())
            if room <= 0:
                await asyncio.sleep(0.05)
                continue
            try:
                leased = await self.jobs.lease(room, self.lease_s, self.clock())
            except StorageError as exc:
                log.warning("batch_receive_failed", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            for job in leased:
                self._held.setdefault(job.spec.model, []).append(job)
            for model in {job.spec.model for job in leased}:
                self._held[model].sort(key=lambda j: j.created_at)
                self._recount(model)

    async def _keep_leases(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.lease_s / 3)
            jobs = [j for held in (*self._held.values(), *self._running.values()) for j in held if j.lease]
            if not jobs or self._stopping.is_set():
                continue
            try:
                stale = await self.jobs.extend_many([j.lease or "" for j in jobs], self.lease_s)
            except StorageError as exc:
                log.warning("batch_lease_extend_failed", error=str(exc))
                continue
            if stale:  # came back to the queue (this replica was too slow): another one has them now
                log.warning("batch_leases_lost", count=len(stale))
                for model, held in self._held.items():
                    self._held[model] = [j for j in held if j.lease not in stale]
                    self._recount(model)

    async def flush(self, model: str, batch_id: str, *, max_records: int, max_bytes: int, trigger: str,
                    now: float) -> Batch | None:
        held = self._held.get(model, [])
        taken: list[Job] = []
        records = size = 0
        for job in held:
            n = (job.records or {}).get("total", 0)
            if taken and (records + n > max_records or size + job.spec.input_bytes > max_bytes):
                break
            taken.append(job)
            records += n
            size += job.spec.input_bytes
        if not taken:
            return None
        self._held[model] = held[len(taken):]
        self._recount(model)
        self._running[batch_id] = taken
        try:
            payloads = await asyncio.gather(*(self.objects.get(j.spec.input_key) for j in taken))
        except StorageError:
            self._running.pop(batch_id, None)
            self._held[model] = taken + self._held[model]
            self._recount(model)
            raise
        return Batch(batch_id, model, trigger, [_batched(job, payload) for job, payload in
                                                zip(taken, payloads, strict=True)])

    async def pending(self) -> list[Batch]:
        return []  # a batch cut short comes back through the queue, as its jobs' leases run out

    async def complete(self, batch: Batch, ends: Sequence[JobEnd], now: float) -> int:
        leases = {j.job_id: j.lease for j in batch.jobs}
        sem = asyncio.Semaphore(16)

        async def end_one(end: JobEnd) -> bool:
            lease = leases.get(end.job_id)
            if lease is None:
                return False
            async with sem:
                ok = await self.jobs.end(end.job_id, lease, status=end.status, result_key=end.result_key,
                                         content_type=end.result_content_type, error=end.error,
                                         records={"total": end.done + end.failed, "done": end.done,
                                                  "failed": end.failed}, now=now)
                if ok:
                    with contextlib.suppress(StorageError):
                        await self.objects.delete(input_key(end.job_id))
                return ok

        try:
            ended = await asyncio.gather(*(end_one(e) for e in ends))
        finally:
            self._running.pop(batch.batch_id, None)
        return sum(ended)

    async def stop(self) -> None:
        """Stop receiving; give what this replica holds unflushed back to the queue at once."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        held = [j for jobs in self._held.values() for j in jobs]
        self._held.clear()
        self.buffers.clear()
        now = self.clock()
        await asyncio.gather(*(self.jobs.release(j.job_id, j.lease or "", now) for j in held),
                             return_exceptions=True)
        if held:
            log.info("batch_jobs_released", count=len(held))

    async def close(self) -> None:
        await self.jobs.close()


def _batched(job: Job, payload: bytes) -> BatchedJob:
    fmt = record_format(job.spec.content_type) or RecordFormat.CSV
    total = (job.records or {}).get("total", 0)
    records = payload.split(b"\n") if total else []
    return BatchedJob(job.job_id, fmt, job.spec.content_type, job.spec.accept, job.spec.callback_url, records,
                      job.created_at, job.lease)
