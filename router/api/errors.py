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


def from_failure(f: SyncFailure) -> ErrorAnswer:
    """The client's answer when no backend of the route answered."""
    if f.error is None:
        what = "at capacity" if f.reason == "saturated" else "unavailable (circuit breaker open)"
        return ErrorAnswer(503, "ServiceUnavailable", f"every backend of this route is {what}; retry later",
                           retry_after_s=f.retry_after_s)
    e = f.error
    status, error_type, retry = _BY_KIND[e.kind]
    return ErrorAnswer(status, error_type, e.message, retry_after_s=f.retry_after_s if retry else None,
                       original_status=e.original_status, original_message=e.original_message)
