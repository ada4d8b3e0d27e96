"""RequestFeatures from an HTTP request's headers: who is calling, how urgent, how big, how long it may take."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from router.config import CallerConfig, UrgencyConfig
from router.numbers import parse_uint
from router.types import RequestFeatures

if TYPE_CHECKING:  # botocore (~30 MB) is imported only when a caller signs with SigV4
    from router.auth.sigv4 import SignedRequest, SigV4Callers

MAX_DEADLINE_MS = 86_400_000
ANONYMOUS = "anonymous"


class RequestError(Exception):
    """A request the router refuses before routing: the client's error, answered in SageMaker's shape."""

    def __init__(self, status: int, error_type: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    ceiling: int  # the highest priority this caller may claim


@dataclass(frozen=True, slots=True)
class Prefer:
    respond_async: bool = False
    wait_s: float | None = None


_NO_PREFER = Prefer()
_tuple_new = tuple.__new__  # builds a NamedTuple from its fields in order, without its Python-level __new__


def parse_prefer(value: str | None) -> Prefer:
    """RFC 7240 ``Prefer``; preferences we do not understand are ignored, as the RFC asks."""
    if not value:
        return _NO_PREFER
    respond_async = False
    wait: float | None = None
    for item in value.split(","):
        token, _, arg = item.split(";", 1)[0].strip().partition("=")
        token = token.strip().lower()
        if token == "respond-async":
            respond_async = True
        elif token == "wait":
            seconds = parse_uint(arg.strip().strip('"'))
            if seconds is not None:
                wait = float(seconds)
    return Prefer(respond_async, wait)


def _sigv4_callers(known: list[tuple[CallerConfig, Caller]]) -> SigV4Callers[Caller] | None:
    """Callers with SigV4 credentials, by access key id; None without any (botocore is then never imported)."""
    signers = {c.aws_access_key_id: (caller, c.aws_secret_access_key.get_secret_value())
               for c, caller in known if c.aws_access_key_id and c.aws_secret_access_key}
    if not signers:
        return None
    from router.auth.sigv4 import SigV4Callers

    return SigV4Callers(signers)


class FeatureExtractor:
    """Turns headers into RequestFeatures; raises RequestError naming the header that is wrong."""

    def __init__(
        self,
        urgency: UrgencyConfig,
        callers: list[CallerConfig],
        api_key_header: str,
        on_clamp: Callable[[str], None] | None = None,
    ) -> None:
        self._header = urgency.header.lower()
        self._header_name = urgency.header
        self._levels = {name.lower(): (name, prio) for name, prio in urgency.levels.items()}
        self._default = (urgency.default, urgency.levels[urgency.default])
        self._key_header = api_key_header.lower()
        top = max(urgency.levels.values())
        self._anonymous = Caller(ANONYMOUS, urgency.anonymous_ceiling)
        known = [(c, Caller(c.tenant, urgency.levels[c.max_urgency] if c.max_urgency else top)) for c in callers]
        self._callers = {c.api_key.get_secret_value(): caller for c, caller in known if c.api_key is not None}
        self._sigv4 = _sigv4_callers(known)
        # the level a clamped request gets: the highest level at or below the ceiling
        ranked = sorted(urgency.levels.items(), key=lambda kv: kv[1])
        self._at_most = {prio: max((kv for kv in ranked if kv[1] <= prio), key=lambda kv: kv[1], default=ranked[0])
                         for prio in {c.ceiling for c in (*(caller for _, caller in known), self._anonymous)}}
        self._on_clamp = on_clamp

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """The caller an API key or, without one, a SigV4 signature names (its signature is checked later, once
        the body is known: ``signed_request``); anonymous otherwise."""
        key = headers.get(self._key_header)
        if key is None:
            authorization = headers.get("authorization") if self._sigv4 is not None else None
            signer = self._sigv4.caller(authorization) if self._sigv4 and authorization else None
            return signer if signer is not None else self._anonymous
        caller = self._callers.get(key)
        if caller is None:
            raise RequestError(403, "AccessDeniedException", f"unknown API key in {self._key_header}")
        return caller

    def signed_request(self, scope: Mapping[str, Any], headers: Mapping[str, str]) -> SignedRequest | None:
        """The SigV4 signature to verify for a request whose caller it named; None when there is none to check."""
        if self._sigv4 is None or self._key_header in headers:
            return None
        authorization = headers.get("authorization")
        return self._sigv4.request(scope, authorization) if authorization else None

    def extract(self, model: str, headers: Mapping[str, str], payload_bytes: int, key: int = 0) -> RequestFeatures:
        caller = self.caller(headers)
        raw = headers.get(self._header)
        if raw is None:
            urgency, priority = self._default
        else:
            found = self._levels.get(raw.strip().lower())
            if found is None:
                raise RequestError(400, "ValidationError",
                                   f"invalid {self._header_name} header: use one of {', '.join(self._levels)}")
            urgency, priority = found
        if priority > caller.ceiling:
            urgency, priority = self._at_most[caller.ceiling]
            if self._on_clamp is not None:
                self._on_clamp(model)
        deadline_ms = None
        raw_deadline = headers.get("x-deadline-ms")
        if raw_deadline is not None:
            deadline_ms = parse_uint(raw_deadline)
            if deadline_ms is None or not 0 < deadline_ms <= MAX_DEADLINE_MS:
                raise RequestError(400, "ValidationError",
                                   f"invalid X-Deadline-Ms header: whole milliseconds, 1 to {MAX_DEADLINE_MS}")
        raw_prefer = headers.get("prefer")
        prefer = parse_prefer(raw_prefer) if raw_prefer else _NO_PREFER
        # model, caller, payload_bytes, content_type, urgency, priority, deadline_ms, accepts_async, wait_s, key
        return _tuple_new(RequestFeatures, (model, caller.tenant, payload_bytes,
                                            headers.get("content-type", "application/octet-stream"), urgency,
                                            priority, deadline_ms, prefer.respond_async, prefer.wait_s, key))
