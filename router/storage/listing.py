"""``GET /jobs``: a tenant's jobs across the stores that hold them, filtered, a bounded page at a time.

Every store lists a tenant's jobs in one order (newest first, then by job id) from a position
(:class:`JobCursor`), so pages from several stores (the embedded mode's job and batch databases) merge into
one listing. Filters (status, model, lane) are applied to the jobs read, and a request reads at most ``scan``
jobs: a page may then hold fewer than ``limit`` jobs and still have a ``next`` cursor. That bound is what
keeps a filtered listing of a large tenant cheap on S3, where each job read is a GetObject.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from router.storage.base import Job, JobCursor

JobSource = Callable[[str, JobCursor | None, int], Awaitable[tuple[list[Job], JobCursor | None]]]
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_SCAN = 500  # jobs read per request, whatever the filters


@dataclass(frozen=True, slots=True)
class JobFilter:
    status: str | None = None
    model: str | None = None
    lane: str | None = None

    def matches(self, job: Job) -> bool:
        return ((self.status is None or job.status.value == self.status)
                and (self.model is None or job.spec.model == self.model)
                and (self.lane is None or job.spec.lane == self.lane))


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[Job]
    next: JobCursor | None  # where the following page starts; None: the listing is complete


def encode_cursor(cursor: JobCursor) -> str:
    return base64.urlsafe_b64encode(f"{cursor.created_at!r}/{cursor.job_id}".encode()).decode().rstrip("=")


def decode_cursor(token: str) -> JobCursor:
    """The cursor a ``next`` token stands for; ValueError if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        created, sep, job_id = raw.partition("/")
        if not sep or not job_id or len(job_id) > 128:
            raise ValueError
        return JobCursor(float(created), job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError("invalid 'next' token: pass the value a previous page returned") from None


async def _merged(sources: Sequence[JobSource], tenant: str, after: JobCursor | None,
                  n: int) -> tuple[list[Job], JobCursor | None]:
    """The first ``n`` jobs after ``after`` over every source, and where the next read starts."""
    if len(sources) == 1:
        return await sources[0](tenant, after, n)
    pages = [await source(tenant, after, n) for source in sources]
    jobs = sorted((job for page, _ in pages for job in page), key=lambda j: JobCursor.of(j).sort_key())
    more = len(jobs) > n or any(following is not None for _, following in pages)
    jobs = jobs[:n]
    return jobs, JobCursor.of(jobs[-1]) if more and jobs else None


async def list_jobs(sources: Sequence[JobSource], tenant: str, flt: JobFilter, after: JobCursor | None,
                    limit: int, *, scan: int = MAX_SCAN) -> JobPage:
    """Up to ``limit`` of the tenant's jobs that match ``flt``, after ``after``, reading at most ``scan`` jobs."""
    found: list[Job] = []
    read = 0
    cursor = after
    while read < scan:
        n = min(limit, scan - read)
        jobs, following = await _merged(sources, tenant, cursor, n)
        read += n - len(jobs)  # entries whose job was gone (S3) were read too
        for i, job in enumerate(jobs):
            read += 1
            cursor = JobCursor.of(job)
            if flt.matches(job):
                found.append(job)
                if len(found) == limit:
                    rest = i + 1 < len(jobs) or following is not None
                    return JobPage(found, cursor if rest else None)
        if following is None:
            return JobPage(found, None)
        cursor = following
    return JobPage(found, cursor)
