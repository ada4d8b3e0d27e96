"""One error shape everywhere (SageMaker's: JSON ``{"message"}`` + ``x-amzn-ErrorType``), job error types in one
casing, RFC 3339 times beside the epoch seconds, and a callback URL that cannot be honoured refused."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, serve_router
from tests.test_async_lane import KEY_A, config, rows, until_done

TOKEN = "admin-secret-token"
ASYNC = {"Content-Type": "text/csv", "Prefer": "respond-async"}


async def answer(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, str | None, Any]:
    async with http.request(method, url, **kw) as r:
        return r.status, r.headers.get("x-amzn-ErrorType"), await r.json(content_type=None)


def assert_error_shape(body: Any) -> None:
    assert isinstance(body, dict), body
    assert isinstance(body.get("message"), str), body
    assert body["message"], body
    assert not {"status_code", "detail"} & set(body), body  # not Litestar's own shape


@pytest.mark.parametrize(("method", "path", "headers", "data", "status", "error_type"), [
    ("GET", "/no/such/path", {}, None, 404, "ResourceNotFound"),
    ("DELETE", "/healthz", {}, None, 405, "MethodNotAllowed"),
    ("GET", "/jobs/0123456789abcdef", {}, None, 404, "ResourceNotFound"),
    ("GET", "/jobs", {"X-Api-Key": "not-a-known-key"}, None, 403, "AccessDeniedException"),
    ("GET", "/jobs", {}, None, 403, "AccessDeniedException"),  # anonymous callers cannot list
    ("GET", "/jobs?limit=0", {"X-Api-Key": KEY_A}, None, 400, "ValidationError"),
    ("GET", "/jobs?status=done", {"X-Api-Key": KEY_A}, None, 400, "ValidationError"),
    ("GET", "/jobs?next=%%%", {"X-Api-Key": KEY_A}, None, 400, "ValidationError"),
    ("GET", "/admin/policy", {}, None, 401, "UnauthorizedException"),
    ("POST", "/admin/explain", {"Authorization": f"Bearer {TOKEN}"}, "{not json", 400, "ValidationError"),
    ("POST", "/admin/explain", {"Authorization": f"Bearer {TOKEN}"}, '{"model": "nope"}', 400, "ValidationError"),
    ("POST", "/endpoints/nope/invocations", {}, "1", 404, "ValidationError"),  # the data plane, as SageMaker's
    ("GET", "/endpoints/fraud/invocations", {}, None, 405, "ValidationError"),
])
async def test_every_error_of_every_api_has_the_sagemaker_shape(
        tmp_path: Path, http: aiohttp.ClientSession, method: str, path: str, headers: dict[str, str],
        data: str | None, status: int, error_type: str) -> None:
    async with ModelServer() as rt, serve_router(f"server: {{admin_token: {TOKEN}}}\n"
                                                 + config(rt, tmp_path, callers=True)) as router:
        got = await answer(http, method, router.url + path, headers=headers, data=data)
        assert got[:2] == (status, error_type), got
        assert_error_shape(got[2])


async def test_a_rejected_reload_lists_its_errors_in_the_error_shape(tmp_path: Path,
                                                                      http: aiohttp.ClientSession) -> None:
    async with ModelServer() as rt:
        path = tmp_path / "router.yaml"
        path.write_text(f"server: {{admin_token: {TOKEN}}}\n" + config(rt, tmp_path))
        async with serve_router(path.read_text(), config_path=str(path)) as router:
            path.write_text(path.read_text().replace("max_attempts: 3", "max_attempts: lots"))
            status, error_type, body = await answer(http, "POST", router.url + "/admin/reload",
                                                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert (status, error_type, body["status"]) == (400, "ValidationError", "rejected")
    assert_error_shape(body)
    assert any("jobs.max_attempts" in e for e in body["errors"])


async def finished_job(http: aiohttp.ClientSession, router: RunningRouter) -> dict[str, Any]:
    async with http.post(router.endpoint("fraud"), data=rows(200), headers=ASYNC) as r:
        job_id = (await r.json())["job_id"]
    return await until_done(http, router, job_id)


async def test_a_failed_job_answers_in_the_error_shape_with_its_own_error_type_and_rfc3339_times(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with ModelServer(fail_status=400) as rt, serve_router(config(rt, tmp_path)) as router:
        job = await finished_job(http, router)
        job_id = job["job_id"]
        status, error_type, body = await answer(http, "GET", f"{router.url}/jobs/{job_id}/result")

    assert (job["status"], job["error"]["type"]) == ("failed", "ModelError")
    assert (status, error_type) == (424, "ModelError")
    assert_error_shape(body)
    assert (body["job_id"], body["status"], body["error"]["type"]) == (job_id, "failed", "ModelError")
    for name in ("created_at", "updated_at"):
        text = job[f"{name}_rfc3339"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
        assert abs(datetime.fromisoformat(text).timestamp() - job[name]) < 0.001  # the same instant as the epoch


async def test_job_error_types_share_one_casing_and_a_second_cancel_is_a_conflict(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with ModelServer(fail_status=503) as rt, serve_router(config(rt, tmp_path)) as router:
        failed = await finished_job(http, router)
    async with ModelServer() as rt, serve_router(config(rt, tmp_path / "idle", workers=0)) as router:
        async with http.post(router.endpoint("fraud"), data=rows(200), headers=ASYNC) as r:
            queued = (await r.json())["job_id"]
        async with http.delete(f"{router.url}/jobs/{queued}") as r:
            cancelled = await r.json()
        again = await answer(http, "DELETE", f"{router.url}/jobs/{queued}")

    types = [failed["error"]["type"], cancelled["error"]["type"]]
    assert types == ["ServiceUnavailable", "Cancelled"]
    assert all(re.fullmatch(r"(?:[A-Z][a-z]+)+", t) for t in types)  # PascalCase, as SageMaker's names
    assert again[:2] == (409, "ConflictException")
    assert_error_shape(again[2])
    assert again[2]["status"] == "failed"


async def test_a_callback_url_without_a_webhooks_section_is_refused_and_nothing_is_stored(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, workers=0, callers=True)) as router:
        status, error_type, body = await answer(
            http, "POST", router.endpoint("fraud"), data=rows(200),
            headers={**ASYNC, "X-Api-Key": KEY_A, "X-Callback-Url": "https://hooks.example.com/done"})
        listed = await answer(http, "GET", f"{router.url}/jobs", headers={"X-Api-Key": KEY_A})

    assert (status, error_type) == (400, "ValidationError")
    assert "no webhooks section" in body["message"]
    assert (listed[0], listed[2]["jobs"]) == (200, [])
