"""SqliteJobStore against a real database file: the job lifecycle, lease ownership, and durability.

Time is whatever ``now`` the test passes: the store never reads the clock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from router.storage.base import Job, JobSpec, JobStatus, StorageError
from router.storage.sqlite import _SCHEMA, SqliteJobStore

T0 = 1_700_000_000.0
LEASE_S = 30.0


def _spec(job_id: str, **kw: Any) -> JobSpec:
    base: dict[str, Any] = {"job_id": job_id, "lane": "async", "model": "m", "tenant": "t",
                            "input_key": f"inputs/{job_id}", "input_bytes": 3, "input_sha256": "ab" * 32}
    base.update(kw)
    return JobSpec(**base)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    s = SqliteJobStore(tmp_path / "state" / "jobs.db")
    yield s
    await s.close()


async def _lease_one(store: SqliteJobStore, now: float) -> Job:
    leased = await store.lease(1, LEASE_S, now)
    assert len(leased) == 1
    return leased[0]


async def test_the_database_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    s = SqliteJobStore(tmp_path / "jobs.db")
    await s.close()
    conn = sqlite3.connect(tmp_path / "jobs.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_a_job_goes_from_created_to_leased_extended_and_succeeded(store: SqliteJobStore) -> None:
    spec = _spec("j1", content_type="text/csv", callback_url="http://cb")
    created = await store.create(spec, T0)
    assert created.status is JobStatus.QUEUED
    assert await store.get("j1") == created

    job = await _lease_one(store, T0 + 1)
    assert job.spec == spec
    assert job.status is JobStatus.RUNNING
    assert job.attempts == 1
    assert job.lease is not None
    assert job.updated_at == T0 + 1

    assert await store.extend("j1", job.lease, LEASE_S, T0 + 20)
    assert await store.lease(1, LEASE_S, T0 + 40) == []  # extended to T0 + 50: not yet runnable again
    assert await store.succeed("j1", job.lease, "results/j1", "application/json", T0 + 45)

    done = await store.get("j1")
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED
    assert (done.result_key, done.result_content_type) == ("results/j1", "application/json")
    assert done.lease is None
    assert done.error is None
    assert (done.created_at, done.updated_at, done.attempts) == (T0, T0 + 45, 1)
    assert not await store.succeed("j1", job.lease, "results/j1", None, T0 + 46)  # only the first succeed counts


async def test_a_stale_lease_cannot_finish_a_job_that_was_leased_again(store: SqliteJobStore) -> None:
    await store.create(_spec("j1"), T0)
    first = await _lease_one(store, T0)
    second = await _lease_one(store, T0 + LEASE_S + 1)  # the first worker's lease ran out
    assert second.lease != first.lease
    assert second.attempts == 2
    assert first.lease is not None
    assert second.lease is not None

    assert not await store.extend("j1", first.lease, LEASE_S, T0 + 32)
    assert not await store.succeed("j1", first.lease, "results/j1", None, T0 + 33)
    assert not await store.retry("j1", first.lease, {"type": "X"}, T0 + 60, T0 + 33)
    assert not await store.fail("j1", first.lease, {"type": "X"}, T0 + 33)
    assert not await store.release("j1", first.lease, T0 + 33)
    assert not await store.succeed("j1", "made-up", "results/j1", None, T0 + 33)

    job = await store.get("j1")
    assert job is not None
    assert (job.status, job.lease) == (JobStatus.RUNNING, second.lease)
    assert await store.succeed("j1", second.lease, "results/j1", None, T0 + 34)


async def test_a_lease_that_ran_out_but_was_not_taken_again_can_still_finish(store: SqliteJobStore) -> None:
    await store.create(_spec("j1"), T0)
    job = await _lease_one(store, T0)
    assert job.lease is not None
    assert await store.succeed("j1", job.lease, "results/j1", None, T0 + LEASE_S + 5)


async def test_a_retried_job_is_not_leased_before_its_delay(store: SqliteJobStore) -> None:
    await store.create(_spec("j1"), T0)
    job = await _lease_one(store, T0)
    assert job.lease is not None
    error = {"type": "ModelError", "message": "boom", "status": 500}
    assert await store.retry("j1", job.lease, error, T0 + 10, T0 + 1)

    waiting = await store.get("j1")
    assert waiting is not None
    assert (waiting.status, waiting.error, waiting.lease) == (JobStatus.QUEUED, error, None)
    assert await store.lease(1, LEASE_S, T0 + 9) == []
    again = await _lease_one(store, T0 + 10)
    assert again.attempts == 2


async def test_a_job_out_of_attempts_fails_with_max_attempts_exceeded(store: SqliteJobStore) -> None:
    await store.create(_spec("j1", max_attempts=2), T0)
    await store.create(_spec("j2"), T0 + 1)
    now = T0
    for _ in range(2):
        job = await _lease_one(store, now)
        assert job.job_id == "j1"
        assert job.lease is not None
        assert await store.retry("j1", job.lease, {"type": "ModelError", "message": "boom"}, now, now)
        now += 1

    # j1 is first in line but spent: it is failed, and the lease goes on to j2 in the same call.
    job = await _lease_one(store, now)
    assert job.job_id == "j2"
    failed = await store.get("j1")
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error["type"] == "MaxAttemptsExceeded"
    assert failed.error["attempts"] == 2
    assert failed.error["last_error"] == {"type": "ModelError", "message": "boom"}


async def test_a_worker_that_keeps_dying_exhausts_the_attempts(store: SqliteJobStore) -> None:
    await store.create(_spec("j1", max_attempts=1), T0)
    await _lease_one(store, T0)
    assert await store.lease(1, LEASE_S, T0 + LEASE_S + 1) == []
    job = await store.get("j1")
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error["type"] == "MaxAttemptsExceeded"


async def test_release_gives_the_job_back_without_counting_the_attempt(store: SqliteJobStore) -> None:
    await store.create(_spec("j1", max_attempts=1), T0)
    job = await _lease_one(store, T0)
    assert job.lease is not None
    assert await store.release("j1", job.lease, T0 + 1)

    queued = await store.get("j1")
    assert queued is not None
    assert (queued.status, queued.attempts, queued.lease) == (JobStatus.QUEUED, 0, None)
    again = await _lease_one(store, T0 + 1)  # leasable at once, and still within its single attempt
    assert again.attempts == 1


async def test_cancel_fails_a_queued_job_but_not_a_running_one(store: SqliteJobStore) -> None:
    await store.create(_spec("queued"), T0)
    await store.create(_spec("running"), T0 + 1)
    running = await store.lease(1, LEASE_S, T0 + 1)
    assert [job.job_id for job in running] == ["queued"]  # the older one
    await store.create(_spec("waiting"), T0 + 2)

    cancelled = {"type": "Cancelled", "message": "by the client"}
    assert not await store.fail("queued", None, cancelled, T0 + 3)
    assert await store.fail("waiting", None, cancelled, T0 + 3)
    assert not await store.fail("waiting", None, cancelled, T0 + 4)
    assert not await store.fail("nonexistent", None, cancelled, T0 + 4)

    waiting = await store.get("waiting")
    assert waiting is not None
    assert (waiting.status, waiting.error) == (JobStatus.FAILED, cancelled)
    still_running = await store.get("queued")
    assert still_running is not None
    assert still_running.status is JobStatus.RUNNING


async def test_a_lease_holder_can_fail_its_job(store: SqliteJobStore) -> None:
    await store.create(_spec("j1"), T0)
    job = await _lease_one(store, T0)
    assert job.lease is not None
    assert await store.fail("j1", job.lease, {"type": "ModelError", "status": 400}, T0 + 1)
    failed = await store.get("j1")
    assert failed is not None
    assert (failed.status, failed.lease) == (JobStatus.FAILED, None)


async def test_jobs_past_their_ttl_expire_whether_queued_or_running(store: SqliteJobStore) -> None:
    await store.create(_spec("queued", ttl_s=100), T0)
    await store.create(_spec("running", ttl_s=100, priority=5), T0)
    await store.create(_spec("young", ttl_s=1000), T0)
    await store.create(_spec("done", ttl_s=100, priority=9), T0)
    done = await _lease_one(store, T0)
    assert done.job_id == "done"
    assert done.lease is not None
    assert await store.succeed("done", done.lease, "results/done", None, T0 + 1)
    assert (await _lease_one(store, T0 + 1)).job_id == "running"

    assert await store.expire(T0 + 100) == 0  # not past yet
    assert await store.expire(T0 + 101) == 2
    assert await store.expire(T0 + 102) == 0

    statuses = {job_id: (await store.get(job_id)) for job_id in ("queued", "running", "young", "done")}
    assert {k: v.status for k, v in statuses.items() if v} == {
        "queued": JobStatus.EXPIRED, "running": JobStatus.EXPIRED, "young": JobStatus.QUEUED,
        "done": JobStatus.SUCCEEDED}
    expired = statuses["running"]
    assert expired is not None
    assert expired.error == {"type": "Expired", "message": "the job did not finish within its TTL"}
    assert expired.lease is None


async def test_lease_never_hands_out_a_job_past_its_ttl(store: SqliteJobStore) -> None:
    await store.create(_spec("old", ttl_s=10, priority=9), T0)
    await store.create(_spec("fresh"), T0)
    leased = await store.lease(5, LEASE_S, T0 + 11)
    assert [job.job_id for job in leased] == ["fresh"]
    old = await store.get("old")
    assert old is not None
    assert old.status is JobStatus.EXPIRED


async def test_higher_priority_is_leased_first_then_the_oldest(store: SqliteJobStore) -> None:
    await store.create(_spec("low-old", priority=0), T0)
    await store.create(_spec("normal-new", priority=1), T0 + 2)
    await store.create(_spec("normal-old", priority=1), T0 + 1)
    await store.create(_spec("critical", priority=3), T0 + 3)

    first = await store.lease(3, LEASE_S, T0 + 5)
    rest = await store.lease(3, LEASE_S, T0 + 5)
    assert [job.job_id for job in first] == ["critical", "normal-old", "normal-new"]
    assert [job.job_id for job in rest] == ["low-old"]


async def test_stats_count_jobs_by_lane_and_status_and_the_backlog_per_model(store: SqliteJobStore) -> None:
    await store.create(_spec("a1", model="a"), T0)
    await store.create(_spec("a2", model="a"), T0 + 10)
    await store.create(_spec("b1", model="b", lane="batch", priority=9), T0 + 20)
    await store.create(_spec("b2", model="b", lane="batch"), T0 + 30)
    await store.create(_spec("c1", model="c"), T0 + 40)
    leased = await _lease_one(store, T0 + 40)
    assert leased.job_id == "b1"
    assert await store.fail("c1", None, {"type": "Cancelled"}, T0 + 41)

    stats = await store.stats(T0 + 100)
    assert stats.jobs == {("async", "queued"): 2, ("async", "failed"): 1, ("batch", "running"): 1,
                          ("batch", "queued"): 1}
    assert stats.queued == {"a": 2, "b": 1}
    assert stats.oldest_queued_age_s == {"a": 100.0, "b": 70.0}
    assert stats.dead_lettered == 0  # a cancel is no dead letter


async def test_only_jobs_that_used_up_their_attempts_count_as_dead_lettered(store: SqliteJobStore) -> None:
    for job_id in ("rejected", "exhausted", "died"):
        await store.create(_spec(job_id, max_attempts=1), T0)
    rejected = await _lease_one(store, T0)  # the model refused the input at the first attempt: the client's
    assert await store.fail(rejected.job_id, rejected.lease, {"type": "ModelError", "status": 400}, T0)
    exhausted = await _lease_one(store, T0)
    assert await store.fail(exhausted.job_id, exhausted.lease, {"type": "ServiceUnavailable", "attempts": 1}, T0,
                            dead_letter=True)
    await _lease_one(store, T0)  # its worker dies: the next lease finds its attempts used up
    assert await store.lease(1, LEASE_S, T0 + LEASE_S + 1) == []

    stats = await store.stats(T0 + 100)
    assert stats.jobs == {("async", "failed"): 3}
    assert stats.dead_lettered == 2


async def test_jobs_survive_close_and_reopen_and_an_orphaned_lease_is_leasable_again(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = SqliteJobStore(path)
    await first.create(_spec("orphan", priority=2), T0)
    await first.create(_spec("waiting"), T0 + 1)
    orphan = await _lease_one(first, T0 + 1)
    assert orphan.job_id == "orphan"
    await first.close()
    with pytest.raises(StorageError):
        await first.get("waiting")

    second = SqliteJobStore(path)
    try:
        waiting = await second.get("waiting")
        assert waiting is not None
        assert (waiting.status, waiting.created_at, waiting.spec) == (JobStatus.QUEUED, T0 + 1, _spec("waiting"))
        assert [job.job_id for job in await second.lease(5, LEASE_S, T0 + 2)] == ["waiting"]
        again = await _lease_one(second, T0 + 1 + LEASE_S + 1)  # the first worker's lease ran out
        assert (again.job_id, again.attempts) == ("orphan", 2)
        assert again.lease != orphan.lease
    finally:
        await second.close()


async def test_concurrent_creates_are_all_stored_with_distinct_ids(store: SqliteJobStore) -> None:
    specs = [_spec(f"job-{i:03d}", priority=i % 4) for i in range(500)]
    created = await asyncio.gather(*(store.create(spec, T0 + i / 1000) for i, spec in enumerate(specs)))

    assert len({job.job_id for job in created}) == 500
    stats = await store.stats(T0 + 1)
    assert stats.jobs == {("async", "queued"): 500}
    leased = await store.lease(1000, LEASE_S, T0 + 1)
    assert sorted(job.job_id for job in leased) == sorted(spec.job_id for spec in specs)


async def test_a_duplicate_job_id_is_refused_without_failing_the_writes_around_it(store: SqliteJobStore) -> None:
    await store.create(_spec("dup"), T0)
    results = await asyncio.gather(store.create(_spec("before"), T0), store.create(_spec("dup"), T0 + 1),
                                   store.create(_spec("after"), T0), return_exceptions=True)

    assert isinstance(results[1], StorageError)
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)
    assert await store.get("before") is not None
    assert await store.get("after") is not None
    dup = await store.get("dup")
    assert dup is not None
    assert dup.created_at == T0


async def test_an_unknown_job_reads_as_none(store: SqliteJobStore) -> None:
    assert await store.get("nope") is None


async def test_a_store_that_cannot_open_its_database_raises_storage_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError):
        SqliteJobStore(tmp_path / "not-a-db")


async def test_a_database_of_the_previous_schema_is_migrated_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:  # version 1: the jobs table without traceparent (and dead_lettered)
        schema = _SCHEMA.replace("    traceparent TEXT,\n", "").replace(
            "    error TEXT,\n    dead_lettered INTEGER NOT NULL DEFAULT 0  -- 1: failed after using up its attempts\n",
            "    error TEXT\n")
        db.executescript(schema.split("-- Small payloads")[0])
        db.execute("PRAGMA user_version=1")
        db.execute("INSERT INTO jobs (job_id, lane, model, tenant, input_key, input_bytes, input_sha256, priority,"
                   " max_attempts, ttl_s, timeout_s, status, created_at, updated_at, expires_at) VALUES"
                   " ('old', 'async', 'm', 't', 'inputs/old', 1, 'x', 1, 3, 60, 60, 'queued', 1, 1, 61)")
        failures = (("spent", '{"type": "ModelError", "attempts": 3}'), ("refused", '{"type": "ModelError"}'))
        for job_id, error in failures:
            db.execute("INSERT INTO jobs (job_id, lane, model, tenant, input_key, input_bytes, input_sha256, priority,"
                       " max_attempts, ttl_s, timeout_s, status, created_at, updated_at, expires_at, error) VALUES"
                       " (?, 'async', 'm', 't', 'inputs/x', 1, 'x', 1, 3, 60, 60, 'failed', 1, 1, 61, ?)",
                       (job_id, error))
    store = SqliteJobStore(path)
    try:
        old = await store.get("old")
        assert old is not None
        assert (old.status, old.spec.traceparent) == (JobStatus.QUEUED, None)
        new = JobSpec(job_id="new", lane="async", model="m", tenant="t", input_key="inputs/new", input_bytes=1,
                      input_sha256="x", traceparent=f"00-{'a' * 32}-{'b' * 16}-01")
        await store.create(new, 2.0)
        assert (await store.get("new")).spec.traceparent == new.traceparent  # type: ignore[union-attr]
        assert (await store.stats(2.0)).dead_lettered == 1  # the failure that had used up its attempts
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
