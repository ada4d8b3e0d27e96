"""The scale-out job store: job records as JSON objects in S3, the work queue in SQS (with a dead-letter queue).

Many router replicas share one store. The pieces and what each method does with them:

* **record** ``s3://bucket/prefix<job_id>.json``: the spec, status, timestamps, attempts, result or error and
  the current lease. Every change is a read-modify-write guarded by S3 conditional writes (``IfMatch`` on the
  ETag read, ``IfNoneMatch="*"`` on create), so two replicas never overwrite each other's change: the loser
  re-reads and decides again.
* **message** in the work queue: its body is the job id. The lease token is the message's receipt handle, and
  the lease itself is the message's visibility timeout: a worker that dies stops extending it, the message
  becomes visible again and the next ``lease`` takes the job over.

Method by method:

* ``create``: PutObject(record, IfNoneMatch=*), then SendMessage and PutObject(tenant index entry) at once; if
  either fails the record is deleted again. For the first job of each second per model, PutObject(queued
  marker), best effort (see :mod:`router.storage.s3_index`: a marked job's marker is deleted when a worker
  takes it, and written again on ``retry`` and ``release``).
* ``lease``: ReceiveMessage (at most 10, VisibilityTimeout = lease, ApproximateReceiveCount) and for each message
  GetObject(record), then one of: a terminal record -> DeleteMessage (a cancelled or finished job's leftover
  message); past its TTL -> record expired + DeleteMessage; attempts used up -> record failed
  (``MaxAttemptsExceeded``) + SendMessage(DLQ) + DeleteMessage; a retry delay not yet over (a lost
  ChangeMessageVisibility) -> ChangeMessageVisibility(rest of the delay); else record running with
  ``lease = receipt handle`` (conditional PutObject).
* ``extend``: GetObject(record) (lease check) + ChangeMessageVisibility(lease).
* ``succeed``: conditional PutObject(record succeeded) + DeleteMessage.
* ``retry``: conditional PutObject(record queued, error, not_before) + ChangeMessageVisibility(not_before - now).
* ``fail``: conditional PutObject(record failed) + DeleteMessage, and SendMessage(DLQ) when the job used up
  its attempts. A cancel (``lease`` None) only writes the record of a queued job; the worker that later
  receives its message deletes it.
* ``release``: conditional PutObject(record queued, ``uncounted + 1``) + ChangeMessageVisibility(0).
* ``expire``: a no-op returning 0; expiry is checked when a job's message is received (see ``lease``).
* ``stats``: GetQueueAttributes of the work queue and of the DLQ; every ``queued_scan_s`` (15 s) a
  ListObjectsV2 of the queued markers' models and one per model (its oldest queued job).
* ``list``: ListObjectsV2 of the tenant index, then GetObject per job listed.

Attempts: SQS's ApproximateReceiveCount counts every receive, including those that were no attempt (a
``release`` by a draining worker, a receive that only re-hid a delayed retry). The record counts those in
``uncounted``, and ``attempts = ApproximateReceiveCount - uncounted``. The work queue's own redrive policy
(``maxReceiveCount``) counts every receive too: set it above the largest ``max_attempts`` plus some room
(e.g. ``max_attempts + 5``); it is only a backstop for messages this store cannot handle (say, a record that
cannot be read), and a job it moves stays queued or running in its record.

Limitations (SQS is not the SQLite queue):

* Priority is ignored: one standard queue delivers roughly in order, whatever the priority. Use one queue
  per priority level (and lease from the higher first) if it matters.
* ``stats`` has no per-model backlog (SQS gives only queue-wide approximate counts): ``jobs`` holds
  ``("*", "queued")`` (visible + delayed messages) and ``("*", "running")`` (in-flight messages, which include
  retries waiting out their delay), and ``queued`` holds the same backlog under the model ``"*"``. The oldest
  queued job's age is per model (from the queued markers), to within ``mark_every_s`` and at most
  ``queued_scan_s`` old.
* A job past its TTL is expired only when its message is next received; ``get`` shows it queued until then.
* The lease token is a receipt handle (a few hundred characters), not a short random token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from router.backends.sagemaker import default_region
from router.storage.base import TERMINAL, Job, JobCursor, JobSpec, JobStatus, StorageError, StoreStats
from router.storage.s3 import CONFLICT_CODES, aws_errors, client_config, error_code
from router.storage.s3_index import JobIndex

log = structlog.get_logger("router.storage")

_RECORD_VERSION = 1
_SPEC_FIELDS = frozenset(f.name for f in dataclasses.fields(JobSpec))
_MAX_VISIBILITY_S = 43_200  # SQS caps a message's visibility timeout at 12 hours
_MAX_RECEIVE = 10  # SQS's limit per ReceiveMessage
_CAS_TRIES = 5  # conditional-write attempts before giving up on a record that keeps changing
# A receipt handle SQS no longer accepts: the message was deleted, re-received, or is not in flight.
_STALE_HANDLE = frozenset({"ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidParameterValue",
                           "AWS.SimpleQueueService.MessageNotInflight"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
# Replicas' clocks differ a little: a retry delay this close to over is taken as over, not hidden again.
_CLOCK_SLACK_S = 0.5
_EXPIRED_ERROR: Mapping[str, Any] = {"type": "Expired", "message": "the job did not finish within its TTL"}

Record = dict[str, Any]


def _visibility(seconds: float) -> int:
    return max(0, min(_MAX_VISIBILITY_S, math.ceil(seconds)))


def _new_record(spec: JobSpec, now: float, records: int | None = None) -> Record:
    return {
        "records": {"total": records, "done": 0, "failed": 0} if records is not None else None,
        "v": _RECORD_VERSION,
        "spec": dataclasses.asdict(spec),
        "status": JobStatus.QUEUED.value,
        "created_at": now,
        "updated_at": now,
        "attempts": 0,
        "uncounted": 0,  # receives that were no attempt (releases, re-hidden retries)
        "not_before": 0.0,
        "lease": None,
        "lease_until": None,
        "result_key": None,
        "result_content_type": None,
        "error": None,
    }


def _to_job(rec: Record) -> Job:
    spec = JobSpec(**{k: v for k, v in rec["spec"].items() if k in _SPEC_FIELDS})
    return Job(
        spec=spec,
        status=JobStatus(rec["status"]),
        created_at=float(rec["created_at"]),
        updated_at=float(rec["updated_at"]),
        attempts=int(rec["attempts"]),
        result_key=rec.get("result_key"),
        result_content_type=rec.get("result_content_type"),
        error=rec.get("error"),
        lease=rec.get("lease"),
        records=rec.get("records"),
    )


def _error(error: Mapping[str, Any]) -> dict[str, Any]:
    # a round trip through JSON (default=str): an error carrying a non-JSON value is still recorded, as text
    loaded: dict[str, Any] = json.loads(json.dumps(dict(error), default=str))
    return loaded


def _holds(rec: Record, lease: str) -> bool:
    return rec["status"] == JobStatus.RUNNING.value and rec.get("lease") == lease


class SqsJobStore:
    """``JobStore`` shared by many replicas: records in S3 (``bucket``/``prefix``), the queue in SQS.

    ``queue_url`` is the work queue (a standard queue with a redrive policy to ``dlq_url`` as a backstop);
    ``dlq_url`` receives the id of every job that ends failed while leased. ``receive_wait_s`` is the long-poll
    wait of ``lease`` (0: return at once when the queue is empty). See the module docstring for the mapping of
    each method to S3 and SQS calls, and the limitations.
    """

    def __init__(
        self,
        bucket: str,
        queue_url: str,
        *,
        dlq_url: str | None = None,
        prefix: str = "jobs/",
        region: str | None = None,
        endpoint_url: str | None = None,
        receive_wait_s: int = 1,
        config: Config | None = None,
        track_queued: bool = True,
        queued_scan_s: float = 15.0,
        mark_every_s: float = 1.0,
    ) -> None:
        self.bucket = bucket
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self.prefix = prefix
        self._region = region
        self._endpoint_url = endpoint_url
        self._wait_s = max(0, min(20, receive_wait_s))  # SQS allows 0-20 s
        # the read timeout must outlast a long poll
        self._config = config or client_config(read_timeout_s=30.0 + self._wait_s)
        self._clients: tuple[Any, Any] | None = None
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self.index = JobIndex(bucket, prefix, self._s3)
        self._track_queued = track_queued  # the batch buffer's store leaves the queued markers to the job lane's
        self._queued_scan_s = queued_scan_s
        self._mark_every_s = mark_every_s
        self._next_mark: dict[str, float] = {}  # model -> when the next job created gets a queued marker
        self._oldest: dict[str, float] = {}  # model -> creation time of its oldest queued job, at the last scan
        self._scanned_at = -math.inf
        self._queued_before = 0

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the S3 and SQS clients (idempotent; the first call of any method does it too)."""
        await self._aws()

    async def _aws(self) -> tuple[Any, Any]:
        if self._clients is not None:
            return self._clients
        async with self._lock:
            if self._clients is None:
                session = get_session()
                region = self._region or default_region()
                with aws_errors("cannot create the S3 / SQS clients"):
                    s3 = await self._stack.enter_async_context(session.create_client(
                        "s3", region_name=region, endpoint_url=self._endpoint_url, config=self._config))
                    sqs = await self._stack.enter_async_context(session.create_client(
                        "sqs", region_name=region, endpoint_url=self._endpoint_url, config=self._config))
                self._clients = (s3, sqs)
            return self._clients

    async def _s3(self) -> Any:
        return (await self._aws())[0]

    async def close(self) -> None:
        """Close both clients and their connection pools."""
        async with self._lock:
            self._clients = None
            stack, self._stack = self._stack, contextlib.AsyncExitStack()
            await stack.aclose()

    # -- records --------------------------------------------------------------------------------------------

    def record_key(self, job_id: str) -> str:
        """The S3 key of a job's record."""
        if not job_id or "/" in job_id:
            raise ValueError(f"invalid job id {job_id!r}")
        return f"{self.prefix}{job_id}.json"

    async def _read(self, job_id: str) -> tuple[Record, str] | None:
        """The record and its ETag, or None if there is none."""
        s3, _ = await self._aws()
        try:
            with aws_errors(f"cannot read job {job_id!r}"):
                resp = await s3.get_object(Bucket=self.bucket, Key=self.record_key(job_id))
                async with resp["Body"] as body:
                    raw = await body.read()
        except StorageError as exc:
            if isinstance(exc.__cause__, ClientError) and error_code(exc.__cause__) in _MISSING:
                return None
            raise
        try:
            rec: Record = json.loads(raw)
        except ValueError as exc:
            raise StorageError(f"job {job_id!r}: unreadable record") from exc
        return rec, str(resp["ETag"])

    async def _write(self, job_id: str, rec: Record, etag: str | None) -> bool:
        """Store ``rec`` only if the record still has ``etag`` (None: only if there is none); False if not."""
        s3, _ = await self._aws()
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        body = json.dumps(rec, separators=(",", ":")).encode()
        try:
            with aws_errors(f"cannot write job {job_id!r}"):
                await s3.put_object(Bucket=self.bucket, Key=self.record_key(job_id), Body=body,
                                    ContentType="application/json", **condition)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and error_code(cause) in CONFLICT_CODES | _MISSING:
                return False  # another replica changed (or removed) the record since it was read
            raise
        return True

    async def _modify(self, job_id: str, change: Callable[[Record], Record | None]) -> Record | None:
        """Read-modify-write under IfMatch, re-deciding on a lost race; None when ``change`` declines."""
        for _ in range(_CAS_TRIES):
            got = await self._read(job_id)
            if got is None:
                return None
            rec, etag = got
            new = change(dict(rec))
            if new is None:
                return None
            if await self._write(job_id, new, etag):
                return new
        raise StorageError(f"job {job_id!r}: the record kept changing under concurrent writes")

    # -- SQS helpers ----------------------------------------------------------------------------------------

    async def _change_visibility(self, handle: str, seconds: float) -> bool:
        """False when the receipt handle is stale."""
        _, sqs = await self._aws()
        try:
            with aws_errors("cannot change a message's visibility"):
                await sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=handle,
                                                    VisibilityTimeout=_visibility(seconds))
        except StorageError as exc:
            if isinstance(exc.__cause__, ClientError) and error_code(exc.__cause__) in _STALE_HANDLE:
                return False
            raise
        return True

    async def _settle(self, job_id: str, action: Callable[[], Any]) -> None:
        """An SQS step after the record is written: the record is the truth, so a failure here is only logged.

        A message left behind comes back and is dropped by ``lease`` (its record is terminal), or its
        visibility change is made up for there (a retry delay is re-applied from the record).
        """
        try:
            await action()
        except StorageError as exc:
            log.warning("sqs_step_failed", job_id=job_id, error=str(exc))

    async def _delete_message(self, handle: str) -> None:
        _, sqs = await self._aws()
        try:
            with aws_errors("cannot delete a message"):
                await sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=handle)
        except StorageError as exc:
            if not (isinstance(exc.__cause__, ClientError) and error_code(exc.__cause__) in _STALE_HANDLE):
                raise

    async def _dead_letter(self, job_id: str) -> None:
        if self.dlq_url is None:
            return
        _, sqs = await self._aws()
        with aws_errors(f"cannot dead-letter job {job_id!r}"):
            await sqs.send_message(QueueUrl=self.dlq_url, MessageBody=job_id)

    async def _queue_counts(self, url: str, names: list[str]) -> dict[str, int]:
        _, sqs = await self._aws()
        with aws_errors("cannot read queue attributes"):
            resp = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        attrs = resp.get("Attributes") or {}
        return {name: int(attrs.get(name, 0)) for name in names}

    async def _queued(self, rec: Record, queued: bool) -> None:
        """Add or drop the queued marker of a marked job. Only the first job of each ``mark_every_s`` per model
        (and per replica) is marked: the oldest marker then dates the oldest queued job to within that interval,
        at a fraction of a marker per job. Best effort: a marker left behind is checked and dropped by
        ``JobIndex.oldest_queued``; one missing costs only the age gauge."""
        if not rec.get("marked"):
            return
        spec = rec["spec"]
        args = (str(spec["model"]), float(rec["created_at"]), str(spec["job_id"]))
        try:
            await (self.index.mark_queued(*args) if queued else self.index.unmark_queued(*args))
        except StorageError as exc:
            log.warning("job_queued_marker_failed", job_id=args[2], error=str(exc))

    async def _still_queued(self, job_id: str) -> bool:
        job = await self.get(job_id)
        return job is not None and job.status is JobStatus.QUEUED

    # -- JobStore -------------------------------------------------------------------------------------------

    inline_max = 0  # payloads always go to S3: a record is rewritten on every change

    async def input(self, job_id: str) -> bytes | None:
        return None

    async def create(self, spec: JobSpec, now: float, *, payload: bytes | None = None,
                     records: int | None = None) -> Job:
        """Write the record (only if new), then send the job id to the work queue. ``records``: a batch job's
        record count, kept with its progress. Payloads are never inline here (``inline_max`` is 0)."""
        if payload is not None:
            raise ValueError("the S3 + SQS job store keeps no inline payloads")
        rec = _new_record(spec, now, records)
        if self._track_queued and now >= self._next_mark.get(spec.model, -math.inf):
            rec["marked"] = True  # the first job of each mark_every_s per model: see _queued
            self._next_mark[spec.model] = now + self._mark_every_s
        if not await self._write(spec.job_id, rec, None):
            raise StorageError(f"job {spec.job_id!r} already exists")
        _, sqs = await self._aws()

        async def enqueue() -> None:
            with aws_errors(f"cannot enqueue job {spec.job_id!r}"):
                await sqs.send_message(QueueUrl=self.queue_url, MessageBody=spec.job_id)

        try:  # the message and the tenant listing's entry at once: one round trip more than the record alone
            await asyncio.gather(enqueue(), self.index.add_tenant(spec.tenant, now, spec.job_id))
        except BaseException:
            # a record without a message would never run: take it back (the caller answers 503, not 202)
            s3, _ = await self._aws()
            with contextlib.suppress(Exception):
                await asyncio.shield(s3.delete_object(Bucket=self.bucket, Key=self.record_key(spec.job_id)))
            with contextlib.suppress(Exception):
                await asyncio.shield(self.index.remove_tenant(spec.tenant, now, spec.job_id))
            raise
        await self._queued(rec, True)
        return _to_job(rec)

    async def get(self, job_id: str) -> Job | None:
        """The job as recorded, or None."""
        got = await self._read(job_id)
        return None if got is None else _to_job(got[0])

    async def lease(self, limit: int, lease_s: float, now: float) -> list[Job]:
        """Receive up to ``min(limit, 10)`` messages and lease their jobs (see the module docstring).

        Priority is not honoured (one SQS queue). A message whose job fails to lease because of a storage
        error is left to come back after ``lease_s``; the others are still returned.
        """
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        if limit <= 0:
            return []
        _, sqs = await self._aws()
        with aws_errors("cannot receive from the work queue"):
            resp = await sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(limit, _MAX_RECEIVE),
                VisibilityTimeout=max(1, _visibility(lease_s)),
                WaitTimeSeconds=self._wait_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        messages = resp.get("Messages") or []
        outcomes = await asyncio.gather(*(self._take(m, lease_s, now) for m in messages), return_exceptions=True)
        leased: list[Job] = []
        errors: list[BaseException] = []
        for outcome in outcomes:
            if isinstance(outcome, Job):
                leased.append(outcome)
            elif isinstance(outcome, BaseException):
                errors.append(outcome)
        for exc in errors:
            if not isinstance(exc, StorageError):
                raise exc
        if errors and not leased:
            raise errors[0]
        for exc in errors:
            log.warning("lease_step_failed", error=str(exc))
        return leased

    async def _take(self, message: Mapping[str, Any], lease_s: float, now: float) -> Job | None:
        """Lease the job of one received message, or settle the message; None when nothing is leased."""
        job_id = str(message["Body"])
        handle = str(message["ReceiptHandle"])
        received = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", 1))
        first = True
        for _ in range(_CAS_TRIES):
            got = await self._read(job_id)
            if got is None:
                log.warning("job_message_without_record", job_id=job_id)
                await self._delete_message(handle)
                return None
            rec, etag = got
            status = JobStatus(rec["status"])
            if status in TERMINAL:
                await self._delete_message(handle)  # a cancelled job, or a duplicate of a finished one
                return None
            if not first and status is JobStatus.RUNNING:
                return None  # a duplicate delivery another replica leased while this one decided
            first = False
            new = dict(rec, updated_at=now, lease=None, lease_until=None)
            spec = rec["spec"]
            attempts = received - int(rec.get("uncounted", 0))
            if now >= float(rec["created_at"]) + float(spec["ttl_s"]):
                new.update(status=JobStatus.EXPIRED.value, error=dict(_EXPIRED_ERROR))
                if await self._write(job_id, new, etag):
                    await self._queued(rec, False)
                    await self._delete_message(handle)
                    return None
            elif attempts > int(spec["max_attempts"]):
                used = int(rec["attempts"])
                new.update(status=JobStatus.FAILED.value, error={
                    "type": "MaxAttemptsExceeded", "attempts": used,
                    "message": f"gave up after {used} attempts", "last_error": rec.get("error")})
                if await self._write(job_id, new, etag):
                    await self._queued(rec, False)
                    await self._dead_letter(job_id)
                    await self._delete_message(handle)
                    return None
            elif status is JobStatus.QUEUED and float(rec.get("not_before") or 0.0) > now + _CLOCK_SLACK_S:
                # its retry delay is not over (the delaying visibility change was lost): hide it for the rest
                new = dict(rec, uncounted=int(rec.get("uncounted", 0)) + 1)
                if await self._write(job_id, new, etag):
                    await self._change_visibility(handle, float(rec["not_before"]) - now)
                    return None
            else:
                new.update(status=JobStatus.RUNNING.value, attempts=attempts, lease=handle,
                           lease_until=now + lease_s)
                if await self._write(job_id, new, etag):
                    await self._queued(rec, False)
                    return _to_job(new)
        return None  # the record kept changing: the message comes back after lease_s

    async def extend(self, job_id: str, lease: str, lease_s: float, now: float) -> bool:
        """Push the message's visibility out by ``lease_s``; False if the lease is not this worker's any more.

        The record is not rewritten (its ``lease_until`` stays the lease's start + first ``lease_s``): SQS's
        visibility is the lease, and a write per extend would double the S3 cost of a long job.
        """
        got = await self._read(job_id)
        if got is None or not _holds(got[0], lease):
            return False
        return await self._change_visibility(lease, lease_s)

    async def succeed(self, job_id: str, lease: str, result_key: str, content_type: str | None,
                      now: float) -> bool:
        """Running -> succeeded while ``lease`` is current (conditional write), then DeleteMessage."""

        def change(rec: Record) -> Record | None:
            if not _holds(rec, lease):
                return None
            # the errors of earlier attempts are cleared: a succeeded job reports no error
            return dict(rec, status=JobStatus.SUCCEEDED.value, result_key=result_key,
                        result_content_type=content_type, error=None, lease=None, lease_until=None, updated_at=now)

        if await self._modify(job_id, change) is None:
            return False
        await self._settle(job_id, lambda: self._delete_message(lease))
        return True

    async def end(self, job_id: str, lease: str, *, status: JobStatus, result_key: str | None,
                  content_type: str | None, error: Mapping[str, Any] | None, records: Mapping[str, int],
                  now: float) -> bool:
        """A batch job's end while ``lease`` is current: its status, result, per-record counts and errors
        (a succeeded batch job may name failed records), then DeleteMessage. No DLQ: its records ran."""

        def change(rec: Record) -> Record | None:
            if not _holds(rec, lease):
                return None
            return dict(rec, status=status.value, result_key=result_key, result_content_type=content_type,
                        error=_error(error) if error is not None else None, records=dict(records), lease=None,
                        lease_until=None, updated_at=now)

        if await self._modify(job_id, change) is None:
            return False
        await self._settle(job_id, lambda: self._delete_message(lease))
        return True

    async def extend_many(self, leases: list[str], lease_s: float) -> set[str]:
        """Push out the visibility of many held messages, ten per call, without reading their records;
        the leases SQS no longer accepts (the message came back and another replica took it)."""
        _, sqs = await self._aws()
        stale: set[str] = set()
        for start in range(0, len(leases), _MAX_RECEIVE):
            chunk = leases[start:start + _MAX_RECEIVE]
            with aws_errors("cannot extend leases"):
                resp = await sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": _visibility(lease_s)}
                    for i, h in enumerate(chunk)])
            stale.update(chunk[int(f["Id"])] for f in resp.get("Failed") or [])
        return stale

    async def retry(self, job_id: str, lease: str, error: Mapping[str, Any], not_before: float,
                    now: float) -> bool:
        """Running -> queued with the error; the message stays hidden until ``not_before``."""

        def change(rec: Record) -> Record | None:
            if not _holds(rec, lease):
                return None
            return dict(rec, status=JobStatus.QUEUED.value, error=_error(error), not_before=not_before,
                        lease=None, lease_until=None, updated_at=now)

        rec = await self._modify(job_id, change)
        if rec is None:
            return False
        await self._queued(rec, True)
        await self._settle(job_id, lambda: self._change_visibility(lease, max(0.0, not_before - now)))
        return True

    async def fail(self, job_id: str, lease: str | None, error: Mapping[str, Any], now: float, *,
                   dead_letter: bool = False) -> bool:
        """-> failed. Leased: the message is deleted, and with ``dead_letter`` (attempts used up) the id goes to
        the DLQ. ``lease`` None (cancel): only a queued job, and only its record changes (no DLQ: a cancel is no
        poison); its message is dropped when next received."""

        def change(rec: Record) -> Record | None:
            if lease is None:
                if rec["status"] != JobStatus.QUEUED.value:
                    return None
            elif not _holds(rec, lease):
                return None
            return dict(rec, status=JobStatus.FAILED.value, error=_error(error), lease=None, lease_until=None,
                        updated_at=now)

        rec = await self._modify(job_id, change)
        if rec is None:
            return False
        if lease is None:
            await self._queued(rec, False)
        else:
            if dead_letter:
                await self._settle(job_id, lambda: self._dead_letter(job_id))
            await self._settle(job_id, lambda: self._delete_message(lease))
        return True

    async def release(self, job_id: str, lease: str, now: float) -> bool:
        """Running -> queued and visible at once; ``uncounted`` + 1 so the next receive is not an extra attempt."""

        def change(rec: Record) -> Record | None:
            if not _holds(rec, lease):
                return None
            return dict(rec, status=JobStatus.QUEUED.value, attempts=max(0, int(rec["attempts"]) - 1),
                        uncounted=int(rec.get("uncounted", 0)) + 1, not_before=0.0, lease=None,
                        lease_until=None, updated_at=now)

        rec = await self._modify(job_id, change)
        if rec is None:
            return False
        await self._queued(rec, True)
        await self._settle(job_id, lambda: self._change_visibility(lease, 0))
        return True

    async def purge(self, before: float, limit: int) -> list[Job]:
        """Nothing: S3 cannot list records by age cheaply; a bucket lifecycle rule expires them instead."""
        return []

    async def expire(self, now: float) -> int:
        """0: SQS cannot list queued jobs by age, so expiry happens when a job's message is next received."""
        return 0

    async def tenant_jobs(self, tenant: str, after: JobCursor | None, limit: int) -> tuple[list[Job], JobCursor | None]:
        """A tenant's jobs (of every store sharing this prefix: the batch lane's too) from the tenant index:
        one ListObjectsV2 and up to ``limit`` GetObject (16 at a time). An entry whose record is gone (the
        lifecycle rule took it) is left out."""
        ids, following = await self.index.tenant_page(tenant, after, limit)
        gate = asyncio.Semaphore(16)

        async def read(job_id: str) -> Job | None:
            async with gate:
                return await self.get(job_id)

        jobs = await asyncio.gather(*(read(i) for i in ids))
        return [job for job in jobs if job is not None], following

    async def stats(self, now: float) -> StoreStats:
        """Queue-wide approximate counts from SQS (the backlog under model ``"*"``: SQS cannot count per model);
        the oldest queued job per model from the queued markers, listed at most every ``queued_scan_s``;
        dead-lettered = the DLQ's message count."""
        main = await self._queue_counts(self.queue_url, [
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed"])
        dead = 0
        if self.dlq_url is not None:
            dead = (await self._queue_counts(self.dlq_url, ["ApproximateNumberOfMessages"]))[
                "ApproximateNumberOfMessages"]
        queued = main["ApproximateNumberOfMessages"] + main["ApproximateNumberOfMessagesDelayed"]
        # listed every queued_scan_s, and at once when jobs appear in a queue that was empty
        due = now - self._scanned_at >= self._queued_scan_s or (queued > 0 and self._queued_before == 0)
        if self._track_queued and due:
            self._oldest = await self.index.oldest_queued(now, self._still_queued)
            self._scanned_at = now
        self._queued_before = queued
        return StoreStats(
            jobs={("*", JobStatus.QUEUED.value): queued,
                  ("*", JobStatus.RUNNING.value): main["ApproximateNumberOfMessagesNotVisible"]},
            queued={"*": queued},
            oldest_queued_age_s={model: max(0.0, now - created) for model, created in self._oldest.items()},
            dead_lettered=dead,
        )
