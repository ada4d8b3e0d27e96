"""Real filesystem conditions for tests: a small tmpfs that fills up, a folder mounted read-only.

Tests run as root, and permission bits do not stop root; mounts do. Both need CAP_SYS_ADMIN (root on this
project's machines and CI); elsewhere the tests that use them are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"mount exited {done.returncode}")


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """``path`` as a tmpfs of ``size``: writes past it fail with ENOSPC, as on a full disk."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    except OSError as exc:
        pytest.skip(f"a real full disk needs a tmpfs mount (root with CAP_SYS_ADMIN), which failed here: {exc}")
    try:
        yield path
    finally:
        _unmount(path)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` (a folder) bind-mounted read-only onto itself: every write under it fails with EROFS, root's too."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("--bind", str(path), str(path))
    except OSError as exc:
        pytest.skip(f"a read-only folder needs a bind mount (root with CAP_SYS_ADMIN), which failed here: {exc}")
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        _unmount(path)


def fill(folder: Path) -> Path:
    """Write a filler file in ``folder`` until its filesystem is full; delete it to give the space back."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = 1 << 20
        while size >= 512:  # big writes first, then ever smaller ones into the last free pages
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return filler
