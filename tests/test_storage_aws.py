"""S3ObjectStore and SqsJobStore: the real aiobotocore code against a moto server (no mocks)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router.storage.aws import SqsJobStore
from router.storage.base import JobSpec, JobStatus, ObjectMissing, ObjectTooLarge
from router.storage.s3 import S3ObjectStore
from tests.moto_server import Queues, boto3_client, create_bucket, create_queues, moto_server, moto_url

__all__ = ["moto_server", "moto_url"]  # fixtures, re-exported for pytest

MIB = 1024 * 1024


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture
async def objects(moto_url: str) -> AsyncIterator[S3ObjectStore]:
    bucket = create_bucket(moto_url)
    store = S3ObjectStore(bucket, "router/", endpoint_url=moto_url)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
def queues(moto_url: str) -> Queues:
    create_bucket(moto_url)
    return create_queues(moto_url, max_receive_count=10)


@pytest.fixture
async def jobs(moto_url: str, queues: Queues) -> AsyncIterator[SqsJobStore]:
    store = SqsJobStore("router-state", queues.queue_url, dlq_url=queues.dlq_url, endpoint_url=moto_url,
                        receive_wait_s=0, queued_scan_s=0.0)  # every stats call lists the queued markers
    await store.start()
    yield store
    await store.close()


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def spec(job_id: str = "job-1", **kw: Any) -> JobSpec:
    base: dict[str, Any] = {"job_id": job_id, "lane": "async", "model": "m", "tenant": "t",
                            "input_key": f"inputs/{job_id}", "input_bytes": 3, "input_sha256": "00"}
    base.update(kw)
    return JobSpec(**base)


def dlq_bodies(url: str, dlq_url: str) -> list[str]:
    resp = boto3_client("sqs", url).receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [m["Body"] for m in resp.get("Messages", [])]


async def lease_one(jobs: SqsJobStore, lease_s: float = 1.0, wait_s: float = 3.0) -> Any:
    """Poll until one job is leased (or ``wait_s`` passes: None)."""
    deadline = time.monotonic() + wait_s
    while True:
        leased = await jobs.lease(1, lease_s, time.time())
        if leased or time.monotonic() > deadline:
            return leased[0] if leased else None
        await asyncio.sleep(0.1)


# -- S3ObjectStore ------------------------------------------------------------------------------------------


async def test_a_12_mib_stream_is_stored_by_multipart_upload_with_its_size_and_sha256(
        objects: S3ObjectStore, moto_url: str) -> None:
    data = bytes(range(256)) * (12 * MIB // 256) + b"tail"

    stored = await objects.put_stream("inputs/big", chunks_of(data, MIB), limit=20 * MIB)

    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await objects.size("inputs/big") == len(data)
    assert await objects.get("inputs/big") == data
    streamed = [chunk async for chunk in objects.stream("inputs/big", chunk_size=MIB)]
    assert b"".join(streamed) == data
    assert max(len(c) for c in streamed) <= MIB
    head = boto3_client("s3", moto_url).head_object(Bucket="router-state", Key="router/inputs/big")
    assert "-" in head["ETag"]  # a multipart ETag ("<md5>-<parts>")


async def test_a_stream_past_its_limit_is_aborted_and_leaves_no_object_or_upload(
        objects: S3ObjectStore, moto_url: str) -> None:
    data = b"x" * (10 * MIB)

    with pytest.raises(ObjectTooLarge):
        await objects.put_stream("inputs/too-big", chunks_of(data, MIB), limit=9 * MIB)

    s3 = boto3_client("s3", moto_url)
    assert s3.list_objects_v2(Bucket="router-state").get("KeyCount", 0) == 0
    assert not s3.list_multipart_uploads(Bucket="router-state").get("Uploads")
    assert await objects.size("inputs/too-big") is None


async def test_a_failing_source_aborts_the_upload(objects: S3ObjectStore, moto_url: str) -> None:
    async def broken() -> AsyncIterator[bytes]:
        for _ in range(9):
            yield b"y" * MIB
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await objects.put_stream("inputs/broken", broken(), limit=20 * MIB)

    assert not boto3_client("s3", moto_url).list_multipart_uploads(Bucket="router-state").get("Uploads")
    assert await objects.size("inputs/broken") is None


async def test_a_small_stream_is_stored_with_one_put_under_the_prefix(objects: S3ObjectStore, moto_url: str) -> None:
    stored = await objects.put_stream("inputs/small", chunks_of(b"hello world", 4), limit=100)

    assert stored.size == 11
    assert stored.sha256 == hashlib.sha256(b"hello world").hexdigest()
    head = boto3_client("s3", moto_url).head_object(Bucket="router-state", Key="router/inputs/small")
    assert "-" not in head["ETag"]
    assert objects.location("inputs/small") == "s3://router-state/router/inputs/small"
    assert (await objects.put("results/r", b"ok")).size == 2
    assert await objects.get("results/r") == b"ok"


async def test_a_missing_key_is_object_missing_and_size_none_and_delete_is_quiet(objects: S3ObjectStore) -> None:
    with pytest.raises(ObjectMissing):
        await objects.get("nope")
    with pytest.raises(ObjectMissing):
        _ = [chunk async for chunk in objects.stream("nope")]
    assert await objects.size("nope") is None
    await objects.delete("nope")
    await objects.put("gone", b"1")
    await objects.delete("gone")
    assert await objects.size("gone") is None


# -- SqsJobStore --------------------------------------------------------------------------------------------


async def test_a_job_goes_from_create_to_lease_extend_and_succeed(jobs: SqsJobStore, moto_url: str) -> None:
    now = time.time()
    created = await jobs.create(spec(), now)
    assert created.status is JobStatus.QUEUED
    assert (await jobs.get("job-1")) == created

    job = await lease_one(jobs, lease_s=1.0)
    assert job is not None
    assert job.status is JobStatus.RUNNING
    assert job.attempts == 1
    assert job.lease

    assert await jobs.extend("job-1", job.lease, 5.0, time.time())
    await asyncio.sleep(1.2)  # past the first lease: extended, so nobody else gets it
    assert await jobs.lease(1, 1.0, time.time()) == []

    assert await jobs.succeed("job-1", job.lease, "results/job-1", "text/csv", time.time())
    done = await jobs.get("job-1")
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED
    assert (done.result_key, done.result_content_type, done.lease) == ("results/job-1", "text/csv", None)
    assert not await jobs.succeed("job-1", job.lease, "results/other", None, time.time())
    attrs = boto3_client("sqs", moto_url).get_queue_attributes(QueueUrl=jobs.queue_url, AttributeNames=["All"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"
    assert attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"


async def test_a_lease_that_ran_out_and_was_taken_over_cannot_succeed_or_extend(jobs: SqsJobStore) -> None:
    await jobs.create(spec(), time.time())
    first = await lease_one(jobs, lease_s=1.0)
    assert first is not None

    second = await lease_one(jobs, lease_s=30.0)  # after the first lease's visibility ran out
    assert second is not None
    assert second.attempts == 2
    assert second.lease != first.lease

    assert not await jobs.succeed("job-1", first.lease, "results/stale", None, time.time())
    assert not await jobs.extend("job-1", first.lease, 30.0, time.time())
    assert not await jobs.retry("job-1", first.lease, {"type": "X"}, time.time(), time.time())
    assert await jobs.succeed("job-1", second.lease, "results/job-1", None, time.time())


async def test_a_retried_job_is_not_delivered_before_its_delay_and_keeps_the_error(jobs: SqsJobStore) -> None:
    await jobs.create(spec(), time.time())
    job = await lease_one(jobs, lease_s=30.0)
    now = time.time()

    assert await jobs.retry("job-1", job.lease, {"type": "ModelError", "status": 500}, now + 1.0, now)

    queued = await jobs.get("job-1")
    assert queued is not None
    assert queued.status is JobStatus.QUEUED
    assert queued.error == {"type": "ModelError", "status": 500}
    assert await jobs.lease(1, 30.0, time.time()) == []
    again = await lease_one(jobs, lease_s=30.0)
    assert again is not None
    assert time.time() >= now + 1.0
    assert again.attempts == 2


async def test_a_released_job_comes_back_at_once_without_counting_the_attempt(jobs: SqsJobStore) -> None:
    await jobs.create(spec(), time.time())
    job = await lease_one(jobs, lease_s=30.0)

    assert await jobs.release("job-1", job.lease, time.time())

    again = await lease_one(jobs, lease_s=30.0, wait_s=1.0)
    assert again is not None
    assert again.attempts == 1


async def test_a_poison_job_fails_and_is_dead_lettered_after_exactly_max_attempts_leases(
        jobs: SqsJobStore, moto_url: str, queues: Queues) -> None:
    await jobs.create(spec(max_attempts=2), time.time())
    leases = []
    for _ in range(2):  # a worker that dies every time: the lease just runs out
        job = await lease_one(jobs, lease_s=1.0)
        assert job is not None
        leases.append(job.attempts)
    await asyncio.sleep(1.1)

    assert await jobs.lease(1, 1.0, time.time()) == []  # the third receive fails it instead
    assert leases == [1, 2]
    failed = await jobs.get("job-1")
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error["type"] == "MaxAttemptsExceeded"
    assert dlq_bodies(moto_url, queues.dlq_url) == ["job-1"]


async def test_of_two_concurrent_finishers_of_one_lease_exactly_one_wins(jobs: SqsJobStore) -> None:
    await jobs.create(spec(), time.time())
    job = await lease_one(jobs, lease_s=30.0)

    results = await asyncio.gather(
        jobs.succeed("job-1", job.lease, "results/job-1", None, time.time()),
        jobs.retry("job-1", job.lease, {"type": "Timeout"}, time.time(), time.time()),
        jobs.fail("job-1", job.lease, {"type": "ModelError"}, time.time()),
    )

    assert sorted(results) == [False, False, True]
    final = await jobs.get("job-1")
    assert final is not None
    winner = [JobStatus.SUCCEEDED, JobStatus.QUEUED, JobStatus.FAILED][results.index(True)]
    assert final.status is winner


async def test_a_job_that_used_up_its_attempts_is_dead_lettered(jobs: SqsJobStore, moto_url: str,
                                                                 queues: Queues) -> None:
    await jobs.create(spec(), time.time())
    job = await lease_one(jobs, lease_s=30.0)

    error = {"type": "ServiceUnavailable", "message": "down", "attempts": 3}
    assert await jobs.fail("job-1", job.lease, error, time.time(), dead_letter=True)

    failed = await jobs.get("job-1")
    assert failed is not None
    assert (failed.status, failed.error) == (JobStatus.FAILED, error)
    assert dlq_bodies(moto_url, queues.dlq_url) == ["job-1"]
    assert (await jobs.stats(time.time())).jobs[("*", "running")] == 0


async def test_a_job_whose_input_the_model_rejected_fails_without_a_dead_letter(
        jobs: SqsJobStore, moto_url: str, queues: Queues) -> None:
    await jobs.create(spec(), time.time())
    job = await lease_one(jobs, lease_s=30.0)

    assert await jobs.fail("job-1", job.lease, {"type": "ModelError", "message": "bad input"}, time.time())

    assert (await jobs.get("job-1")).status is JobStatus.FAILED  # type: ignore[union-attr]
    assert dlq_bodies(moto_url, queues.dlq_url) == []  # the client's input, not a poison job: nobody is paged
    stats = await jobs.stats(time.time())
    assert (stats.jobs[("*", "running")], stats.dead_lettered) == (0, 0)


async def test_a_queued_job_can_be_cancelled_and_its_message_is_then_dropped(
        jobs: SqsJobStore, moto_url: str, queues: Queues) -> None:
    await jobs.create(spec(), time.time())

    assert await jobs.fail("job-1", None, {"type": "Cancelled"}, time.time())
    cancelled = await jobs.get("job-1")
    assert cancelled is not None
    assert cancelled.status is JobStatus.FAILED

    assert await jobs.lease(10, 30.0, time.time()) == []
    stats = await jobs.stats(time.time())
    assert stats.jobs[("*", "queued")] == 0
    assert stats.jobs[("*", "running")] == 0  # the message was deleted, not only skipped
    assert dlq_bodies(moto_url, queues.dlq_url) == []  # a cancel is no poison


async def test_a_running_job_cannot_be_cancelled(jobs: SqsJobStore) -> None:
    await jobs.create(spec(), time.time())
    job = await lease_one(jobs, lease_s=30.0)

    assert not await jobs.fail("job-1", None, {"type": "Cancelled"}, time.time())
    assert (await jobs.get("job-1")).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert await jobs.succeed("job-1", job.lease, "results/job-1", None, time.time())


async def test_a_job_leased_past_its_ttl_expires(jobs: SqsJobStore) -> None:
    await jobs.create(spec(ttl_s=60.0), time.time())

    assert await jobs.lease(1, 30.0, time.time() + 61.0) == []
    expired = await jobs.get("job-1")
    assert expired is not None
    assert expired.status is JobStatus.EXPIRED
    assert await jobs.expire(time.time()) == 0


async def test_creating_a_job_twice_is_refused(jobs: SqsJobStore) -> None:
    from router.storage.base import StorageError

    await jobs.create(spec(), time.time())
    with pytest.raises(StorageError):
        await jobs.create(spec(), time.time())
    assert await jobs.get("missing") is None


async def test_stats_count_queued_running_and_dead_lettered_messages(jobs: SqsJobStore) -> None:
    for n in range(3):
        await jobs.create(spec(f"job-{n}"), time.time())
    leased = await jobs.lease(2, 30.0, time.time())
    assert len(leased) == 2
    assert await jobs.fail(leased[0].job_id, leased[0].lease, {"type": "X"}, time.time(), dead_letter=True)

    stats = await jobs.stats(time.time())

    assert stats.jobs == {("*", "queued"): 1, ("*", "running"): 1}
    assert stats.dead_lettered == 1
    assert stats.queued == {"*": 1}  # SQS counts the whole queue, not each model


async def test_the_oldest_queued_job_of_each_model_is_found_through_its_marker(jobs: SqsJobStore,
                                                                                moto_url: str) -> None:
    now = time.time()
    await jobs.create(spec("a-old", model="a"), now - 120)
    await jobs.create(spec("a-new", model="a"), now - 10)
    await jobs.create(spec("a-same-second", model="a"), now - 9.5)  # one marker a second per model is enough
    await jobs.create(spec("b-only", model="b"), now - 60)
    markers = boto3_client("s3", moto_url).list_objects_v2(Bucket="router-state", Prefix="jobs/queued/")
    assert markers["KeyCount"] == 3

    stats = await jobs.stats(now)
    assert {m: round(age) for m, age in stats.oldest_queued_age_s.items()} == {"a": 120, "b": 60}

    leased = await jobs.lease(10, 30.0, now)  # taken by workers: no longer queued
    by_id = {job.job_id: job for job in leased}
    assert set(by_id) == {"a-old", "a-new", "a-same-second", "b-only"}
    assert (await jobs.stats(now)).oldest_queued_age_s == {}

    assert await jobs.retry("a-old", by_id["a-old"].lease, {"type": "ThrottlingException"}, now + 1, now)
    assert {m: round(age) for m, age in (await jobs.stats(now)).oldest_queued_age_s.items()} == {"a": 120}


async def test_a_marker_left_behind_by_a_dead_replica_is_dropped_once_its_job_is_seen_running(
        jobs: SqsJobStore, moto_url: str) -> None:
    now = time.time()
    await jobs.create(spec("stuck", model="a"), now - 3600)
    await lease_one(jobs, lease_s=30.0)
    await jobs.index.mark_queued("a", now - 3600, "stuck")  # the replica died before deleting it

    assert (await jobs.stats(now)).oldest_queued_age_s == {}
    listed = boto3_client("s3", moto_url).list_objects_v2(Bucket="router-state", Prefix="jobs/queued/")
    assert listed.get("KeyCount") == 0


async def test_a_tenants_jobs_list_newest_first_page_by_page_and_only_that_tenants(jobs: SqsJobStore) -> None:
    now = time.time()
    for n in range(5):
        await jobs.create(spec(f"mine-{n}", tenant="team-a"), now + n)
    await jobs.create(spec("theirs", tenant="team-b"), now + 10)

    first, after = await jobs.tenant_jobs("team-a", None, 3)
    assert [job.job_id for job in first] == ["mine-4", "mine-3", "mine-2"]
    assert after is not None
    rest, after = await jobs.tenant_jobs("team-a", after, 3)
    assert ([job.job_id for job in rest], after) == (["mine-1", "mine-0"], None)
