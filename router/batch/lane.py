"""The batch lane: requests' records appended durably to a per-model buffer, flushed into batch runs.

``accept`` parses the request into records (400 naming the line that does not parse), appends them in
one durable write, and only then is the 202 sent. A model's buffer is flushed when it holds
``max_records`` records or ``max_bytes`` bytes, or when its oldest record is ``max_wait`` old. A flush
moves whole requests into a batch in one transaction; the batch is run (local runner or Batch
Transform), every request's outputs are assembled in its input order and stored under its job id, and
all the batch's jobs end in one transaction. After a restart, batches cut short are run again and what
was still buffered is flushed: nothing accepted is lost, and each record ends exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import groupby
from typing import Any

import structlog

from router.batch.base import Batch, BatchBuffer, BatchedJob, BatchEntry, BatchRunner, Buffered, JobEnd, RecordOutcome
from router.batch.records import RecordError, RecordFormat, assemble, parse_records
from router.config import BatchConfig
from router.lanes.jobs import JobEvents, result_key, wait_for_end
from router.metrics import BatchGauge, RouterMetrics
from router.storage.base import Job, JobStatus, ObjectStore, StorageError
from router.storage.health import StorageHealth, retry_storage

log = structlog.get_logger("router.batch")

SettingsFor = Callable[[str], BatchConfig | None]  # model -> its batch settings (None: no batch lane now)
RunnerFor = Callable[[str], BatchRunner | None]  # model -> the runner of its batch backend
_MAX_ERRORS = 100  # failed records listed in a job's error; the counts cover all of them
_RESULT_TYPES = {RecordFormat.CSV: "text/csv", RecordFormat.JSONL: "application/jsonlines",
                 RecordFormat.JSON: "application/json"}


def flush_trigger(cfg: BatchConfig, buffered: Buffered, now: float) -> str | None:
    """Which limit a buffer reached: "records", "bytes" or "age" (its oldest record waited ``max_wait``); None
    while under all three. Pure: the simulator flushes by the same rule."""
    if not buffered.jobs:
        return None
    if buffered.records >= cfg.max_records:
        return "records"
    if buffered.bytes >= cfg.max_bytes:
        return "bytes"
    if buffered.oldest is not None and now - buffered.oldest >= cfg.max_wait:
        return "age"
    return None


class BatchLane:
    """Accepts batch requests and runs their records in batches; ``runs`` batches at once per process."""

    def __init__(self, store: BatchBuffer, objects: ObjectStore, settings: SettingsFor, runner_for: RunnerFor,
                 metrics: RouterMetrics, *, runs: int = 2, drain_timeout: float = 30.0,
                 events: JobEvents | None = None, retention: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.objects = objects
        self.settings = settings
        self.runner_for = runner_for
        self.metrics = metrics
        self.drain_timeout = drain_timeout
        self.clock = clock
        self.events = events or JobEvents()
        self.retention = retention  # finished jobs are deleted this long after they ended (0: kept)
        self.counts: dict[str, int] = {}  # jobs by status, refreshed by the ticker, for router_jobs
        self._locks: dict[str, asyncio.Lock] = {}
        self._slots = asyncio.Semaphore(runs)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done: dict[str, asyncio.Event] = {}
        self._ticker: asyncio.Task[None] | None = None
        self.stopping = False
        self.health = StorageHealth("batch", lambda lane, store: metrics.storage_errors(lane, store).inc())

    # --- accepting ------------------------------------------------------------------------------

    async def accept(self, *, model: str, tenant: str, priority: int, body: bytes, fmt: RecordFormat,
                     content_type: str | None, accept: str | None, callback_url: str | None = None) -> Job:
        """Append the request's records durably. RecordError: a record does not parse (answer 400);
        StorageError: nothing was stored (answer 503)."""
        records = parse_records(body, fmt)
        if not records:
            raise RecordError(1, "no records")
        entry = BatchEntry(uuid.uuid4().hex, model, tenant, fmt, records, content_type, accept, callback_url,
                           priority)
        try:
            job = await self.store.append(entry, self.clock())
        except StorageError as exc:
            self.health.failed("buffer", exc)
            raise
        self.health.ok("buffer")
        self._check(model)
        return job

    async def get(self, job_id: str) -> Job | None:
        return await self.store.get(job_id)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job still in the buffer; a flushed one runs to its end."""
        return await self.store.cancel(job_id, self.clock())

    async def wait(self, job_id: str, timeout_s: float) -> Job | None:
        """The job once it ended, or its latest state after ``timeout_s`` (Prefer: wait=N)."""
        return await wait_for_end(self.store.get, self._done, job_id, timeout_s)

    def gauges(self) -> Iterable[BatchGauge]:
        now = self.clock()
        for model, buffered in sorted(self.store.buffers.items()):
            cfg = self.settings(model)
            age = now - buffered.oldest if buffered.oldest is not None and buffered.records else 0.0
            yield BatchGauge(model, buffered.records, max(0.0, age), cfg.max_wait if cfg else 0.0)

    # --- flushing -------------------------------------------------------------------------------

    def _trigger(self, model: str) -> str | None:
        """Which limit ``model``'s buffer reached: "records", "bytes" or "age"; None while under all three."""
        cfg = self.settings(model)
        buffered = self.store.buffers.get(model)
        if cfg is None or buffered is None:
            return None
        return flush_trigger(cfg, buffered, self.clock())

    def _check(self, model: str) -> None:
        """Flush ``model``'s buffer if it reached a limit."""
        if self._trigger(model) is not None and not self._locks.setdefault(model, asyncio.Lock()).locked():
            self._spawn(self._flush(model), f"batch-flush-{model}")  # (a flush under way loops until under)

    async def _flush(self, model: str, *, restart: bool = False) -> None:
        """Flush batches while a limit is reached (after a restart: until the buffer is empty)."""
        async with self._locks.setdefault(model, asyncio.Lock()):
            while not self.stopping:
                cfg = self.settings(model)
                trigger = "restart" if restart and self.store.buffers.get(model, Buffered()).jobs \
                    else self._trigger(model)
                if cfg is None or trigger is None:
                    return
                batch_id = uuid.uuid4().hex
                try:
                    batch = await self.store.flush(model, batch_id, max_records=cfg.max_records,
                                                   max_bytes=cfg.max_bytes, trigger=trigger, now=self.clock())
                except StorageError as exc:
                    self.health.failed("buffer", exc)
                    log.warning("batch_flush_failed", model=model, error=str(exc))
                    return  # the buffer is intact; the ticker tries again
                self.health.ok("buffer")
                if batch is None:
                    return
                self.metrics.batch_flushes(model, trigger).inc()
                self.metrics.batch_size(model).observe(batch.records)
                log.info("batch_flushed", model=model, batch_id=batch_id, trigger=trigger, jobs=len(batch.jobs),
                         records=batch.records)
                self._spawn(self._run(batch), f"batch-run-{batch_id}")

    async def _tick(self) -> None:
        """Flush buffers that reached a limit (their oldest record's max_wait above all; in scale-out mode
        jobs reach this replica's buffer from the queue, not from its own appends); refresh job counts."""
        last_counts = 0.0
        while not self.stopping:
            now = self.clock()
            waits = [0.25]
            try:
                for model in list(self.store.buffers):
                    cfg = self.settings(model)
                    if cfg is not None:
                        waits.append(cfg.max_wait / 4)
                        self._check(model)
                if now - last_counts >= 2.0:
                    last_counts = now
                    self.counts = await self.store.counts()
                    if self.retention > 0:
                        await self._purge(now - self.retention)
            except StorageError as exc:
                self.health.failed("buffer", exc)
                log.warning("batch_ticker_storage_error", error=str(exc))
            except Exception:  # the ticker is what flushes by age: nothing may end it
                log.exception("batch_ticker_error")
            await asyncio.sleep(max(0.01, min(waits)))

    async def _purge(self, before: float) -> None:
        purged = await self.store.purge(before, 500)
        for key in purged:
            if key is not None:
                with contextlib.suppress(StorageError):
                    await self.objects.delete(key)
        if purged:
            log.info("batch_jobs_purged", count=len(purged))

    # --- running --------------------------------------------------------------------------------

    async def _run(self, batch: Batch) -> None:
        async with self._slots:
            if self.stopping:
                return  # stays pending: run after the restart
            started = time.monotonic()
            runner = self.runner_for(batch.model)
            ends: list[JobEnd] = []
            # one run per content type (a model takes one format per call); run ids stay the same on a re-run
            groups = [(key, list(jobs)) for key, jobs in groupby(batch.jobs, lambda j: (j.fmt, j.content_type,
                                                                                       j.accept))]
            for i, ((fmt, ctype, accept), jobs) in enumerate(groups):
                records = [r for j in jobs for r in j.records]
                run_id = batch.batch_id if len(groups) == 1 else f"{batch.batch_id}-{i}"
                outcomes = await self._outcomes(runner, run_id, records, fmt, ctype or fmt.value, accept)
                # a full disk is waited out: the records are not run again for it (a stop leaves the batch
                # pending, and it runs again after the restart)
                stored, written = await retry_storage(partial(self._store_results, jobs, outcomes), self.health,
                                                      "objects", "batch_results", give_up=lambda: self.stopping,
                                                      batch_id=batch.batch_id)
                if not stored or written is None:
                    return
                ends += written
            completed, ended = await retry_storage(partial(self.store.complete, batch, ends, self.clock()),
                                                   self.health, "buffer", "batch_outcome",
                                                   give_up=lambda: self.stopping, batch_id=batch.batch_id)
            if not completed or ended is None:
                log.warning("batch_not_completed", batch_id=batch.batch_id)  # pending: runs again after a restart
                return
            failed = sum(e.failed for e in ends)
            self.metrics.batch_records(batch.model, "succeeded").inc(sum(e.done for e in ends))
            self.metrics.batch_records(batch.model, "failed").inc(failed)
            self.metrics.batch_run_duration(batch.model).observe(time.monotonic() - started)
            by_id = {j.job_id: j for j in batch.jobs}
            for end in ends:
                job = by_id[end.job_id]
                self.metrics.job_duration(batch.model, "batch", end.status.value).observe(
                    max(0.0, self.clock() - job.created_at))
                event = self._done.get(end.job_id)
                if event is not None:
                    event.set()
                self.events.finished(end.job_id, job.callback_url, self.store.get)
            log.info("batch_done", model=batch.model, batch_id=batch.batch_id, jobs=ended, records=batch.records,
                     failed=failed, runs=batch.runs, seconds=round(time.monotonic() - started, 3))

    async def _outcomes(self, runner: BatchRunner | None, run_id: str, records: Sequence[bytes], fmt: RecordFormat,
                        content_type: str, accept: str | None) -> list[RecordOutcome]:
        if runner is None:
            return [RecordOutcome(None, "the model has no batch lane any more")] * len(records)
        try:
            outcomes = await runner.run(run_id, records, fmt, content_type=content_type, accept=accept)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a runner bug must not lose the records: they fail with the reason
            log.exception("batch_runner_failed", batch_id=run_id)
            outcomes = [RecordOutcome(None, f"batch runner failed: {type(exc).__name__}")] * len(records)
        if len(outcomes) != len(records):
            return [RecordOutcome(None, f"runner answered {len(outcomes)} outcomes for {len(records)} records")
                    ] * len(records)
        return outcomes

    async def _store_results(self, jobs: list[BatchedJob], outcomes: list[RecordOutcome]) -> list[JobEnd]:
        ends: list[JobEnd] = []
        at = 0
        for job in jobs:
            mine = outcomes[at:at + len(job.records)]
            at += len(job.records)
            failed = [(i, o.error) for i, o in enumerate(mine) if o.output is None]
            done = len(mine) - len(failed)
            error = None
            if failed:
                error = {"type": "RecordsFailed", "message": f"{len(failed)} of {len(mine)} records failed",
                         "records": [{"index": i, "error": e} for i, e in failed[:_MAX_ERRORS]]}
            key = None
            if done:  # under the job id: a batch run twice overwrites, never adds
                key = result_key(job.job_id)
                await self.objects.put(key, assemble([o.output for o in mine], job.fmt))
            status = JobStatus.SUCCEEDED if done else JobStatus.FAILED
            ends.append(JobEnd(job.job_id, status, done, len(failed), key, _RESULT_TYPES[job.fmt] if key else None,
                               error))
        return ends

    # --- life -----------------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Run batches cut short by a stop or a crash, flush what was left buffered, start the ticker."""
        self.stopping = False
        await self.store.start()
        for batch in await self.store.pending():
            log.info("batch_resumed", model=batch.model, batch_id=batch.batch_id, runs=batch.runs)
            self._spawn(self._run(batch), f"batch-run-{batch.batch_id}")
        for model, buffered in list(self.store.buffers.items()):
            if buffered.jobs:
                self._spawn(self._flush(model, restart=True), f"batch-flush-{model}")
        self.counts = await self.store.counts()
        self._ticker = asyncio.create_task(self._tick(), name="batch-ticker")

    async def stop(self) -> None:
        """Stop flushing; runs under way get ``drain_timeout``, the rest stay pending for the next start.
        Buffered records stay in the durable buffer and are flushed after the restart."""
        self.stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        with contextlib.suppress(StorageError):
            await self.store.stop()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
