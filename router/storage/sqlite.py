"""The embedded job store: job records and the work queue in one SQLite database in WAL mode.

One dedicated thread owns the only connection and does all SQLite work, so the event loop never blocks on
the disk and no locking between connections is needed. Every write commits with ``synchronous=FULL`` (the
WAL is fsynced at each commit), so a method that returned is durable. To reach thousands of durable writes
a second on a small machine, writes use group commit: calls arriving while a commit is in progress queue up
on the event loop, and the writer takes all of them (up to ``max_batch``) into the next transaction, one
SAVEPOINT each so that one failing call does not undo the others. One fsync then covers the whole group.

Timestamps are always the ``now`` arguments: the store never reads the clock, so callers (and tests) own time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from router.storage.base import Job, JobCursor, JobSpec, JobStatus, StorageError, StoreStats

_T = TypeVar("_T")
_Op = Callable[[sqlite3.Connection], Any]

_SCHEMA_VERSION = 3
_MIGRATIONS = {
    1: ("ALTER TABLE jobs ADD COLUMN traceparent TEXT",),
    # Dead-lettered = failed after using up its attempts (a record of such a failure carries "attempts").
    2: ("ALTER TABLE jobs ADD COLUMN dead_lettered INTEGER NOT NULL DEFAULT 0",
        "UPDATE jobs SET dead_lettered = 1 WHERE status = 'failed' AND json_extract(error, '$.attempts') IS NOT NULL"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    lane TEXT NOT NULL,
    model TEXT NOT NULL,
    tenant TEXT NOT NULL,
    input_key TEXT NOT NULL,
    input_bytes INTEGER NOT NULL,
    input_sha256 TEXT NOT NULL,
    content_type TEXT,
    accept TEXT,
    custom_attributes TEXT,
    inference_id TEXT,
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    ttl_s REAL NOT NULL,
    timeout_s REAL NOT NULL,
    callback_url TEXT,
    traceparent TEXT,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    lease TEXT,
    lease_until REAL,
    result_key TEXT,
    result_content_type TEXT,
    error TEXT,
    dead_lettered INTEGER NOT NULL DEFAULT 0  -- 1: failed after using up its attempts
);
-- Leasing walks queued jobs in lease order and stops after LIMIT matches: no sort of the whole backlog.
-- Partial indexes hold live jobs only, so finished jobs do not slow the queue down.
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (priority DESC, created_at, not_before) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS jobs_live_expiry ON jobs (expires_at) WHERE status IN ('queued', 'running');
-- Stats: counts by (lane, status) from a covering index; per-model backlog from queued jobs only.
CREATE INDEX IF NOT EXISTS jobs_lane_status ON jobs (lane, status);
CREATE INDEX IF NOT EXISTS jobs_queued_model ON jobs (model, created_at) WHERE status = 'queued';
-- Retention: finished jobs by when they ended.
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (updated_at) WHERE status IN ('succeeded', 'failed', 'expired');
-- Small payloads kept with their job (input_key 'inline'): one grouped commit stores job and payload.
CREATE TABLE IF NOT EXISTS inputs (job_id TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
-- GET /jobs: a tenant's jobs, newest first. Dead-lettered jobs, counted for the metrics.
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant, created_at);
CREATE INDEX IF NOT EXISTS jobs_dead_lettered ON jobs (updated_at) WHERE dead_lettered = 1;
"""

_SPEC_COLUMNS = (
    "job_id", "lane", "model", "tenant", "input_key", "input_bytes", "input_sha256", "content_type", "accept",
    "custom_attributes", "inference_id", "priority", "max_attempts", "ttl_s", "timeout_s", "callback_url",
    "traceparent",
)
_INSERT = (
    f"INSERT INTO jobs ({', '.join(_SPEC_COLUMNS)}, status, created_at, updated_at, expires_at, attempts, not_before)"
    f" VALUES ({', '.join('?' for _ in _SPEC_COLUMNS)}, 'queued', ?, ?, ?, 0, 0)"
)
_LEASE_CANDIDATES = """
SELECT * FROM (
    SELECT * FROM (SELECT * FROM jobs WHERE status = 'queued' AND not_before <= :now
                   ORDER BY priority DESC, created_at LIMIT :n)
    UNION ALL
    SELECT * FROM (SELECT * FROM jobs WHERE status = 'running' AND lease_until < :now
                   ORDER BY priority DESC, created_at LIMIT :n)
) ORDER BY priority DESC, created_at LIMIT :n
"""
_EXPIRE = """
UPDATE jobs SET status = 'expired', error = :error, lease = NULL, lease_until = NULL, updated_at = :now
WHERE status IN ('queued', 'running') AND expires_at < :now
"""
_EXPIRED_ERROR = json.dumps({"type": "Expired", "message": "the job did not finish within its TTL"})
# The guard of every lease-holder's write: the job is running under exactly this lease.
_HOLDS_LEASE = "job_id = :job_id AND status = 'running' AND lease = :lease"

_MAX_BATCH = 1000


def _row_to_job(row: sqlite3.Row) -> Job:
    spec = JobSpec(**{name: row[name] for name in _SPEC_COLUMNS})
    error = row["error"]
    return Job(
        spec=spec,
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attempts=row["attempts"],
        result_key=row["result_key"],
        result_content_type=row["result_content_type"],
        error=json.loads(error) if error is not None else None,
        lease=row["lease"],
    )


def _dump_error(error: Mapping[str, Any]) -> str:
    # default=str: an error carrying a non-JSON value (an exception, a Path) is still recorded, as text.
    return json.dumps(dict(error), default=str)


class SqliteDatabase:
    """One SQLite file (WAL, ``synchronous=FULL``) owned by one thread, with group commit of concurrent writes.

    Subclasses give ``SCHEMA`` (run at open), ``SCHEMA_VERSION`` and ``NAME`` (for errors and the thread).
    ``path`` is the database file (its folder is created), or ``":memory:"`` for a throwaway store without WAL.
    ``max_batch`` caps how many queued writes share one transaction. The constructor opens the database on the
    store's thread and raises StorageError if it cannot; use the store from one event loop.
    """

    SCHEMA = ""
    SCHEMA_VERSION = 1
    MIGRATIONS: Mapping[int, tuple[str, ...]] = {}  # version -> the statements that bring it to version + 1
    NAME = "store"

    def __init__(self, path: str | Path, *, max_batch: int = _MAX_BATCH) -> None:
        self.path = str(path)
        self._max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{self.NAME}")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[_Op, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        try:
            self._executor.submit(self._open).result()
        except (sqlite3.Error, OSError) as exc:
            self._executor.shutdown(wait=True)
            raise StorageError(f"cannot open {self.NAME} store {self.path}: {exc}") from exc
        self._stop_checkpoints = threading.Event()
        self._checkpoints: threading.Thread | None = None
        if self.path != ":memory:":
            self._checkpoints = threading.Thread(target=self._checkpoint_loop, name=f"sqlite-{self.NAME}-checkpoint",
                                                 daemon=True)
            self._checkpoints.start()

    # -- the store's thread ---------------------------------------------------------------------------------

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun and committed explicitly below.
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal" and self.path != ":memory:":
                raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL unavailable")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")  # another process (a CLI, a backup) may hold a lock briefly
            # Checkpoints (copying the WAL into the database, with an fsync) run on a thread of their own, so
            # a commit that crosses the WAL's size limit does not stall every write waiting behind it.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > self.SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version}, this router knows {self.SCHEMA_VERSION}")
            for old in range(version or self.SCHEMA_VERSION, self.SCHEMA_VERSION):  # a database of an older router
                for statement in self.MIGRATIONS[old]:
                    conn.execute(statement)
            conn.executescript(self.SCHEMA)
            conn.execute(f"PRAGMA user_version={self.SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError(f"{self.NAME} store is closed")
        return self._conn

    def _run_batch(self, ops: list[_Op]) -> list[tuple[bool, Any]]:
        """One transaction for all ``ops``, each in its own savepoint: (True, result) or (False, exception)."""
        conn = self._connection()
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    result = op(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((True, result))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return results

    def _checkpoint_loop(self) -> None:
        """Every half second, copy what the WAL holds into the database without blocking writers (PASSIVE)."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            while not self._stop_checkpoints.wait(0.5):
                with contextlib.suppress(sqlite3.Error):  # busy or failing: the next round tries again
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def _read(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        return op(self._connection())

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the event loop's side ------------------------------------------------------------------------------

    async def _write(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """Queue ``op`` for the next group commit and wait until it is durable."""
        if self._closed:
            raise StorageError(f"{self.NAME} store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"sqlite-{self.NAME}-store-flush")
        return cast(_T, await future)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [op for op, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch + self._pending:
                    future.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                error = StorageError(f"{self.NAME} store write failed: {exc}")
                error.__cause__ = exc
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if future.done():  # the caller was cancelled; its write is committed all the same
                    continue
                if ok:
                    future.set_result(value)
                elif isinstance(value, sqlite3.Error):
                    error = StorageError(f"{self.NAME} store write failed: {value}")
                    error.__cause__ = value
                    future.set_exception(error)
                else:
                    future.set_exception(value)

    async def _tenant_page(self, table: str, columns: str, to_job: Callable[[sqlite3.Row], Job], tenant: str,
                           after: JobCursor | None, limit: int) -> tuple[list[Job], JobCursor | None]:
        """``JobStore.tenant_jobs`` for a table with ``tenant``, ``created_at`` and ``job_id`` columns (indexed on
        tenant, created_at): one more row is read to tell whether more follow."""
        where = "tenant = :t"
        params: dict[str, Any] = {"t": tenant, "n": limit + 1}
        if after is not None:
            where += " AND (created_at < :c OR (created_at = :c AND job_id > :id))"
            params.update(c=after.created_at, id=after.job_id)
        sql = f"SELECT {columns} FROM {table} WHERE {where} ORDER BY created_at DESC, job_id LIMIT :n"
        jobs = await self._read_async(lambda conn: [to_job(row) for row in conn.execute(sql, params).fetchall()])
        return jobs[:limit], JobCursor.of(jobs[limit - 1]) if len(jobs) > limit else None

    async def _read_async(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise StorageError(f"{self.NAME} store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._read, op)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.NAME} store read failed: {exc}") from exc

    async def close(self) -> None:
        """Finish the writes already queued, close the connection and stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await self._flusher
        self._stop_checkpoints.set()
        loop = asyncio.get_running_loop()
        if self._checkpoints is not None:
            await loop.run_in_executor(None, self._checkpoints.join)
        await loop.run_in_executor(self._executor, self._close_conn)
        self._executor.shutdown(wait=True)


class SqliteJobStore(SqliteDatabase):
    """``JobStore`` on a ``SqliteDatabase``: job records and the work queue in one file.

    ``attempts`` counts the leases taken; ``release`` gives the attempt back (decrements it), since the job
    never ran to an outcome. A lease whose time ran out but that nobody re-leased yet is still the job's
    current lease, so its holder can still extend or finish the job.
    """

    SCHEMA = _SCHEMA
    SCHEMA_VERSION = _SCHEMA_VERSION
    MIGRATIONS = _MIGRATIONS
    NAME = "job"

    # -- JobStore -------------------------------------------------------------------------------------------

    inline_max = 256 * 1024  # payloads up to this size are stored in the database, with their job

    async def create(self, spec: JobSpec, now: float, *, payload: bytes | None = None) -> Job:
        """Record a new queued job (with its payload, when ``payload`` is given and the spec's input_key is
        ``INLINE_KEY``); StorageError if the job id exists already."""
        values = (*(getattr(spec, name) for name in _SPEC_COLUMNS), now, now, now + spec.ttl_s)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT, values)
            if payload is not None:
                conn.execute("INSERT INTO inputs (job_id, data) VALUES (?, ?)", (spec.job_id, payload))

        await self._write(op)
        return Job(spec=spec, status=JobStatus.QUEUED, created_at=now, updated_at=now)

    async def input(self, job_id: str) -> bytes | None:
        """The payload stored with the job, if it was."""
        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM inputs WHERE job_id = ?", (job_id,)).fetchone()
            return bytes(row[0]) if row is not None else None

        return await self._read_async(op)

    async def get(self, job_id: str) -> Job | None:
        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            return _row_to_job(row) if row is not None else None

        return await self._read_async(op)

    async def lease(self, limit: int, lease_s: float, now: float) -> list[Job]:
        """See ``JobStore.lease``. Jobs past their TTL are expired first, so they are never handed out."""

        def op(conn: sqlite3.Connection) -> list[Job]:
            conn.execute(_EXPIRE, {"error": _EXPIRED_ERROR, "now": now})
            leased: list[Job] = []
            # Jobs failed for used-up attempts take no slot: look again until ``limit`` are leased or none are left.
            while len(leased) < limit:
                rows = conn.execute(_LEASE_CANDIDATES, {"now": now, "n": limit - len(leased)}).fetchall()
                if not rows:
                    break
                for row in rows:
                    job_id = row["job_id"]
                    if row["attempts"] >= row["max_attempts"]:
                        last = json.loads(row["error"]) if row["error"] is not None else None
                        error = {"type": "MaxAttemptsExceeded", "attempts": row["attempts"],
                                 "message": f"gave up after {row['attempts']} attempts", "last_error": last}
                        conn.execute(
                            "UPDATE jobs SET status = 'failed', error = ?, lease = NULL, lease_until = NULL,"
                            " dead_lettered = 1, updated_at = ? WHERE job_id = ?", (_dump_error(error), now, job_id))
                        continue
                    token = secrets.token_hex(16)
                    conn.execute(
                        "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease = ?, lease_until = ?,"
                        " updated_at = ? WHERE job_id = ?", (token, now + lease_s, now, job_id))
                    updated = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                    leased.append(_row_to_job(updated))
            return leased

        if lease_s <= 0:
            raise ValueError("lease_s must be positive")  # else a job just leased would be runnable again
        if limit <= 0:
            return []
        return await self._write(op)

    async def _update_held(self, sql_set: str, params: dict[str, Any], *, ends: bool = False) -> bool:
        """Apply ``SET sql_set`` to a job only while ``params['lease']`` is its current lease. ``ends``: the job
        ends, and its inline payload is needed no more."""
        sql = f"UPDATE jobs SET {sql_set} WHERE {_HOLDS_LEASE}"

        def op(conn: sqlite3.Connection) -> bool:
            held = conn.execute(sql, params).rowcount == 1
            if held and ends:
                conn.execute("DELETE FROM inputs WHERE job_id = :job_id", params)
            return held

        return await self._write(op)

    async def extend(self, job_id: str, lease: str, lease_s: float, now: float) -> bool:
        return await self._update_held(
            "lease_until = :until, updated_at = :now",
            {"job_id": job_id, "lease": lease, "until": now + lease_s, "now": now})

    async def succeed(self, job_id: str, lease: str, result_key: str, content_type: str | None,
                      now: float) -> bool:
        # The errors of earlier attempts are cleared: a succeeded job reports no error.
        return await self._update_held(
            "status = 'succeeded', result_key = :key, result_content_type = :ct, error = NULL, lease = NULL,"
            " lease_until = NULL, updated_at = :now",
            {"job_id": job_id, "lease": lease, "key": result_key, "ct": content_type, "now": now}, ends=True)

    async def retry(self, job_id: str, lease: str, error: Mapping[str, Any], not_before: float,
                    now: float) -> bool:
        return await self._update_held(
            "status = 'queued', not_before = :not_before, error = :error, lease = NULL, lease_until = NULL,"
            " updated_at = :now",
            {"job_id": job_id, "lease": lease, "not_before": not_before, "error": _dump_error(error), "now": now})

    async def fail(self, job_id: str, lease: str | None, error: Mapping[str, Any], now: float, *,
                   dead_letter: bool = False) -> bool:
        """-> failed. With ``lease`` None only a queued job is failed (cancel); a running one is left alone."""
        params = {"job_id": job_id, "lease": lease, "error": _dump_error(error), "now": now,
                  "dead": int(dead_letter)}
        if lease is not None:
            return await self._update_held(
                "status = 'failed', error = :error, lease = NULL, lease_until = NULL, dead_lettered = :dead,"
                " updated_at = :now", params, ends=True)

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE jobs SET status = 'failed', error = :error, updated_at = :now"
                " WHERE job_id = :job_id AND status = 'queued'", params)
            if cur.rowcount == 1:
                conn.execute("DELETE FROM inputs WHERE job_id = :job_id", params)
            return cur.rowcount == 1

        return await self._write(op)

    async def release(self, job_id: str, lease: str, now: float) -> bool:
        """Running -> queued, runnable at once; the attempt this lease counted is taken back."""
        return await self._update_held(
            "status = 'queued', attempts = MAX(attempts - 1, 0), not_before = :now, lease = NULL,"
            " lease_until = NULL, updated_at = :now",
            {"job_id": job_id, "lease": lease, "now": now})

    async def expire(self, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(_EXPIRE, {"error": _EXPIRED_ERROR, "now": now}).rowcount

        return await self._write(op)

    async def purge(self, before: float, limit: int) -> list[Job]:
        """Delete up to ``limit`` jobs that ended before ``before``; the deleted jobs (their objects are the
        caller's to delete)."""
        def op(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute("SELECT * FROM jobs WHERE status IN ('succeeded', 'failed', 'expired')"
                                " AND updated_at < ? LIMIT ?", (before, limit)).fetchall()
            ids = [(row["job_id"],) for row in rows]
            conn.executemany("DELETE FROM jobs WHERE job_id = ?", ids)
            conn.executemany("DELETE FROM inputs WHERE job_id = ?", ids)
            return [_row_to_job(row) for row in rows]

        return await self._write(op)

    async def tenant_jobs(self, tenant: str, after: JobCursor | None, limit: int) -> tuple[list[Job], JobCursor | None]:
        """A tenant's jobs newest first (the ``jobs_tenant`` index), after ``after``."""
        return await self._tenant_page("jobs", "*", _row_to_job, tenant, after, limit)

    async def stats(self, now: float) -> StoreStats:
        def op(conn: sqlite3.Connection) -> StoreStats:
            # One read transaction, so the counts and the backlog are of the same moment.
            conn.execute("BEGIN")
            try:
                jobs = {(lane, status): count for lane, status, count in
                        conn.execute("SELECT lane, status, COUNT(*) FROM jobs GROUP BY lane, status")}
                backlog = conn.execute(
                    "SELECT model, COUNT(*), MIN(created_at) FROM jobs WHERE status = 'queued' GROUP BY model"
                ).fetchall()
                dead = conn.execute("SELECT COUNT(*) FROM jobs WHERE dead_lettered = 1").fetchone()[0]
            finally:
                conn.execute("COMMIT")
            return StoreStats(
                jobs=jobs,
                queued={model: count for model, count, _ in backlog},
                oldest_queued_age_s={model: max(0.0, now - oldest) for model, _, oldest in backlog},
                dead_lettered=dead,
            )

        return await self._read_async(op)
