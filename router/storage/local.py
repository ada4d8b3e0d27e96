"""The embedded object store: payloads and results as files under one folder.

Every write goes to a temporary file in the folder's ``.writing`` directory, is fsynced, renamed over the
key with ``os.replace`` (one filesystem: the rename is atomic) and the key's directory is fsynced, so once a put
returns the object is durable, and a reader (or a restart after a crash) sees either the whole old object,
the whole new one, or none. All file work runs in threads, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO, ParamSpec, TypeVar

from router.storage.base import ObjectMissing, ObjectTooLarge, StorageError, StoredObject

_TMP_SUFFIX = ".tmp"
_TMP_DIR = ".writing"  # under the root: where writes in progress live, so a sweep never walks the objects
# Chunks are gathered up to this many bytes before one thread hop writes them: few hops, bounded memory.
_WRITE_BATCH = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_P = ParamSpec("_P")
_T = TypeVar("_T")


async def _in_thread(key: str, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run a write step in a thread; its OSError becomes StorageError (the source's own errors pass as they are)."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        raise StorageError(f"cannot write {key!r}: {exc}") from exc


def _is_missing(exc: OSError) -> bool:
    # A path through a file, or a key naming a directory, is no object either.
    return isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError)


class LocalObjectStore:
    """``ObjectStore`` on a local folder; keys are relative POSIX paths such as ``inputs/<job_id>``."""

    def __init__(self, root: str | Path, *, write_batch: int = _WRITE_BATCH) -> None:
        self.root = Path(root)
        self._write_batch = write_batch

    def sweep(self) -> int:
        """Delete temporary files left by writes a crash cut short; how many. Run at start-up, before any write
        of this process (a router owns its state folder: a write of another process sharing it would fail)."""
        swept = 0
        with contextlib.suppress(FileNotFoundError):
            for tmp in (self.root / _TMP_DIR).iterdir():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    swept += 1
        return swept

    # -- keys -----------------------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file for ``key``; ValueError for a key that could leave the root or is not a plain path."""
        if not key or "\\" in key or "\x00" in key:
            raise ValueError(f"invalid object key {key!r}")
        pure = PurePosixPath(key)
        parts = key.split("/")
        if pure.is_absolute() or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid object key {key!r}: must be a relative path without '.' or '..'")
        if parts[0] == _TMP_DIR:
            raise ValueError(f"invalid object key {key!r}: reserved for temporary files")
        return self.root.joinpath(*parts)

    def location(self, key: str) -> str:
        """The key itself: in the embedded mode clients fetch objects through the router, not from a URI."""
        self._path(key)
        return key

    # -- writes ---------------------------------------------------------------------------------------------

    def _ensure_dir(self, directory: Path) -> None:
        if directory.is_dir():
            return
        missing: list[Path] = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for new_dir in reversed(missing):
            with contextlib.suppress(FileExistsError):
                new_dir.mkdir()
            # The new directory's entry must itself reach the disk, or a crash could lose the whole subtree.
            _fsync_dir(new_dir.parent)

    def _open_tmp(self, path: Path) -> tuple[BinaryIO, Path]:
        self._ensure_dir(path.parent)
        self._ensure_dir(self.root / _TMP_DIR)
        tmp = self.root / _TMP_DIR / f"{uuid.uuid4().hex}{_TMP_SUFFIX}"
        # Closed by _commit or _discard.
        return open(tmp, "xb"), tmp

    @staticmethod
    def _write_chunks(file: BinaryIO, hasher: hashlib._Hash, chunks: list[bytes]) -> None:
        for chunk in chunks:
            file.write(chunk)
            hasher.update(chunk)

    @staticmethod
    def _commit(file: BinaryIO, tmp: Path, path: Path) -> None:
        file.flush()
        os.fsync(file.fileno())
        file.close()
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    @staticmethod
    def _discard(file: BinaryIO, tmp: Path) -> None:
        file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, limit: int) -> StoredObject:
        """Write chunks as they arrive (at most ``write_batch`` bytes held); ObjectTooLarge past ``limit``.

        On any failure (too large, the source raising, cancellation, disk errors) the temporary file is removed
        and whatever was stored under ``key`` before stays as it was.
        """
        path = self._path(key)
        file, tmp = await _in_thread(key, self._open_tmp, path)
        hasher = hashlib.sha256()
        total = 0
        batch: list[bytes] = []
        batch_bytes = 0
        committed = False
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                total += len(chunk)
                if total > limit:
                    raise ObjectTooLarge(limit)
                batch.append(bytes(chunk))
                batch_bytes += len(chunk)
                if batch_bytes >= self._write_batch:
                    await _in_thread(key, self._write_chunks, file, hasher, batch)
                    batch, batch_bytes = [], 0
            if batch:
                await _in_thread(key, self._write_chunks, file, hasher, batch)
                batch = []
            await _in_thread(key, self._commit, file, tmp, path)
            committed = True
        finally:
            if not committed:
                # Shielded so that a second cancellation cannot leave the temporary file behind.
                with contextlib.suppress(OSError):
                    await asyncio.shield(asyncio.to_thread(self._discard, file, tmp))
        return StoredObject(key=key, size=total, sha256=hasher.hexdigest())

    def _put_sync(self, path: Path, data: bytes) -> str:
        file, tmp = self._open_tmp(path)
        try:
            file.write(data)
            self._commit(file, tmp, path)
        except BaseException:
            self._discard(file, tmp)
            raise
        return hashlib.sha256(data).hexdigest()

    async def put(self, key: str, data: bytes) -> StoredObject:
        """Store ``data`` whole, durably and atomically."""
        digest = await _in_thread(key, self._put_sync, self._path(key), data)
        return StoredObject(key=key, size=len(data), sha256=digest)

    # -- reads ----------------------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        """The whole object; ObjectMissing if absent."""
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            if _is_missing(exc):
                raise ObjectMissing(key) from exc
            raise StorageError(f"cannot read {key!r}: {exc}") from exc

    async def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The object in chunks of at most ``chunk_size``; ObjectMissing (on the first step) if absent."""
        path = self._path(key)
        try:
            file = await asyncio.to_thread(open, path, "rb")
        except OSError as exc:
            if _is_missing(exc):
                raise ObjectMissing(key) from exc
            raise StorageError(f"cannot read {key!r}: {exc}") from exc
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(file.read, chunk_size)
                except OSError as exc:
                    raise StorageError(f"cannot read {key!r}: {exc}") from exc
                if not chunk:
                    return
                yield chunk
        finally:
            # Closing a file opened for reading does no disk I/O, and it must happen even while being closed.
            file.close()

    async def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if there is none."""
        path = self._path(key)
        try:
            st = await asyncio.to_thread(os.stat, path)
        except OSError as exc:
            if _is_missing(exc):
                return None
            raise StorageError(f"cannot stat {key!r}: {exc}") from exc
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    async def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine. Not fsynced: an object that comes back after a crash is
        only garbage, never a wrong answer."""
        path = self._path(key)
        try:
            await asyncio.to_thread(path.unlink)
        except OSError as exc:
            if _is_missing(exc):
                return
            raise StorageError(f"cannot delete {key!r}: {exc}") from exc

    async def close(self) -> None:
        """Nothing to release: files are open only for the duration of a call."""
