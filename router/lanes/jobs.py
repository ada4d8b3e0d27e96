"""The async lane: accept a job durably, run it later with workers, at least once, results by job id.

Accepting stores the payload, then records the job; only then does the API answer 202. Workers lease
jobs, keep the lease alive while a job runs, wait for room on the backend (sync traffic comes first),
and write the result under the job id before marking the job succeeded, so a redelivered job
overwrites its result instead of adding one. Transient failures are retried with exponential backoff
and jitter up to ``max_attempts``; permanent ones (the model rejected the input) fail at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from router.config import JobsConfig
from router.lanes.sync import SyncLane, Target, backoff_delay
from router.logging import request_trace_id
from router.notify import WebhookNotifier
from router.storage.base import (
    INLINE_KEY,
    TERMINAL,
    Job,
    JobSpec,
    JobStatus,
    JobStore,
    ObjectMissing,
    ObjectStore,
    StorageError,
    StoredObject,
    StoreStats,
)
from router.tracecontext import parse_traceparent, start_span
from router.types import BackendError, Invocation, Lane

if TYPE_CHECKING:  # botocore is imported only when SNS notifications are configured
    from router.notify_sns import SnsJobNotifier

log = structlog.get_logger("router.jobs")

Clock = Callable[[], float]
TargetLookup = Callable[[str, Lane], Target | None]  # (model, lane) -> the backend serving it, if any


STREAM_MIN_BYTES = 8 << 20  # payloads above this are streamed from storage to the backend, never held whole


def input_key(job_id: str) -> str:
    return f"inputs/{job_id}"


def result_key(job_id: str) -> str:
    return f"results/{job_id}"


def job_url(job_id: str) -> str:
    """Where the jobs API answers for a job (the 202's Location and status_url)."""
    return f"/jobs/{job_id}"


def job_json(job: Job, status_url: str | None = None) -> dict[str, Any]:
    """The jobs API's view of a job (DESIGN.md contract)."""
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "status": job.status.value,
        "lane": job.spec.lane,
        "model": job.spec.model,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "attempts": job.attempts,
        # a batch job that succeeded may still name the records that failed
        "error": dict(job.error) if job.error and (job.status is not JobStatus.SUCCEEDED or job.records) else None,
    }
    if job.records is not None:
        out["records"] = dict(job.records)
    if status_url:
        out["status_url"] = status_url
    return out


async def wait_for_end(get: Callable[[str], Awaitable[Job | None]], done: dict[str, asyncio.Event], job_id: str,
                       timeout_s: float) -> Job | None:
    """The job once it is terminal, or its latest state after ``timeout_s``. ``done[job_id]`` is set by the lane
    when this process ends the job, which wakes the wait at once; polling with backoff covers other replicas."""
    deadline = time.monotonic() + timeout_s
    event = done.setdefault(job_id, asyncio.Event())
    delay = 0.02
    try:
        while True:
            job = await get(job_id)
            left = deadline - time.monotonic()
            if job is None or job.status in TERMINAL or left <= 0:
                return job
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(delay, left))
            delay = min(delay * 2, 0.5)
    finally:
        done.pop(job_id, None)


class JobEvents:
    """Tells the world a job ended, in the background: its callback URL (webhooks) and the SNS topic
    (AWS state mode), each sent the job's status JSON as ``GET /jobs/{id}`` shows it. Shared by the lanes."""

    def __init__(self) -> None:
        self.notifier: WebhookNotifier | None = None
        self.topic: SnsJobNotifier | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def finished(self, job_id: str, callback_url: str | None, get: Callable[[str], Awaitable[Job | None]]) -> None:
        if callback_url and self.notifier is not None:
            self._announce(job_id, "webhook", partial(self.notifier.notify, callback_url), get)
        if self.topic is not None:
            self._announce(job_id, "sns", self.topic.notify, get)

    def _announce(self, job_id: str, channel: str, send: Callable[[dict[str, Any]], Awaitable[bool]],
                  get: Callable[[str], Awaitable[Job | None]]) -> None:
        task = asyncio.create_task(self._send_status(job_id, channel, send, get))
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _send_status(job_id: str, channel: str, send: Callable[[dict[str, Any]], Awaitable[bool]],
                           get: Callable[[str], Awaitable[Job | None]]) -> None:
        try:
            job = await get(job_id)
        except StorageError:
            log.warning(f"{channel}_job_unreadable", job_id=job_id)
            return
        if job is not None and await send(job_json(job, job_url(job_id))):  # send logs and never raises
            log.info(f"{channel}_delivered", job_id=job_id)

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)


class JobLane:
    """Accepts jobs and runs them. ``workers`` tasks per process; 0 means accept only."""

    def __init__(self, objects: ObjectStore, jobs: JobStore, cfg: JobsConfig, sync: SyncLane,
                 targets: TargetLookup, *, clock: Clock = time.time) -> None:
        self.metrics = sync.metrics
        self.objects = objects
        self.jobs = jobs
        self.cfg = cfg
        self.sync = sync
        self.targets = targets
        self.clock = clock
        self.stats = StoreStats()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._done: dict[str, asyncio.Event] = {}  # job id -> set when this process finishes it
        self.events = JobEvents()

    # --- accepting ------------------------------------------------------------------------------

    async def accept(self, *, lane: Lane, model: str, tenant: str, priority: int,
                     body: bytes | AsyncIterable[bytes], limit: int, content_type: str | None,
                     accept: str | None = None, custom_attributes: str | None = None,
                     inference_id: str | None = None, job_id: str | None = None,
                     existing: StoredObject | None = None, callback_url: str | None = None,
                     traceparent: str | None = None) -> Job:
        """Store the payload, then the job. Raises StorageError (answer 503) or ObjectTooLarge (413).

        ``existing``: the payload is already in the object store (an InputLocation); ``body`` is ignored.
        """
        job_id = job_id or uuid.uuid4().hex
        key = existing.key if existing else input_key(job_id)
        inline: bytes | None = None
        if existing is not None:
            stored = existing
        elif isinstance(body, bytes | bytearray) and len(body) <= self.jobs.inline_max:
            inline = bytes(body)  # stored with the job: one grouped commit instead of a file and two fsyncs
            key = INLINE_KEY
            stored = StoredObject(key, len(inline), hashlib.sha256(inline).hexdigest())
        elif isinstance(body, bytes | bytearray):
            stored = await self.objects.put(key, bytes(body))
        else:
            stored = await self.objects.put_stream(key, body, limit=limit)
        spec = JobSpec(
            job_id=job_id, lane=lane.value, model=model, tenant=tenant, input_key=key,
            input_bytes=stored.size, input_sha256=stored.sha256, content_type=content_type, accept=accept,
            custom_attributes=custom_attributes, inference_id=inference_id, priority=priority,
            max_attempts=self.cfg.max_attempts, ttl_s=self.cfg.ttl, timeout_s=self.cfg.invocation_timeout,
            callback_url=callback_url, traceparent=traceparent,
        )
        job = await self.jobs.create(spec, self.clock(), payload=inline)
        # debug: the 202 is in the access log, and a line per job is a large share of this path's CPU
        log.debug("job_accepted", job_id=job_id, model=model, lane=lane.value, bytes=stored.size)
        return job

    async def get(self, job_id: str) -> Job | None:
        return await self.jobs.get(job_id)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued job: it ends failed with error type Cancelled."""
        return await self.jobs.fail(job_id, None, {"type": "Cancelled", "message": "cancelled by the client"},
                                    self.clock())

    async def wait(self, job_id: str, timeout_s: float) -> Job | None:
        """The job once it is terminal, or its latest state after ``timeout_s`` (Prefer: wait=N)."""
        return await wait_for_end(self.jobs.get, self._done, job_id, timeout_s)

    # --- running --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        self._tasks = [asyncio.create_task(self._worker(i), name=f"job-worker-{i}")
                       for i in range(self.cfg.workers)]
        self._tasks.append(asyncio.create_task(self._janitor(), name="job-janitor"))

    async def stop(self) -> None:
        """Stop leasing; running jobs get ``drain_timeout`` to finish, the rest go back to the queue."""
        self._stopping.set()
        await self.events.drain(5.0)  # deliveries already under way get a few seconds
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=self.cfg.drain_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks = []

    async def _worker(self, index: int) -> None:
        while not self._stopping.is_set():
            try:
                leased = await self.jobs.lease(1, self.cfg.lease, self.clock())
            except StorageError:
                log.warning("job_lease_failed", worker=index)
                leased = []
            if not leased:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self.cfg.poll_interval)
                continue
            await self._run(leased[0])

    async def _run(self, job: Job) -> None:
        lease = job.lease or ""
        parsed = parse_traceparent(job.spec.traceparent)
        request_trace_id.set(parsed[0] if parsed else None)  # this worker task's log lines carry the job's trace
        keeper = asyncio.create_task(self._keep_lease(job.job_id, lease))
        try:
            await self._attempt(job, lease)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # draining: hand the job back without counting it
                await asyncio.shield(self.jobs.release(job.job_id, lease, self.clock()))
            raise
        except Exception:
            log.exception("job_attempt_crashed", job_id=job.job_id)
            await self._retry_or_fail(job, lease, {"type": "InternalFailure", "message": "router error"})
        finally:
            keeper.cancel()
            event = self._done.get(job.job_id)
            if event is not None:
                event.set()

    async def _keep_lease(self, job_id: str, lease: str) -> None:
        while True:
            await asyncio.sleep(self.cfg.lease / 3)
            try:
                if not await self.jobs.extend(job_id, lease, self.cfg.lease, self.clock()):
                    log.warning("job_lease_lost", job_id=job_id)
                    return
            except StorageError:
                log.warning("job_lease_extend_failed", job_id=job_id)

    async def _attempt(self, job: Job, lease: str) -> None:
        spec = job.spec
        target = self.targets(spec.model, Lane(spec.lane))
        if target is None:
            await self.jobs.fail(job.job_id, lease, {"type": "ValidationError",
                                                     "message": f"model {spec.model!r} has no {spec.lane} lane"},
                                 self.clock())
            return
        payload = await self._input(spec)
        if payload is None:
            await self.jobs.fail(job.job_id, lease, {"type": "InputMissing", "message": "the job's input is gone"},
                                 self.clock())
            return
        if not await self.sync.room(target, self._stopping.is_set):
            await self.jobs.release(job.job_id, lease, self.clock())  # draining: the job goes back
            return
        # the call continues the accepting request's trace, as a span of its own
        trace = start_span(spec.traceparent) if spec.traceparent else None
        inv = Invocation(body=payload if isinstance(payload, bytes) else b"", content_type=spec.content_type,
                         accept=spec.accept, custom_attributes=spec.custom_attributes, inference_id=spec.inference_id,
                         job_timeout_s=spec.timeout_s, stream=None if isinstance(payload, bytes) else payload,
                         size=spec.input_bytes, headers=trace.headers() if trace else {})
        try:
            result = await self.sync.call(target, inv, self.sync.clock(), model=spec.model, lane=spec.lane)
        except BackendError as exc:
            error = {"type": exc.kind.value, "message": exc.message, "status": exc.original_status or exc.status}
            if exc.retryable:
                await self._retry_or_fail(job, lease, error)
            else:
                await self.jobs.fail(job.job_id, lease, error, self.clock())
                self._finished(job, "failed")
                log.info("job_failed", job_id=job.job_id, error=error["type"])
            return
        key = result_key(job.job_id)
        await self.objects.put(key, result.body)  # under the job id: a second run overwrites, never adds
        if not await self.jobs.succeed(job.job_id, lease, key, result.content_type, self.clock()):
            log.warning("job_result_not_recorded", job_id=job.job_id, why="lease lost")
        else:
            self._finished(job, "succeeded")
            log.info("job_succeeded", job_id=job.job_id, attempts=job.attempts)

    async def _input(self, spec: JobSpec) -> bytes | Callable[[], AsyncIterator[bytes]] | None:
        """The job's payload: its bytes, or for a large one a way to stream it from storage; None if gone."""
        if spec.input_key == INLINE_KEY:
            return await self.jobs.input(spec.job_id)
        key = spec.input_key
        if spec.input_bytes > STREAM_MIN_BYTES:
            return (lambda: self.objects.stream(key)) if await self.objects.size(key) is not None else None
        try:
            return await self.objects.get(key)
        except ObjectMissing:
            return None

    def _finished(self, job: Job, status: str) -> None:
        self.events.finished(job.job_id, job.spec.callback_url, self.jobs.get)
        self.metrics.job_attempts(job.spec.model, "ok" if status == "succeeded" else "failed").inc()
        self.metrics.job_duration(job.spec.model, job.spec.lane, status).observe(
            max(0.0, self.clock() - job.created_at))

    async def _retry_or_fail(self, job: Job, lease: str, error: Mapping[str, Any]) -> None:
        now = self.clock()
        if job.attempts >= job.spec.max_attempts:
            await self.jobs.fail(job.job_id, lease, {**error, "attempts": job.attempts}, now)
            self._finished(job, "failed")
            log.info("job_failed", job_id=job.job_id, error=error.get("type"), attempts=job.attempts)
            return
        delay = backoff_delay(job.attempts, self.cfg.backoff, self.cfg.max_backoff)
        await self.jobs.retry(job.job_id, lease, error, now + delay, now)
        self.metrics.job_attempts(job.spec.model, "retried").inc()

    async def _purge(self, before: float) -> None:
        """Delete jobs that ended before ``before``, with the payloads and results the router stored for them."""
        purged = await self.jobs.purge(before, 500)
        keys = [job.result_key for job in purged if job.result_key]
        keys += [job.spec.input_key for job in purged if job.spec.input_key == input_key(job.job_id)]
        for key in keys:  # a payload the client named (an InputLocation) is the client's: only ours go
            with contextlib.suppress(StorageError):
                await self.objects.delete(key)
        if purged:
            log.info("jobs_purged", count=len(purged))

    async def _janitor(self) -> None:
        """Expires jobs past their TTL and refreshes the stats the metrics read."""
        while not self._stopping.is_set():
            try:
                now = self.clock()
                expired = await self.jobs.expire(now)
                if expired:
                    log.info("jobs_expired", count=expired)
                if self.cfg.retention > 0:
                    await self._purge(now - self.cfg.retention)
                self.stats = await self.jobs.stats(now)
            except StorageError:
                log.warning("job_janitor_storage_error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=2.0)
