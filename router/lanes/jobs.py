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
from datetime import UTC, datetime
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
    ObjectTooLarge,
    StorageError,
    StoredObject,
    StoreStats,
)
from router.storage.health import StorageHealth, retry_storage, storage_backoff
from router.tracecontext import parse_traceparent, start_span
from router.types import ERROR_TYPES, BackendError, Invocation, InvocationResult, Lane

if TYPE_CHECKING:  # botocore is imported only when SNS notifications are configured
    from router.notify_sns import SnsJobNotifier

log = structlog.get_logger("router.jobs")

Clock = Callable[[], float]
TargetLookup = Callable[[str, Lane], Target | None]  # (model, lane) -> the backend serving it, if any


STREAM_MIN_BYTES = 8 << 20  # payloads above this are streamed from storage to the backend, never held whole
PROBE_KEY = "probes/storage-health"  # written while the object store fails, to see it work again


def input_key(job_id: str) -> str:
    return f"inputs/{job_id}"


def result_key(job_id: str) -> str:
    return f"results/{job_id}"


def job_url(job_id: str) -> str:
    """Where the jobs API answers for a job (the 202's Location and status_url)."""
    return f"/jobs/{job_id}"


def rfc3339(epoch_s: float) -> str:
    """``2026-11-30T12:34:56.789Z``: UTC, milliseconds."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_json(job: Job, status_url: str | None = None) -> dict[str, Any]:
    """The jobs API's view of a job (DESIGN.md contract; the RFC 3339 times stand beside the epoch seconds)."""
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "status": job.status.value,
        "lane": job.spec.lane,
        "model": job.spec.model,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "created_at_rfc3339": rfc3339(job.created_at),
        "updated_at_rfc3339": rfc3339(job.updated_at),
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
                       timeout_s: float, clock: Clock = time.monotonic) -> Job | None:
    """The job once it is terminal, or its latest state after ``timeout_s``. ``done[job_id]`` is set by the lane
    when this process ends the job, which wakes the wait at once; polling with backoff covers other replicas."""
    deadline = clock() + timeout_s
    event = done.setdefault(job_id, asyncio.Event())
    delay = 0.02
    try:
        while True:
            job = await get(job_id)
            left = deadline - clock()
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
        self.health = StorageHealth("async", lambda lane, store: self.metrics.storage_errors(lane, store).inc())
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._janitor_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._done: dict[str, asyncio.Event] = {}  # job id -> set when this process finishes it
        self.events = JobEvents()

    # --- accepting ------------------------------------------------------------------------------

    async def accept(self, *, lane: Lane, model: str, tenant: str, priority: int,
                     body: bytes | AsyncIterable[bytes], limit: int, content_type: str | None,
                     accept: str | None = None, custom_attributes: str | None = None,
                     inference_id: str | None = None, job_id: str | None = None,
                     existing: StoredObject | None = None, callback_url: str | None = None,
                     traceparent: str | None = None, verify: Callable[[StoredObject], None] | None = None) -> Job:
        """Store the payload, then the job. Raises StorageError (answer 503) or ObjectTooLarge (413).

        ``existing``: the payload is already in the object store (an InputLocation); ``body`` is ignored.
        ``verify``: called with the stored payload (its size and SHA-256) before the job is recorded; what it
        raises is raised, and the payload is deleted: nothing is accepted.
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
        else:
            try:
                if isinstance(body, bytes | bytearray):
                    stored = await self.objects.put(key, bytes(body))
                else:
                    stored = await self.objects.put_stream(key, body, limit=limit)
            except StorageError as exc:
                if not isinstance(exc, ObjectTooLarge):
                    self.health.failed("objects", exc)
                raise
            self.health.ok("objects")
        if verify is not None:
            try:
                verify(stored)
            except Exception:
                if existing is None and key != INLINE_KEY:
                    with contextlib.suppress(StorageError):
                        await self.objects.delete(key)
                raise
        spec = JobSpec(
            job_id=job_id, lane=lane.value, model=model, tenant=tenant, input_key=key,
            input_bytes=stored.size, input_sha256=stored.sha256, content_type=content_type, accept=accept,
            custom_attributes=custom_attributes, inference_id=inference_id, priority=priority,
            max_attempts=self.cfg.max_attempts, ttl_s=self.cfg.ttl, timeout_s=self.cfg.invocation_timeout,
            callback_url=callback_url, traceparent=traceparent,
        )
        try:
            job = await self.jobs.create(spec, self.clock(), payload=inline)
        except StorageError as exc:
            self.health.failed("jobs", exc)
            raise
        self.health.ok("jobs")
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
        return await wait_for_end(self.jobs.get, self._done, job_id, timeout_s, self.sync.clock)

    # --- running --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        self._workers = {i: self._spawn_worker(i) for i in range(self.cfg.workers)}
        self._janitor_task = asyncio.create_task(self._janitor(), name="job-janitor")

    @property
    def workers_alive(self) -> int:
        return sum(not task.done() for task in self._workers.values())

    async def stop(self) -> None:
        """Stop leasing; running jobs get ``drain_timeout`` to finish, the rest go back to the queue."""
        self._stopping.set()
        await self.events.drain(5.0)  # deliveries already under way get a few seconds
        tasks = [*self._workers.values(), *([self._janitor_task] if self._janitor_task else [])]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.cfg.drain_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._workers, self._janitor_task = {}, None

    def _spawn_worker(self, index: int, restarts: int = 0) -> asyncio.Task[None]:
        task = asyncio.create_task(self._worker(index, storage_backoff(restarts) if restarts else 0.0),
                                   name=f"job-worker-{index}")
        task.add_done_callback(partial(self._worker_ended, index, restarts))
        return task

    def _worker_ended(self, index: int, restarts: int, task: asyncio.Task[None]) -> None:
        """A worker ends only when the lane stops: one that died anyway (raised, or was cancelled by someone
        else) is logged, counted and started again."""
        if self._stopping.is_set() or self._workers.get(index) is not task:
            return
        error = None if task.cancelled() else task.exception()
        log.error("job_worker_died", worker=index, error=repr(error) if error else "cancelled", exc_info=error)
        self.metrics.job_worker_restarts.inc()
        self._workers[index] = self._spawn_worker(index, restarts + 1)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the lane stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _worker(self, index: int, delay: float = 0.0) -> None:
        """Lease and run jobs until the lane stops. No error ends it: storage errors (a full disk, a lost
        database) are logged and waited out with backoff, so the worker resumes once storage works again."""
        await self._pause(delay)
        failures = 0
        while not self._stopping.is_set():
            try:
                leased = await self.jobs.lease(1, self.cfg.lease, self.clock())
                self.health.ok("jobs")
                if leased:
                    await self._run(leased[0])
                failures = 0
            except StorageError as exc:  # the lease, or the job's input (the job went back to the queue)
                failures += 1
                if "objects" not in self.health.failing_stores:
                    self.health.failed("jobs", exc)
                log.warning("job_storage_failed", worker=index, attempt=failures, error=str(exc))
                await self._pause(storage_backoff(failures))
                continue
            except Exception:  # a bug must not end the worker either
                failures += 1
                log.exception("job_worker_error", worker=index)
                await self._pause(storage_backoff(failures))
                continue
            if not leased:
                await self._pause(self.cfg.poll_interval)

    async def _run(self, job: Job) -> None:
        """One attempt. A StorageError before the model was called gives the job back (uncounted) and reaches
        the worker, which backs off; after the call, the outcome is retried as a storage write, never as a call."""
        lease = job.lease or ""
        parsed = parse_traceparent(job.spec.traceparent)
        request_trace_id.set(parsed[0] if parsed else None)  # this worker task's log lines carry the job's trace
        keeper = asyncio.create_task(self._keep_lease(job.job_id, lease))
        try:
            await self._attempt(job, lease, keeper)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # draining: hand the job back without counting it
                await asyncio.shield(self.jobs.release(job.job_id, lease, self.clock()))
            raise
        except StorageError:
            with contextlib.suppress(StorageError):
                await self.jobs.release(job.job_id, lease, self.clock())
            raise
        except Exception:
            log.exception("job_attempt_crashed", job_id=job.job_id)
            await self._retry_or_fail(job, lease, {"type": "InternalFailure", "message": "router error"}, keeper)
        finally:
            keeper.cancel()
            event = self._done.get(job.job_id)
            if event is not None:
                event.set()

    async def _keep_lease(self, job_id: str, lease: str) -> None:
        """Extends the lease while the job runs; ends (done) once the lease is another worker's."""
        while True:
            await asyncio.sleep(self.cfg.lease / 3)
            try:
                if not await self.jobs.extend(job_id, lease, self.cfg.lease, self.clock()):
                    log.warning("job_lease_lost", job_id=job_id)
                    return
            except StorageError:
                log.warning("job_lease_extend_failed", job_id=job_id)

    async def _attempt(self, job: Job, lease: str, keeper: asyncio.Task[None]) -> None:
        spec = job.spec
        target = self.targets(spec.model, Lane(spec.lane))
        if target is None:
            no_lane = {"type": "ValidationError", "message": f"model {spec.model!r} has no {spec.lane} lane"}
            await self._record(job, keeper, "failed", lambda: self.jobs.fail(job.job_id, lease, no_lane, self.clock()))
            return
        try:
            payload = await self._input(spec)
        except StorageError as exc:  # nothing was called yet: the job goes back, the worker backs off
            self.health.failed("objects" if spec.input_key != INLINE_KEY else "jobs", exc)
            raise
        if payload is None:
            gone = {"type": "InputMissing", "message": "the job's input is gone"}
            await self._record(job, keeper, "failed", lambda: self.jobs.fail(job.job_id, lease, gone, self.clock()))
            return
        if not await self.sync.room(target, self._stopping.is_set):
            with contextlib.suppress(StorageError):  # else its lease runs out: it comes back all the same
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
            error = {"type": ERROR_TYPES[exc.kind], "message": exc.message,
                     "status": exc.original_status or exc.status}
            if exc.retryable:
                await self._retry_or_fail(job, lease, error, keeper)
            elif await self._record(job, keeper, "failed", lambda: self.jobs.fail(job.job_id, lease, error,
                                                                                    self.clock())):
                self._finished(job, "failed")
                log.info("job_failed", job_id=job.job_id, error=error["type"])
            return
        await self._store_result(job, lease, keeper, result)

    async def _store_result(self, job: Job, lease: str, keeper: asyncio.Task[None], result: InvocationResult) -> None:
        """Write the result under the job id (a second run overwrites, never adds), then mark the job succeeded.
        A write storage refuses is retried for ``storage_retry``; then the job fails with a StorageError."""
        key = result_key(job.job_id)
        deadline = time.monotonic() + self.cfg.storage_retry
        stored, _ = await retry_storage(lambda: self.objects.put(key, result.body), self.health, "objects",
                                        "job_result", give_up=lambda: keeper.done() or time.monotonic() >= deadline,
                                        job_id=job.job_id)
        if not stored:
            if keeper.done():
                return  # the lease is another worker's now: it runs the job again
            error = {"type": "StorageError", "message": "the model answered, but storage refused its result for "
                     f"{self.cfg.storage_retry:g}s ({self.health.last_reason})"}
            if await self._record(job, keeper, "failed", lambda: self.jobs.fail(job.job_id, lease, error,
                                                                                self.clock())):
                self._finished(job, "failed")
                log.warning("job_failed", job_id=job.job_id, error="StorageError")
            return
        recorded = await self._record(job, keeper, "succeeded", lambda: self.jobs.succeed(
            job.job_id, lease, key, result.content_type, self.clock()))
        if recorded:
            self._finished(job, "succeeded")
            log.info("job_succeeded", job_id=job.job_id, attempts=job.attempts)

    async def _record(self, job: Job, keeper: asyncio.Task[None], outcome: str,
                      op: Callable[[], Awaitable[bool]]) -> bool:
        """Record a job's outcome, retrying a job store that fails for ``storage_retry``. True once recorded;
        False when the lease was lost or storage never came back (the job is then leased again later)."""
        deadline = time.monotonic() + self.cfg.storage_retry
        done, held = await retry_storage(op, self.health, "jobs", f"job_{outcome}",
                                         give_up=lambda: keeper.done() or time.monotonic() >= deadline,
                                         job_id=job.job_id)
        if not done:
            log.error("job_outcome_not_recorded", job_id=job.job_id, outcome=outcome,
                      why="lease lost" if keeper.done() else "storage kept failing")
            return False
        if not held:
            log.warning("job_outcome_not_recorded", job_id=job.job_id, outcome=outcome, why="lease lost")
        return bool(held)

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

    async def _retry_or_fail(self, job: Job, lease: str, error: Mapping[str, Any], keeper: asyncio.Task[None]) -> None:
        now = self.clock()
        if job.attempts >= job.spec.max_attempts:
            failed = {**error, "attempts": job.attempts}
            if await self._record(job, keeper, "failed", lambda: self.jobs.fail(job.job_id, lease, failed, now,
                                                                                   dead_letter=True)):
                self._finished(job, "failed")
                log.info("job_failed", job_id=job.job_id, error=error.get("type"), attempts=job.attempts)
            return
        delay = backoff_delay(job.attempts, self.cfg.backoff, self.cfg.max_backoff)
        if await self._record(job, keeper, "retried", lambda: self.jobs.retry(job.job_id, lease, error, now + delay,
                                                                               now)):
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
        """Expires jobs past their TTL, refreshes the stats the metrics read, and while the object store fails
        writes a probe to it, so the lane is seen healthy again once it works."""
        while not self._stopping.is_set():
            try:
                now = self.clock()
                expired = await self.jobs.expire(now)
                self.health.ok("jobs")
                if expired:
                    log.info("jobs_expired", count=expired)
                if self.cfg.retention > 0:
                    await self._purge(now - self.cfg.retention)
                self.stats = await self.jobs.stats(now)
            except StorageError as exc:
                self.health.failed("jobs", exc)
                log.warning("job_janitor_storage_error", error=str(exc))
            except Exception:
                log.exception("job_janitor_error")
            if self.health.failing("objects"):
                try:
                    await self.objects.put(PROBE_KEY, b"ok")  # empty files need no space: not a probe
                    self.health.ok("objects")
                except StorageError as exc:
                    self.health.failed("objects", exc)
            await self._pause(2.0)
