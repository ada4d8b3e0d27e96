"""Durable state for the job lanes, chosen by ``state.kind``: a folder + SQLite, or S3 + SQS."""

from __future__ import annotations

from pathlib import Path

import structlog

from router.config import AwsStateConfig, LocalStateConfig
from router.storage.base import JobStore, ObjectStore

log = structlog.get_logger("router.storage")


async def open_stores(cfg: LocalStateConfig | AwsStateConfig) -> tuple[ObjectStore, JobStore]:
    """The object store and job store for ``cfg``, ready to use; imported lazily (aws pulls in botocore)."""
    if isinstance(cfg, LocalStateConfig):
        from router.storage.local import LocalObjectStore
        from router.storage.sqlite import SqliteJobStore

        root = Path(cfg.path)
        root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  # once, at start-up
        folder = LocalObjectStore(root / "objects")
        swept = folder.sweep()
        if swept:
            log.info("temporary_files_swept", count=swept)
        return folder, SqliteJobStore(root / "jobs.sqlite3")
    from router.storage.aws import SqsJobStore
    from router.storage.s3 import S3ObjectStore

    objects = S3ObjectStore(cfg.bucket, cfg.prefix, region=cfg.region, endpoint_url=cfg.endpoint_url)
    jobs = SqsJobStore(cfg.bucket, cfg.queue_url, dlq_url=cfg.dlq_url, prefix=f"{cfg.prefix}jobs/",
                       region=cfg.region, endpoint_url=cfg.endpoint_url)
    await objects.start()
    await jobs.start()
    return objects, jobs
