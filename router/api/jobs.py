"""The jobs API: ``GET /jobs``, ``GET /jobs/{id}``, ``GET /jobs/{id}/result``, ``GET /jobs/{id}/error``,
``DELETE /jobs/{id}``.

A caller sees only the jobs of its own tenant: a job of another tenant is answered exactly like a missing
one (404), so ids cannot be probed. Anonymous callers (no API key) share the tenant "anonymous"; their
job ids (128 random bits) are the capability to read them, like a presigned URL, so they cannot list jobs.
Errors have the router's one shape (``router.api.errors``).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, delete, get
from litestar.exceptions import NotFoundException, PermissionDeniedException, ValidationException
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Stream

from router.api.errors import ApiError, error_response
from router.batch.lane import BatchLane
from router.features import ANONYMOUS, RequestError
from router.lanes.jobs import JobLane, job_json, job_url
from router.runtime import Runtime
from router.storage.base import Job, JobStatus, StorageError
from router.storage.listing import DEFAULT_LIMIT, MAX_LIMIT, JobFilter, decode_cursor, encode_cursor, list_jobs
from router.types import JOB_LANES

PENDING_RETRY_AFTER = "1"


async def _job_for(request: Request[Any, Any, Any], job_id: FromPath[str]) -> tuple[JobLane | BatchLane, Job]:
    runtime: Runtime = request.app.state.runtime
    lanes: list[JobLane | BatchLane] = [lane for lane in (runtime.job_lane, runtime.batch_lane) if lane is not None]
    if not lanes:
        raise NotFoundException("no model of this router has an async or batch lane")
    caller = _tenant(request)
    for lane in lanes if len(job_id) <= 128 else ():
        try:
            job = await lane.get(job_id)
        except StorageError:
            raise _unavailable() from None
        if job is not None:
            if job.spec.tenant != caller:
                break
            return lane, job
    raise NotFoundException(f"no job {job_id}")


def _tenant(request: Request[Any, Any, Any]) -> str:
    """The caller's tenant, from its API key or SigV4 signature; 403 for an unknown key or a bad signature."""
    runtime: Runtime = request.app.state.runtime
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        caller = runtime.routing.features.caller(headers)
        signed = runtime.routing.features.signed_request(request.scope, headers)
        if signed is not None:  # a tenant named by SigV4 must prove it: these requests have no body
            signed.verify_body(b"")
    except RequestError as exc:
        raise PermissionDeniedException(exc.message) from None
    return caller.tenant


def _unavailable() -> Exception:
    return ApiError(503, "job storage is unavailable; retry later", headers={"Retry-After": "2"})


def _ended_error(job: Job, status: int) -> Response[Any]:
    """A failed or expired job's answer: the router's error shape, the job's own error type, the job's fields."""
    error = job.error or {}
    message = str(error.get("message") or f"the job {job.status.value}")
    return error_response(status, message, str(error.get("type") or "") or None, job_json(job, job_url(job.job_id)))


@get("/jobs")
async def list_caller_jobs(
    request: Request[Any, Any, Any],
    status: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None,
    lane: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    next_token: Annotated[str | None, QueryParameter(name="next")] = None,
) -> dict[str, Any]:
    """The caller's jobs, newest first: ``{"jobs": [...], "next": token | null}``."""
    runtime: Runtime = request.app.state.runtime
    tenant = _tenant(request)
    if tenant == ANONYMOUS:
        raise PermissionDeniedException("listing jobs needs an API key: anonymous callers share one tenant, whose "
                                        "job ids are the only way to read its jobs")
    if status is not None and status not in {s.value for s in JobStatus}:
        raise ValidationException(f"unknown status {status!r}: one of {', '.join(s.value for s in JobStatus)}")
    if lane is not None and lane not in {lane.value for lane in JOB_LANES}:
        raise ValidationException(f"unknown lane {lane!r}: jobs run on the async and batch lanes")
    try:
        after = decode_cursor(next_token) if next_token else None
    except ValueError as exc:
        raise ValidationException(str(exc)) from None
    sources = [source.tenant_jobs for source in (runtime.job_lane and runtime.job_lane.jobs,
                                           runtime.batch_lane and runtime.batch_lane.store) if source]
    if not sources:
        return {"jobs": [], "next": None}
    try:
        page = await list_jobs(sources, tenant, JobFilter(status, model, lane), after, limit)
    except StorageError:
        raise _unavailable() from None
    return {"jobs": [job_json(job, job_url(job.job_id)) for job in page.jobs],
            "next": encode_cursor(page.next) if page.next else None}


@get("/jobs/{job_id:str}")
async def get_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> dict[str, Any]:
    _, job = await _job_for(request, job_id)
    return job_json(job, job_url(job.job_id))


@get("/jobs/{job_id:str}/result")
async def get_result(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
    """The model's answer once succeeded; 202 + Retry-After while pending; the error once failed."""
    lane, job = await _job_for(request, job_id)
    if job.status is JobStatus.SUCCEEDED and job.result_key:
        try:
            size = await lane.objects.size(job.result_key)
        except StorageError:
            raise _unavailable() from None
        if size is None:
            raise _unavailable()  # recorded but not readable: storage trouble, not the client's
        return Stream(lane.objects.stream(job.result_key), status_code=200,
                      media_type=job.result_content_type or "application/octet-stream",
                      headers={"Content-Length": str(size), "X-Job-Status": job.status.value})
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return Response(job_json(job, job_url(job.job_id)), status_code=202,
                        headers={"Retry-After": PENDING_RETRY_AFTER})
    return _ended_error(job, 410 if job.status is JobStatus.EXPIRED else 424)


@get("/jobs/{job_id:str}/error")
async def get_error(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
    """The FailureLocation of the embedded mode: the error once the job failed or expired, else 404."""
    _, job = await _job_for(request, job_id)
    if job.status in (JobStatus.FAILED, JobStatus.EXPIRED):
        return Response(job_json(job), status_code=200)
    raise NotFoundException(f"job {job_id} has not failed")


@delete("/jobs/{job_id:str}", status_code=200)
async def cancel_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
    """Cancel a queued job, or a batch job still buffered (it ends failed, error type Cancelled); a started
    job cannot be."""
    lane, job = await _job_for(request, job_id)
    try:
        cancelled = job.status is JobStatus.QUEUED and await lane.cancel(job.job_id)
        job = await lane.get(job_id) or job
    except StorageError:
        raise _unavailable() from None
    if not cancelled:
        return error_response(409, f"job {job.job_id} is {job.status.value}: only a queued job can be cancelled",
                              "ConflictException", job_json(job))
    return Response(job_json(job), status_code=200)


JOB_HANDLERS = [list_caller_jobs, get_job, get_result, get_error, cancel_job]
