"""LocalObjectStore against real files: atomic, durable writes; nothing left behind by a failed one."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from router.storage.base import ObjectMissing, ObjectTooLarge, StorageError
from router.storage.local import LocalObjectStore


async def _chunks(parts: Iterable[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, part in enumerate(parts):
        if fail_after is not None and i == fail_after:
            raise ConnectionResetError("client went away")
        await asyncio.sleep(0)
        yield part


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    # A small write batch, so multi-chunk streams take several thread hops.
    return LocalObjectStore(tmp_path / "objects", write_batch=1000)


async def test_a_streamed_object_reads_back_whole_with_its_sha256(store: LocalObjectStore) -> None:
    parts = [bytes([i]) * 777 for i in range(20)]
    data = b"".join(parts)

    stored = await store.put_stream("inputs/job-1", _chunks(parts), limit=len(data))

    assert stored.key == "inputs/job-1"
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.get("inputs/job-1") == data
    assert await store.size("inputs/job-1") == len(data)
    streamed = [chunk async for chunk in store.stream("inputs/job-1", chunk_size=4096)]
    assert all(len(chunk) <= 4096 for chunk in streamed)
    assert len(streamed) == 4
    assert b"".join(streamed) == data


async def test_put_stores_bytes_and_overwrites_the_previous_object(store: LocalObjectStore) -> None:
    first = await store.put("results/job-1", b"first")
    second = await store.put("results/job-1", b"second answer")

    assert first.sha256 == hashlib.sha256(b"first").hexdigest()
    assert second.size == len(b"second answer")
    assert await store.get("results/job-1") == b"second answer"


async def test_a_stream_past_its_limit_is_refused_and_leaves_nothing(store: LocalObjectStore) -> None:
    with pytest.raises(ObjectTooLarge) as raised:
        await store.put_stream("inputs/big", _chunks([b"x" * 600, b"y" * 600]), limit=1000)

    assert raised.value.limit == 1000
    assert await store.size("inputs/big") is None
    assert _files(store.root) == []


async def test_a_stream_of_exactly_the_limit_is_accepted(store: LocalObjectStore) -> None:
    stored = await store.put_stream("inputs/edge", _chunks([b"a" * 500, b"b" * 500]), limit=1000)
    assert stored.size == 1000


async def test_a_source_failing_mid_write_leaves_no_object_and_keeps_the_old_one(store: LocalObjectStore) -> None:
    await store.put("inputs/job-2", b"old")

    with pytest.raises(ConnectionResetError):
        await store.put_stream("inputs/job-2", _chunks([b"z" * 900] * 5, fail_after=3), limit=10_000)
    with pytest.raises(ConnectionResetError):
        await store.put_stream("inputs/job-3", _chunks([b"z" * 900] * 5, fail_after=3), limit=10_000)

    assert await store.get("inputs/job-2") == b"old"
    assert await store.size("inputs/job-3") is None
    assert _files(store.root) == ["inputs/job-2"]


async def test_a_cancelled_write_leaves_no_temporary_file(store: LocalObjectStore) -> None:
    first_chunk_written = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"q" * 5000
        first_chunk_written.set()  # asked for more: the first chunk is in the temporary file
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(store.put_stream("inputs/job-4", stalled(), limit=1 << 20))
    await asyncio.wait_for(first_chunk_written.wait(), 5)
    assert len(list(store.root.rglob("*.tmp"))) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert _files(store.root) == []


@pytest.mark.parametrize("key", ["/etc/passwd", "../outside", "inputs/../../outside", "inputs/./x", "",
                                 "inputs//x", "inputs\\..\\x", "inputs/",
                                 ".writing/x"])
async def test_keys_that_could_leave_the_root_are_refused(store: LocalObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        await store.put(key, b"x")
    with pytest.raises(ValueError, match="invalid object key"):
        await store.get(key)
    with pytest.raises(ValueError, match="invalid object key"):
        store.location(key)


async def test_missing_objects_read_as_missing(store: LocalObjectStore) -> None:
    with pytest.raises(ObjectMissing):
        await store.get("results/none")
    with pytest.raises(ObjectMissing):
        [chunk async for chunk in store.stream("results/none")]
    assert await store.size("results/none") is None
    await store.delete("results/none")


async def test_delete_removes_the_object(store: LocalObjectStore) -> None:
    await store.put("results/job-5", b"answer")
    await store.delete("results/job-5")
    assert await store.size("results/job-5") is None


async def test_location_in_the_embedded_mode_is_the_key(store: LocalObjectStore) -> None:
    assert store.location("results/job-6") == "results/job-6"


async def test_disk_errors_become_storage_errors(store: LocalObjectStore) -> None:
    await store.put("inputs", b"a file where a folder is needed")
    with pytest.raises(StorageError):
        await store.put("inputs/job-7", b"x")
    with pytest.raises(StorageError):
        await store.put_stream("inputs/job-7", _chunks([b"x"]), limit=10)


async def test_sweep_removes_temporary_files_a_crash_left_and_nothing_else(store: LocalObjectStore) -> None:
    await store.put("results/a", b"kept")
    left = [store.root / ".writing" / "0123.tmp", store.root / ".writing" / "4567.tmp"]
    for path in left:  # what a SIGKILL between open and rename leaves behind
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert store.sweep() == 2
    assert not any(path.exists() for path in left)
    assert await store.get("results/a") == b"kept"
