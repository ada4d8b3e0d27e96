"""Callers identified by AWS Signature Version 4, so unmodified SDK clients (boto3 signs every request) have
an identity: the access key id of ``Authorization: AWS4-HMAC-SHA256 Credential=<id>/...`` names the caller,
and the signature, checked against that caller's secret, proves it.

The signature covers the payload's SHA-256, so it can only be checked once the body is known: the data plane
checks it after reading a body (sync lanes) or after streaming it to storage and before the job is recorded
(job lanes: nothing is accepted with a bad signature). The algorithm is botocore's own ``SigV4Auth``, given the
headers the client signed and the hash of the body the router received, so the router computes exactly what
an honest client computed.

Errors are AWS's: ``IncompleteSignatureException`` (400) for a malformed header,
``UnrecognizedClientException`` (403) for an unknown key, ``InvalidSignatureException`` (403) for a signature
that does not match or a request signed more than 15 minutes away from now.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from router.features import RequestError

SCHEME = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 15 * 60.0  # AWS refuses requests signed further from its clock than this
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_DATE = re.compile(r"^([0-9]{8})T([0-9]{2})([0-9]{2})([0-9]{2})Z$")
_SIGNED_HEADERS = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+(;[a-z0-9!#$%&'*+.^_`|~-]+)*$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_MISMATCH = ("The request signature we calculated does not match the signature you provided. "
             "Check your AWS Secret Access Key and signing method.")

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class SigV4Claim:
    """What an ``Authorization: AWS4-HMAC-SHA256 ...`` header says: who, when, for which scope, and the signature."""

    access_key_id: str
    date: str  # YYYYMMDD of the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def _incomplete(detail: str) -> RequestError:
    return RequestError(400, "IncompleteSignatureException", f"Authorization header: {detail}")


def parse_authorization(value: str) -> SigV4Claim | None:
    """The claim of a SigV4 ``Authorization`` header; None for other schemes; 400 when it is malformed."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme != SCHEME:
        return None
    parts: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, content = item.strip().partition("=")
        if sep:
            parts[name] = content.strip()
    credential, signed, signature = parts.get("Credential"), parts.get("SignedHeaders"), parts.get("Signature")
    if credential is None or signed is None or signature is None:
        raise _incomplete("Credential, SignedHeaders and Signature are required")
    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope) or not _DATE.match(scope[1] + "T000000Z"):
        raise _incomplete("Credential must be <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request")
    if not _SIGNED_HEADERS.match(signed) or "host" not in signed.split(";"):
        raise _incomplete("SignedHeaders must list lowercase header names, host among them")
    if not _SIGNATURE.match(signature):
        raise _incomplete("Signature must be 64 hexadecimal digits")
    return SigV4Claim(scope[0], scope[1], scope[2], scope[3], tuple(signed.split(";")), signature)


def _epoch(amz_date: str) -> float | None:
    m = _DATE.match(amz_date)
    if m is None:
        return None
    day, hh, mm, ss = m.groups()
    try:
        return float(calendar.timegm(time.strptime(f"{day}{hh}{mm}{ss}", "%Y%m%d%H%M%S")))
    except ValueError:
        return None


class _Expected(SigV4Auth):  # type: ignore[misc]  # botocore is untyped
    """botocore's signer, limited to what the client signed: exactly its signed headers, and the hash of the
    body as the router received it."""

    def __init__(self, credentials: Credentials, claim: SigV4Claim, signed: HTTPHeaders, payload_sha256: str) -> None:
        super().__init__(credentials, claim.service, claim.region)
        self._signed = signed
        self._payload_sha256 = payload_sha256

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._signed

    def payload(self, request: AWSRequest) -> str:
        return self._payload_sha256


class SignedRequest:
    """A request whose caller was named by its SigV4 header: ``verify`` once the body's hash is known."""

    def __init__(self, claim: SigV4Claim, secret: str, scope: Mapping[str, Any], clock: Callable[[], float]) -> None:
        self.claim = claim
        self._secret = secret
        self._scope = scope
        self._clock = clock

    def verify_body(self, body: bytes) -> None:
        self.verify(hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256)

    def verify(self, payload_sha256: str) -> None:
        """Raise RequestError 403 unless the signature is the one the caller's secret gives for this request."""
        claim, scope = self.claim, self._scope
        signed = HTTPHeaders()
        wanted = set(claim.signed_headers)
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            if name in wanted:
                signed[name] = raw_value.decode("latin-1")
        amz_date = signed.get("x-amz-date")
        sent_at = _epoch(amz_date) if amz_date else None
        if sent_at is None or not amz_date.startswith(claim.date):
            raise RequestError(403, "InvalidSignatureException", "X-Amz-Date must be signed, as YYYYMMDD'T'HHMMSS'Z' "
                               "of the credential's date")
        if abs(self._clock() - sent_at) > MAX_SKEW_S:
            raise RequestError(403, "InvalidSignatureException", "Signature expired: the request was signed more "
                               "than 15 minutes away from the router's clock")
        declared = signed.get("x-amz-content-sha256")
        if declared is not None and declared != payload_sha256:  # UNSIGNED-PAYLOAD too: the body must be covered
            raise RequestError(403, "InvalidSignatureException", "X-Amz-Content-SHA256 does not match the body")
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        url = "http://router" + raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        request = AWSRequest(method=scope["method"], url=url)
        request.context["timestamp"] = amz_date
        signer = _Expected(Credentials(claim.access_key_id, self._secret), claim, signed, payload_sha256)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if not hmac.compare_digest(expected.encode(), claim.signature.encode()):
            raise RequestError(403, "InvalidSignatureException", _MISMATCH)


class SigV4Callers(Generic[C]):
    """The callers that sign with SigV4: access key id -> (caller, secret access key)."""

    def __init__(self, callers: Mapping[str, tuple[C, str]], clock: Callable[[], float] = time.time) -> None:
        self._callers = dict(callers)
        self._clock = clock

    def _find(self, authorization: str) -> tuple[SigV4Claim, C, str] | None:
        claim = parse_authorization(authorization)
        if claim is None:
            return None
        found = self._callers.get(claim.access_key_id)
        if found is None:
            raise RequestError(403, "UnrecognizedClientException", "The security token included in the request is "
                               "invalid: unknown access key id")
        return claim, found[0], found[1]

    def caller(self, authorization: str) -> C | None:
        """The caller a SigV4 header names (None for another scheme); 403 for an unknown access key id."""
        found = self._find(authorization)
        return found[1] if found is not None else None

    def request(self, scope: Mapping[str, Any], authorization: str) -> SignedRequest | None:
        """The signature to verify once the body is known (None for another scheme); 403 for an unknown key."""
        found = self._find(authorization)
        return SignedRequest(found[0], found[2], scope, self._clock) if found is not None else None
