"""The jobs API: ``GET /jobs/{id}``, ``GET /jobs/{id}/result``, ``GET /jobs/{id}/error``, ``DELETE /jobs/{id}``.

A caller sees only the jobs of its own tenant: a job of another tenant is answered exactly like a missing
one (404), so ids cannot be probed. Anonymous callers (no API key) share the tenant "anonymous"; their
job ids (128 random bits) are the capability to read them, like a presigned URL.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath
from litestar.response import Stream

from router.batch.lane import BatchLane
from router.features import RequestError
from router.lanes.jobs import JobLane, job_json, job_url
from router.runtime import Runtime
from router.storage.base import Job, JobStatus, StorageError

PENDING_RETRY_AFTER = "1"


async def _job_for(request: Request[Any, Any, Any], job_id: FromPath[str]) -> tuple[JobLane | BatchLane, Job]:
    runtime: Runtime = request.app.state.runtime
    lanes: list[JobLane | BatchLane] = [lane for lane in (runtime.job_lane, runtime.batch_lane) if lane is not None]
    if not lanes:
        raise NotFoundException("no model of this router has an async or batch lane")
    routing = runtime.routing
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        caller = routing.features.caller(headers)
        signed = routing.features.signed_request(request.scope, headers)
        if signed is not None:  # a tenant named by SigV4 must prove it: these requests have no body
            signed.verify_body(b"")
    except RequestError as exc:
        raise PermissionDeniedException(exc.message) from None
    for lane in lanes if len(job_id) <= 128 else ():
        try:
            job = await lane.get(job_id)
        except StorageError:
            raise _unavailable() from None
        if job is not None:
            if job.spec.tenant != caller.tenant:
                break
            return lane, job
    raise NotFoundException(f"no job {job_id}")


def _unavailable() -> Exception:
    from litestar.exceptions import HTTPException

    return HTTPException(status_code=503, detail="job storage is unavailable; retry later",
                         headers={"Retry-After": "2"})


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
    status = 410 if job.status is JobStatus.EXPIRED else 424
    return Response(job_json(job, job_url(job.job_id)), status_code=status)


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
    return Response(job_json(job), status_code=200 if cancelled else 409)


JOB_HANDLERS = [get_job, get_result, get_error, cancel_job]
