"""create_app(runtime): the ASGI app. Data plane in front (router.api.dataplane), Litestar for the rest."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Mapping
from typing import Any

import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import ValidationException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from router.api.dataplane import DataPlane
from router.api.errors import EXCEPTION_HANDLERS, error_response
from router.api.guard import admin_guard
from router.api.jobs import JOB_HANDLERS
from router.api.openapi import openapi_document
from router.api.ui import UI_HANDLERS
from router.config import Size
from router.explain import StateOverride
from router.features import RequestError
from router.readiness import readiness
from router.runtime import Runtime
from router.status import StatusHistory

log = structlog.get_logger("router.app")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    headers: dict[str, str] = Field(default_factory=dict)
    bytes: Size = Field(0, ge=0)  # 100, or with units: "6MB"
    state: dict[str, StateOverride] = Field(default_factory=dict)  # by lane or backend: as explain should see it


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


@get("/admin/policy", guards=[admin_guard], sync_to_thread=False)
def admin_policy(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The config in force; every secret (typed SecretStr in the config) shows as '**********'."""
    runtime: Runtime = request.app.state.runtime
    doc: dict[str, Any] = runtime.routing.config.model_dump(mode="json")
    return doc


@post("/admin/explain", guards=[admin_guard], status_code=200)
async def admin_explain(request: Request[Any, Any, Any]) -> dict[str, Any]:
    runtime: Runtime = request.app.state.runtime
    try:
        ask = ExplainRequest.model_validate_json(await request.body())
    except ValueError as exc:
        raise ValidationException(str(exc)) from None
    return explain(runtime, ask.model, ask.headers, ask.bytes, ask.state)


@post("/admin/reload", guards=[admin_guard], status_code=200)
async def admin_reload(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    runtime: Runtime = request.app.state.runtime
    errors = await runtime.reload_from_file()
    if errors:
        return error_response(400, f"config rejected ({len(errors)} errors); the previous config stays in force",
                              "ValidationError", {"status": "rejected", "errors": errors})
    return Response({"status": "reloaded", "models": sorted(runtime.routing.models)}, status_code=200)


def explain(runtime: Runtime, model: str, headers: dict[str, str], nbytes: int,
            state: Mapping[str, StateOverride] | None = None) -> dict[str, Any]:
    """The decision for a described request; raises ValidationException for unknown models, bad headers, or a
    state naming a lane or backend the model does not have."""
    if model not in runtime.routing.models:
        raise ValidationException(f"unknown model {model!r}")
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        features = runtime.routing.features.extract(model, lowered, nbytes)
        return runtime.explain(features, state)
    except RequestError as exc:
        raise ValidationException(exc.message) from None
    except ValueError as exc:
        raise ValidationException(str(exc)) from None


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

    history = StatusHistory(runtime.metrics)

    async def startup() -> None:
        await runtime.start()
        history.start()
        _install_sighup(runtime)
        if tune_gc:
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 10, 10)

    async def shutdown() -> None:
        await history.stop()
        await runtime.close()

    app = Litestar(
        route_handlers=[healthz, readyz, metrics, openapi, admin_policy, admin_explain, admin_reload, *JOB_HANDLERS,
                        *UI_HANDLERS],
        on_startup=[startup],
        on_shutdown=[shutdown],
        logging_config=None,
        openapi_config=None,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.runtime = runtime
    app.state.status_history = history
    return DataPlane(app, runtime)
