"""create_app(runtime): the ASGI app. Data plane in front (router.api.dataplane), Litestar for the rest."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import signal
from typing import Any

import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from router.api.dataplane import DataPlane
from router.api.errors import EXCEPTION_HANDLERS, error_response
from router.api.jobs import JOB_HANDLERS
from router.api.openapi import openapi_document
from router.features import RequestError
from router.readiness import readiness
from router.runtime import Runtime

log = structlog.get_logger("router.app")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    headers: dict[str, str] = Field(default_factory=dict)
    bytes: int = Field(0, ge=0)


def _admin_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    runtime: Runtime = connection.app.state.runtime
    secret = runtime.routing.config.server.admin_token
    token = secret.get_secret_value() if secret is not None else ""
    if not token:
        raise PermissionDeniedException("admin API disabled: set server.admin_token")
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise NotAuthorizedException("a valid 'Authorization: Bearer <admin token>' header is required")


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", sync_to_thread=False)
def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """200 ``ready`` or ``degraded``, 503 ``not_ready``: see router.readiness for what each means."""
    answer = readiness(request.app.state.runtime)
    return Response(answer.body, status_code=200 if answer.ready else 503)


@get("/metrics", sync_to_thread=False)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    runtime: Runtime = request.app.state.runtime
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@get("/openapi.json", sync_to_thread=False)
def openapi(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The API of this router (OpenAPI 3.0), its models' extra paths included."""
    runtime: Runtime = request.app.state.runtime
    return openapi_document(runtime.routing.config)


@get("/admin/policy", guards=[_admin_guard], sync_to_thread=False)
def admin_policy(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The config in force; every secret (typed SecretStr in the config) shows as '**********'."""
    runtime: Runtime = request.app.state.runtime
    doc: dict[str, Any] = runtime.routing.config.model_dump(mode="json")
    return doc


@post("/admin/explain", guards=[_admin_guard], status_code=200)
async def admin_explain(request: Request[Any, Any, Any]) -> dict[str, Any]:
    runtime: Runtime = request.app.state.runtime
    try:
        ask = ExplainRequest.model_validate_json(await request.body())
    except ValueError as exc:
        raise ValidationException(str(exc)) from None
    return explain(runtime, ask.model, ask.headers, ask.bytes)


@post("/admin/reload", guards=[_admin_guard], status_code=200)
async def admin_reload(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    runtime: Runtime = request.app.state.runtime
    errors = await runtime.reload_from_file()
    if errors:
        return error_response(400, f"config rejected ({len(errors)} errors); the previous config stays in force",
                              "ValidationError", {"status": "rejected", "errors": errors})
    return Response({"status": "reloaded", "models": sorted(runtime.routing.models)}, status_code=200)


def explain(runtime: Runtime, model: str, headers: dict[str, str], nbytes: int) -> dict[str, Any]:
    """The decision for a described request; raises ValidationException for unknown models or bad headers."""
    if model not in runtime.routing.models:
        raise ValidationException(f"unknown model {model!r}")
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        features = runtime.routing.features.extract(model, lowered, nbytes)
    except RequestError as exc:
        raise ValidationException(exc.message) from None
    return runtime.explain(features)


def _install_sighup(runtime: Runtime) -> None:
    async def reload() -> None:
        try:
            errors = await runtime.reload_from_file()
        except Exception:  # never an unhandled task exception: the old config stays in force
            log.exception("sighup_reload_failed")
            return
        if errors:
            log.warning("sighup_reload_rejected", errors=errors)

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread / Windows
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))


def create_app(runtime: Runtime, *, tune_gc: bool = False) -> DataPlane:
    """The router's ASGI app for ``runtime``; its lifespan starts and stops the runtime.

    ``tune_gc`` (for a process that serves only this app) moves everything alive after start-up out
    of the collector's way and collects young objects less often: measured 10% of CPU otherwise.
    """

    async def startup() -> None:
        await runtime.start()
        _install_sighup(runtime)
        if tune_gc:
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 10, 10)

    async def shutdown() -> None:
        await runtime.close()

    app = Litestar(
        route_handlers=[healthz, readyz, metrics, openapi, admin_policy, admin_explain, admin_reload, *JOB_HANDLERS],
        on_startup=[startup],
        on_shutdown=[shutdown],
        logging_config=None,
        openapi_config=None,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.runtime = runtime
    return DataPlane(app, runtime)
