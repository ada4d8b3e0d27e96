"""The live status page: ``GET /ui`` (a static page, no secrets in it) and the admin API it reads with the admin
token: ``GET /admin/status``, ``GET /admin/decisions``, ``GET /admin/jobs``, ``GET /admin/jobs/{id}/result``.

The page asks for the token once and keeps it in the tab's sessionStorage; it sends it as an ``Authorization``
header, never in a URL.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Stream

from router.api.errors import ApiError
from router.api.guard import admin_guard
from router.lanes.jobs import job_json, job_url
from router.readiness import readiness
from router.runtime import Runtime
from router.status import StatusHistory, decisions_json, status_json, tenants
from router.storage.base import Job, JobStatus, StorageError
from router.storage.listing import JobFilter, list_jobs

PAGE = "index.html"
_HEADERS = {  # the page loads nothing from anywhere else, and no other site may frame it
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self' blob: data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@get("/ui", sync_to_thread=False)
def status_page() -> Response[bytes]:
    return Response((files("router.ui") / PAGE).read_bytes(), media_type="text/html; charset=utf-8",
                    headers=_HEADERS)


@get("/admin/status", guards=[admin_guard], sync_to_thread=False)
def admin_status(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Models, backends live, the lane split and sheds of the last minutes, jobs by status (see router.status)."""
    runtime: Runtime = request.app.state.runtime
    history: StatusHistory = request.app.state.status_history
    return status_json(runtime, history, readiness(runtime).body)


@get("/admin/decisions", guards=[admin_guard], sync_to_thread=False)
def admin_decisions(
    request: Request[Any, Any, Any],
    request_id: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The last requests answered by this process, newest first; ``request_id`` matches a prefix."""
    runtime: Runtime = request.app.state.runtime
    return {"decisions": decisions_json(runtime.recent, request_id=request_id, model=model, limit=limit),
            "kept": runtime.recent.maxlen}


def _sources(runtime: Runtime) -> list[Any]:
    return [s.tenant_jobs for s in (runtime.job_lane and runtime.job_lane.jobs,
                                    runtime.batch_lane and runtime.batch_lane.store) if s]


@get("/admin/jobs", guards=[admin_guard])
async def admin_jobs(
    request: Request[Any, Any, Any],
    status: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 25,
) -> dict[str, Any]:
    """Every tenant's newest jobs (of the tenants the config names, and anonymous), newest first."""
    runtime: Runtime = request.app.state.runtime
    if status is not None and status not in {s.value for s in JobStatus}:
        raise ValidationException(f"unknown status {status!r}: one of {', '.join(s.value for s in JobStatus)}")
    sources = _sources(runtime)
    found: list[tuple[str, Job]] = []
    try:
        for tenant in tenants(runtime) if sources else []:
            page = await list_jobs(sources, tenant, JobFilter(status), None, limit)
            found += [(tenant, job) for job in page.jobs]
    except StorageError:
        raise ApiError(503, "job storage is unavailable; retry later", headers={"Retry-After": "2"}) from None
    found.sort(key=lambda tj: tj[1].created_at, reverse=True)
    return {"jobs": [{**job_json(job, job_url(job.job_id)), "tenant": tenant,
                      "result_url": f"/admin/jobs/{job.job_id}/result"} for tenant, job in found[:limit]]}


@get("/admin/jobs/{job_id:str}/result", guards=[admin_guard])
async def admin_job_result(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
    """A job's result whatever its tenant (the status page's links), or its status while it has none."""
    runtime: Runtime = request.app.state.runtime
    for lane in (runtime.job_lane, runtime.batch_lane):
        if lane is None or len(job_id) > 128:
            continue
        try:
            job = await lane.get(job_id)
            if job is None:
                continue
            if job.status is JobStatus.SUCCEEDED and job.result_key:
                size = await lane.objects.size(job.result_key)
                if size is not None:
                    return Stream(lane.objects.stream(job.result_key), status_code=200,
                                  media_type=job.result_content_type or "application/octet-stream",
                                  headers={"Content-Length": str(size)})
        except StorageError:
            raise ApiError(503, "job storage is unavailable; retry later", headers={"Retry-After": "2"}) from None
        return Response(job_json(job, job_url(job.job_id)), status_code=200)
    raise NotFoundException(f"no job {job_id}")


UI_HANDLERS = [status_page, admin_status, admin_decisions, admin_jobs, admin_job_result]
