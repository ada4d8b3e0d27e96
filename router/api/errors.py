"""Errors in SageMaker Runtime's shape: a JSON body and ``x-amzn-ErrorType``, so SDKs raise their usual
exceptions (ThrottlingException, ModelError, ServiceUnavailable, ValidationError...)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from router.lanes.sync import SyncFailure
from router.types import FailureKind

_encode = msgspec.json.Encoder().encode


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


# kind -> (status, SageMaker error type, sent with Retry-After)
_BY_KIND: dict[FailureKind, tuple[int, str, bool]] = {
    FailureKind.THROTTLED: (429, "ThrottlingException", True),
    FailureKind.NOT_READY: (429, "ModelNotReadyException", True),
    FailureKind.UNAVAILABLE: (503, "ServiceUnavailable", True),
    FailureKind.CONNECTION: (503, "ServiceUnavailable", True),
    FailureKind.SERVER_ERROR: (424, "ModelError", False),
    FailureKind.TIMEOUT: (504, "ModelError", False),
    FailureKind.MODEL_ERROR: (424, "ModelError", False),
    FailureKind.VALIDATION: (400, "ValidationError", False),
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
    status, error_type, retry = _BY_KIND[e.kind]
    return ErrorAnswer(status, error_type, e.message, retry_after_s=f.retry_after_s if retry else None,
                       original_status=e.original_status, original_message=e.original_message)
