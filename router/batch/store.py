"""The batch lane's durable buffer: batch jobs, their records, and the batches they were flushed into.

One SQLite file (WAL, fsync at commit, group commit: see ``SqliteDatabase``). A job's records are stored
inline with it, joined by newlines (each record is one line: a CSV line, a JSON line, or a compact JSON
instance), so appending a request is one row in one transaction shared with its concurrent neighbours.

A job is ``queued`` while buffered, ``running`` once a flush put it into a batch, and then ``succeeded``
or ``failed``. A flush moves whole jobs into a new batch in one transaction; a batch stays ``pending``
until ``complete`` records every job's end in one transaction, guarded by the batch id, so a batch that
ran twice (a crash mid-run, then a restart) still ends each job, and so each record, exactly once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.batch.base import Batch, BatchedJob, BatchEntry, Buffered, JobEnd
from router.batch.records import RecordFormat
from router.storage.base import Job, JobCursor, JobSpec, JobStatus
from router.storage.sqlite import SqliteDatabase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    tenant TEXT NOT NULL,
    fmt TEXT NOT NULL,
    content_type TEXT,
    accept TEXT,
    callback_url TEXT,
    priority INTEGER NOT NULL,
    records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    payload BLOB,
    status TEXT NOT NULL,
    batch_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    result_key TEXT,
    result_content_type TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS batch_jobs_buffered ON batch_jobs (model, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS batch_jobs_in_batch ON batch_jobs (batch_id, seq) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS batch_jobs_status ON batch_jobs (status);
CREATE INDEX IF NOT EXISTS batch_jobs_finished ON batch_jobs (updated_at) WHERE status IN ('succeeded', 'failed');
CREATE INDEX IF NOT EXISTS batch_jobs_tenant ON batch_jobs (tenant, created_at);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    trigger TEXT NOT NULL,
    records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_pending ON batches (created_at) WHERE state = 'pending';
"""

_INSERT = (
    "INSERT INTO batch_jobs (job_id, model, tenant, fmt, content_type, accept, callback_url, priority, records,"
    " bytes, payload, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)"
)
_JOB_COLUMNS = "job_id, fmt, content_type, accept, callback_url, records, payload, created_at"
# What ``_job`` reads: every column but the payload (a listing must not load the records).
_LISTED = ("job_id, model, tenant, bytes, content_type, accept, priority, callback_url, status, created_at,"
           " updated_at, batch_id, result_key, result_content_type, error, records, done, failed")


def _batched(row: sqlite3.Row) -> BatchedJob:
    payload: bytes = row["payload"] or b""
    records = payload.split(b"\n") if row["records"] else []
    return BatchedJob(row["job_id"], RecordFormat(row["fmt"]), row["content_type"], row["accept"],
                      row["callback_url"], records, row["created_at"])


def _spec(job_id: str, model: str, tenant: str, size: int, content_type: str | None, accept: str | None,
          priority: int, callback_url: str | None) -> JobSpec:
    return JobSpec(job_id=job_id, lane="batch", model=model, tenant=tenant, input_key="", input_bytes=size,
                   input_sha256="", content_type=content_type, accept=accept, priority=priority, max_attempts=1,
                   callback_url=callback_url)


def entry_job(entry: BatchEntry, now: float) -> Job:
    """The job of an entry just appended, as ``get`` would read it back."""
    spec = _spec(entry.job_id, entry.model, entry.tenant, entry.size, entry.content_type, entry.accept,
                 entry.priority, entry.callback_url)
    return Job(spec=spec, status=JobStatus.QUEUED, created_at=now, updated_at=now,
               records={"total": len(entry.records), "done": 0, "failed": 0})


def _job(row: sqlite3.Row) -> Job:
    spec = _spec(row["job_id"], row["model"], row["tenant"], row["bytes"], row["content_type"], row["accept"],
                 row["priority"], row["callback_url"])
    error = row["error"]
    return Job(spec=spec, status=JobStatus(row["status"]), created_at=row["created_at"],
               updated_at=row["updated_at"], attempts=1 if row["batch_id"] else 0, result_key=row["result_key"],
               result_content_type=row["result_content_type"],
               error=json.loads(error) if error is not None else None,
               records={"total": row["records"], "done": row["done"], "failed": row["failed"]})


def _buffered_of(conn: sqlite3.Connection, model: str) -> Buffered:
    """What ``model`` has buffered now, inside the caller's transaction."""
    row = conn.execute("SELECT count(*), sum(records), sum(bytes), min(created_at) FROM batch_jobs"
                       " WHERE model = ? AND status = 'queued'", (model,)).fetchone()
    return Buffered(row[0], row[1] or 0, row[2] or 0, row[3])


class BatchStore(SqliteDatabase):
    """The durable buffer of the batch lane (embedded mode, ``BatchBuffer``). Every method is durable when it
    returns. ``buffers`` is kept in step with the table: every write's effect is applied once it committed,
    in commit order."""

    SCHEMA = _SCHEMA
    SCHEMA_VERSION = 1
    NAME = "batch"

    def __init__(self, path: str | Path, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.buffers: dict[str, Buffered] = {}

    async def start(self) -> None:
        self.buffers = await self._buffered()

    async def stop(self) -> None:
        return None  # the buffer is the table: nothing is held in memory

    async def append(self, entry: BatchEntry, now: float) -> Job:
        payload = b"\n".join(entry.records)
        params = (entry.job_id, entry.model, entry.tenant, entry.fmt.value, entry.content_type, entry.accept,
                  entry.callback_url, entry.priority, len(entry.records), entry.size, payload, now, now)
        await self._write(lambda conn: conn.execute(_INSERT, params))
        old = self.buffers.get(entry.model, Buffered())
        self.buffers[entry.model] = Buffered(old.jobs + 1, old.records + len(entry.records), old.bytes + entry.size,
                                             old.oldest if old.oldest is not None else now)
        return entry_job(entry, now)

    async def get(self, job_id: str) -> Job | None:
        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT * FROM batch_jobs WHERE job_id = ?", (job_id,)).fetchone()
            return _job(row) if row is not None else None

        return await self._read_async(op)

    async def tenant_jobs(self, tenant: str, after: JobCursor | None, limit: int) -> tuple[list[Job], JobCursor | None]:
        """A tenant's batch jobs newest first, after ``after`` (see ``JobStore.tenant_jobs``)."""
        return await self._tenant_page("batch_jobs", _LISTED, _job, tenant, after, limit)

    async def _buffered(self) -> dict[str, Buffered]:
        """Per model, what is buffered and not yet flushed (read at start-up)."""
        def op(conn: sqlite3.Connection) -> dict[str, Buffered]:
            rows = conn.execute("SELECT model, count(*), sum(records), sum(bytes), min(created_at) FROM batch_jobs"
                                " WHERE status = 'queued' GROUP BY model").fetchall()
            return {r[0]: Buffered(r[1], r[2], r[3], r[4]) for r in rows}

        return await self._read_async(op)

    async def flush(self, model: str, batch_id: str, *, max_records: int, max_bytes: int, trigger: str,
                    now: float) -> Batch | None:
        """Move the oldest buffered jobs of ``model`` into a new batch, whole jobs up to the limits (at least
        one job, however large); None if nothing was buffered."""
        def op(conn: sqlite3.Connection) -> tuple[Batch | None, Buffered]:
            taken: list[sqlite3.Row] = []
            records = size = 0
            cursor = conn.execute(f"SELECT seq, bytes, {_JOB_COLUMNS} FROM batch_jobs"
                                  " WHERE model = ? AND status = 'queued' ORDER BY seq", (model,))
            for row in cursor:
                if taken and (records + row["records"] > max_records or size + row["bytes"] > max_bytes):
                    break
                taken.append(row)
                records += row["records"]
                size += row["bytes"]
            cursor.close()
            batch = None
            if taken:
                conn.execute("INSERT INTO batches (batch_id, model, trigger, records, bytes, created_at, state, runs)"
                             " VALUES (?, ?, ?, ?, ?, ?, 'pending', 1)",
                             (batch_id, model, trigger, records, size, now))
                conn.executemany("UPDATE batch_jobs SET status = 'running', batch_id = ?, updated_at = ?"
                                 " WHERE seq = ?", [(batch_id, now, row["seq"]) for row in taken])
                batch = Batch(batch_id, model, trigger, [_batched(row) for row in taken])
            return batch, _buffered_of(conn, model)

        batch, left = await self._write(op)
        self.buffers[model] = left
        return batch

    async def pending(self) -> list[Batch]:
        """Batches flushed but not completed (their run was cut short); each counted as started once more."""
        def op(conn: sqlite3.Connection) -> list[Batch]:
            batches = conn.execute("SELECT batch_id, model, trigger, runs FROM batches WHERE state = 'pending'"
                                   " ORDER BY created_at").fetchall()
            out = []
            for b in batches:
                conn.execute("UPDATE batches SET runs = runs + 1 WHERE batch_id = ?", (b["batch_id"],))
                rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM batch_jobs WHERE batch_id = ? AND"
                                    " status = 'running' ORDER BY seq", (b["batch_id"],)).fetchall()
                out.append(Batch(b["batch_id"], b["model"], b["trigger"], [_batched(r) for r in rows],
                                 b["runs"] + 1))
            return out

        return await self._write(op)

    async def complete(self, batch: Batch, ends: Sequence[JobEnd], now: float) -> int:
        """Record how each job of the batch ended and close the batch; how many jobs this call ended."""
        batch_id = batch.batch_id

        def op(conn: sqlite3.Connection) -> int:
            ended = 0
            for end in ends:
                ended += conn.execute(
                    "UPDATE batch_jobs SET status = ?, done = ?, failed = ?, result_key = ?, result_content_type = ?,"
                    " error = ?, payload = NULL, updated_at = ? WHERE job_id = ? AND batch_id = ?"
                    " AND status = 'running'",
                    (end.status.value, end.done, end.failed, end.result_key, end.result_content_type,
                     json.dumps(dict(end.error), default=str) if end.error is not None else None, now,
                     end.job_id, batch_id)).rowcount
            conn.execute("UPDATE batches SET state = 'done' WHERE batch_id = ?", (batch_id,))
            return ended

        return await self._write(op)

    async def cancel(self, job_id: str, now: float) -> bool:
        """A buffered job -> failed (Cancelled); False if it was already flushed or ended."""
        error = json.dumps({"type": "Cancelled", "message": "cancelled by the client"})

        def op(conn: sqlite3.Connection) -> tuple[str, Buffered] | None:
            row = conn.execute("SELECT model FROM batch_jobs WHERE job_id = ? AND status = 'queued'",
                               (job_id,)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE batch_jobs SET status = 'failed', error = ?, payload = NULL, updated_at = ?"
                         " WHERE job_id = ?", (error, now, job_id))
            return row[0], _buffered_of(conn, row[0])

        done = await self._write(op)
        if done is None:
            return False
        self.buffers[done[0]] = done[1]
        return True

    async def purge(self, before: float, limit: int) -> list[str | None]:
        """Delete up to ``limit`` jobs that ended before ``before`` (and batches done by then); for each
        deleted job its result key (None: it had no result), for the caller to delete."""
        def op(conn: sqlite3.Connection) -> list[str | None]:
            rows = conn.execute("SELECT job_id, result_key FROM batch_jobs WHERE status IN ('succeeded', 'failed')"
                                " AND updated_at < ? LIMIT ?", (before, limit)).fetchall()
            conn.executemany("DELETE FROM batch_jobs WHERE job_id = ?", [(row[0],) for row in rows])
            conn.execute("DELETE FROM batches WHERE state = 'done' AND created_at < ?", (before,))
            return [row[1] for row in rows]

        return await self._write(op)

    async def counts(self) -> dict[str, int]:
        """Jobs by status, for ``router_jobs{lane="batch"}``."""
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute("SELECT status, count(*) FROM batch_jobs GROUP BY status").fetchall())

        return await self._read_async(op)
