"""One error shape for every answer of the router: SageMaker Runtime's, a JSON ``{"message": ...}`` body and an
``x-amzn-ErrorType`` header, so SDKs raise their usual exceptions (ThrottlingException, ModelError,
ServiceUnavailable, ValidationError...) and every other client reads one shape.

The data plane builds its answers with :class:`ErrorAnswer`; the rest of the API (jobs, admin, operations and
unknown paths) raises Litestar's ``HTTPException`` (or :class:`ApiError` to name the type), and
:data:`EXCEPTION_HANDLERS` turn those, Litestar's own 404/405/400 included, into the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from router.lanes.sync import SyncFailure
from router.types import ERROR_TYPES, FailureKind

log = structlog.get_logger("router.api")

_encode = msgspec.json.Encoder().encode
ERROR_TYPE_HEADER = "x-amzn-ErrorType"

# The type of an error answered without a more precise one: AWS's common names where they exist.
TYPE_BY_STATUS: Mapping[int, str] = {
    400: "ValidationError",
    401: "UnauthorizedException",
    403: "AccessDeniedException",
    404: "ResourceNotFound",
    405: "MethodNotAllowed",
    409: "ConflictException",
    410: "ResourceExpired",
    413: "ValidationError",
    415: "ValidationError",
    424: "ModelError",
    429: "ThrottlingException",
    500: "InternalFailure",
    503: "ServiceUnavailable",
    504: "ModelError",
}


def error_type_for(status: int) -> str:
    return TYPE_BY_STATUS.get(status, "InternalFailure" if status >= 500 else "ValidationError")


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    error_type: str
    message: str
    retry_after_s: float | None = None
    original_status: int | None = None
    original_message: str | None = None
    allow: str | None = None  # the methods a 405's path takes

    def body(self, request_id: str) -> bytes:
        doc: dict[str, object] = {"message": self.message, "request_id": request_id}
        if self.error_type == "ModelError":
            doc["OriginalStatusCode"] = self.original_status or 0
            doc["OriginalMessage"] = self.original_message or ""
            doc["LogStreamArn"] = ""
        return _encode(doc)


# kind -> (status, sent with Retry-After)
_BY_KIND: dict[FailureKind, tuple[int, bool]] = {
    FailureKind.THROTTLED: (429, True),
    FailureKind.NOT_READY: (429, True),
    FailureKind.UNAVAILABLE: (503, True),
    FailureKind.CONNECTION: (503, True),
    FailureKind.SERVER_ERROR: (424, False),
    FailureKind.TIMEOUT: (504, False),
    FailureKind.MODEL_ERROR: (424, False),
    FailureKind.VALIDATION: (400, False),
}


# Why no backend took a request that never reached one (SyncFailure.reason without an error).
_NO_CALL: dict[str, tuple[int, str, str]] = {
    "saturated": (503, "ServiceUnavailable", "every backend of this route is at capacity; retry later"),
    "breaker_open": (503, "ServiceUnavailable",
                     "every backend of this route is unavailable (circuit breaker open); retry later"),
    "full": (503, "ServiceUnavailable", "every backend of this route is at capacity and its queue is full of "
             "requests at least as urgent; retry later"),
    "wait_exceeds_deadline": (503, "ServiceUnavailable", "every backend of this route is at capacity and the "
                              "predicted wait for a slot exceeds this request's deadline (or the queue's "
                              "max_wait); retry after the Retry-After seconds"),
    "timeout": (503, "ServiceUnavailable", "no backend slot became free while this request waited; retry later"),
    "evicted": (429, "ThrottlingException", "this request waited for a slot and was evicted from the full queue by "
                "more urgent traffic; retry later"),
}


def from_failure(f: SyncFailure) -> ErrorAnswer:
    """The client's answer when no backend of the route answered."""
    if f.error is None:
        status, error_type, message = _NO_CALL.get(f.reason, _NO_CALL["saturated"])
        return ErrorAnswer(status, error_type, message, retry_after_s=f.retry_after_s)
    e = f.error
    status, retry = _BY_KIND[e.kind]
    return ErrorAnswer(status, ERROR_TYPES[e.kind], e.message, retry_after_s=f.retry_after_s if retry else None,
                       original_status=e.original_status, original_message=e.original_message)


class ApiError(HTTPException):
    """An HTTP error with the type its ``x-amzn-ErrorType`` names, and fields the body carries besides its
    ``message`` (a job's status, a list of config errors)."""

    def __init__(self, status_code: int, message: str, *, error_type: str | None = None,
                 extra_fields: Mapping[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail=message, status_code=status_code, headers=headers)
        self.error_type = error_type or error_type_for(status_code)
        self.extra_fields = dict(extra_fields or {})


def error_response(status: int, message: str, error_type: str | None = None,
                   fields: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> Response[Any]:
    """An error in the router's one shape: ``{"message": ..., **fields}`` + ``x-amzn-ErrorType``."""
    body: dict[str, Any] = {**(fields or {}), "message": message}
    out = {**(headers or {}), ERROR_TYPE_HEADER: error_type or error_type_for(status)}
    return Response(body, status_code=status, headers=out, media_type="application/json")


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    fields: dict[str, Any] = {}
    error_type = None
    if isinstance(exc, ApiError):
        fields, error_type = exc.extra_fields, exc.error_type
    elif isinstance(exc, ValidationException) and exc.extra:
        fields["errors"] = exc.extra  # Litestar's own validation details: which parameter and why
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() != "content-type"}
    return error_response(exc.status_code, str(exc.detail), error_type, fields, headers)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("request_failed", path=request.url.path, method=request.method, exc_info=exc)
    return error_response(500, "internal error in the router", "InternalFailure")


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {HTTPException: _http_error, Exception: _internal_error}
