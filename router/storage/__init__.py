"""Durable state for the job lanes, chosen by ``state.kind``: a folder + SQLite, or S3 + SQS."""

from __future__ import annotations

from pathlib import Path

from router.config import AwsStateConfig, LocalStateConfig
from router.storage.base import JobStore, ObjectStore


async def open_stores(cfg: LocalStateConfig | AwsStateConfig) -> tuple[ObjectStore, JobStore]:
    """The object store and job store for ``cfg``, ready to use; imported lazily (aws pulls in botocore)."""
    if isinstance(cfg, LocalStateConfig):
        from router.storage.local import LocalObjectStore
        from router.storage.sqlite import SqliteJobStore

        root = Path(cfg.path)
        root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  # once, at start-up
        return LocalObjectStore(root / "objects"), SqliteJobStore(root / "jobs.sqlite3")
    raise NotImplementedError("state kind 'aws' is wired in with the S3 + SQS stores")
