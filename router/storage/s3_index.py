"""Listings S3 cannot answer by itself, kept as empty marker objects beside the job records.

S3 lists keys in lexical order and nothing else, so the order a listing needs is written into the key:

* ``<prefix>by-tenant/<tenant>/<inverted µs>-<job_id>``: one per job, written when it is created, so a
  tenant's jobs list newest first with one ListObjectsV2 per page (``GET /jobs``). Removed only by the
  bucket's lifecycle rule, like the records.
* ``<prefix>queued/<model>/<µs>-<job_id>``: present while a marked job waits in the work queue (written on
  create, retry and release; deleted when a worker takes the job or it ends), so the oldest queued job of a
  model is the first key of one ListObjectsV2 with ``MaxKeys``: the per-model age SQS cannot give. The store
  marks one job per model and second (see ``SqsJobStore``), which dates the oldest to within that second.

Markers are best effort: a replica that dies between a record's change and its marker's leaves one
behind. :meth:`JobIndex.oldest_queued` checks the record of a marker older than ``stale_after_s`` and drops
the marker when the job is no longer queued, so a leftover costs one GET, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from router.storage.base import JobCursor, StorageError
from router.storage.s3 import aws_errors

_US = 1_000_000
_INVERT = 9_999_999_999_999_999  # 16 digits of microseconds: good until the year 2286


def _us(created_at: float) -> int:
    return round(created_at * _US)


class JobIndex:
    """The tenant listing and the queued markers of one job store (``prefix``: its records' prefix)."""

    def __init__(self, bucket: str, prefix: str, s3: Callable[[], Awaitable[Any]], *,
                 stale_after_s: float = 300.0) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._s3 = s3
        self.stale_after_s = stale_after_s

    # -- keys --------------------------------------------------------------------------------------

    def tenant_key(self, tenant: str, created_at: float, job_id: str) -> str:
        return f"{self.prefix}by-tenant/{tenant}/{_INVERT - _us(created_at):016d}-{job_id}"

    def queued_key(self, model: str, created_at: float, job_id: str) -> str:
        return f"{self.prefix}queued/{model}/{_us(created_at):016d}-{job_id}"

    # -- writes ------------------------------------------------------------------------------------

    async def _put(self, key: str) -> None:
        s3 = await self._s3()
        with aws_errors("cannot write a job index entry"):
            await s3.put_object(Bucket=self.bucket, Key=key, Body=b"")

    async def _delete(self, key: str) -> None:
        s3 = await self._s3()
        with aws_errors("cannot delete a job index entry"):
            await s3.delete_object(Bucket=self.bucket, Key=key)

    async def add_tenant(self, tenant: str, created_at: float, job_id: str) -> None:
        await self._put(self.tenant_key(tenant, created_at, job_id))

    async def remove_tenant(self, tenant: str, created_at: float, job_id: str) -> None:
        await self._delete(self.tenant_key(tenant, created_at, job_id))

    async def mark_queued(self, model: str, created_at: float, job_id: str) -> None:
        await self._put(self.queued_key(model, created_at, job_id))

    async def unmark_queued(self, model: str, created_at: float, job_id: str) -> None:
        await self._delete(self.queued_key(model, created_at, job_id))

    # -- reads -------------------------------------------------------------------------------------

    async def _list(self, prefix: str, max_keys: int, start_after: str | None = None,
                    delimiter: str | None = None) -> dict[str, Any]:
        s3 = await self._s3()
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if start_after:
            params["StartAfter"] = start_after
        if delimiter:
            params["Delimiter"] = delimiter
        with aws_errors("cannot list the job index"):
            page: dict[str, Any] = await s3.list_objects_v2(**params)
        return page

    async def tenant_page(self, tenant: str, after: JobCursor | None,
                          limit: int) -> tuple[list[str], JobCursor | None]:
        """The ids of up to ``limit`` of the tenant's jobs after ``after``, newest first, and where the next page
        starts (None: nothing follows). One ListObjectsV2."""
        start = self.tenant_key(tenant, after.created_at, after.job_id) if after else None
        page = await self._list(f"{self.prefix}by-tenant/{tenant}/", limit, start)
        entries = [obj["Key"].rpartition("/")[2].partition("-") for obj in page.get("Contents") or []]
        following = None
        if entries and page.get("IsTruncated"):
            inverted, _, job_id = entries[-1]
            following = JobCursor((_INVERT - int(inverted)) / _US, job_id)
        return [job_id for _, _, job_id in entries], following

    async def oldest_queued(self, now: float, is_queued: Callable[[str], Awaitable[bool]]) -> dict[str, float]:
        """Per model with a queued job, the creation time of its oldest one. One ListObjectsV2 for the models,
        one per model; plus a GET for a marker older than ``stale_after_s`` (dropped if its job moved on)."""
        root = f"{self.prefix}queued/"
        models = [p["Prefix"][len(root):-1] for p in (await self._list(root, 1000, delimiter="/")).get(
            "CommonPrefixes") or []]
        oldest: dict[str, float] = {}
        for model in models:
            for obj in (await self._list(f"{root}{model}/", 4)).get("Contents") or []:
                stamp, _, job_id = obj["Key"].rpartition("/")[2].partition("-")
                created_at = int(stamp) / _US
                if now - created_at > self.stale_after_s and not await is_queued(job_id):
                    with contextlib.suppress(StorageError):  # else tried again on the next scan
                        await self._delete(obj["Key"])
                    continue
                oldest[model] = created_at
                break
        return oldest
